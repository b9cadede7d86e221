//! The one place where driver errors become gRPC status. Recoverable start
//! failures carry Nomad's `RecoverableError` as the first status detail;
//! domain errors never use `Unavailable` or `Canceled`, which Nomad reads as
//! "the plugin died".

use prost::Message as _;
use tonic::{Code, Status};

use crate::error::DriverError;
use crate::proto::structs::RecoverableError;

/// Type URL of Nomad's recoverable-error detail.
pub const RECOVERABLE_TYPE_URL: &str =
    "type.googleapis.com/hashicorp.nomad.plugins.shared.structs.RecoverableError";

/// `google.rpc.Status`, the payload of `grpc-status-details-bin`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    /// Must equal the `grpc-status` code, or grpc-go drops the details.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// The message.
    #[prost(string, tag = "2")]
    pub message: String,
    /// `google.protobuf.Any` details.
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<prost_types::Any>,
}

/// The status for a failed RPC. `rpc` prefixes the message like Nomad's own
/// SDK does ("SetConfig failed: ...").
pub fn to_status(rpc: &str, err: &DriverError) -> Status {
    let message = format!("{rpc} failed: {err}");
    let code = match err {
        DriverError::StartFailed {
            recoverable: true, ..
        } => return recoverable(message),
        DriverError::ConfigBytes(_)
        | DriverError::ConfigShape(_)
        | DriverError::Config(_)
        | DriverError::ApiVersion(_)
        | DriverError::TaskConfigBytes(_)
        | DriverError::TaskConfigShape(_)
        | DriverError::TaskConfig(_)
        | DriverError::BadRequest(_)
        | DriverError::BadHandle(_) => Code::InvalidArgument,
        DriverError::StateDir(_)
        | DriverError::StateDirChanged { .. }
        | DriverError::NotReady(_)
        | DriverError::StartFailed { .. }
        | DriverError::StopFailed { .. }
        | DriverError::StillRunning(_) => Code::FailedPrecondition,
        DriverError::NotImplemented(_) | DriverError::Unsupported(_) => Code::Unimplemented,
        DriverError::TaskNotFound(_) => Code::NotFound,
        DriverError::Store(_) => Code::Internal,
    };
    Status::new(code, message)
}

/// A `FailedPrecondition` status whose first detail tells Nomad the failure
/// is recoverable, so the job's restart policy applies.
pub fn recoverable(message: String) -> Status {
    let detail = RecoverableError { recoverable: true };
    let body = RpcStatus {
        code: Code::FailedPrecondition as i32,
        message: message.clone(),
        details: vec![prost_types::Any {
            type_url: RECOVERABLE_TYPE_URL.into(),
            value: detail.encode_to_vec(),
        }],
    };
    Status::with_details(
        Code::FailedPrecondition,
        message,
        body.encode_to_vec().into(),
    )
}

/// Whether a status carries a recoverable-error detail (as Nomad checks it).
pub fn is_recoverable(status: &Status) -> bool {
    let Ok(body) = RpcStatus::decode(status.details()) else {
        return false;
    };
    body.code == status.code() as i32
        && body.details.first().is_some_and(|d| {
            d.type_url == RECOVERABLE_TYPE_URL
                && RecoverableError::decode(d.value.as_slice()).is_ok_and(|r| r.recoverable)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recoverable_status_carries_the_detail_with_a_matching_code() {
        let s = recoverable("RunTask throttled".into());
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert!(is_recoverable(&s));
        let body = RpcStatus::decode(s.details()).unwrap();
        assert_eq!(body.code, Code::FailedPrecondition as i32);
        assert_eq!(body.details[0].type_url, RECOVERABLE_TYPE_URL);
    }

    #[test]
    fn a_plain_error_is_not_recoverable_and_never_unavailable() {
        let s = to_status("StartTask", &DriverError::NotImplemented("StartTask"));
        assert!(!is_recoverable(&s));
        assert_ne!(s.code(), Code::Unavailable);
        assert!(s.message().starts_with("StartTask failed: "));
    }
}
