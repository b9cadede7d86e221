//! How an ECS task's end becomes Nomad's exit result: from ECS, not guesses.

use crate::ecs::EcsTask;
use crate::store::record::{Desired, ExitRecord, TaskRecord};

/// Stop codes that mean the task ended for a reason other than its own
/// container exiting or our own stop request.
const FAILURE_STOP_CODES: &[&str] = &[
    "TaskFailedToStart",
    "SpotInterruption",
    "ServiceSchedulerInitiated",
    "TerminationNotice",
];

/// Whether this record asked ECS to stop the task.
pub fn stop_was_requested(rec: &TaskRecord) -> bool {
    matches!(rec.desired, Desired::Stopping { .. } | Desired::Destroyed)
}

/// The exit result for a stopped task.
///
/// - A stop Nomad asked for (ours, `UserInitiated`) exits cleanly.
/// - Otherwise the essential container's exit code: the first container
///   that exited non-zero, else the first that exited at all.
/// - OOM comes from the container reason; `stoppedReason` is the error text
///   whenever the task failed.
/// - A task that failed to start (no exit code) exits 1.
pub fn exit_from(rec: &TaskRecord, task: &EcsTask, at_ms: u64) -> ExitRecord {
    let stop_code = task.stop_code.as_deref();
    if stop_was_requested(rec) && matches!(stop_code, None | Some("UserInitiated")) {
        return ExitRecord::clean(at_ms);
    }
    let exited: Vec<_> = task
        .containers
        .iter()
        .filter(|c| c.exit_code.is_some())
        .collect();
    let container = exited
        .iter()
        .find(|c| c.exit_code != Some(0))
        .or_else(|| exited.first())
        .copied();
    let oom = task.containers.iter().any(|c| {
        c.reason
            .as_deref()
            .is_some_and(|r| r.contains("OutOfMemory"))
    });
    let failed_code = stop_code.is_some_and(|c| FAILURE_STOP_CODES.contains(&c))
        || stop_code == Some("UserInitiated");
    let exit_code = match container.and_then(|c| c.exit_code) {
        Some(code) => code,
        None if failed_code || oom => 1,
        None => 0,
    };
    let err = if exit_code != 0 || oom || (failed_code && container.is_none()) {
        let mut text = task
            .stopped_reason
            .clone()
            .or_else(|| stop_code.map(ToString::to_string))
            .unwrap_or_else(|| "ECS task stopped".into());
        if let Some(reason) = container
            .and_then(|c| c.reason.as_deref())
            .or_else(|| task.containers.iter().find_map(|c| c.reason.as_deref()))
            && !text.contains(reason)
        {
            text = format!("{text}: {reason}");
        }
        Some(text)
    } else {
        None
    };
    ExitRecord {
        exit_code,
        signal: 0,
        oom_killed: oom,
        err,
        at_ms,
    }
}

/// The exit result for a task ECS no longer knows.
pub fn lost(rec: &TaskRecord, arn: &str, missing_for_ms: u64, at_ms: u64) -> ExitRecord {
    if stop_was_requested(rec) {
        return ExitRecord::clean(at_ms);
    }
    ExitRecord {
        exit_code: 1,
        signal: 0,
        oom_killed: false,
        err: Some(format!(
            "ECS task {arn} was lost: DescribeTasks reported it MISSING for {}s",
            missing_for_ms / 1000
        )),
        at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ecs::ContainerState;

    fn rec(desired: Desired) -> TaskRecord {
        TaskRecord {
            desired,
            ..crate::store::record::fixture::intent_to_run("a/t/1")
        }
    }

    fn stopped(
        code: Option<&str>,
        reason: Option<&str>,
        containers: Vec<(Option<i32>, Option<&str>)>,
    ) -> EcsTask {
        EcsTask {
            arn: "arn".into(),
            last_status: "STOPPED".into(),
            desired_status: "STOPPED".into(),
            stop_code: code.map(Into::into),
            stopped_reason: reason.map(Into::into),
            containers: containers
                .into_iter()
                .enumerate()
                .map(|(i, (exit_code, r))| ContainerState {
                    name: format!("c{i}"),
                    last_status: Some("STOPPED".into()),
                    exit_code,
                    reason: r.map(Into::into),
                })
                .collect(),
            ..EcsTask::default()
        }
    }

    #[test]
    fn the_exit_mapping_table() {
        let running = Desired::Running;
        let stopping = Desired::Stopping { deadline_ms: 0 };
        let cases = [
            (
                "exit 0 succeeds",
                running.clone(),
                stopped(
                    Some("EssentialContainerExited"),
                    Some("Essential container in task exited"),
                    vec![(Some(0), None)],
                ),
                0,
                false,
                false,
            ),
            (
                "exit 3 fails with code 3",
                running.clone(),
                stopped(
                    Some("EssentialContainerExited"),
                    Some("Essential container in task exited"),
                    vec![(Some(3), None)],
                ),
                3,
                false,
                true,
            ),
            (
                "the non-zero container wins",
                running.clone(),
                stopped(
                    Some("EssentialContainerExited"),
                    Some("x"),
                    vec![(Some(0), None), (Some(2), None)],
                ),
                2,
                false,
                true,
            ),
            (
                "OOM is flagged",
                running.clone(),
                stopped(
                    Some("EssentialContainerExited"),
                    Some("x"),
                    vec![(
                        Some(137),
                        Some("OutOfMemoryError: Container killed due to memory usage"),
                    )],
                ),
                137,
                true,
                true,
            ),
            (
                "a failed start exits 1 with the reason",
                running.clone(),
                stopped(
                    Some("TaskFailedToStart"),
                    Some("CannotPullContainerError: pull access denied"),
                    vec![(None, None)],
                ),
                1,
                false,
                true,
            ),
            (
                "a stop Nomad asked for is clean",
                stopping,
                stopped(
                    Some("UserInitiated"),
                    Some("Stopped by Nomad"),
                    vec![(Some(143), None)],
                ),
                0,
                false,
                false,
            ),
            (
                "a stop someone else made is a failure",
                running,
                stopped(
                    Some("UserInitiated"),
                    Some("stopped by an operator"),
                    vec![(Some(143), None)],
                ),
                143,
                false,
                true,
            ),
        ];
        for (name, desired, task, code, oom, has_err) in cases {
            let e = exit_from(&rec(desired), &task, 7);
            assert_eq!(
                (e.exit_code, e.oom_killed, e.err.is_some()),
                (code, oom, has_err),
                "{name}: {e:?}"
            );
        }
    }

    #[test]
    fn the_error_text_is_the_stopped_reason_with_the_container_reason() {
        let t = stopped(
            Some("TaskFailedToStart"),
            Some("Task failed to start"),
            vec![(None, Some("CannotPullContainerError: no such image"))],
        );
        let e = exit_from(&rec(Desired::Running), &t, 0);
        assert_eq!(
            e.err.as_deref(),
            Some("Task failed to start: CannotPullContainerError: no such image")
        );
    }
}
