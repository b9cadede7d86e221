//! The real binary under the emulated Nomad host: the go-plugin contract,
//! every base RPC, the driver RPCs of the foundation, and bad input of every
//! kind. Fingerprint tests run against moto on loopback.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use nomad_driver_ecs::cty::Value;
use nomad_driver_ecs::devstack::emulator;
use nomad_driver_ecs::devstack::host::{
    ExitPath, HostError, Launch, LoadError, PluginProcess, ServingStatus, default_nomad_config,
};
use nomad_driver_ecs::proto::base::{self, PluginType};
use nomad_driver_ecs::proto::drivers as pb;
use nomad_driver_ecs::proto::hclspec::spec::Block;
use nomad_driver_ecs::proto::structs::attribute;
use pb::fingerprint_response::HealthState;
use support::*;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(20);

fn attr_string(fp: &pb::FingerprintResponse, key: &str) -> Option<String> {
    fp.attributes.get(key).and_then(|a| match &a.value {
        Some(attribute::Value::StringVal(s)) => Some(s.clone()),
        Some(attribute::Value::BoolVal(b)) => Some(b.to_string()),
        _ => None,
    })
}

async fn launch() -> PluginProcess {
    PluginProcess::launch(launch_options())
        .await
        .expect("plugin launches")
}

async fn set_config(
    p: &PluginProcess,
    config: &[(&str, Value)],
    for_real: bool,
) -> Result<(), tonic::Status> {
    p.base()
        .set_config(base::SetConfigRequest {
            msgpack_config: plugin_config(config),
            nomad_config: for_real.then(default_nomad_config),
            plugin_api_version: "v0.1.0".into(),
        })
        .await
        .map(|_| ())
}

async fn set_config_bytes(p: &PluginProcess, bytes: Vec<u8>) -> tonic::Status {
    p.base()
        .set_config(base::SetConfigRequest {
            msgpack_config: bytes,
            nomad_config: None,
            plugin_api_version: "v0.1.0".into(),
        })
        .await
        .expect_err("bad config is rejected")
}

#[tokio::test]
async fn the_handshake_line_is_the_only_stdout_and_names_a_private_unix_socket() {
    let p = launch().await;
    let line = p.handshake_line().to_string();
    let parts: Vec<&str> = line.split('|').collect();
    assert_eq!(parts.len(), 5, "{line}");
    assert_eq!(
        (parts[0], parts[1], parts[2], parts[4]),
        ("1", "2", "unix", "grpc")
    );
    let socket = p.socket_path().expect("unix socket").to_path_buf();
    let dir_mode = std::fs::metadata(socket.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700, "socket directory must be private");
    assert_eq!(p.health().await.unwrap(), ServingStatus::Serving);
    let _ = p
        .base()
        .plugin_info(base::PluginInfoRequest {})
        .await
        .unwrap();
    let report = p.kill().await;
    assert!(report.exited_gracefully(), "{report:?}");
    assert!(report.pipes_closed);
    assert!(!socket.exists(), "socket removed on exit");
}

#[tokio::test]
async fn plugin_info_names_an_ecs_driver_with_api_v010_and_a_semver() {
    let p = launch().await;
    let info = p
        .base()
        .plugin_info(base::PluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.r#type, PluginType::Driver as i32);
    assert_eq!(info.plugin_api_versions, vec!["v0.1.0".to_string()]);
    assert_eq!(info.name, "ecs");
    assert_eq!(info.plugin_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(info.plugin_version.split('.').count(), 3);
    p.kill().await;
}

#[tokio::test]
async fn nomads_full_load_sequence_succeeds_and_the_validation_launch_leaves_no_state() {
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("ecs");
    let nomad = nomad(&[("state_dir", s(state_dir.to_str().unwrap()))]);
    let facts = nomad.fingerprint_launch().await.expect("launch #1");
    assert_eq!(facts.plugin_info.name, "ecs");
    let schema = facts.config_schema.clone().expect("a config schema");
    let Some(Block::Object(obj)) = schema.block else {
        panic!("root must be an object: {schema:?}")
    };
    for key in [
        "enabled",
        "cluster",
        "region",
        "endpoint",
        "state_dir",
        "reconcile_interval",
        "api_budget",
        "nomad_address",
        "nomad_token",
    ] {
        assert!(
            obj.attributes.contains_key(key),
            "config schema lacks {key}"
        );
    }
    assert!(facts.report.kill.exited_gracefully());
    let validation = nomad
        .validation_launch(&facts)
        .await
        .expect("launch #2: SetConfig twice")
        .expect("has schema");
    assert!(validation.kill.exited_gracefully());
    assert!(
        validation.log_line_problems.is_empty(),
        "{:?}",
        validation.log_line_problems
    );
    assert!(
        !state_dir.exists(),
        "the validation launch must not open the state directory"
    );
    let mut instance = nomad
        .instance_launch(&facts.api_version)
        .await
        .expect("launch #3");
    let fp = instance
        .next_fingerprint(WAIT)
        .await
        .expect("first fingerprint at once");
    assert_eq!(fp.health, HealthState::Undetected as i32);
    assert_eq!(fp.health_description, "disabled");
    let shut = instance.shutdown().await;
    assert!(shut.driver_shutdown.is_ok());
    assert!(shut.kill.exited_gracefully());
}

#[tokio::test]
async fn set_config_twice_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let p = launch().await;
    let cfg = ecs_config(
        &format!("http://127.0.0.1:{}", closed_port()),
        "nomad",
        dir.path(),
    );
    set_config(&p, &cfg, true).await.unwrap();
    set_config(&p, &cfg, true).await.unwrap();
    assert!(
        dir.path().join("LOCK").exists(),
        "the real launch holds the state directory"
    );
    p.kill().await;
}

#[tokio::test]
async fn task_config_schema_is_upstreams_task_block() {
    let p = launch().await;
    let spec = p
        .driver()
        .task_config_schema(pb::TaskConfigSchemaRequest {})
        .await
        .unwrap()
        .into_inner()
        .spec
        .unwrap();
    let Some(Block::Object(root)) = spec.block else {
        panic!("root object")
    };
    let Some(Block::BlockValue(task)) = &root.attributes["task"].block else {
        panic!("task is a block")
    };
    assert_eq!(task.name, "task");
    let Some(Block::Object(t)) = &task.nested.as_ref().unwrap().block else {
        panic!("task body")
    };
    for key in ["launch_type", "task_definition", "network_configuration"] {
        assert!(t.attributes.contains_key(key), "task lacks {key}");
    }
    let Some(Block::BlockValue(net)) = &t.attributes["network_configuration"].block else {
        panic!()
    };
    let Some(Block::Object(n)) = &net.nested.as_ref().unwrap().block else {
        panic!()
    };
    let Some(Block::BlockValue(vpc)) = &n.attributes["aws_vpc_configuration"].block else {
        panic!()
    };
    let Some(Block::Object(v)) = &vpc.nested.as_ref().unwrap().block else {
        panic!()
    };
    let Some(Block::Attr(subnets)) = &v.attributes["subnets"].block else {
        panic!()
    };
    assert_eq!(subnets.r#type, "list(string)");
    assert!(
        v.attributes.contains_key("security_groups")
            && v.attributes.contains_key("assign_public_ip")
    );
    p.kill().await;
}

#[tokio::test]
async fn capabilities_declare_remote_tasks_and_no_signals_exec_or_mounts() {
    let p = launch().await;
    let caps = p
        .driver()
        .capabilities(pb::CapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities
        .unwrap();
    assert!(!caps.send_signals && !caps.exec);
    assert!(caps.remote_tasks);
    assert_eq!(
        caps.fs_isolation,
        pb::driver_capabilities::FsIsolation::None as i32
    );
    assert_eq!(
        caps.mount_configs,
        pb::driver_capabilities::MountConfigs::NoMounts as i32
    );
    p.kill().await;
}

#[tokio::test]
async fn fingerprint_is_healthy_against_an_active_cluster_with_attributes() {
    let emu = emulator::start_default("nomad").await.expect("moto");
    let dir = tempfile::tempdir().unwrap();
    let nomad = nomad(&ecs_config(emu.endpoint(), "nomad", dir.path()));
    let mut loaded = nomad.load().await.expect("load sequence");
    let fp = loaded.instance.next_fingerprint(WAIT).await.unwrap();
    assert_eq!(
        fp.health,
        HealthState::Healthy as i32,
        "{}",
        fp.health_description
    );
    assert_eq!(fp.health_description, "Healthy");
    assert_eq!(attr_string(&fp, "driver.ecs").as_deref(), Some("true"));
    assert_eq!(
        attr_string(&fp, "driver.ecs.cluster").as_deref(),
        Some("nomad")
    );
    assert_eq!(
        attr_string(&fp, "driver.ecs.region").as_deref(),
        Some("us-east-1")
    );
    assert_eq!(
        attr_string(&fp, "driver.ecs.version").as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        attr_string(&fp, "driver.ecs.cluster_arn").as_deref(),
        Some(emu.seed().cluster_arn.as_str())
    );
    // The stream stays open and repeats (fingerprint_interval = 1s).
    let again = loaded.instance.next_fingerprint(WAIT).await.unwrap();
    assert_eq!(again.health, HealthState::Healthy as i32);
    let problems = loaded.instance.process().log_line_problems();
    assert!(problems.is_empty(), "{problems:?}");
    loaded.instance.shutdown().await;
}

#[tokio::test]
async fn fingerprint_is_unhealthy_for_a_missing_cluster_and_says_so() {
    let emu = emulator::start_default("nomad").await.expect("moto");
    let dir = tempfile::tempdir().unwrap();
    let mut loaded = nomad(&ecs_config(emu.endpoint(), "no-such-cluster", dir.path()))
        .load()
        .await
        .unwrap();
    let fp = loaded.instance.next_fingerprint(WAIT).await.unwrap();
    assert_eq!(fp.health, HealthState::Unhealthy as i32);
    assert!(
        fp.health_description
            .contains("\"no-such-cluster\" does not exist"),
        "{}",
        fp.health_description
    );
    assert_eq!(attr_string(&fp, "driver.ecs").as_deref(), Some("false"));
    loaded.instance.shutdown().await;
}

#[tokio::test]
async fn fingerprint_is_unhealthy_for_a_closed_port_naming_the_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let mut loaded = nomad(&ecs_config(&endpoint, "nomad", dir.path()))
        .load()
        .await
        .unwrap();
    let fp = loaded.instance.next_fingerprint(WAIT).await.unwrap();
    assert_eq!(fp.health, HealthState::Unhealthy as i32);
    assert!(
        fp.health_description
            .contains("cannot reach the ECS endpoint")
            && fp.health_description.contains(&endpoint),
        "{}",
        fp.health_description
    );
    // The plugin keeps serving.
    assert_eq!(
        loaded.instance.process().health().await.unwrap(),
        ServingStatus::Serving
    );
    loaded.instance.shutdown().await;
}

#[tokio::test]
async fn fingerprint_without_credentials_is_unhealthy_and_names_credentials() {
    let emu = emulator::start_default("nomad").await.expect("moto");
    let dir = tempfile::tempdir().unwrap();
    let opts = launch_options()
        .env("AWS_ACCESS_KEY_ID", "")
        .env("AWS_SECRET_ACCESS_KEY", "")
        .env("HOME", dir.path().to_str().unwrap());
    let p = PluginProcess::launch(opts).await.unwrap();
    set_config(&p, &ecs_config(emu.endpoint(), "nomad", dir.path()), true)
        .await
        .unwrap();
    let mut stream = p
        .driver()
        .fingerprint(pb::FingerprintRequest {})
        .await
        .unwrap()
        .into_inner();
    let fp = tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(fp.health, HealthState::Unhealthy as i32);
    assert!(
        fp.health_description.contains("credentials"),
        "{}",
        fp.health_description
    );
    p.kill().await;
}

#[tokio::test]
async fn fingerprint_follows_a_config_change_at_once() {
    let emu = emulator::start_default("nomad").await.expect("moto");
    let dir = tempfile::tempdir().unwrap();
    let p = launch().await;
    let mut cfg = ecs_config(emu.endpoint(), "nomad", dir.path());
    cfg.push(("fingerprint_interval", s("1h")));
    set_config(&p, &cfg, true).await.unwrap();
    let mut stream = p
        .driver()
        .fingerprint(pb::FingerprintRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        first.health,
        HealthState::Healthy as i32,
        "{}",
        first.health_description
    );
    let mut disabled = cfg.clone();
    disabled.push(("enabled", b(false)));
    set_config(&p, &disabled, true).await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("no 1h wait")
        .unwrap()
        .unwrap();
    assert_eq!(second.health, HealthState::Undetected as i32);
    assert_eq!(second.health_description, "disabled");
    p.kill().await;
}

#[tokio::test]
async fn lifecycle_rpcs_answer_bad_requests_and_unconfigured_drivers_clearly() {
    let p = launch().await;
    let err = p
        .driver()
        .start_task(pb::StartTaskRequest { task: None })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("StartTask") && err.message().contains("task"),
        "{}",
        err.message()
    );
    // Unknown tasks: stop and destroy succeed quietly, wait and inspect say not found.
    let id = "no-such-alloc/web/00000000".to_string();
    p.driver()
        .stop_task(pb::StopTaskRequest {
            task_id: id.clone(),
            timeout: None,
            signal: String::new(),
        })
        .await
        .unwrap();
    p.driver()
        .destroy_task(pb::DestroyTaskRequest {
            task_id: id.clone(),
            force: true,
        })
        .await
        .unwrap();
    assert_eq!(
        p.driver()
            .wait_task(pb::WaitTaskRequest {
                task_id: id.clone()
            })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        p.driver()
            .inspect_task(pb::InspectTaskRequest { task_id: id })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(p.health().await.unwrap(), ServingStatus::Serving);
    p.kill().await;
}

#[tokio::test]
async fn sigint_is_ignored_and_shutdown_exits_within_two_seconds() {
    let p = launch().await;
    p.signal(libc::SIGINT).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        p.health().await.unwrap(),
        ServingStatus::Serving,
        "SIGINT must not stop the plugin"
    );
    let out = p.kill().await;
    assert_eq!(out.path, ExitPath::Graceful);
    assert!(out.status.unwrap().success());
    assert!(out.elapsed < Duration::from_secs(2), "{:?}", out.elapsed);
}

#[test]
fn the_plugin_exits_cleanly_once_its_host_is_gone() {
    use std::io::{BufRead as _, Write as _};
    use std::process::{Command, Stdio};
    // A crashed agent: our ends of the pipes and the connection vanish while
    // the plugin keeps running. With nobody reattaching it must exit 0.
    let mut child = Command::new(binary())
        .env(
            nomad_driver_ecs::plugin::handshake::COOKIE_KEY,
            nomad_driver_ecs::plugin::handshake::COOKIE_VALUE,
        )
        .env("PLUGIN_PROTOCOL_VERSIONS", "2")
        .env("NOMAD_ECS_HOST_GONE_GRACE", "0.2")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let path = line.trim().split('|').nth(3).unwrap().to_string();
    let mut conn = std::os::unix::net::UnixStream::connect(&path).unwrap();
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(child.stderr.take());
    drop(conn);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the plugin kept running without its host");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
    assert!(!std::path::Path::new(&path).exists(), "socket removed");
}

#[tokio::test]
async fn two_plugins_with_their_own_state_dirs_run_side_by_side_but_not_on_one() {
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let (a, b, c) = (launch().await, launch().await, launch().await);
    set_config(&a, &ecs_config(&endpoint, "nomad", a_dir.path()), true)
        .await
        .unwrap();
    set_config(&b, &ecs_config(&endpoint, "nomad", b_dir.path()), true)
        .await
        .unwrap();
    let err = set_config(&c, &ecs_config(&endpoint, "nomad", a_dir.path()), true)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("in use by another live")
            && err.message().contains(&format!("pid {}", a.pid())),
        "{}",
        err.message()
    );
    assert_eq!(c.health().await.unwrap(), ServingStatus::Serving);
    a.kill().await;
    // Once the holder is gone the directory is free again.
    set_config(&c, &ecs_config(&endpoint, "nomad", a_dir.path()), true)
        .await
        .unwrap();
    b.kill().await;
    c.kill().await;
}

#[tokio::test]
async fn a_missing_or_wrong_cookie_is_refused_on_stderr_with_exit_1() {
    for opts in [
        launch_options().without_cookie(),
        launch_options().cookie("not-nomads"),
    ] {
        match PluginProcess::launch(opts).await {
            Err(HostError::ExitedBeforeHandshake { status, stderr }) => {
                assert_eq!(status.code(), Some(1));
                assert!(stderr.contains("NOMAD_PLUGIN_MAGIC_COOKIE"), "{stderr}");
                assert!(stderr.contains("plugin"), "{stderr}");
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("a plugin without the cookie must not start"),
        }
    }
}

#[tokio::test]
async fn unknown_protocol_versions_are_refused_naming_them() {
    match PluginProcess::launch(launch_options().protocol_versions("1,3")).await {
        Err(HostError::ExitedBeforeHandshake { status, stderr }) => {
            assert_eq!(status.code(), Some(1));
            assert!(
                stderr.contains("\"1,3\"") && stderr.contains("version 2"),
                "{stderr}"
            );
        }
        other => panic!("expected a refusal, got {:?}", other.err()),
    }
}

#[tokio::test]
async fn malformed_and_truncated_msgpack_is_rejected_and_the_plugin_keeps_serving() {
    let p = launch().await;
    let good = plugin_config(&[("cluster", s("nomad"))]);
    for bytes in [
        vec![0xc1],
        good[..good.len() / 2].to_vec(),
        vec![0x93, 0x01],
        {
            let mut g = good.clone();
            g.push(0x00);
            g
        },
    ] {
        let st = set_config_bytes(&p, bytes).await;
        assert_eq!(st.code(), Code::InvalidArgument);
        assert!(
            st.message().contains("SetConfig failed"),
            "{}",
            st.message()
        );
    }
    assert_eq!(p.health().await.unwrap(), ServingStatus::Serving);
    set_config(&p, &[("cluster", s("nomad"))], false)
        .await
        .expect("a good config still works");
    p.kill().await;
}

#[tokio::test]
async fn wrong_types_and_unknown_keys_name_the_field() {
    let p = launch().await;
    let st = set_config_bytes(&p, plugin_config(&[("cluster", b(true))])).await;
    assert!(
        st.message().contains("cluster") && st.message().contains("expected string"),
        "{}",
        st.message()
    );
    let st = set_config_bytes(&p, plugin_config(&[("clustr", s("typo"))])).await;
    assert!(st.message().contains("clustr"), "{}", st.message());
    let st = set_config_bytes(&p, plugin_config(&[("api_budget", s("lots"))])).await;
    assert!(st.message().contains("api_budget"), "{}", st.message());
    // A number that arrives as a string (cty does this for 0.1) is accepted.
    set_config(&p, &[("api_budget", s("0.1"))], false)
        .await
        .expect("numeric string accepted");
    set_config(&p, &[("api_budget", n(1))], false)
        .await
        .expect("integer accepted");
    p.kill().await;
}

#[tokio::test]
async fn empty_or_invalid_cluster_and_region_are_rejected_naming_them() {
    let p = launch().await;
    for (cfg, field) in [
        (vec![("enabled", b(true))], "`cluster`"),
        (vec![("enabled", b(true)), ("cluster", s(""))], "`cluster`"),
        (vec![("cluster", s("has spaces"))], "`cluster`"),
        (
            vec![("cluster", s("nomad")), ("region", s("moon-base"))],
            "`region`",
        ),
        (
            vec![("cluster", s("nomad")), ("endpoint", s("not a url"))],
            "`endpoint`",
        ),
    ] {
        let st = set_config(&p, &cfg, false).await.unwrap_err();
        assert_eq!(st.code(), Code::InvalidArgument);
        assert!(st.message().contains(field), "{}: {}", field, st.message());
    }
    assert_eq!(p.health().await.unwrap(), ServingStatus::Serving);
    p.kill().await;
}

#[tokio::test]
async fn an_unknown_plugin_api_version_is_rejected() {
    let p = launch().await;
    let st = p
        .base()
        .set_config(base::SetConfigRequest {
            msgpack_config: plugin_config(&[]),
            nomad_config: None,
            plugin_api_version: "v9.0.0".into(),
        })
        .await
        .unwrap_err();
    assert!(st.message().contains("v9.0.0"), "{}", st.message());
    p.kill().await;
}

#[tokio::test]
async fn every_stderr_line_is_valid_hclog_json() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let mut loaded = nomad(&ecs_config(&endpoint, "nomad", dir.path()))
        .load()
        .await
        .unwrap();
    let _ = loaded.instance.next_fingerprint(WAIT).await.unwrap();
    let _ = nomad_driver_ecs::devstack::host::Launch::Instance;
    let lines = loaded.instance.process().stderr_lines();
    assert!(!lines.is_empty());
    let problems = loaded.instance.process().log_line_problems();
    assert!(problems.is_empty(), "{problems:?}");
    loaded.instance.shutdown().await;
}

#[allow(dead_code)]
fn _uses(_: Launch, _: LoadError) {}
