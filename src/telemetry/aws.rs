//! ECS API telemetry below the SDK's retry loop: an interceptor sees every
//! attempt on the wire, so throttling that the adaptive retries absorbed
//! still shows up, by operation. Errors that survive the retries are counted
//! where they are classified ([`error_type`]).

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

use crate::ecs::EcsError;

/// AWS error codes that mean "slow down".
const THROTTLE_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
];

/// Counts every ECS attempt and throttling answer (`nomad_ecs.aws.attempts`,
/// `nomad_ecs.aws.throttles`). Add it to the SDK config with
/// `.interceptor(telemetry::ecs_interceptor())`.
#[derive(Debug, Clone, Copy, Default)]
pub struct EcsAttempts;

impl Intercept for EcsAttempts {
    fn name(&self) -> &'static str {
        "nomad-driver-ecs telemetry"
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = cfg.load::<Metadata>().map_or("unknown", Metadata::name);
        let response = context.response();
        let status = response.map(|r| r.status().as_u16());
        let throttled = response.is_some_and(|r| {
            let status = r.status().as_u16();
            status == 429
                || (status == 400
                    && (r
                        .headers()
                        .get("x-amzn-errortype")
                        .is_some_and(is_throttle_code)
                        || r.body().bytes().is_some_and(body_names_throttle)))
        });
        super::metrics::ecs_attempt(operation, status, throttled);
        Ok(())
    }
}

/// `x-amzn-errortype` is `Code` or `Code:namespace-uri`.
fn is_throttle_code(header: &str) -> bool {
    let code = header.split(':').next().unwrap_or("");
    THROTTLE_CODES.contains(&code)
}

/// An awsJson error body: `{"__type": "[namespace#]Code", ...}`.
fn body_names_throttle(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        #[serde(rename = "__type")]
        kind: Option<String>,
    }
    if body.len() > 64 * 1024 {
        return false;
    }
    serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|b| b.kind)
        .is_some_and(|k| is_throttle_code(k.rsplit('#').next().unwrap_or("")))
}

/// `error.type` of a failed call: the AWS error code for service errors
/// (a small, fixed set per API), a fixed word otherwise.
pub(super) fn error_type(err: &EcsError) -> String {
    match err {
        EcsError::NoRegion => "no_region".into(),
        EcsError::Unreachable { .. } => "unreachable".into(),
        EcsError::Timeout { .. } => "timeout".into(),
        EcsError::NoCredentials { .. } => "no_credentials".into(),
        EcsError::BadCredentials { code, .. }
        | EcsError::AccessDenied { code, .. }
        | EcsError::Service { code, .. } => code.clone(),
        EcsError::Throttled { .. } => "ThrottlingException".into(),
        EcsError::BadResponse { .. } => "bad_response".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_is_recognised_in_the_header_and_in_the_body() {
        assert!(is_throttle_code("ThrottlingException"));
        assert!(is_throttle_code(
            "ThrottlingException:http://internal.amazon.com/coral/com.amazon.coral.availability/"
        ));
        assert!(!is_throttle_code("ClusterNotFoundException"));
        assert!(body_names_throttle(
            br#"{"__type":"com.amazonaws.ecs#ThrottlingException","message":"Rate exceeded"}"#
        ));
        assert!(body_names_throttle(br#"{"__type":"ThrottlingException"}"#));
        assert!(!body_names_throttle(
            br#"{"__type":"InvalidParameterException"}"#
        ));
        assert!(!body_names_throttle(b"<html>500</html>"));
    }

    #[test]
    fn error_types_are_codes_or_fixed_words() {
        let e = EcsError::Service {
            operation: "StopTask",
            code: "InvalidParameterException".into(),
            message: "m".into(),
            status: Some(400),
        };
        assert_eq!(error_type(&e), "InvalidParameterException");
        let e = EcsError::Unreachable {
            endpoint: "x".into(),
            cause: "refused".into(),
        };
        assert_eq!(error_type(&e), "unreachable");
    }
}
