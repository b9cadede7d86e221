//! awsJson 1.1 on the wire: recognising an ECS call, and building the
//! answers the proxy makes itself (success bodies and AWS-shaped errors).

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::{Map, Value};

/// The `X-Amz-Target` prefix of every ECS operation.
pub(super) const ECS_TARGET_PREFIX: &str = "AmazonEC2ContainerServiceV20141113.";

/// awsJson 1.1's content type.
pub(super) const AWS_JSON: &str = "application/x-amz-json-1.1";

/// The body type of every answer the proxy gives.
pub(super) type Body = Full<Bytes>;

/// The ECS operation a request calls, from its `X-Amz-Target` header;
/// `None` for other services (EC2's query protocol, moto's own API).
pub(super) fn ecs_operation(method: &http::Method, headers: &HeaderMap) -> Option<String> {
    if method != http::Method::POST {
        return None;
    }
    let target = headers.get("x-amz-target")?.to_str().ok()?;
    target.strip_prefix(ECS_TARGET_PREFIX).map(str::to_owned)
}

/// Parses an awsJson request body into its top-level object. An empty body
/// counts as `{}`; anything else that is not a JSON object is `None`.
pub(super) fn parse_object(body: &[u8]) -> Option<Map<String, Value>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Some(Map::new());
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1), plus
/// the framing the proxy recomputes itself.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers (and any named by `Connection`) and the
/// content length, which is recomputed for the body actually sent.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(CONTENT_LENGTH);
}

/// A response with `status`, `headers` (hop-by-hop ones removed) and `body`.
pub(super) fn response(status: StatusCode, mut headers: HeaderMap, body: Bytes) -> Response<Body> {
    strip_hop_by_hop(&mut headers);
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// A fresh `x-amzn-RequestId` for an answer the proxy makes itself.
fn request_id() -> HeaderValue {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    HeaderValue::from_str(&format!("ecs-proxy-{n:016x}"))
        .unwrap_or(HeaderValue::from_static("ecs-proxy"))
}

/// An awsJson success answer with `value` as its body.
pub(super) fn json_ok(value: &Value) -> Response<Body> {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(AWS_JSON));
    headers.insert("x-amzn-requestid", request_id());
    response(StatusCode::OK, headers, Bytes::from(value.to_string()))
}

/// An awsJson error the way ECS sends it: the code in `X-Amzn-Errortype`
/// and in the body's `__type`, the text in `message`, and any `extra`
/// members of the error shape (ConflictException's `resourceIds`).
pub(super) fn aws_error_with(
    status: StatusCode,
    code: &str,
    message: &str,
    extra: Map<String, Value>,
) -> Response<Body> {
    let mut body = Map::new();
    body.insert("__type".into(), Value::from(code));
    body.insert("message".into(), Value::from(message));
    body.extend(extra);
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(AWS_JSON));
    headers.insert("x-amzn-requestid", request_id());
    if let Ok(code) = HeaderValue::from_str(code) {
        headers.insert("x-amzn-errortype", code);
    }
    response(
        status,
        headers,
        Bytes::from(Value::Object(body).to_string()),
    )
}

/// [`aws_error_with`] without extra members.
pub(super) fn aws_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    aws_error_with(status, code, message, Map::new())
}

/// 400 `InvalidParameterException`.
pub(super) fn invalid_parameter(message: &str) -> Response<Body> {
    aws_error(
        StatusCode::BAD_REQUEST,
        "InvalidParameterException",
        message,
    )
}

/// 400 `SerializationException`: a body awsJson cannot read.
pub(super) fn serialization(message: &str) -> Response<Body> {
    aws_error(StatusCode::BAD_REQUEST, "SerializationException", message)
}

/// A plain-text answer about the proxy itself (e.g. the emulator is down),
/// never mistaken for an AWS error shape.
pub(super) fn proxy_failure(status: StatusCode, message: &str) -> Response<Body> {
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response(
        status,
        headers,
        Bytes::from(format!("ecs_proxy: {message}\n")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn only_posts_with_the_ecs_target_are_ecs_calls() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-amz-target",
            HeaderValue::from_static("AmazonEC2ContainerServiceV20141113.RunTask"),
        );
        assert_eq!(
            ecs_operation(&http::Method::POST, &headers).as_deref(),
            Some("RunTask")
        );
        assert_eq!(ecs_operation(&http::Method::GET, &headers), None);
        headers.insert(
            "x-amz-target",
            HeaderValue::from_static("DynamoDB_20120810.GetItem"),
        );
        assert_eq!(ecs_operation(&http::Method::POST, &headers), None);
        assert_eq!(ecs_operation(&http::Method::POST, &HeaderMap::new()), None);
    }

    #[test]
    fn bodies_parse_only_as_objects_and_empty_means_empty() {
        assert_eq!(parse_object(b""), Some(Map::new()));
        assert_eq!(parse_object(b" \n"), Some(Map::new()));
        assert!(parse_object(br#"{"a":1}"#).is_some());
        assert_eq!(parse_object(b"[1]"), None);
        assert_eq!(parse_object(b"{not json"), None);
        assert_eq!(parse_object(&[0xff, 0xfe]), None);
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("close, x-private"));
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.insert("content-length", HeaderValue::from_static("9"));
        headers.insert("x-amz-target", HeaderValue::from_static("t"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-amz-target"));
    }

    #[tokio::test]
    async fn errors_carry_the_code_in_the_header_and_the_body() {
        let resp = aws_error_with(
            StatusCode::BAD_REQUEST,
            "ConflictException",
            "nope",
            serde_json::json!({ "resourceIds": ["a"] })
                .as_object()
                .cloned()
                .unwrap(),
        );
        assert_eq!(resp.status(), 400);
        assert_eq!(resp.headers()["x-amzn-errortype"], "ConflictException");
        assert_eq!(resp.headers()["content-type"], AWS_JSON);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({ "__type": "ConflictException", "message": "nope", "resourceIds": ["a"] })
        );
    }
}
