//! ECS fidelity and fault proxy: a loopback HTTP server in front of an
//! unmodified moto that makes its ECS answers behave as the AWS documentation
//! says, injects faults, and counts calls, for the driver's end-to-end tests.
//!
//! Point the driver under test at [`EcsProxy::endpoint`] instead of the
//! emulator's. ECS calls (awsJson 1.1: `POST /` with `X-Amz-Target:
//! AmazonEC2ContainerServiceV20141113.<Operation>`) are counted, recorded,
//! possibly faulted, and for the operations below corrected; every other
//! request (EC2's query protocol, `/moto-api/...`) passes through unchanged.
//!
//! What is corrected (each rule quotes AWS where it is implemented):
//!
//! | operation | moto | through the proxy |
//! |---|---|---|
//! | RunTask | ignores `clientToken` | same token, same parameters: the first answer again; different parameters: `ConflictException` with `resourceIds` |
//! | DescribeTasks | drops unknown ARNs, looks in every cluster, takes >100 ARNs | `failures: [{arn, reason: MISSING}]`, other clusters' tasks MISSING, >100 `InvalidParameterException`, optional MISSING window after launch |
//! | task fields | no `createdAt`/`startedAt`/`stoppingAt`/`stoppedAt`/`stopCode`; container PENDING forever with `exitCode: 0` and the task-definition ARN as `taskArn` | all present and consistent with the task; `exitCode` only once stopped |
//! | StopTask | no `stopCode`, HTML 500 for an unknown task | `stopCode: UserInitiated`, exit code 143 (SIGTERM), optional STOPPING phase; unknown task `InvalidParameterException` |
//! | ListTasks | lists STOPPED tasks unless filtered, no paging, cluster matched as a substring | default `desiredStatus: RUNNING`, `maxResults`/`nextToken` paging, exact cluster |
//! | TagResource & co. | HTML 500 for an unknown task, `tags` key omitted when empty | `InvalidParameterException`; `tags: []` |
//!
//! Tests also make tasks exit ([`EcsProxy::exit_task`], [`EcsProxy::oom_kill_task`],
//! [`EcsProxy::fail_task`]): the proxy stops the task in moto (so moto's
//! `desiredStatus` and ListTasks filters agree) and lays the exit over it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use nomad_driver_ecs::devstack::ecs_proxy::{EcsProxy, Fault};
//! use nomad_driver_ecs::devstack::emulator::start_default;
//!
//! let emu = start_default("nomad").await?;
//! let proxy = EcsProxy::start(emu.endpoint()).await?;
//! proxy.inject(Some("DescribeTasks"), Fault::Throttle, 2);
//! // ... run the driver against proxy.endpoint() ...
//! assert_eq!(proxy.calls("RunTask"), 1);
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//! Listens on 127.0.0.1 only; closes its port and drops every connection
//! once the [`EcsProxy`] is dropped (when the runtime next runs the server's
//! tasks, so at the next `.await` in a current-thread test). Every exchange with the emulator is
//! bounded (30 s), request bodies are read within 30 s and capped at 16 MiB,
//! and no input makes the proxy panic: a body that is not a JSON object is
//! answered `SerializationException`.
//!
//! StopTask and the exit helpers first ask moto with an extra
//! DescribeTasks, which moves a task one step along moto's state manager; the
//! emulator launcher configures moto so tasks stay RUNNING, which makes that
//! harmless.
//!
//! State (overlays, tokens, counts) lives in the proxy, not in moto: a moto
//! `/moto-api/reset` behind the proxy's back leaves stale overlays, so use a
//! fresh proxy per emulator.

mod model;
mod ops;
mod upstream;
mod wire;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use model::TaskOverlay;
use upstream::Upstream;
use wire::Body;

/// Largest request body accepted from the client.
const MAX_REQUEST_BYTES: usize = 16 << 20;
/// How long a client may take to send a request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection may sit without sending a request's headers
/// (hyper starts this clock when it waits for the next request).
const HEADER_TIMEOUT: Duration = Duration::from_secs(120);
/// Pause after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Exit code of a container stopped by StopTask: ECS sends SIGTERM
/// ("When StopTask is called on a task, the equivalent of docker stop is
/// issued to the containers"), and a process killed by it exits 128 + 15.
const SIGTERM_EXIT_CODE: i32 = 143;
/// Exit code of a container killed by the OOM killer (128 + SIGKILL).
const OOM_EXIT_CODE: i32 = 137;

/// A failure the proxy answers with instead of forwarding a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 400 `ThrottlingException` "Rate exceeded", as ECS answers a call
    /// over its token-bucket rate ("Request throttling for the Amazon ECS API").
    Throttle,
    /// HTTP 500 `ServerException` ("These errors are usually caused by a
    /// server issue").
    ServerError,
    /// HTTP 503 `ServiceUnavailableException`.
    ServiceUnavailable,
    /// Waits this long, then handles the call as usual.
    Latency(Duration),
    /// Closes the TCP connection without sending a response.
    DropConnection,
    /// Handles the call (it reaches ECS and takes effect), then closes the
    /// connection instead of answering: the response is lost on the way
    /// back, as when a client dies between sending RunTask and reading it.
    LoseResponse,
}

/// A failed test control call ([`EcsProxy::exit_task`] and friends).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    #[error(
        "{task_arn:?} is not a long-format ECS task ARN \
         (arn:aws:ecs:<region>:<account>:task/<cluster>/<id>)"
    )]
    InvalidTaskArn { task_arn: String },
    #[error("task {task_arn} was not found in cluster {cluster}")]
    TaskNotFound { task_arn: String, cluster: String },
    #[error("task {task_arn} was already stopped through the proxy")]
    AlreadyStopped { task_arn: String },
    #[error("{operation} to the emulator failed")]
    UpstreamFailed {
        operation: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the emulator answered {operation} with HTTP {status}: {body}")]
    UpstreamRejected {
        operation: &'static str,
        status: u16,
        body: String,
    },
}

/// A fault waiting to be used, `remaining` more times.
#[derive(Debug, Clone)]
struct FaultRule {
    operation: Option<String>,
    fault: Fault,
    remaining: u32,
}

/// Knobs tests turn.
#[derive(Debug, Clone, Copy)]
struct Settings {
    missing_after_launch: u32,
    stopping_polls: u32,
    stop_exit_code: i32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            missing_after_launch: 0,
            stopping_polls: 0,
            stop_exit_code: SIGTERM_EXIT_CODE,
        }
    }
}

/// A RunTask answer remembered under its `(cluster, clientToken)`.
#[derive(Debug, Clone)]
struct TokenEntry {
    /// The request without `clientToken`, to tell a retry from a conflict.
    params: serde_json::Map<String, Value>,
    /// The answer's body, sent again for a retry.
    response: Value,
}

/// Everything the proxy remembers; behind a std mutex that is never held
/// across an `.await`.
#[derive(Debug, Default)]
struct State {
    counts: BTreeMap<String, u64>,
    last_requests: HashMap<String, Value>,
    faults: Vec<FaultRule>,
    settings: Settings,
    tokens: HashMap<(String, String), TokenEntry>,
    /// Overlays by task ARN.
    tasks: HashMap<String, TaskOverlay>,
    /// Task ARN by task id, for requests that name a task by id.
    task_ids: HashMap<String, String>,
}

impl State {
    /// Uses up one fault for `operation`: the first rule (in injection
    /// order) that names it or any operation.
    fn take_fault(&mut self, operation: &str) -> Option<Fault> {
        let index = self.faults.iter().position(|rule| {
            rule.remaining > 0 && rule.operation.as_deref().is_none_or(|op| op == operation)
        })?;
        let rule = &mut self.faults[index];
        rule.remaining -= 1;
        let fault = rule.fault;
        if rule.remaining == 0 {
            self.faults.remove(index);
        }
        Some(fault)
    }

    fn insert_task(&mut self, arn: &str, overlay: TaskOverlay) {
        self.task_ids
            .insert(model::task_id(arn).to_owned(), arn.to_owned());
        self.tasks.insert(arn.to_owned(), overlay);
    }

    /// The overlay of the task `ident` (an ARN or an id) names.
    fn find_task_mut(&mut self, ident: &str) -> Option<&mut TaskOverlay> {
        let arn = if ident.starts_with("arn:") {
            ident
        } else {
            self.task_ids.get(ident)?.as_str()
        };
        self.tasks.get_mut(arn)
    }
}

/// What the server's connections share.
struct Shared {
    upstream: Upstream,
    state: Mutex<State>,
    /// Serialises RunTask calls that carry a `clientToken`, so two
    /// concurrent calls with one token launch once, as on AWS. Held across
    /// the (bounded) upstream call on purpose.
    run_task_lock: tokio::sync::Mutex<()>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The service's way of telling hyper to close the connection unanswered.
#[derive(Debug)]
struct DropConnection;

impl fmt::Display for DropConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection dropped by ecs_proxy")
    }
}

impl std::error::Error for DropConnection {}

/// Wall-clock now as epoch seconds with millisecond precision: ECS
/// timestamps are wall-clock times, so this is not tokio's clock.
fn now_secs() -> f64 {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    // Millisecond epoch values are far below 2^53, so this is exact.
    millis as f64 / 1000.0
}

/// A running proxy; stops when dropped.
pub struct EcsProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    accept: JoinHandle<()>,
}

impl fmt::Debug for EcsProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EcsProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .finish_non_exhaustive()
    }
}

impl Drop for EcsProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.accept.abort();
    }
}

impl EcsProxy {
    /// Starts a proxy on 127.0.0.1 and a free port in front of the emulator
    /// at `upstream_endpoint` (`http://host:port`). Must be called within a
    /// tokio runtime, which then runs the server.
    ///
    /// # Errors
    /// `InvalidInput` for an endpoint that is not plain `http://host:port`;
    /// the bind's error if no loopback port could be had.
    pub async fn start(upstream_endpoint: &str) -> io::Result<EcsProxy> {
        let upstream = Upstream::parse(upstream_endpoint)?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            state: Mutex::new(State::default()),
            run_task_lock: tokio::sync::Mutex::new(()),
        });
        let shutdown = CancellationToken::new();
        let accept = tokio::spawn(accept_loop(listener, shared.clone(), shutdown.clone()));
        Ok(EcsProxy {
            addr,
            shared,
            shutdown,
            accept,
        })
    }

    /// The proxy's base URL, `http://127.0.0.1:PORT`: what the driver under
    /// test is pointed at.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address the proxy listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Makes the next `times` calls of ECS operation `operation` (or of any
    /// ECS operation, for `None`) fail with `fault`. Rules are used in the
    /// order injected, one per call; a call that uses a fault still counts
    /// in [`calls`](Self::calls). `times == 0` injects nothing.
    pub fn inject(&self, operation: Option<&str>, fault: Fault, times: u32) {
        if times == 0 {
            return;
        }
        self.shared.lock().faults.push(FaultRule {
            operation: operation.map(str::to_owned),
            fault,
            remaining: times,
        });
    }

    /// Removes every fault not yet used.
    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// How many calls of ECS `operation` the proxy has received (faulted
    /// ones included) since the start or [`reset_counts`](Self::reset_counts).
    pub fn calls(&self, operation: &str) -> u64 {
        self.shared
            .lock()
            .counts
            .get(operation)
            .copied()
            .unwrap_or(0)
    }

    /// Every ECS operation received, with its count.
    pub fn all_calls(&self) -> BTreeMap<String, u64> {
        self.shared.lock().counts.clone()
    }

    /// Forgets the counts and the recorded requests.
    pub fn reset_counts(&self) {
        let mut state = self.shared.lock();
        state.counts.clear();
        state.last_requests.clear();
    }

    /// The JSON body of the last call of ECS `operation` whose body was a
    /// JSON object, e.g. to check that RunTask carried a `clientToken`.
    pub fn last_request(&self, operation: &str) -> Option<Value> {
        self.shared.lock().last_requests.get(operation).cloned()
    }

    /// Reports each task launched from now on as MISSING to its first
    /// `polls` DescribeTasks calls, as ECS's eventual consistency may
    /// ("The Amazon ECS API follows an eventual consistency model ... run
    /// the DescribeTasks command using an exponential backoff", RunTask API
    /// reference). 0 (the default) turns this off.
    pub fn set_missing_after_launch(&self, polls: u32) {
        self.shared.lock().settings.missing_after_launch = polls;
    }

    /// Makes each task stopped from now on pass through DEACTIVATING,
    /// STOPPING and DEPROVISIONING (desiredStatus STOPPED) for its next
    /// `polls` DescribeTasks before it is reported STOPPED. 0 (the default)
    /// reports STOPPED at once, as moto does.
    pub fn set_stopping_polls(&self, polls: u32) {
        self.shared.lock().settings.stopping_polls = polls;
    }

    /// The container exit code that StopTasks from now on report (default
    /// 143: SIGTERM; 137 models a container that ignored SIGTERM and was
    /// killed after `stopTimeout`).
    pub fn set_stop_exit_code(&self, code: i32) {
        self.shared.lock().settings.stop_exit_code = code;
    }

    /// Makes the task's essential container exit with `exit_code`: the task
    /// stops with `stopCode: EssentialContainerExited` and `stoppedReason:
    /// "Essential container in task exited"`, its container is STOPPED with
    /// that `exitCode`.
    ///
    /// # Errors
    /// See [`ControlError`]: a malformed ARN, a task moto does not hold in
    /// the ARN's cluster, a task already stopped through the proxy, or an
    /// emulator that failed the StopTask.
    pub async fn exit_task(&self, task_arn: &str, exit_code: i32) -> Result<(), ControlError> {
        self.shared
            .stop_from_test(task_arn, ops::TestStop::exited(exit_code, None))
            .await
    }

    /// Kills the task's essential container for exceeding its memory: as
    /// [`exit_task`](Self::exit_task) with exit code 137, and the container's
    /// `reason` "OutOfMemoryError: Container killed due to memory usage".
    ///
    /// # Errors
    /// As [`exit_task`](Self::exit_task).
    pub async fn oom_kill_task(&self, task_arn: &str) -> Result<(), ControlError> {
        let reason = "OutOfMemoryError: Container killed due to memory usage";
        self.shared
            .stop_from_test(
                task_arn,
                ops::TestStop::exited(OOM_EXIT_CODE, Some(reason.to_owned())),
            )
            .await
    }

    /// Stops the task with `stop_code` (e.g. `TaskFailedToStart`) and
    /// `reason` (e.g. `"CannotPullContainerError: ..."`) as both the task's
    /// `stoppedReason` and the container's `reason`, with no exit code. For
    /// `TaskFailedToStart` the task also loses its `startedAt`.
    ///
    /// # Errors
    /// As [`exit_task`](Self::exit_task).
    pub async fn fail_task(
        &self,
        task_arn: &str,
        stop_code: &str,
        reason: &str,
    ) -> Result<(), ControlError> {
        self.shared
            .stop_from_test(task_arn, ops::TestStop::failed(stop_code, reason))
            .await
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(stream, shared.clone(), shutdown.clone()));
            }
            Err(error) => {
                tracing::warn!(%error, "ecs_proxy: accept failed");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>, shutdown: CancellationToken) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| {
        let shared = shared.clone();
        async move { shared.handle(req).await }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    // A connection ends when the client closes it, on a DropConnection
    // fault, or when the proxy is dropped; errors are the client's business.
    tokio::select! {
        _ = conn => {}
        () = shutdown.cancelled() => {}
    }
}

impl Shared {
    async fn handle(&self, req: Request<Incoming>) -> Result<Response<Body>, DropConnection> {
        let (parts, body) = req.into_parts();
        let read = Limited::new(body, MAX_REQUEST_BYTES).collect();
        let body: Bytes = match tokio::time::timeout(BODY_TIMEOUT, read).await {
            Err(_) => return Err(DropConnection),
            Ok(Err(error)) if error.downcast_ref::<LengthLimitError>().is_some() => {
                return Ok(wire::proxy_failure(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("request body over {MAX_REQUEST_BYTES} bytes"),
                ));
            }
            Ok(Err(_)) => return Err(DropConnection),
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        match wire::ecs_operation(&parts.method, &parts.headers) {
            Some(operation) => self.handle_ecs(operation, parts.headers, body).await,
            None => Ok(self.pass_through(&parts, body).await),
        }
    }

    /// Forwards a non-ECS request unchanged (bar hop-by-hop headers).
    async fn pass_through(&self, parts: &http::request::Parts, body: Bytes) -> Response<Body> {
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        match self
            .upstream
            .send(parts.method.clone(), &path, &parts.headers, body)
            .await
        {
            Ok(resp) => ops::relay(resp),
            Err(error) => ops::bad_gateway(&error),
        }
    }

    async fn handle_ecs(
        &self,
        operation: String,
        headers: http::HeaderMap,
        body: Bytes,
    ) -> Result<Response<Body>, DropConnection> {
        let request = wire::parse_object(&body);
        let fault = {
            let mut state = self.lock();
            *state.counts.entry(operation.clone()).or_insert(0) += 1;
            if let Some(request) = &request {
                state
                    .last_requests
                    .insert(operation.clone(), Value::Object(request.clone()));
            }
            state.take_fault(&operation)
        };
        match fault {
            None => {}
            Some(Fault::Latency(delay)) => tokio::time::sleep(delay).await,
            Some(Fault::Throttle) => {
                return Ok(wire::aws_error(
                    StatusCode::BAD_REQUEST,
                    "ThrottlingException",
                    "Rate exceeded",
                ));
            }
            Some(Fault::ServerError) => {
                return Ok(wire::aws_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "ServerException",
                    "Server error injected by ecs_proxy",
                ));
            }
            Some(Fault::ServiceUnavailable) => {
                return Ok(wire::aws_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailableException",
                    "Service unavailable (injected by ecs_proxy)",
                ));
            }
            Some(Fault::DropConnection) => return Err(DropConnection),
            Some(Fault::LoseResponse) => {
                if let Some(request) = request {
                    let call = ops::Call {
                        operation,
                        headers,
                        request,
                        raw: body,
                    };
                    let _ = self.dispatch(call).await;
                }
                return Err(DropConnection);
            }
        }
        let Some(request) = request else {
            return Ok(wire::serialization("the request body is not a JSON object"));
        };
        let call = ops::Call {
            operation,
            headers,
            request,
            raw: body,
        };
        Ok(self.dispatch(call).await)
    }
}
