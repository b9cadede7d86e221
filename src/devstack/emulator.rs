//! ECS emulator launcher: the one way tests and the dev tool get a seeded ECS
//! endpoint on loopback (today moto from a local venv; see `localstack/`).
//!
//! Callers hold an [`EmulatorBackend`] and get a [`RunningEmulator`]; which
//! program serves the API, and how it is started and stopped, stays behind
//! that trait, so a container backend can be added without touching callers.
//!
//! ```no_run
//! # async fn demo() -> Result<(), nomad_driver_ecs::devstack::emulator::EmulatorError> {
//! use nomad_driver_ecs::devstack::emulator::start_default;
//! let emu = start_default("nomad").await?;
//! println!("ECS at {} with {}", emu.endpoint(), emu.seed().task_definition);
//! # Ok(()) }
//! ```
//!
//! # Blocking
//! [`EmulatorBackend::start`] blocks the calling thread (std::process, about
//! 1-2 s for a start and seed, longer when the venv must first be made).
//! From async code use [`start_default`] or [`start_with`], which run it on
//! tokio's blocking pool. [`RunningEmulator`]'s `Drop` and its HTTP helpers
//! block too, for at most a few seconds.

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Region used by [`start_default`].
pub const DEFAULT_REGION: &str = "us-east-1";

/// Environment variable naming the venv that holds moto (default
/// `<CARGO_MANIFEST_DIR>/.venv`); `localstack/setup.sh` reads it too.
pub const VENV_ENV: &str = "NOMAD_ECS_VENV";

/// How long the HTTP helpers of [`RunningEmulator`] wait for a whole exchange.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `Drop` waits after SIGTERM before it sends SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How many free ports are tried when another process takes the picked one
/// between our probe and the server's bind.
const PORT_ATTEMPTS: usize = 5;
/// Upper bound for `localstack/setup.sh` (a cold pip install takes ~30 s).
const SETUP_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// How much of a log is quoted in errors.
const LOG_TAIL_BYTES: u64 = 4096;

/// What to start: the region and cluster to seed, and the bounds on each step.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EmulatorOptions {
    /// AWS region of the seeded resources (the SigV4 scope selects it).
    pub region: String,
    /// Name of the ECS cluster to create.
    pub cluster: String,
    /// Task definition family; `None` means seed.py's default, `nomad-ecs`.
    pub family: Option<String>,
    /// How long the server may take to answer `GET /moto-api/`.
    pub ready_timeout: Duration,
    /// How long `seed.py` may take (the first ECS call loads moto's backend).
    pub seed_timeout: Duration,
    /// Where the server log goes; `None` means a temp dir removed on drop.
    pub log_dir: Option<PathBuf>,
}

impl EmulatorOptions {
    /// Options for `cluster` in [`DEFAULT_REGION`], with the default bounds
    /// (20 s until ready, 60 s for the seed).
    pub fn new(cluster: impl Into<String>) -> Self {
        Self {
            region: DEFAULT_REGION.to_owned(),
            cluster: cluster.into(),
            family: None,
            ready_timeout: Duration::from_secs(20),
            seed_timeout: Duration::from_secs(60),
            log_dir: None,
        }
    }

    /// Seeds `region` instead of [`DEFAULT_REGION`].
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = region.into();
        self
    }

    /// Registers the task definition under `family`.
    pub fn with_family(mut self, family: impl Into<String>) -> Self {
        self.family = Some(family.into());
        self
    }

    /// Keeps the server log in `dir` (created if missing) after the drop.
    pub fn with_log_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.log_dir = Some(dir.into());
        self
    }
}

/// What `localstack/seed.py` created, as it printed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seed {
    /// Base URL of the emulator, e.g. `http://127.0.0.1:40123`.
    pub endpoint: String,
    pub region: String,
    pub cluster: String,
    pub cluster_arn: String,
    /// `family:revision` of the registered Fargate task definition.
    pub task_definition: String,
    pub task_definition_arn: String,
    /// Subnets of the seeded VPC that RunTask's awsvpc configuration can use.
    pub subnets: Vec<String>,
    /// Security groups for the same (moto 500s on RunTask without one).
    pub security_groups: Vec<String>,
}

/// A failed start, named after the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error(
        "the ECS emulator venv is missing at {} (no bin/moto_server); run `bash localstack/setup.sh` \
         or set {VENV_ENV}",
        path.display()
    )]
    VenvMissing { path: PathBuf },
    #[error("{} failed ({status}); log {}:\n{log_tail}", script.display(), log.display())]
    SetupFailed {
        script: PathBuf,
        status: String,
        log: PathBuf,
        log_tail: String,
    },
    #[error("could not prepare the emulator's log at {}", path.display())]
    LogFailed {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not pick a free port on 127.0.0.1")]
    PortPickFailed {
        #[source]
        source: io::Error,
    },
    #[error("could not spawn {}", program.display())]
    SpawnFailed {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "moto_server on port {port} exited before it answered ({status}); log tail:\n{log_tail}"
    )]
    ServerExited {
        port: u16,
        status: String,
        log_tail: String,
    },
    #[error(
        "moto_server on port {port} did not answer GET /moto-api/ within {waited:?}; log tail:\n{log_tail}"
    )]
    NotReady {
        port: u16,
        waited: Duration,
        log_tail: String,
    },
    #[error("seed.py failed ({status}):\n{stderr}")]
    SeedFailed { status: String, stderr: String },
    #[error("seed.py printed no seed JSON line: {stdout:?}")]
    SeedOutputInvalid {
        stdout: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the emulator start was cancelled before it finished")]
    StartCancelled {
        #[source]
        source: tokio::task::JoinError,
    },
}

/// A way to run an ECS emulator.
pub trait EmulatorBackend {
    /// Starts a fresh emulator bound to loopback and seeds it per `opts`.
    ///
    /// Blocks the calling thread; from async code use [`start_with`].
    ///
    /// # Errors
    /// The [`EmulatorError`] variant names the step that failed; a half
    /// started server is stopped before the error is returned.
    ///
    /// # Guarantees
    /// The server listens on 127.0.0.1 only, its output goes to
    /// [`RunningEmulator::log_path`] (never to the caller's stdio), and it is
    /// stopped when the [`RunningEmulator`] drops or the calling process dies.
    fn start(&self, opts: &EmulatorOptions) -> Result<RunningEmulator, EmulatorError>;
}

/// moto from a Python venv on this machine (made by `localstack/setup.sh`).
///
/// With auto-setup on (the default), the first start in a process runs
/// `localstack/setup.sh` for the venv: it creates the venv when missing
/// (a cold pip install, ~30 s, needs the package registry) and otherwise only
/// checks the pins (~50 ms). A fresh checkout thus needs no manual step, and
/// a bumped pin reaches old venvs. With auto-setup off, a missing venv is
/// [`EmulatorError::VenvMissing`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalVenv {
    venv: PathBuf,
    scripts: PathBuf,
    auto_setup: bool,
}

impl Default for LocalVenv {
    fn default() -> Self {
        Self::from_env()
    }
}

impl LocalVenv {
    /// The venv named by `NOMAD_ECS_VENV`, else `<CARGO_MANIFEST_DIR>/.venv`.
    pub fn from_env() -> Self {
        let venv = std::env::var_os(VENV_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| manifest_dir().join(".venv"));
        Self::at(venv)
    }

    /// The venv at `venv`.
    pub fn at(venv: impl Into<PathBuf>) -> Self {
        Self {
            venv: venv.into(),
            scripts: manifest_dir().join("localstack"),
            auto_setup: true,
        }
    }

    /// Turns running `localstack/setup.sh` on the first start on or off.
    pub fn auto_setup(mut self, on: bool) -> Self {
        self.auto_setup = on;
        self
    }

    /// The venv this backend runs moto from.
    pub fn venv(&self) -> &Path {
        &self.venv
    }

    fn moto_server(&self) -> PathBuf {
        self.venv.join("bin").join("moto_server")
    }

    fn python(&self) -> PathBuf {
        self.venv.join("bin").join("python")
    }

    /// Makes sure the venv is usable; runs setup.sh at most once per process
    /// and venv (it is idempotent and serialises itself across processes).
    fn ensure_venv(&self, log_dir: &Path) -> Result<(), EmulatorError> {
        if !self.auto_setup {
            return if self.moto_server().is_file() && self.python().is_file() {
                Ok(())
            } else {
                Err(EmulatorError::VenvMissing {
                    path: self.venv.clone(),
                })
            };
        }
        static DONE: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);
        let mut done = DONE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let done = done.get_or_insert_with(HashSet::new);
        if done.contains(&self.venv) {
            return Ok(());
        }
        let script = self.scripts.join("setup.sh");
        let log = log_dir.join("setup.log");
        let log_file = File::create(&log).map_err(|source| EmulatorError::LogFailed {
            path: log.clone(),
            source,
        })?;
        tracing::info!(venv = %self.venv.display(), "running localstack/setup.sh");
        let mut cmd = Command::new("bash");
        cmd.arg(&script)
            .env(VENV_ENV, &self.venv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let child = cmd.spawn().map_err(|source| EmulatorError::SpawnFailed {
            program: script.clone(),
            source,
        })?;
        let outcome = wait_with_deadline(child, SETUP_TIMEOUT).map_err(|source| {
            EmulatorError::SpawnFailed {
                program: script.clone(),
                source,
            }
        })?;
        match outcome.status {
            Some(status) if status.success() => {
                done.insert(self.venv.clone());
                Ok(())
            }
            status => Err(EmulatorError::SetupFailed {
                script,
                status: describe_status(status, SETUP_TIMEOUT),
                log_tail: log_tail(&log),
                log,
            }),
        }
    }

    fn seed(
        &self,
        endpoint: &str,
        opts: &EmulatorOptions,
        log_dir: &Path,
    ) -> Result<Seed, EmulatorError> {
        let script = self.scripts.join("seed.py");
        let mut cmd = Command::new(self.python());
        cmd.arg(&script)
            .args(["--endpoint", endpoint])
            .args(["--region", &opts.region])
            .args(["--cluster", &opts.cluster]);
        if let Some(family) = &opts.family {
            cmd.args(["--family", family]);
        }
        // Hermetic: dummy credentials, and no profile or config file of the
        // developer's that could add retries, endpoints or credential sources.
        cmd.env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_DEFAULT_PROFILE")
            .env("AWS_CONFIG_FILE", log_dir.join("no-aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                log_dir.join("no-aws-credentials"),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd.spawn().map_err(|source| EmulatorError::SpawnFailed {
            program: self.python(),
            source,
        })?;
        let out = wait_with_deadline(child, opts.seed_timeout).map_err(|source| {
            EmulatorError::SpawnFailed {
                program: self.python(),
                source,
            }
        })?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        match out.status {
            Some(status) if status.success() => {}
            status => {
                return Err(EmulatorError::SeedFailed {
                    status: describe_status(status, opts.seed_timeout),
                    stderr,
                });
            }
        }
        let line = stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        serde_json::from_str(line)
            .map_err(|source| EmulatorError::SeedOutputInvalid { stdout, source })
    }

    /// Spawns moto_server on a fresh port and waits until it answers.
    /// Retries with another port when the picked one was taken meanwhile.
    fn spawn_ready(
        &self,
        opts: &EmulatorOptions,
        log_path: &Path,
    ) -> Result<(ProcessGroup, u16), EmulatorError> {
        let mut last_err = None;
        for _ in 0..PORT_ATTEMPTS {
            let port =
                pick_free_port().map_err(|source| EmulatorError::PortPickFailed { source })?;
            let log = File::create(log_path).map_err(|source| EmulatorError::LogFailed {
                path: log_path.to_owned(),
                source,
            })?;
            let log_err = log.try_clone().map_err(|source| EmulatorError::LogFailed {
                path: log_path.to_owned(),
                source,
            })?;
            let mut cmd = Command::new(self.moto_server());
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err);
            let server = ProcessGroup::spawn(cmd).map_err(|source| EmulatorError::SpawnFailed {
                program: self.moto_server(),
                source,
            })?;
            match wait_ready(server, port, opts.ready_timeout, log_path) {
                Ok(server) => return Ok((server, port)),
                Err(e @ EmulatorError::ServerExited { .. })
                    if log_tail(log_path).contains("Address already in use") =>
                {
                    tracing::debug!(
                        port,
                        "port taken before moto_server bound it; trying another"
                    );
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.expect("PORT_ATTEMPTS > 0"))
    }
}

impl EmulatorBackend for LocalVenv {
    fn start(&self, opts: &EmulatorOptions) -> Result<RunningEmulator, EmulatorError> {
        let started = Instant::now();
        let (temp_dir, log_dir) = match &opts.log_dir {
            Some(dir) => {
                fs::create_dir_all(dir).map_err(|source| EmulatorError::LogFailed {
                    path: dir.clone(),
                    source,
                })?;
                (None, dir.clone())
            }
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("nomad-ecs-moto-")
                    .tempdir()
                    .map_err(|source| EmulatorError::LogFailed {
                        path: std::env::temp_dir(),
                        source,
                    })?;
                let path = dir.path().to_owned();
                (Some(dir), path)
            }
        };
        self.ensure_venv(&log_dir)?;

        // With a caller-chosen dir several servers may share it: name the log
        // by a unique suffix rather than by the (not yet known) port.
        let log_path = unique_log_path(&log_dir);
        let (server, port) = self.spawn_ready(opts, &log_path)?;
        let endpoint = format!("http://127.0.0.1:{port}");
        // From here on `server` is stopped by its own Drop if seeding fails.
        let seed = self.seed(&endpoint, opts, &log_dir)?;
        tracing::info!(
            port,
            cluster = %seed.cluster,
            region = %seed.region,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "ECS emulator ready"
        );
        Ok(RunningEmulator {
            endpoint,
            port,
            seed,
            log_path,
            server: Box::new(server),
            _temp_dir: temp_dir,
        })
    }
}

/// Starts `backend` with `opts` on tokio's blocking pool.
///
/// # Errors
/// As [`EmulatorBackend::start`], plus [`EmulatorError::StartCancelled`] when
/// the runtime shuts down first.
///
/// # Cancel safety
/// Dropping the future does not stop the start; a server it yields is
/// dropped, and so stopped, as soon as the start returns.
pub async fn start_with<B>(
    backend: B,
    opts: EmulatorOptions,
) -> Result<RunningEmulator, EmulatorError>
where
    B: EmulatorBackend + Send + 'static,
{
    match tokio::task::spawn_blocking(move || backend.start(&opts)).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(source) => Err(EmulatorError::StartCancelled { source }),
    }
}

/// Starts the default backend ([`LocalVenv::from_env`]) with `cluster` in
/// [`DEFAULT_REGION`].
///
/// # Errors
/// As [`start_with`].
pub async fn start_default(cluster: &str) -> Result<RunningEmulator, EmulatorError> {
    start_with(LocalVenv::from_env(), EmulatorOptions::new(cluster)).await
}

/// A started, seeded emulator. Dropping it stops the server.
pub struct RunningEmulator {
    endpoint: String,
    port: u16,
    seed: Seed,
    log_path: PathBuf,
    server: Box<dyn ServerHandle>,
    // Dropped after `Drop::drop` has stopped the server that writes into it.
    _temp_dir: Option<tempfile::TempDir>,
}

impl fmt::Debug for RunningEmulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningEmulator")
            .field("endpoint", &self.endpoint)
            .field("cluster", &self.seed.cluster)
            .field("log_path", &self.log_path)
            .field("server", &self.server)
            .finish()
    }
}

impl RunningEmulator {
    /// Base URL, `http://127.0.0.1:<port>`, for every AWS service it serves.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// What was seeded.
    pub fn seed(&self) -> &Seed {
        &self.seed
    }

    /// The server's combined stdout and stderr (gone after the drop unless
    /// [`EmulatorOptions::log_dir`] was set).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `GET path` (e.g. `/moto-api/state-manager/get-transition?model_name=ecs::task`).
    ///
    /// # Errors
    /// I/O errors, a malformed answer (`InvalidData`), or `TimedOut` after 10 s.
    pub fn http_get(&self, path: &str) -> io::Result<(u16, String)> {
        self.http_request("GET", path, &[], b"")
    }

    /// `POST path` with a JSON `body` (e.g. `/moto-api/reset`).
    ///
    /// # Errors
    /// As [`RunningEmulator::http_get`].
    pub fn http_post(&self, path: &str, body: &str) -> io::Result<(u16, String)> {
        self.http_request(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    }

    /// One HTTP/1.0 exchange with the emulator: status code and body.
    /// `Host` and `Content-Length` are added; `headers` come after them.
    ///
    /// # Errors
    /// As [`RunningEmulator::http_get`].
    pub fn http_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<(u16, String)> {
        http_exchange(self.port, method, path, headers, body, HTTP_TIMEOUT)
    }
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        self.server.stop();
    }
}

/// How a backend stops what it started; called once, from `Drop`.
trait ServerHandle: fmt::Debug + Send + Sync {
    fn stop(&mut self);
}

/// A child that leads its own process group; stopped as a group.
#[derive(Debug)]
struct ProcessGroup {
    child: Child,
    stopped: bool,
}

impl ProcessGroup {
    /// Spawns `cmd` as the leader of a new process group that gets SIGKILL
    /// when this process dies.
    ///
    /// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits,
    /// not the process. A test thread or a tokio blocking-pool thread may end
    /// while the emulator lives on (say, in a static shared by tests), so the
    /// fork happens on one dedicated thread that lives as long as the process.
    fn spawn(mut cmd: Command) -> io::Result<Self> {
        cmd.process_group(0);
        #[cfg(target_os = "linux")]
        {
            let parent = std::process::id() as libc::pid_t;
            // SAFETY: the closure runs between fork and exec and only makes
            // async-signal-safe calls (prctl, getppid); it does not allocate.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::prctl(
                        libc::PR_SET_PDEATHSIG,
                        libc::SIGKILL as libc::c_ulong,
                        0,
                        0,
                        0,
                    ) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                    // The parent may have died before prctl took effect.
                    if libc::getppid() != parent {
                        return Err(io::Error::from_raw_os_error(libc::ESRCH));
                    }
                    Ok(())
                });
            }
        }
        let child = spawn_on_keeper_thread(cmd)?;
        Ok(Self {
            child,
            stopped: false,
        })
    }

    fn try_exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn signal_group(&self, signal: libc::c_int) {
        // The child leads its group, so its pid is the group id. It has not
        // been reaped when this is called, so the id cannot have been reused.
        if let Ok(pgid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: killpg has no memory-safety preconditions.
            unsafe {
                libc::killpg(pgid, signal);
            }
        }
    }
}

impl ServerHandle for ProcessGroup {
    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if self.try_exited().is_some() {
            return;
        }
        self.signal_group(libc::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if self.try_exited().is_some() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.signal_group(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.stop();
    }
}

type SpawnJob = Box<dyn FnOnce() + Send>;

/// Runs `cmd.spawn()` on the process-lifetime keeper thread (see
/// [`ProcessGroup::spawn`]).
fn spawn_on_keeper_thread(mut cmd: Command) -> io::Result<Child> {
    static KEEPER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        thread::Builder::new()
            .name("ecs-emulator-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("spawning the emulator's spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
    let job: SpawnJob = Box::new(move || {
        let _ = reply_tx.send(cmd.spawn());
    });
    keeper
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .send(job)
        .map_err(|_| io::Error::other("the emulator's spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("the emulator's spawner thread dropped the request"))?
}

/// Polls `GET /moto-api/` until it answers 200, the server exits, or
/// `timeout` passes. The server is stopped (by drop) on every error.
fn wait_ready(
    mut server: ProcessGroup,
    port: u16,
    timeout: Duration,
    log_path: &Path,
) -> Result<ProcessGroup, EmulatorError> {
    let started = Instant::now();
    let deadline = started + timeout;
    loop {
        if let Some(status) = server.try_exited() {
            return Err(EmulatorError::ServerExited {
                port,
                status: status.to_string(),
                log_tail: log_tail(log_path),
            });
        }
        let probe_timeout = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(2));
        if let Ok((200, _)) = http_exchange(port, "GET", "/moto-api/", &[], b"", probe_timeout) {
            // Something answered; make sure it is our child and not a squatter.
            if let Some(status) = server.try_exited() {
                return Err(EmulatorError::ServerExited {
                    port,
                    status: status.to_string(),
                    log_tail: log_tail(log_path),
                });
            }
            return Ok(server);
        }
        if Instant::now() >= deadline {
            return Err(EmulatorError::NotReady {
                port,
                waited: started.elapsed(),
                log_tail: log_tail(log_path),
            });
        }
        thread::sleep(Duration::from_millis(25));
    }
}

/// Binds port 0 on loopback, reads the port, and releases it.
fn pick_free_port() -> io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

fn unique_log_path(dir: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("moto-{}-{n}.log", std::process::id()))
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The last few KiB of `path`, from a line start; a note if unreadable.
fn log_tail(path: &Path) -> String {
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        let start = len.saturating_sub(LOG_TAIL_BYTES);
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Ok(match text.find('\n') {
            Some(i) if start > 0 => text[i + 1..].to_owned(),
            _ => text,
        })
    };
    read().unwrap_or_else(|e| format!("(could not read {}: {e})", path.display()))
}

/// What a child left behind; `status` is `None` when it was killed for
/// overrunning its deadline.
struct Outcome {
    status: Option<ExitStatus>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Waits for `child`, collecting any piped stdout/stderr, and kills it when
/// `timeout` passes.
fn wait_with_deadline(mut child: Child, timeout: Duration) -> io::Result<Outcome> {
    fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    Ok(Outcome {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn describe_status(status: Option<ExitStatus>, timeout: Duration) -> String {
    match status {
        None => format!("killed after the {timeout:?} deadline"),
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => s.to_string(),
        },
    }
}

/// One HTTP/1.0 exchange with `127.0.0.1:port`, bounded by `timeout` in all.
/// HTTP/1.0 makes the server close the connection after its answer, so the
/// body is whatever arrives before EOF (no chunked encoding to undo).
fn http_exchange(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<(u16, String)> {
    const MAX_RESPONSE: usize = 64 << 20;
    let deadline = Instant::now() + timeout;
    let remaining = || {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "HTTP exchange with the emulator timed out",
            ))
        } else {
            Ok(left)
        }
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, remaining()?)?;

    let mut request = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.set_write_timeout(Some(remaining()?))?;
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;

    let mut response = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        stream.set_read_timeout(Some(remaining()?))?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) if response.len() + n > MAX_RESPONSE => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "emulator response over 64 MiB",
                ));
            }
            Ok(n) => response.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "HTTP exchange with the emulator timed out",
                ));
            }
            Err(e) => return Err(e),
        }
    }
    parse_response(&response)
}

fn parse_response(response: &[u8]) -> io::Result<(u16, String)> {
    let invalid = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("emulator response: {what}"),
        )
    };
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid("no end of headers"))?;
    let head =
        std::str::from_utf8(&response[..split]).map_err(|_| invalid("headers are not UTF-8"))?;
    let status_line = head.lines().next().unwrap_or("");
    let mut parts = status_line.split_whitespace();
    let status = match (parts.next(), parts.next()) {
        (Some(version), Some(code)) if version.starts_with("HTTP/") => code
            .parse::<u16>()
            .map_err(|_| invalid("bad status code"))?,
        _ => return Err(invalid("bad status line")),
    };
    let body = String::from_utf8_lossy(&response[split + 4..]).into_owned();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_response_reads_status_and_body() {
        let raw = b"HTTP/1.1 400 BAD REQUEST\r\nContent-Type: x\r\n\r\n{\"a\":1}";
        assert_eq!(parse_response(raw).unwrap(), (400, "{\"a\":1}".to_owned()));
    }

    #[test]
    fn parse_response_rejects_a_truncated_head() {
        let err = parse_response(b"HTTP/1.1 200 OK\r\nContent-Type").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn log_tail_starts_at_a_line_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut text = String::new();
        for i in 0..2000 {
            text.push_str(&format!("line {i}\n"));
        }
        fs::write(&path, &text).unwrap();
        let tail = log_tail(&path);
        assert!(tail.starts_with("line "), "{tail:?}");
        assert!(tail.ends_with("line 1999\n"));
        assert!(tail.len() as u64 <= LOG_TAIL_BYTES);
    }

    /// A venv whose `bin/moto_server` and `bin/python` are the given shell
    /// scripts; `@DIR@` in them stands for the venv's directory.
    fn fake_venv(moto_server: &str, python: &str) -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        fs::create_dir(&bin).unwrap();
        for (name, body) in [("moto_server", moto_server), ("python", python)] {
            let path = bin.join(name);
            let text = body.replace("@DIR@", dir.path().to_str().unwrap());
            fs::write(&path, format!("#!/bin/sh\n{text}\n")).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        dir
    }

    /// Serves 200 on `GET /moto-api/` (a directory listing), like moto's dashboard.
    const ANSWERING_SERVER: &str = "mkdir -p @DIR@/www/moto-api && cd @DIR@/www && \
         exec python3 -m http.server --bind 127.0.0.1 \"$4\" 2>/dev/null";

    /// A seed.py stand-in that echoes its arguments and some of its
    /// environment back as the seed: `$1` is the script, then flag/value pairs.
    const ECHO_SEED: &str = r#"printf '{"endpoint":"%s","region":"%s","cluster":"%s","cluster_arn":"%s","task_definition":"%s","task_definition_arn":"%s","subnets":[],"security_groups":[]}\n' \
        "$3" "$5" "$7" "$AWS_ACCESS_KEY_ID" "${9:-}" "${AWS_PROFILE:-unset}""#;

    fn start_fake(venv: &Path, opts: EmulatorOptions) -> Result<RunningEmulator, EmulatorError> {
        LocalVenv::at(venv).auto_setup(false).start(&opts)
    }

    /// Dead or a zombie: either way no longer running.
    fn is_gone(pid: i32) -> bool {
        // SAFETY: kill with signal 0 only checks for existence.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        let zombie = fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true);
        !alive || zombie
    }

    #[test]
    fn a_server_that_exits_at_once_is_reported_with_its_log() {
        let venv = fake_venv("echo 'boom from the fake server' >&2; exit 3", "exit 0");
        match start_fake(venv.path(), EmulatorOptions::new("c")).unwrap_err() {
            EmulatorError::ServerExited {
                status, log_tail, ..
            } => {
                assert!(status.contains('3'), "{status}");
                assert!(
                    log_tail.contains("boom from the fake server"),
                    "{log_tail:?}"
                );
            }
            other => panic!("expected ServerExited, got {other:?}"),
        }
    }

    #[test]
    fn a_server_that_never_answers_is_not_ready_and_its_group_is_killed() {
        // The leader and a second member of its process group both record
        // their pids; both must be gone once the start has failed.
        let venv = fake_venv(
            "sleep 60 & echo $! > @DIR@/member.pid; echo $$ > @DIR@/leader.pid; \
             echo 'still booting'; exec sleep 60",
            "exit 0",
        );
        let mut opts = EmulatorOptions::new("c");
        opts.ready_timeout = Duration::from_millis(500);
        match start_fake(venv.path(), opts).unwrap_err() {
            EmulatorError::NotReady {
                waited, log_tail, ..
            } => {
                assert!(waited >= Duration::from_millis(500), "{waited:?}");
                assert!(log_tail.contains("still booting"), "{log_tail:?}");
            }
            other => panic!("expected NotReady, got {other:?}"),
        }
        for file in ["leader.pid", "member.pid"] {
            let pid: i32 = fs::read_to_string(venv.path().join(file))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            while !is_gone(pid) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            assert!(is_gone(pid), "{file} {pid} survived the failed start");
        }
    }

    #[test]
    fn a_port_taken_before_the_bind_is_retried_on_another() {
        // The first launch fails as Werkzeug does when the port is taken.
        let server = format!(
            "if [ ! -e @DIR@/tried ]; then echo $4 > @DIR@/tried; \
             echo 'Address already in use' >&2; exit 1; fi; {ANSWERING_SERVER}"
        );
        let venv = fake_venv(&server, ECHO_SEED);
        let emu = start_fake(venv.path(), EmulatorOptions::new("c")).unwrap();
        let first: u16 = fs::read_to_string(venv.path().join("tried"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_ne!(emu.port(), first);
        assert_eq!(emu.http_get("/moto-api/").unwrap().0, 200);
    }

    #[test]
    fn a_failing_seed_is_reported_with_its_stderr() {
        let venv = fake_venv(
            ANSWERING_SERVER,
            "echo 'seed.py: error: CreateCluster: nope' >&2; exit 1",
        );
        match start_fake(venv.path(), EmulatorOptions::new("c")).unwrap_err() {
            EmulatorError::SeedFailed { status, stderr } => {
                assert_eq!(status, "exit code 1");
                assert!(stderr.contains("CreateCluster: nope"), "{stderr:?}");
            }
            other => panic!("expected SeedFailed, got {other:?}"),
        }
    }

    #[test]
    fn seed_output_that_is_not_the_seed_json_is_reported() {
        let venv = fake_venv(ANSWERING_SERVER, "echo '{\"endpoint\": \"x\"}'");
        match start_fake(venv.path(), EmulatorOptions::new("c")).unwrap_err() {
            EmulatorError::SeedOutputInvalid { stdout, .. } => {
                assert!(stdout.contains("endpoint"), "{stdout:?}")
            }
            other => panic!("expected SeedOutputInvalid, got {other:?}"),
        }
    }

    #[test]
    fn the_seed_gets_the_options_and_dummy_credentials() {
        // The fake python echoes its arguments and key environment back as the seed.
        let venv = fake_venv(ANSWERING_SERVER, ECHO_SEED);
        let opts = EmulatorOptions::new("web")
            .with_region("eu-west-1")
            .with_family("fam");
        let emu = start_fake(venv.path(), opts).unwrap();
        let seed = emu.seed();
        assert_eq!(seed.endpoint, emu.endpoint());
        assert_eq!(
            (seed.region.as_str(), seed.cluster.as_str()),
            ("eu-west-1", "web")
        );
        assert_eq!(seed.task_definition, "fam");
        assert_eq!(seed.cluster_arn, "test", "dummy AWS_ACCESS_KEY_ID");
        assert_eq!(seed.task_definition_arn, "unset", "AWS_PROFILE removed");
        assert_eq!(emu.http_get("/moto-api/").unwrap().0, 200);
    }

    #[test]
    fn missing_venv_without_auto_setup_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let venv = dir.path().join("nope");
        let err = LocalVenv::at(&venv)
            .auto_setup(false)
            .start(&EmulatorOptions::new("c"))
            .unwrap_err();
        match err {
            EmulatorError::VenvMissing { path } => assert_eq!(path, venv),
            other => panic!("expected VenvMissing, got {other:?}"),
        }
    }
}
