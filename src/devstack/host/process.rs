//! One launched plugin process, started, connected to and killed the way the
//! Nomad client's go-plugin host does it (protocol doc §1.2 to §1.8, §1.10).

use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::{TcpStream, UnixStream};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::handshake::{
    Handshake, HandshakeError, PluginAddress, parse_handshake_line, parse_offered_versions,
};
use super::hclog::{HclogLineError, validate_hclog_line};
use super::record::{Recording, StreamEnd, TaskGuard, record_stream};
use crate::proto::base::base_plugin_client::BasePluginClient;
use crate::proto::drivers::driver_client::DriverClient;
use crate::proto::plugin::grpc_broker_client::GrpcBrokerClient;
use crate::proto::plugin::grpc_controller_client::GrpcControllerClient;
use crate::proto::plugin::grpc_stdio_client::GrpcStdioClient;
use crate::proto::plugin::{ConnInfo, Empty, StdioData};

/// Environment key of Nomad's magic cookie.
pub const MAGIC_COOKIE_KEY: &str = "NOMAD_PLUGIN_MAGIC_COOKIE";
/// The cookie value Nomad sends (`base.Handshake`).
pub const MAGIC_COOKIE_VALUE: &str =
    "e4327c2e01eabfd75a8a67adb114fb34a757d57eee7728d857a8cec6e91a7255";
/// App protocol versions Nomad offers.
pub const NOMAD_PROTOCOL_VERSIONS: &str = "2";
/// go-plugin's default start timeout.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long go-plugin's `Kill` waits for a graceful exit before SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(2);
/// The service name go-plugin's ping checks.
pub const HEALTH_SERVICE: &str = "plugin";

/// go-plugin variables a Nomad host never sets. They are removed from the
/// inherited environment so a developer's shell cannot change the plugin's
/// behaviour; set them through [`LaunchOptions::env`] to test them.
const UNSET_BY_NOMAD: [&str; 4] = [
    "PLUGIN_UNIX_SOCKET_DIR",
    "PLUGIN_UNIX_SOCKET_GROUP",
    "PLUGIN_CLIENT_CERT",
    "PLUGIN_MULTIPLEX_GRPC",
];

/// How long to wait for the pipes to reach EOF once the process has exited.
const PIPE_DRAIN: Duration = Duration::from_secs(2);
/// Upper bound on waiting for a SIGKILLed process to be reaped.
const SIGKILL_REAP: Duration = Duration::from_secs(10);

/// How to launch one plugin process.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// The plugin executable.
    pub binary: PathBuf,
    /// Arguments, as in the agent's `plugin "<name>" { args = [...] }`.
    pub args: Vec<String>,
    /// Extra environment on top of this process's own (the agent's
    /// environment, e.g. `AWS_*`, `NOMAD_ECS_*`). The go-plugin variables are
    /// applied after these and win.
    pub env: Vec<(String, String)>,
    /// The magic cookie value: `None` sends the right one; `Some` sends this
    /// one (empty or wrong, for bad-input tests).
    pub cookie: Option<String>,
    /// Leave `NOMAD_PLUGIN_MAGIC_COOKIE` out of the environment entirely.
    pub omit_cookie: bool,
    /// `PLUGIN_PROTOCOL_VERSIONS`, default `"2"`; the handshake's app version
    /// must be one of these.
    pub protocol_versions: String,
    /// Deadline for the handshake line (and for connecting), default 60 s.
    pub start_timeout: Duration,
    /// Working directory; `None` inherits this process's.
    pub cwd: Option<PathBuf>,
    /// After connecting, require `grpc.health.v1` `Check{service:"plugin"}`
    /// to answer SERVING (default true; go-plugin's `Ping`).
    pub health_check: bool,
}

impl LaunchOptions {
    /// Options that launch `binary` exactly as Nomad would, with no arguments.
    #[must_use]
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            args: Vec::new(),
            env: Vec::new(),
            cookie: None,
            omit_cookie: false,
            protocol_versions: NOMAD_PROTOCOL_VERSIONS.to_owned(),
            start_timeout: DEFAULT_START_TIMEOUT,
            cwd: None,
            health_check: true,
        }
    }

    /// Appends one argument.
    #[must_use]
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds one extra environment variable (later values for a key win).
    #[must_use]
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sends `cookie` instead of Nomad's magic cookie.
    #[must_use]
    pub fn cookie(mut self, cookie: impl Into<String>) -> Self {
        self.cookie = Some(cookie.into());
        self
    }

    /// Sends no magic cookie at all.
    #[must_use]
    pub fn without_cookie(mut self) -> Self {
        self.omit_cookie = true;
        self
    }

    /// Sets `PLUGIN_PROTOCOL_VERSIONS`.
    #[must_use]
    pub fn protocol_versions(mut self, versions: impl Into<String>) -> Self {
        self.protocol_versions = versions.into();
        self
    }

    /// Sets the handshake deadline.
    #[must_use]
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Sets the working directory.
    #[must_use]
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Turns the post-connect health check on or off.
    #[must_use]
    pub fn health_check(mut self, check: bool) -> Self {
        self.health_check = check;
        self
    }

    /// The environment changes applied on top of the inherited environment,
    /// in order: removals, then `(key, value)` settings (later ones win), then
    /// a final removal of the cookie when it is omitted.
    fn environment(&self) -> EnvPlan {
        let mut set = self.env.clone();
        if !self.omit_cookie {
            let cookie = self
                .cookie
                .clone()
                .unwrap_or_else(|| MAGIC_COOKIE_VALUE.to_owned());
            set.push((MAGIC_COOKIE_KEY.to_owned(), cookie));
        }
        set.push(("PLUGIN_MIN_PORT".to_owned(), "10000".to_owned()));
        set.push(("PLUGIN_MAX_PORT".to_owned(), "25000".to_owned()));
        set.push((
            "PLUGIN_PROTOCOL_VERSIONS".to_owned(),
            self.protocol_versions.clone(),
        ));
        EnvPlan {
            remove_inherited: UNSET_BY_NOMAD.to_vec(),
            set,
            remove_cookie: self.omit_cookie,
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        let plan = self.environment();
        for key in &plan.remove_inherited {
            cmd.env_remove(key);
        }
        cmd.envs(plan.set.iter().map(|(k, v)| (k, v)));
        if plan.remove_cookie {
            cmd.env_remove(MAGIC_COOKIE_KEY);
        }
        die_with_parent(&mut cmd);
        cmd
    }
}

#[derive(Debug, PartialEq, Eq)]
struct EnvPlan {
    remove_inherited: Vec<&'static str>,
    set: Vec<(String, String)>,
    remove_cookie: bool,
}

/// Makes the kernel SIGKILL the plugin if the thread that spawned it dies, so
/// an aborted test run leaves no process behind (`kill_on_drop` covers the
/// orderly paths).
#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and only calls the
    // async-signal-safe `prctl` and `getppid`; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}

/// Why a launch (or reconnect) failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The executable could not be started.
    #[error("could not start plugin {binary:?}")]
    SpawnFailed {
        /// The executable.
        binary: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The process exited before printing a handshake line. Bad-cookie
    /// messages are in `stderr`.
    #[error("plugin exited before the handshake ({status}); stderr:\n{stderr}")]
    ExitedBeforeHandshake {
        /// Its exit status.
        status: ExitStatus,
        /// Everything it wrote to stderr, lines joined with `\n`.
        stderr: String,
    },
    /// No handshake line within the start timeout (the process was killed).
    #[error("no handshake line within {timeout:?}; stderr:\n{stderr}")]
    HandshakeTimeout {
        /// The start timeout.
        timeout: Duration,
        /// Stderr so far, lines joined with `\n`.
        stderr: String,
    },
    /// Waiting on the child process failed.
    #[error("waiting on the plugin process failed")]
    WaitFailed(#[source] io::Error),
    /// Reading stdout failed before the handshake line.
    #[error("reading the plugin's stdout failed")]
    StdoutReadFailed(#[source] io::Error),
    /// The host rejected the handshake line.
    #[error("plugin handshake line {line:?} rejected")]
    HandshakeRejected {
        /// The line as printed.
        line: String,
        /// Why.
        #[source]
        source: HandshakeError,
    },
    /// Dialing the plugin's address failed.
    #[error("could not connect to the plugin at {address}")]
    ConnectFailed {
        /// The address from the handshake.
        address: PluginAddress,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// Connecting took longer than what was left of the start timeout.
    #[error("connecting to the plugin at {address} timed out")]
    ConnectTimeout {
        /// The address from the handshake.
        address: PluginAddress,
    },
    /// The health check RPC failed.
    #[error("health check of service \"plugin\" failed")]
    HealthCheckFailed(#[source] Box<tonic::Status>),
    /// The health check answered, but not SERVING.
    #[error("health check of service \"plugin\" answered {status:?}, expected SERVING")]
    NotServing {
        /// What it answered.
        status: ServingStatus,
    },
}

/// How a [`PluginProcess::kill`] ended the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitPath {
    /// It had already exited before the kill started.
    AlreadyExited,
    /// It exited by itself within [`KILL_GRACE`] of `GRPCController.Shutdown`.
    Graceful,
    /// It was still running after the grace period and was SIGKILLed.
    Sigkilled,
}

/// What [`PluginProcess::kill`] observed.
#[derive(Debug)]
pub struct KillOutcome {
    /// The result of `GRPCController.Shutdown` (go-plugin ignores it; a
    /// plugin that exits before answering shows a transport error here).
    pub shutdown_rpc: Result<(), tonic::Status>,
    /// How the process ended.
    pub path: ExitPath,
    /// Its exit status, if it was reaped.
    pub status: Option<ExitStatus>,
    /// Whether both stdout and stderr reached EOF within 2 s of the exit.
    /// False means something (a task process) inherited the plugin's pipes,
    /// which would hang go-plugin's `Kill`.
    pub pipes_closed: bool,
    /// Time from the start of the kill to the end of the pipe drain.
    pub elapsed: Duration,
}

impl KillOutcome {
    /// True if the plugin exited on its own after `Shutdown`.
    #[must_use]
    pub fn exited_gracefully(&self) -> bool {
        self.path == ExitPath::Graceful
    }
}

/// One running plugin process, handshaken and connected.
///
/// Dropping it SIGKILLs the process if it is still running, and aborts the
/// background stdio and broker streams.
#[derive(Debug)]
pub struct PluginProcess {
    child: Child,
    pid: u32,
    handshake_line: String,
    handshake: Handshake,
    channel: Channel,
    stderr: Recording<String>,
    stdout_after_handshake: Recording<String>,
    stdio: Recording<StdioData>,
    broker: Recording<ConnInfo>,
    /// The stdout and stderr pumps; they end at EOF.
    pipe_pumps: Vec<JoinHandle<()>>,
    /// The GRPCStdio and GRPCBroker streams.
    streams: Vec<TaskGuard>,
}

impl PluginProcess {
    /// Launches the plugin as the Nomad client does: spawns it with the
    /// agent's environment plus go-plugin's variables, stdin `/dev/null` and
    /// piped stdout and stderr; reads and parses the first stdout line within
    /// the start timeout; dials the address; opens `GRPCStdio.StreamStdio`
    /// and `GRPCBroker.StartStream` in the background (any error, such as
    /// Unimplemented, is recorded and tolerated); and, unless disabled,
    /// requires the health check to answer SERVING.
    ///
    /// From spawn on, every stderr line is recorded, and every stdout line
    /// after the handshake line (a plugin should print none).
    ///
    /// # Errors
    ///
    /// [`HostError`] naming the step that failed. On any error the process is
    /// killed.
    pub async fn launch(opts: LaunchOptions) -> Result<Self, HostError> {
        let deadline = Instant::now() + opts.start_timeout;
        let mut child = opts
            .command()
            .spawn()
            .map_err(|source| HostError::SpawnFailed {
                binary: opts.binary.clone(),
                source,
            })?;
        let pid = child.id().unwrap_or_default();
        let (Some(stdout), Some(stderr_pipe)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(HostError::SpawnFailed {
                binary: opts.binary.clone(),
                source: io::Error::other("stdout or stderr was not piped"),
            });
        };

        let stderr = Recording::new();
        let stderr_pump = tokio::spawn(pump_lines(
            BufReader::with_capacity(64 * 1024, stderr_pipe),
            stderr.clone(),
        ));
        let stdout_after_handshake = Recording::new();
        let (first_line_tx, first_line_rx) = oneshot::channel();
        let stdout_pump = tokio::spawn(pump_stdout(
            stdout,
            first_line_tx,
            stdout_after_handshake.clone(),
        ));

        let first = tokio::select! {
            biased;
            line = first_line_rx => FirstLine::Read(line.unwrap_or(Ok(None))),
            status = child.wait() => FirstLine::Exited(status),
            () = tokio::time::sleep_until(deadline) => FirstLine::TimedOut,
        };
        let line = match first {
            FirstLine::Read(Ok(Some(line))) => line,
            FirstLine::Read(Err(e)) => return Err(HostError::StdoutReadFailed(e)),
            // Stdout closed without a line: wait for the exit (to report its
            // status and stderr) or the deadline.
            FirstLine::Read(Ok(None)) => {
                match tokio::time::timeout_at(deadline, child.wait()).await {
                    Ok(status) => {
                        return Err(exited_before_handshake(status, stderr_pump, &stderr).await);
                    }
                    Err(_) => return Err(timed_out(opts.start_timeout, &stderr)),
                }
            }
            FirstLine::Exited(status) => {
                return Err(exited_before_handshake(status, stderr_pump, &stderr).await);
            }
            FirstLine::TimedOut => return Err(timed_out(opts.start_timeout, &stderr)),
        };

        let handshake =
            parse_handshake_line(&line, &parse_offered_versions(&opts.protocol_versions)).map_err(
                |source| HostError::HandshakeRejected {
                    line: line.clone(),
                    source,
                },
            )?;
        let channel = dial(&handshake.address, deadline).await?;

        let mut process = Self {
            child,
            pid,
            handshake_line: line,
            handshake,
            channel,
            stderr,
            stdout_after_handshake,
            stdio: Recording::new(),
            broker: Recording::new(),
            pipe_pumps: vec![stdout_pump, stderr_pump],
            streams: Vec::new(),
        };
        process.open_go_plugin_streams();

        if opts.health_check {
            let status = match tokio::time::timeout_at(deadline, process.health()).await {
                Ok(Ok(status)) => status,
                Ok(Err(status)) => return Err(HostError::HealthCheckFailed(Box::new(status))),
                Err(_) => {
                    return Err(HostError::HealthCheckFailed(Box::new(
                        tonic::Status::deadline_exceeded(
                            "health check did not answer within the start timeout",
                        ),
                    )));
                }
            };
            if status != ServingStatus::Serving {
                return Err(HostError::NotServing { status });
            }
        }
        Ok(process)
    }

    /// Emulates a client agent that restarted after a crash and reattaches
    /// (§1.9): drops this host's connection and background streams, dials the
    /// same address again with no new handshake, and reopens the stdio and
    /// broker streams. Clients obtained before keep the old connection.
    ///
    /// # Errors
    ///
    /// [`HostError::ConnectFailed`] or [`HostError::ConnectTimeout`]; the old
    /// connection is gone either way.
    pub async fn reattach(&mut self, timeout: Duration) -> Result<(), HostError> {
        self.streams.clear();
        self.channel = dial(&self.handshake.address, Instant::now() + timeout).await?;
        self.open_go_plugin_streams();
        Ok(())
    }

    /// Calls `grpc.health.v1.Health/Check{service:"plugin"}` (go-plugin's
    /// `Ping`). An enum value this crate does not know reads as `Unknown`.
    ///
    /// # Errors
    ///
    /// The RPC's status.
    pub async fn health(&self) -> Result<ServingStatus, tonic::Status> {
        let response = self
            .health_client()
            .check(HealthCheckRequest {
                service: HEALTH_SERVICE.to_owned(),
            })
            .await?
            .into_inner();
        Ok(ServingStatus::try_from(response.status).unwrap_or(ServingStatus::Unknown))
    }

    /// A `BasePlugin` client on the shared connection.
    #[must_use]
    pub fn base(&self) -> BasePluginClient<Channel> {
        BasePluginClient::new(self.channel.clone())
            .max_decoding_message_size(GO_PLUGIN_MAX_MESSAGE)
            .max_encoding_message_size(GO_PLUGIN_MAX_MESSAGE)
    }

    /// A `Driver` client on the shared connection.
    #[must_use]
    pub fn driver(&self) -> DriverClient<Channel> {
        DriverClient::new(self.channel.clone())
            .max_decoding_message_size(GO_PLUGIN_MAX_MESSAGE)
            .max_encoding_message_size(GO_PLUGIN_MAX_MESSAGE)
    }

    /// A `plugin.GRPCController` client on the shared connection.
    #[must_use]
    pub fn controller(&self) -> GrpcControllerClient<Channel> {
        GrpcControllerClient::new(self.channel.clone())
    }

    /// A `grpc.health.v1.Health` client on the shared connection.
    #[must_use]
    pub fn health_client(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel.clone())
    }

    /// The shared connection itself.
    #[must_use]
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The first stdout line, without its line ending.
    #[must_use]
    pub fn handshake_line(&self) -> &str {
        &self.handshake_line
    }

    /// The parsed handshake.
    #[must_use]
    pub fn handshake(&self) -> &Handshake {
        &self.handshake
    }

    /// The Unix socket path, or `None` for a TCP plugin.
    #[must_use]
    pub fn socket_path(&self) -> Option<&Path> {
        match &self.handshake.address {
            PluginAddress::Unix(path) => Some(path),
            PluginAddress::Tcp(_) => None,
        }
    }

    /// Every stderr line so far (line endings stripped, invalid UTF-8
    /// replaced).
    #[must_use]
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.snapshot()
    }

    /// The live stderr record, to await lines (`wait_for`).
    #[must_use]
    pub fn stderr(&self) -> &Recording<String> {
        &self.stderr
    }

    /// Stderr lines that are not valid hclog JSON (§1.10).
    #[must_use]
    pub fn invalid_log_lines(&self) -> Vec<String> {
        self.log_line_problems()
            .into_iter()
            .map(|(line, _)| line)
            .collect()
    }

    /// Stderr lines that are not valid hclog JSON, each with the reason.
    #[must_use]
    pub fn log_line_problems(&self) -> Vec<(String, HclogLineError)> {
        self.stderr
            .snapshot()
            .into_iter()
            .filter_map(|line| validate_hclog_line(&line).err().map(|e| (line, e)))
            .collect()
    }

    /// Every stdout line printed after the handshake line (the host discards
    /// them; a plugin should print none).
    #[must_use]
    pub fn stdout_after_handshake(&self) -> Vec<String> {
        self.stdout_after_handshake.snapshot()
    }

    /// The live record of stdout lines after the handshake line, to await
    /// them.
    #[must_use]
    pub fn stray_stdout(&self) -> &Recording<String> {
        &self.stdout_after_handshake
    }

    /// Messages received on `GRPCStdio.StreamStdio`, and how it ended.
    #[must_use]
    pub fn stdio(&self) -> &Recording<StdioData> {
        &self.stdio
    }

    /// Messages received on `GRPCBroker.StartStream` (Nomad never brokers),
    /// and how it ended.
    #[must_use]
    pub fn broker(&self) -> &Recording<ConnInfo> {
        &self.broker
    }

    /// Sends `signal` (e.g. `libc::SIGINT`) to the process.
    ///
    /// # Errors
    ///
    /// The OS error; `ESRCH` if the process has already been reaped.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        // `id()` is `None` once the child has been reaped, so the pid cannot
        // have been reused by another process.
        let pid = self
            .child
            .id()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
        let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
        // SAFETY: kill(2) has no memory-safety preconditions.
        if unsafe { libc::kill(pid, signal) } == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// SIGKILLs the process now (crash tests). Does nothing if it has exited.
    pub fn sigkill(&mut self) {
        // An error only means it has already exited.
        let _ = self.child.start_kill();
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .ok()?
            .ok()
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Kills the plugin as go-plugin's `Client.Kill` does (§1.8): closes the
    /// broker (and stdio) streams, calls `GRPCController.Shutdown` ignoring
    /// its result, drops this host's connection, waits up to 2 s for the
    /// process to exit, and SIGKILLs it otherwise. Then waits up to 2 s for
    /// stdout and stderr to reach EOF.
    ///
    /// Unlike go-plugin, the `Shutdown` call itself is bounded by 2 s, so a
    /// plugin that never answers cannot hang a test. Clients cloned earlier
    /// keep their own handle on the connection.
    pub async fn kill(self) -> KillOutcome {
        let started = Instant::now();
        let Self {
            mut child,
            channel,
            pipe_pumps,
            streams,
            ..
        } = self;
        let already_exited = child.try_wait().ok().flatten();
        drop(streams);

        let shutdown_rpc = match tokio::time::timeout(
            KILL_GRACE,
            GrpcControllerClient::new(channel.clone()).shutdown(Empty {}),
        )
        .await
        {
            Ok(result) => result.map(drop),
            Err(_) => Err(tonic::Status::deadline_exceeded(
                "Shutdown did not answer within 2 s",
            )),
        };
        drop(channel);

        let (path, status) = if let Some(status) = already_exited {
            (ExitPath::AlreadyExited, Some(status))
        } else {
            if let Ok(status) = tokio::time::timeout(KILL_GRACE, child.wait()).await {
                (ExitPath::Graceful, status.ok())
            } else {
                // An error only means it exited in the meantime.
                let _ = child.start_kill();
                let status = tokio::time::timeout(SIGKILL_REAP, child.wait())
                    .await
                    .ok()
                    .and_then(Result::ok);
                (ExitPath::Sigkilled, status)
            }
        };

        let pipes_closed = tokio::time::timeout(PIPE_DRAIN, futures::future::join_all(pipe_pumps))
            .await
            .is_ok();
        KillOutcome {
            shutdown_rpc,
            path,
            status,
            pipes_closed,
            elapsed: started.elapsed(),
        }
    }

    fn open_go_plugin_streams(&mut self) {
        let mut stdio_client = GrpcStdioClient::new(self.channel.clone());
        let stdio = self.stdio.clone();
        let stdio_task = TaskGuard::spawn(async move {
            match stdio_client.stream_stdio(()).await {
                Ok(response) => record_stream(response.into_inner(), stdio).await,
                // go-plugin warns and carries on, whatever the code.
                Err(status) => stdio.finish(StreamEnd::Failed(status)),
            }
        });

        let mut broker_client = GrpcBrokerClient::new(self.channel.clone());
        let broker = self.broker.clone();
        let broker_task = TaskGuard::spawn(async move {
            // The host never brokers: the request side stays open and silent
            // until the stream is closed by aborting this task.
            match broker_client
                .start_stream(futures::stream::pending::<ConnInfo>())
                .await
            {
                Ok(response) => record_stream(response.into_inner(), broker).await,
                Err(status) => broker.finish(StreamEnd::Failed(status)),
            }
        });
        self.streams = vec![stdio_task, broker_task];
    }
}

/// go-plugin raises gRPC's message limits to `math.MaxInt32` on the host side.
const GO_PLUGIN_MAX_MESSAGE: usize = i32::MAX as usize;

enum FirstLine {
    Read(io::Result<Option<String>>),
    Exited(io::Result<ExitStatus>),
    TimedOut,
}

async fn exited_before_handshake(
    status: io::Result<ExitStatus>,
    stderr_pump: JoinHandle<()>,
    stderr: &Recording<String>,
) -> HostError {
    // Let the pump reach EOF so the message is complete; a grandchild holding
    // the pipe must not hang the launch.
    let _ = tokio::time::timeout(PIPE_DRAIN, stderr_pump).await;
    match status {
        Ok(status) => HostError::ExitedBeforeHandshake {
            status,
            stderr: stderr.snapshot().join("\n"),
        },
        Err(e) => HostError::WaitFailed(e),
    }
}

fn timed_out(timeout: Duration, stderr: &Recording<String>) -> HostError {
    HostError::HandshakeTimeout {
        timeout,
        stderr: stderr.snapshot().join("\n"),
    }
}

/// Dials the plugin the way go-plugin does: a custom dialer and the literal
/// target `unused`, so requests carry `:authority: unused`.
async fn dial(address: &PluginAddress, deadline: Instant) -> Result<Channel, HostError> {
    let endpoint = Endpoint::from_static("http://unused");
    let connect = async {
        match address {
            PluginAddress::Unix(path) => {
                let path = path.clone();
                endpoint
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move { UnixStream::connect(path).await.map(TokioIo::new) }
                    }))
                    .await
            }
            PluginAddress::Tcp(addr) => {
                let addr = *addr;
                endpoint
                    .connect_with_connector(tower::service_fn(move |_: Uri| async move {
                        TcpStream::connect(addr).await.map(TokioIo::new)
                    }))
                    .await
            }
        }
    };
    match tokio::time::timeout_at(deadline, connect).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(source)) => Err(HostError::ConnectFailed {
            address: address.clone(),
            source,
        }),
        Err(_) => Err(HostError::ConnectTimeout {
            address: address.clone(),
        }),
    }
}

/// Reads the first stdout line for the handshake, then records every later
/// line. Sends `Ok(None)` if stdout ends before a line.
async fn pump_stdout(
    stdout: impl AsyncRead + Unpin,
    first_line: oneshot::Sender<io::Result<Option<String>>>,
    rest: Recording<String>,
) {
    let mut reader = BufReader::new(stdout);
    let first = read_line(&mut reader).await;
    let got_line = matches!(first, Ok(Some(_)));
    // The launcher may have given up already; the rest is still recorded.
    let _ = first_line.send(first);
    if got_line {
        pump_lines(reader, rest).await;
    }
}

/// Records every line until EOF, then records the end.
async fn pump_lines<R: AsyncRead + Unpin>(mut reader: BufReader<R>, record: Recording<String>) {
    loop {
        match read_line(&mut reader).await {
            Ok(Some(line)) => record.push(line),
            Ok(None) => return record.finish(StreamEnd::Closed),
            Err(e) => return record.finish(StreamEnd::ReadFailed(e.to_string())),
        }
    }
}

/// One line without `\n` or `\r\n` (go's `ReadLine` strips both); a final
/// unterminated fragment counts as a line.
async fn read_line<R: AsyncRead + Unpin>(reader: &mut BufReader<R>) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    if reader.read_until(b'\n', &mut buf).await? == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;
    use crate::devstack::host::record::WaitError;

    fn value<'a>(plan: &'a EnvPlan, key: &str) -> Option<&'a str> {
        plan.set
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn default_environment_is_nomads() {
        let plan = LaunchOptions::new("/bin/true").environment();
        assert_eq!(value(&plan, MAGIC_COOKIE_KEY), Some(MAGIC_COOKIE_VALUE));
        assert_eq!(value(&plan, "PLUGIN_PROTOCOL_VERSIONS"), Some("2"));
        assert_eq!(value(&plan, "PLUGIN_MIN_PORT"), Some("10000"));
        assert_eq!(value(&plan, "PLUGIN_MAX_PORT"), Some("25000"));
        assert_eq!(value(&plan, "PLUGIN_UNIX_SOCKET_DIR"), None);
        assert!(plan.remove_inherited.contains(&"PLUGIN_UNIX_SOCKET_DIR"));
        assert!(!plan.remove_cookie);
    }

    #[test]
    fn go_plugin_variables_win_over_extra_env() {
        let plan = LaunchOptions::new("/bin/true")
            .env("PLUGIN_PROTOCOL_VERSIONS", "9")
            .env("AWS_REGION", "us-east-1")
            .environment();
        assert_eq!(value(&plan, "PLUGIN_PROTOCOL_VERSIONS"), Some("2"));
        assert_eq!(value(&plan, "AWS_REGION"), Some("us-east-1"));
    }

    #[test]
    fn wrong_and_omitted_cookies_are_honoured() {
        let wrong = LaunchOptions::new("/bin/true").cookie("nope").environment();
        assert_eq!(value(&wrong, MAGIC_COOKIE_KEY), Some("nope"));
        let omitted = LaunchOptions::new("/bin/true")
            .env(MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE)
            .without_cookie()
            .environment();
        assert!(omitted.remove_cookie);
    }

    fn sh(script: &str) -> LaunchOptions {
        LaunchOptions::new("/bin/sh").arg("-c").arg(script)
    }

    #[tokio::test]
    async fn exit_before_handshake_reports_status_and_stderr() {
        let err = PluginProcess::launch(sh("echo 'bad cookie' >&2; echo second >&2; exit 3"))
            .await
            .unwrap_err();
        match err {
            HostError::ExitedBeforeHandshake { status, stderr } => {
                assert_eq!(status.code(), Some(3));
                assert_eq!(stderr, "bad cookie\nsecond");
            }
            other => panic!("unexpected error: {other}"),
        }
    }

    #[tokio::test]
    async fn plugin_sees_nomads_environment_and_null_stdin() {
        let script = "echo \"cookie=$NOMAD_PLUGIN_MAGIC_COOKIE\" >&2; \
                      echo \"versions=$PLUGIN_PROTOCOL_VERSIONS ports=$PLUGIN_MIN_PORT-$PLUGIN_MAX_PORT\" >&2; \
                      echo \"dir=${PLUGIN_UNIX_SOCKET_DIR-unset} extra=$EXTRA\" >&2; \
                      echo \"stdin=$(cat)\" >&2; exit 1";
        let err = PluginProcess::launch(sh(script).env("EXTRA", "x"))
            .await
            .unwrap_err();
        let HostError::ExitedBeforeHandshake { stderr, .. } = err else {
            panic!("unexpected error: {err}");
        };
        assert_eq!(
            stderr,
            format!(
                "cookie={MAGIC_COOKIE_VALUE}\nversions=2 ports=10000-25000\ndir=unset extra=x\nstdin="
            )
        );
    }

    #[tokio::test]
    async fn omitted_cookie_is_absent_from_the_environment() {
        let err = PluginProcess::launch(
            sh("echo \"${NOMAD_PLUGIN_MAGIC_COOKIE-absent}\" >&2; exit 1").without_cookie(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, HostError::ExitedBeforeHandshake { stderr, .. } if stderr == "absent")
        );
    }

    #[tokio::test]
    async fn silent_plugin_times_out_and_is_killed() {
        let err = PluginProcess::launch(
            sh("echo waiting >&2; exec sleep 30").start_timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, HostError::HandshakeTimeout { ref stderr, .. } if stderr == "waiting"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn rejected_handshake_line_names_the_reason() {
        let err = PluginProcess::launch(sh("echo '1|1|unix|/tmp/none|grpc|'; exec sleep 30"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                HostError::HandshakeRejected {
                    source: HandshakeError::IncompatibleApiVersion { .. },
                    ..
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn unreachable_socket_is_a_connect_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.sock");
        let script = format!("echo '1|2|unix|{}|grpc|'; exec sleep 30", path.display());
        let err = PluginProcess::launch(sh(&script)).await.unwrap_err();
        assert!(matches!(err, HostError::ConnectFailed { .. }), "{err}");
    }

    /// A stand-in plugin: a shell script prints the handshake line for a
    /// socket this test serves (health and controller only, so the stdio and
    /// broker streams meet Unimplemented), then runs until the controller's
    /// Shutdown creates its stop file.
    struct FakePlugin {
        dir: tempfile::TempDir,
        _server: TaskGuard,
    }

    struct StopOnShutdown {
        stop_file: Option<PathBuf>,
    }

    #[tonic::async_trait]
    impl crate::proto::plugin::grpc_controller_server::GrpcController for StopOnShutdown {
        async fn shutdown(
            &self,
            _: tonic::Request<Empty>,
        ) -> Result<tonic::Response<Empty>, tonic::Status> {
            if let Some(file) = &self.stop_file {
                std::fs::write(file, b"").map_err(|e| tonic::Status::internal(e.to_string()))?;
            }
            Ok(tonic::Response::new(Empty {}))
        }
    }

    impl FakePlugin {
        /// `obeys_shutdown: false` makes Shutdown answer without stopping.
        async fn serve(obeys_shutdown: bool) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let listener = tokio::net::UnixListener::bind(dir.path().join("plugin.sock")).unwrap();
            let (reporter, health) = tonic_health::server::health_reporter();
            reporter
                .set_service_status(HEALTH_SERVICE, tonic_health::ServingStatus::Serving)
                .await;
            let controller =
                crate::proto::plugin::grpc_controller_server::GrpcControllerServer::new(
                    StopOnShutdown {
                        stop_file: obeys_shutdown.then(|| dir.path().join("stop")),
                    },
                );
            let server = TaskGuard::spawn(async move {
                let _reporter = reporter;
                let _ = tonic::transport::Server::builder()
                    .add_service(health)
                    .add_service(controller)
                    .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
                    .await;
            });
            Self {
                dir,
                _server: server,
            }
        }

        fn options(&self) -> LaunchOptions {
            let dir = self.dir.path().display();
            sh(&format!(
                "trap 'echo got-sigint >&2' INT; \
                 echo '1|2|unix|{dir}/plugin.sock|grpc|'; echo stray; \
                 echo '{{\"@level\":\"info\",\"@message\":\"up\",\"@timestamp\":\"2025-01-29T13:08:34.123456Z\"}}' >&2; \
                 echo 'not json' >&2; \
                 while [ ! -e {dir}/stop ]; do sleep 0.05; done; exit 0"
            ))
        }

        fn socket(&self) -> PathBuf {
            self.dir.path().join("plugin.sock")
        }
    }

    const WAIT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn connected_plugin_is_recorded_and_killed_gracefully() {
        let fake = FakePlugin::serve(true).await;
        let process = PluginProcess::launch(fake.options()).await.unwrap();

        assert_eq!(process.socket_path(), Some(fake.socket().as_path()));
        assert_eq!(
            process.handshake_line(),
            format!("1|2|unix|{}|grpc|", fake.socket().display())
        );
        assert_eq!(process.health().await.unwrap(), ServingStatus::Serving);
        assert_eq!(
            process
                .stray_stdout()
                .wait_for_index(0, WAIT)
                .await
                .unwrap(),
            "stray"
        );
        process
            .stderr()
            .wait_for(|l| l == "not json", WAIT)
            .await
            .unwrap();
        assert_eq!(process.invalid_log_lines(), vec!["not json".to_owned()]);
        for record_end in [
            process.stdio().wait_for_index(0, WAIT).await.unwrap_err(),
            process.broker().wait_for_index(0, WAIT).await.unwrap_err(),
        ] {
            assert!(
                matches!(&record_end, WaitError::Ended { end: StreamEnd::Failed(s), .. } if s.code() == tonic::Code::Unimplemented),
                "{record_end:?}"
            );
        }

        let outcome = process.kill().await;
        assert!(outcome.shutdown_rpc.is_ok(), "{:?}", outcome.shutdown_rpc);
        assert_eq!(outcome.path, ExitPath::Graceful);
        assert_eq!(outcome.status.and_then(|s| s.code()), Some(0));
        assert!(outcome.pipes_closed);
    }

    #[tokio::test]
    async fn plugin_that_ignores_shutdown_is_sigkilled_after_the_grace_period() {
        let fake = FakePlugin::serve(false).await;
        let process = PluginProcess::launch(fake.options()).await.unwrap();
        let outcome = process.kill().await;
        assert_eq!(outcome.path, ExitPath::Sigkilled);
        assert_eq!(outcome.status.and_then(|s| s.signal()), Some(libc::SIGKILL));
        assert!(outcome.elapsed >= KILL_GRACE);
    }

    #[tokio::test]
    async fn signals_reach_the_process_and_sigkill_ends_it() {
        let fake = FakePlugin::serve(true).await;
        let mut process = PluginProcess::launch(fake.options()).await.unwrap();
        process.signal(libc::SIGINT).unwrap();
        process
            .stderr()
            .wait_for(|l| l == "got-sigint", WAIT)
            .await
            .unwrap();
        assert!(process.try_status().is_none(), "the script traps SIGINT");

        process.sigkill();
        let status = process.wait_exit(WAIT).await.unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(
            process.signal(libc::SIGINT).is_err(),
            "a reaped pid is never signalled"
        );
        let outcome = process.kill().await;
        assert_eq!(outcome.path, ExitPath::AlreadyExited);
    }

    #[tokio::test]
    async fn missing_binary_is_a_spawn_failure() {
        let err = PluginProcess::launch(LaunchOptions::new("/nonexistent/plugin"))
            .await
            .unwrap_err();
        assert!(matches!(err, HostError::SpawnFailed { .. }), "{err}");
    }
}
