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
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/aws-credentials",
        )
        .env("NOMAD_ECS_CONFIG_FILE", "")
        .start_timeout(Duration::from_secs(20))
}

/// An emulated Nomad client for `config`.
pub fn nomad(config: &[(&str, Value)]) -> NomadClientHost {
    NomadClientHost::new(launch_options(), plugin_config(config))
        .rpc_timeout(Duration::from_secs(20))
}

/// A port on loopback that nothing listens on.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A Nomad job's task, as the client would describe it to the driver.
pub struct TaskSpec {
    /// Allocation ID.
    pub alloc_id: String,
    /// Task name.
    pub task: String,
    /// Group.
    pub group: String,
    /// Job.
    pub job: String,
    /// Allocation index.
    pub index: u32,
}

impl TaskSpec {
    /// A task `web` of group `app` in job `hello`, in a fresh allocation.
    pub fn new() -> Self {
        Self {
            alloc_id: uuid_like(),
            task: "web".into(),
            group: "app".into(),
            job: "hello".into(),
            index: 0,
        }
    }

    /// A fresh Nomad task ID for this allocation and task (new per start).
    pub fn new_task_id(&self) -> String {
        let n: u32 = rand_u32();
        format!("{}/{}/{n:08x}", self.alloc_id, self.task)
    }

    /// Nomad's TaskConfig for `task_id` with `config` (cty-msgpack bytes).
    pub fn task_config(
        &self,
        task_id: &str,
        config: Vec<u8>,
    ) -> nomad_driver_ecs::proto::drivers::TaskConfig {
        let mut env = std::collections::HashMap::new();
        env.insert("NOMAD_ALLOC_INDEX".to_string(), self.index.to_string());
        env.insert("NOMAD_ALLOC_ID".to_string(), self.alloc_id.clone());
        env.insert("NOMAD_JOB_ID".to_string(), self.job.clone());
        env.insert("NOMAD_GROUP_NAME".to_string(), self.group.clone());
        env.insert("NOMAD_TASK_NAME".to_string(), self.task.clone());
        env.insert("SECRET_TOKEN".to_string(), "do-not-store-me".to_string());
        nomad_driver_ecs::proto::drivers::TaskConfig {
            id: task_id.to_string(),
            name: self.task.clone(),
            msgpack_driver_config: config,
            env,
            alloc_dir: format!("/var/nomad/alloc/{}", self.alloc_id),
            stdout_path: "/dev/null".into(),
            stderr_path: "/dev/null".into(),
            task_group_name: self.group.clone(),
            job_name: self.job.clone(),
            alloc_id: self.alloc_id.clone(),
            job_id: self.job.clone(),
            namespace: "default".into(),
            node_name: "node-a".into(),
            node_id: uuid_like(),
            ..Default::default()
        }
    }
}

impl Default for TaskSpec {
    fn default() -> Self {
        Self::new()
    }
}

/// The task config block as Nomad encodes it for our schema: every key of
/// every object present, unset ones null, keys sorted.
pub fn ecs_task_config(
    task_definition: &str,
    subnets: &[String],
    security_groups: &[String],
) -> Vec<u8> {
    let list = |v: &[String]| Value::List(v.iter().map(|s| Value::String(s.clone())).collect());
    let vpc = Value::Map(vec![
        ("assign_public_ip".into(), Value::Null),
        ("security_groups".into(), list(security_groups)),
        ("subnets".into(), list(subnets)),
    ]);
    let net = Value::Map(vec![("aws_vpc_configuration".into(), vpc)]);
    let task = Value::Map(vec![
        ("launch_type".into(), s("FARGATE")),
        ("network_configuration".into(), net),
        ("task_definition".into(), s(task_definition)),
    ]);
    nomad_driver_ecs::cty::encode(&Value::Map(vec![("task".into(), task)]))
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish() as u32
}

/// A random UUID-shaped string.
pub fn uuid_like() -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:08x}{:04x}",
        rand_u32(),
        rand_u32() & 0xffff,
        rand_u32() & 0xfff,
        rand_u32() & 0xfff,
        rand_u32(),
        rand_u32() & 0xffff
    )
}

/// An ECS client straight to `endpoint` (moto itself, bypassing the proxy's
/// counters), with the emulator's dummy credentials.
pub fn ecs_client(endpoint: &str) -> aws_sdk_ecs::Client {
    let conf = aws_sdk_ecs::Config::builder()
        .behavior_version(aws_sdk_ecs::config::BehaviorVersion::latest())
        .region(aws_sdk_ecs::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_ecs::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .endpoint_url(endpoint)
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .build();
    aws_sdk_ecs::Client::from_conf(conf)
}

/// The ECS task ARN in a handle's `driver_state`.
pub fn arn_of(handle: &nomad_driver_ecs::proto::drivers::TaskHandle) -> String {
    nomad_driver_ecs::driver::handle::DriverState::decode(&handle.driver_state)
        .expect("our driver_state")
        .arn
}

/// The task config for the emulator's seeded task definition and network.
pub fn seeded_task_config(seed: &nomad_driver_ecs::devstack::emulator::Seed) -> Vec<u8> {
    ecs_task_config(&seed.task_definition, &seed.subnets, &seed.security_groups)
}

/// The task as moto itself holds it in cluster `nomad`, with its tags.
pub async fn moto_task(endpoint: &str, arn: &str) -> aws_sdk_ecs::types::Task {
    let out = ecs_client(endpoint)
        .describe_tasks()
        .cluster("nomad")
        .tasks(arn)
        .include(aws_sdk_ecs::types::TaskField::Tags)
        .send()
        .await
        .unwrap();
    out.tasks()[0].clone()
}

/// The value of a task's tag.
pub fn tag<'a>(task: &'a aws_sdk_ecs::types::Task, key: &str) -> Option<&'a str> {
    task.tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}
