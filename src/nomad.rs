//! A small Nomad HTTP API client: what the driver needs to know about an
//! allocation to decide between stopping an ECS task, handing it off to a
//! replacement, and adopting one. Address, token and TLS come from the plugin
//! config, defaulting to the agent's `NOMAD_ADDR`, `NOMAD_TOKEN`,
//! `NOMAD_CACERT`, `NOMAD_CLIENT_CERT`, `NOMAD_CLIENT_KEY`,
//! `NOMAD_TLS_SERVER_NAME`, as Nomad's own clients take them.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use thiserror::Error;

/// Where and how to reach the Nomad API.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiConfig {
    /// `http://host:port` or `https://host:port`.
    pub address: String,
    /// ACL token (never logged).
    pub token: Option<String>,
    /// CA bundle (PEM) for https.
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS.
    pub client_cert: Option<PathBuf>,
    /// Client key (PEM) for mTLS.
    pub client_key: Option<PathBuf>,
    /// Server name to verify instead of the address's host.
    pub tls_server_name: Option<String>,
}

/// A failed Nomad API call.
#[derive(Debug, Error)]
pub enum NomadApiError {
    /// The configuration cannot work.
    #[error("Nomad API config: {0}")]
    Config(String),
    /// Connecting or reading failed.
    #[error("cannot reach the Nomad API at {address}: {cause}")]
    Unreachable {
        /// The address.
        address: String,
        /// Why.
        cause: String,
    },
    /// No answer in time.
    #[error("the Nomad API at {address} did not answer within {timeout:?}")]
    Timeout {
        /// The address.
        address: String,
        /// The bound.
        timeout: Duration,
    },
    /// An HTTP error status.
    #[error("the Nomad API answered {status} for {path}: {body}")]
    Status {
        /// The path asked.
        path: String,
        /// HTTP status.
        status: u16,
        /// The body (truncated).
        body: String,
    },
    /// A body we cannot read.
    #[error("the Nomad API's answer for {path} is not what we expect: {cause}")]
    Decode {
        /// The path asked.
        path: String,
        /// Why.
        cause: String,
    },
}

/// `DesiredTransition` of an allocation.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct DesiredTransition {
    /// Set when a drain migrates the allocation.
    #[serde(rename = "Migrate", default)]
    pub migrate: Option<bool>,
}

/// The parts of a job the driver reads.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Job {
    /// Stopped by `nomad job stop`.
    #[serde(rename = "Stop", default)]
    pub stop: bool,
    /// pending, running, dead.
    #[serde(rename = "Status", default)]
    pub status: String,
}

/// The parts of an allocation the driver reads.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Allocation {
    /// ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Namespace.
    #[serde(rename = "Namespace", default)]
    pub namespace: String,
    /// Job ID.
    #[serde(rename = "JobID", default)]
    pub job_id: String,
    /// pending, running, complete, failed, lost, unknown.
    #[serde(rename = "ClientStatus", default)]
    pub client_status: String,
    /// run, stop, evict.
    #[serde(rename = "DesiredStatus", default)]
    pub desired_status: String,
    /// Drain migration marker.
    #[serde(rename = "DesiredTransition", default)]
    pub desired_transition: DesiredTransition,
    /// The allocation this one replaces.
    #[serde(rename = "PreviousAllocation", default)]
    pub previous_allocation: String,
    /// The allocation that replaces this one.
    #[serde(rename = "NextAllocation", default)]
    pub next_allocation: String,
    /// Last change, Unix nanoseconds.
    #[serde(rename = "ModifyTime", default)]
    pub modify_time: i64,
    /// The job as of this allocation.
    #[serde(rename = "Job", default)]
    pub job: Option<Job>,
}

impl Allocation {
    /// A drain is migrating it.
    pub fn is_migrating(&self) -> bool {
        self.desired_transition.migrate == Some(true)
    }

    /// Its node was lost.
    pub fn is_lost(&self) -> bool {
        self.client_status == "lost" || self.client_status == "unknown"
    }

    /// Finished on its client.
    pub fn is_terminal(&self) -> bool {
        matches!(self.client_status.as_str(), "complete" | "failed" | "lost")
    }
}

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// The client.
#[derive(Clone)]
pub struct NomadApi {
    address: String,
    token: Option<String>,
    client: Client<Https, Empty<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for NomadApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NomadApi")
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

fn read_pem_certs(
    path: &PathBuf,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, NomadApiError> {
    use rustls_pki_types::pem::PemObject as _;
    rustls_pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| NomadApiError::Config(format!("reading {}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| NomadApiError::Config(format!("parsing {}: {e}", path.display())))
}

impl NomadApi {
    /// A client for `cfg`.
    ///
    /// # Errors
    /// [`NomadApiError::Config`] for a bad address or unreadable TLS files.
    pub fn new(cfg: &ApiConfig) -> Result<Self, NomadApiError> {
        let uri: http::Uri = cfg
            .address
            .parse()
            .map_err(|e| NomadApiError::Config(format!("address {:?}: {e}", cfg.address)))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => {
                return Err(NomadApiError::Config(format!(
                    "address {:?} must be http:// or https://",
                    cfg.address
                )));
            }
        }
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = &cfg.ca_cert {
            for cert in read_pem_certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| NomadApiError::Config(format!("CA {}: {e}", ca.display())))?;
            }
        } else {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| NomadApiError::Config(e.to_string()))?
            .with_root_certificates(roots);
        let tls = match (&cfg.client_cert, &cfg.client_key) {
            (Some(cert), Some(key)) => {
                use rustls_pki_types::pem::PemObject as _;
                let certs = read_pem_certs(cert)?;
                let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    NomadApiError::Config(format!("client key {}: {e}", key.display()))
                })?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| NomadApiError::Config(format!("client certificate: {e}")))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(NomadApiError::Config(
                    "nomad_client_cert and nomad_client_key go together".into(),
                ));
            }
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(3)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let https = match &cfg.tls_server_name {
            Some(name) => {
                https.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(
                    rustls_pki_types::ServerName::try_from(name.clone()).map_err(|e| {
                        NomadApiError::Config(format!("tls server name {name:?}: {e}"))
                    })?,
                ))
            }
            None => https,
        };
        let connector = https.enable_http1().wrap_connector(http);
        Ok(Self {
            address: cfg.address.trim_end_matches('/').to_string(),
            token: cfg.token.clone(),
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout: Duration::from_secs(5),
        })
    }

    /// The address (for messages).
    pub fn address(&self) -> &str {
        &self.address
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<T>, NomadApiError> {
        let mut last = None;
        for attempt in 0..3u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
            match self.get_once(path).await {
                Ok(v) => return Ok(v),
                Err(e @ (NomadApiError::Unreachable { .. } | NomadApiError::Timeout { .. })) => {
                    last = Some(e)
                }
                Err(NomadApiError::Status { status, path, body }) if status >= 500 => {
                    last = Some(NomadApiError::Status { status, path, body });
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| NomadApiError::Unreachable {
            address: self.address.clone(),
            cause: "no attempt made".into(),
        }))
    }

    async fn get_once<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Option<T>, NomadApiError> {
        let uri: http::Uri = format!("{}{path}", self.address)
            .parse()
            .map_err(|e| NomadApiError::Config(format!("{path}: {e}")))?;
        let mut req = http::Request::get(uri);
        if let Some(t) = &self.token {
            req = req.header("X-Nomad-Token", t);
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| NomadApiError::Config(e.to_string()))?;
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| NomadApiError::Unreachable {
                    address: self.address.clone(),
                    cause: error_chain(&e),
                })?;
            let status = resp.status().as_u16();
            let body =
                resp.into_body()
                    .collect()
                    .await
                    .map_err(|e| NomadApiError::Unreachable {
                        address: self.address.clone(),
                        cause: e.to_string(),
                    })?;
            Ok::<_, NomadApiError>((status, body.to_bytes()))
        };
        let (status, body) = tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| NomadApiError::Timeout {
                address: self.address.clone(),
                timeout: self.timeout,
            })??;
        if status == 404 {
            return Ok(None);
        }
        if status != 200 {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            return Err(NomadApiError::Status {
                path: path.to_string(),
                status,
                body: text,
            });
        }
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| NomadApiError::Decode {
                path: path.to_string(),
                cause: e.to_string(),
            })
    }

    /// `GET /v1/allocation/:id`; `None` when Nomad does not know it.
    ///
    /// # Errors
    /// [`NomadApiError`] when the API cannot answer.
    #[tracing::instrument(skip(self), fields(rpc.system = "http", rpc.service = "nomad", rpc.method = "GetAllocation"))]
    pub async fn allocation(&self, id: &str) -> Result<Option<Allocation>, NomadApiError> {
        self.get(&format!("/v1/allocation/{}", urlencode(id))).await
    }

    /// `GET /v1/job/:id?namespace=`; `None` when the job was purged.
    ///
    /// # Errors
    /// [`NomadApiError`] when the API cannot answer.
    #[tracing::instrument(skip(self), fields(rpc.system = "http", rpc.service = "nomad", rpc.method = "GetJob"))]
    pub async fn job(&self, namespace: &str, job_id: &str) -> Result<Option<Job>, NomadApiError> {
        self.get(&format!(
            "/v1/job/{}?namespace={}",
            urlencode(job_id),
            urlencode(namespace)
        ))
        .await
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allocation_decodes_from_nomads_json() {
        let json = r#"{"ID":"a1","Namespace":"default","JobID":"web","ClientStatus":"running","DesiredStatus":"stop",
            "DesiredTransition":{"Migrate":true},"PreviousAllocation":"","NextAllocation":"a2","ModifyTime":1700000000000000000,
            "Job":{"Stop":false,"Status":"running","ID":"web"},"TaskStates":{}}"#;
        let a: Allocation = serde_json::from_str(json).unwrap();
        assert!(a.is_migrating() && !a.is_lost() && !a.is_terminal());
        assert_eq!(a.next_allocation, "a2");
        assert_eq!(a.job.unwrap().status, "running");
    }

    #[test]
    fn bad_addresses_and_half_mtls_are_config_errors() {
        assert!(matches!(
            NomadApi::new(&ApiConfig {
                address: "ftp://x".into(),
                ..ApiConfig::default()
            }),
            Err(NomadApiError::Config(_))
        ));
        let half = ApiConfig {
            address: "https://127.0.0.1:4646".into(),
            client_cert: Some("/x".into()),
            ..ApiConfig::default()
        };
        assert!(matches!(
            NomadApi::new(&half),
            Err(NomadApiError::Config(_))
        ));
    }

    #[test]
    fn the_token_is_not_in_debug_output() {
        let api = NomadApi::new(&ApiConfig {
            address: "http://127.0.0.1:1".into(),
            token: Some("s3cr3t".into()),
            ..ApiConfig::default()
        })
        .unwrap();
        assert!(!format!("{api:?}").contains("s3cr3t"));
    }

    #[tokio::test]
    async fn an_unreachable_api_is_reported_with_its_address() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let api = NomadApi::new(&ApiConfig {
            address: format!("http://127.0.0.1:{port}"),
            ..ApiConfig::default()
        })
        .unwrap();
        let err = api.allocation("a1").await.unwrap_err();
        assert!(matches!(err, NomadApiError::Unreachable { .. }), "{err}");
        assert!(err.to_string().contains(&port.to_string()));
    }
}
