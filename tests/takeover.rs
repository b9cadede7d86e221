//! Takeover on drain and node loss, on current Nomad (1.10+: no DETACH, no
//! handle propagation — the driver asks the Nomad API) and on Nomad 1.9
//! (DETACH and propagated handles). Two emulated client nodes: two plugin
//! processes with their own state directories, one emulated Nomad API.

mod support;

use std::time::Duration;

use nomad_driver_ecs::devstack::ecs_proxy::EcsProxy;
use nomad_driver_ecs::devstack::emulator::{self, RunningEmulator};
use nomad_driver_ecs::devstack::host::{PluginProcess, default_nomad_config};
use nomad_driver_ecs::devstack::nomad_api::{AllocState, NomadApiServer};
use nomad_driver_ecs::proto::base;
use nomad_driver_ecs::proto::drivers as pb;
use support::*;

const WAIT: Duration = Duration::from_secs(30);
const JOB: &str = "hello";

struct Cluster {
    emu: RunningEmulator,
    proxy: EcsProxy,
    api: NomadApiServer,
}

struct Node {
    plugin: PluginProcess,
    state: tempfile::TempDir,
}

async fn cluster() -> Cluster {
    let emu = emulator::start_default("nomad").await.expect("moto");
    let proxy = EcsProxy::start(emu.endpoint()).await.expect("proxy");
    let api = NomadApiServer::start().await.expect("nomad api");
    Cluster { emu, proxy, api }
}

impl Cluster {
    fn config(
        &self,
        state: &std::path::Path,
        with_api: bool,
    ) -> Vec<(&'static str, nomad_driver_ecs::cty::Value)> {
        let mut cfg = ecs_config(&self.proxy.endpoint(), "nomad", state);
        cfg.push(("reconcile_interval", s("500ms")));
        cfg.push(("handoff_grace", s("3s")));
        cfg.push(("orphan_sweep_interval", s("1s")));
        if with_api {
            cfg.push(("nomad_address", s(&self.api.address())));
        }
        cfg
    }

    async fn node_in(&self, state: tempfile::TempDir, with_api: bool) -> Node {
        let plugin = PluginProcess::launch(launch_options().env("NOMAD_ADDR", ""))
            .await
            .expect("plugin");
        plugin
            .base()
            .set_config(base::SetConfigRequest {
                msgpack_config: plugin_config(&self.config(state.path(), with_api)),
                nomad_config: Some(default_nomad_config()),
                plugin_api_version: "v0.1.0".into(),
            })
            .await
            .expect("SetConfig");
        Node { plugin, state }
    }

    async fn node(&self) -> Node {
        self.node_in(tempfile::tempdir().unwrap(), true).await
    }

    fn task_config(&self) -> Vec<u8> {
        seeded_task_config(self.emu.seed())
    }

    async fn ecs_task(&self, arn: &str) -> aws_sdk_ecs::types::Task {
        moto_task(self.emu.endpoint(), arn).await
    }

    async fn owner(&self, arn: &str) -> Option<String> {
        tag(&self.ecs_task(arn).await, "nomad:alloc-id").map(ToString::to_string)
    }

    async fn eventually_stopped(&self, arn: &str, within: Duration) -> bool {
        let until = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < until {
            if self.ecs_task(arn).await.last_status() == Some("STOPPED") {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        false
    }
}

impl Node {
    async fn start(&self, c: &Cluster, spec: &TaskSpec) -> (String, String) {
        let id = spec.new_task_id();
        let cfg = spec.task_config(&id, c.task_config());
        let handle = self
            .plugin
            .driver()
            .start_task(pb::StartTaskRequest { task: Some(cfg) })
            .await
            .expect("StartTask")
            .into_inner()
            .handle
            .unwrap();
        (id, arn_of(&handle))
    }

    async fn start_handle(&self, c: &Cluster, spec: &TaskSpec) -> (String, pb::TaskHandle) {
        let id = spec.new_task_id();
        let cfg = spec.task_config(&id, c.task_config());
        let handle = self
            .plugin
            .driver()
            .start_task(pb::StartTaskRequest { task: Some(cfg) })
            .await
            .expect("StartTask")
            .into_inner()
            .handle
            .unwrap();
        (id, handle)
    }

    async fn stop(&self, id: &str, signal: &str) {
        self.plugin
            .driver()
            .stop_task(pb::StopTaskRequest {
                task_id: id.into(),
                timeout: Some(prost_types::Duration {
                    seconds: 5,
                    nanos: 0,
                }),
                signal: signal.into(),
            })
            .await
            .expect("StopTask");
    }

    async fn wait(&self, id: &str) -> pb::WaitTaskResponse {
        tokio::time::timeout(
            WAIT,
            self.plugin
                .driver()
                .wait_task(pb::WaitTaskRequest { task_id: id.into() }),
        )
        .await
        .expect("WaitTask returns")
        .expect("WaitTask")
        .into_inner()
    }

    async fn destroy(&self, id: &str) {
        self.plugin
            .driver()
            .destroy_task(pb::DestroyTaskRequest {
                task_id: id.into(),
                force: true,
            })
            .await
            .expect("DestroyTask");
    }

    fn stderr_mentions(&self, text: &str) -> bool {
        self.plugin.stderr_lines().iter().any(|l| l.contains(text))
    }
}

fn alloc(spec: &TaskSpec) -> AllocState {
    AllocState::running(&spec.alloc_id, JOB)
}

fn replacement_of(spec: &TaskSpec) -> TaskSpec {
    TaskSpec {
        alloc_id: uuid_like(),
        ..TaskSpec {
            job: spec.job.clone(),
            group: spec.group.clone(),
            task: spec.task.clone(),
            index: spec.index,
            alloc_id: String::new(),
        }
    }
}

#[tokio::test]
async fn a_drain_hands_the_running_ecs_task_to_the_replacement_on_current_nomad() {
    let c = cluster().await;
    let (a, b) = (c.node().await, c.node().await);
    let spec = TaskSpec {
        job: JOB.into(),
        ..TaskSpec::new()
    };
    c.api.put_alloc(alloc(&spec));
    let (id, arn) = a.start(&c, &spec).await;
    let next = replacement_of(&spec);
    c.api.drain(&spec.alloc_id, Some(&next.alloc_id));
    // Node A's client stops the migrating allocation with its kill signal.
    a.stop(&id, "SIGTERM").await;
    let exit = a.wait(&id).await;
    assert_eq!(
        exit.result.unwrap().exit_code,
        0,
        "a hand-off exits cleanly: {}",
        exit.err
    );
    a.destroy(&id).await;
    // Node B starts the replacement: same ECS task, no RunTask.
    let (_, arn_b) = b.start(&c, &next).await;
    assert_eq!(arn_b, arn, "the replacement adopts the same ECS task");
    assert_eq!(c.proxy.calls("RunTask"), 1);
    assert_eq!(c.owner(&arn).await.as_deref(), Some(next.alloc_id.as_str()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(c.ecs_task(&arn).await.last_status(), Some("RUNNING"));
    assert_eq!(c.proxy.calls("StopTask"), 0, "the task was never stopped");
    a.plugin.kill().await;
    b.plugin.kill().await;
}

#[tokio::test]
async fn after_node_loss_the_replacement_adopts_and_the_returning_node_lets_go() {
    let c = cluster().await;
    let (mut a, b) = (c.node().await, c.node().await);
    let spec = TaskSpec {
        job: JOB.into(),
        ..TaskSpec::new()
    };
    c.api.put_alloc(alloc(&spec));
    let (id, arn) = a.start(&c, &spec).await;
    a.plugin.sigkill();
    let next = replacement_of(&spec);
    c.api.lose_node(&spec.alloc_id, &next.alloc_id);
    let (_, arn_b) = b.start(&c, &next).await;
    assert_eq!(arn_b, arn);
    assert_eq!(c.owner(&arn).await.as_deref(), Some(next.alloc_id.as_str()));
    // Node A comes back: a new plugin on its state directory; its client stops
    // the lost allocation with the normal kill signal.
    let state = std::mem::replace(&mut a.state, tempfile::tempdir().unwrap());
    let a2 = c.node_in(state, true).await;
    a2.stop(&id, "SIGTERM").await;
    assert_eq!(a2.wait(&id).await.result.unwrap().exit_code, 0);
    a2.destroy(&id).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        c.ecs_task(&arn).await.last_status(),
        Some("RUNNING"),
        "the returning node must not stop it"
    );
    assert_eq!(c.proxy.calls("StopTask"), 0);
    a2.plugin.kill().await;
    b.plugin.kill().await;
}

#[tokio::test]
async fn a_job_stopped_during_a_hand_off_stops_the_ecs_task() {
    let c = cluster().await;
    let a = c.node().await;
    let spec = TaskSpec {
        job: JOB.into(),
        ..TaskSpec::new()
    };
    c.api.put_alloc(alloc(&spec));
    let (id, arn) = a.start(&c, &spec).await;
    c.api.drain(&spec.alloc_id, None);
    a.stop(&id, "SIGTERM").await;
    a.wait(&id).await;
    assert_eq!(
        c.ecs_task(&arn).await.last_status(),
        Some("RUNNING"),
        "handed off, not stopped"
    );
    c.api.stop_job(JOB);
    assert!(
        c.eventually_stopped(&arn, Duration::from_secs(15)).await,
        "the handed-off task is stopped once the job is"
    );
    a.plugin.kill().await;
}

#[tokio::test]
async fn a_replacement_that_never_comes_gets_the_task_stopped_after_the_grace_period() {
    let c = cluster().await;
    let a = c.node().await;
    let spec = TaskSpec {
        job: JOB.into(),
        ..TaskSpec::new()
    };
    c.api.put_alloc(alloc(&spec));
    let (id, arn) = a.start(&c, &spec).await;
    c.api.drain(&spec.alloc_id, None);
    a.stop(&id, "SIGTERM").await;
    a.wait(&id).await;
    a.destroy(&id).await;
    assert!(
        c.eventually_stopped(&arn, Duration::from_secs(20)).await,
        "not orphaned"
    );
    assert!(
        a.stderr_mentions("no replacement allocation was placed"),
        "the decision is logged"
    );
    a.plugin.kill().await;
}

#[tokio::test]
async fn a_destructive_update_starts_a_new_ecs_task_and_stops_the_old_one() {
    let c = cluster().await;
    let (a, b) = (c.node().await, c.node().await);
    let spec = TaskSpec {
        job: JOB.into(),
        ..TaskSpec::new()
    };
    c.api.put_alloc(alloc(&spec));
    let (id, arn) = a.start(&c, &spec).await;
    let next = replacement_of(&spec);
    c.api.update_alloc(&spec.alloc_id, |x| {
        x.desired_status = "stop".into();
        x.next = next.alloc_id.clone();
    });
    c.api.put_alloc(AllocState {
        previous: spec.alloc_id.clone(),
        ..AllocState::running(&next.alloc_id, JOB)
    });
    let (_, arn_b) = b.start(&c, &next).await;
    a.stop(&id, "SIGTERM").await;
    a.wait(&id).await;
    assert_ne!(arn_b, arn, "a new ECS task for the new version");
    assert!(
        c.eventually_stopped(&arn, Duration::from_secs(10)).await,
        "the old one is stopped"
    );
    assert_eq!(c.ecs_task(&arn_b).await.last_status(), Some("RUNNING"));
    a.plugin.kill().await;
    b.plugin.kill().await;
}

#[tokio::test]
async fn tasks_we_did_not_start_are_never_touched_and_true_orphans_are_swept() {
    let c = cluster().await;
    let seed = c.emu.seed().clone();
    let ecs = ecs_client(c.emu.endpoint());
    let vpc = aws_sdk_ecs::types::AwsVpcConfiguration::builder()
        .set_subnets(Some(seed.subnets.clone()))
        .set_security_groups(Some(seed.security_groups.clone()))
        .build()
        .unwrap();
    let run = |tags: Vec<(&str, String)>| {
        let mut req = ecs
            .run_task()
            .cluster("nomad")
            .task_definition(&seed.task_definition)
            .launch_type(aws_sdk_ecs::types::LaunchType::Fargate)
            .network_configuration(
                aws_sdk_ecs::types::NetworkConfiguration::builder()
                    .awsvpc_configuration(vpc.clone())
                    .build(),
            );
        for (k, v) in tags {
            req = req.tags(aws_sdk_ecs::types::Tag::builder().key(k).value(v).build());
        }
        req.send()
    };
    let foreign = run(vec![("team", "other".into())]).await.unwrap().tasks()[0]
        .task_arn()
        .unwrap()
        .to_string();
    let live_owner = uuid_like();
    c.api.put_alloc(AllocState::running(&live_owner, JOB));
    let owned = run(vec![
        ("nomad:driver", "nomad-driver-ecs".into()),
        ("nomad:alloc-id", live_owner.clone()),
    ])
    .await
    .unwrap()
    .tasks()[0]
        .task_arn()
        .unwrap()
        .to_string();
    let orphan = run(vec![
        ("nomad:driver", "nomad-driver-ecs".into()),
        ("nomad:alloc-id", uuid_like()),
    ])
    .await
    .unwrap()
    .tasks()[0]
        .task_arn()
        .unwrap()
        .to_string();
    let a = c.node().await;
    assert!(
        c.eventually_stopped(&orphan, Duration::from_secs(15)).await,
        "an ECS task of a purged allocation is swept"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        c.ecs_task(&foreign).await.last_status(),
        Some("RUNNING"),
        "a task without our tags is never touched"
    );
    assert_eq!(
        c.ecs_task(&owned).await.last_status(),
        Some("RUNNING"),
        "a task a live allocation owns is kept"
    );
    assert!(
        a.stderr_mentions("orphan sweep: stopping"),
        "the decision is logged"
    );
    a.plugin.kill().await;
}

#[tokio::test]
async fn with_the_nomad_api_down_a_drain_falls_back_to_stopping_and_says_so() {
    let c = cluster().await;
    let a = c.node().await;
    let spec = TaskSpec {
        job: JOB.into(),
        ..TaskSpec::new()
    };
    c.api.put_alloc(alloc(&spec));
    let (id, arn) = a.start(&c, &spec).await;
    c.api.drain(&spec.alloc_id, None);
    c.api.set_outage(true);
    a.stop(&id, "SIGTERM").await;
    assert_eq!(a.wait(&id).await.result.unwrap().exit_code, 0);
    assert!(
        c.eventually_stopped(&arn, Duration::from_secs(10)).await,
        "safe behaviour: StopTask stops"
    );
    assert!(
        a.stderr_mentions("Nomad API unavailable"),
        "the fallback is logged"
    );
    a.plugin.kill().await;
}

#[tokio::test]
async fn without_nomad_api_access_the_driver_is_safe() {
    let c = cluster().await;
    let a = c.node_in(tempfile::tempdir().unwrap(), false).await;
    let spec = TaskSpec {
        job: JOB.into(),
        ..TaskSpec::new()
    };
    c.api.put_alloc(alloc(&spec));
    let (id, arn) = a.start(&c, &spec).await;
    c.api.drain(&spec.alloc_id, None);
    a.stop(&id, "SIGTERM").await;
    a.wait(&id).await;
    assert!(
        c.eventually_stopped(&arn, Duration::from_secs(10)).await,
        "no API: StopTask stops"
    );
    assert_eq!(c.api.requests(), 0);
    a.plugin.kill().await;
}

#[tokio::test]
async fn on_nomad_1_9_node_loss_uses_the_propagated_handle_and_detach() {
    let c = cluster().await;
    // Nomad 1.9 clients need no API: the scheduler copies the handle.
    let (mut a, b) = (
        c.node_in(tempfile::tempdir().unwrap(), false).await,
        c.node_in(tempfile::tempdir().unwrap(), false).await,
    );
    let spec = TaskSpec {
        job: JOB.into(),
        ..TaskSpec::new()
    };
    let (id, handle) = a.start_handle(&c, &spec).await;
    let arn = arn_of(&handle);
    a.plugin.sigkill();
    let next = replacement_of(&spec);
    let new_id = next.new_task_id();
    let mut copied = handle.clone();
    copied.config = Some(next.task_config(&new_id, Vec::new()));
    b.plugin
        .driver()
        .recover_task(pb::RecoverTaskRequest {
            task_id: String::new(),
            handle: Some(copied),
        })
        .await
        .expect("adopt");
    assert_eq!(c.owner(&arn).await.as_deref(), Some(next.alloc_id.as_str()));
    // The lost node returns and stops its copy with DETACH.
    let state = std::mem::replace(&mut a.state, tempfile::tempdir().unwrap());
    let a2 = c.node_in(state, false).await;
    a2.stop(&id, "DETACH").await;
    assert_eq!(a2.wait(&id).await.result.unwrap().exit_code, 0);
    a2.destroy(&id).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(c.ecs_task(&arn).await.last_status(), Some("RUNNING"));
    assert_eq!(c.proxy.calls("RunTask"), 1);
    assert_eq!(c.proxy.calls("StopTask"), 0);
    a2.plugin.kill().await;
    b.plugin.kill().await;
}

#[tokio::test]
async fn a_task_whose_allocation_nomad_forgot_is_stopped_by_the_sweep() {
    let c = cluster().await;
    let a = c.node().await;
    let spec = TaskSpec {
        job: JOB.into(),
        ..TaskSpec::new()
    };
    c.api.put_alloc(alloc(&spec));
    let (_id, arn) = a.start(&c, &spec).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        c.ecs_task(&arn).await.last_status(),
        Some("RUNNING"),
        "a live allocation's task is kept"
    );
    // The client lost its state and the job was purged: nobody will ever
    // call StopTask or DestroyTask for this task.
    c.api.purge_job(JOB);
    assert!(
        c.eventually_stopped(&arn, Duration::from_secs(15)).await,
        "not left running forever"
    );
    assert!(
        a.stderr_mentions("destroying a task Nomad no longer tracks"),
        "the decision is logged"
    );
    a.plugin.kill().await;
}
