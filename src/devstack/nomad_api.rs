//! The emulated Nomad HTTP API: the allocation and job endpoints the driver
//! reads, served on loopback from state a test (or the dev tool) controls —
//! drains, node loss, job stop, and outages.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// One allocation as the emulated servers know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocState {
    /// ID.
    pub id: String,
    /// Namespace.
    pub namespace: String,
    /// Job.
    pub job_id: String,
    /// pending, running, complete, failed, lost.
    pub client_status: String,
    /// run, stop.
    pub desired_status: String,
    /// A drain is migrating it.
    pub migrate: bool,
    /// The allocation it replaces.
    pub previous: String,
    /// The allocation that replaces it.
    pub next: String,
}

impl AllocState {
    /// A running allocation of `job`.
    pub fn running(id: &str, job: &str) -> Self {
        Self {
            id: id.into(),
            namespace: "default".into(),
            job_id: job.into(),
            client_status: "running".into(),
            desired_status: "run".into(),
            migrate: false,
            previous: String::new(),
            next: String::new(),
        }
    }
}

#[derive(Default)]
struct State {
    allocs: HashMap<String, AllocState>,
    stopped_jobs: HashMap<String, bool>,
    purged_jobs: Vec<String>,
    outage: bool,
    requests: u64,
}

/// A running emulated Nomad API; stops when dropped.
pub struct NomadApiServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
}

impl Drop for NomadApiServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl NomadApiServer {
    /// Serve on 127.0.0.1 on a free port.
    ///
    /// # Errors
    /// Binding fails.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let stop = CancellationToken::new();
        let (st, cancel) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = cancel.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((stream, _)) = accepted else { continue };
                let st = st.clone();
                let cancel = cancel.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(answer(&st, &req)) }
                    });
                    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        () = cancel.cancelled() => {}
                    }
                });
            }
        });
        Ok(Self { addr, state, stop })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut s)
    }

    /// Add or replace an allocation.
    pub fn put_alloc(&self, a: AllocState) {
        self.with(|s| s.allocs.insert(a.id.clone(), a));
    }

    /// Change an allocation.
    pub fn update_alloc(&self, id: &str, f: impl FnOnce(&mut AllocState)) {
        self.with(|s| {
            if let Some(a) = s.allocs.get_mut(id) {
                f(a);
            }
        });
    }

    /// `nomad node drain`: the allocation is migrated to `replacement`
    /// (placed at once when given).
    pub fn drain(&self, alloc: &str, replacement: Option<&str>) {
        let job = self
            .with(|s| s.allocs.get(alloc).map(|a| a.job_id.clone()))
            .unwrap_or_default();
        self.update_alloc(alloc, |a| {
            a.migrate = true;
            a.desired_status = "stop".into();
            a.next = replacement.unwrap_or_default().into();
        });
        if let Some(r) = replacement {
            self.put_alloc(AllocState {
                previous: alloc.into(),
                ..AllocState::running(r, &job)
            });
        }
    }

    /// The node of `alloc` is marked down: the allocation is lost and
    /// replaced by `replacement`.
    pub fn lose_node(&self, alloc: &str, replacement: &str) {
        let job = self
            .with(|s| s.allocs.get(alloc).map(|a| a.job_id.clone()))
            .unwrap_or_default();
        self.update_alloc(alloc, |a| {
            a.client_status = "lost".into();
            a.desired_status = "stop".into();
            a.next = replacement.into();
        });
        self.put_alloc(AllocState {
            previous: alloc.into(),
            ..AllocState::running(replacement, &job)
        });
    }

    /// `nomad job stop`.
    pub fn stop_job(&self, job: &str) {
        self.with(|s| {
            s.stopped_jobs.insert(job.into(), true);
            for a in s.allocs.values_mut().filter(|a| a.job_id == job) {
                a.desired_status = "stop".into();
            }
        });
    }

    /// `nomad job stop -purge`: the job and its allocations are gone.
    pub fn purge_job(&self, job: &str) {
        self.with(|s| {
            s.purged_jobs.push(job.into());
            s.allocs.retain(|_, a| a.job_id != job);
        });
    }

    /// Make every request fail with 500 (or stop doing so).
    pub fn set_outage(&self, on: bool) {
        self.with(|s| s.outage = on);
    }

    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        self.with(|s| s.requests)
    }
}

fn alloc_json(a: &AllocState, job_stopped: bool) -> Value {
    json!({
        "ID": a.id,
        "Namespace": a.namespace,
        "JobID": a.job_id,
        "ClientStatus": a.client_status,
        "DesiredStatus": a.desired_status,
        "DesiredTransition": if a.migrate { json!({"Migrate": true}) } else { json!({}) },
        "PreviousAllocation": a.previous,
        "NextAllocation": a.next,
        "ModifyTime": 0,
        "Job": {"ID": a.job_id, "Stop": job_stopped, "Status": if job_stopped { "dead" } else { "running" }},
    })
}

fn answer(
    state: &Arc<Mutex<State>>,
    req: &Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let mut s = state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    s.requests += 1;
    let reply = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    if s.outage {
        return reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "rpc error: No cluster leader".into(),
        );
    }
    let path = req.uri().path();
    if let Some(id) = path.strip_prefix("/v1/allocation/") {
        return match s.allocs.get(id) {
            Some(a) => reply(
                StatusCode::OK,
                alloc_json(a, s.stopped_jobs.contains_key(&a.job_id)).to_string(),
            ),
            None => reply(StatusCode::NOT_FOUND, "alloc not found".into()),
        };
    }
    if let Some(id) = path.strip_prefix("/v1/job/") {
        if s.purged_jobs.iter().any(|j| j == id)
            || !s.allocs.values().any(|a| a.job_id == id) && !s.stopped_jobs.contains_key(id)
        {
            return reply(StatusCode::NOT_FOUND, "job not found".into());
        }
        let stopped = s.stopped_jobs.contains_key(id);
        return reply(
            StatusCode::OK,
            json!({"ID": id, "Stop": stopped, "Status": if stopped { "dead" } else { "running" }})
                .to_string(),
        );
    }
    reply(StatusCode::NOT_FOUND, "Invalid URL".into())
}
