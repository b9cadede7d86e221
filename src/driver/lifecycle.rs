//! Nomad's task lifecycle verbs over the store and the reconciler.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use super::handle::DriverState;
use super::{Driver, Runtime};
use crate::error::DriverError;
use crate::reconcile::{self, now_ms};
use crate::store::record::{Desired, ExitRecord, RunParams, Slot, TaskRecord};
use crate::task_config::{RawTaskConfig, TaskConfig};

/// How long StartTask waits for RunTask to produce a task before it reports
/// a recoverable failure.
const START_WAIT: Duration = Duration::from_secs(60);

/// The signal Nomad 1.1 to 1.9 sends to detach a remote task.
pub const DETACH: &str = "DETACH";

/// What StartTask needs from Nomad's TaskConfig.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartRequest {
    /// `<alloc>/<task>/<hex>`.
    pub task_id: String,
    /// Allocation.
    pub alloc_id: String,
    /// Task name.
    pub task_name: String,
    /// The slot.
    pub slot: Slot,
    /// cty-msgpack of the task's config block.
    pub config: Vec<u8>,
}

/// A started (or recovered) task, for the handle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Started {
    /// The reattach state.
    pub state: DriverState,
}

/// What WaitTask returns.
pub type Exit = ExitRecord;

/// A task's status for InspectTask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The record.
    pub record: TaskRecord,
}

/// The client token for a Nomad task: deterministic, ≤ 64 printable ASCII.
pub fn client_token(task_id: &str) -> String {
    let digest = Sha256::digest(task_id.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("nomad-{}", &hex[..58])
}

/// Decode and validate a task config before any ECS call.
///
/// # Errors
/// [`DriverError`] naming the field.
pub fn decode_task_config(bytes: &[u8]) -> Result<TaskConfig, DriverError> {
    let value = crate::cty::decode(bytes).map_err(DriverError::TaskConfigBytes)?;
    let json = crate::task_config::schema()
        .decode(&value)
        .map_err(DriverError::TaskConfigShape)?;
    let raw: RawTaskConfig = serde_json::from_value(json).map_err(|e| {
        DriverError::TaskConfig(crate::task_config::TaskConfigError {
            field: "task",
            reason: e.to_string(),
        })
    })?;
    Ok(TaskConfig::try_from(raw)?)
}

fn store_err(e: crate::store::StoreError) -> DriverError {
    DriverError::Store(e)
}

fn state_of(rec: &TaskRecord) -> DriverState {
    DriverState {
        v: 1,
        task_id: rec.task_id.clone(),
        alloc_id: rec.alloc_id.clone(),
        task_name: rec.task_name.clone(),
        arn: rec.arn.clone().unwrap_or_default(),
        cluster: rec.cluster.clone(),
        region: rec.region.clone(),
        slot: rec.slot.clone(),
        client_token: rec.client_token.clone(),
        task_definition: rec.task_definition.clone(),
        run: rec.run.clone(),
        started_ms: rec.started_ms.unwrap_or(rec.created_ms),
    }
}

impl Driver {
    async fn ready(&self) -> Result<(Arc<Runtime>, Arc<super::Configured>), DriverError> {
        let conf = self
            .configured()
            .ok_or(DriverError::NotReady("not configured yet"))?;
        if !conf.settings.enabled {
            return Err(DriverError::NotReady("disabled"));
        }
        let rt = self.runtime().await.ok_or(DriverError::NotReady(
            "not connected to ECS (see the fingerprint)",
        ))?;
        Ok((rt, conf))
    }

    /// StartTask: validate, record intent durably, let the reconciler run it,
    /// and return once ECS has a task (its ARN). Nomad's contract: the
    /// handle must carry the request's task ID.
    ///
    /// # Errors
    /// A config error (no ECS call made), or a start failure; those a retry
    /// can fix are recoverable.
    #[tracing::instrument(skip_all, fields(nomad.task.id = %req.task_id, nomad.alloc.id = %req.alloc_id, aws.ecs.task.arn))]
    pub async fn start_task(&self, req: StartRequest) -> Result<Started, DriverError> {
        let cfg = decode_task_config(&req.config)?;
        let (rt, conf) = self.ready().await?;
        let hub = rt.reconciler.hub();
        let existing = hub.store().get(&req.task_id).map_err(store_err)?;
        if existing.is_none() {
            // Nomad runs one task per allocation and name at a time: an older
            // record of the same task (a failed attempt) is superseded.
            for old in hub.store().list().map_err(store_err)?.records {
                if old.alloc_id == req.alloc_id
                    && old.task_name == req.task_name
                    && old.task_id != req.task_id
                    && matches!(old.desired, Desired::Running)
                {
                    let mut old = old;
                    old.desired = Desired::Destroyed;
                    hub.put(&old).map_err(store_err)?;
                    rt.reconciler.trigger(&old.task_id);
                }
            }
            let now = now_ms();
            let rec = TaskRecord {
                task_id: req.task_id.clone(),
                alloc_id: req.alloc_id.clone(),
                task_name: req.task_name.clone(),
                slot: req.slot.clone(),
                desired: Desired::Running,
                client_token: client_token(&req.task_id),
                cluster: conf.settings.cluster.clone(),
                region: conf
                    .ecs
                    .as_ref()
                    .map(|e| e.region().to_string())
                    .unwrap_or_default(),
                task_definition: cfg.task_definition.clone(),
                arn: None,
                observed: None,
                exit: None,
                created_ms: now,
                updated_ms: now,
                started_ms: None,
                run: RunParams {
                    launch_type: cfg.launch_type.map(|l| l.as_str().to_string()),
                    subnets: cfg
                        .vpc
                        .as_ref()
                        .map(|v| v.subnets.clone())
                        .unwrap_or_default(),
                    security_groups: cfg
                        .vpc
                        .as_ref()
                        .map(|v| v.security_groups.clone())
                        .unwrap_or_default(),
                    assign_public_ip: cfg.vpc.as_ref().and_then(|v| v.assign_public_ip),
                },
                run_requested_ms: None,
                run_attempts: 0,
                start_error: None,
                stop_requested_ms: None,
                last_error: None,
            };
            // Takeover on Nomad 1.10+: the allocation this one replaces was
            // lost or drained and its ECS task may still run; adopt it.
            let mut rec = rec;
            if let Some((arn, prev)) = self.adoptable(&rt, &conf, &rec).await? {
                rec.arn = Some(arn.clone());
                rec.run_requested_ms = Some(now);
                rec.started_ms = Some(now);
                hub.put(&rec).map_err(store_err)?;
                hub.emit(
                    &rec,
                    format!("adopted ECS task {arn} from allocation {prev}"),
                );
            } else {
                // Intent first: durable before RunTask is ever sent.
                hub.put(&rec).map_err(store_err)?;
            }
        }
        let mut rx = hub.watch(&req.task_id).map_err(store_err)?;
        rt.reconciler.trigger(&req.task_id);
        let deadline = tokio::time::Instant::now() + START_WAIT;
        loop {
            let rec = rx.borrow_and_update().clone();
            match rec {
                None => {
                    return Err(DriverError::StartFailed {
                        message: "the task record vanished".into(),
                        recoverable: true,
                    });
                }
                Some(rec) if rec.arn.is_some() => {
                    tracing::Span::current()
                        .record("aws.ecs.task.arn", rec.arn.as_deref().unwrap_or(""));
                    return Ok(Started {
                        state: state_of(&rec),
                    });
                }
                Some(rec) => {
                    if let Some(err) = &rec.start_error {
                        return Err(DriverError::StartFailed {
                            message: err.message.clone(),
                            recoverable: err.recoverable,
                        });
                    }
                }
            }
            tokio::select! {
                res = rx.changed() => if res.is_err() {
                    return Err(DriverError::StartFailed { message: "the driver is shutting down".into(), recoverable: true });
                },
                () = tokio::time::sleep_until(deadline) => {
                    let last = hub.store().get(&req.task_id).ok().flatten();
                    let why = last.as_ref().and_then(|r| r.last_error.clone()).unwrap_or_else(|| "no answer from ECS".into());
                    if let Some(mut r) = last && r.arn.is_none() {
                        // Nomad will start a new attempt; this one must not
                        // leave a task behind if RunTask did get through.
                        r.desired = Desired::Destroyed;
                        let _ = hub.put(&r);
                        rt.reconciler.trigger(&r.task_id);
                    }
                    return Err(DriverError::StartFailed { message: format!("RunTask did not complete within {}s: {why}", START_WAIT.as_secs()), recoverable: true });
                }
            }
        }
    }

    /// WaitTask: block until the task has exited; at once if it already has.
    /// Concurrent calls are fine. Cancel-safe: dropping the future just stops
    /// waiting.
    ///
    /// # Errors
    /// [`DriverError::TaskNotFound`] for an unknown (or destroyed) task.
    pub async fn wait_task(&self, task_id: &str) -> Result<Exit, DriverError> {
        let rt = self
            .runtime()
            .await
            .ok_or_else(|| DriverError::TaskNotFound(task_id.to_string()))?;
        let mut rx = rt.reconciler.hub().watch(task_id).map_err(store_err)?;
        loop {
            match rx.borrow_and_update().clone() {
                None => return Err(DriverError::TaskNotFound(task_id.to_string())),
                Some(rec) => {
                    if let Some(exit) = rec.exit {
                        return Ok(exit);
                    }
                }
            }
            if rx.changed().await.is_err() {
                return Err(DriverError::TaskNotFound(task_id.to_string()));
            }
        }
    }

    /// StopTask: ask ECS to stop (SIGTERM, then SIGKILL after the task
    /// definition's stopTimeout) and wait up to `timeout` for STOPPED. An
    /// unknown or finished task succeeds. `DETACH` stops tracking and leaves
    /// the ECS task running. The record stays for WaitTask.
    ///
    /// # Errors
    /// [`DriverError::StopFailed`] when ECS never accepted the stop.
    #[tracing::instrument(skip_all, fields(nomad.task.id = %task_id, signal))]
    pub async fn stop_task(
        &self,
        task_id: &str,
        timeout: Duration,
        signal: &str,
    ) -> Result<(), DriverError> {
        let Some(rt) = self.runtime().await else {
            return Ok(());
        };
        let hub = rt.reconciler.hub();
        let Some(mut rec) = hub.store().get(task_id).map_err(store_err)? else {
            return Ok(());
        };
        if rec.exit.is_some() {
            return Ok(());
        }
        if signal != DETACH && rec.arn.is_some() {
            let nomad = self.configured().and_then(|c| c.nomad.clone());
            if let Some(api) = nomad {
                match api.allocation(&rec.alloc_id).await {
                    Ok(Some(a)) if a.is_migrating() || a.is_lost() => {
                        let why = if a.is_lost() {
                            "its node was lost"
                        } else {
                            "a drain migrates it"
                        };
                        rec.desired = Desired::HandedOff { since_ms: now_ms() };
                        rec.exit = Some(ExitRecord::clean(now_ms()));
                        hub.put(&rec).map_err(store_err)?;
                        hub.emit(
                            &rec,
                            format!(
                                "handed off: allocation {} stops because {why}; ECS task {} keeps running for its replacement",
                                rec.alloc_id,
                                rec.arn.as_deref().unwrap_or("")
                            ),
                        );
                        rt.reconciler.trigger(task_id);
                        return Ok(());
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "Nomad API unavailable; stopping the ECS task instead of handing it off");
                        hub.emit(&rec, format!("Nomad API unavailable ({e}); stopping the ECS task instead of handing it off"));
                    }
                }
            }
        }
        if signal == DETACH {
            rec.desired = Desired::Detached;
            rec.exit = Some(ExitRecord::clean(now_ms()));
            hub.put(&rec).map_err(store_err)?;
            hub.emit(
                &rec,
                "detached: the ECS task keeps running for the replacement allocation".into(),
            );
            return Ok(());
        }
        let deadline_ms = now_ms() + u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        if !matches!(rec.desired, Desired::Stopping { .. } | Desired::Destroyed) {
            rec.desired = Desired::Stopping { deadline_ms };
            hub.put(&rec).map_err(store_err)?;
        }
        let mut rx = hub.watch(task_id).map_err(store_err)?;
        rt.reconciler.trigger(task_id);
        let wait = timeout.max(Duration::from_secs(1));
        let until = tokio::time::Instant::now() + wait;
        loop {
            let cur = rx.borrow_and_update().clone();
            match cur {
                None => return Ok(()),
                Some(r) if r.exit.is_some() => return Ok(()),
                Some(_) => {}
            }
            tokio::select! {
                res = rx.changed() => if res.is_err() { return Ok(()) },
                () = tokio::time::sleep_until(until) => {
                    let r = hub.store().get(task_id).map_err(store_err)?;
                    return match r {
                        Some(r) if r.exit.is_none() && r.stop_requested_ms.is_none() => Err(DriverError::StopFailed {
                            arn: r.arn.clone().unwrap_or_default(),
                            message: r.last_error.unwrap_or_else(|| "ECS did not accept StopTask in time".into()),
                        }),
                        // ECS accepted the stop; WaitTask reports the exit.
                        _ => Ok(()),
                    };
                }
            }
        }
    }

    /// DestroyTask: remove the task. With `force` a running task is stopped
    /// first (in the background; the record stays until ECS confirms, so
    /// nothing is orphaned). Unknown tasks succeed.
    ///
    /// # Errors
    /// [`DriverError::StillRunning`] without `force` on a running task.
    #[tracing::instrument(skip_all, fields(nomad.task.id = %task_id, force))]
    pub async fn destroy_task(&self, task_id: &str, force: bool) -> Result<(), DriverError> {
        let Some(rt) = self.runtime().await else {
            return Ok(());
        };
        let hub = rt.reconciler.hub();
        let Some(mut rec) = hub.store().get(task_id).map_err(store_err)? else {
            return Ok(());
        };
        let finished = rec.exit.is_some()
            && !matches!(
                rec.observed.as_ref().map(|o| o.last_status.as_str()),
                Some("RUNNING" | "PENDING" | "PROVISIONING" | "ACTIVATING")
            )
            || rec.desired == Desired::Detached
            || (rec.arn.is_none() && rec.run_requested_ms.is_none());
        if finished {
            hub.forget(task_id).map_err(store_err)?;
            return Ok(());
        }
        if matches!(rec.desired, Desired::HandedOff { .. }) {
            // Nomad is done with the allocation; the ECS task now belongs to
            // the hand-off, which the reconciler sees through (adoption,
            // job stop, or the grace period).
            return Ok(());
        }
        if !force && rec.exit.is_none() {
            return Err(DriverError::StillRunning(task_id.to_string()));
        }
        rec.desired = Desired::Destroyed;
        hub.put(&rec).map_err(store_err)?;
        rt.reconciler.trigger(task_id);
        Ok(())
    }

    /// InspectTask: the record as the reconciler last saw it.
    ///
    /// # Errors
    /// [`DriverError::TaskNotFound`].
    pub async fn inspect_task(&self, task_id: &str) -> Result<TaskRecord, DriverError> {
        let rt = self
            .runtime()
            .await
            .ok_or_else(|| DriverError::TaskNotFound(task_id.to_string()))?;
        let rec = rt
            .reconciler
            .hub()
            .store()
            .get(task_id)
            .map_err(store_err)?;
        match rec {
            Some(r) if r.desired != Desired::Destroyed => Ok(r),
            _ => Err(DriverError::TaskNotFound(task_id.to_string())),
        }
    }

    /// RecoverTask: rebuild from `driver_state` alone. Idempotent. A handle
    /// from another allocation (Nomad 1.1 to 1.9 propagation on drain or node
    /// loss) adopts the ECS task: the owner tag moves to `alloc_id`.
    ///
    /// # Errors
    /// A handle we cannot decode, or a store failure.
    #[tracing::instrument(skip_all, fields(nomad.task.id = %task_id, nomad.alloc.id = %alloc_id, aws.ecs.task.arn))]
    pub async fn recover_task(
        &self,
        task_id: &str,
        alloc_id: &str,
        task_name: &str,
        driver_state: &[u8],
    ) -> Result<(), DriverError> {
        let state = DriverState::decode(driver_state)?;
        tracing::Span::current().record("aws.ecs.task.arn", state.arn.as_str());
        let (rt, _) = self.ready().await?;
        let hub = rt.reconciler.hub();
        if hub.store().get(task_id).map_err(store_err)?.is_some() {
            return Ok(());
        }
        let now = now_ms();
        let alloc = if alloc_id.is_empty() {
            state.alloc_id.clone()
        } else {
            alloc_id.to_string()
        };
        let rec = TaskRecord {
            task_id: task_id.to_string(),
            alloc_id: alloc.clone(),
            task_name: if task_name.is_empty() {
                state.task_name.clone()
            } else {
                task_name.to_string()
            },
            slot: state.slot.clone(),
            desired: Desired::Running,
            client_token: state.client_token.clone(),
            cluster: state.cluster.clone(),
            region: state.region.clone(),
            task_definition: state.task_definition.clone(),
            arn: Some(state.arn.clone()),
            observed: None,
            exit: None,
            created_ms: now,
            updated_ms: now,
            started_ms: Some(state.started_ms),
            run: state.run.clone(),
            run_requested_ms: Some(state.started_ms),
            run_attempts: 1,
            start_error: None,
            stop_requested_ms: None,
            last_error: None,
        };
        if alloc != state.alloc_id || task_id != state.task_id {
            let ecs = rt.reconciler.ecs().await;
            ecs.tag_task(&state.arn, &reconcile::ownership_tags(&rec, &alloc))
                .await
                .map_err(|e| DriverError::StartFailed {
                    message: format!("adopting {}: {e}", state.arn),
                    recoverable: true,
                })?;
            tracing::info!(from = %state.alloc_id, to = %alloc, "adopted the ECS task of a previous allocation");
        }
        hub.put(&rec).map_err(store_err)?;
        if alloc != state.alloc_id {
            hub.emit(
                &rec,
                format!(
                    "adopted ECS task {} from allocation {}",
                    state.arn, state.alloc_id
                ),
            );
        }
        rt.reconciler.trigger(task_id);
        Ok(())
    }

    /// The running ECS task of the allocation `rec` replaces, when that
    /// allocation was lost or drained (Nomad 1.10+ gives no handle). Its
    /// owner tag is moved to `rec`'s allocation. Destructive updates (the
    /// previous allocation simply stopped) start fresh.
    ///
    /// # Errors
    /// A recoverable start failure when the task was found but its
    /// ownership could not be moved (starting a second task would duplicate).
    async fn adoptable(
        &self,
        rt: &Runtime,
        conf: &super::Configured,
        rec: &TaskRecord,
    ) -> Result<Option<(String, String)>, DriverError> {
        let Some(api) = conf.nomad.as_ref() else {
            return Ok(None);
        };
        let alloc = match api.allocation(&rec.alloc_id).await {
            Ok(Some(a)) => a,
            Ok(None) => return Ok(None),
            Err(e) => {
                tracing::warn!(error = %e, "Nomad API unavailable; starting a new ECS task without checking for one to adopt");
                rt.reconciler.hub().emit(
                    rec,
                    format!("Nomad API unavailable ({e}); not checking for an ECS task to adopt"),
                );
                return Ok(None);
            }
        };
        if alloc.previous_allocation.is_empty() {
            return Ok(None);
        }
        let prev = match api.allocation(&alloc.previous_allocation).await {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(None),
            Err(e) => {
                tracing::warn!(error = %e, "Nomad API unavailable; not adopting");
                return Ok(None);
            }
        };
        if !(prev.is_lost() || prev.is_migrating()) {
            return Ok(None);
        }
        let ecs = rt.reconciler.ecs().await;
        let candidates = reconcile::slot_tasks(&ecs, &rec.cluster, &rec.slot)
            .await
            .map_err(|e| DriverError::StartFailed {
                message: format!("looking for the ECS task to adopt: {e}"),
                recoverable: true,
            })?;
        let Some(task) = candidates
            .into_iter()
            .find(|t| !t.is_stopped() && t.is_ours() && t.owner() == Some(&prev.id))
        else {
            return Ok(None);
        };
        ecs.tag_task(&task.arn, &reconcile::ownership_tags(rec, &rec.alloc_id))
            .await
            .map_err(|e| DriverError::StartFailed {
                message: format!("adopting {}: {e}", task.arn),
                recoverable: true,
            })?;
        tracing::info!(aws.ecs.task.arn = %task.arn, from = %prev.id, to = %rec.alloc_id, "adopted the ECS task of a lost or drained allocation");
        Ok(Some((task.arn, prev.id)))
    }

    /// Subscribe to every task's events.
    pub async fn events(&self) -> Option<tokio::sync::broadcast::Receiver<reconcile::TaskEvent>> {
        self.runtime()
            .await
            .map(|rt| rt.reconciler.hub().subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_tokens_are_deterministic_printable_and_at_most_64_chars() {
        let t = client_token("2f1c7c1e-0000-4000-8000-000000000000/web/0a1b2c3d");
        assert_eq!(
            t,
            client_token("2f1c7c1e-0000-4000-8000-000000000000/web/0a1b2c3d")
        );
        assert_eq!(t.len(), 64);
        assert!(t.bytes().all(|b| (33..=126).contains(&b)));
        assert_ne!(t, client_token("other"));
    }
}
