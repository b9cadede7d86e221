//! The `tracing` layer that turns this crate's spans into OpenTelemetry
//! spans, installed with the subscriber at process start but dormant until
//! telemetry starts (the endpoint may only arrive with `SetConfig`).
//!
//! Dormant, its filter rejects every callsite, so it costs one atomic load
//! per span and nothing per event. Active, it forwards to
//! `tracing-opentelemetry`'s layer, which is set once and never replaced.
//! Only spans of this crate are exported (a library's spans, such as the
//! gRPC client's inside the exporter itself, could otherwise feed back into
//! the exporter), with events at INFO and above of this crate and WARN and
//! above of any crate as span events. This filter is independent of the log
//! filter (`NOMAD_ECS_LOG`): quieter logs do not thin the traces.

use std::any::TypeId;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry_sdk::trace::SdkTracer;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata};
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::Registry;
use tracing_subscriber::filter::DynFilterFn;
use tracing_subscriber::layer::{Context, Layer};

/// The crate's `tracing` target prefix.
const OURS: &str = "nomad_driver_ecs";

type Inner = OpenTelemetryLayer<Registry, SdkTracer>;

static INNER: OnceLock<Inner> = OnceLock::new();
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// The layer to install directly on the [`Registry`], with its filter.
pub fn layer() -> impl Layer<Registry> + Send + Sync + 'static {
    let filter = DynFilterFn::new(|meta: &Metadata<'_>, _cx: &Context<'_, Registry>| {
        ACTIVE.load(Ordering::Relaxed) && wanted(meta)
    })
    .with_callsite_filter(|meta| {
        if wanted(meta) {
            // Re-evaluated per span or event: the layer may wake up later.
            Interest::sometimes()
        } else {
            Interest::never()
        }
    });
    OtelLayer.with_filter(filter)
}

/// Whether the layer, once active, wants this callsite.
fn wanted(meta: &Metadata<'_>) -> bool {
    let ours = meta.target().starts_with(OURS);
    if meta.is_span() {
        ours && *meta.level() <= Level::INFO
    } else {
        (ours && *meta.level() <= Level::INFO) || *meta.level() <= Level::WARN
    }
}

/// Wake the layer up with `tracer`. Later calls are ignored.
pub(super) fn activate(tracer: SdkTracer) {
    let layer = tracing_opentelemetry::layer::<Registry>()
        .with_tracer(tracer)
        .with_threads(false)
        .with_tracked_inactivity(false);
    if INNER.set(layer).is_ok() {
        ACTIVE.store(true, Ordering::Release);
    }
}

/// Forwards to `tracing-opentelemetry`'s layer once it is set.
#[derive(Debug, Clone, Copy, Default)]
pub struct OtelLayer;

impl OtelLayer {
    fn inner() -> Option<&'static Inner> {
        if ACTIVE.load(Ordering::Acquire) {
            INNER.get()
        } else {
            None
        }
    }
}

impl Layer<Registry> for OtelLayer {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, Registry>) {
        if let Some(l) = Self::inner() {
            l.on_new_span(attrs, id, ctx);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, Registry>) {
        if let Some(l) = Self::inner() {
            l.on_record(id, values, ctx);
        }
    }

    fn on_follows_from(&self, id: &Id, follows: &Id, ctx: Context<'_, Registry>) {
        if let Some(l) = Self::inner() {
            l.on_follows_from(id, follows, ctx);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, Registry>) {
        if let Some(l) = Self::inner() {
            l.on_event(event, ctx);
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, Registry>) {
        if let Some(l) = Self::inner() {
            l.on_enter(id, ctx);
        }
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, Registry>) {
        if let Some(l) = Self::inner() {
            l.on_exit(id, ctx);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, Registry>) {
        if let Some(l) = Self::inner() {
            l.on_close(id, ctx);
        }
    }

    // SAFETY: the forwarded pointers point into `INNER`, a static that is set
    // once and never moved or dropped, so they stay valid for as long as the
    // subscriber (or anything) can use them.
    unsafe fn downcast_raw(&self, id: TypeId) -> Option<*const ()> {
        if id == TypeId::of::<Self>() {
            return Some(std::ptr::from_ref(self).cast());
        }
        // SAFETY: as above; `Inner::downcast_raw` upholds the same contract.
        INNER.get().and_then(|l| unsafe { l.downcast_raw(id) })
    }
}
