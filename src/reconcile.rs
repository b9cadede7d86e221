//! The reconciler: level-triggered, Kubernetes-controller style. A pass reads
//! the desired records, observes ECS in batches, computes the pure
//! [`plan::plan`], and applies the steps. Passes run on a period that
//! stretches with the task count (so the read budget is never exceeded) and
//! are also triggered per task by the driver (start, stop, recover). It is the
//! only writer of observed state.

pub mod exit;
pub mod plan;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::config::Settings;
use crate::ecs::{Ecs, EcsError, EcsTask, RunOutcome, RunSpec, StopOutcome};
use crate::nomad::NomadApi;
use crate::store::record::{Desired, ExitRecord, Slot, StartError, TaskRecord};
use crate::store::{Store, StoreError};
use crate::task_config::{LaunchType, VpcConfig};
use crate::telemetry::TraceParent;
use plan::{Observed, Policy, Step};

/// Tag keys of the ownership record on every ECS task we start.
pub const TAG_DRIVER: &str = "nomad:driver";
/// The driver identity tag's value.
pub const DRIVER_ID: &str = "nomad-driver-ecs";
/// Owning allocation (rewritten on adoption).
pub const TAG_ALLOC_ID: &str = "nomad:alloc-id";
/// Nomad task ID.
pub const TAG_TASK_ID: &str = "nomad:task-id";
/// Namespace.
pub const TAG_NAMESPACE: &str = "nomad:namespace";
/// Job.
pub const TAG_JOB: &str = "nomad:job";
/// Group.
pub const TAG_GROUP: &str = "nomad:group";
/// Allocation index.
pub const TAG_ALLOC_INDEX: &str = "nomad:alloc-index";
/// Task name.
pub const TAG_TASK: &str = "nomad:task";

/// A task event for Nomad's TaskEvents stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskEvent {
    /// Nomad task ID.
    pub task_id: String,
    /// Allocation.
    pub alloc_id: String,
    /// Task name.
    pub task_name: String,
    /// When, in ms since the epoch.
    pub at_ms: u64,
    /// The text.
    pub message: String,
    /// Details (ARN, status).
    pub annotations: BTreeMap<String, String>,
}

/// Now, in ms since the epoch.
pub fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

/// Record watchers and the event bus, shared by driver and reconciler.
pub struct Hub {
    store: Arc<dyn Store>,
    watchers: std::sync::Mutex<HashMap<String, watch::Sender<Option<TaskRecord>>>>,
    events: broadcast::Sender<TaskEvent>,
}

impl Hub {
    fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            watchers: std::sync::Mutex::default(),
            events: broadcast::channel(1024).0,
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Write a record durably and tell its watchers.
    ///
    /// # Errors
    /// The store's error; watchers are told only after a durable write.
    pub fn put(&self, rec: &TaskRecord) -> Result<(), StoreError> {
        self.store.put(rec)?;
        if let Ok(w) = self.watchers.lock()
            && let Some(tx) = w.get(&rec.task_id)
        {
            tx.send_replace(Some(rec.clone()));
        }
        Ok(())
    }

    /// Delete a record and tell its watchers it is gone.
    ///
    /// # Errors
    /// The store's error.
    pub fn forget(&self, task_id: &str) -> Result<(), StoreError> {
        self.store.delete(task_id)?;
        if let Ok(mut w) = self.watchers.lock()
            && let Some(tx) = w.remove(task_id)
        {
            tx.send_replace(None);
        }
        Ok(())
    }

    /// Watch a record (starting from what the store holds now).
    ///
    /// # Errors
    /// The store's error.
    pub fn watch(&self, task_id: &str) -> Result<watch::Receiver<Option<TaskRecord>>, StoreError> {
        let current = self.store.get(task_id)?;
        let mut w = self.watchers.lock().map_err(|_| StoreError::Poisoned)?;
        let tx = w
            .entry(task_id.to_string())
            .or_insert_with(|| watch::Sender::new(None));
        tx.send_replace(current);
        Ok(tx.subscribe())
    }

    /// Emit a task event.
    pub fn emit(&self, rec: &TaskRecord, message: String) {
        let mut annotations = BTreeMap::new();
        if let Some(arn) = &rec.arn {
            annotations.insert("ecs_task_arn".to_string(), arn.clone());
        }
        if let Some(o) = &rec.observed {
            annotations.insert("ecs_last_status".to_string(), o.last_status.clone());
        }
        tracing::info!(nomad.task.id = %rec.task_id, nomad.alloc.id = %rec.alloc_id, aws.ecs.task.arn = rec.arn.as_deref().unwrap_or(""), "{message}");
        let _ = self.events.send(TaskEvent {
            task_id: rec.task_id.clone(),
            alloc_id: rec.alloc_id.clone(),
            task_name: rec.task_name.clone(),
            at_ms: now_ms(),
            message,
            annotations,
        });
    }

    /// Subscribe to task events.
    pub fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        self.events.subscribe()
    }
}

/// How the driver talks to the reconciler.
#[derive(Clone)]
pub struct Handle {
    hub: Arc<Hub>,
    trigger: mpsc::UnboundedSender<Trigger>,
    ecs: Arc<Mutex<Ecs>>,
    nomad: Arc<Mutex<Option<NomadApi>>>,
    pass_stats: Arc<std::sync::Mutex<PassStats>>,
}

/// A request for a pass over one task: its ID and the trace context of the
/// caller (the RPC), under which the task's steps then run.
type Trigger = (String, TraceParent);

/// Why a task is in a triggered pass's scope: the trace its steps join, and
/// since when the pass is due (for the lag metric).
#[derive(Clone, Debug)]
struct Due {
    parent: TraceParent,
    since: Instant,
}

/// Figures of the last full pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassStats {
    /// Records considered.
    pub tasks: usize,
    /// ECS calls made by the pass.
    pub calls: u64,
    /// Steps applied.
    pub steps: usize,
}

impl Handle {
    /// The hub.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Ask for a pass over one task soon. The task's steps in that pass
    /// (and its quick follow-ups) join the caller's trace.
    pub fn trigger(&self, task_id: &str) {
        let _ = self
            .trigger
            .send((task_id.to_string(), crate::telemetry::current_context()));
    }

    /// Use a new ECS client (after a config change).
    pub async fn set_ecs(&self, ecs: Ecs) {
        *self.ecs.lock().await = ecs;
    }

    /// Use a new Nomad API client (or none).
    pub async fn set_nomad(&self, nomad: Option<NomadApi>) {
        *self.nomad.lock().await = nomad;
    }

    /// The Nomad API client, if any.
    pub async fn nomad(&self) -> Option<NomadApi> {
        self.nomad.lock().await.clone()
    }

    /// The ECS client in use.
    pub async fn ecs(&self) -> Ecs {
        self.ecs.lock().await.clone()
    }

    /// Figures of the last full pass.
    pub fn last_full_pass(&self) -> PassStats {
        self.pass_stats.lock().map(|s| *s).unwrap_or_default()
    }
}

/// The RunTask parameters a record carries (so a restarted driver re-issues
/// exactly the same request, as the client token requires).
pub fn run_spec(rec: &TaskRecord) -> RunSpec {
    let launch_type = match rec.run.launch_type.as_deref() {
        Some("EC2") => Some(LaunchType::Ec2),
        Some("FARGATE") => Some(LaunchType::Fargate),
        Some("EXTERNAL") => Some(LaunchType::External),
        _ => None,
    };
    let vpc = (!rec.run.subnets.is_empty()).then(|| VpcConfig {
        subnets: rec.run.subnets.clone(),
        security_groups: rec.run.security_groups.clone(),
        assign_public_ip: rec.run.assign_public_ip,
    });
    RunSpec {
        cluster: rec.cluster.clone(),
        task_definition: rec.task_definition.clone(),
        launch_type,
        vpc,
        client_token: rec.client_token.clone(),
        started_by: rec.slot.started_by(),
        tags: ownership_tags(rec, &rec.alloc_id),
    }
}

/// The ownership tags of a record, owned by `alloc_id`.
pub fn ownership_tags(rec: &TaskRecord, alloc_id: &str) -> Vec<(String, String)> {
    vec![
        (TAG_DRIVER.into(), DRIVER_ID.into()),
        (TAG_NAMESPACE.into(), rec.slot.namespace.clone()),
        (TAG_JOB.into(), rec.slot.job.clone()),
        (TAG_GROUP.into(), rec.slot.group.clone()),
        (TAG_ALLOC_INDEX.into(), rec.slot.alloc_index.to_string()),
        (TAG_TASK.into(), rec.slot.task.clone()),
        (TAG_ALLOC_ID.into(), alloc_id.to_string()),
        (TAG_TASK_ID.into(), rec.task_id.clone()),
    ]
}

/// The reconcile loop of one plugin process.
pub struct Reconciler {
    hub: Arc<Hub>,
    ecs: Arc<Mutex<Ecs>>,
    nomad: Arc<Mutex<Option<NomadApi>>>,
    settings: Settings,
    policy: Policy,
    triggers: mpsc::UnboundedReceiver<Trigger>,
    self_trigger: mpsc::UnboundedSender<Trigger>,
    pass_stats: Arc<std::sync::Mutex<PassStats>>,
    regional: Mutex<HashMap<String, Ecs>>,
}

impl Reconciler {
    /// A reconciler over `store`, talking to `ecs`. Returns it and the handle
    /// the driver uses.
    pub fn new(
        store: Arc<dyn Store>,
        ecs: Ecs,
        settings: Settings,
        policy: Policy,
        nomad: Option<NomadApi>,
    ) -> (Self, Handle) {
        let (tx, rx) = mpsc::unbounded_channel();
        let hub = Arc::new(Hub::new(store));
        let ecs = Arc::new(Mutex::new(ecs));
        let nomad = Arc::new(Mutex::new(nomad));
        let pass_stats = Arc::new(std::sync::Mutex::new(PassStats::default()));
        let handle = Handle {
            hub: hub.clone(),
            trigger: tx.clone(),
            ecs: ecs.clone(),
            nomad: nomad.clone(),
            pass_stats: pass_stats.clone(),
        };
        (
            Self {
                hub,
                ecs,
                nomad,
                settings,
                policy,
                triggers: rx,
                self_trigger: tx,
                pass_stats,
                regional: Mutex::default(),
            },
            handle,
        )
    }

    /// Run until `shutdown`. The first full pass starts at once, so a restarted
    /// driver converges what it left behind.
    pub async fn run(mut self, shutdown: CancellationToken) {
        tokio::spawn(sweep_loop(
            self.hub.clone(),
            self.ecs.clone(),
            self.nomad.clone(),
            self.settings.clone(),
            shutdown.clone(),
        ));
        let mut next_full = Instant::now();
        // Follow-ups keep the trace of the trigger that started them.
        let mut followups: HashMap<String, (Instant, Duration, TraceParent)> = HashMap::new();
        loop {
            let next_followup = followups.values().map(|(t, _, _)| *t).min();
            let wake = next_followup.map_or(next_full, |t| t.min(next_full));
            let mut scope: HashMap<String, Due> = HashMap::new();
            let mut full = false;
            let add = |scope: &mut HashMap<String, Due>, (id, parent): Trigger, since: Instant| {
                let due = scope.entry(id).or_insert(Due {
                    parent: TraceParent::none(),
                    since,
                });
                if !due.parent.is_some() {
                    due.parent = parent;
                }
                due.since = due.since.min(since);
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                t = self.triggers.recv() => match t {
                    Some(t) => add(&mut scope, t, Instant::now()),
                    None => return,
                },
                () = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    if now >= next_full {
                        full = true;
                    }
                    for (id, (t, _, parent)) in &followups {
                        if *t <= now {
                            add(&mut scope, (id.clone(), parent.clone()), *t);
                        }
                    }
                }
            }
            while let Ok(t) = self.triggers.try_recv() {
                add(&mut scope, t, Instant::now());
            }
            let touched = if full {
                let lag = Instant::now().saturating_duration_since(next_full);
                let touched = self.pass_traced(None, &scope, lag).await;
                next_full = Instant::now() + self.period(touched.len());
                touched
            } else {
                let since = scope.values().map(|d| d.since).min();
                let lag = since.map_or(Duration::ZERO, |s| {
                    Instant::now().saturating_duration_since(s)
                });
                let ids: HashSet<String> = scope.keys().cloned().collect();
                self.pass_traced(Some(&ids), &scope, lag).await
            };
            // Tasks in transition get quick follow-up passes (1 s doubling to
            // the reconcile interval); settled ones drop out.
            for (id, settled) in touched {
                if settled {
                    followups.remove(&id);
                } else {
                    let (backoff, parent) = followups.get(&id).map_or_else(
                        || {
                            let parent =
                                scope.get(&id).map(|d| d.parent.clone()).unwrap_or_default();
                            (Duration::from_millis(500), parent)
                        },
                        |(_, b, p)| ((*b * 2).min(self.settings.reconcile_interval), p.clone()),
                    );
                    followups.insert(id, (Instant::now() + backoff, backoff, parent));
                }
            }
        }
    }

    /// The full-pass period: the configured interval, stretched so that the
    /// pass's DescribeTasks calls use at most half of the read budget.
    fn period(&self, tasks: usize) -> Duration {
        let calls = tasks.div_ceil(100) as f64;
        let rate = self.read_rate_hint();
        let min = Duration::from_secs_f64(calls / (rate * 0.5).max(0.01));
        self.settings.reconcile_interval.max(min)
    }

    fn read_rate_hint(&self) -> f64 {
        20.0 * self.settings.api_budget
    }

    /// One pass over `scope` (or everything). Returns the task IDs it looked
    /// at and whether each is settled.
    pub async fn pass(&mut self, scope: Option<&HashSet<String>>) -> Vec<(String, bool)> {
        self.pass_traced(scope, &HashMap::new(), Duration::ZERO)
            .await
    }

    /// [`Self::pass`], with each task's steps under the trace of the RPC
    /// that triggered it (`due`), and `lag` (how late the pass is) for the
    /// metrics.
    #[tracing::instrument(name = "reconcile.pass", skip_all, fields(reconcile.full = scope.is_none(), reconcile.tasks, reconcile.steps, reconcile.calls))]
    async fn pass_traced(
        &mut self,
        scope: Option<&HashSet<String>>,
        due: &HashMap<String, Due>,
        lag: Duration,
    ) -> Vec<(String, bool)> {
        let started = Instant::now();
        for d in due.values() {
            crate::telemetry::link(&tracing::Span::current(), &d.parent);
        }
        let ecs = self.ecs.lock().await.clone();
        let calls_before = ecs.calls().total();
        let records: Vec<TaskRecord> = match scope {
            None => match self.hub.store.list() {
                Ok(listing) => listing.records,
                Err(e) => {
                    tracing::error!(error = %e, "reading the task store failed; pass skipped");
                    return Vec::new();
                }
            },
            Some(ids) => ids
                .iter()
                .filter_map(|id| self.hub.store.get(id).ok().flatten())
                .collect(),
        };
        let observed = self.observe(&ecs, &records).await;
        let regions: HashMap<&str, &str> = records
            .iter()
            .map(|r| (r.task_id.as_str(), r.region.as_str()))
            .collect();
        let now = now_ms();
        let steps = plan::plan(&records, &observed, now, &self.policy);
        let n_steps = steps.len();
        let touched: HashSet<String> = steps.iter().map(|s| s.task_id().to_string()).collect();
        for step in steps {
            let parent = due
                .get(step.task_id())
                .map(|d| d.parent.clone())
                .unwrap_or_default();
            let span = crate::telemetry::child_span(&parent, step.span_name());
            span.record("nomad.task.id", step.task_id());
            if let Some(rec) = records.iter().find(|r| r.task_id == step.task_id()) {
                span.record("nomad.alloc.id", rec.alloc_id.as_str());
                if let Some(arn) = &rec.arn {
                    span.record("aws.ecs.task.arn", arn.as_str());
                }
            }
            let client = self
                .client_for(&ecs, regions.get(step.task_id()).copied().unwrap_or(""))
                .await;
            if let Err(e) = self.apply(&client, step).instrument(span).await {
                tracing::error!(error = %e, "applying a reconcile step failed");
            }
        }
        let calls = ecs.calls().total() - calls_before;
        crate::telemetry::record_pass(
            scope.is_none(),
            records.len(),
            calls,
            n_steps,
            started.elapsed(),
            lag,
        );
        if scope.is_none() {
            record_task_states(&records, &observed);
        }
        let span = tracing::Span::current();
        span.record("reconcile.tasks", records.len());
        span.record("reconcile.steps", n_steps);
        span.record("reconcile.calls", calls);
        if scope.is_none() {
            if let Ok(mut s) = self.pass_stats.lock() {
                *s = PassStats {
                    tasks: records.len(),
                    calls,
                    steps: n_steps,
                };
            }
            tracing::debug!(
                tasks = records.len(),
                calls,
                steps = n_steps,
                "full reconcile pass"
            );
        }
        records
            .iter()
            .map(|r| {
                // Only records a step changed need reading back.
                let is_settled = if touched.contains(&r.task_id) {
                    self.hub
                        .store
                        .get(&r.task_id)
                        .ok()
                        .flatten()
                        .as_ref()
                        .is_none_or(settled)
                } else {
                    settled(r)
                };
                (r.task_id.clone(), is_settled)
            })
            .collect()
    }

    /// Observe every record, each through the client of its own region: a
    /// task keeps living in the region it was started in, whatever the
    /// plugin config says later (upstream lost such tasks).
    async fn observe(&self, current: &Ecs, records: &[TaskRecord]) -> HashMap<String, Observed> {
        let mut by_region: BTreeMap<&str, Vec<&TaskRecord>> = BTreeMap::new();
        for r in records {
            by_region.entry(r.region.as_str()).or_default().push(r);
        }
        let mut out = HashMap::new();
        for (region, recs) in by_region {
            let client = self.client_for(current, region).await;
            out.extend(observe_in(&client, &recs).await);
        }
        out
    }

    /// The ECS client for `region`: the configured one, or one built (and
    /// kept) with the same settings for a region a record lives in.
    async fn client_for(&self, current: &Ecs, region: &str) -> Ecs {
        if region.is_empty() || region == current.region() {
            return current.clone();
        }
        let mut others = self.regional.lock().await;
        if let Some(c) = others.get(region) {
            return c.clone();
        }
        let settings = Settings {
            region: Some(region.to_string()),
            ..self.settings.clone()
        };
        match Ecs::connect(&settings).await {
            Ok(c) => {
                tracing::info!(region, "ECS client for tasks started in another region");
                others.insert(region.to_string(), c.clone());
                c
            }
            Err(e) => {
                tracing::warn!(region, error = %e, "no ECS client for this region; using the configured one");
                current.clone()
            }
        }
    }

    async fn apply(&self, ecs: &Ecs, step: Step) -> Result<(), StoreError> {
        let load = |id: &str| self.hub.store.get(id);
        match step {
            Step::Run { task_id } => {
                let Some(mut rec) = load(&task_id)? else {
                    return Ok(());
                };
                rec.run_requested_ms = Some(now_ms());
                rec.run_attempts += 1;
                self.hub.put(&rec)?;
                match ecs.run_task(&run_spec(&rec)).await {
                    Ok(RunOutcome::Started(task)) => {
                        let now = now_ms();
                        if task.last_status == "RUNNING" {
                            crate::telemetry::record_start_latency(since_ms(rec.created_ms, now));
                        }
                        rec.arn = Some(task.arn.clone());
                        rec.started_ms = Some(now);
                        rec.last_error = None;
                        rec.observed = Some(plan::observation_of(&task, now));
                        rec.updated_ms = now;
                        self.hub.put(&rec)?;
                        self.hub.emit(
                            &rec,
                            format!("ECS task {} started ({})", task.arn, task.last_status),
                        );
                    }
                    Ok(RunOutcome::Failed(reasons)) => {
                        rec.start_error = Some(StartError {
                            message: format!(
                                "ECS could not place the task: {}",
                                reasons.join("; ")
                            ),
                            recoverable: true,
                        });
                        rec.desired = Desired::Destroyed;
                        self.hub.put(&rec)?;
                    }
                    Err(e) => self.run_failed(rec, &e)?,
                }
            }
            Step::Resolve { task_id } => {
                let Some(mut rec) = load(&task_id)? else {
                    return Ok(());
                };
                match find_by_tags(ecs, &rec).await {
                    Ok(Some(arn)) => {
                        tracing::info!(nomad.task.id = %rec.task_id, aws.ecs.task.arn = %arn, "found the ECS task of an interrupted RunTask");
                        rec.arn = Some(arn);
                        self.hub.put(&rec)?;
                        let _ = self
                            .self_trigger
                            .send((task_id, crate::telemetry::current_context()));
                    }
                    Ok(None) => {
                        if rec.desired == Desired::Destroyed {
                            self.hub.forget(&task_id)?;
                        } else if rec.exit.is_none() {
                            rec.exit = Some(ExitRecord::clean(now_ms()));
                            self.hub.put(&rec)?;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(nomad.task.id = %task_id, error = %e, "looking up the ECS task by slot failed; will retry")
                    }
                }
            }
            Step::Observe {
                task_id,
                observation,
                event,
            } => {
                let Some(mut rec) = load(&task_id)? else {
                    return Ok(());
                };
                let was = rec.observed.as_ref().map(|o| o.last_status.as_str());
                // The first RUNNING of a task this driver started (a
                // recovered record's start predates its record).
                if observation.last_status == "RUNNING"
                    && was != Some("RUNNING")
                    && rec.started_ms.is_some_and(|s| s >= rec.created_ms)
                {
                    crate::telemetry::record_start_latency(since_ms(rec.created_ms, now_ms()));
                }
                rec.observed = Some(observation);
                rec.updated_ms = now_ms();
                self.hub.put(&rec)?;
                if let Some(text) = event {
                    self.hub.emit(&rec, text);
                }
            }
            Step::Exit { task_id, exit } => {
                let Some(mut rec) = load(&task_id)? else {
                    return Ok(());
                };
                let text = match &exit.err {
                    Some(err) => format!("ECS task exited with code {}: {err}", exit.exit_code),
                    None => format!("ECS task exited with code {}", exit.exit_code),
                };
                if let Some(asked) = rec.stop_requested_ms {
                    crate::telemetry::record_stop_latency(since_ms(asked, now_ms()));
                }
                rec.exit = Some(exit);
                rec.updated_ms = now_ms();
                self.hub.put(&rec)?;
                self.hub.emit(&rec, text);
            }
            Step::Stop { task_id, arn } => {
                let Some(mut rec) = load(&task_id)? else {
                    return Ok(());
                };
                rec.stop_requested_ms = Some(now_ms());
                self.hub.put(&rec)?;
                let reason = truncate(
                    &format!(
                        "Stopped by Nomad (nomad-driver-ecs): allocation {} task {}",
                        rec.alloc_id, rec.task_name
                    ),
                    255,
                );
                match ecs.stop_task(&rec.cluster, &arn, &reason).await {
                    Ok(StopOutcome::Stopping(task)) => {
                        self.hub.emit(
                            &rec,
                            format!("ECS task stop requested ({})", task.last_status),
                        );
                        let _ = self
                            .self_trigger
                            .send((task_id, crate::telemetry::current_context()));
                    }
                    Ok(StopOutcome::NotFound) => {
                        if rec.exit.is_none() {
                            rec.exit = Some(ExitRecord::clean(now_ms()));
                        }
                        if rec.desired == Desired::Destroyed {
                            self.hub.forget(&task_id)?;
                        } else {
                            self.hub.put(&rec)?;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(nomad.task.id = %task_id, error = %e, "StopTask failed; will retry");
                        rec.stop_requested_ms = None;
                        rec.last_error = Some(e.to_string());
                        self.hub.put(&rec)?;
                    }
                }
            }
            Step::Forget { task_id } => self.hub.forget(&task_id)?,
            Step::LetGo { task_id, owner } => {
                let Some(mut rec) = load(&task_id)? else {
                    return Ok(());
                };
                let who = owner.map_or_else(
                    || "its tags name no owner we know".to_string(),
                    |o| format!("allocation {o} owns it now"),
                );
                self.hub.emit(
                    &rec,
                    format!(
                        "letting go of ECS task {} without stopping it: {who}",
                        rec.arn.as_deref().unwrap_or("")
                    ),
                );
                if rec.exit.is_none() {
                    rec.exit = Some(ExitRecord::clean(now_ms()));
                }
                if matches!(rec.desired, Desired::Destroyed | Desired::HandedOff { .. }) {
                    self.hub.forget(&task_id)?;
                } else {
                    rec.desired = Desired::Detached;
                    self.hub.put(&rec)?;
                }
            }
            Step::CheckHandOff { task_id } => {
                let Some(mut rec) = load(&task_id)? else {
                    return Ok(());
                };
                let Desired::HandedOff { since_ms } = rec.desired else {
                    return Ok(());
                };
                let nomad = self.nomad.lock().await.clone();
                if let Some(reason) =
                    handoff_verdict(nomad.as_ref(), &rec, since_ms, self.settings.handoff_grace)
                        .await
                {
                    tracing::info!(nomad.task.id = %task_id, aws.ecs.task.arn = rec.arn.as_deref().unwrap_or(""), reason = %reason, "stopping a handed-off ECS task");
                    self.hub
                        .emit(&rec, format!("stopping handed-off ECS task: {reason}"));
                    rec.desired = Desired::Destroyed;
                    self.hub.put(&rec)?;
                    let _ = self
                        .self_trigger
                        .send((task_id, crate::telemetry::current_context()));
                }
            }
        }
        Ok(())
    }

    fn run_failed(&self, mut rec: TaskRecord, e: &EcsError) -> Result<(), StoreError> {
        tracing::warn!(nomad.task.id = %rec.task_id, error = %e, attempt = rec.run_attempts, "RunTask failed");
        rec.last_error = Some(e.to_string());
        if !e.is_retryable() {
            let recoverable = matches!(
                e,
                EcsError::AccessDenied { .. }
                    | EcsError::BadCredentials { .. }
                    | EcsError::NoCredentials { .. }
            );
            rec.start_error = Some(StartError {
                message: e.to_string(),
                recoverable,
            });
            rec.desired = Desired::Destroyed;
        }
        self.hub.put(&rec)
    }
}

/// The orphan sweep: every `orphan_sweep_interval`, ECS tasks in the cluster
/// that carry our tags but belong to no record of ours, whose owning
/// allocation Nomad reports gone or terminal with no live replacement, are
/// stopped. Each decision is logged. Off without the Nomad API.
async fn sweep_loop(
    hub: Arc<Hub>,
    ecs: Arc<Mutex<Ecs>>,
    nomad: Arc<Mutex<Option<NomadApi>>>,
    settings: Settings,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval_at(
        Instant::now() + settings.orphan_sweep_interval,
        settings.orphan_sweep_interval,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(api) = nomad.lock().await.clone() else {
            tracing::debug!("orphan sweep skipped: no Nomad API");
            continue;
        };
        let ecs = ecs.lock().await.clone();
        match sweep(&hub, &ecs, &api, &settings).await {
            Ok(stopped) => tracing::debug!(stopped, "orphan sweep done"),
            Err(e) => tracing::warn!(error = %e, "orphan sweep failed; will retry next period"),
        }
    }
}

/// One orphan sweep; returns how many tasks it stopped.
///
/// # Errors
/// The first ECS failure.
pub async fn sweep(
    hub: &Hub,
    ecs: &Ecs,
    api: &NomadApi,
    settings: &Settings,
) -> Result<usize, EcsError> {
    let records = hub.store().list().map(|l| l.records).unwrap_or_default();
    let mut stopped = stale_records(hub, api, settings, &records).await;
    let known: HashSet<String> = records.into_iter().filter_map(|r| r.arn).collect();
    let running = ecs.list_running(&settings.cluster).await?;
    let unknown: Vec<String> = running.into_iter().filter(|a| !known.contains(a)).collect();
    if unknown.is_empty() {
        return Ok(stopped);
    }
    let (tasks, _) = ecs.describe_tasks(&settings.cluster, &unknown).await?;
    for t in tasks {
        if !t.is_ours() || t.is_stopped() {
            continue; // not ours: never touched
        }
        let Some(owner) = t.owner() else {
            continue;
        };
        let verdict = match api.allocation(owner).await {
            Ok(None) => Some(format!("allocation {owner} is gone from Nomad")),
            Ok(Some(a)) if a.job.as_ref().is_some_and(|j| j.stop) && a.desired_status != "run" => {
                Some(format!(
                    "job {} of allocation {owner} was stopped",
                    a.job_id
                ))
            }
            Ok(Some(a)) if a.is_terminal() || a.desired_status == "stop" => {
                let age = Duration::from_millis(
                    now_ms().saturating_sub(u64::try_from(a.modify_time / 1_000_000).unwrap_or(0)),
                );
                let replacement_live = if a.next_allocation.is_empty() {
                    false
                } else {
                    matches!(api.allocation(&a.next_allocation).await, Ok(Some(n)) if !n.is_terminal() && n.desired_status == "run")
                };
                (!replacement_live && age >= settings.handoff_grace).then(|| {
                    format!(
                        "allocation {owner} is {} and no allocation adopted the task",
                        a.client_status
                    )
                })
            }
            Ok(Some(_)) => None,
            Err(e) => {
                tracing::warn!(error = %e, aws.ecs.task.arn = %t.arn, "orphan sweep: Nomad API unavailable; keeping the task");
                None
            }
        };
        match verdict {
            None => {
                tracing::debug!(aws.ecs.task.arn = %t.arn, owner = %owner, "orphan sweep: keeping a task a live allocation owns")
            }
            Some(reason) => {
                tracing::info!(aws.ecs.task.arn = %t.arn, reason = %reason, "orphan sweep: stopping an orphaned ECS task");
                let r = truncate(
                    &format!("Stopped by nomad-driver-ecs orphan sweep: {reason}"),
                    255,
                );
                match ecs.stop_task(&settings.cluster, &t.arn, &r).await {
                    Ok(_) => stopped += 1,
                    Err(e) => {
                        tracing::warn!(error = %e, aws.ecs.task.arn = %t.arn, "orphan sweep: StopTask failed")
                    }
                }
            }
        }
    }
    Ok(stopped)
}

/// Records of running tasks whose allocation Nomad no longer runs (gone,
/// or terminal and told to stop, for longer than `handoff_grace`): Nomad will
/// never call DestroyTask for them (its client state was lost), so the
/// driver destroys them itself. Returns how many it marked.
async fn stale_records(
    hub: &Hub,
    api: &NomadApi,
    settings: &Settings,
    records: &[TaskRecord],
) -> usize {
    let mut marked = 0;
    for rec in records
        .iter()
        .filter(|r| r.desired == Desired::Running && r.exit.is_none() && r.arn.is_some())
    {
        let verdict = match api.allocation(&rec.alloc_id).await {
            Ok(None) => Some(format!("allocation {} is gone from Nomad", rec.alloc_id)),
            Ok(Some(a)) if a.is_terminal() && a.desired_status == "stop" => {
                let age = Duration::from_millis(
                    now_ms().saturating_sub(u64::try_from(a.modify_time / 1_000_000).unwrap_or(0)),
                );
                (age >= settings.handoff_grace).then(|| {
                    format!(
                        "allocation {} is {} and stopped",
                        rec.alloc_id, a.client_status
                    )
                })
            }
            Ok(Some(_)) => None,
            Err(e) => {
                tracing::debug!(error = %e, "sweep: Nomad API unavailable; keeping the record");
                None
            }
        };
        if let Some(reason) = verdict {
            let mut rec = rec.clone();
            tracing::info!(nomad.task.id = %rec.task_id, aws.ecs.task.arn = rec.arn.as_deref().unwrap_or(""), reason = %reason, "orphan sweep: destroying a task Nomad no longer tracks");
            rec.desired = Desired::Destroyed;
            if hub.put(&rec).is_ok() {
                hub.emit(&rec, format!("stopping ECS task: {reason}"));
                marked += 1;
            }
        }
    }
    marked
}

/// Why a handed-off task should now be stopped, or `None` to keep waiting
/// for its replacement. Without the Nomad API only the grace period decides.
async fn handoff_verdict(
    nomad: Option<&NomadApi>,
    rec: &TaskRecord,
    since_ms: u64,
    grace: Duration,
) -> Option<String> {
    let waited = Duration::from_millis(now_ms().saturating_sub(since_ms));
    let late = waited >= grace;
    let Some(api) = nomad else {
        return late
            .then(|| format!("no allocation adopted it within {grace:?} (no Nomad API to ask)"));
    };
    let alloc = match api.allocation(&rec.alloc_id).await {
        Ok(Some(a)) => a,
        Ok(None) => return Some(format!("allocation {} is gone from Nomad", rec.alloc_id)),
        Err(e) => {
            tracing::warn!(error = %e, "Nomad API unavailable while watching a hand-off");
            return late.then(|| {
                format!("no allocation adopted it within {grace:?} (Nomad API unavailable: {e})")
            });
        }
    };
    if alloc.job.as_ref().is_some_and(|j| j.stop) {
        return Some(format!("job {} was stopped", alloc.job_id));
    }
    match api.job(&alloc.namespace, &alloc.job_id).await {
        Ok(None) => return Some(format!("job {} was purged", alloc.job_id)),
        Ok(Some(j)) if j.stop => return Some(format!("job {} was stopped", alloc.job_id)),
        _ => {}
    }
    if !late {
        return None;
    }
    if alloc.next_allocation.is_empty() {
        return Some(format!(
            "no replacement allocation was placed within {grace:?}"
        ));
    }
    Some(format!(
        "replacement allocation {} did not adopt it within {grace:?}",
        alloc.next_allocation
    ))
}

/// The time from `from_ms` to `to_ms` (zero if the clock went back).
fn since_ms(from_ms: u64, to_ms: u64) -> Duration {
    Duration::from_millis(to_ms.saturating_sub(from_ms))
}

/// Report the tasks by desired state and by what ECS said in this pass.
fn record_task_states(records: &[TaskRecord], observed: &HashMap<String, Observed>) {
    let mut counts: BTreeMap<(&str, String), u64> = BTreeMap::new();
    for r in records {
        let desired = match r.desired {
            Desired::Running => "running",
            Desired::Stopping { .. } => "stopping",
            Desired::Detached => "detached",
            Desired::HandedOff { .. } => "handed_off",
            Desired::Destroyed => "destroyed",
        };
        let seen = match r.arn.as_ref().and_then(|a| observed.get(a)) {
            Some(Observed::Found(t)) => t.last_status.clone(),
            Some(Observed::Missing) => "MISSING".to_string(),
            None if r.exit.is_some() => "EXITED".to_string(),
            None if r.arn.is_none() => "NONE".to_string(),
            None => r
                .observed
                .as_ref()
                .map_or_else(|| "UNKNOWN".to_string(), |o| o.last_status.clone()),
        };
        *counts.entry((desired, seen)).or_insert(0) += 1;
    }
    let rows: Vec<(&str, &str, u64)> = counts
        .iter()
        .map(|((d, o), n)| (*d, o.as_str(), *n))
        .collect();
    crate::telemetry::record_task_states(&rows);
}

/// Whether a record needs no quick follow-up.
fn settled(rec: &TaskRecord) -> bool {
    match rec.desired {
        Desired::Detached => true,
        Desired::Running => {
            rec.exit.is_some()
                || rec.start_error.is_some()
                || rec
                    .observed
                    .as_ref()
                    .is_some_and(|o| o.last_status == "RUNNING")
        }
        Desired::Stopping { .. } | Desired::HandedOff { .. } | Desired::Destroyed => {
            rec.exit.is_some() && rec.desired != Desired::Destroyed
        }
    }
}

/// DescribeTasks for the records that need it, grouped by cluster, all in
/// one region (the caller groups by region).
async fn observe_in(ecs: &Ecs, records: &[&TaskRecord]) -> HashMap<String, Observed> {
    let mut by_cluster: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for r in records {
        let wanted = r.desired != Desired::Detached
            && (r.exit.is_none()
                || matches!(r.desired, Desired::Destroyed | Desired::HandedOff { .. }));
        if let (Some(arn), true) = (&r.arn, wanted) {
            by_cluster
                .entry(r.cluster.as_str())
                .or_default()
                .push(arn.clone());
        }
    }
    let mut out = HashMap::new();
    for (cluster, arns) in by_cluster {
        match ecs.describe_tasks(cluster, &arns).await {
            Ok((found, missing)) => {
                for t in found {
                    out.insert(t.arn.clone(), Observed::Found(t));
                }
                for arn in missing {
                    out.insert(arn, Observed::Missing);
                }
            }
            Err(e) => {
                tracing::warn!(aws.ecs.cluster = cluster, error = %e, "DescribeTasks failed; observations skipped this pass")
            }
        }
    }
    out
}

/// The ECS task a record's interrupted RunTask created, found through the
/// slot digest (`startedBy`) and the task-id tag.
async fn find_by_tags(ecs: &Ecs, rec: &TaskRecord) -> Result<Option<String>, EcsError> {
    Ok(slot_tasks(ecs, &rec.cluster, &rec.slot)
        .await?
        .into_iter()
        .find(|t| t.is_ours() && t.tags.get(TAG_TASK_ID) == Some(&rec.task_id))
        .map(|t| t.arn))
}

/// Every ECS task of a slot (running first, then stopped), with its tags:
/// ListTasks by the slot digest (`startedBy`), then DescribeTasks.
///
/// # Errors
/// The first failing ECS call.
pub async fn slot_tasks(ecs: &Ecs, cluster: &str, slot: &Slot) -> Result<Vec<EcsTask>, EcsError> {
    let arns = ecs.list_started_by(cluster, &slot.started_by()).await?;
    if arns.is_empty() {
        return Ok(Vec::new());
    }
    Ok(ecs.describe_tasks(cluster, &arns).await?.0)
}

impl EcsTask {
    /// Whether this driver started it: it carries the driver tag. Tasks
    /// without it are never stopped, adopted or reported on.
    pub fn is_ours(&self) -> bool {
        self.tags.get(TAG_DRIVER).map(String::as_str) == Some(DRIVER_ID)
    }

    /// The allocation its ownership tag names.
    pub fn owner(&self) -> Option<&String> {
        self.tags.get(TAG_ALLOC_ID)
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}
