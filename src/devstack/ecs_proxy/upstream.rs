//! The proxy's client to the emulator: one HTTP/1 exchange per connection
//! over plain TCP (moto answers every request with `Connection: close`
//! anyway), each bounded by a deadline.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderMap, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value};
use tokio::net::TcpStream;

use super::wire::{AWS_JSON, ECS_TARGET_PREFIX, strip_hop_by_hop};

/// How long one exchange with the emulator may take, connect to last byte.
/// moto's first ECS call loads its backend (~1.2 s); DescribeTasks with
/// 100 ARNs takes ~70 ms.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest answer read from the emulator (a ListTasks of thousands of
/// ARNs is well under 1 MiB).
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// One answer from the emulator, fully read.
#[derive(Debug, Clone)]
pub(super) struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl UpstreamResponse {
    /// The body as a JSON object, for 2xx answers that have one.
    pub fn json_object(&self) -> Option<Map<String, Value>> {
        if !self.status.is_success() {
            return None;
        }
        match serde_json::from_slice(&self.body) {
            Ok(Value::Object(map)) => Some(map),
            _ => None,
        }
    }

    /// Whether this is moto's HTML 500 for an internal error (its answer to
    /// several "not found" cases), not an awsJson error.
    pub fn is_internal_error(&self) -> bool {
        self.status.is_server_error() && !self.headers.contains_key("x-amzn-errortype")
    }
}

/// Where the emulator listens.
#[derive(Debug, Clone)]
pub(super) struct Upstream {
    /// `host:port`, for connecting and for the `Host` header.
    authority: String,
}

impl Upstream {
    /// Parses `http://host:port` (a trailing `/` is fine; no path, no TLS).
    pub fn parse(endpoint: &str) -> io::Result<Self> {
        let invalid = |why: &str| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("upstream endpoint {endpoint:?}: {why} (want http://host:port)"),
            )
        };
        let uri: Uri = endpoint.parse().map_err(|_| invalid("not a URI"))?;
        if uri.scheme_str() != Some("http") {
            return Err(invalid("scheme must be http"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(invalid("no path or query allowed"));
        }
        let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        Ok(Self {
            authority: format!("{}:{port}", authority.host()),
        })
    }

    /// Sends `method path` with `headers` (hop-by-hop ones and `Host`
    /// replaced) and `body`, and reads the whole answer.
    ///
    /// # Errors
    /// Connecting, the exchange or reading the body failed, or it all took
    /// longer than [`EXCHANGE_TIMEOUT`] (`TimedOut`).
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> io::Result<UpstreamResponse> {
        let mut headers = headers.clone();
        strip_hop_by_hop(&mut headers);
        // The whole body is at hand: no 100-continue round trip.
        headers.remove(http::header::EXPECT);
        headers.insert(
            HOST,
            HeaderValue::from_str(&self.authority).map_err(io::Error::other)?,
        );
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = path_and_query
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        *req.headers_mut() = headers;

        match tokio::time::timeout(EXCHANGE_TIMEOUT, self.exchange(req)).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no answer from the emulator at {} within {EXCHANGE_TIMEOUT:?}",
                    self.authority
                ),
            )),
        }
    }

    async fn exchange(&self, req: Request<Full<Bytes>>) -> io::Result<UpstreamResponse> {
        let stream = TcpStream::connect(&self.authority).await?;
        stream.set_nodelay(true)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        // The connection task ends when the emulator closes the socket or
        // this exchange's sender is dropped; the deadline bounds it anyway.
        tokio::spawn(async move {
            let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, conn).await;
        });
        let resp = sender.send_request(req).await.map_err(io::Error::other)?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(io::Error::other)?
            .to_bytes();
        Ok(UpstreamResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Calls ECS `operation` with `body`, signed as `headers` were (the
    /// caller's `Authorization` carries the region moto reads).
    pub async fn ecs(
        &self,
        headers: &HeaderMap,
        operation: &str,
        body: &Map<String, Value>,
    ) -> io::Result<UpstreamResponse> {
        let mut headers = headers.clone();
        let target = format!("{ECS_TARGET_PREFIX}{operation}");
        headers.insert(
            "x-amz-target",
            HeaderValue::from_str(&target).map_err(io::Error::other)?,
        );
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(AWS_JSON));
        let body = Bytes::from(Value::Object(body.clone()).to_string());
        self.send(Method::POST, "/", &headers, body).await
    }
}

/// Headers for a call the proxy makes on its own (a test's `exit_task`):
/// a SigV4-shaped `Authorization` whose scope names `region`. moto reads
/// the region from the scope and checks no signature.
pub(super) fn own_headers(region: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential=test/20260101/{region}/ecs/aws4_request, \
         SignedHeaders=host, Signature=0"
    );
    if let Ok(auth) = HeaderValue::from_str(&auth) {
        headers.insert(http::header::AUTHORIZATION, auth);
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_endpoints_without_a_path_are_accepted() {
        assert_eq!(
            Upstream::parse("http://127.0.0.1:5000").unwrap().authority,
            "127.0.0.1:5000"
        );
        assert_eq!(
            Upstream::parse("http://127.0.0.1:5000/").unwrap().authority,
            "127.0.0.1:5000"
        );
        assert_eq!(
            Upstream::parse("http://localhost").unwrap().authority,
            "localhost:80"
        );
        for bad in [
            "https://127.0.0.1:5000",
            "127.0.0.1:5000",
            "http://127.0.0.1:5000/x",
            "",
        ] {
            let err = Upstream::parse(bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
    }
}
