//! Telemetry end to end: the real binary under the emulated Nomad host,
//! moto behind the fidelity and fault proxy, and OTLP pointed at an
//! in-process receiver (or at a closed port).

#[path = "support/otlp.rs"]
mod otlp;
mod support;

use std::time::Duration;

use nomad_driver_ecs::cty::Value;
use nomad_driver_ecs::devstack::ecs_proxy::{EcsProxy, Fault};
use nomad_driver_ecs::devstack::emulator::{self, RunningEmulator};
use nomad_driver_ecs::devstack::host::{DriverInstance, NomadClientHost, Recording};
use nomad_driver_ecs::proto::drivers as pb;
use otlp::{OtlpReceiver, ReceivedSpan};
use support::*;

const WAIT: Duration = Duration::from_secs(30);
const DRIVER: &str = "hashicorp.nomad.plugins.drivers.proto.Driver";
/// OTLP span kinds.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;

struct Stack {
    emu: RunningEmulator,
    proxy: EcsProxy,
    _state: tempfile::TempDir,
    _nomad: NomadClientHost,
    node: DriverInstance,
}

/// The stack with `telemetry_endpoint` (if any) in the plugin block and
/// `env` in the plugin's environment; exports are frequent so that a test
/// sees them without waiting for the exit flush.
async fn stack(endpoint: Option<&str>, env: &[(&str, &str)]) -> Stack {
    let emu = emulator::start_default("nomad").await.expect("moto");
    let proxy = EcsProxy::start(emu.endpoint()).await.expect("proxy");
    let state = tempfile::tempdir().unwrap();
    let mut cfg: Vec<(&str, Value)> = ecs_config(&proxy.endpoint(), "nomad", state.path());
    cfg.push(("reconcile_interval", s("1s")));
    if let Some(e) = endpoint {
        cfg.push(("telemetry_endpoint", s(e)));
    }
    let mut launch = launch_options()
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "200");
    for (k, v) in env {
        launch = launch.env(*k, *v);
    }
    let nomad =
        NomadClientHost::new(launch, plugin_config(&cfg)).rpc_timeout(Duration::from_secs(20));
    let loaded = nomad.load().await.expect("load sequence");
    Stack {
        emu,
        proxy,
        _state: state,
        _nomad: nomad,
        node: loaded.instance,
    }
}

impl Stack {
    fn driver(&self) -> pb::driver_client::DriverClient<tonic::transport::Channel> {
        self.node.driver()
    }

    async fn start(&self, spec: &TaskSpec, task_id: &str) -> String {
        let config = seeded_task_config(self.emu.seed());
        let resp = self
            .driver()
            .start_task(pb::StartTaskRequest {
                task: Some(spec.task_config(task_id, config)),
            })
            .await
            .expect("StartTask succeeds")
            .into_inner();
        let handle = resp.handle.expect("a handle");
        nomad_driver_ecs::driver::handle::DriverState::decode(&handle.driver_state)
            .expect("our driver_state")
            .arn
    }

    /// StopTask, WaitTask (exit 0), DestroyTask: Nomad's stop of a task.
    async fn stop(&self, task_id: &str) {
        self.driver()
            .stop_task(pb::StopTaskRequest {
                task_id: task_id.into(),
                timeout: Some(prost_types::Duration {
                    seconds: 10,
                    nanos: 0,
                }),
                signal: "SIGTERM".into(),
            })
            .await
            .expect("StopTask succeeds");
        let exit = tokio::time::timeout(
            WAIT,
            self.driver().wait_task(pb::WaitTaskRequest {
                task_id: task_id.into(),
            }),
        )
        .await
        .expect("WaitTask returns")
        .expect("WaitTask succeeds")
        .into_inner();
        assert_eq!(exit.result.unwrap().exit_code, 0, "{}", exit.err);
        self.driver()
            .destroy_task(pb::DestroyTaskRequest {
                task_id: task_id.into(),
                force: true,
            })
            .await
            .expect("DestroyTask succeeds");
    }

    /// Driver.Shutdown and the go-plugin kill; returns the stderr record and
    /// the proxy (whose counts are final now).
    async fn shut_down(self) -> (Recording<String>, EcsProxy) {
        let stderr = self.node.process().stderr().clone();
        let out = self.node.shutdown().await;
        assert!(
            out.kill.exited_gracefully(),
            "the exit flush fits in the kill grace: {:?}",
            out.kill
        );
        (stderr, self.proxy)
    }
}

fn find<'a>(
    spans: &'a [ReceivedSpan],
    what: &str,
    pred: impl Fn(&ReceivedSpan) -> bool,
) -> &'a ReceivedSpan {
    spans.iter().find(|s| pred(s)).unwrap_or_else(|| {
        let names: Vec<&str> = spans.iter().map(|s| s.span.name.as_str()).collect();
        panic!("no {what} among {} spans: {names:?}", spans.len())
    })
}

fn parent_of<'a>(spans: &'a [ReceivedSpan], child: &ReceivedSpan) -> Option<&'a ReceivedSpan> {
    spans
        .iter()
        .find(|s| s.span_id() == child.parent_id() && s.trace_id() == child.trace_id())
}

/// Whether `ancestor` is on `span`'s parent chain.
fn descends_from(spans: &[ReceivedSpan], span: &ReceivedSpan, ancestor: &ReceivedSpan) -> bool {
    let mut cur = span;
    for _ in 0..64 {
        match parent_of(spans, cur) {
            Some(p) if p.span_id() == ancestor.span_id() => return true,
            Some(p) => cur = p,
            None => return false,
        }
    }
    false
}

/// The stderr lines as JSON objects.
fn log_lines(stderr: &Recording<String>) -> Vec<serde_json::Value> {
    stderr
        .snapshot()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test]
async fn a_start_and_a_stop_arrive_as_spans_with_semantic_attributes_and_metrics_count_the_calls() {
    let otlp = OtlpReceiver::start().await;
    let st = stack(Some(&otlp.endpoint()), &[]).await;
    st.proxy.inject(Some("RunTask"), Fault::Throttle, 1);
    let spec = TaskSpec::new();
    let id = spec.new_task_id();
    let arn = st.start(&spec, &id).await;
    st.stop(&id).await;
    let (stderr, proxy) = st.shut_down().await;
    let spans = otlp.spans();

    let rpc = find(&spans, "StartTask RPC span", |s| {
        s.span.name == format!("{DRIVER}/StartTask")
    });
    assert_eq!(rpc.span.kind, SERVER);
    assert_eq!(rpc.attr("rpc.system").as_deref(), Some("grpc"));
    assert_eq!(rpc.attr("rpc.service").as_deref(), Some(DRIVER));
    assert_eq!(rpc.attr("rpc.method").as_deref(), Some("StartTask"));
    assert_eq!(rpc.service_name, "nomad-driver-ecs");
    assert_eq!(
        rpc.resource.get("service.version").map(String::as_str),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert!(
        rpc.parent_id().is_empty(),
        "the RPC is the root of its trace"
    );

    let start = find(&spans, "lifecycle span of the task", |s| {
        s.attr("nomad.task.id").as_deref() == Some(id.as_str()) && s.parent_id() == rpc.span_id()
    });
    assert_eq!(
        start.attr("nomad.alloc.id").as_deref(),
        Some(spec.alloc_id.as_str())
    );
    assert_eq!(
        start.attr("aws.ecs.task.arn").as_deref(),
        Some(arn.as_str())
    );
    let intent = find(&spans, "store write of the intent", |s| {
        s.span.name == "store.put" && s.parent_id() == start.span_id()
    });
    assert_eq!(intent.attr("db.operation.name").as_deref(), Some("put"));

    let run = find(&spans, "RunTask span", |s| s.span.name == "ECS.RunTask");
    assert_eq!(run.span.kind, CLIENT);
    for (k, v) in [
        ("rpc.system", "aws-api"),
        ("rpc.service", "ECS"),
        ("rpc.method", "RunTask"),
        ("cloud.region", "us-east-1"),
        ("aws.ecs.cluster", "nomad"),
        ("aws.ecs.task.arn", arn.as_str()),
    ] {
        assert_eq!(run.attr(k).as_deref(), Some(v), "RunTask span {k}");
    }
    let stop = find(&spans, "StopTask span", |s| s.span.name == "ECS.StopTask");
    assert_eq!(stop.attr("aws.ecs.task.arn").as_deref(), Some(arn.as_str()));
    find(&spans, "StopTask RPC span", |s| {
        s.span.name == format!("{DRIVER}/StopTask")
    });
    find(&spans, "reconcile pass span", |s| {
        s.attr("reconcile.full").is_some()
    });

    // Every attempt the proxy saw, by operation (the periodic reads may
    // race the exit, so those are bounded, not exact).
    let attempts = |op: &str| -> u64 {
        ["200", "400", "500", "503"]
            .iter()
            .filter_map(|status| {
                otlp.latest(
                    "nomad_ecs.aws.attempts",
                    &format!("http.response.status_code={status},rpc.method={op}"),
                )
            })
            .sum::<f64>() as u64
    };
    assert_eq!(
        attempts("RunTask"),
        proxy.calls("RunTask"),
        "1 throttled + 1"
    );
    assert_eq!(attempts("RunTask"), 2);
    assert_eq!(attempts("StopTask"), proxy.calls("StopTask"));
    for op in ["DescribeTasks", "DescribeClusters"] {
        assert!(
            (1..=proxy.calls(op)).contains(&attempts(op)),
            "{op}: {} attempts reported, {} seen",
            attempts(op),
            proxy.calls(op)
        );
    }
    assert_eq!(
        otlp.latest("nomad_ecs.aws.calls", "rpc.method=RunTask"),
        Some(1.0)
    );
    assert_eq!(
        otlp.latest("nomad_ecs.aws.throttles", "rpc.method=RunTask"),
        Some(1.0)
    );
    assert_eq!(
        otlp.latest(
            "nomad_ecs.aws.attempts",
            "http.response.status_code=400,rpc.method=RunTask"
        ),
        Some(1.0)
    );
    assert_eq!(
        otlp.latest("nomad_ecs.aws.token_bucket.wait", "rpc.method=RunTask"),
        Some(1.0),
        "one bucket wait per admitted call"
    );
    assert_eq!(
        otlp.latest("nomad_ecs.aws.calls", "rpc.method=StopTask"),
        Some(1.0)
    );
    assert!(
        otlp.latest("nomad_ecs.store.write.duration", "db.operation.name=put")
            .is_some_and(|n| n >= 3.0),
        "intent, run request and ARN are three durable writes"
    );
    assert!(
        otlp.latest("nomad_ecs.store.size", "")
            .is_some_and(|n| n > 0.0)
    );

    // The log line of the ECS task's start carries the IDs of a span that
    // was exported.
    let lines = log_lines(&stderr);
    assert!(
        lines
            .iter()
            .all(|l| l.get("otel.name").is_none() && l.get("rpc.service").is_none()),
        "span attributes meant for the trace backend stay out of the log"
    );
    let started = lines
        .iter()
        .find(|l| {
            l["@message"]
                .as_str()
                .is_some_and(|m| m.contains(&arn) && m.contains("started"))
        })
        .expect("a log line for the ECS task's start");
    let (trace_id, span_id) = (
        started["trace_id"].as_str().expect("trace_id on the line"),
        started["span_id"].as_str().expect("span_id on the line"),
    );
    assert!(
        spans
            .iter()
            .any(|s| s.trace_id() == trace_id && s.span_id() == span_id),
        "the IDs name an exported span: {started}"
    );
}

/// Needs the reconciler to run a triggered task's steps under the
/// triggering RPC's context (`telemetry::current_context` carried by
/// `Handle::trigger`, `telemetry::child_span` per step).
#[tokio::test]
async fn a_start_task_trace_is_one_tree_from_the_rpc_through_the_store_write_to_run_task() {
    let otlp = OtlpReceiver::start().await;
    let st = stack(Some(&otlp.endpoint()), &[]).await;
    let spec = TaskSpec::new();
    let id = spec.new_task_id();
    st.start(&spec, &id).await;
    // A full pass (every second here) reports the task's state.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    st.stop(&id).await;
    let _ = st.shut_down().await;
    let spans = otlp.spans();
    let rpc = find(&spans, "StartTask RPC span", |s| {
        s.span.name == format!("{DRIVER}/StartTask")
    });
    let run = find(&spans, "RunTask span", |s| s.span.name == "ECS.RunTask");
    assert_eq!(
        run.trace_id(),
        rpc.trace_id(),
        "RunTask is in the StartTask trace"
    );
    assert!(
        descends_from(&spans, run, rpc),
        "RunTask descends from the StartTask RPC"
    );
    let step = parent_of(&spans, run).expect("RunTask's parent was exported");
    assert_eq!(
        step.attr("nomad.task.id").as_deref(),
        Some(id.as_str()),
        "the step names the task"
    );
    let stop_rpc = find(&spans, "StopTask RPC span", |s| {
        s.span.name == format!("{DRIVER}/StopTask")
    });
    let stop = find(&spans, "StopTask span", |s| s.span.name == "ECS.StopTask");
    assert!(
        descends_from(&spans, stop, stop_rpc),
        "StopTask descends from the StopTask RPC"
    );
    for name in [
        "nomad_ecs.reconcile.pass.duration",
        "nomad_ecs.reconcile.lag",
        "nomad_ecs.task.start.duration",
        "nomad_ecs.task.stop.duration",
    ] {
        assert!(
            otlp.metric_points()
                .iter()
                .any(|(n, _, v)| n == name && *v >= 1.0),
            "{name} recorded"
        );
    }
    assert!(
        otlp.metric_points()
            .iter()
            .any(|(n, a, _)| n == "nomad_ecs.tasks" && a.contains("nomad.task.desired=")),
        "task states reported"
    );
}

#[tokio::test]
async fn a_collector_that_is_down_fails_no_task_operation_and_logs_one_warning_per_signal() {
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let st = stack(Some(&dead), &[]).await;
    let spec = TaskSpec::new();
    let id = spec.new_task_id();
    let arn = st.start(&spec, &id).await;
    assert!(arn.contains(":task/nomad/"), "{arn}");
    st.stop(&id).await;
    // Several export rounds fail meanwhile (every 100-200 ms, ~1 s each with
    // the exporter's retries).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let second = spec.new_task_id();
    st.start(&spec, &second).await;
    st.stop(&second).await;
    let (stderr, _) = st.shut_down().await;
    let lines = log_lines(&stderr);
    let warnings: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| {
            l["@message"]
                .as_str()
                .is_some_and(|m| m.starts_with("telemetry export failed"))
        })
        .collect();
    assert!(
        (1..=2).contains(&warnings.len()),
        "one warning per signal, not one per export: {warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .all(|w| w["@level"] == "warn" && w["endpoint"] == dead.as_str())
    );
    let sdk_noise: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| {
            l["@module"].as_str().is_some_and(|m| {
                m.contains("opentelemetry") || m.contains("tonic") || m.contains("h2")
            })
        })
        .collect();
    assert!(
        sdk_noise.is_empty(),
        "nothing from the SDK or its transport: {sdk_noise:?}"
    );
}

#[tokio::test]
async fn otel_variables_alone_turn_telemetry_on_and_the_sampler_and_resource_are_honoured() {
    let otlp = OtlpReceiver::start().await;
    let endpoint = otlp.endpoint();
    let st = stack(
        None,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", "ecs-driver-under-test"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment.name=ci,service.name=ignored",
            ),
            ("OTEL_TRACES_SAMPLER", "always_off"),
        ],
    )
    .await;
    let spec = TaskSpec::new();
    let id = spec.new_task_id();
    st.start(&spec, &id).await;
    st.stop(&id).await;
    let (stderr, _) = st.shut_down().await;
    assert!(otlp.spans().is_empty(), "always_off samples nothing");
    let resources = otlp.metric_resources();
    assert!(!resources.is_empty(), "metrics arrived");
    for r in &resources {
        assert_eq!(
            r.get("service.name").map(String::as_str),
            Some("ecs-driver-under-test")
        );
        assert_eq!(
            r.get("deployment.environment.name").map(String::as_str),
            Some("ci")
        );
    }
    assert_eq!(
        otlp.latest("nomad_ecs.aws.calls", "rpc.method=RunTask"),
        Some(1.0)
    );
    let lines = log_lines(&stderr);
    assert!(
        lines.iter().any(|l| l["@message"]
            .as_str()
            .is_some_and(|m| m.starts_with("telemetry on"))),
        "the start is logged"
    );
    assert!(
        lines.iter().all(|l| l.get("trace_id").is_none()),
        "no trace IDs on lines of unsampled spans"
    );
}
