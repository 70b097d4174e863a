//! Logs and traces, both through `tracing`.
//!
//! Logs: `RUST_LOG` filters (default `info`), `LOG_FORMAT=json` switches from human-readable
//! lines to one JSON object per line.
//!
//! Traces: the kit's spans (an HTTP request, a delivery handled, an event published; target
//! [`TRACE_TARGET`]) are OpenTelemetry spans whatever `RUST_LOG` says, so every message
//! carries the W3C trace context of the span that sent it; log lines inside them become the
//! spans' events. They leave the process only when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: OTLP over
//! HTTP/protobuf, with the SDK's other `OTEL_*` variables honoured (`OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`, headers, timeout).

use std::io::IsTerminal;

use opentelemetry::{
    Context, KeyValue,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::TracerProvider as _,
};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use shared_events::Envelope;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter, Layer, fmt, layer::SubscriberExt, registry::LookupSpan, util::SubscriberInitExt,
};

/// The standard variables that switch the export on.
const ENDPOINT_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
];

/// The target of the kit's spans: always enabled (the trace must not depend on the log level).
pub const TRACE_TARGET: &str = "shop_trace";

/// Keeps the tracer provider; dropping it sends the spans still buffered.
#[must_use = "dropping it ends tracing"]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("cannot flush the last spans: {e}");
        }
    }
}

/// Logs and traces for the process of service `service` (its `service.name`, unless
/// `OTEL_SERVICE_NAME` says otherwise). Logs filtered by `RUST_LOG`, else `default_filter`.
pub fn init(service: &str, default_filter: &str) -> Telemetry {
    let (traces, telemetry) = traces(service);
    let _ = tracing_subscriber::registry()
        .with(filter(default_filter))
        .with(log_layer())
        .with(traces)
        .try_init();
    telemetry
}

/// Which spans and log lines are recorded: `RUST_LOG` (else `default_filter`), and the kit's
/// spans in any case. One filter for both layers: per-layer filters lost some spans' trace
/// context under load (tracing-subscriber 0.3.23).
pub fn filter(default_filter: &str) -> EnvFilter {
    let wanted = std::env::var("RUST_LOG").ok();
    let mut filter = wanted
        .as_deref()
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| EnvFilter::new(default_filter));
    for directive in kit_directives(wanted.as_deref()) {
        if let Ok(directive) = directive.parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

/// What the kit adds to any filter: its spans, and silence from lapin unless `RUST_LOG` names
/// it. lapin logs every failed reconnect attempt and every channel the broker closes (the style
/// marker's expected 404 at each start) at ERROR; the kit reports those once, itself. A plain
/// `RUST_LOG=info` (the image's, compose's) must not turn them back on.
fn kit_directives(rust_log: Option<&str>) -> Vec<String> {
    let mut directives = vec![format!("{TRACE_TARGET}=info")];
    if !rust_log.is_some_and(|directives| directives.contains("lapin")) {
        directives.push("lapin=off".to_owned());
    }
    directives
}

/// The layer that turns the kit's spans into OpenTelemetry spans of service `service`, for a
/// subscriber assembled elsewhere (the tests').
pub fn traces<S>(service: &str) -> (impl Layer<S>, Telemetry)
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    let provider = tracer_provider(service);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("shop-service-kit"))
        .with_tracked_inactivity(false)
        .with_threads(false);
    (layer, Telemetry { provider })
}

/// Logs only, for the command-line tools.
pub fn init_logs() {
    let _ = tracing_subscriber::registry()
        .with(filter("info"))
        .with(log_layer())
        .try_init();
}

fn log_layer<S>() -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let layer = fmt::layer()
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal());
    if json {
        layer.json().flatten_event(true).boxed()
    } else {
        layer.compact().boxed()
    }
}

fn tracer_provider(service: &str) -> SdkTracerProvider {
    let mut resource = Resource::builder().with_attribute(KeyValue::new(
        "service.instance.id",
        uuid::Uuid::new_v4().to_string(),
    ));
    if std::env::var("OTEL_SERVICE_NAME").is_ok_and(|name| !name.is_empty()) {
        // The SDK's own detector has read it already.
    } else {
        resource = resource.with_service_name(service.to_owned());
    }
    let builder = SdkTracerProvider::builder().with_resource(resource.build());
    let exporting = ENDPOINT_VARIABLES
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|v| !v.is_empty()));
    if !exporting {
        return builder.build();
    }
    match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(exporter) => builder.with_batch_exporter(exporter).build(),
        Err(e) => {
            // Tracing is an aid: a bad exporter setting must not keep the service down.
            eprintln!("traces will not be exported: {e}");
            builder.build()
        }
    }
}

/// The trace context an envelope carries: the parent of whatever handles it.
pub(crate) fn context_of(envelope: &Envelope) -> Context {
    TraceContextPropagator::new().extract(&EnvelopeCarrier(envelope))
}

/// Makes `span` a child of the span that sent `envelope`. Must come before the span is
/// entered or asked for its context.
pub(crate) fn continue_trace(span: &Span, envelope: &Envelope) {
    let _ = span.set_parent(context_of(envelope));
}

/// Writes `span`'s trace context into `envelope` (replacing what it carried).
pub(crate) fn stamp(envelope: &mut Envelope, span: &Span) {
    envelope.traceparent = None;
    envelope.tracestate = None;
    TraceContextPropagator::new().inject_context(&span.context(), &mut EnvelopeSink(envelope));
}

/// The parent that an HTTP request's `traceparent` (and `tracestate`) header names, if any.
pub(crate) fn context_of_request(headers: &axum::http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderCarrier(headers))
}

struct EnvelopeCarrier<'a>(&'a Envelope);

impl Extractor for EnvelopeCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.0.traceparent.as_deref(),
            "tracestate" => self.0.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

struct EnvelopeSink<'a>(&'a mut Envelope);

impl Injector for EnvelopeSink<'_> {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "traceparent" => self.0.traceparent = Some(value),
            "tracestate" if !value.is_empty() => self.0.tracestate = Some(value),
            _ => {}
        }
    }
}

struct HeaderCarrier<'a>(&'a axum::http::HeaderMap);

impl Extractor for HeaderCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)?.to_str().ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}

/// An error with its causes, `outer: inner: …`, for log lines (each level prints only itself).
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_events::OrderConfirmed;
    use uuid::Uuid;

    fn envelope() -> Envelope {
        Envelope::new(
            &OrderConfirmed {
                order_id: Uuid::now_v7(),
            },
            None,
        )
    }

    #[test]
    fn a_message_carries_the_context_of_the_span_that_sent_it_and_continues_it() {
        let (traces, _telemetry) = traces("test");
        let subscriber = tracing_subscriber::registry()
            .with(filter("warn"))
            .with(log_layer())
            .with(traces);
        let _guard = tracing::subscriber::set_default(subscriber);

        let sender = tracing::info_span!(target: TRACE_TARGET, "send");
        let mut sent = envelope();
        stamp(&mut sent, &sender);
        let traceparent = sent.traceparent.clone().expect("a trace context");
        let fields: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(fields.len(), 4, "{traceparent}");

        let handler = tracing::info_span!(target: TRACE_TARGET, "handle");
        continue_trace(&handler, &sent);
        let mut reply = envelope();
        stamp(&mut reply, &handler);
        let reply_fields: Vec<String> = reply
            .traceparent
            .expect("a trace context")
            .split('-')
            .map(str::to_owned)
            .collect();
        assert_eq!(reply_fields[1], fields[1], "same trace");
        assert_ne!(reply_fields[2], fields[2], "a span of its own");
    }

    #[test]
    fn outside_any_span_a_message_carries_no_trace_context() {
        let (traces, _telemetry) = traces("test");
        let subscriber = tracing_subscriber::registry().with(traces);
        let _guard = tracing::subscriber::set_default(subscriber);
        let mut sent = envelope();
        sent.traceparent = Some("stale".to_owned());
        stamp(&mut sent, &Span::current());
        assert_eq!(sent.traceparent, None);
    }

    #[test]
    fn lapin_stays_quiet_unless_rust_log_names_it() {
        let lapin_off = "lapin=off".to_owned();
        assert!(kit_directives(None).contains(&lapin_off));
        assert!(kit_directives(Some("info")).contains(&lapin_off));
        assert!(!kit_directives(Some("info,lapin=debug")).contains(&lapin_off));
        for rust_log in [None, Some("warn")] {
            assert!(kit_directives(rust_log).contains(&format!("{TRACE_TARGET}=info")));
        }
    }
}
