//! The persisted record of one Nomad task: its slot, what the driver wants
//! of it, what ECS was last seen doing, and how it exited; plus the key
//! layout and the versioned codec that every store uses.
//!
//! # Encoding
//!
//! A record is stored as JSON inside a small envelope, `{"v":1,"record":{…}}`.
//! JSON was chosen over msgpack because the records are small (well under a
//! kilobyte), the write rate is bounded by ECS's launch limits rather than by
//! encoding cost, and a human reading a dumped database during an incident
//! should not need a decoder. `v` is the record schema version: a reader
//! refuses versions it does not know with [`StoreError::UnsupportedVersion`]
//! naming the version, and never guesses.
//!
//! Within a version, fields may be added (they carry `#[serde(default)]`, so
//! older records still decode) and unknown fields are ignored (so a record
//! written by a newer build of the same version still decodes).
//!
//! # Keys
//!
//! `v1/task/<task_id>`, where `task_id` is Nomad's `<alloc>/<task>/<hex>`.
//! The leading `v1/` is the key-layout version, independent of the record
//! version, so a later layout can live beside this one during a migration.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::StoreError;

/// Version of the record schema written inside the envelope.
pub const RECORD_VERSION: u64 = 1;

/// Prefix of every task record key (key-layout version 1).
pub const TASK_KEY_PREFIX: &str = "v1/task/";

/// Longest `startedBy` ECS accepts.
pub const STARTED_BY_MAX_LEN: usize = 36;

/// Prefix of every `startedBy` this driver sets.
pub const STARTED_BY_PREFIX: &str = "nomad-";

/// Hex characters of the slot digest kept in `startedBy` (96 bits).
const STARTED_BY_DIGEST_HEX: usize = 24;

/// The store key of the record for `task_id`.
pub fn task_key(task_id: &str) -> String {
    format!("{TASK_KEY_PREFIX}{task_id}")
}

/// The stable identity of "this task of this allocation index": a
/// replacement allocation keeps the slot of the one it replaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Slot {
    /// Nomad namespace.
    pub namespace: String,
    /// Job ID.
    pub job: String,
    /// Task group name.
    pub group: String,
    /// The allocation's index within its group (`NOMAD_ALLOC_INDEX`).
    pub alloc_index: u32,
    /// Task name.
    pub task: String,
}

impl Slot {
    /// `namespace/job/group[alloc_index]/task`.
    ///
    /// # Guarantees
    /// Two different slots never share a key: `%`, `/`, `[` and `]` inside a
    /// component are percent-encoded (Nomad allows `/` in job IDs, so
    /// `a/b` + `c` must not collide with `a` + `b/c`). Names without those
    /// characters appear verbatim.
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}[{}]/{}",
            escape(&self.namespace),
            escape(&self.job),
            escape(&self.group),
            self.alloc_index,
            escape(&self.task)
        )
    }

    /// The ECS `startedBy` value for this slot: `nomad-` followed by the
    /// first 24 hex digits of the SHA-256 of [`Slot::key`], 30 characters.
    ///
    /// # Guarantees
    /// Deterministic across processes, hosts and releases (changing it would
    /// orphan running ECS tasks); at most [`STARTED_BY_MAX_LEN`] characters,
    /// all of them letters, digits or hyphens, as ECS requires.
    pub fn started_by(&self) -> String {
        let digest = Sha256::digest(self.key().as_bytes());
        let mut out = String::with_capacity(STARTED_BY_PREFIX.len() + STARTED_BY_DIGEST_HEX);
        out.push_str(STARTED_BY_PREFIX);
        for byte in digest.iter().take(STARTED_BY_DIGEST_HEX / 2) {
            out.push(hex_digit(byte >> 4));
            out.push(hex_digit(byte & 0x0f));
        }
        out
    }
}

fn hex_digit(nibble: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(nibble & 0x0f)])
}

/// Percent-encodes the characters that structure a slot key.
fn escape(component: &str) -> std::borrow::Cow<'_, str> {
    if !component.contains(['%', '/', '[', ']']) {
        return std::borrow::Cow::Borrowed(component);
    }
    let mut out = String::with_capacity(component.len() + 8);
    for c in component.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            '[' => out.push_str("%5B"),
            ']' => out.push_str("%5D"),
            other => out.push(other),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// What the driver wants of the task. Only the driver writes it; the
/// reconciler drives ECS towards it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Desired {
    /// The ECS task should be running.
    Running,
    /// Nomad asked for a stop; force it once the deadline (Unix ms) passes.
    Stopping {
        /// When to stop waiting for a graceful stop, Unix milliseconds.
        deadline_ms: u64,
    },
    /// Stop tracking without stopping ECS (Nomad's DETACH).
    Detached,
    /// Left running for a replacement allocation to adopt.
    HandedOff {
        /// When the hand-off began, Unix milliseconds.
        since_ms: u64,
    },
    /// Nomad destroyed the task; the record only waits for cleanup.
    Destroyed,
}

/// What ECS said about the task the last time the reconciler looked.
/// Written only by the reconciler.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Observation {
    /// ECS `lastStatus` (`PROVISIONING`, `RUNNING`, `STOPPED`, …).
    #[serde(default)]
    pub last_status: String,
    /// ECS `desiredStatus`.
    #[serde(default)]
    pub desired_status: String,
    /// ECS `stopCode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_code: Option<String>,
    /// ECS `stoppedReason`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_reason: Option<String>,
    /// The essential container's exit code, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The essential container's `reason` (carries OOM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_reason: Option<String>,
    /// The owning allocation according to the task's tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_alloc: Option<String>,
    /// When this observation was made, Unix milliseconds.
    #[serde(default)]
    pub observed_at_ms: u64,
    /// Since when DescribeTasks has reported the task `MISSING`, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_since_ms: Option<u64>,
}

/// The exit result reported to Nomad's WaitTask.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Exit code.
    #[serde(default)]
    pub exit_code: i32,
    /// Signal number, 0 when none.
    #[serde(default)]
    pub signal: i32,
    /// Whether the container was killed for running out of memory.
    #[serde(default)]
    pub oom_killed: bool,
    /// Error text (ECS `stoppedReason`, or why the task was lost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub err: Option<String>,
    /// When the exit was recorded, Unix milliseconds.
    #[serde(default)]
    pub at_ms: u64,
}

impl ExitRecord {
    /// A clean exit (code 0, no error) at `at_ms`: a stop Nomad asked for,
    /// a detach, a hand-off.
    pub fn clean(at_ms: u64) -> Self {
        Self {
            exit_code: 0,
            signal: 0,
            oom_killed: false,
            err: None,
            at_ms,
        }
    }
}

/// Everything the driver persists about one Nomad task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Nomad's task ID, `<alloc>/<task>/<hex>`; the record's key.
    pub task_id: String,
    /// The allocation ID.
    pub alloc_id: String,
    /// The task name.
    pub task_name: String,
    /// The task's slot.
    pub slot: Slot,
    /// What the driver wants.
    pub desired: Desired,
    /// RunTask `clientToken`, recorded before RunTask is sent.
    pub client_token: String,
    /// ECS cluster.
    pub cluster: String,
    /// AWS region.
    pub region: String,
    /// Task definition (family:revision or ARN).
    pub task_definition: String,
    /// The ECS task ARN once RunTask (or adoption) produced one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arn: Option<String>,
    /// The reconciler's latest observation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<Observation>,
    /// The exit result, once the task has exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitRecord>,
    /// When the record was created, Unix milliseconds.
    #[serde(default)]
    pub created_ms: u64,
    /// When the record was last written, Unix milliseconds.
    #[serde(default)]
    pub updated_ms: u64,
    /// When ECS first reported the task running, Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    /// The RunTask parameters beyond the task definition, kept so that a
    /// restarted driver re-issues exactly the same request.
    #[serde(default)]
    pub run: RunParams,
    /// When RunTask was last sent (intent recorded first), Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_requested_ms: Option<u64>,
    /// RunTask attempts so far.
    #[serde(default)]
    pub run_attempts: u32,
    /// Why the start failed for good, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_error: Option<StartError>,
    /// When StopTask was last sent, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_requested_ms: Option<u64>,
    /// The last ECS error seen for this task (for messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// RunTask parameters besides cluster and task definition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunParams {
    /// EC2, FARGATE or EXTERNAL; none for the cluster default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_type: Option<String>,
    /// awsvpc subnets (empty: no network configuration).
    #[serde(default)]
    pub subnets: Vec<String>,
    /// awsvpc security groups.
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// awsvpc public IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assign_public_ip: Option<bool>,
}

/// A start that failed for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartError {
    /// What went wrong.
    pub message: String,
    /// Whether Nomad's restart policy should apply.
    pub recoverable: bool,
}

impl TaskRecord {
    /// The store key of this record.
    pub fn key(&self) -> String {
        task_key(&self.task_id)
    }
}

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    v: u64,
    record: &'a TaskRecord,
}

#[derive(Deserialize)]
struct VersionProbe {
    v: u64,
}

#[derive(Deserialize)]
struct EnvelopeV1 {
    record: TaskRecord,
}

/// Encode `rec` in the current envelope.
///
/// # Errors
/// [`StoreError::InvalidRecord`] for an empty task ID;
/// [`StoreError::EncodeFailed`] if serialization fails.
pub fn encode(rec: &TaskRecord) -> Result<Vec<u8>, StoreError> {
    if rec.task_id.is_empty() {
        return Err(StoreError::InvalidRecord {
            key: rec.key(),
            reason: "task_id is empty",
        });
    }
    serde_json::to_vec(&EnvelopeOut {
        v: RECORD_VERSION,
        record: rec,
    })
    .map_err(|source| StoreError::EncodeFailed {
        key: rec.key(),
        source,
    })
}

/// Decode the record stored under `key`.
///
/// # Errors
/// [`StoreError::DecodeFailed`] for bytes that are not a version-1 envelope;
/// [`StoreError::UnsupportedVersion`] for an envelope of another version;
/// [`StoreError::KeyMismatch`] if the record's task ID is not the one its
/// key names. Never panics, whatever the bytes.
pub fn decode(key: &str, bytes: &[u8]) -> Result<TaskRecord, StoreError> {
    let decode_failed = |source| StoreError::DecodeFailed {
        key: key.to_owned(),
        source,
    };
    let probe: VersionProbe = serde_json::from_slice(bytes).map_err(decode_failed)?;
    if probe.v != RECORD_VERSION {
        return Err(StoreError::UnsupportedVersion {
            key: key.to_owned(),
            version: probe.v,
        });
    }
    let EnvelopeV1 { record } = serde_json::from_slice(bytes).map_err(decode_failed)?;
    if record.key() != key {
        return Err(StoreError::KeyMismatch {
            key: key.to_owned(),
            task_id: record.task_id,
        });
    }
    Ok(record)
}

/// Fixture builders for tests of the store and of its users.
#[cfg(test)]
pub(crate) mod fixture {
    use super::*;

    /// The slot `default/web/api[0]/server`.
    pub(crate) fn web_slot() -> Slot {
        Slot {
            namespace: "default".into(),
            job: "web".into(),
            group: "api".into(),
            alloc_index: 0,
            task: "server".into(),
        }
    }

    /// A freshly written intent to run `task_id`, before RunTask.
    pub(crate) fn intent_to_run(task_id: &str) -> TaskRecord {
        let alloc_id = task_id.split('/').next().unwrap_or_default().to_owned();
        TaskRecord {
            task_id: task_id.to_owned(),
            alloc_id,
            task_name: "server".into(),
            slot: web_slot(),
            desired: Desired::Running,
            client_token: format!("tok-{task_id}"),
            cluster: "default".into(),
            region: "us-east-1".into(),
            task_definition: "web:3".into(),
            arn: None,
            observed: None,
            exit: None,
            created_ms: 1_700_000_000_000,
            updated_ms: 1_700_000_000_000,
            started_ms: None,
            run: RunParams::default(),
            run_requested_ms: None,
            run_attempts: 0,
            start_error: None,
            stop_requested_ms: None,
            last_error: None,
        }
    }

    /// A record for a task that ran and exited, every optional field set.
    pub(crate) fn exited(task_id: &str) -> TaskRecord {
        TaskRecord {
            arn: Some("arn:aws:ecs:us-east-1:123456789012:task/default/abc".into()),
            desired: Desired::Stopping {
                deadline_ms: 1_700_000_005_000,
            },
            observed: Some(Observation {
                last_status: "STOPPED".into(),
                desired_status: "STOPPED".into(),
                stop_code: Some("EssentialContainerExited".into()),
                stopped_reason: Some("Essential container in task exited".into()),
                exit_code: Some(137),
                container_reason: Some("OutOfMemoryError: Container killed".into()),
                owner_alloc: Some("alloc-1".into()),
                observed_at_ms: 1_700_000_004_000,
                missing_since_ms: None,
            }),
            exit: Some(ExitRecord {
                exit_code: 137,
                signal: 9,
                oom_killed: true,
                err: Some("Essential container in task exited".into()),
                at_ms: 1_700_000_004_500,
            }),
            started_ms: Some(1_700_000_001_000),
            updated_ms: 1_700_000_004_500,
            run: RunParams {
                launch_type: Some("FARGATE".into()),
                subnets: vec!["subnet-1".into(), "subnet-2".into()],
                security_groups: vec!["sg-1".into()],
                assign_public_ip: Some(true),
            },
            run_requested_ms: Some(1_700_000_000_100),
            run_attempts: 2,
            start_error: Some(StartError {
                message: "RESOURCE:MEMORY".into(),
                recoverable: true,
            }),
            stop_requested_ms: Some(1_700_000_003_000),
            last_error: Some("ThrottlingException".into()),
            ..intent_to_run(task_id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::*;
    use super::*;

    #[test]
    fn a_record_survives_encode_and_decode_unchanged() {
        for rec in [intent_to_run("a1/server/01"), exited("a1/server/02")] {
            let bytes = encode(&rec).unwrap();
            assert_eq!(decode(&rec.key(), &bytes).unwrap(), rec);
        }
    }

    #[test]
    fn every_desired_state_round_trips() {
        let states = [
            Desired::Running,
            Desired::Stopping { deadline_ms: 5 },
            Desired::Detached,
            Desired::HandedOff { since_ms: 7 },
            Desired::Destroyed,
        ];
        for desired in states {
            let rec = TaskRecord {
                desired: desired.clone(),
                ..intent_to_run("a1/server/01")
            };
            let back = decode(&rec.key(), &encode(&rec).unwrap()).unwrap();
            assert_eq!(back.desired, desired);
        }
    }

    #[test]
    fn records_are_written_in_a_version_one_envelope() {
        let bytes = encode(&intent_to_run("a1/server/01")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["record"]["task_id"], "a1/server/01");
        assert_eq!(v["record"]["desired"]["state"], "running");
    }

    #[test]
    fn keys_carry_the_layout_version() {
        assert_eq!(task_key("a1/server/01"), "v1/task/a1/server/01");
        assert_eq!(intent_to_run("a1/server/01").key(), "v1/task/a1/server/01");
    }

    #[test]
    fn a_stored_version_one_record_from_the_past_still_decodes() {
        // Frozen bytes: if this stops decoding, records on disk stop too.
        let json = br#"{"v":1,"record":{"task_id":"a1/server/01","alloc_id":"a1",
            "task_name":"server","slot":{"namespace":"default","job":"web","group":"api",
            "alloc_index":0,"task":"server"},"desired":{"state":"stopping","deadline_ms":9},
            "client_token":"tok","cluster":"c","region":"r","task_definition":"web:3"}}"#;
        let rec = decode("v1/task/a1/server/01", json).unwrap();
        assert_eq!(rec.desired, Desired::Stopping { deadline_ms: 9 });
        assert_eq!(rec.arn, None);
        assert_eq!(rec.created_ms, 0);
    }

    #[test]
    fn fields_unknown_to_this_build_are_ignored() {
        let rec = intent_to_run("a1/server/01");
        let mut v: serde_json::Value = serde_json::from_slice(&encode(&rec).unwrap()).unwrap();
        v["record"]["field_from_the_future"] = serde_json::json!({"x": 1});
        let bytes = serde_json::to_vec(&v).unwrap();
        assert_eq!(decode(&rec.key(), &bytes).unwrap(), rec);
    }

    #[test]
    fn an_unknown_record_version_is_an_error_naming_the_version() {
        let err = decode("v1/task/x", br#"{"v":7,"record":{}}"#).unwrap_err();
        assert!(
            matches!(err, StoreError::UnsupportedVersion { version: 7, .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("version 7") && text.contains("v1/task/x"),
            "{text}"
        );
    }

    #[test]
    fn garbage_bytes_are_a_decode_error_naming_the_key() {
        for bytes in [&b""[..], b"\xff\x00", b"{", br#"{"v":1}"#, br#"{"v":"1"}"#] {
            let err = decode("v1/task/x", bytes).unwrap_err();
            assert!(matches!(err, StoreError::DecodeFailed { .. }), "{err:?}");
            assert!(err.to_string().contains("v1/task/x"));
        }
    }

    #[test]
    fn a_record_under_another_tasks_key_is_refused() {
        let bytes = encode(&intent_to_run("a1/server/01")).unwrap();
        let err = decode("v1/task/a2/server/01", &bytes).unwrap_err();
        assert!(matches!(err, StoreError::KeyMismatch { .. }), "{err:?}");
    }

    #[test]
    fn a_record_without_a_task_id_is_not_encoded() {
        let err = encode(&intent_to_run("")).unwrap_err();
        assert!(matches!(err, StoreError::InvalidRecord { .. }), "{err:?}");
    }

    #[test]
    fn a_slot_key_reads_namespace_job_group_index_task() {
        assert_eq!(web_slot().key(), "default/web/api[0]/server");
    }

    #[test]
    fn slot_keys_do_not_collide_when_names_contain_separators() {
        let a = Slot {
            job: "a/b".into(),
            group: "c".into(),
            ..web_slot()
        };
        let b = Slot {
            job: "a".into(),
            group: "b/c".into(),
            ..web_slot()
        };
        assert_ne!(a.key(), b.key());
        assert_ne!(a.started_by(), b.started_by());
        let c = Slot {
            group: "g[1]".into(),
            ..web_slot()
        };
        assert_eq!(c.key(), "default/web/g%5B1%5D[0]/server");
    }

    #[test]
    fn started_by_is_a_fixed_digest_of_the_slot_key() {
        // sha256("default/web/api[0]/server") = 55653d9540c2d2086e1c6d43dc3a…
        assert_eq!(web_slot().started_by(), "nomad-55653d9540c2d2086e1c6d43");
    }

    #[test]
    fn started_by_fits_ecs_limits_and_tells_slots_apart() {
        let first = web_slot();
        let second = Slot {
            alloc_index: 1,
            ..web_slot()
        };
        for slot in [&first, &second] {
            let s = slot.started_by();
            assert!(s.len() <= STARTED_BY_MAX_LEN, "{s}");
            assert!(
                s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            );
        }
        assert_ne!(first.started_by(), second.started_by());
    }
}
