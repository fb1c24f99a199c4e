//! Logs, traces and metrics.
//!
//! - Logs: `tracing` to stderr, text or JSON, filtered by `CAIRN_LOG`.
//! - Traces: OpenTelemetry spans from `tracing` spans; W3C trace context is propagated
//!   across gRPC, HTTP and NATS hops. Exported over OTLP/gRPC when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the standard `OTEL_*` variables apply).
//! - Metrics: OpenTelemetry instruments, always readable as Prometheus text on the admin
//!   port's `/metrics`, and also exported over OTLP when the endpoint is set.

use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use prometheus::{Encoder as _, TextEncoder};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::{Settings, Var};

pub const LOG: Var = Var {
    name: "CAIRN_LOG",
    default: "info,fjall=warn,lsm_tree=warn",
    doc: "Log filter in tracing's EnvFilter syntax, e.g. `info` or `info,cairn_collector=debug` (the embedded store's own chatter is kept to warnings by default).",
};

pub const LOG_FORMAT: Var = Var {
    name: "CAIRN_LOG_FORMAT",
    default: "text",
    doc: "Log format on stderr: `text` or `json`.",
};

/// The standard OpenTelemetry variable that turns OTLP export on.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("OTLP exporter: {0}")]
    Otlp(String),
    #[error("Prometheus exporter: {0}")]
    Prometheus(String),
    #[error("a tracing subscriber is already installed: {0}")]
    Subscriber(String),
}

/// The process's metric instruments and their Prometheus view.
#[derive(Clone)]
pub struct Metrics {
    registry: prometheus::Registry,
    provider: SdkMeterProvider,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Metrics readable on `/metrics` only (tests, and processes without OTLP).
    pub fn prometheus_only(service: &str) -> Result<Self, TelemetryError> {
        Self::build(service, None)
    }

    fn build(
        service: &str,
        otlp: Option<opentelemetry_otlp::MetricExporter>,
    ) -> Result<Self, TelemetryError> {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .scope_info_enabled(false)
            .build()
            .map_err(|err| TelemetryError::Prometheus(err.to_string()))?;
        let mut builder = SdkMeterProvider::builder()
            .with_resource(resource(service))
            .with_reader(exporter);
        if let Some(otlp) = otlp {
            builder = builder.with_periodic_exporter(otlp);
        }
        Ok(Self {
            registry,
            provider: builder.build(),
        })
    }

    /// A meter for one component's instruments (`cairn.collector`, `cairn.bus`, ...).
    pub fn meter(&self, name: &'static str) -> Meter {
        self.provider.meter(name)
    }

    /// Every metric in Prometheus text format.
    pub fn render(&self) -> Result<String, String> {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .map_err(|err| err.to_string())?;
        String::from_utf8(out).map_err(|err| err.to_string())
    }

    fn shutdown(&self) {
        if let Err(err) = self.provider.shutdown() {
            tracing::debug!(error = %err, "meter provider shutdown");
        }
    }
}

/// What `init` set up; `shutdown` flushes exporters.
pub struct Telemetry {
    pub metrics: Metrics,
    tracer_provider: SdkTracerProvider,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Telemetry")
    }
}

impl Telemetry {
    /// Flushes spans and metrics still buffered.
    pub fn shutdown(&self) {
        if let Err(err) = self.tracer_provider.shutdown() {
            tracing::debug!(error = %err, "tracer provider shutdown");
        }
        self.metrics.shutdown();
    }
}

fn resource(service: &str) -> Resource {
    Resource::builder()
        .with_service_name(service.to_string())
        .build()
}

/// Installs the process-wide subscriber, tracer and propagator. Call once, from `main`,
/// inside the Tokio runtime (the OTLP exporters need it).
pub fn init(service: &str, settings: &Settings) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_new(settings.string(&LOG))
        .map_err(|err| settings.invalid(&LOG, format!("not a log filter: {err}")))?;
    let json = match settings.string(&LOG_FORMAT).trim() {
        "text" | "" => false,
        "json" => true,
        _ => return Err(settings.invalid(&LOG_FORMAT, "use text or json").into()),
    };
    let otlp = std::env::var(OTLP_ENDPOINT_ENV).is_ok_and(|endpoint| !endpoint.trim().is_empty());

    let mut tracer_builder = SdkTracerProvider::builder().with_resource(resource(service));
    let mut metric_exporter = None;
    if otlp {
        let spans = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|err| TelemetryError::Otlp(err.to_string()))?;
        tracer_builder = tracer_builder.with_batch_exporter(spans);
        metric_exporter = Some(
            opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .build()
                .map_err(|err| TelemetryError::Otlp(err.to_string()))?,
        );
    }
    let tracer_provider = tracer_builder.build();
    let metrics = Metrics::build(service, metric_exporter)?;

    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(tracer_provider.clone());

    let tracer = tracer_provider.tracer("cairn");
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt_layer = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(crate::pii::RedactedStderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(crate::pii::RedactedStderr)
            .boxed()
    };
    // The log filter applies to logs only: spans must exist for tracing even when logs
    // are quiet, or a caller's trace would stop at this process. Traces take spans only,
    // not log events: an error's text may name a person, and only logs are redacted.
    // Its level is also given as a hint, so that the subscriber's level is known: callsites
    // below it (a library's debug and trace events, the store's `log` records) are
    // switched off once instead of asking a filter on every call.
    tracing_subscriber::registry()
        .with(fmt_layer.with_filter(filter))
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(
                    tracing_subscriber::filter::filter_fn(|metadata| {
                        metadata.is_span() && *metadata.level() <= tracing::Level::INFO
                    })
                    .with_max_level_hint(tracing::Level::INFO),
                ),
        )
        .try_init()
        .map_err(|err| TelemetryError::Subscriber(err.to_string()))?;
    if otlp {
        tracing::info!(
            endpoint_env = OTLP_ENDPOINT_ENV,
            "exporting traces and metrics over OTLP"
        );
    }
    Ok(Telemetry {
        metrics,
        tracer_provider,
    })
}

/// Reads W3C trace context (`traceparent`, `tracestate`) from HTTP or gRPC headers.
pub fn parent_from_headers(headers: &http::HeaderMap) -> opentelemetry::Context {
    use opentelemetry::propagation::TextMapPropagator as _;
    struct Extractor<'a>(&'a http::HeaderMap);
    impl opentelemetry::propagation::Extractor for Extractor<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|value| value.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|name| name.as_str()).collect()
        }
    }
    TraceContextPropagator::new().extract(&Extractor(headers))
}

/// A server span for one request, continuing the caller's trace when it sent one.
pub fn request_span(
    kind: &'static str,
    method: &str,
    path: &str,
    headers: &http::HeaderMap,
) -> tracing::Span {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let span = tracing::info_span!(
        "request",
        otel.kind = "server",
        protocol = kind,
        method = %method,
        path = %path,
    );
    // Only fails when no OpenTelemetry layer is installed (tests): nothing to continue then.
    let _ = span.set_parent(parent_from_headers(headers));
    span
}
