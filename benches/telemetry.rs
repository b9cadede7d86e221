//! What telemetry costs a task operation: the real binary under the emulated
//! Nomad host against moto (behind the fidelity proxy), with telemetry off,
//! exporting to a collector that is down (a closed port), and exporting to a
//! live in-process OTLP receiver. Each mode runs the same start/stop cycles:
//! StartTask (until the ECS task exists), then StopTask + WaitTask (until ECS
//! reports it stopped) + DestroyTask. Prints one table; asserts nothing.
//!
//! `cargo bench --bench telemetry` (`NOMAD_ECS_BENCH_CYCLES`, default 15).

#[path = "../tests/support/otlp.rs"]
mod otlp;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use nomad_driver_ecs::cty::Value;
use nomad_driver_ecs::devstack::ecs_proxy::EcsProxy;
use nomad_driver_ecs::devstack::emulator::{self, RunningEmulator};
use nomad_driver_ecs::devstack::host::NomadClientHost;
use nomad_driver_ecs::proto::drivers as pb;
use support::*;

/// One way of running the plugin.
enum Mode {
    Off,
    DeadCollector,
    LiveCollector,
}

impl Mode {
    fn label(&self) -> &'static str {
        match self {
            Self::Off => "telemetry off",
            Self::DeadCollector => "on, collector down",
            Self::LiveCollector => "on, collector up",
        }
    }
}

/// Start and stop latencies of `cycles` tasks, in that mode.
async fn run(mode: &Mode, emu: &RunningEmulator, cycles: usize) -> (Vec<Duration>, Vec<Duration>) {
    let proxy = EcsProxy::start(emu.endpoint()).await.expect("proxy");
    let receiver = match mode {
        Mode::LiveCollector => Some(otlp::OtlpReceiver::start().await),
        _ => None,
    };
    let endpoint = match mode {
        Mode::Off => None,
        Mode::DeadCollector => Some(format!("http://127.0.0.1:{}", closed_port())),
        Mode::LiveCollector => receiver.as_ref().map(otlp::OtlpReceiver::endpoint),
    };
    let state = tempfile::tempdir().unwrap();
    let mut cfg: Vec<(&str, Value)> = ecs_config(&proxy.endpoint(), "nomad", state.path());
    if let Some(e) = &endpoint {
        cfg.push(("telemetry_endpoint", s(e)));
    }
    // Export often, so that exports (and their failures) overlap the
    // operations being timed.
    let launch = launch_options()
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "250");
    let host =
        NomadClientHost::new(launch, plugin_config(&cfg)).rpc_timeout(Duration::from_secs(60));
    let loaded = host.load().await.expect("load sequence");
    let driver = loaded.instance.driver();
    let seed = emu.seed();
    let task_config = ecs_task_config(&seed.task_definition, &seed.subnets, &seed.security_groups);
    let (mut starts, mut stops) = (Vec::new(), Vec::new());
    for _ in 0..cycles {
        let spec = TaskSpec::new();
        let id = spec.new_task_id();
        let t = Instant::now();
        driver
            .clone()
            .start_task(pb::StartTaskRequest {
                task: Some(spec.task_config(&id, task_config.clone())),
            })
            .await
            .expect("StartTask");
        starts.push(t.elapsed());
        let t = Instant::now();
        driver
            .clone()
            .stop_task(pb::StopTaskRequest {
                task_id: id.clone(),
                timeout: Some(prost_types::Duration {
                    seconds: 10,
                    nanos: 0,
                }),
                signal: "SIGTERM".into(),
            })
            .await
            .expect("StopTask");
        driver
            .clone()
            .wait_task(pb::WaitTaskRequest {
                task_id: id.clone(),
            })
            .await
            .expect("WaitTask");
        driver
            .clone()
            .destroy_task(pb::DestroyTaskRequest {
                task_id: id.clone(),
                force: true,
            })
            .await
            .expect("DestroyTask");
        stops.push(t.elapsed());
    }
    let out = loaded.instance.shutdown().await;
    if let Some(r) = &receiver {
        eprintln!(
            "  ({}: {} spans and {} metric points received; exit took {:?})",
            mode.label(),
            r.spans().len(),
            r.metric_points().len(),
            out.kill.elapsed
        );
    } else {
        eprintln!("  ({}: exit took {:?})", mode.label(), out.kill.elapsed);
    }
    (starts, stops)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// (median, p90, mean) in ms.
fn summary(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let n = v.len();
    let mean = v.iter().map(|d| ms(*d)).sum::<f64>() / n as f64;
    (ms(v[n / 2]), ms(v[(n * 9 / 10).min(n - 1)]), mean)
}

#[tokio::main]
async fn main() {
    let cycles = std::env::var("NOMAD_ECS_BENCH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(15);
    let emu = emulator::start_default("nomad").await.expect("moto");
    // A warm-up cycle: moto loads its ECS backend on the first call.
    let _ = run(&Mode::Off, &emu, 1).await;
    let mut rows = Vec::new();
    for mode in [Mode::Off, Mode::DeadCollector, Mode::LiveCollector] {
        let (starts, stops) = run(&mode, &emu, cycles).await;
        rows.push((mode.label(), summary(starts), summary(stops)));
    }
    println!();
    println!(
        "telemetry cost per task operation ({cycles} start/stop cycles per mode, moto behind the proxy)"
    );
    println!(
        "{:<22} {:>12} {:>12} {:>12}   {:>12} {:>12} {:>12}",
        "mode", "start p50", "start p90", "start mean", "stop p50", "stop p90", "stop mean"
    );
    for (label, (s50, s90, smean), (t50, t90, tmean)) in rows {
        println!(
            "{label:<22} {s50:>10.1}ms {s90:>10.1}ms {smean:>10.1}ms   {t50:>10.1}ms {t90:>10.1}ms {tmean:>10.1}ms"
        );
    }
}
