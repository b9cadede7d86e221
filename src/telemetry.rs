//! OpenTelemetry: traces and metrics exported over OTLP/gRPC, off unless
//! configured, never in the way of a task operation.
//!
//! * **When**: telemetry starts on the first `SetConfig` of the long-lived
//!   plugin instance whose effective configuration enables it ([`plan`]), not
//!   at process start: Nomad launches the binary three times and two of those
//!   launches are short-lived probes whose spans would only be noise. The
//!   first configuration wins; a later, different one asks for a restart.
//! * **Traces**: the `tracing` spans of this crate become OTel spans through
//!   `tracing-opentelemetry` (span fields are attributes; `otel.name` and
//!   `otel.kind` set the name and kind). The layer is installed with the
//!   subscriber but forwards nothing until telemetry starts ([`layer`]).
//!   Spans leave through a batch span processor on its own thread.
//! * **Metrics**: [`metrics`] instruments, exported by a periodic reader on its
//!   own thread (`OTEL_METRIC_EXPORT_INTERVAL`, default 60 s).
//! * **Failure**: exporters are built lazily (no connection is made before
//!   the first export) and run off the RPC path; a collector that is down
//!   costs dropped telemetry and one warning every five minutes, never a
//!   slower RPC (see `telemetry/export.rs`). The SDK's own diagnostics
//!   are compiled out (no `internal-logs` feature).
//! * **Exit**: [`shutdown`] flushes both pipelines, bounded by a timeout that
//!   fits go-plugin's 2 s kill grace.

mod aws;
mod export;
pub mod layer;
pub mod metrics;

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::config::Settings;

pub use aws::EcsAttempts;
pub use metrics::{
    StoreOp, StoreWrite, record_pass, record_start_latency, record_stop_latency, record_task_states,
};

/// `service.name` when neither the config nor `OTEL_SERVICE_NAME` sets one.
pub const DEFAULT_SERVICE_NAME: &str = "nomad-driver-ecs";

/// The instrumentation scope of every span and metric.
pub const SCOPE: &str = "nomad-driver-ecs";

/// `rpc.service` of the plugin's driver RPCs (the gRPC service name).
pub const DRIVER_SERVICE: &str = "hashicorp.nomad.plugins.drivers.proto.Driver";

/// `rpc.service` of the plugin's base RPCs.
pub const BASE_SERVICE: &str = "hashicorp.nomad.plugins.base.proto.BasePlugin";

/// How long [`shutdown`] may take: go-plugin SIGKILLs the plugin 2 s after
/// `Shutdown`, and the gRPC drain takes up to 800 ms of that.
pub const FLUSH_TIMEOUT: Duration = Duration::from_millis(500);

/// Where telemetry goes, as resolved by [`plan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The OTLP/gRPC endpoint from the config. `None`: the exporters resolve
    /// `OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT`, then
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, then `http://localhost:4317`.
    pub endpoint: Option<String>,
    /// `service.name`.
    pub service_name: String,
}

/// Decide whether telemetry is on and where it goes, from the settings and
/// the environment (`env` looks a variable up; empty counts as unset).
///
/// * Off when `OTEL_SDK_DISABLED=true`, whatever else is set.
/// * On when `telemetry_endpoint` is configured (it wins over the
///   `OTEL_EXPORTER_OTLP_*ENDPOINT` variables), or when one of those
///   variables is set, or when `OTEL_SDK_DISABLED=false` is set explicitly
///   (then the OTLP default, `http://localhost:4317`, applies).
/// * Otherwise off: telemetry is opt-in.
///
/// `service.name`: `telemetry_service_name` when configured (the plugin
/// block is the most specific place, as for every other option), else
/// `OTEL_SERVICE_NAME`, else [`DEFAULT_SERVICE_NAME`]. `service.name` inside
/// `OTEL_RESOURCE_ATTRIBUTES` ranks below both; the other resource
/// attributes there are kept.
pub fn plan(settings: &Settings, env: &dyn Fn(&str) -> Option<String>) -> Option<Plan> {
    let var = |k: &str| {
        env(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let disabled = var("OTEL_SDK_DISABLED").map(|v| v.to_ascii_lowercase());
    if disabled.as_deref() == Some("true") {
        return None;
    }
    let configured = settings
        .telemetry_endpoint
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_string);
    let from_env = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    ]
    .iter()
    .any(|k| var(k).is_some());
    if configured.is_none() && !from_env && disabled.as_deref() != Some("false") {
        return None;
    }
    let service_name = settings
        .telemetry_service_name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .or_else(|| var("OTEL_SERVICE_NAME"))
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_string());
    Some(Plan {
        endpoint: configured,
        service_name,
    })
}

/// The running pipelines.
struct Pipelines {
    plan: Plan,
    tracer: SdkTracerProvider,
    meter: SdkMeterProvider,
}

static PIPELINES: OnceLock<Pipelines> = OnceLock::new();
static STARTING: Mutex<()> = Mutex::new(());

/// Whether telemetry has started in this process.
pub fn active() -> bool {
    PIPELINES.get().is_some()
}

/// Start telemetry if `settings` (with the environment) enable it and it is
/// not running yet. Never blocks on the network: the exporters connect on
/// their first export, on their own threads. A failure to build them is one
/// warning and telemetry stays off.
pub fn configure(settings: &Settings) {
    let env = |k: &str| std::env::var(k).ok();
    let Some(plan) = plan(settings, &env) else {
        return;
    };
    let Ok(_starting) = STARTING.lock() else {
        return;
    };
    if let Some(running) = PIPELINES.get() {
        if running.plan != plan {
            tracing::warn!(
                running = running
                    .plan
                    .endpoint
                    .as_deref()
                    .unwrap_or("(from OTEL_* variables)"),
                requested = plan
                    .endpoint
                    .as_deref()
                    .unwrap_or("(from OTEL_* variables)"),
                "telemetry settings changed; restart the plugin to apply them"
            );
        }
        return;
    }
    // tonic's lazy channel spawns its connection task on the current runtime.
    if tokio::runtime::Handle::try_current().is_err() {
        tracing::warn!("telemetry not started: no async runtime");
        return;
    }
    match start(&plan) {
        Ok(p) => {
            layer::activate(p.tracer.tracer(SCOPE));
            metrics::init(&p.meter);
            tracing::info!(
                endpoint = plan.endpoint.as_deref().unwrap_or("(from OTEL_* variables)"),
                service.name = %plan.service_name,
                "telemetry on: exporting traces and metrics over OTLP/gRPC"
            );
            let _ = PIPELINES.set(p);
        }
        Err(e) => tracing::warn!(error = %e, "telemetry not started"),
    }
}

fn start(plan: &Plan) -> Result<Pipelines, opentelemetry_otlp::ExporterBuildError> {
    use opentelemetry_otlp::{MetricExporter, SpanExporter, WithExportConfig as _};
    let resource = Resource::builder()
        .with_service_name(plan.service_name.clone())
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("process.pid", i64::from(std::process::id())),
        ])
        .build();
    let label = plan
        .endpoint
        .clone()
        .unwrap_or_else(|| "(from OTEL_* variables)".into());
    let mut spans = SpanExporter::builder().with_tonic();
    let mut metrics = MetricExporter::builder().with_tonic();
    if let Some(endpoint) = &plan.endpoint {
        spans = spans.with_endpoint(endpoint.clone());
        metrics = metrics.with_endpoint(endpoint.clone());
    }
    let spans = export::Quiet::new(spans.build()?, "traces", label.clone());
    let metrics = export::Quiet::new(metrics.build()?, "metrics", label);
    // No sampler given: the SDK reads OTEL_TRACES_SAMPLER(_ARG); the batch
    // processor reads OTEL_BSP_*, the reader OTEL_METRIC_EXPORT_INTERVAL.
    let tracer = SdkTracerProvider::builder()
        .with_resource(resource.clone())
        .with_batch_exporter(spans)
        .build();
    let meter = SdkMeterProvider::builder()
        .with_resource(resource)
        .with_reader(PeriodicReader::builder(metrics).build())
        .build();
    Ok(Pipelines {
        plan: plan.clone(),
        tracer,
        meter,
    })
}

/// Flush and stop both pipelines, waiting at most `timeout`. A collector
/// that is down or slow costs the telemetry still queued, never more time.
/// Must run on the runtime that was current at [`configure`] (the exporters'
/// connections live there). A no-op when telemetry never started.
pub async fn shutdown(timeout: Duration) {
    let Some(p) = PIPELINES.get() else {
        return;
    };
    // A collector that refused the last export will refuse this one too.
    let timeout = if export::failing() {
        timeout.min(Duration::from_millis(100))
    } else {
        timeout
    };
    let tracer = p.tracer.clone();
    let meter = p.meter.clone();
    // Both calls block their thread until the export finishes or times out.
    let traces = tokio::task::spawn_blocking(move || tracer.shutdown_with_timeout(timeout));
    let metrics = tokio::task::spawn_blocking(move || meter.shutdown_with_timeout(timeout));
    let _ = tokio::time::timeout(timeout, async {
        let _ = traces.await;
        let _ = metrics.await;
    })
    .await;
}

/// The span context of the caller, to carry across a channel (to the
/// reconciler) so that work done elsewhere joins the caller's trace. Cheap
/// to clone; holding it does not keep the caller's span open.
#[derive(Clone, Debug, Default)]
pub struct TraceParent(Option<Context>);

impl TraceParent {
    /// No parent: work runs under whatever span is current where it runs.
    pub fn none() -> Self {
        Self(None)
    }

    /// Whether this carries a (sampled or not) span context.
    pub fn is_some(&self) -> bool {
        self.0.is_some()
    }

    /// The trace ID, as 32 lowercase hex digits, when there is one.
    pub fn trace_id(&self) -> Option<String> {
        let cx = self.0.as_ref()?;
        let sc = cx.span().span_context().clone();
        sc.is_valid().then(|| sc.trace_id().to_string())
    }
}

/// The current span's context ([`TraceParent::none`] when telemetry is off
/// or no span is current).
pub fn current_context() -> TraceParent {
    if !active() {
        return TraceParent::none();
    }
    let cx = Context::current();
    if cx.span().span_context().is_valid() {
        TraceParent(Some(cx))
    } else {
        TraceParent::none()
    }
}

/// A span for one task lifecycle step, exported as `name`. Its trace parent
/// is `parent` when that carries a context (the RPC that asked for the
/// step), otherwise the current span (the reconcile pass). Its `tracing`
/// parent, which log lines show, is always the current span. Record
/// `nomad.task.id`, `nomad.alloc.id` and `aws.ecs.task.arn` on it as soon
/// as they are known.
pub fn child_span(parent: &TraceParent, name: &'static str) -> tracing::Span {
    let span = tracing::info_span!(
        "task.step",
        otel.name = name,
        nomad.task.id = tracing::field::Empty,
        nomad.alloc.id = tracing::field::Empty,
        aws.ecs.task.arn = tracing::field::Empty,
    );
    if let Some(cx) = &parent.0 {
        let _ = span.set_parent(cx.clone());
    }
    span
}

/// Link `span` to `parent` (for a batched pass that serves several
/// callers: the pass links to each caller's span).
pub fn link(span: &tracing::Span, parent: &TraceParent) {
    if let Some(cx) = &parent.0 {
        span.add_link(cx.span().span_context().clone());
    }
}

/// The sampled trace and span IDs of the current span, for log lines.
pub fn current_ids() -> Option<(String, String)> {
    if !active() {
        return None;
    }
    let cx = Context::current();
    let span = cx.span();
    let sc = span.span_context();
    (sc.is_valid() && sc.is_sampled())
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// The ECS SDK interceptor that counts every attempt on the wire (retries
/// included) and every throttling answer, by operation.
pub fn ecs_interceptor() -> EcsAttempts {
    EcsAttempts
}

/// Count one ECS call admitted by the token bucket after `waited`.
pub fn record_ecs_call(operation: &'static str, waited: Duration) {
    metrics::ecs_call(operation, waited);
}

/// Count a failed ECS call (after the SDK's retries), mark the current span
/// (the ECS call's) as failed, and hand the error back.
pub fn record_ecs_error(
    operation: &'static str,
    err: crate::ecs::EcsError,
) -> crate::ecs::EcsError {
    let kind = aws::error_type(&err);
    metrics::ecs_error(operation, kind.clone());
    if active() {
        let span = tracing::Span::current();
        span.set_attribute("error.type", kind);
        span.set_status(opentelemetry::trace::Status::error(err.to_string()));
    }
    err
}

/// Start timing a store write; the returned guard is a `store.put` or
/// `store.delete` span and records the write latency when dropped.
pub fn store_write(op: StoreOp) -> StoreWrite {
    StoreWrite::start(op)
}

/// Report the store's size on disk; `size` is evaluated at most every few
/// seconds (sizing walks the database's files).
pub fn store_size(size: impl FnOnce() -> Option<u64>) {
    metrics::store_size(size);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(endpoint: Option<&str>, name: Option<&str>) -> Settings {
        Settings {
            telemetry_endpoint: endpoint.map(str::to_string),
            telemetry_service_name: name.map(str::to_string),
            ..Settings::default()
        }
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        move |k| {
            vars.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn telemetry_is_off_unless_an_endpoint_or_an_explicit_opt_in_is_given() {
        assert_eq!(plan(&settings(None, None), &env(&[])), None);
        assert_eq!(
            plan(&settings(None, None), &env(&[("OTEL_SERVICE_NAME", "x")])),
            None,
            "a service name alone does not turn telemetry on"
        );
        let p = plan(
            &settings(None, None),
            &env(&[("OTEL_SDK_DISABLED", "FALSE")]),
        )
        .unwrap();
        assert_eq!(p.endpoint, None, "the OTLP default endpoint applies");
        for var in [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        ] {
            let p = plan(&settings(None, None), &env(&[(var, "http://c:4317")])).unwrap();
            assert_eq!(p.endpoint, None, "{var}: the exporters read it themselves");
        }
        assert_eq!(
            plan(
                &settings(None, None),
                &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])
            ),
            None,
            "empty counts as unset"
        );
    }

    #[test]
    fn the_configured_endpoint_wins_and_otel_sdk_disabled_wins_over_everything() {
        let on = settings(Some("http://collector:4317"), None);
        let p = plan(
            &on,
            &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4317")]),
        )
        .unwrap();
        assert_eq!(p.endpoint.as_deref(), Some("http://collector:4317"));
        assert_eq!(plan(&on, &env(&[("OTEL_SDK_DISABLED", "true")])), None);
    }

    #[test]
    fn the_service_name_comes_from_the_config_then_otel_service_name_then_the_default() {
        let e = env(&[("OTEL_SERVICE_NAME", "from-env")]);
        let name =
            |s: Settings, e: &dyn Fn(&str) -> Option<String>| plan(&s, e).unwrap().service_name;
        assert_eq!(
            name(settings(Some("http://c:1"), Some("from-config")), &e),
            "from-config"
        );
        assert_eq!(name(settings(Some("http://c:1"), None), &e), "from-env");
        assert_eq!(
            name(settings(Some("http://c:1"), Some(" ")), &env(&[])),
            DEFAULT_SERVICE_NAME
        );
    }

    #[test]
    fn without_telemetry_there_is_no_trace_parent_and_steps_still_get_spans() {
        // Nothing in this test binary starts telemetry.
        assert!(!current_context().is_some());
        assert_eq!(current_ids(), None);
        let span = child_span(&TraceParent::none(), "task.run");
        span.record("nomad.task.id", "a/b/c");
        link(&span, &TraceParent::none());
    }
}
