//! Shared fixtures for the integration tests: the built plugin binary, agent
//! plugin configs encoded the way Nomad encodes them, and launch options with
//! a hermetic AWS environment.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use nomad_driver_ecs::cty::{Number, Value};
use nomad_driver_ecs::devstack::host::{LaunchOptions, NomadClientHost};

/// The plugin binary cargo built for these tests.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nomad-driver-ecs"))
}

/// A cty string.
pub fn s(v: &str) -> Value {
    Value::String(v.to_string())
}

/// A cty bool.
pub fn b(v: bool) -> Value {
    Value::Bool(v)
}

/// A cty number.
pub fn n(v: i64) -> Value {
    Value::Number(Number::Int(v))
}

/// The agent plugin block as Nomad sends it: every schema key present,
/// null unless given, encoded with cty's msgpack rules.
pub fn plugin_config(pairs: &[(&str, Value)]) -> Vec<u8> {
    let mut map: Vec<(String, Value)> = nomad_driver_ecs::config::KEYS
        .iter()
        .map(|k| ((*k).to_string(), Value::Null))
        .collect();
    for (k, v) in pairs {
        match map.iter_mut().find(|(key, _)| key == k) {
            Some(slot) => slot.1 = v.clone(),
            None => map.push(((*k).to_string(), v.clone())),
        }
    }
    nomad_driver_ecs::cty::encode(&Value::Map(map))
}

/// An enabled config against `endpoint` for `cluster` in us-east-1, with its
/// own state directory and a fast fingerprint.
pub fn ecs_config(endpoint: &str, cluster: &str, state_dir: &Path) -> Vec<(&'static str, Value)> {
    vec![
        ("enabled", b(true)),
        ("cluster", s(cluster)),
        ("region", s("us-east-1")),
        ("endpoint", s(endpoint)),
        ("state_dir", s(state_dir.to_str().unwrap())),
        ("fingerprint_interval", s("1s")),
    ]
}

/// Launch options with static dummy credentials and no instance-metadata
/// lookups, so nothing leaves loopback.
pub fn launch_options() -> LaunchOptions {
    LaunchOptions::new(binary())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        .env("NOMAD_ECS_CONFIG_FILE", "")
        .start_timeout(Duration::from_secs(20))
}

/// An emulated Nomad client for `config`.
pub fn nomad(config: &[(&str, Value)]) -> NomadClientHost {
    NomadClientHost::new(launch_options(), plugin_config(config)).rpc_timeout(Duration::from_secs(20))
}

/// A port on loopback that nothing listens on.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}
