//! The email dispatcher: what campaigns decide to send (`campaign.sends.*`), rendered
//! from saved templates for the profile as it is now, and sent once per idempotency
//! key, over SMTP or into `.eml` files.
//!
//! - [`templates`]: templates (minijinja), checked strictly when saved, versioned,
//!   served by `cairn.dispatch.v1.Templates` ([`grpc`]);
//! - [`transport`]: SMTP with a connection pool, or the file outbox;
//! - [`send`]: the consumer: the send records that make each email leave once, retries
//!   with backoff, dead letters, and `delivery.events`;
//! - [`tracking`]: click and open tracking in the HTML.

#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod grpc;
pub mod quiet;
pub mod send;
pub mod templates;
pub mod tracking;
pub mod transport;

use async_nats::jetstream::consumer;
use cairn_bus::worker::{Handling, WorkerOptions};
use cairn_bus::{Bus, BusConfig, streams};
use cairn_runtime::{BoxError, Module, ModuleContext, Var};
use cairn_store::Store;

pub use config::DispatchConfig;
pub use error::DispatchError;

/// Every variable the dispatcher reads.
pub fn vars() -> Vec<Var> {
    [
        config::VARS,
        cairn_bus::suppressions::VARS,
        cairn_bus::config::VARS,
        cairn_store::config::VARS,
    ]
    .concat()
}

/// Sends handled per round.
const BATCH: usize = 100;

/// The durable consumer of campaign sends, shared by the replicas. A send in hand is
/// kept from redelivery by progress notices, however long its SMTP exchange takes; one
/// a stopped replica had is delivered again after `ACK_WAIT`.
pub fn consumer_config() -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(send::SERVICE.to_string()),
        description: Some("Dispatcher: campaign emails".to_string()),
        filter_subject: "campaign.sends.>".to_string(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: cairn_bus::worker::ACK_WAIT,
        max_ack_pending: (BATCH * 8) as i64,
        ..Default::default()
    }
}

/// Starts the dispatcher on `store`.
pub async fn start<S: Store>(context: &ModuleContext, store: S) -> Result<Module, DispatchError> {
    let config = DispatchConfig::from_settings(&context.settings)?;
    let bus_config = BusConfig::from_settings(&context.settings)?;
    let bus = Bus::connect(&bus_config, "cairn-dispatcher").await?;
    for stream in [
        streams::campaigns(&bus_config),
        streams::delivery(&bus_config),
        streams::dead_letters(&bus_config),
    ] {
        bus.ensure_stream(stream).await?;
    }
    let consumer = bus
        .ensure_consumer(streams::CAMPAIGNS, consumer_config())
        .await?;
    context
        .readiness
        .add_check("dispatcher: NATS", bus.readiness_check());
    let senders = send::Senders::new(&config)?;
    tracing::info!(sender = ?config.sender, pools = ?config.pools, "dispatcher ready");
    if config.link_secret.is_none() {
        tracing::warn!(
            "CAIRN_EMAIL_LINK_SECRET is not set: emails go out without an unsubscribe link"
        );
    }
    let templates_service = grpc::TemplatesService {
        store: store.clone(),
        config: config.clone(),
    };
    let suppressions = cairn_bus::suppressions::open(&bus).await?;
    let suppressions_service = grpc::SuppressionsService {
        bucket: suppressions.clone(),
    };
    let dispatcher = send::Dispatcher::new(
        store,
        suppressions,
        bus.clone(),
        senders,
        config.clone(),
        &context.metrics.meter("cairn.dispatcher"),
    );
    let worker = cairn_bus::worker::run(
        bus,
        consumer,
        dispatcher,
        WorkerOptions {
            service: send::SERVICE,
            batch: BATCH,
            max_attempts: config.attempts,
            handling: Handling::AllAtOnce,
        },
        context.shutdown.clone(),
    );
    Ok(Module {
        name: "dispatcher",
        grpc: cairn_runtime::grpc::GrpcServices::default()
            .with(
                cairn_proto::dispatch::v1::templates_server::TemplatesServer::new(
                    templates_service,
                ),
            )
            .with(
                cairn_proto::dispatch::v1::suppressions_server::SuppressionsServer::new(
                    suppressions_service,
                ),
            ),
        http: None,
        tasks: vec![Box::pin(async move {
            worker.await.map_err(|err| Box::new(err) as BoxError)
        })],
    })
}
