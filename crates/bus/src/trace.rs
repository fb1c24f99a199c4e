//! W3C trace context (`traceparent`, `tracestate`) in NATS message headers, so a trace
//! follows an event across every hop.

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
