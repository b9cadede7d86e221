//! Exporter wrappers that keep a collector outage out of the logs: the first
//! failed export is one warning, later ones at most one every five minutes
//! (with the count in between), and the first success after a failure is
//! one info line. The SDK's own error logging is compiled out, so this is
//! the only place export failures are reported.

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

/// Repeat a failure warning at most this often.
const WARN_EVERY: Duration = Duration::from_secs(300);

/// Whether the last export of any signal failed.
static FAILING: AtomicBool = AtomicBool::new(false);

/// Whether the collector looked unreachable at the last export (then the
/// exit flush is not worth waiting for).
pub(super) fn failing() -> bool {
    FAILING.load(Ordering::Relaxed)
}

/// An exporter that reports its failures sparingly.
pub(super) struct Quiet<E> {
    inner: E,
    signal: &'static str,
    endpoint: String,
    log: Mutex<Outcomes>,
}

/// What the log has been told.
#[derive(Debug, Default)]
struct Outcomes {
    /// When the last warning went out; `None` while exports succeed.
    warned_at: Option<Instant>,
    /// Failures since that warning.
    unreported: u64,
}

impl<E> Quiet<E> {
    pub(super) fn new(inner: E, signal: &'static str, endpoint: String) -> Self {
        Self {
            inner,
            signal,
            endpoint,
            log: Mutex::new(Outcomes::default()),
        }
    }

    fn observe(&self, result: &OTelSdkResult) {
        FAILING.store(result.is_err(), Ordering::Relaxed);
        let Ok(mut log) = self.log.lock() else {
            return;
        };
        match result {
            Ok(()) => {
                if log.warned_at.take().is_some() {
                    tracing::info!(
                        signal = self.signal,
                        endpoint = %self.endpoint,
                        failed_since_last_warning = log.unreported,
                        "telemetry export works again"
                    );
                    log.unreported = 0;
                }
            }
            Err(e) => {
                if log.warned_at.is_some_and(|t| t.elapsed() < WARN_EVERY) {
                    log.unreported += 1;
                    return;
                }
                tracing::warn!(
                    signal = self.signal,
                    endpoint = %self.endpoint,
                    error = %e,
                    failed_since_last_warning = log.unreported,
                    "telemetry export failed; data is dropped, tasks are not affected (repeated at most every 5 minutes)"
                );
                log.warned_at = Some(Instant::now());
                log.unreported = 0;
            }
        }
    }
}

impl<E> fmt::Debug for Quiet<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Quiet")
            .field("signal", &self.signal)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl<E: SpanExporter> SpanExporter for Quiet<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let result = self.inner.export(batch).await;
        self.observe(&result);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: PushMetricExporter> PushMetricExporter for Quiet<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        self.observe(&result);
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::error::OTelSdkError;

    fn failed() -> OTelSdkResult {
        Err(OTelSdkError::InternalFailure("connection refused".into()))
    }

    #[test]
    fn a_run_of_failures_is_one_warning_and_a_recovery_resets_it() {
        let q = Quiet::new((), "traces", "http://127.0.0.1:1".into());
        q.observe(&failed());
        let first = q.log.lock().unwrap().warned_at;
        assert!(first.is_some());
        for _ in 0..100 {
            q.observe(&failed());
        }
        let log = q.log.lock().unwrap();
        assert_eq!(log.warned_at, first, "no second warning within 5 minutes");
        assert_eq!(log.unreported, 100);
        drop(log);
        q.observe(&Ok(()));
        let log = q.log.lock().unwrap();
        assert!(log.warned_at.is_none() && log.unreported == 0);
    }
}
