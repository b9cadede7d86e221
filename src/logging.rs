//! Logs on stderr as hclog-shaped JSON, one object per line, so the Nomad
//! agent shows our messages at their own levels under the driver manager.
//!
//! The host does unchecked type assertions on `@message`, `@level` and
//! `@timestamp`, and drops a line whose timestamp is not exactly
//! `2006-01-02T15:04:05.000000Z07:00`; this module is the only writer of
//! stderr and always emits those three keys as strings in that format.
//!
//! With telemetry on, each line inside a sampled span also carries
//! `trace_id` and `span_id` (W3C hex), so a log line leads to its trace.
//! The log filter applies to this layer only: the telemetry layer next to it
//! has its own (see `telemetry::layer`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::FormatItem;
use time::macros::format_description;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// The hclog timestamp layout: six fractional digits, `Z` for UTC.
const TIMESTAMP: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

/// The `@module` every line carries (hclog's logger name).
pub const MODULE: &str = "nomad-driver-ecs";

/// Default filter: everything of ours (the host filters by its own level),
/// only warnings from the libraries beneath us.
pub const DEFAULT_FILTER: &str = "warn,nomad_driver_ecs=trace";

static STDERR_BROKEN: AtomicBool = AtomicBool::new(false);

/// True once a write to stderr failed with a broken pipe: the host that read
/// our logs is gone.
pub fn stderr_broken() -> bool {
    STDERR_BROKEN.load(Ordering::Relaxed)
}

/// Install the global subscriber: the hclog JSON layer, filtered by
/// `NOMAD_ECS_LOG` (an `EnvFilter` directive) or [`DEFAULT_FILTER`], and the
/// (dormant until configured) telemetry layer.
pub fn init() {
    let filter = std::env::var("NOMAD_ECS_LOG")
        .ok()
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new(DEFAULT_FILTER));
    let _ = tracing_subscriber::registry()
        .with(crate::telemetry::layer::layer())
        .with(HclogLayer.with_filter(filter))
        .try_init();
}

/// A `tracing` layer that renders events as hclog JSON lines on stderr.
/// Fields of the enclosing spans are included (outermost first), then the
/// event's own fields.
pub struct HclogLayer;

/// Span fields stored in the span's extensions.
struct SpanFields(Map<String, Value>);

impl<S> Layer<S> for HclogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = JsonVisitor::default();
        attrs.record(&mut fields);
        // `otel.name`, `otel.kind` instruct the telemetry layer, and
        // `rpc.system`/`rpc.service` only restate what `rpc.method` and the
        // module say: span attributes for the trace backend, not log noise.
        fields
            .fields
            .retain(|k, _| !k.starts_with("otel.") && k != "rpc.system" && k != "rpc.service");
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(fields.fields));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            if let Some(SpanFields(map)) = ext.get_mut::<SpanFields>() {
                let mut fields = JsonVisitor::default();
                values.record(&mut fields);
                map.extend(fields.fields);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut line = Map::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(SpanFields(map)) = span.extensions().get::<SpanFields>() {
                    for (k, v) in map {
                        line.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        let mut fields = JsonVisitor::default();
        event.record(&mut fields);
        let message = fields
            .fields
            .remove("message")
            .map(|v| match v {
                Value::String(s) => s,
                other => other.to_string(),
            })
            .unwrap_or_default();
        line.extend(fields.fields);
        if let Some((trace_id, span_id)) = crate::telemetry::current_ids() {
            line.insert("trace_id".into(), Value::String(trace_id));
            line.insert("span_id".into(), Value::String(span_id));
        }
        let meta = event.metadata();
        let module = meta
            .module_path()
            .and_then(|p| p.strip_prefix("nomad_driver_ecs::"))
            .map(|p| format!("{MODULE}.{}", p.replace("::", ".")))
            .unwrap_or_else(|| {
                if meta.target().starts_with("nomad_driver_ecs") {
                    MODULE.to_string()
                } else {
                    format!("{MODULE}.{}", meta.target())
                }
            });
        let out = render(
            level_name(*meta.level()),
            &message,
            &module,
            OffsetDateTime::now_utc(),
            line,
        );
        write_stderr(out.as_bytes());
    }
}

/// Render one hclog JSON line (with trailing newline). The three special keys
/// are always strings; other fields cannot overwrite them.
pub fn render(
    level: &str,
    message: &str,
    module: &str,
    at: OffsetDateTime,
    fields: Map<String, Value>,
) -> String {
    let mut obj = Map::new();
    obj.insert("@level".into(), Value::String(level.into()));
    obj.insert("@message".into(), Value::String(message.into()));
    obj.insert("@module".into(), Value::String(module.into()));
    obj.insert("@timestamp".into(), Value::String(timestamp(at)));
    for (k, v) in fields {
        if !k.starts_with('@') {
            obj.insert(k, v);
        }
    }
    let mut s = Value::Object(obj).to_string();
    s.push('\n');
    s
}

/// Format a timestamp the way hclog does (UTC, microseconds).
pub fn timestamp(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .format(TIMESTAMP)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000000Z".into())
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warn",
        Level::ERROR => "error",
    }
}

fn write_stderr(bytes: &[u8]) {
    if stderr_broken() {
        return;
    }
    let mut err = std::io::stderr().lock();
    if let Err(e) = err.write_all(bytes).and_then(|()| err.flush())
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        STDERR_BROKEN.store(true, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct JsonVisitor {
    fields: Map<String, Value>,
}

impl Visit for JsonVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut s = String::new();
        let _ = write!(s, "{value:?}");
        self.fields.insert(field.name().into(), Value::String(s));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.fields
            .insert(field.name().into(), Value::String(value.into()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.insert(field.name().into(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.insert(field.name().into(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields.insert(field.name().into(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.insert(field.name().into(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut s = value.to_string();
        let mut src = value.source();
        while let Some(e) = src {
            let _ = write!(s, ": {e}");
            src = e.source();
        }
        self.fields.insert(field.name().into(), Value::String(s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_has_exactly_six_fractional_digits_and_zulu() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_738_156_114_123_456_789).unwrap();
        assert_eq!(timestamp(at), "2025-01-29T13:08:34.123456Z");
        let whole = OffsetDateTime::from_unix_timestamp(1_738_156_114).unwrap();
        assert_eq!(timestamp(whole), "2025-01-29T13:08:34.000000Z");
    }

    #[test]
    fn rendered_line_keeps_special_keys_as_strings_even_if_fields_collide() {
        let mut fields = Map::new();
        fields.insert("@level".into(), Value::from(3));
        fields.insert("task_id".into(), Value::from("a/b/c"));
        let at = OffsetDateTime::from_unix_timestamp(0).unwrap();
        let line = render("info", "task started", MODULE, at, fields);
        assert!(line.ends_with('\n'));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["@level"], "info");
        assert_eq!(v["@message"], "task started");
        assert_eq!(v["@module"], MODULE);
        assert_eq!(v["@timestamp"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(v["task_id"], "a/b/c");
    }
}
