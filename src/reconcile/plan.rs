//! The pure heart of the reconciler: `plan(desired, observed) -> steps`.
//! No I/O, no async, no clock: the caller passes `now_ms`.

use std::collections::HashMap;

use crate::ecs::EcsTask;
use crate::store::record::{Desired, ExitRecord, Observation, TaskRecord};

use super::exit;

/// Timing rules of a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// How long MISSING is tolerated before a task counts as lost
    /// (eventual consistency right after RunTask, and any later blip).
    pub missing_grace_ms: u64,
    /// How long after a StopTask we send it again if ECS still runs the task.
    pub stop_retry_ms: u64,
    /// How long the record of an exited task is kept for a WaitTask or
    /// DestroyTask that never comes (Nomad lost its state), before it is
    /// forgotten.
    pub exited_retention_ms: u64,
    /// How long after a RunTask attempt we try again (same client token).
    pub run_retry_ms: u64,
}

impl Policy {
    /// The policy the settings ask for.
    pub fn from_settings(s: &crate::config::Settings) -> Self {
        Self {
            missing_grace_ms: u64::try_from(s.missing_grace.as_millis()).unwrap_or(u64::MAX),
            ..Self::default()
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            missing_grace_ms: 120_000,
            stop_retry_ms: 15_000,
            run_retry_ms: 2_000,
            exited_retention_ms: 86_400_000,
        }
    }
}

/// What a pass learned about one ARN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// DescribeTasks returned it.
    Found(EcsTask),
    /// DescribeTasks reported it MISSING.
    Missing,
}

/// One thing to do. Steps for a record are applied in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// RunTask (again) with the record's client token.
    Run {
        /// The record.
        task_id: String,
    },
    /// Find the ECS task of a record that has intent but no ARN (slot
    /// digest plus task-id tag), and record its ARN; forget the record when
    /// there is none.
    Resolve {
        /// The record.
        task_id: String,
    },
    /// Store a new observation; `event` is a task event to emit.
    Observe {
        /// The record.
        task_id: String,
        /// The observation.
        observation: Observation,
        /// Event text for Nomad, when something worth telling happened.
        event: Option<String>,
    },
    /// Record the exit result (and wake WaitTask).
    Exit {
        /// The record.
        task_id: String,
        /// The result.
        exit: ExitRecord,
    },
    /// StopTask.
    Stop {
        /// The record.
        task_id: String,
        /// The task.
        arn: String,
    },
    /// The ECS task belongs to another allocation (or lacks our tags): stop
    /// tracking it without stopping it.
    LetGo {
        /// The record.
        task_id: String,
        /// The owner the tags name, if any.
        owner: Option<String>,
    },
    /// A handed-off task nobody adopted yet: ask Nomad whether a
    /// replacement is still coming, and stop the task if not.
    CheckHandOff {
        /// The record.
        task_id: String,
    },
    /// Delete the record: nothing is left to do for it.
    Forget {
        /// The record.
        task_id: String,
    },
}

impl Step {
    /// The record the step is about.
    pub fn task_id(&self) -> &str {
        match self {
            Self::Run { task_id }
            | Self::Resolve { task_id }
            | Self::Observe { task_id, .. }
            | Self::Exit { task_id, .. }
            | Self::Stop { task_id, .. }
            | Self::LetGo { task_id, .. }
            | Self::CheckHandOff { task_id }
            | Self::Forget { task_id } => task_id,
        }
    }

    /// The step's span name (`task.<verb>`).
    pub fn span_name(&self) -> &'static str {
        match self {
            Self::Run { .. } => "task.run",
            Self::Resolve { .. } => "task.resolve",
            Self::Observe { .. } => "task.observe",
            Self::Exit { .. } => "task.exit",
            Self::Stop { .. } => "task.stop",
            Self::LetGo { .. } => "task.let_go",
            Self::CheckHandOff { .. } => "task.check_hand_off",
            Self::Forget { .. } => "task.forget",
        }
    }
}

/// Compute the steps that move ECS towards the records. `observed` holds
/// what this pass saw, keyed by ARN; ARNs absent from it were not queried.
pub fn plan(
    records: &[TaskRecord],
    observed: &HashMap<String, Observed>,
    now_ms: u64,
    policy: &Policy,
) -> Vec<Step> {
    let mut steps = Vec::new();
    for rec in records {
        plan_one(rec, observed, now_ms, policy, &mut steps);
    }
    steps
}

fn plan_one(
    rec: &TaskRecord,
    observed: &HashMap<String, Observed>,
    now_ms: u64,
    policy: &Policy,
    steps: &mut Vec<Step>,
) {
    let id = || rec.task_id.clone();
    if let Some(exit) = &rec.exit
        && !matches!(rec.desired, Desired::HandedOff { .. })
        && now_ms.saturating_sub(exit.at_ms) >= policy.exited_retention_ms
    {
        steps.push(Step::Forget { task_id: id() });
        return;
    }
    let Some(arn) = rec.arn.as_deref() else {
        match rec.desired {
            Desired::Running if rec.exit.is_none() && rec.start_error.is_none() => {
                let due = rec
                    .run_requested_ms
                    .is_none_or(|t| now_ms.saturating_sub(t) >= policy.run_retry_ms);
                if due {
                    steps.push(Step::Run { task_id: id() });
                }
            }
            Desired::Running | Desired::Detached => {}
            Desired::Stopping { .. } | Desired::HandedOff { .. } | Desired::Destroyed => {
                if rec.run_requested_ms.is_some() {
                    steps.push(Step::Resolve { task_id: id() });
                } else {
                    // RunTask was never sent: nothing can exist in ECS.
                    if rec.exit.is_none() && matches!(rec.desired, Desired::Stopping { .. }) {
                        steps.push(Step::Exit {
                            task_id: id(),
                            exit: exit::lost(rec, "(never started)", 0, now_ms),
                        });
                    }
                    if rec.desired == Desired::Destroyed {
                        steps.push(Step::Forget { task_id: id() });
                    }
                }
            }
        }
        return;
    };
    if rec.desired == Desired::Detached {
        return;
    }
    match observed.get(arn) {
        None => {}
        Some(Observed::Found(task)) => {
            let obs = observation_of(task, now_ms);
            let changed = rec.observed.as_ref().is_none_or(|o| !same_state(o, &obs));
            if changed {
                let prev = rec.observed.as_ref().map(|o| o.last_status.as_str());
                let event = (prev != Some(obs.last_status.as_str())).then(|| event_text(task));
                steps.push(Step::Observe {
                    task_id: id(),
                    observation: obs,
                    event,
                });
            }
            if task.is_stopped() {
                if rec.exit.is_none() {
                    steps.push(Step::Exit {
                        task_id: id(),
                        exit: exit::exit_from(rec, task, now_ms),
                    });
                }
                if matches!(rec.desired, Desired::Destroyed | Desired::HandedOff { .. }) {
                    steps.push(Step::Forget { task_id: id() });
                }
            } else {
                // Ownership: only a task that carries our tags and names this
                // allocation as its owner is ever stopped.
                let owner = task.owner();
                let ours = task.is_ours() && owner.is_some_and(|a| a == &rec.alloc_id);
                match rec.desired {
                    Desired::Stopping { .. } | Desired::Destroyed if !ours => {
                        steps.push(Step::LetGo {
                            task_id: id(),
                            owner: owner.cloned(),
                        });
                    }
                    Desired::Stopping { .. } | Desired::Destroyed => {
                        let due = rec
                            .stop_requested_ms
                            .is_none_or(|t| now_ms.saturating_sub(t) >= policy.stop_retry_ms);
                        if due {
                            steps.push(Step::Stop {
                                task_id: id(),
                                arn: arn.to_string(),
                            });
                        }
                    }
                    Desired::HandedOff { .. } if !ours && owner.is_some() => {
                        steps.push(Step::LetGo {
                            task_id: id(),
                            owner: owner.cloned(),
                        });
                    }
                    Desired::HandedOff { .. } => steps.push(Step::CheckHandOff { task_id: id() }),
                    Desired::Running | Desired::Detached => {}
                }
            }
        }
        Some(Observed::Missing) => {
            let since = rec.observed.as_ref().and_then(|o| o.missing_since_ms);
            match since {
                None => {
                    let mut obs = rec.observed.clone().unwrap_or_else(|| Observation {
                        last_status: "MISSING".into(),
                        desired_status: String::new(),
                        stop_code: None,
                        stopped_reason: None,
                        exit_code: None,
                        container_reason: None,
                        owner_alloc: None,
                        observed_at_ms: now_ms,
                        missing_since_ms: None,
                    });
                    obs.missing_since_ms = Some(now_ms);
                    obs.observed_at_ms = now_ms;
                    steps.push(Step::Observe {
                        task_id: id(),
                        observation: obs,
                        event: None,
                    });
                }
                Some(since) => {
                    let missing_for = now_ms.saturating_sub(since);
                    // A stop we asked for that has aged out is simply done.
                    let gone = missing_for >= policy.missing_grace_ms
                        || exit::stop_was_requested(rec) && rec.stop_requested_ms.is_some();
                    if gone {
                        if rec.exit.is_none() {
                            steps.push(Step::Exit {
                                task_id: id(),
                                exit: exit::lost(rec, arn, missing_for, now_ms),
                            });
                        }
                        if matches!(rec.desired, Desired::Destroyed | Desired::HandedOff { .. }) {
                            steps.push(Step::Forget { task_id: id() });
                        }
                    }
                }
            }
        }
    }
}

/// The observation a task gives.
pub fn observation_of(task: &EcsTask, now_ms: u64) -> Observation {
    let container = task
        .containers
        .iter()
        .find(|c| c.exit_code.is_some_and(|c| c != 0))
        .or_else(|| task.containers.iter().find(|c| c.exit_code.is_some()))
        .or_else(|| task.containers.first());
    Observation {
        last_status: task.last_status.clone(),
        desired_status: task.desired_status.clone(),
        stop_code: task.stop_code.clone(),
        stopped_reason: task.stopped_reason.clone(),
        exit_code: container.and_then(|c| c.exit_code),
        container_reason: container.and_then(|c| c.reason.clone()),
        owner_alloc: task.owner().cloned(),
        observed_at_ms: now_ms,
        missing_since_ms: None,
    }
}

fn same_state(a: &Observation, b: &Observation) -> bool {
    a.last_status == b.last_status
        && a.desired_status == b.desired_status
        && a.stop_code == b.stop_code
        && a.stopped_reason == b.stopped_reason
        && a.exit_code == b.exit_code
        && a.container_reason == b.container_reason
        && a.owner_alloc == b.owner_alloc
        && a.missing_since_ms == b.missing_since_ms
}

fn event_text(task: &EcsTask) -> String {
    match (&task.stop_code, &task.stopped_reason) {
        (_, Some(reason)) if task.is_stopped() => {
            format!("ECS task {}: {reason}", task.last_status)
        }
        (Some(code), None) if task.is_stopped() => {
            format!("ECS task {} ({code})", task.last_status)
        }
        _ => format!("ECS task {}", task.last_status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ecs::ContainerState;

    const NOW: u64 = 1_000_000;
    const ARN: &str = "arn:aws:ecs:us-east-1:123456789012:task/nomad/t1";

    fn record() -> TaskRecord {
        crate::store::record::fixture::intent_to_run("a1/web/00000001")
    }

    fn running() -> TaskRecord {
        TaskRecord {
            arn: Some(ARN.into()),
            run_requested_ms: Some(NOW - 9_000),
            started_ms: Some(NOW - 9_000),
            ..record()
        }
    }

    fn task(last: &str, stop_code: Option<&str>, exit: Option<i32>) -> EcsTask {
        EcsTask {
            arn: ARN.into(),
            last_status: last.into(),
            desired_status: if last == "STOPPED" {
                "STOPPED".into()
            } else {
                "RUNNING".into()
            },
            stop_code: stop_code.map(Into::into),
            stopped_reason: stop_code.map(|_| "Essential container in task exited".into()),
            tags: [
                (
                    crate::reconcile::TAG_DRIVER.to_string(),
                    crate::reconcile::DRIVER_ID.to_string(),
                ),
                (crate::reconcile::TAG_ALLOC_ID.to_string(), "a1".to_string()),
            ]
            .into_iter()
            .collect(),
            containers: vec![ContainerState {
                name: "app".into(),
                last_status: Some(last.into()),
                exit_code: exit,
                reason: None,
            }],
            ..EcsTask::default()
        }
    }

    fn foreign(mut t: EcsTask) -> EcsTask {
        t.tags
            .insert(crate::reconcile::TAG_ALLOC_ID.to_string(), "a2".to_string());
        t
    }

    fn seen(t: EcsTask) -> HashMap<String, Observed> {
        HashMap::from([(ARN.to_string(), Observed::Found(t))])
    }

    fn kinds(steps: &[Step]) -> Vec<&'static str> {
        steps
            .iter()
            .map(|s| match s {
                Step::Run { .. } => "run",
                Step::Resolve { .. } => "resolve",
                Step::Observe { .. } => "observe",
                Step::Exit { .. } => "exit",
                Step::Stop { .. } => "stop",
                Step::Forget { .. } => "forget",
                Step::LetGo { .. } => "let_go",
                Step::CheckHandOff { .. } => "check_handoff",
            })
            .collect()
    }

    #[test]
    fn the_plan_table() {
        let policy = Policy::default();
        let observed_running = |r: TaskRecord| TaskRecord {
            observed: Some(observation_of(&task("RUNNING", None, None), NOW - 1)),
            ..r
        };
        let stopping = Desired::Stopping {
            deadline_ms: NOW + 5_000,
        };
        type Case = (
            &'static str,
            TaskRecord,
            HashMap<String, Observed>,
            Vec<&'static str>,
        );
        let cases: Vec<Case> = vec![
            ("a new intent is run", record(), HashMap::new(), vec!["run"]),
            (
                "a RunTask just sent is not resent at once",
                TaskRecord {
                    run_requested_ms: Some(NOW - 100),
                    ..record()
                },
                HashMap::new(),
                vec![],
            ),
            (
                "a RunTask without answer is retried with the same token",
                TaskRecord {
                    run_requested_ms: Some(NOW - 5_000),
                    ..record()
                },
                HashMap::new(),
                vec!["run"],
            ),
            (
                "a failed start is never rerun",
                TaskRecord {
                    start_error: Some(crate::store::record::StartError {
                        message: "x".into(),
                        recoverable: true,
                    }),
                    ..record()
                },
                HashMap::new(),
                vec![],
            ),
            (
                "a destroyed intent that may have reached ECS is resolved",
                TaskRecord {
                    desired: Desired::Destroyed,
                    run_requested_ms: Some(NOW - 5_000),
                    ..record()
                },
                HashMap::new(),
                vec!["resolve"],
            ),
            (
                "a destroyed intent never sent is forgotten",
                TaskRecord {
                    desired: Desired::Destroyed,
                    ..record()
                },
                HashMap::new(),
                vec!["forget"],
            ),
            (
                "the first sight of a running task is recorded",
                running(),
                seen(task("RUNNING", None, None)),
                vec!["observe"],
            ),
            (
                "an unchanged running task needs nothing",
                observed_running(running()),
                seen(task("RUNNING", None, None)),
                vec![],
            ),
            (
                "a task not queried this pass needs nothing",
                running(),
                HashMap::new(),
                vec![],
            ),
            (
                "a stopped task gets its exit",
                observed_running(running()),
                seen(task("STOPPED", Some("EssentialContainerExited"), Some(3))),
                vec!["observe", "exit"],
            ),
            (
                "a stop request stops a running task",
                TaskRecord {
                    desired: stopping.clone(),
                    ..observed_running(running())
                },
                seen(task("RUNNING", None, None)),
                vec!["stop"],
            ),
            (
                "a stop just sent is not resent",
                TaskRecord {
                    desired: stopping.clone(),
                    stop_requested_ms: Some(NOW - 1_000),
                    ..observed_running(running())
                },
                seen(task("RUNNING", None, None)),
                vec![],
            ),
            (
                "a stop unanswered for long is resent",
                TaskRecord {
                    desired: stopping,
                    stop_requested_ms: Some(NOW - 20_000),
                    ..observed_running(running())
                },
                seen(task("RUNNING", None, None)),
                vec!["stop"],
            ),
            (
                "a destroyed running task is stopped",
                TaskRecord {
                    desired: Desired::Destroyed,
                    ..observed_running(running())
                },
                seen(task("RUNNING", None, None)),
                vec!["stop"],
            ),
            (
                "a destroyed stopped task is forgotten after its exit",
                TaskRecord {
                    desired: Desired::Destroyed,
                    ..observed_running(running())
                },
                seen(task("STOPPED", Some("UserInitiated"), Some(143))),
                vec!["observe", "exit", "forget"],
            ),
            (
                "a detached task is left alone",
                TaskRecord {
                    desired: Desired::Detached,
                    ..running()
                },
                seen(task("RUNNING", None, None)),
                vec![],
            ),
            (
                "a task another allocation owns is let go, never stopped",
                TaskRecord {
                    desired: Desired::Stopping { deadline_ms: NOW },
                    ..observed_running(running())
                },
                seen(foreign(task("RUNNING", None, None))),
                vec!["observe", "let_go"],
            ),
            (
                "a task without our tags is never stopped",
                TaskRecord {
                    desired: Desired::Destroyed,
                    ..observed_running(running())
                },
                seen(EcsTask {
                    tags: Default::default(),
                    ..task("RUNNING", None, None)
                }),
                vec!["observe", "let_go"],
            ),
            (
                "a handed-off task still ours is checked with Nomad",
                TaskRecord {
                    desired: Desired::HandedOff { since_ms: NOW - 1 },
                    ..observed_running(running())
                },
                seen(task("RUNNING", None, None)),
                vec!["check_handoff"],
            ),
            (
                "a handed-off task a replacement adopted is let go",
                TaskRecord {
                    desired: Desired::HandedOff { since_ms: NOW - 1 },
                    ..observed_running(running())
                },
                seen(foreign(task("RUNNING", None, None))),
                vec!["observe", "let_go"],
            ),
            (
                "a running task adopted elsewhere keeps being watched",
                observed_running(running()),
                seen(foreign(task("RUNNING", None, None))),
                vec!["observe"],
            ),
            (
                "the first MISSING starts the grace period",
                running(),
                HashMap::from([(ARN.to_string(), Observed::Missing)]),
                vec!["observe"],
            ),
        ];
        for (name, rec, obs, want) in cases {
            let steps = plan(&[rec], &obs, NOW, &policy);
            assert_eq!(kinds(&steps), want, "{name}: {steps:?}");
        }
    }

    #[test]
    fn missing_is_tolerated_for_the_grace_period_then_the_task_is_lost() {
        let policy = Policy {
            missing_grace_ms: 60_000,
            ..Policy::default()
        };
        let missing = HashMap::from([(ARN.to_string(), Observed::Missing)]);
        let mut rec = running();
        let first = plan(std::slice::from_ref(&rec), &missing, NOW, &policy);
        let Step::Observe { observation, .. } = &first[0] else {
            panic!("{first:?}")
        };
        rec.observed = Some(observation.clone());
        assert!(
            plan(std::slice::from_ref(&rec), &missing, NOW + 59_000, &policy).is_empty(),
            "within the grace period"
        );
        let late = plan(std::slice::from_ref(&rec), &missing, NOW + 61_000, &policy);
        let Some(Step::Exit { exit, .. }) = late.first() else {
            panic!("{late:?}")
        };
        assert_eq!(exit.exit_code, 1);
        assert!(exit.err.as_deref().unwrap().contains("lost"), "{exit:?}");
    }

    #[test]
    fn a_missing_task_we_asked_to_stop_is_simply_done() {
        let policy = Policy::default();
        let missing = HashMap::from([(ARN.to_string(), Observed::Missing)]);
        let mut rec = TaskRecord {
            desired: Desired::Stopping { deadline_ms: NOW },
            stop_requested_ms: Some(NOW - 1_000),
            ..running()
        };
        rec.observed = Some(Observation {
            missing_since_ms: Some(NOW - 1_000),
            ..observation_of(&task("RUNNING", None, None), NOW - 1_000)
        });
        let steps = plan(&[rec], &missing, NOW, &policy);
        let Some(Step::Exit { exit, .. }) = steps.first() else {
            panic!("{steps:?}")
        };
        assert_eq!((exit.exit_code, exit.err.as_deref()), (0, None));
    }

    #[test]
    fn an_exited_record_nobody_collects_is_forgotten_after_the_retention() {
        let policy = Policy::default();
        let exited = TaskRecord {
            exit: Some(ExitRecord::clean(NOW)),
            ..running()
        };
        assert!(
            plan(
                std::slice::from_ref(&exited),
                &HashMap::new(),
                NOW + 1_000,
                &policy
            )
            .is_empty()
        );
        let steps = plan(
            &[exited],
            &HashMap::new(),
            NOW + policy.exited_retention_ms,
            &policy,
        );
        assert_eq!(kinds(&steps), vec!["forget"]);
    }

    #[test]
    fn a_status_change_yields_one_event() {
        let rec = TaskRecord {
            observed: Some(observation_of(&task("PROVISIONING", None, None), NOW - 1)),
            ..running()
        };
        let steps = plan(
            &[rec],
            &seen(task("RUNNING", None, None)),
            NOW,
            &Policy::default(),
        );
        let Some(Step::Observe {
            event: Some(text), ..
        }) = steps.first()
        else {
            panic!("{steps:?}")
        };
        assert_eq!(text, "ECS task RUNNING");
    }
}
