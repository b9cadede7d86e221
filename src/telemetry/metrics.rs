//! The driver's metrics: what each instrument measures, its attributes, and
//! the recording functions the rest of the crate calls. Every function is a
//! no-op (one atomic load) until telemetry starts; gauges keep their last
//! value meanwhile and report it once it does.
//!
//! Names are OTel-style (`nomad_ecs.*`, units in UCUM); [`METRICS`] lists
//! them with the names Prometheus shows after the collector's translation,
//! which the provisioned Grafana dashboard queries.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, ObservableGauge};

/// What kind of instrument a metric is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic sum.
    Counter,
    /// Distribution.
    Histogram,
    /// Last value.
    Gauge,
}

/// One metric: OTel name, kind, unit, Prometheus name (counters get
/// `_total`, histograms `_bucket`/`_sum`/`_count`), meaning.
pub type MetricSpec = (&'static str, Kind, &'static str, &'static str, &'static str);

/// Every metric the driver exports.
pub const METRICS: &[MetricSpec] = &[
    (
        TASKS,
        Kind::Gauge,
        "{task}",
        "nomad_ecs_tasks",
        "tracked tasks by desired state (nomad.task.desired) and ECS lastStatus (nomad.task.observed)",
    ),
    (
        PASS_DURATION,
        Kind::Histogram,
        "s",
        "nomad_ecs_reconcile_pass_duration_seconds",
        "reconcile pass duration, by reconcile.full",
    ),
    (
        PASS_LAG,
        Kind::Histogram,
        "s",
        "nomad_ecs_reconcile_lag_seconds",
        "how late a pass started after it was due or triggered, by reconcile.full",
    ),
    (
        PASS_STEPS,
        Kind::Counter,
        "{step}",
        "nomad_ecs_reconcile_steps_total",
        "steps applied by reconcile passes, by reconcile.full",
    ),
    (
        PASS_CALLS,
        Kind::Histogram,
        "{call}",
        "nomad_ecs_reconcile_pass_calls",
        "ECS calls made per pass, by reconcile.full",
    ),
    (
        PASS_TASKS,
        Kind::Gauge,
        "{task}",
        "nomad_ecs_reconcile_tasks",
        "records the last full pass considered",
    ),
    (
        AWS_CALLS,
        Kind::Counter,
        "{call}",
        "nomad_ecs_aws_calls_total",
        "ECS API calls admitted by the token bucket, by rpc.method",
    ),
    (
        AWS_ATTEMPTS,
        Kind::Counter,
        "{attempt}",
        "nomad_ecs_aws_attempts_total",
        "ECS API attempts on the wire, retries included, by rpc.method and http.response.status_code",
    ),
    (
        AWS_THROTTLES,
        Kind::Counter,
        "{attempt}",
        "nomad_ecs_aws_throttles_total",
        "ECS API attempts answered with throttling, by rpc.method",
    ),
    (
        AWS_ERRORS,
        Kind::Counter,
        "{call}",
        "nomad_ecs_aws_errors_total",
        "ECS API calls that failed after retries, by rpc.method and error.type",
    ),
    (
        BUCKET_WAIT,
        Kind::Histogram,
        "s",
        "nomad_ecs_aws_token_bucket_wait_seconds",
        "time a call waited for the client-side token bucket, by rpc.method",
    ),
    (
        START_LATENCY,
        Kind::Histogram,
        "s",
        "nomad_ecs_task_start_duration_seconds",
        "StartTask until ECS reports RUNNING",
    ),
    (
        STOP_LATENCY,
        Kind::Histogram,
        "s",
        "nomad_ecs_task_stop_duration_seconds",
        "stop request until ECS reports STOPPED",
    ),
    (
        STORE_WRITE,
        Kind::Histogram,
        "s",
        "nomad_ecs_store_write_duration_seconds",
        "durable store write (write + fsync), by db.operation.name",
    ),
    (
        STORE_SIZE,
        Kind::Gauge,
        "By",
        "nomad_ecs_store_size_bytes",
        "task store size on disk",
    ),
];

/// Tracked tasks by desired and observed state.
pub const TASKS: &str = "nomad_ecs.tasks";
/// Reconcile pass duration.
pub const PASS_DURATION: &str = "nomad_ecs.reconcile.pass.duration";
/// Reconcile pass lag.
pub const PASS_LAG: &str = "nomad_ecs.reconcile.lag";
/// Steps applied.
pub const PASS_STEPS: &str = "nomad_ecs.reconcile.steps";
/// ECS calls per pass.
pub const PASS_CALLS: &str = "nomad_ecs.reconcile.pass.calls";
/// Records in the last full pass.
pub const PASS_TASKS: &str = "nomad_ecs.reconcile.tasks";
/// ECS calls.
pub const AWS_CALLS: &str = "nomad_ecs.aws.calls";
/// ECS attempts.
pub const AWS_ATTEMPTS: &str = "nomad_ecs.aws.attempts";
/// ECS throttling answers.
pub const AWS_THROTTLES: &str = "nomad_ecs.aws.throttles";
/// ECS calls failed after retries.
pub const AWS_ERRORS: &str = "nomad_ecs.aws.errors";
/// Token-bucket wait.
pub const BUCKET_WAIT: &str = "nomad_ecs.aws.token_bucket.wait";
/// StartTask to RUNNING.
pub const START_LATENCY: &str = "nomad_ecs.task.start.duration";
/// Stop request to STOPPED.
pub const STOP_LATENCY: &str = "nomad_ecs.task.stop.duration";
/// Store write latency.
pub const STORE_WRITE: &str = "nomad_ecs.store.write.duration";
/// Store size on disk.
pub const STORE_SIZE: &str = "nomad_ecs.store.size";

/// Bucket bounds (seconds) for API calls, bucket waits and store writes.
const FAST_S: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Bucket bounds (seconds) for task start and stop.
const TASK_S: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// Bucket bounds for calls per pass.
const CALLS: &[f64] = &[0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0];

/// How often the store size is sampled at most.
const STORE_SIZE_EVERY: Duration = Duration::from_secs(5);

struct Instruments {
    pass_duration: Histogram<f64>,
    pass_lag: Histogram<f64>,
    pass_steps: Counter<u64>,
    pass_calls: Histogram<u64>,
    aws_calls: Counter<u64>,
    aws_attempts: Counter<u64>,
    aws_throttles: Counter<u64>,
    aws_errors: Counter<u64>,
    bucket_wait: Histogram<f64>,
    start_latency: Histogram<f64>,
    stop_latency: Histogram<f64>,
    store_write: Histogram<f64>,
    _gauges: Vec<ObservableGauge<u64>>,
}

static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();

/// Task counts by (desired, observed); a combination seen once is reported
/// (as 0) until the process exits, so its series does not go stale.
static TASK_STATES: Mutex<BTreeMap<(String, String), u64>> = Mutex::new(BTreeMap::new());
/// `u64::MAX`: not known yet.
static LAST_PASS_TASKS: AtomicU64 = AtomicU64::new(u64::MAX);
static LAST_STORE_SIZE: AtomicU64 = AtomicU64::new(u64::MAX);
static STORE_SIZED_AT: Mutex<Option<Instant>> = Mutex::new(None);

/// Create the instruments on `provider`'s meter. Later calls are ignored.
pub(super) fn init(provider: &impl opentelemetry::metrics::MeterProvider) {
    let meter = provider.meter_with_scope(
        opentelemetry::InstrumentationScope::builder(super::SCOPE)
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    );
    let _ = INSTRUMENTS.set(instruments(&meter));
}

fn describe(name: &str) -> (&'static str, &'static str) {
    METRICS
        .iter()
        .find(|m| m.0 == name)
        .map_or(("", ""), |m| (m.2, m.4))
}

fn histogram(meter: &Meter, name: &'static str, bounds: &[f64]) -> Histogram<f64> {
    let (unit, description) = describe(name);
    meter
        .f64_histogram(name)
        .with_unit(unit)
        .with_description(description)
        .with_boundaries(bounds.to_vec())
        .build()
}

fn counter(meter: &Meter, name: &'static str) -> Counter<u64> {
    let (unit, description) = describe(name);
    meter
        .u64_counter(name)
        .with_unit(unit)
        .with_description(description)
        .build()
}

fn gauge(
    meter: &Meter,
    name: &'static str,
    observe: impl Fn(&dyn opentelemetry::metrics::AsyncInstrument<u64>) + Send + Sync + 'static,
) -> ObservableGauge<u64> {
    let (unit, description) = describe(name);
    meter
        .u64_observable_gauge(name)
        .with_unit(unit)
        .with_description(description)
        .with_callback(move |o| observe(o))
        .build()
}

fn instruments(meter: &Meter) -> Instruments {
    let (unit, description) = describe(PASS_CALLS);
    let pass_calls = meter
        .u64_histogram(PASS_CALLS)
        .with_unit(unit)
        .with_description(description)
        .with_boundaries(CALLS.to_vec())
        .build();
    let gauges = vec![
        gauge(meter, TASKS, |o| {
            if let Ok(states) = TASK_STATES.lock() {
                for ((desired, observed), n) in states.iter() {
                    o.observe(
                        *n,
                        &[
                            KeyValue::new("nomad.task.desired", desired.clone()),
                            KeyValue::new("nomad.task.observed", observed.clone()),
                        ],
                    );
                }
            }
        }),
        gauge(meter, PASS_TASKS, |o| {
            let n = LAST_PASS_TASKS.load(Ordering::Relaxed);
            if n != u64::MAX {
                o.observe(n, &[]);
            }
        }),
        gauge(meter, STORE_SIZE, |o| {
            let n = LAST_STORE_SIZE.load(Ordering::Relaxed);
            if n != u64::MAX {
                o.observe(n, &[]);
            }
        }),
    ];
    Instruments {
        pass_duration: histogram(meter, PASS_DURATION, FAST_S),
        pass_lag: histogram(meter, PASS_LAG, FAST_S),
        pass_steps: counter(meter, PASS_STEPS),
        pass_calls,
        aws_calls: counter(meter, AWS_CALLS),
        aws_attempts: counter(meter, AWS_ATTEMPTS),
        aws_throttles: counter(meter, AWS_THROTTLES),
        aws_errors: counter(meter, AWS_ERRORS),
        bucket_wait: histogram(meter, BUCKET_WAIT, FAST_S),
        start_latency: histogram(meter, START_LATENCY, TASK_S),
        stop_latency: histogram(meter, STOP_LATENCY, TASK_S),
        store_write: histogram(meter, STORE_WRITE, FAST_S),
        _gauges: gauges,
    }
}

fn with(f: impl FnOnce(&Instruments)) {
    if let Some(i) = INSTRUMENTS.get() {
        f(i);
    }
}

/// Record one reconcile pass: whether it was a full pass, the records it
/// considered, the ECS calls it made, the steps it applied, how long it took,
/// and how late it started (after its period was due, or after the trigger
/// that asked for it).
pub fn record_pass(
    full: bool,
    tasks: usize,
    calls: u64,
    steps: usize,
    duration: Duration,
    lag: Duration,
) {
    if full {
        LAST_PASS_TASKS.store(
            u64::try_from(tasks).unwrap_or(u64::MAX - 1),
            Ordering::Relaxed,
        );
    }
    with(|i| {
        let attrs = [KeyValue::new("reconcile.full", full)];
        i.pass_duration.record(duration.as_secs_f64(), &attrs);
        i.pass_lag.record(lag.as_secs_f64(), &attrs);
        i.pass_steps
            .add(u64::try_from(steps).unwrap_or(u64::MAX), &attrs);
        i.pass_calls.record(calls, &attrs);
    });
}

/// Replace the task counts: `(desired, observed, count)` for every
/// combination present now (a full pass knows them all). Combinations that
/// are absent now report 0.
pub fn record_task_states(counts: &[(&str, &str, u64)]) {
    let Ok(mut states) = TASK_STATES.lock() else {
        return;
    };
    for n in states.values_mut() {
        *n = 0;
    }
    for (desired, observed, n) in counts {
        *states
            .entry(((*desired).to_string(), (*observed).to_string()))
            .or_insert(0) += n;
    }
}

/// Record how long a task took from StartTask to ECS reporting RUNNING.
pub fn record_start_latency(d: Duration) {
    with(|i| i.start_latency.record(d.as_secs_f64(), &[]));
}

/// Record how long a task took from the stop request to ECS reporting
/// STOPPED.
pub fn record_stop_latency(d: Duration) {
    with(|i| i.stop_latency.record(d.as_secs_f64(), &[]));
}

pub(super) fn ecs_call(operation: &'static str, waited: Duration) {
    with(|i| {
        let attrs = [KeyValue::new("rpc.method", operation)];
        i.aws_calls.add(1, &attrs);
        i.bucket_wait.record(waited.as_secs_f64(), &attrs);
    });
}

pub(super) fn ecs_attempt(operation: &str, status: Option<u16>, throttled: bool) {
    with(|i| {
        let method = KeyValue::new("rpc.method", operation.to_string());
        let mut attrs = vec![method.clone()];
        if let Some(s) = status {
            attrs.push(KeyValue::new("http.response.status_code", i64::from(s)));
        }
        i.aws_attempts.add(1, &attrs);
        if throttled {
            i.aws_throttles.add(1, &[method]);
        }
    });
}

pub(super) fn ecs_error(operation: &'static str, kind: String) {
    with(|i| {
        i.aws_errors.add(
            1,
            &[
                KeyValue::new("rpc.method", operation),
                KeyValue::new("error.type", kind),
            ],
        );
    });
}

pub(super) fn store_size(size: impl FnOnce() -> Option<u64>) {
    let Ok(mut at) = STORE_SIZED_AT.lock() else {
        return;
    };
    if at.is_some_and(|t| t.elapsed() < STORE_SIZE_EVERY) {
        return;
    }
    *at = Some(Instant::now());
    drop(at);
    if let Some(n) = size() {
        LAST_STORE_SIZE.store(n.min(u64::MAX - 1), Ordering::Relaxed);
    }
}

/// A store write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOp {
    /// Insert or replace a record, then make it durable.
    Put,
    /// Delete a record, then make that durable.
    Delete,
}

impl StoreOp {
    fn name(self) -> &'static str {
        match self {
            Self::Put => "put",
            Self::Delete => "delete",
        }
    }
}

/// A store write in progress: its span is entered, and its latency is
/// recorded when this is dropped.
#[must_use = "the write is timed until this guard is dropped"]
#[derive(Debug)]
pub struct StoreWrite {
    op: StoreOp,
    started: Instant,
    _span: tracing::span::EnteredSpan,
}

impl StoreWrite {
    pub(super) fn start(op: StoreOp) -> Self {
        let span = match op {
            StoreOp::Put => tracing::info_span!(
                "store.put",
                db.system.name = "sled",
                db.operation.name = "put"
            ),
            StoreOp::Delete => tracing::info_span!(
                "store.delete",
                db.system.name = "sled",
                db.operation.name = "delete"
            ),
        };
        Self {
            op,
            started: Instant::now(),
            _span: span.entered(),
        }
    }
}

impl Drop for StoreWrite {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        with(|i| {
            i.store_write.record(
                elapsed.as_secs_f64(),
                &[KeyValue::new("db.operation.name", self.op.name())],
            );
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
    use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
    use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
    use std::sync::Arc;

    #[test]
    fn every_metric_has_a_prometheus_name_matching_its_kind_and_unit() {
        for (name, kind, unit, prom, description) in METRICS {
            assert!(name.starts_with("nomad_ecs."), "{name}");
            assert!(!description.is_empty(), "{name}");
            let mut expected = name.replace('.', "_");
            match *unit {
                "s" => expected.push_str("_seconds"),
                "By" => expected.push_str("_bytes"),
                _ => {}
            }
            if *kind == Kind::Counter {
                expected.push_str("_total");
            }
            assert_eq!(*prom, expected, "{name}");
        }
    }

    /// Data points by metric name and `k=v,...` attributes: sums and gauges
    /// give their value, f64 histograms their count, u64 histograms their sum.
    type Points = BTreeMap<(String, String), f64>;

    #[derive(Debug, Default, Clone)]
    struct Capture(Arc<Mutex<Points>>);

    impl PushMetricExporter for Capture {
        async fn export(&self, rm: &ResourceMetrics) -> OTelSdkResult {
            let mut out = self.0.lock().unwrap();
            for scope in rm.scope_metrics() {
                for m in scope.metrics() {
                    let mut put = |attrs: &mut dyn Iterator<Item = &KeyValue>, v: f64| {
                        let mut a: Vec<String> =
                            attrs.map(|kv| format!("{}={}", kv.key, kv.value)).collect();
                        a.sort();
                        out.insert((m.name().to_string(), a.join(",")), v);
                    };
                    match m.data() {
                        AggregatedMetrics::U64(MetricData::Sum(d)) => {
                            for p in d.data_points() {
                                put(&mut p.attributes(), p.value() as f64);
                            }
                        }
                        AggregatedMetrics::U64(MetricData::Gauge(d)) => {
                            for p in d.data_points() {
                                put(&mut p.attributes(), p.value() as f64);
                            }
                        }
                        AggregatedMetrics::F64(MetricData::Histogram(d)) => {
                            for p in d.data_points() {
                                put(&mut p.attributes(), p.count() as f64);
                            }
                        }
                        AggregatedMetrics::U64(MetricData::Histogram(d)) => {
                            for p in d.data_points() {
                                put(&mut p.attributes(), p.sum() as f64);
                            }
                        }
                        _ => {}
                    }
                }
            }
            Ok(())
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }
        fn temporality(&self) -> Temporality {
            Temporality::Cumulative
        }
    }

    #[test]
    fn recorded_values_reach_the_exporter_with_their_attributes() {
        let capture = Capture::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(capture.clone()).build())
            .build();
        init(&provider);

        record_pass(
            true,
            3,
            2,
            1,
            Duration::from_millis(20),
            Duration::from_millis(5),
        );
        record_pass(false, 1, 4, 2, Duration::from_millis(20), Duration::ZERO);
        record_task_states(&[("running", "RUNNING", 2), ("stopping", "DEACTIVATING", 1)]);
        record_task_states(&[("running", "RUNNING", 3)]);
        record_start_latency(Duration::from_secs(2));
        record_stop_latency(Duration::from_secs(1));
        ecs_call("RunTask", Duration::from_millis(1));
        ecs_attempt("RunTask", Some(400), true);
        ecs_attempt("RunTask", Some(200), false);
        ecs_error("StopTask", "ThrottlingException".into());
        drop(StoreWrite::start(StoreOp::Put));
        store_size(|| Some(4096));
        provider.force_flush().unwrap();

        let points = capture.0.lock().unwrap().clone();
        let one = |name: &str, key: &str| points.get(&(name.to_string(), key.to_string())).copied();
        assert_eq!(one(PASS_DURATION, "reconcile.full=true"), Some(1.0));
        assert_eq!(one(PASS_LAG, "reconcile.full=false"), Some(1.0));
        assert_eq!(one(PASS_STEPS, "reconcile.full=false"), Some(2.0));
        assert_eq!(one(PASS_CALLS, "reconcile.full=false"), Some(4.0));
        assert_eq!(one(PASS_TASKS, ""), Some(3.0), "the last full pass");
        assert_eq!(
            one(
                TASKS,
                "nomad.task.desired=running,nomad.task.observed=RUNNING"
            ),
            Some(3.0)
        );
        assert_eq!(
            one(
                TASKS,
                "nomad.task.desired=stopping,nomad.task.observed=DEACTIVATING"
            ),
            Some(0.0),
            "a combination that is gone reports 0"
        );
        assert_eq!(one(START_LATENCY, ""), Some(1.0));
        assert_eq!(one(STOP_LATENCY, ""), Some(1.0));
        assert_eq!(one(AWS_CALLS, "rpc.method=RunTask"), Some(1.0));
        assert_eq!(one(BUCKET_WAIT, "rpc.method=RunTask"), Some(1.0));
        assert_eq!(
            one(
                AWS_ATTEMPTS,
                "http.response.status_code=400,rpc.method=RunTask"
            ),
            Some(1.0)
        );
        assert_eq!(one(AWS_THROTTLES, "rpc.method=RunTask"), Some(1.0));
        assert_eq!(
            one(
                AWS_ERRORS,
                "error.type=ThrottlingException,rpc.method=StopTask"
            ),
            Some(1.0)
        );
        assert_eq!(one(STORE_WRITE, "db.operation.name=put"), Some(1.0));
        // The size gauge is process-wide: under `cargo test` other tests' stores
        // report into it too, so only its presence is certain here.
        assert!(
            one(STORE_SIZE, "").is_some_and(|v| v > 0.0),
            "store size reported"
        );
    }
}
