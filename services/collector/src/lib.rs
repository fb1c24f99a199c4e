//! The collector: Segment-spec events in over HTTP and gRPC, into the EVENTS stream.
//!
//! Every event is validated (required fields, types, Segment's size limits) and stored
//! exactly as received inside an envelope (`cairn.event.v1.Envelope`) that adds the
//! receive time, source, message id, client IP and user agent. A request is answered
//! only after JetStream acknowledged every one of its events; a retried request is
//! stored once thanks to the message id (`Nats-Msg-Id`). NATS unreachable gives 503,
//! a full stream 429, both with `Retry-After`.
//!
//! - [`event`]: validation of Segment calls (pure);
//! - [`ingest`]: envelopes and acknowledged publishing;
//! - [`http`] and [`grpc`]: the two front doors;
//! - [`unsubscribe`] and [`email_links`]: where the links in campaign emails lead;
//! - [`start`]: the module for `cairn serve collector` and `cairn up`.

#![forbid(unsafe_code)]

pub mod config;
pub mod email_links;
pub mod error;
pub mod event;
pub mod grpc;
pub mod http;
pub mod ingest;
pub mod personalize;
pub mod rate_limit;
pub mod tag;
pub mod unsubscribe;

use cairn_bus::{Bus, BusConfig, streams};
use cairn_proto::collector::v1::collector_server::CollectorServer;
use cairn_runtime::grpc::GrpcServices;
use cairn_runtime::{Module, ModuleContext, Var};

pub use config::CollectorConfig;
pub use error::CollectorError;
pub use ingest::Ingest;

/// Every variable the collector reads, its own and the bus's.
pub fn vars() -> Vec<Var> {
    [
        config::VARS,
        cairn_bus::config::VARS,
        cairn_bus::suppressions::VARS,
    ]
    .concat()
}

/// Connects to NATS, makes sure the EVENTS stream exists, and returns the module.
pub async fn start(context: &ModuleContext) -> Result<Module, CollectorError> {
    let config = CollectorConfig::from_settings(&context.settings)?;
    let bus_config = BusConfig::from_settings(&context.settings)?;
    let bus = Bus::connect(&bus_config, "cairn-collector").await?;
    let info = bus.ensure_stream(streams::events(&bus_config)).await?;
    tracing::info!(stream = %info.config.name, messages = info.state.messages, "EVENTS stream ready");

    context
        .readiness
        .add_check("collector: NATS", bus.readiness_check());
    if !context.credentials.has_write_keys() {
        tracing::warn!(
            "no write keys configured (CAIRN_WRITE_KEYS): every ingest request will get 401"
        );
    }

    let personalizer = personalize::Personalizer::new(
        cairn_bus::personalization::open(&bus).await?,
        config.web_content_ttl,
    );
    let unsubscribe = unsubscribe::Unsubscribe {
        bucket: cairn_bus::suppressions::open(&bus).await?,
        secret: cairn_bus::suppressions::link_secret(&context.settings)?,
    };
    let ingest = Ingest::new(bus, &context.metrics.meter("cairn.collector"))
        .with_rate_limit(rate_limit::RateLimiter::from_settings(&context.settings)?);
    let email_links = email_links::EmailLinks {
        // Opens and clicks come from the recipients, not from a write key.
        ingest: ingest.without_rate_limit(),
        secret: unsubscribe.secret.clone(),
        trust_forwarded_for: config.trust_forwarded_for,
    };
    Ok(Module {
        name: "collector",
        grpc: GrpcServices::default().with(CollectorServer::new(grpc::CollectorService::new(
            ingest.clone(),
            config.trust_forwarded_for,
        ))),
        http: Some(
            http::router(ingest, personalizer, context.credentials.clone(), config)
                .merge(unsubscribe::routes(unsubscribe))
                .merge(email_links::routes(email_links)),
        ),
        tasks: Vec::new(),
    })
}
