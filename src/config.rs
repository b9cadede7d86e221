//! Plugin configuration: figment layers, lowest first: built-in defaults, an
//! optional TOML file, `NOMAD_ECS_*` environment variables, then the Nomad
//! agent's `plugin "nomad-driver-ecs" { config { ... } }` block, which wins.
//! Upstream's option names (`enabled`, `cluster`, `region`) keep working.

use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format as _, Serialized, Toml};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Names of every option, as written in the plugin block, the TOML file and
/// (upper-cased, prefixed) the environment.
pub const KEYS: &[&str] = &[
    "enabled",
    "cluster",
    "region",
    "endpoint",
    "reconcile_interval",
    "fingerprint_interval",
    "state_dir",
    "api_budget",
    "nomad_address",
    "nomad_token",
    "missing_grace",
    "nomad_ca_cert",
    "nomad_client_cert",
    "nomad_client_key",
    "nomad_tls_server_name",
    "handoff_grace",
    "orphan_sweep_interval",
    "telemetry_endpoint",
    "telemetry_service_name",
];

/// The agent `plugin` block's schema. No attribute carries an hclspec
/// default: an unset attribute arrives as null and the lower layers (env,
/// file, built-in defaults) apply.
pub fn schema() -> crate::schema::Object {
    use crate::schema::{Object, Ty};
    Object::new()
        .attr("enabled", Ty::Bool)
        .attr("cluster", Ty::String)
        .attr("region", Ty::String)
        .attr("endpoint", Ty::String)
        .attr("reconcile_interval", Ty::String)
        .attr("fingerprint_interval", Ty::String)
        .attr("state_dir", Ty::String)
        .attr("api_budget", Ty::Number)
        .attr("nomad_address", Ty::String)
        .attr("nomad_token", Ty::String)
        .attr("missing_grace", Ty::String)
        .attr("nomad_ca_cert", Ty::String)
        .attr("nomad_client_cert", Ty::String)
        .attr("nomad_client_key", Ty::String)
        .attr("nomad_tls_server_name", Ty::String)
        .attr("handoff_grace", Ty::String)
        .attr("orphan_sweep_interval", Ty::String)
        .attr("telemetry_endpoint", Ty::String)
        .attr("telemetry_service_name", Ty::String)
}

/// Environment variable naming the optional TOML file.
pub const CONFIG_FILE_ENV: &str = "NOMAD_ECS_CONFIG_FILE";
/// The TOML file read when it exists and `NOMAD_ECS_CONFIG_FILE` is unset.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/nomad-driver-ecs/config.toml";
/// Prefix of the environment layer.
pub const ENV_PREFIX: &str = "NOMAD_ECS_";

/// The validated plugin configuration.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Off by default, as upstream: the fingerprint says "disabled".
    pub enabled: bool,
    /// ECS cluster name or ARN every task of this client runs in.
    pub cluster: String,
    /// AWS region; empty means the SDK's default chain (env, profile, IMDS).
    pub region: Option<String>,
    /// ECS endpoint override (an emulator, a VPC endpoint); empty means the
    /// SDK's resolution (which also honours `AWS_ENDPOINT_URL_ECS`).
    pub endpoint: Option<String>,
    /// Period of the full reconcile pass (stretched as the task count grows).
    #[serde(with = "duration")]
    pub reconcile_interval: Duration,
    /// Period of the fingerprint's cluster check.
    #[serde(with = "duration")]
    pub fingerprint_interval: Duration,
    /// Where the driver keeps its task records; one directory per plugin
    /// process (two clients on one machine need two directories).
    pub state_dir: PathBuf,
    /// Share (0, 1] of the account's published ECS API rate limits the driver
    /// allows itself.
    pub api_budget: f64,
    /// Nomad HTTP API address (defaults to the agent's `NOMAD_ADDR`).
    pub nomad_address: Option<String>,
    /// Nomad ACL token (defaults to the agent's `NOMAD_TOKEN`). Never logged.
    pub nomad_token: Option<String>,
    /// How long DescribeTasks may report a task MISSING (eventual
    /// consistency) before the driver reports it lost.
    #[serde(with = "duration")]
    pub missing_grace: Duration,
    /// CA bundle for an https Nomad API (default: the agent's `NOMAD_CACERT`).
    pub nomad_ca_cert: Option<PathBuf>,
    /// Client certificate for the Nomad API (default: `NOMAD_CLIENT_CERT`).
    pub nomad_client_cert: Option<PathBuf>,
    /// Client key for the Nomad API (default: `NOMAD_CLIENT_KEY`).
    pub nomad_client_key: Option<PathBuf>,
    /// TLS server name for the Nomad API (default: `NOMAD_TLS_SERVER_NAME`).
    pub nomad_tls_server_name: Option<String>,
    /// How long a handed-off ECS task waits for a replacement allocation to
    /// adopt it before the driver stops it.
    #[serde(with = "duration")]
    pub handoff_grace: Duration,
    /// Period of the orphan sweep (needs the Nomad API).
    #[serde(with = "duration")]
    pub orphan_sweep_interval: Duration,
    /// OTLP/gRPC collector endpoint (`http://host:4317`); empty means the
    /// `OTEL_EXPORTER_OTLP_*ENDPOINT` variables. Telemetry is off unless one
    /// of them is set (see `telemetry::plan`).
    pub telemetry_endpoint: Option<String>,
    /// `service.name` of the exported telemetry; empty means
    /// `OTEL_SERVICE_NAME`, else `nomad-driver-ecs`.
    pub telemetry_service_name: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            enabled: false,
            cluster: String::new(),
            region: None,
            endpoint: None,
            reconcile_interval: Duration::from_secs(10),
            fingerprint_interval: Duration::from_secs(30),
            state_dir: PathBuf::from("/var/lib/nomad-driver-ecs"),
            api_budget: 0.5,
            nomad_address: None,
            nomad_token: None,
            missing_grace: Duration::from_secs(120),
            nomad_ca_cert: None,
            nomad_client_cert: None,
            nomad_client_key: None,
            nomad_tls_server_name: None,
            handoff_grace: Duration::from_secs(300),
            orphan_sweep_interval: Duration::from_secs(300),
            telemetry_endpoint: None,
            telemetry_service_name: None,
        }
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("enabled", &self.enabled)
            .field("cluster", &self.cluster)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("reconcile_interval", &self.reconcile_interval)
            .field("fingerprint_interval", &self.fingerprint_interval)
            .field("state_dir", &self.state_dir)
            .field("api_budget", &self.api_budget)
            .field("nomad_address", &self.nomad_address)
            .field(
                "nomad_token",
                &self.nomad_token.as_ref().map(|_| "<redacted>"),
            )
            .field("missing_grace", &self.missing_grace)
            .field("nomad_ca_cert", &self.nomad_ca_cert)
            .field("nomad_client_cert", &self.nomad_client_cert)
            .field("nomad_client_key", &self.nomad_client_key)
            .field("nomad_tls_server_name", &self.nomad_tls_server_name)
            .field("handoff_grace", &self.handoff_grace)
            .field("orphan_sweep_interval", &self.orphan_sweep_interval)
            .field("telemetry_endpoint", &self.telemetry_endpoint)
            .field("telemetry_service_name", &self.telemetry_service_name)
            .finish()
    }
}

/// A configuration that cannot be used. The message names the option and,
/// where figment knows it, the layer it came from.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A layer could not be read or a value has the wrong type.
    #[error("{0}")]
    Layer(String),
    /// `NOMAD_ECS_CONFIG_FILE` names a file that does not exist.
    #[error("config file {path} (from {CONFIG_FILE_ENV}) does not exist")]
    FileMissing {
        /// The path given.
        path: PathBuf,
    },
    /// A value of the right type that is not acceptable.
    #[error("invalid `{field}`{origin}: {reason}")]
    Invalid {
        /// The option.
        field: &'static str,
        /// " (from <layer>)" when known.
        origin: String,
        /// What was wrong and what is expected.
        reason: String,
    },
}

/// The figment for a plugin block (already decoded from cty-msgpack into
/// JSON by the schema), layered over env, file and defaults.
///
/// # Errors
/// [`ConfigError::FileMissing`] for an explicit file that does not exist.
pub fn figment(plugin_block: Option<serde_json::Value>) -> Result<Figment, ConfigError> {
    let mut fig = Figment::from(Serialized::defaults(Settings::default()));
    match std::env::var_os(CONFIG_FILE_ENV).filter(|p| !p.is_empty()) {
        Some(path) => {
            let path = PathBuf::from(path);
            if !path.exists() {
                return Err(ConfigError::FileMissing { path });
            }
            fig = fig.merge(Toml::file(path));
        }
        // An absolute path: figment reads it if it exists and skips it if not.
        None => fig = fig.merge(Toml::file(DEFAULT_CONFIG_FILE)),
    }
    fig = fig.merge(Env::prefixed(ENV_PREFIX).only(KEYS));
    if let Some(block) = plugin_block {
        fig = fig.merge(Serialized::globals(block).profile(figment::Profile::Default));
    }
    Ok(fig)
}

/// Extract and validate the settings.
///
/// # Errors
/// [`ConfigError`] naming the first bad option.
pub fn load(plugin_block: Option<serde_json::Value>) -> Result<Settings, ConfigError> {
    let fig = figment(plugin_block)?;
    let mut s: Settings = fig.extract().map_err(|e| ConfigError::Layer(flatten(e)))?;
    normalize(&mut s);
    nomad_env_defaults(&mut s);
    normalize(&mut s);
    validate(&s, &fig)?;
    Ok(s)
}

fn flatten(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The agent's Nomad API environment, used where the config sets nothing.
fn nomad_env_defaults(s: &mut Settings) {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    if s.nomad_address.is_none() {
        s.nomad_address = env("NOMAD_ADDR");
    }
    if s.nomad_token.is_none() {
        s.nomad_token = env("NOMAD_TOKEN");
    }
    if s.nomad_ca_cert.is_none() {
        s.nomad_ca_cert = env("NOMAD_CACERT").map(PathBuf::from);
    }
    if s.nomad_client_cert.is_none() {
        s.nomad_client_cert = env("NOMAD_CLIENT_CERT").map(PathBuf::from);
    }
    if s.nomad_client_key.is_none() {
        s.nomad_client_key = env("NOMAD_CLIENT_KEY").map(PathBuf::from);
    }
    if s.nomad_tls_server_name.is_none() {
        s.nomad_tls_server_name = env("NOMAD_TLS_SERVER_NAME");
    }
}

impl Settings {
    /// The Nomad API configuration, when an address is known.
    pub fn nomad_api(&self) -> Option<crate::nomad::ApiConfig> {
        Some(crate::nomad::ApiConfig {
            address: self.nomad_address.clone()?,
            token: self.nomad_token.clone(),
            ca_cert: self.nomad_ca_cert.clone(),
            client_cert: self.nomad_client_cert.clone(),
            client_key: self.nomad_client_key.clone(),
            tls_server_name: self.nomad_tls_server_name.clone(),
        })
    }
}

/// Empty strings mean "not set".
fn normalize(s: &mut Settings) {
    for opt in [
        &mut s.region,
        &mut s.endpoint,
        &mut s.nomad_address,
        &mut s.nomad_token,
        &mut s.nomad_tls_server_name,
        &mut s.telemetry_endpoint,
        &mut s.telemetry_service_name,
    ] {
        if opt.as_deref().is_some_and(|v| v.trim().is_empty()) {
            *opt = None;
        }
    }
    s.cluster = s.cluster.trim().to_string();
    for p in [
        &mut s.nomad_ca_cert,
        &mut s.nomad_client_cert,
        &mut s.nomad_client_key,
    ] {
        if p.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            *p = None;
        }
    }
}

fn validate(s: &Settings, fig: &Figment) -> Result<(), ConfigError> {
    let invalid = |field: &'static str, reason: String| ConfigError::Invalid {
        field,
        origin: fig
            .find_metadata(field)
            .map(|m| format!(" (from {})", m.name))
            .unwrap_or_default(),
        reason,
    };
    if s.enabled && s.cluster.is_empty() {
        return Err(invalid(
            "cluster",
            "must be set to an ECS cluster name or ARN when `enabled = true`".into(),
        ));
    }
    if !s.cluster.is_empty() {
        check_cluster(&s.cluster).map_err(|r| invalid("cluster", r))?;
    }
    if let Some(r) = &s.region {
        check_region(r).map_err(|r| invalid("region", r))?;
    }
    if let Some(e) = &s.endpoint {
        check_url(e, &["http", "https"]).map_err(|r| invalid("endpoint", r))?;
    }
    if let Some(e) = &s.telemetry_endpoint {
        check_url(e, &["http", "https"]).map_err(|r| invalid("telemetry_endpoint", r))?;
    }
    if let Some(a) = &s.nomad_address {
        check_url(a, &["http", "https", "unix"]).map_err(|r| invalid("nomad_address", r))?;
    }
    let bounds = (Duration::from_millis(100), Duration::from_secs(3600));
    for (field, d) in [
        ("reconcile_interval", s.reconcile_interval),
        ("fingerprint_interval", s.fingerprint_interval),
        ("missing_grace", s.missing_grace),
        ("handoff_grace", s.handoff_grace),
        ("orphan_sweep_interval", s.orphan_sweep_interval),
    ] {
        if d < bounds.0 || d > bounds.1 {
            return Err(invalid(field, format!("{d:?} is outside 100ms..1h")));
        }
    }
    if !(s.api_budget > 0.0 && s.api_budget <= 1.0) {
        return Err(invalid(
            "api_budget",
            format!("{} is not a share in (0, 1]", s.api_budget),
        ));
    }
    if !s.state_dir.is_absolute() {
        return Err(invalid(
            "state_dir",
            format!("{} is not an absolute path", s.state_dir.display()),
        ));
    }
    Ok(())
}

/// An ECS cluster name (1-255 of letters, digits, `-`, `_`) or cluster ARN.
fn check_cluster(c: &str) -> Result<(), String> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.len() <= 255
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if let Some(rest) = c.strip_prefix("arn:") {
        let parts: Vec<&str> = rest.splitn(5, ':').collect();
        let ok = parts.len() == 5
            && parts[0].starts_with("aws")
            && parts[1] == "ecs"
            && check_region(parts[2]).is_ok()
            && parts[3].len() == 12
            && parts[3].bytes().all(|b| b.is_ascii_digit())
            && parts[4].strip_prefix("cluster/").is_some_and(name_ok);
        return if ok {
            Ok(())
        } else {
            Err(format!(
                "{c:?} is not an ECS cluster ARN (arn:aws:ecs:<region>:<account>:cluster/<name>)"
            ))
        };
    }
    if name_ok(c) {
        Ok(())
    } else {
        Err(format!(
            "{c:?} is not an ECS cluster name (1-255 letters, digits, '-' or '_') or ARN"
        ))
    }
}

/// An AWS region code such as `us-east-1` or `us-gov-west-1`.
fn check_region(r: &str) -> Result<(), String> {
    let parts: Vec<&str> = r.split('-').collect();
    let ok = parts.len() >= 3
        && parts[0].len() == 2
        && parts[0].bytes().all(|b| b.is_ascii_lowercase())
        && parts[1..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts.last().is_some_and(|p| {
            !p.is_empty() && p.len() <= 2 && p.bytes().all(|b| b.is_ascii_digit())
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{r:?} is not an AWS region code (for example \"us-east-1\")"
        ))
    }
}

fn check_url(u: &str, schemes: &[&str]) -> Result<(), String> {
    let uri: http::Uri = u.parse().map_err(|e| format!("{u:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some(s) if schemes.contains(&s) => {}
        _ => {
            return Err(format!(
                "{u:?} must start with one of {}",
                schemes
                    .iter()
                    .map(|s| format!("{s}://"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    if uri.scheme_str() != Some("unix") && uri.host().is_none_or(str::is_empty) {
        return Err(format!("{u:?} has no host"));
    }
    Ok(())
}

/// Durations as Go-style strings ("30s", "1m30s", "500ms") or plain seconds.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialize as a string figment and TOML round-trip.
    ///
    /// # Errors
    /// Never, beyond the serializer's own.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", d.as_millis()))
    }

    /// Deserialize a string or a number of seconds.
    ///
    /// # Errors
    /// A string that is not a duration, or a negative number.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) if s.is_finite() && s >= 0.0 => Ok(Duration::from_secs_f64(s)),
            Raw::Secs(s) => Err(serde::de::Error::custom(format!("{s} is not a duration"))),
            Raw::Text(t) => parse(&t).map_err(serde::de::Error::custom),
        }
    }

    /// Parse "1h2m3s", "500ms", "1.5s", or a bare number of seconds.
    ///
    /// # Errors
    /// A message naming the text that is not a duration.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let t = text.trim();
        let bad = || format!("{text:?} is not a duration (for example \"30s\", \"1m\", \"500ms\")");
        if t.is_empty() {
            return Err(bad());
        }
        if let Ok(secs) = t.parse::<f64>() {
            return if secs.is_finite() && secs >= 0.0 {
                Ok(Duration::from_secs_f64(secs))
            } else {
                Err(bad())
            };
        }
        let mut total = 0f64;
        let mut rest = t;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(bad)?;
            if num_len == 0 {
                return Err(bad());
            }
            let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
            rest = &rest[num_len..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let scale = match &rest[..unit_len] {
                "ns" => 1e-9,
                "us" | "µs" => 1e-6,
                "ms" => 1e-3,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return Err(bad()),
            };
            total += n * scale;
            rest = &rest[unit_len..];
        }
        if total.is_finite() {
            Ok(Duration::from_secs_f64(total))
        } else {
            Err(bad())
        }
    }
}

#[cfg(test)]
// figment::Jail's closures must return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;
    use serde_json::json;

    #[test]
    fn defaults_apply_when_nothing_is_configured() {
        Jail::expect_with(|_| {
            let s = load(None).map_err(|e| e.to_string())?;
            assert_eq!(s, Settings::default());
            assert!(!s.enabled);
            Ok(())
        });
    }

    #[test]
    fn layers_override_in_order_file_then_env_then_plugin_block() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "ecs.toml",
                "cluster = \"from-file\"\nregion = \"eu-west-1\"\napi_budget = 0.25\nreconcile_interval = \"20s\"\n",
            )?;
            jail.set_env(CONFIG_FILE_ENV, "ecs.toml");
            jail.set_env("NOMAD_ECS_REGION", "eu-central-1");
            jail.set_env("NOMAD_ECS_CLUSTER", "from-env");
            let block = json!({"enabled": true, "cluster": "from-block"});
            let s = load(Some(block)).map_err(|e| e.to_string())?;
            assert!(s.enabled);
            assert_eq!(s.cluster, "from-block");
            assert_eq!(s.region.as_deref(), Some("eu-central-1"));
            assert!((s.api_budget - 0.25).abs() < f64::EPSILON);
            assert_eq!(s.reconcile_interval, Duration::from_secs(20));
            Ok(())
        });
    }

    #[test]
    fn unrelated_nomad_ecs_variables_are_not_options() {
        Jail::expect_with(|jail| {
            jail.set_env("NOMAD_ECS_LOG", "debug");
            jail.set_env("NOMAD_ECS_VENV", "/x");
            load(None).map_err(|e| e.to_string())?;
            Ok(())
        });
    }

    #[test]
    fn an_unknown_key_in_the_file_is_an_error_naming_it() {
        Jail::expect_with(|jail| {
            jail.create_file("ecs.toml", "clustr = \"typo\"\n")?;
            jail.set_env(CONFIG_FILE_ENV, "ecs.toml");
            let err = load(None).unwrap_err().to_string();
            assert!(err.contains("clustr"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn an_explicit_config_file_that_is_missing_is_an_error() {
        Jail::expect_with(|jail| {
            jail.set_env(CONFIG_FILE_ENV, "nope.toml");
            assert!(matches!(load(None), Err(ConfigError::FileMissing { .. })));
            Ok(())
        });
    }

    #[test]
    fn enabled_without_a_cluster_names_the_cluster_option() {
        Jail::expect_with(|_| {
            let err = load(Some(json!({"enabled": true})))
                .unwrap_err()
                .to_string();
            assert!(err.contains("`cluster`"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn bad_values_name_the_option_and_the_layer() {
        Jail::expect_with(|jail| {
            jail.set_env("NOMAD_ECS_REGION", "Mars");
            let err = load(None).unwrap_err().to_string();
            assert!(err.contains("`region`") && err.contains("Mars"), "{err}");
            Ok(())
        });
        Jail::expect_with(|_| {
            for (block, field) in [
                (json!({"cluster": "bad name!"}), "cluster"),
                (json!({"endpoint": "ftp://x"}), "endpoint"),
                (
                    json!({"telemetry_endpoint": "collector:4317"}),
                    "telemetry_endpoint",
                ),
                (json!({"api_budget": 1.5}), "api_budget"),
                (json!({"reconcile_interval": "0s"}), "reconcile_interval"),
                (json!({"state_dir": "relative/dir"}), "state_dir"),
            ] {
                let err = load(Some(block)).unwrap_err().to_string();
                assert!(err.contains(&format!("`{field}`")), "{err}");
            }
            Ok(())
        });
    }

    #[test]
    fn a_wrong_type_is_an_error_naming_the_key() {
        Jail::expect_with(|_| {
            let err = load(Some(json!({"reconcile_interval": "soon"})))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("reconcile_interval") && err.contains("soon"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn cluster_arns_and_gov_regions_are_accepted() {
        assert!(check_cluster("arn:aws:ecs:us-east-1:123456789012:cluster/nomad").is_ok());
        assert!(check_cluster("arn:aws:ecs:us-east-1:1234:cluster/nomad").is_err());
        assert!(check_region("us-gov-west-1").is_ok());
        assert!(check_region("us-east").is_err());
    }

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(duration::parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration::parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration::parse("2"), Ok(Duration::from_secs(2)));
        assert!(duration::parse("5 parsecs").is_err());
        assert!(duration::parse("").is_err());
    }

    #[test]
    fn the_token_never_appears_in_debug_output() {
        let s = Settings {
            nomad_token: Some("s3cr3t".into()),
            ..Settings::default()
        };
        assert!(!format!("{s:?}").contains("s3cr3t"));
    }
}
