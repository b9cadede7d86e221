//! What the driver reads from and sends to ECS, independent of SDK types.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::task_config::{LaunchType, VpcConfig};

/// One container's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerState {
    /// Container name.
    pub name: String,
    /// PENDING, RUNNING, STOPPED.
    pub last_status: Option<String>,
    /// Set once the container stopped.
    pub exit_code: Option<i32>,
    /// e.g. "OutOfMemoryError: Container killed due to memory usage".
    pub reason: Option<String>,
}

/// An ECS task as DescribeTasks reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EcsTask {
    /// The task ARN.
    pub arn: String,
    /// PROVISIONING ... RUNNING ... STOPPED.
    pub last_status: String,
    /// RUNNING or STOPPED.
    pub desired_status: String,
    /// EssentialContainerExited, UserInitiated, TaskFailedToStart, ...
    pub stop_code: Option<String>,
    /// Human-readable reason.
    pub stopped_reason: Option<String>,
    /// Containers.
    pub containers: Vec<ContainerState>,
    /// Tags (with `include=TAGS`).
    pub tags: BTreeMap<String, String>,
    /// The `startedBy` value.
    pub started_by: Option<String>,
}

impl EcsTask {
    /// Whether ECS says the task has stopped for good.
    pub fn is_stopped(&self) -> bool {
        self.last_status == "STOPPED" || self.last_status == "DELETED"
    }
}

/// Convert the SDK's task.
pub fn task_from_sdk(t: &aws_sdk_ecs::types::Task) -> EcsTask {
    EcsTask {
        arn: t.task_arn().unwrap_or_default().to_string(),
        last_status: t.last_status().unwrap_or("UNKNOWN").to_string(),
        desired_status: t.desired_status().unwrap_or("UNKNOWN").to_string(),
        stop_code: t
            .stop_code()
            .map(|c| c.as_str().to_string())
            .filter(|c| !c.is_empty()),
        stopped_reason: t
            .stopped_reason()
            .map(ToString::to_string)
            .filter(|r| !r.is_empty()),
        containers: t
            .containers()
            .iter()
            .map(|c| ContainerState {
                name: c.name().unwrap_or_default().to_string(),
                last_status: c.last_status().map(ToString::to_string),
                exit_code: c.exit_code(),
                reason: c
                    .reason()
                    .map(ToString::to_string)
                    .filter(|r| !r.is_empty()),
            })
            .collect(),
        tags: t
            .tags()
            .iter()
            .filter_map(|tag| {
                Some((
                    tag.key()?.to_string(),
                    tag.value().unwrap_or_default().to_string(),
                ))
            })
            .collect(),
        started_by: t.started_by().map(ToString::to_string),
    }
}

/// Everything RunTask needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSpec {
    /// Cluster name or ARN.
    pub cluster: String,
    /// Task definition.
    pub task_definition: String,
    /// Launch type, if any.
    pub launch_type: Option<LaunchType>,
    /// awsvpc networking, if any.
    pub vpc: Option<VpcConfig>,
    /// Idempotency token (stored before the call).
    pub client_token: String,
    /// The slot digest.
    pub started_by: String,
    /// Ownership tags.
    pub tags: Vec<(String, String)>,
}

/// What RunTask did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunOutcome {
    /// A task exists.
    Started(EcsTask),
    /// ECS placed nothing, with its reasons (RESOURCE:MEMORY, ...).
    Failed(Vec<String>),
}

/// What StopTask did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// ECS accepted the stop.
    Stopping(EcsTask),
    /// ECS does not know the task (aged out or never existed).
    NotFound,
}

/// Calls per ECS operation, for logs, metrics and tests.
#[derive(Debug, Default)]
pub struct CallCounts(Mutex<BTreeMap<&'static str, u64>>);

impl CallCounts {
    /// Count one call.
    pub fn count(&self, op: &'static str) {
        if let Ok(mut m) = self.0.lock() {
            *m.entry(op).or_default() += 1;
        }
    }

    /// A copy of the counts.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Total calls.
    pub fn total(&self) -> u64 {
        self.snapshot().values().sum()
    }
}
