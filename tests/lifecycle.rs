//! End-to-end task lifecycle: the real binary under the emulated Nomad host,
//! moto behind the fidelity and fault proxy.

mod support;

use std::time::Duration;

use nomad_driver_ecs::devstack::ecs_proxy::{EcsProxy, Fault};
use nomad_driver_ecs::devstack::emulator::{self, RunningEmulator};
use nomad_driver_ecs::devstack::host::{
    DriverInstance, NomadClientHost, PluginProcess, default_nomad_config,
};
use nomad_driver_ecs::proto::base;
use nomad_driver_ecs::proto::drivers as pb;
use nomad_driver_ecs::rpc::status::is_recoverable;
use support::*;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);

struct Stack {
    emu: RunningEmulator,
    proxy: EcsProxy,
    state: tempfile::TempDir,
    _nomad: NomadClientHost,
    node: DriverInstance,
}

fn config(
    endpoint: &str,
    state: &std::path::Path,
) -> Vec<(&'static str, nomad_driver_ecs::cty::Value)> {
    let mut cfg = ecs_config(endpoint, "nomad", state);
    cfg.push(("reconcile_interval", s("1s")));
    cfg.push(("missing_grace", s("20s")));
    cfg
}

async fn stack() -> Stack {
    stack_with(&[]).await
}

/// A stack whose plugin config adds (or overrides) `extra`.
async fn stack_with(extra: &[(&'static str, nomad_driver_ecs::cty::Value)]) -> Stack {
    let emu = emulator::start_default("nomad").await.expect("moto");
    let proxy = EcsProxy::start(emu.endpoint()).await.expect("proxy");
    let state = tempfile::tempdir().unwrap();
    let mut cfg = config(&proxy.endpoint(), state.path());
    cfg.extend(extra.iter().cloned());
    let nomad = nomad(&cfg);
    let loaded = nomad.load().await.expect("load sequence");
    Stack {
        emu,
        proxy,
        state,
        _nomad: nomad,
        node: loaded.instance,
    }
}

impl Stack {
    fn driver(&self) -> pb::driver_client::DriverClient<tonic::transport::Channel> {
        self.node.driver()
    }

    fn task_config(&self) -> Vec<u8> {
        seeded_task_config(self.emu.seed())
    }

    async fn start(&self, spec: &TaskSpec, task_id: &str) -> Result<pb::TaskHandle, tonic::Status> {
        let cfg = spec.task_config(task_id, self.task_config());
        let resp = self
            .driver()
            .start_task(pb::StartTaskRequest { task: Some(cfg) })
            .await?
            .into_inner();
        Ok(resp.handle.expect("a handle"))
    }

    async fn wait(&self, task_id: &str) -> pb::WaitTaskResponse {
        tokio::time::timeout(
            WAIT,
            self.driver().wait_task(pb::WaitTaskRequest {
                task_id: task_id.into(),
            }),
        )
        .await
        .expect("WaitTask returns")
        .expect("WaitTask succeeds")
        .into_inner()
    }

    async fn stop(&self, task_id: &str, signal: &str) {
        self.driver()
            .stop_task(pb::StopTaskRequest {
                task_id: task_id.into(),
                timeout: Some(prost_types::Duration {
                    seconds: 10,
                    nanos: 0,
                }),
                signal: signal.into(),
            })
            .await
            .expect("StopTask succeeds");
    }

    async fn destroy(&self, task_id: &str) {
        self.driver()
            .destroy_task(pb::DestroyTaskRequest {
                task_id: task_id.into(),
                force: true,
            })
            .await
            .expect("DestroyTask");
    }

    async fn inspect(&self, task_id: &str) -> Result<pb::InspectTaskResponse, tonic::Status> {
        self.driver()
            .inspect_task(pb::InspectTaskRequest {
                task_id: task_id.into(),
            })
            .await
            .map(|r| r.into_inner())
    }

    /// The task as moto itself holds it (bypassing the proxy's counters).
    async fn ecs_task(&self, arn: &str) -> aws_sdk_ecs::types::Task {
        moto_task(self.emu.endpoint(), arn).await
    }

    async fn tasks_started_by(&self, started_by: &str) -> Vec<String> {
        let c = ecs_client(self.emu.endpoint());
        let mut all = Vec::new();
        for st in [
            aws_sdk_ecs::types::DesiredStatus::Running,
            aws_sdk_ecs::types::DesiredStatus::Stopped,
        ] {
            let out = c
                .list_tasks()
                .cluster("nomad")
                .started_by(started_by)
                .desired_status(st)
                .send()
                .await
                .unwrap();
            all.extend(out.task_arns().iter().cloned());
        }
        all
    }
}

#[tokio::test]
async fn a_task_starts_runs_in_ecs_and_stops_cleanly() {
    let st = stack().await;
    let spec = TaskSpec::new();
    let id = spec.new_task_id();
    let handle = st.start(&spec, &id).await.expect("StartTask");
    assert_eq!(handle.version, 1);
    assert_eq!(
        handle.config.as_ref().unwrap().id,
        id,
        "the handle echoes the task ID"
    );
    assert_eq!(handle.state, pb::TaskState::Running as i32);
    let arn = arn_of(&handle);
    assert!(arn.contains(":task/nomad/"), "{arn}");
    let raw = String::from_utf8_lossy(&handle.driver_state);
    assert!(
        !raw.contains("do-not-store-me"),
        "no environment values in driver_state"
    );

    let run = st
        .proxy
        .last_request("RunTask")
        .expect("RunTask was called");
    assert_eq!(
        run["clientToken"].as_str(),
        Some(nomad_driver_ecs::driver::lifecycle::client_token(&id).as_str()),
        "our deterministic token, stored before the call"
    );
    assert!(run["startedBy"].as_str().unwrap().starts_with("nomad-"));
    let ecs = st.ecs_task(&arn).await;
    assert_eq!(tag(&ecs, "nomad:alloc-id"), Some(spec.alloc_id.as_str()));
    assert_eq!(tag(&ecs, "nomad:task-id"), Some(id.as_str()));
    assert_eq!(tag(&ecs, "nomad:driver"), Some("nomad-driver-ecs"));

    let status = st.inspect(&id).await.unwrap().task.unwrap();
    assert_eq!(status.state, pb::TaskState::Running as i32);
    assert!(
        status.started_at.is_some() && status.completed_at.is_some() && status.result.is_some()
    );

    st.stop(&id, "SIGTERM").await;
    let exit = st.wait(&id).await;
    assert_eq!(
        exit.result.unwrap().exit_code,
        0,
        "a stop Nomad asked for exits cleanly: {}",
        exit.err
    );
    assert_eq!(st.ecs_task(&arn).await.last_status(), Some("STOPPED"));
    let stop = st
        .proxy
        .last_request("StopTask")
        .expect("StopTask was called");
    assert!(
        stop["reason"].as_str().unwrap().contains(&spec.alloc_id),
        "{stop}"
    );

    st.destroy(&id).await;
    assert_eq!(st.inspect(&id).await.unwrap_err().code(), Code::NotFound);
    // Stop and destroy of an unknown task succeed quietly.
    st.stop(&id, "SIGTERM").await;
    st.destroy(&id).await;
    assert_eq!(st.proxy.calls("RunTask"), 1);
    st.node.shutdown().await;
}

#[tokio::test]
async fn container_exit_codes_reach_nomad() {
    let st = stack().await;
    for code in [0, 3] {
        let spec = TaskSpec::new();
        let id = spec.new_task_id();
        let arn = arn_of(&st.start(&spec, &id).await.unwrap());
        st.proxy.exit_task(&arn, code).await.unwrap();
        let exit = st.wait(&id).await;
        let result = exit.result.unwrap();
        assert_eq!(result.exit_code, code);
        assert!(!result.oom_killed);
        if code == 0 {
            assert!(exit.err.is_empty(), "{}", exit.err);
        } else {
            assert!(
                exit.err.contains("Essential container in task exited"),
                "{}",
                exit.err
            );
        }
        // WaitTask after the exit answers at once, and again.
        assert_eq!(st.wait(&id).await.result.unwrap().exit_code, code);
        let status = st.inspect(&id).await.unwrap().task.unwrap();
        assert_eq!(status.state, pb::TaskState::Exited as i32);
        st.destroy(&id).await;
    }
    st.node.shutdown().await;
}

#[tokio::test]
async fn an_oom_kill_is_reported_as_such() {
    let st = stack().await;
    let spec = TaskSpec::new();
    let id = spec.new_task_id();
    let arn = arn_of(&st.start(&spec, &id).await.unwrap());
    st.proxy.oom_kill_task(&arn).await.unwrap();
    let exit = st.wait(&id).await;
    let r = exit.result.unwrap();
    assert!(r.oom_killed);
    assert_eq!(r.exit_code, 137);
    assert!(exit.err.contains("OutOfMemoryError"), "{}", exit.err);
    st.node.shutdown().await;
}

#[tokio::test]
async fn a_restart_starts_a_new_ecs_task_and_cleans_the_old_record() {
    let st = stack().await;
    let spec = TaskSpec::new();
    let first = spec.new_task_id();
    let arn1 = arn_of(&st.start(&spec, &first).await.unwrap());
    st.proxy.exit_task(&arn1, 3).await.unwrap();
    assert_eq!(st.wait(&first).await.result.unwrap().exit_code, 3);
    // Nomad's restart: DestroyTask(force) of the old, then StartTask anew.
    st.destroy(&first).await;
    let second = spec.new_task_id();
    let arn2 = arn_of(&st.start(&spec, &second).await.unwrap());
    assert_ne!(arn1, arn2);
    assert_eq!(
        st.inspect(&first).await.unwrap_err().code(),
        Code::NotFound,
        "the old record is gone"
    );
    assert_eq!(
        st.inspect(&second).await.unwrap().task.unwrap().state,
        pb::TaskState::Running as i32
    );
    st.node.shutdown().await;
}

#[tokio::test]
async fn an_invalid_task_config_is_rejected_before_any_ecs_call() {
    let st = stack().await;
    let spec = TaskSpec::new();
    let bad = ecs_task_config("", &[], &[]);
    let cfg = spec.task_config(&spec.new_task_id(), bad);
    let err = st
        .driver()
        .start_task(pb::StartTaskRequest { task: Some(cfg) })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("task.task_definition"),
        "{}",
        err.message()
    );
    assert!(
        !is_recoverable(&err),
        "a bad config does not heal by restarting"
    );
    let garbage = spec.task_config(
        &spec.new_task_id(),
        vec![0x81, 0xa4, b't', b'a', b's', b'k', 0x07],
    );
    let err = st
        .driver()
        .start_task(pb::StartTaskRequest {
            task: Some(garbage),
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("task"), "{}", err.message());
    assert_eq!(st.proxy.calls("RunTask"), 0);
    st.node.shutdown().await;
}

#[tokio::test]
async fn a_placement_failure_is_recoverable() {
    let st = stack().await;
    let spec = TaskSpec::new();
    let cfg = spec.task_config(
        &spec.new_task_id(),
        ecs_task_config("no-such-family:1", &st.emu.seed().subnets, &[]),
    );
    let err = st
        .driver()
        .start_task(pb::StartTaskRequest { task: Some(cfg) })
        .await
        .unwrap_err();
    assert!(
        err.message().contains("task definition") || err.message().contains("ClientException"),
        "{}",
        err.message()
    );
    st.node.shutdown().await;
}

#[tokio::test]
async fn throttling_and_server_errors_never_reach_nomad() {
    let st = stack().await;
    st.proxy.inject(Some("RunTask"), Fault::Throttle, 2);
    st.proxy.inject(Some("RunTask"), Fault::ServerError, 1);
    st.proxy.inject(Some("DescribeTasks"), Fault::Throttle, 3);
    st.proxy
        .inject(Some("DescribeTasks"), Fault::ServiceUnavailable, 2);
    let spec = TaskSpec::new();
    let id = spec.new_task_id();
    let arn = arn_of(
        &st.start(&spec, &id)
            .await
            .expect("StartTask survives throttling"),
    );
    st.proxy.inject(Some("StopTask"), Fault::Throttle, 2);
    st.proxy.inject(None, Fault::ServerError, 2);
    st.proxy.exit_task(&arn, 0).await.unwrap();
    let exit = st.wait(&id).await;
    assert_eq!(exit.result.unwrap().exit_code, 0, "{}", exit.err);
    assert!(
        st.proxy.calls("RunTask") >= 4,
        "the faults were consumed: {:?}",
        st.proxy.all_calls()
    );
    let started_by = st.ecs_task(&arn).await.started_by().unwrap().to_string();
    assert_eq!(
        st.tasks_started_by(&started_by).await.len(),
        1,
        "one ECS task"
    );
    st.node.shutdown().await;
}

#[tokio::test]
async fn missing_right_after_launch_is_tolerated() {
    let st = stack().await;
    st.proxy.set_missing_after_launch(3);
    let spec = TaskSpec::new();
    let id = spec.new_task_id();
    let arn = arn_of(&st.start(&spec, &id).await.unwrap());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = st.inspect(&id).await.unwrap().task.unwrap();
    assert_eq!(
        status.state,
        pb::TaskState::Running as i32,
        "MISSING within the grace period is not an exit"
    );
    st.proxy.exit_task(&arn, 0).await.unwrap();
    assert_eq!(st.wait(&id).await.result.unwrap().exit_code, 0);
    st.node.shutdown().await;
}

/// A second plugin process of the same node (same state directory), as
/// Nomad launches after the first one died.
async fn relaunch(st: &Stack) -> PluginProcess {
    let p = PluginProcess::launch(launch_options())
        .await
        .expect("relaunch");
    p.base()
        .set_config(base::SetConfigRequest {
            msgpack_config: plugin_config(&config(&st.proxy.endpoint(), st.state.path())),
            nomad_config: Some(default_nomad_config()),
            plugin_api_version: "v0.1.0".into(),
        })
        .await
        .expect("SetConfig on the relaunched plugin");
    p
}

#[tokio::test]
async fn a_sigkilled_plugin_recovers_its_task_and_wait_still_completes() {
    let mut st = stack().await;
    let spec = TaskSpec::new();
    let id = spec.new_task_id();
    let mut handle = st.start(&spec, &id).await.unwrap();
    let arn = arn_of(&handle);
    st.node.process_mut().sigkill();
    let p = relaunch(&st).await;
    // After an agent restart Nomad has no task config bytes.
    if let Some(cfg) = handle.config.as_mut() {
        cfg.msgpack_driver_config.clear();
    }
    let recover = pb::RecoverTaskRequest {
        task_id: String::new(),
        handle: Some(handle.clone()),
    };
    p.driver()
        .recover_task(recover.clone())
        .await
        .expect("RecoverTask");
    p.driver()
        .recover_task(recover)
        .await
        .expect("RecoverTask is idempotent");
    let waiter = {
        let mut d = p.driver();
        let id = id.clone();
        tokio::spawn(async move { d.wait_task(pb::WaitTaskRequest { task_id: id }).await })
    };
    st.proxy.exit_task(&arn, 3).await.unwrap();
    let exit = tokio::time::timeout(WAIT, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(exit.result.unwrap().exit_code, 3);
    assert_eq!(st.proxy.calls("RunTask"), 1, "recovery starts nothing");
    p.kill().await;
}

#[tokio::test]
async fn recover_of_an_already_stopped_task_reports_its_exit_at_once() {
    let mut st = stack().await;
    let spec = TaskSpec::new();
    let id = spec.new_task_id();
    let handle = st.start(&spec, &id).await.unwrap();
    let arn = arn_of(&handle);
    st.node.process_mut().sigkill();
    st.proxy.exit_task(&arn, 0).await.unwrap();
    let p = relaunch(&st).await;
    p.driver()
        .recover_task(pb::RecoverTaskRequest {
            task_id: String::new(),
            handle: Some(handle),
        })
        .await
        .unwrap();
    let exit = tokio::time::timeout(
        WAIT,
        p.driver().wait_task(pb::WaitTaskRequest { task_id: id }),
    )
    .await
    .unwrap()
    .unwrap()
    .into_inner();
    assert_eq!(exit.result.unwrap().exit_code, 0);
    p.kill().await;
}

#[tokio::test]
async fn a_bad_handle_is_rejected_naming_the_problem() {
    let st = stack().await;
    let spec = TaskSpec::new();
    let handle = pb::TaskHandle {
        version: 1,
        config: Some(spec.task_config(&spec.new_task_id(), Vec::new())),
        state: pb::TaskState::Running as i32,
        driver_state: vec![0x92, 0x01],
    };
    let err = st
        .driver()
        .recover_task(pb::RecoverTaskRequest {
            task_id: String::new(),
            handle: Some(handle),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("driver_state"), "{}", err.message());
    st.node.shutdown().await;
}

#[tokio::test]
async fn detach_leaves_the_ecs_task_running_and_a_new_allocation_adopts_it() {
    let st = stack().await;
    let spec = TaskSpec::new();
    let id = spec.new_task_id();
    let handle = st.start(&spec, &id).await.unwrap();
    let arn = arn_of(&handle);
    st.stop(&id, "DETACH").await;
    let exit = st.wait(&id).await;
    assert_eq!(exit.result.unwrap().exit_code, 0);
    st.destroy(&id).await;
    assert_eq!(
        st.ecs_task(&arn).await.last_status(),
        Some("RUNNING"),
        "DETACH never stops ECS"
    );

    // Node B: its own plugin and state directory; Nomad 1.9 copies the
    // handle into the replacement allocation, which recovers it.
    let b_state = tempfile::tempdir().unwrap();
    let node_b = PluginProcess::launch(launch_options()).await.unwrap();
    node_b
        .base()
        .set_config(base::SetConfigRequest {
            msgpack_config: plugin_config(&config(&st.proxy.endpoint(), b_state.path())),
            nomad_config: Some(default_nomad_config()),
            plugin_api_version: "v0.1.0".into(),
        })
        .await
        .unwrap();
    let replacement = TaskSpec {
        alloc_id: uuid_like(),
        ..TaskSpec::new()
    };
    let new_id = replacement.new_task_id();
    let mut copied = handle.clone();
    copied.config = Some(replacement.task_config(&new_id, Vec::new()));
    node_b
        .driver()
        .recover_task(pb::RecoverTaskRequest {
            task_id: String::new(),
            handle: Some(copied),
        })
        .await
        .expect("adopt");
    let ecs = st.ecs_task(&arn).await;
    assert_eq!(
        tag(&ecs, "nomad:alloc-id"),
        Some(replacement.alloc_id.as_str()),
        "the owner tag moved"
    );
    assert_eq!(tag(&ecs, "nomad:task-id"), Some(new_id.as_str()));
    assert_eq!(st.proxy.calls("RunTask"), 1, "no second ECS task");
    st.proxy.exit_task(&arn, 0).await.unwrap();
    let exit = tokio::time::timeout(
        WAIT,
        node_b
            .driver()
            .wait_task(pb::WaitTaskRequest { task_id: new_id }),
    )
    .await
    .unwrap()
    .unwrap()
    .into_inner();
    assert_eq!(exit.result.unwrap().exit_code, 0);
    node_b.kill().await;
    st.node.shutdown().await;
}

#[tokio::test]
async fn task_events_report_ecs_transitions() {
    let mut st = stack().await;
    let spec = TaskSpec::new();
    let id = spec.new_task_id();
    let arn = arn_of(&st.start(&spec, &id).await.unwrap());
    st.proxy.exit_task(&arn, 3).await.unwrap();
    st.wait(&id).await;
    let mut messages = Vec::new();
    while let Ok(ev) = st.node.next_event(Duration::from_secs(3)).await {
        assert_eq!(ev.alloc_id, spec.alloc_id);
        assert_eq!(ev.task_name, spec.task);
        assert!(ev.timestamp.is_some());
        messages.push(ev.message);
        if messages.iter().any(|m| m.contains("exited with code 3")) {
            break;
        }
    }
    assert!(
        messages.iter().any(|m| m.contains("started")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("exited with code 3")),
        "{messages:?}"
    );
    st.node.shutdown().await;
}

#[tokio::test]
async fn task_stats_stream_valid_samples_and_signal_and_exec_are_clearly_unsupported() {
    let st = stack().await;
    let spec = TaskSpec::new();
    let id = spec.new_task_id();
    st.start(&spec, &id).await.unwrap();
    let mut stats = st
        .driver()
        .task_stats(pb::TaskStatsRequest {
            task_id: id.clone(),
            collection_interval: Some(prost_types::Duration {
                seconds: 0,
                nanos: 200_000_000,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    for _ in 0..2 {
        let s = tokio::time::timeout(WAIT, stats.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .stats
            .unwrap();
        assert!(s.timestamp.is_some() && s.agg_resource_usage.is_some());
    }
    let err = st
        .driver()
        .signal_task(pb::SignalTaskRequest {
            task_id: id.clone(),
            signal: "SIGHUP".into(),
        })
        .await
        .unwrap_err();
    assert!(
        err.message().contains("SIGHUP") && err.code() != Code::Unavailable,
        "{}",
        err.message()
    );
    let err = st
        .driver()
        .exec_task(pb::ExecTaskRequest {
            task_id: id.clone(),
            command: vec!["ls".into()],
            timeout: None,
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("exec"), "{}", err.message());
    st.node.shutdown().await;
}

#[tokio::test]
async fn concurrent_waits_all_return_the_same_exit() {
    let st = stack().await;
    let spec = TaskSpec::new();
    let id = spec.new_task_id();
    let arn = arn_of(&st.start(&spec, &id).await.unwrap());
    let waits: Vec<_> = (0..3)
        .map(|_| {
            let mut d = st.driver();
            let id = id.clone();
            tokio::spawn(async move { d.wait_task(pb::WaitTaskRequest { task_id: id }).await })
        })
        .collect();
    st.proxy.exit_task(&arn, 3).await.unwrap();
    for w in waits {
        let r = tokio::time::timeout(WAIT, w)
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .into_inner();
        assert_eq!(r.result.unwrap().exit_code, 3);
    }
    st.node.shutdown().await;
}

#[tokio::test]
async fn a_crash_between_runtask_and_recording_the_arn_leaves_no_duplicate() {
    let mut st = stack().await;
    // Every RunTask reaches ECS but its answer never comes back.
    st.proxy.inject(Some("RunTask"), Fault::LoseResponse, 1000);
    let spec = TaskSpec::new();
    let id = spec.new_task_id();
    let cfg = spec.task_config(&id, st.task_config());
    let pending = {
        let mut d = st.driver();
        let cfg = cfg.clone();
        tokio::spawn(async move { d.start_task(pb::StartTaskRequest { task: Some(cfg) }).await })
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while st.proxy.calls("RunTask") < 1 {
        assert!(tokio::time::Instant::now() < deadline, "RunTask never sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    st.node.process_mut().sigkill();
    let _ = pending.await;
    st.proxy.clear_faults();

    // Nomad relaunches the plugin and retries StartTask with the same config.
    let p = relaunch(&st).await;
    let handle = tokio::time::timeout(
        WAIT,
        p.driver()
            .start_task(pb::StartTaskRequest { task: Some(cfg) }),
    )
    .await
    .expect("StartTask answers")
    .expect("StartTask succeeds after the crash")
    .into_inner()
    .handle
    .unwrap();
    let arn = arn_of(&handle);
    let started_by = st.ecs_task(&arn).await.started_by().unwrap().to_string();
    let all = st.tasks_started_by(&started_by).await;
    assert_eq!(all, vec![arn.clone()], "exactly one ECS task for the slot");
    p.kill().await;
}

#[tokio::test]
async fn a_task_is_still_watched_in_its_own_region_after_the_config_moves_to_another() {
    let st = stack().await;
    let spec = TaskSpec::new();
    let id = spec.new_task_id();
    let arn = arn_of(&st.start(&spec, &id).await.unwrap());
    let mut moved = config(&st.proxy.endpoint(), st.state.path());
    moved.push(("region", s("us-west-2")));
    st.node
        .process()
        .base()
        .set_config(base::SetConfigRequest {
            msgpack_config: plugin_config(&moved),
            nomad_config: Some(default_nomad_config()),
            plugin_api_version: "v0.1.0".into(),
        })
        .await
        .expect("SetConfig with another region");
    st.proxy.exit_task(&arn, 3).await.unwrap();
    let exit = st.wait(&id).await;
    assert_eq!(
        exit.result.unwrap().exit_code,
        3,
        "observed in us-east-1, where it runs: {}",
        exit.err
    );
    st.node.shutdown().await;
}

#[tokio::test]
async fn a_settled_task_costs_about_one_describe_per_reconcile_period() {
    let st = stack_with(&[("reconcile_interval", s("3s"))]).await;
    let spec = TaskSpec::new();
    let id = spec.new_task_id();
    st.start(&spec, &id).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = st.proxy.calls("DescribeTasks");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let during = st.proxy.calls("DescribeTasks") - before;
    // reconcile_interval is 3 s: two or three full passes, and no per-task
    // polling on top once the task is RUNNING.
    assert!(
        (1..=3).contains(&during),
        "{during} DescribeTasks calls in 6 s for one settled task"
    );
    st.node.shutdown().await;
}
