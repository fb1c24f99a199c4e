//! What travels with an event across every hop, in NATS message headers: the W3C trace
//! context (`traceparent`, `tracestate`), so a trace follows the event, and the time the
//! collector received it ([`RECEIVED_AT`]), so the latency from receipt to any stage can
//! be read off that stage's messages.

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

struct HeaderInjector<'a>(&'a mut async_nats::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct HeaderExtractor<'a>(&'a async_nats::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|value| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

/// When the collector received the event a message descends from, in Unix microseconds.
pub const RECEIVED_AT: &str = "Cairn-Received-At";

/// The headers that follow an event from stage to stage.
const CARRIED: [&str; 3] = ["traceparent", "tracestate", RECEIVED_AT];

/// Stamps `headers` with the receipt time `at`.
pub fn stamp_received(headers: &mut async_nats::HeaderMap, at: std::time::SystemTime) {
    let micros = at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    headers.insert(RECEIVED_AT, micros.to_string().as_str());
}

/// The receipt time a message carries, in Unix microseconds.
pub fn received_at(headers: &async_nats::HeaderMap) -> Option<i64> {
    headers.get(RECEIVED_AT)?.as_str().parse().ok()
}

/// Copies what follows an event from the `input` message's headers onto a message the
/// input caused (the trace and the receipt time replace any already there).
pub fn carry(input: &async_nats::HeaderMap, output: &mut async_nats::HeaderMap) {
    for name in CARRIED {
        if let Some(value) = input.get(name) {
            output.insert(name, value.clone());
        }
    }
}

/// Writes `context` into `headers`.
pub fn inject(context: &Context, headers: &mut async_nats::HeaderMap) {
    TraceContextPropagator::new().inject_context(context, &mut HeaderInjector(headers));
}

/// Writes the current `tracing` span's trace context into `headers`.
pub fn inject_current(headers: &mut async_nats::HeaderMap) {
    inject(&tracing::Span::current().context(), headers);
}

/// Reads the trace context a publisher put in `headers`.
pub fn extract(headers: &async_nats::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

#[cfg(test)]
mod carry_tests {
    use super::*;

    #[test]
    fn the_receipt_time_and_the_trace_are_carried_onto_what_an_event_causes() {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456);
        let mut input = async_nats::HeaderMap::new();
        stamp_received(&mut input, at);
        input.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        input.insert("Nats-Msg-Id", "not carried");
        let mut output = async_nats::HeaderMap::new();
        output.insert(
            "traceparent",
            "00-00000000000000000000000000000001-0000000000000001-01",
        );
        carry(&input, &mut output);
        assert_eq!(received_at(&output), Some(1_700_000_000_123_456));
        assert_eq!(
            output.get("traceparent").map(|value| value.as_str()),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert!(output.get("Nats-Msg-Id").is_none());
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    };

    use super::*;

    #[test]
    fn trace_context_round_trips_through_headers() {
        let span = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let context = Context::new().with_remote_span_context(span.clone());
        let mut headers = async_nats::HeaderMap::new();
        inject(&context, &mut headers);
        assert_eq!(
            headers.get("traceparent").map(|value| value.as_str()),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        let extracted = extract(&headers);
        assert_eq!(extracted.span().span_context(), &span);
    }
}

#[cfg(test)]
mod current_span_tests {
    use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    #[test]
    fn the_current_span_travels_in_headers() {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("ingest");
            let _entered = span.enter();
            let trace_id = span.context().span().span_context().trace_id();
            let mut headers = async_nats::HeaderMap::new();
            inject_current(&mut headers);
            let traceparent = headers.get("traceparent").expect("a traceparent header");
            assert!(
                traceparent.as_str().contains(&trace_id.to_string()),
                "{traceparent:?}"
            );
            assert_eq!(extract(&headers).span().span_context().trace_id(), trace_id);
        });
    }
}
