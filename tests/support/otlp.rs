//! An in-process OTLP/gRPC receiver on 127.0.0.1: opentelemetry-proto's
//! TraceService and MetricsService servers, keeping every request, with
//! helpers that flatten what arrived into spans and metric points.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Received {
    traces: Vec<ExportTraceServiceRequest>,
    metrics: Vec<ExportMetricsServiceRequest>,
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Received>>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().traces.push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().metrics.push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

/// A received span with its resource's `service.name`.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    /// `service.name` of the resource it came with.
    pub service_name: String,
    /// All resource attributes, stringified.
    pub resource: BTreeMap<String, String>,
    /// The span.
    pub span: Span,
}

impl ReceivedSpan {
    /// An attribute, stringified (`None` when absent).
    pub fn attr(&self, key: &str) -> Option<String> {
        attr(&self.span.attributes, key)
    }

    /// The span ID as lowercase hex.
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    /// The trace ID as lowercase hex.
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    /// The parent span ID as lowercase hex (empty for a root).
    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
}

/// The receiver. Stops serving when dropped.
pub struct OtlpReceiver {
    addr: SocketAddr,
    sink: Sink,
    stop: CancellationToken,
}

impl OtlpReceiver {
    /// Serve on 127.0.0.1 on a free port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sink = Sink::default();
        let stop = CancellationToken::new();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(sink.clone()))
            .add_service(MetricsServiceServer::new(sink.clone()));
        let until = stop.clone();
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = server
                .serve_with_incoming_shutdown(incoming, until.cancelled_owned())
                .await;
        });
        Self { addr, sink, stop }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        let got = self.sink.0.lock().unwrap();
        let mut out = Vec::new();
        for req in &got.traces {
            for rs in &req.resource_spans {
                let resource: BTreeMap<String, String> = rs
                    .resource
                    .as_ref()
                    .map(|r| {
                        r.attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), value(kv.value.as_ref())))
                            .collect()
                    })
                    .unwrap_or_default();
                let service_name = resource.get("service.name").cloned().unwrap_or_default();
                for ss in &rs.scope_spans {
                    for span in &ss.spans {
                        out.push(ReceivedSpan {
                            service_name: service_name.clone(),
                            resource: resource.clone(),
                            span: span.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// Every metric point so far, latest last: (metric name, attributes
    /// `k=v,...` sorted, value). Sums and gauges give their value,
    /// histograms their count.
    pub fn metric_points(&self) -> Vec<(String, String, f64)> {
        let got = self.sink.0.lock().unwrap();
        let mut out = Vec::new();
        for req in &got.metrics {
            for rm in &req.resource_metrics {
                for sm in &rm.scope_metrics {
                    for m in &sm.metrics {
                        let mut push = |attrs: &[KeyValue], v: f64| {
                            out.push((m.name.clone(), attr_key(attrs), v));
                        };
                        match &m.data {
                            Some(metric::Data::Sum(s)) => {
                                for p in &s.data_points {
                                    push(&p.attributes, number(p.value.as_ref()));
                                }
                            }
                            Some(metric::Data::Gauge(g)) => {
                                for p in &g.data_points {
                                    push(&p.attributes, number(p.value.as_ref()));
                                }
                            }
                            Some(metric::Data::Histogram(h)) => {
                                for p in &h.data_points {
                                    push(&p.attributes, p.count as f64);
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        out
    }

    /// The resource attributes of every metrics export, stringified.
    pub fn metric_resources(&self) -> Vec<BTreeMap<String, String>> {
        let got = self.sink.0.lock().unwrap();
        got.metrics
            .iter()
            .flat_map(|req| &req.resource_metrics)
            .map(|rm| {
                rm.resource
                    .as_ref()
                    .map(|r| {
                        r.attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), value(kv.value.as_ref())))
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect()
    }

    /// The latest value of a metric point (cumulative sums: the total).
    pub fn latest(&self, name: &str, attrs: &str) -> Option<f64> {
        self.metric_points()
            .into_iter()
            .rev()
            .find(|(n, a, _)| n == name && a == attrs)
            .map(|(_, _, v)| v)
    }

    /// Wait until `pred` holds for the spans received, or `timeout`.
    pub async fn wait_for_spans(
        &self,
        timeout: Duration,
        pred: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if pred(&spans) || tokio::time::Instant::now() >= deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Attributes rendered as sorted `k=v,...`.
pub fn attr_key(attrs: &[KeyValue]) -> String {
    let mut v: Vec<String> = attrs
        .iter()
        .map(|kv| format!("{}={}", kv.key, value(kv.value.as_ref())))
        .collect();
    v.sort();
    v.join(",")
}

/// One attribute, stringified.
pub fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| value(kv.value.as_ref()))
}

fn value(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn number(v: Option<&number_data_point::Value>) -> f64 {
    match v {
        Some(number_data_point::Value::AsInt(i)) => *i as f64,
        Some(number_data_point::Value::AsDouble(d)) => *d,
        None => f64::NAN,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
