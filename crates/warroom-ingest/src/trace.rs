//! Trace context across nodes: a worker's partial carries the context of the span that
//! published it (a W3C `traceparent` Kafka header); the API node that merges it makes that span
//! the parent of its own. With spans exported over OTLP (see the binary's `init_logs`), one
//! trace then shows a partial's path from a worker into every API node. Without an exporter,
//! spans have no valid context and nothing is added.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header's name (W3C Trace Context).
pub const HEADER: &str = "traceparent";

/// `span`'s context as a `traceparent` value, if it has one.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8()))
}

/// Makes the span a `traceparent` value names the parent of `span` (a malformed value is
/// ignored).
pub fn follow(span: &tracing::Span, traceparent: &str) {
    let f: Vec<&str> = traceparent.split('-').collect();
    let [_, trace, id, flags] = f[..] else { return };
    let (Ok(trace), Ok(id), Ok(flags)) =
        (TraceId::from_hex(trace), SpanId::from_hex(id), u8::from_str_radix(flags, 16))
    else {
        return;
    };
    let sc = SpanContext::new(trace, id, TraceFlags::new(flags), true, TraceState::default());
    if sc.is_valid() {
        let _ = span.set_parent(Context::new().with_remote_span_context(sc));
    }
}
