//! Conversions between Nomad's wire types and the driver's domain types.

use std::collections::HashMap;

use crate::driver::lifecycle::StartRequest;
use crate::error::DriverError;
use crate::proto::drivers as pb;
use crate::reconcile::TaskEvent;
use crate::store::record::{ExitRecord, Slot, TaskRecord};

/// Go's zero `time.Time`, which Nomad's SDK sends for "not set".
pub const ZERO_TIME: prost_types::Timestamp = prost_types::Timestamp {
    seconds: -62_135_596_800,
    nanos: 0,
};

/// A protobuf timestamp from Unix milliseconds (0 is Go's zero time).
pub fn timestamp(ms: u64) -> prost_types::Timestamp {
    if ms == 0 {
        return ZERO_TIME;
    }
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    prost_types::Timestamp {
        seconds: ms / 1000,
        nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
    }
}

/// The slot of a task, from the TaskConfig fields (Nomad 1.6+) or the task
/// environment (older clients).
pub fn slot_of(cfg: &pb::TaskConfig) -> Slot {
    let env = |k: &str| cfg.env.get(k).filter(|v| !v.is_empty()).cloned();
    let first = |a: &str, k: &str| {
        if a.is_empty() {
            env(k)
        } else {
            Some(a.to_string())
        }
    };
    Slot {
        namespace: first(&cfg.namespace, "NOMAD_NAMESPACE").unwrap_or_else(|| "default".into()),
        job: first(&cfg.job_id, "NOMAD_JOB_ID").unwrap_or_else(|| cfg.job_name.clone()),
        group: first(&cfg.task_group_name, "NOMAD_GROUP_NAME").unwrap_or_default(),
        alloc_index: env("NOMAD_ALLOC_INDEX")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        task: cfg.name.clone(),
    }
}

/// The allocation ID: the field, or the first part of the task ID.
pub fn alloc_of(cfg: &pb::TaskConfig) -> String {
    if cfg.alloc_id.is_empty() {
        cfg.id.split('/').next().unwrap_or_default().to_string()
    } else {
        cfg.alloc_id.clone()
    }
}

impl TryFrom<&pb::StartTaskRequest> for StartRequest {
    type Error = DriverError;

    fn try_from(req: &pb::StartTaskRequest) -> Result<Self, Self::Error> {
        let cfg = req.task.as_ref().ok_or(DriverError::BadRequest("task"))?;
        if cfg.id.is_empty() {
            return Err(DriverError::BadRequest("task.id"));
        }
        if cfg.name.is_empty() {
            return Err(DriverError::BadRequest("task.name"));
        }
        Ok(Self {
            task_id: cfg.id.clone(),
            alloc_id: alloc_of(cfg),
            task_name: cfg.name.clone(),
            slot: slot_of(cfg),
            config: cfg.msgpack_driver_config.clone(),
        })
    }
}

impl From<&ExitRecord> for pb::ExitResult {
    fn from(e: &ExitRecord) -> Self {
        Self {
            exit_code: e.exit_code,
            signal: e.signal,
            oom_killed: e.oom_killed,
        }
    }
}

/// InspectTask's answer; every required field set.
pub fn inspect_response(rec: &TaskRecord) -> pb::InspectTaskResponse {
    let state = if rec.exit.is_some() {
        pb::TaskState::Exited
    } else {
        pb::TaskState::Running
    };
    let mut attributes = HashMap::new();
    attributes.insert("ecs_cluster".to_string(), rec.cluster.clone());
    attributes.insert("ecs_region".to_string(), rec.region.clone());
    attributes.insert(
        "ecs_task_definition".to_string(),
        rec.task_definition.clone(),
    );
    if let Some(arn) = &rec.arn {
        attributes.insert("ecs_task_arn".to_string(), arn.clone());
    }
    if let Some(o) = &rec.observed {
        attributes.insert("ecs_last_status".to_string(), o.last_status.clone());
        attributes.insert("ecs_desired_status".to_string(), o.desired_status.clone());
        if let Some(c) = &o.stop_code {
            attributes.insert("ecs_stop_code".to_string(), c.clone());
        }
        if let Some(r) = &o.stopped_reason {
            attributes.insert("ecs_stopped_reason".to_string(), r.clone());
        }
    }
    pb::InspectTaskResponse {
        task: Some(pb::TaskStatus {
            id: rec.task_id.clone(),
            name: rec.task_name.clone(),
            state: state as i32,
            started_at: Some(timestamp(rec.started_ms.unwrap_or(rec.created_ms))),
            completed_at: Some(timestamp(rec.exit.as_ref().map_or(0, |e| e.at_ms))),
            result: Some(
                rec.exit
                    .as_ref()
                    .map(pb::ExitResult::from)
                    .unwrap_or_default(),
            ),
        }),
        driver: Some(pb::TaskDriverStatus { attributes }),
        network_override: None,
    }
}

impl From<TaskEvent> for pb::DriverTaskEvent {
    fn from(e: TaskEvent) -> Self {
        Self {
            task_id: e.task_id,
            alloc_id: e.alloc_id,
            task_name: e.task_name,
            timestamp: Some(timestamp(e.at_ms)),
            message: e.message,
            annotations: e.annotations.into_iter().collect(),
        }
    }
}

/// A zeroed stats sample with a valid timestamp and every required field.
pub fn zero_stats(task_id: &str, now_ms: u64) -> pb::TaskStatsResponse {
    pb::TaskStatsResponse {
        stats: Some(pb::TaskStats {
            id: task_id.to_string(),
            timestamp: Some(timestamp(now_ms)),
            agg_resource_usage: Some(pb::TaskResourceUsage {
                cpu: Some(pb::CpuUsage::default()),
                memory: Some(pb::MemoryUsage::default()),
            }),
            resource_usage_by_pid: HashMap::new(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_ms_is_gos_zero_time_and_other_times_convert_exactly() {
        assert_eq!(timestamp(0), ZERO_TIME);
        assert_eq!(
            timestamp(1_500),
            prost_types::Timestamp {
                seconds: 1,
                nanos: 500_000_000
            }
        );
    }

    #[test]
    fn the_slot_falls_back_to_the_task_environment_on_old_clients() {
        let mut cfg = pb::TaskConfig {
            name: "web".into(),
            job_name: "jobname".into(),
            ..Default::default()
        };
        cfg.env.insert("NOMAD_ALLOC_INDEX".into(), "3".into());
        cfg.env.insert("NOMAD_JOB_ID".into(), "job-id".into());
        cfg.env.insert("NOMAD_GROUP_NAME".into(), "g".into());
        let slot = slot_of(&cfg);
        assert_eq!(
            (
                slot.namespace.as_str(),
                slot.job.as_str(),
                slot.group.as_str(),
                slot.alloc_index
            ),
            ("default", "job-id", "g", 3)
        );
    }
}
