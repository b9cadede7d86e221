//! `TaskHandle.driver_state`: everything needed to reattach to an ECS task
//! after a plugin or agent restart (Nomad then sends no task config), as a
//! msgpack map with string keys (Nomad's `operator client-state` decodes it).
//! Nothing secret: no environment values, no full task config.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::store::record::{RunParams, Slot};

/// The `TaskHandle.version` we write. 0 is reserved by Nomad.
pub const HANDLE_VERSION: i32 = 1;

/// The reattach state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverState {
    /// Schema version of this struct.
    pub v: u32,
    /// The Nomad task ID it was created for.
    pub task_id: String,
    /// The allocation that owned it.
    pub alloc_id: String,
    /// Task name.
    pub task_name: String,
    /// The ECS task.
    pub arn: String,
    /// Where it runs.
    pub cluster: String,
    /// Region.
    pub region: String,
    /// The slot.
    pub slot: Slot,
    /// RunTask's client token.
    pub client_token: String,
    /// Task definition.
    pub task_definition: String,
    /// RunTask parameters.
    #[serde(default)]
    pub run: RunParams,
    /// Unix ms the task started.
    #[serde(default)]
    pub started_ms: u64,
}

/// A handle we cannot use.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HandleError {
    /// Empty `driver_state`.
    #[error("the task handle carries no driver_state")]
    Empty,
    /// Not our msgpack.
    #[error("the task handle's driver_state is not nomad-driver-ecs state: {0}")]
    Undecodable(String),
    /// From a newer driver.
    #[error("the task handle's driver_state has version {0}; this driver reads version 1")]
    Version(u32),
    /// Required parts missing.
    #[error("the task handle's driver_state lacks `{0}`")]
    Missing(&'static str),
}

impl DriverState {
    /// Encode as a msgpack map.
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).unwrap_or_default()
    }

    /// Decode and validate.
    ///
    /// # Errors
    /// [`HandleError`] naming what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Self, HandleError> {
        if bytes.is_empty() {
            return Err(HandleError::Empty);
        }
        #[derive(Deserialize)]
        struct Peek {
            v: u32,
        }
        let peek: Peek =
            rmp_serde::from_slice(bytes).map_err(|e| HandleError::Undecodable(e.to_string()))?;
        if peek.v != 1 {
            return Err(HandleError::Version(peek.v));
        }
        let s: Self =
            rmp_serde::from_slice(bytes).map_err(|e| HandleError::Undecodable(e.to_string()))?;
        for (field, value) in [
            ("arn", &s.arn),
            ("cluster", &s.cluster),
            ("task_id", &s.task_id),
            ("client_token", &s.client_token),
        ] {
            if value.is_empty() {
                return Err(HandleError::Missing(field));
            }
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> DriverState {
        DriverState {
            v: 1,
            task_id: "a1/web/0f0f0f0f".into(),
            alloc_id: "a1".into(),
            task_name: "web".into(),
            arn: "arn:aws:ecs:us-east-1:123456789012:task/nomad/abc".into(),
            cluster: "nomad".into(),
            region: "us-east-1".into(),
            slot: Slot {
                namespace: "default".into(),
                job: "j".into(),
                group: "g".into(),
                alloc_index: 0,
                task: "web".into(),
            },
            client_token: "tok".into(),
            task_definition: "web:1".into(),
            run: RunParams::default(),
            started_ms: 5,
        }
    }

    #[test]
    fn driver_state_round_trips_as_a_msgpack_map() {
        let bytes = state().encode();
        assert_eq!(bytes[0] & 0xf0, 0x80, "a fixmap with string keys");
        assert_eq!(DriverState::decode(&bytes).unwrap(), state());
    }

    #[test]
    fn bad_handles_name_the_problem() {
        assert_eq!(DriverState::decode(&[]), Err(HandleError::Empty));
        assert!(matches!(
            DriverState::decode(&[0xc1]),
            Err(HandleError::Undecodable(_))
        ));
        let mut s = state();
        s.v = 2;
        assert_eq!(
            DriverState::decode(&s.encode()),
            Err(HandleError::Version(2))
        );
        let mut s = state();
        s.arn.clear();
        assert_eq!(
            DriverState::decode(&s.encode()),
            Err(HandleError::Missing("arn"))
        );
    }
}
