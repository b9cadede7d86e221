//! Emulated Nomad client host: launches the real plugin binary exactly as a
//! Nomad client agent does and drives it over the real protocol, so tests
//! exercise the binary end to end (protocol doc §1, §6.1, §7).
//!
//! Two layers:
//!
//! * [`PluginProcess`]: one go-plugin launch. It spawns the binary with
//!   Nomad's environment, parses the stdout handshake line as go-plugin
//!   does ([`parse_handshake_line`]), dials the Unix socket with tonic,
//!   opens the GRPCStdio and GRPCBroker background streams, health-checks
//!   service `"plugin"`, records stderr (checking each line as hclog JSON
//!   with [`validate_hclog_line`]) and any stray stdout, and kills the
//!   process the way go-plugin's `Client.Kill` does.
//! * [`NomadClientHost`]: the loader and driver-manager call order of §6.1
//!   (launch #1 PluginInfo + ConfigSchema, launch #2 double SetConfig,
//!   launch #3 SetConfig + Init + Fingerprint/TaskEvents streams), each
//!   step also callable on its own for bad-input tests.
//!
//! Every wait is bounded, and no plugin process outlives its owner: it is
//! SIGKILLed on drop, and on Linux also when the spawning thread dies.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use nomad_driver_ecs::devstack::host::{LaunchOptions, NomadClientHost};
//!
//! let host = NomadClientHost::new(LaunchOptions::new("target/debug/nomad-driver-ecs"), Vec::new());
//! let mut loaded = host.load().await?;
//! let first = loaded.instance.next_fingerprint(Duration::from_secs(10)).await?;
//! assert!(loaded.instance.process().invalid_log_lines().is_empty());
//! # let _ = first;
//! let shutdown = loaded.instance.shutdown().await;
//! assert!(shutdown.kill.exited_gracefully());
//! # Ok(()) }
//! ```

mod handshake;
mod hclog;
mod loader;
mod process;
mod record;

pub use handshake::{
    CORE_PROTOCOL_VERSION, Handshake, HandshakeError, PROTOCOL_GRPC, PROTOCOL_NETRPC,
    PluginAddress, parse_handshake_line, parse_offered_versions,
};
pub use hclog::{HclogLineError, MAX_LINE_BYTES, check_timestamp, validate_hclog_line};
pub use loader::{
    DEFAULT_CLIENT_MAX_PORT, DEFAULT_CLIENT_MIN_PORT, DEFAULT_RPC_TIMEOUT, DRIVER_API_VERSION,
    DriverInstance, GoVersion, InitOutcome, InstanceShutdown, Launch, LaunchReport, LoadError,
    LoadedPlugin, LoaderFacts, NomadClientHost, PluginInfoError, api_version_matches,
    check_plugin_info, default_nomad_config, parse_go_version,
};
pub use process::{
    DEFAULT_START_TIMEOUT, ExitPath, HEALTH_SERVICE, HostError, KILL_GRACE, KillOutcome,
    LaunchOptions, MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE, NOMAD_PROTOCOL_VERSIONS, PluginProcess,
};
pub use record::{Recording, StreamEnd, WaitError};
pub use tonic_health::pb::health_check_response::ServingStatus;
