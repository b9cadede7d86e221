//! The Nomad client's load sequence for an external driver plugin (protocol
//! doc §6.1), one step per method: fingerprint the binary (launch #1),
//! validate the agent config (launch #2), then run the long-lived driver
//! instance (launch #3) with its Fingerprint and TaskEvents streams.

use std::fmt;
use std::time::Duration;

use super::hclog::HclogLineError;
use super::process::{HostError, KILL_GRACE, KillOutcome, LaunchOptions, PluginProcess};
use super::record::{Recording, TaskGuard, WaitError, record_stream};
use crate::proto::base::{
    ConfigSchemaRequest, NomadConfig, NomadDriverConfig, PluginInfoRequest, PluginInfoResponse,
    PluginType, SetConfigRequest,
};
use crate::proto::drivers::{
    DriverTaskEvent, FingerprintRequest, FingerprintResponse, InitRequest, ShutdownRequest,
    TaskEventsRequest,
};
use crate::proto::hclspec::Spec;

/// The driver API version Nomad speaks (`drivers.ApiVersion010`).
pub const DRIVER_API_VERSION: &str = "v0.1.0";
/// Agent `client_max_port` default.
pub const DEFAULT_CLIENT_MAX_PORT: u32 = 14512;
/// Agent `client_min_port` default.
pub const DEFAULT_CLIENT_MIN_PORT: u32 = 14000;
/// Default bound on each unary RPC and stream opening, so no test hangs.
pub const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// The `NomadConfig` a default agent sends on the instance launch:
/// `driver{ClientMaxPort:14512, ClientMinPort:14000}`, no topology.
#[must_use]
pub fn default_nomad_config() -> NomadConfig {
    NomadConfig {
        driver: Some(NomadDriverConfig {
            client_max_port: DEFAULT_CLIENT_MAX_PORT,
            client_min_port: DEFAULT_CLIENT_MIN_PORT,
            topology: None,
        }),
    }
}

/// Which of the host's plugin launches a step belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    /// Launch #1: PluginInfo and ConfigSchema.
    Fingerprint,
    /// Launch #2: SetConfig twice without `nomad_config`.
    Validation,
    /// Launch #3: the long-lived driver instance.
    Instance,
    /// A restarted host reattaching to a running instance (§1.9).
    Reattach,
}

impl fmt::Display for Launch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fingerprint => "launch #1 (fingerprint)",
            Self::Validation => "launch #2 (config validation)",
            Self::Instance => "launch #3 (driver instance)",
            Self::Reattach => "reattach",
        })
    }
}

/// What is wrong with a `PluginInfoResponse`, as the loader sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginInfoError {
    /// `type` is not DRIVER (2).
    #[error("plugin type is {plugin_type}, expected DRIVER (2)")]
    NotADriver {
        /// The type sent.
        plugin_type: i32,
    },
    /// `plugin_api_versions` is empty.
    #[error("plugin provided no compatible API versions")]
    NoApiVersions,
    /// No entry of `plugin_api_versions` equals `v0.1.0` as a version.
    #[error("no plugin API version matches {DRIVER_API_VERSION}; plugin offers {offered:?}")]
    NoCompatibleApiVersion {
        /// What the plugin offered.
        offered: Vec<String>,
    },
    /// `plugin_version` does not parse as a hashicorp/go-version version.
    #[error("plugin_version {version:?} is not a version (expected e.g. 0.1.0 or v1.2.3-dev)")]
    InvalidPluginVersion {
        /// The version sent.
        version: String,
    },
    /// `name` is empty.
    #[error("plugin name is empty")]
    EmptyName,
}

/// Why a load step failed. Each variant names the step.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Launch #1 did not get as far as a connected plugin.
    #[error("launch #1 (fingerprint): could not start the plugin")]
    FingerprintLaunchFailed(#[source] HostError),
    /// `BasePlugin.PluginInfo` failed.
    #[error("{launch}: PluginInfo failed")]
    PluginInfoFailed {
        /// The launch.
        launch: Launch,
        /// The RPC status.
        #[source]
        status: Box<tonic::Status>,
    },
    /// `PluginInfo` answered something the loader rejects.
    #[error("{launch}: PluginInfo rejected")]
    InvalidPluginInfo {
        /// The launch.
        launch: Launch,
        /// What is wrong.
        #[source]
        source: PluginInfoError,
    },
    /// `BasePlugin.ConfigSchema` failed.
    #[error("launch #1 (fingerprint): ConfigSchema failed")]
    ConfigSchemaFailed(#[source] Box<tonic::Status>),
    /// The plugin has no config schema but the agent config is non-empty
    /// (Nomad: "configuration not allowed but config passed").
    #[error("configuration not allowed but config passed: the plugin returned no ConfigSchema")]
    ConfigNotAllowed,
    /// Launch #2 did not get as far as a connected plugin.
    #[error("launch #2 (config validation): could not start the plugin")]
    ValidationLaunchFailed(#[source] HostError),
    /// `BasePlugin.SetConfig` failed.
    #[error("{launch}: SetConfig call {attempt} failed")]
    SetConfigFailed {
        /// The launch.
        launch: Launch,
        /// 1 or 2 (the validation launch calls it twice).
        attempt: u8,
        /// The RPC status.
        #[source]
        status: Box<tonic::Status>,
    },
    /// Launch #3 did not get as far as a connected plugin.
    #[error("launch #3 (driver instance): could not start the plugin")]
    InstanceLaunchFailed(#[source] HostError),
    /// Re-dialing a running plugin failed.
    #[error("reattach: could not reconnect to the plugin")]
    ReattachFailed(#[source] HostError),
    /// `Driver.Init` failed with something other than Unimplemented.
    #[error("{launch}: Init failed")]
    InitFailed {
        /// The launch.
        launch: Launch,
        /// The RPC status.
        #[source]
        status: Box<tonic::Status>,
    },
    /// Opening `Driver.Fingerprint` failed.
    #[error("{launch}: opening the Fingerprint stream failed")]
    FingerprintStreamFailed {
        /// The launch.
        launch: Launch,
        /// The RPC status.
        #[source]
        status: Box<tonic::Status>,
    },
    /// Opening `Driver.TaskEvents` failed.
    #[error("{launch}: opening the TaskEvents stream failed")]
    TaskEventsStreamFailed {
        /// The launch.
        launch: Launch,
        /// The RPC status.
        #[source]
        status: Box<tonic::Status>,
    },
}

/// What a short-lived launch left behind once killed.
#[derive(Debug)]
pub struct LaunchReport {
    /// How the kill went.
    pub kill: KillOutcome,
    /// Every stderr line.
    pub stderr_lines: Vec<String>,
    /// Stderr lines that are not valid hclog JSON, with the reason.
    pub log_line_problems: Vec<(String, HclogLineError)>,
    /// Stdout lines after the handshake line (should be none).
    pub stdout_after_handshake: Vec<String>,
}

impl LaunchReport {
    /// Kills `process` as go-plugin does and collects what it printed.
    pub async fn finish(process: PluginProcess) -> Self {
        let stderr = process.stderr().clone();
        let stdout_after_handshake = process.stdout_after_handshake();
        let kill = process.kill().await;
        let stderr_lines = stderr.snapshot();
        let log_line_problems = stderr_lines
            .iter()
            .filter_map(|line| {
                super::hclog::validate_hclog_line(line)
                    .err()
                    .map(|e| (line.clone(), e))
            })
            .collect();
        Self {
            kill,
            stderr_lines,
            log_line_problems,
            stdout_after_handshake,
        }
    }
}

/// What launch #1 learned about the binary.
#[derive(Debug)]
pub struct LoaderFacts {
    /// The PluginInfo answer (already checked).
    pub plugin_info: PluginInfoResponse,
    /// The plugin's own string that matched `v0.1.0`; SetConfig echoes it.
    pub api_version: String,
    /// The ConfigSchema answer; `None` means the plugin takes no config.
    pub config_schema: Option<Spec>,
    /// Launch #1's kill and output.
    pub report: LaunchReport,
}

/// Everything [`NomadClientHost::load`] produced.
#[derive(Debug)]
pub struct LoadedPlugin {
    /// Launch #1.
    pub facts: LoaderFacts,
    /// Launch #2, or `None` when it was skipped (no config schema).
    pub validation: Option<LaunchReport>,
    /// Launch #3, running.
    pub instance: DriverInstance,
}

/// An emulated Nomad client agent loading one driver plugin binary.
#[derive(Debug, Clone)]
pub struct NomadClientHost {
    /// How to launch the binary (each launch uses a clone).
    pub launch: LaunchOptions,
    /// cty-msgpack of the agent's `plugin { config { ... } }` block; empty
    /// for no config.
    pub agent_config: Vec<u8>,
    /// What the instance launch sends as `nomad_config`.
    pub nomad_config: NomadConfig,
    /// Bound on each unary RPC and on opening each stream.
    pub rpc_timeout: Duration,
}

impl NomadClientHost {
    /// A host loading `launch.binary` with `agent_config` and the default
    /// agent's `nomad_config`.
    #[must_use]
    pub fn new(launch: LaunchOptions, agent_config: Vec<u8>) -> Self {
        Self {
            launch,
            agent_config,
            nomad_config: default_nomad_config(),
            rpc_timeout: DEFAULT_RPC_TIMEOUT,
        }
    }

    /// Replaces the `nomad_config` sent on the instance launch.
    #[must_use]
    pub fn nomad_config(mut self, config: NomadConfig) -> Self {
        self.nomad_config = config;
        self
    }

    /// Replaces the per-RPC bound.
    #[must_use]
    pub fn rpc_timeout(mut self, timeout: Duration) -> Self {
        self.rpc_timeout = timeout;
        self
    }

    /// Runs the whole §6.1 sequence: launch #1, launch #2 if the plugin has a
    /// config schema, then launch #3.
    ///
    /// # Errors
    ///
    /// The first failing step's [`LoadError`].
    pub async fn load(&self) -> Result<LoadedPlugin, LoadError> {
        let facts = self.fingerprint_launch().await?;
        let validation = self.validation_launch(&facts).await?;
        let instance = self.instance_launch(&facts.api_version).await?;
        Ok(LoadedPlugin {
            facts,
            validation,
            instance,
        })
    }

    /// Launch #1: PluginInfo (checked with [`check_plugin_info`]), then
    /// ConfigSchema, then kill. The process is killed on failure too.
    ///
    /// # Errors
    ///
    /// [`LoadError::FingerprintLaunchFailed`], `PluginInfoFailed`,
    /// `InvalidPluginInfo` or `ConfigSchemaFailed`.
    pub async fn fingerprint_launch(&self) -> Result<LoaderFacts, LoadError> {
        let process = PluginProcess::launch(self.launch.clone())
            .await
            .map_err(LoadError::FingerprintLaunchFailed)?;
        let result = async {
            let (plugin_info, api_version) =
                self.plugin_info(&process, Launch::Fingerprint).await?;
            let schema = bounded(
                self.rpc_timeout,
                process.base().config_schema(ConfigSchemaRequest {}),
            )
            .await
            .map_err(|status| LoadError::ConfigSchemaFailed(Box::new(status)))?;
            Ok((plugin_info, api_version, schema.spec))
        }
        .await;
        let report = LaunchReport::finish(process).await;
        let (plugin_info, api_version, config_schema) = result?;
        Ok(LoaderFacts {
            plugin_info,
            api_version,
            config_schema,
            report,
        })
    }

    /// Launch #2, only if launch #1 found a config schema:
    /// `SetConfig(agent_config, nomad_config unset, api_version)` twice with
    /// the same arguments, then kill. Without a schema it launches nothing
    /// and returns `None`, unless the agent config is non-empty.
    ///
    /// # Errors
    ///
    /// [`LoadError::ConfigNotAllowed`], `ValidationLaunchFailed` or
    /// `SetConfigFailed { launch: Validation, .. }`.
    pub async fn validation_launch(
        &self,
        facts: &LoaderFacts,
    ) -> Result<Option<LaunchReport>, LoadError> {
        if facts.config_schema.is_none() {
            return if self.agent_config.is_empty() {
                Ok(None)
            } else {
                Err(LoadError::ConfigNotAllowed)
            };
        }
        let process = PluginProcess::launch(self.launch.clone())
            .await
            .map_err(LoadError::ValidationLaunchFailed)?;
        let result = async {
            for attempt in 1..=2 {
                self.set_config(
                    &process,
                    None,
                    &facts.api_version,
                    Launch::Validation,
                    attempt,
                )
                .await?;
            }
            Ok(())
        }
        .await;
        let report = LaunchReport::finish(process).await;
        result.map(|()| Some(report))
    }

    /// Launch #3: launches a fresh process and runs [`Self::start_instance`]
    /// on it.
    ///
    /// # Errors
    ///
    /// [`LoadError::InstanceLaunchFailed`] or those of `start_instance`.
    pub async fn instance_launch(&self, api_version: &str) -> Result<DriverInstance, LoadError> {
        let process = PluginProcess::launch(self.launch.clone())
            .await
            .map_err(LoadError::InstanceLaunchFailed)?;
        self.start_instance(process, api_version).await
    }

    /// The driver manager's dispense on an already launched process (also
    /// what a relaunch after a plugin crash does):
    /// `SetConfig(agent_config, nomad_config, api_version)`, `Driver.Init`
    /// (Unimplemented tolerated), then the Fingerprint and TaskEvents streams
    /// opened concurrently and recorded. On failure the process is killed.
    ///
    /// # Errors
    ///
    /// `SetConfigFailed { launch: Instance, .. }`, `InitFailed`,
    /// `FingerprintStreamFailed` or `TaskEventsStreamFailed`.
    pub async fn start_instance(
        &self,
        process: PluginProcess,
        api_version: &str,
    ) -> Result<DriverInstance, LoadError> {
        let result = async {
            self.set_config(
                &process,
                Some(self.nomad_config.clone()),
                api_version,
                Launch::Instance,
                1,
            )
            .await?;
            let init = self.init(&process, Launch::Instance).await?;
            let streams = self.open_streams(&process, Launch::Instance).await?;
            Ok((init, streams))
        }
        .await;
        match result {
            Ok((init, streams)) => Ok(DriverInstance::new(process, init, streams)),
            Err(e) => {
                process.kill().await;
                Err(e)
            }
        }
    }

    /// A restarted client reattaching to a plugin that kept running (§1.9):
    /// re-dials the same socket without a handshake, then PluginInfo (to
    /// re-derive the API version), `Driver.Init`, and the two streams. No
    /// SetConfig is sent. On failure the process is killed.
    ///
    /// # Errors
    ///
    /// `ReattachFailed`, `PluginInfoFailed`, `InvalidPluginInfo`,
    /// `InitFailed` or a stream failure, all with `launch: Reattach`.
    pub async fn reattach_instance(
        &self,
        mut process: PluginProcess,
    ) -> Result<DriverInstance, LoadError> {
        let result = async {
            process
                .reattach(self.rpc_timeout)
                .await
                .map_err(LoadError::ReattachFailed)?;
            self.plugin_info(&process, Launch::Reattach).await?;
            let init = self.init(&process, Launch::Reattach).await?;
            let streams = self.open_streams(&process, Launch::Reattach).await?;
            Ok((init, streams))
        }
        .await;
        match result {
            Ok((init, streams)) => Ok(DriverInstance::new(process, init, streams)),
            Err(e) => {
                process.kill().await;
                Err(e)
            }
        }
    }

    /// `BasePlugin.PluginInfo`, checked.
    ///
    /// # Errors
    ///
    /// `PluginInfoFailed` or `InvalidPluginInfo`.
    pub async fn plugin_info(
        &self,
        process: &PluginProcess,
        launch: Launch,
    ) -> Result<(PluginInfoResponse, String), LoadError> {
        let info = bounded(
            self.rpc_timeout,
            process.base().plugin_info(PluginInfoRequest {}),
        )
        .await
        .map_err(|status| LoadError::PluginInfoFailed {
            launch,
            status: Box::new(status),
        })?;
        let api_version = check_plugin_info(&info)
            .map_err(|source| LoadError::InvalidPluginInfo { launch, source })?;
        Ok((info, api_version))
    }

    /// One `BasePlugin.SetConfig` with this host's agent config.
    ///
    /// # Errors
    ///
    /// `SetConfigFailed` carrying `launch` and `attempt`.
    pub async fn set_config(
        &self,
        process: &PluginProcess,
        nomad_config: Option<NomadConfig>,
        api_version: &str,
        launch: Launch,
        attempt: u8,
    ) -> Result<(), LoadError> {
        let request = SetConfigRequest {
            msgpack_config: self.agent_config.clone(),
            nomad_config,
            plugin_api_version: api_version.to_owned(),
        };
        bounded(self.rpc_timeout, process.base().set_config(request))
            .await
            .map(drop)
            .map_err(|status| LoadError::SetConfigFailed {
                launch,
                attempt,
                status: Box::new(status),
            })
    }

    /// `Driver.Init` (Nomad v2.0.4+); Unimplemented is tolerated as older
    /// clients never call it.
    ///
    /// # Errors
    ///
    /// `InitFailed` for any other failure.
    pub async fn init(
        &self,
        process: &PluginProcess,
        launch: Launch,
    ) -> Result<InitOutcome, LoadError> {
        match bounded(self.rpc_timeout, process.driver().init(InitRequest {})).await {
            Ok(_) => Ok(InitOutcome::Initialized),
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                Ok(InitOutcome::Unimplemented)
            }
            Err(status) => Err(LoadError::InitFailed {
                launch,
                status: Box::new(status),
            }),
        }
    }

    async fn open_streams(
        &self,
        process: &PluginProcess,
        launch: Launch,
    ) -> Result<InstanceStreams, LoadError> {
        let mut fingerprint_client = process.driver();
        let mut events_client = process.driver();
        let (fingerprint, events) = tokio::join!(
            bounded(
                self.rpc_timeout,
                fingerprint_client.fingerprint(FingerprintRequest {})
            ),
            bounded(
                self.rpc_timeout,
                events_client.task_events(TaskEventsRequest {})
            ),
        );
        let fingerprint = fingerprint.map_err(|status| LoadError::FingerprintStreamFailed {
            launch,
            status: Box::new(status),
        })?;
        let events = events.map_err(|status| LoadError::TaskEventsStreamFailed {
            launch,
            status: Box::new(status),
        })?;

        let fingerprints = Recording::new();
        let task_events = Recording::new();
        let guards = vec![
            TaskGuard::spawn(record_stream(fingerprint, fingerprints.clone())),
            TaskGuard::spawn(record_stream(events, task_events.clone())),
        ];
        Ok(InstanceStreams {
            fingerprints,
            events: task_events,
            guards,
        })
    }
}

/// What `Driver.Init` answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitOutcome {
    /// It succeeded.
    Initialized,
    /// The plugin does not implement it (fine: pre-2.0.4 behaviour).
    Unimplemented,
}

#[derive(Debug)]
struct InstanceStreams {
    fingerprints: Recording<FingerprintResponse>,
    events: Recording<DriverTaskEvent>,
    guards: Vec<TaskGuard>,
}

/// What [`DriverInstance::shutdown`] observed.
#[derive(Debug)]
pub struct InstanceShutdown {
    /// `Driver.Shutdown`'s result (Unimplemented is fine for the host).
    pub driver_shutdown: Result<(), tonic::Status>,
    /// The go-plugin kill that followed.
    pub kill: KillOutcome,
}

/// The long-lived driver instance (launch #3) with its Fingerprint and
/// TaskEvents streams being recorded in the background.
///
/// Unlike Nomad, the host does not reopen a stream that ends: the end is
/// recorded so tests can assert the plugin keeps streams open.
#[derive(Debug)]
pub struct DriverInstance {
    process: PluginProcess,
    init: InitOutcome,
    fingerprints: Recording<FingerprintResponse>,
    events: Recording<DriverTaskEvent>,
    fingerprint_cursor: usize,
    event_cursor: usize,
    /// Dropping these cancels the two streams.
    streams: Vec<TaskGuard>,
}

impl DriverInstance {
    fn new(process: PluginProcess, init: InitOutcome, streams: InstanceStreams) -> Self {
        Self {
            process,
            init,
            fingerprints: streams.fingerprints,
            events: streams.events,
            fingerprint_cursor: 0,
            event_cursor: 0,
            streams: streams.guards,
        }
    }

    /// The plugin process.
    #[must_use]
    pub fn process(&self) -> &PluginProcess {
        &self.process
    }

    /// The plugin process, mutably (for `sigkill`, `wait_exit`, ...).
    pub fn process_mut(&mut self) -> &mut PluginProcess {
        &mut self.process
    }

    /// A `Driver` client on the instance's connection.
    #[must_use]
    pub fn driver(
        &self,
    ) -> crate::proto::drivers::driver_client::DriverClient<tonic::transport::Channel> {
        self.process.driver()
    }

    /// What `Driver.Init` answered.
    #[must_use]
    pub fn init_outcome(&self) -> InitOutcome {
        self.init
    }

    /// Every Fingerprint message so far, and the stream's end.
    #[must_use]
    pub fn fingerprints(&self) -> &Recording<FingerprintResponse> {
        &self.fingerprints
    }

    /// Every TaskEvents message so far, and the stream's end.
    #[must_use]
    pub fn events(&self) -> &Recording<DriverTaskEvent> {
        &self.events
    }

    /// The next Fingerprint message this method has not returned yet.
    ///
    /// # Errors
    ///
    /// [`WaitError::Timeout`], or [`WaitError::Ended`] if the stream ended.
    pub async fn next_fingerprint(
        &mut self,
        timeout: Duration,
    ) -> Result<FingerprintResponse, WaitError> {
        let (index, message) = self
            .fingerprints
            .wait_from(self.fingerprint_cursor, timeout, |_| true)
            .await?;
        self.fingerprint_cursor = index + 1;
        Ok(message)
    }

    /// The next TaskEvents message this method has not returned yet.
    ///
    /// # Errors
    ///
    /// As [`Self::next_fingerprint`].
    pub async fn next_event(&mut self, timeout: Duration) -> Result<DriverTaskEvent, WaitError> {
        let (index, event) = self
            .events
            .wait_from(self.event_cursor, timeout, |_| true)
            .await?;
        self.event_cursor = index + 1;
        Ok(event)
    }

    /// The driver manager's cleanup (§1.8): cancels the two streams, calls
    /// `Driver.Shutdown` with a 2 s timeout, then kills the plugin as
    /// go-plugin does.
    pub async fn shutdown(self) -> InstanceShutdown {
        let Self {
            process, streams, ..
        } = self;
        drop(streams);
        let driver_shutdown = bounded(KILL_GRACE, process.driver().shutdown(ShutdownRequest {}))
            .await
            .map(drop);
        let kill = process.kill().await;
        InstanceShutdown {
            driver_shutdown,
            kill,
        }
    }

    /// Cancels the two streams and kills the plugin as go-plugin does,
    /// without `Driver.Shutdown` (pre-2.0.4 hosts, and the loader launches).
    pub async fn kill(self) -> KillOutcome {
        let Self {
            process, streams, ..
        } = self;
        drop(streams);
        process.kill().await
    }

    /// Stops being the driver manager (cancels the two streams) and hands
    /// back the still-running process, e.g. to reattach to it.
    #[must_use]
    pub fn into_process(self) -> PluginProcess {
        self.process
    }
}

/// Checks a PluginInfo answer as the loader does and returns the plugin's
/// own API version string that matches `v0.1.0` (the first one, in the
/// plugin's order).
///
/// # Errors
///
/// [`PluginInfoError`] for a non-driver type, no or no matching API
/// versions, an unparsable `plugin_version`, or an empty name.
pub fn check_plugin_info(info: &PluginInfoResponse) -> Result<String, PluginInfoError> {
    if info.r#type != PluginType::Driver as i32 {
        return Err(PluginInfoError::NotADriver {
            plugin_type: info.r#type,
        });
    }
    if info.plugin_api_versions.is_empty() {
        return Err(PluginInfoError::NoApiVersions);
    }
    let api_version = info
        .plugin_api_versions
        .iter()
        .find(|v| api_version_matches(v))
        .cloned()
        .ok_or_else(|| PluginInfoError::NoCompatibleApiVersion {
            offered: info.plugin_api_versions.clone(),
        })?;
    if parse_go_version(&info.plugin_version).is_none() {
        return Err(PluginInfoError::InvalidPluginVersion {
            version: info.plugin_version.clone(),
        });
    }
    if info.name.is_empty() {
        return Err(PluginInfoError::EmptyName);
    }
    Ok(api_version)
}

/// Whether `version` equals `v0.1.0` as a version: numeric segments compared
/// with missing ones as zero, no pre-release, build metadata ignored.
#[must_use]
pub fn api_version_matches(version: &str) -> bool {
    const WANTED: [u64; 3] = [0, 1, 0];
    parse_go_version(version).is_some_and(|v| {
        let len = v.segments.len().max(WANTED.len());
        v.prerelease.is_empty()
            && (0..len).all(|i| v.segments.get(i).unwrap_or(&0) == WANTED.get(i).unwrap_or(&0))
    })
}

/// A version as hashicorp/go-version reads it: an optional `v`, one or more
/// dot-separated numbers, an optional pre-release (after `-`, or directly
/// after the numbers when it starts with a letter) and optional `+` build
/// metadata; identifiers use `[0-9A-Za-z-~]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoVersion {
    /// The numeric segments.
    pub segments: Vec<u64>,
    /// The pre-release, empty if none.
    pub prerelease: String,
    /// The build metadata, empty if none.
    pub metadata: String,
}

/// Parses `text` as a [`GoVersion`]; `None` if go-version would reject it
/// (this is a close reading of its grammar, not a port).
#[must_use]
pub fn parse_go_version(text: &str) -> Option<GoVersion> {
    let rest = text.strip_prefix('v').unwrap_or(text);
    let numeric_len = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (numbers, tail) = rest.split_at(numeric_len);
    let segments = numbers
        .split('.')
        .map(|s| if s.is_empty() { None } else { s.parse().ok() })
        .collect::<Option<Vec<u64>>>()?;

    let (prerelease, metadata) = match tail.split_once('+') {
        Some((pre, meta)) => (pre, Some(meta)),
        None => (tail, None),
    };
    let prerelease = match prerelease.strip_prefix('-') {
        Some(pre) => Some(pre),
        None if prerelease.starts_with(|c: char| c.is_ascii_alphabetic() || c == '~') => {
            Some(prerelease)
        }
        None if prerelease.is_empty() => None,
        None => return None,
    };
    if prerelease.is_some_and(|p| !valid_identifiers(p))
        || metadata.is_some_and(|m| !valid_identifiers(m))
    {
        return None;
    }
    Some(GoVersion {
        segments,
        prerelease: prerelease.unwrap_or_default().to_owned(),
        metadata: metadata.unwrap_or_default().to_owned(),
    })
}

fn valid_identifiers(text: &str) -> bool {
    text.split('.').all(|id| {
        !id.is_empty()
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '~')
    })
}

async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "no answer within {timeout:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> PluginInfoResponse {
        PluginInfoResponse {
            r#type: PluginType::Driver as i32,
            plugin_api_versions: vec!["v0.1.0".into()],
            plugin_version: "0.2.0".into(),
            name: "ecs".into(),
        }
    }

    #[test]
    fn driver_info_yields_the_plugins_own_api_string() {
        assert_eq!(check_plugin_info(&info()), Ok("v0.1.0".to_owned()));
        let bare = PluginInfoResponse {
            plugin_api_versions: vec!["v9.0.0".into(), "0.1.0".into()],
            ..info()
        };
        assert_eq!(check_plugin_info(&bare), Ok("0.1.0".to_owned()));
    }

    #[test]
    fn device_type_is_not_a_driver() {
        let device = PluginInfoResponse {
            r#type: PluginType::Device as i32,
            ..info()
        };
        assert_eq!(
            check_plugin_info(&device),
            Err(PluginInfoError::NotADriver { plugin_type: 3 })
        );
    }

    #[test]
    fn api_versions_must_be_present_and_match() {
        let none = PluginInfoResponse {
            plugin_api_versions: vec![],
            ..info()
        };
        assert_eq!(
            check_plugin_info(&none),
            Err(PluginInfoError::NoApiVersions)
        );
        let other = PluginInfoResponse {
            plugin_api_versions: vec!["v0.2.0".into(), "v0.1.0-beta".into()],
            ..info()
        };
        assert!(matches!(
            check_plugin_info(&other),
            Err(PluginInfoError::NoCompatibleApiVersion { .. })
        ));
    }

    #[test]
    fn api_version_equality_pads_segments_and_ignores_metadata() {
        for v in ["v0.1.0", "0.1.0", "0.1", "v0.1.0.0", "0.1.0+build"] {
            assert!(api_version_matches(v), "{v}");
        }
        for v in ["v0.1.1", "1.0.0", "v0.1.0-rc1", "", "v"] {
            assert!(!api_version_matches(v), "{v}");
        }
    }

    #[test]
    fn plugin_version_must_parse_and_name_must_be_set() {
        for version in [
            "",
            "latest",
            "1..2",
            "1.2.",
            "1.2.3-",
            "1.2.3+",
            "1.2.3 beta",
        ] {
            let bad = PluginInfoResponse {
                plugin_version: version.into(),
                ..info()
            };
            assert!(
                matches!(
                    check_plugin_info(&bad),
                    Err(PluginInfoError::InvalidPluginVersion { .. })
                ),
                "{version:?}"
            );
        }
        let unnamed = PluginInfoResponse {
            name: String::new(),
            ..info()
        };
        assert_eq!(check_plugin_info(&unnamed), Err(PluginInfoError::EmptyName));
    }

    #[test]
    fn go_versions_parse_like_go_version() {
        let v = parse_go_version("v1.2.3-dev.1+abc.def").unwrap();
        assert_eq!(v.segments, vec![1, 2, 3]);
        assert_eq!(v.prerelease, "dev.1");
        assert_eq!(v.metadata, "abc.def");
        assert_eq!(parse_go_version("1.2.3beta").unwrap().prerelease, "beta");
        assert_eq!(parse_go_version("2").unwrap().segments, vec![2]);
    }

    #[test]
    fn default_nomad_config_has_the_agent_port_defaults() {
        let driver = default_nomad_config().driver.unwrap();
        assert_eq!(
            (driver.client_min_port, driver.client_max_port),
            (14000, 14512)
        );
        assert!(driver.topology.is_none());
    }
}
