//! Identity: every raw event gets the profile of the person behind it.
//!
//! Identifiers (user id, anonymous id, email, phone, device ids, configured paths) are
//! read from each event, normalised and checked against blocked values
//! ([`rules`], [`extract`]). A linking event — two or more identifiers — joins their
//! profiles, unless that would break a per-type limit, in which case its lowest-priority
//! identifiers are dropped from the link ([`decide`]). The graph lives in the store as a
//! union-find with persisted forwarding pointers, changed under short leases so any
//! number of workers can run at once ([`graph`], [`leases`]).
//!
//! The service consumes `events.raw.>`, publishes `events.identified.<partition>` and
//! `profiles.merged`, dead-letters what it cannot read, and serves
//! `cairn.identity.v1.Identity` (Resolve, Explain, Split).

#![forbid(unsafe_code)]

pub mod config;
pub mod decide;
pub mod error;
pub mod extract;
pub mod graph;
pub mod grpc;
pub mod handler;
pub mod leases;
pub mod proto;
pub mod rebuild;
pub mod rules;

use std::sync::Arc;

use async_nats::jetstream::consumer;
use cairn_bus::worker::{Handling, WorkerOptions};
use cairn_bus::{Bus, BusConfig, streams, subjects};
use cairn_proto::identity::v1::identity_server::IdentityServer;
use cairn_runtime::grpc::GrpcServices;
use cairn_runtime::{BoxError, Module, ModuleContext, Var};
use cairn_store::Store;

pub use config::IdentityConfig;
pub use error::IdentityError;
pub use graph::Graph;
pub use rules::{Identifier, Rules};

/// The durable consumer identity reads raw events with.
pub const CONSUMER: &str = "identity";
/// The durable consumer identity reads profile deletions with.
pub const FORGET_CONSUMER: &str = "identity_forget";

/// Every variable identity reads: its own, the bus's and the store's.
pub fn vars() -> Vec<Var> {
    [
        config::VARS,
        cairn_bus::config::VARS,
        cairn_store::config::VARS,
    ]
    .concat()
}

/// The consumer declaration.
pub fn consumer_config(batch: usize) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(CONSUMER.to_string()),
        description: Some("Identity: gives every raw event its profile".to_string()),
        filter_subject: subjects::events_raw_all(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: cairn_bus::worker::ACK_WAIT,
        max_ack_pending: (batch * 8).max(1000) as i64,
        ..Default::default()
    }
}

/// The consumer of `profiles.deleted`: a deleted person's identifiers are forgotten.
pub fn forget_consumer_config() -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(FORGET_CONSUMER.to_string()),
        description: Some("Identity: forgets the identifiers of deleted profiles".to_string()),
        filter_subject: subjects::PROFILES_DELETED.to_string(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: cairn_bus::worker::ACK_WAIT,
        ..Default::default()
    }
}

/// Starts identity on `store`: streams and consumer declared, the worker and the gRPC
/// service ready.
pub async fn start<S: Store>(context: &ModuleContext, store: S) -> Result<Module, IdentityError> {
    let config = IdentityConfig::from_settings(&context.settings)?;
    let rules = match &config.rules_path {
        Some(path) => Rules::load(path)?,
        None => Rules::default(),
    };
    let bus_config = BusConfig::from_settings(&context.settings)?;
    let bus = Bus::connect(&bus_config, "cairn-identity").await?;
    for stream in [
        streams::events(&bus_config),
        streams::identified(&bus_config),
        streams::profiles(&bus_config),
        streams::dead_letters(&bus_config),
    ] {
        bus.ensure_stream(stream).await?;
    }
    let consumer = bus
        .ensure_consumer(streams::EVENTS, consumer_config(config.batch))
        .await?;
    let forget_consumer = bus
        .ensure_consumer(streams::PROFILES, forget_consumer_config())
        .await?;

    let holder = format!("identity-{:08x}", rand::random::<u32>());
    let graph = Arc::new(Graph::new(
        store,
        Arc::new(rules),
        holder,
        config.lease,
        config.patience,
    ));
    context
        .readiness
        .add_check("identity: NATS", bus.readiness_check());
    let handler = handler::IdentityHandler {
        graph: graph.clone(),
        partitions: bus.partitions(),
        metrics: handler::IdentityMetrics::new(&context.metrics.meter("cairn.identity")),
    };
    let options = WorkerOptions {
        service: "identity",
        batch: config.batch,
        max_attempts: cairn_bus::worker::MAX_ATTEMPTS,
        handling: Handling::InOrder,
    };
    let worker = cairn_bus::worker::run(
        bus.clone(),
        consumer,
        handler,
        options.clone(),
        context.shutdown.clone(),
    );
    let forget = handler::ForgetHandler {
        graph: graph.clone(),
    };
    let forgetting = cairn_bus::worker::run(
        bus.clone(),
        forget_consumer,
        forget,
        options,
        context.shutdown.clone(),
    );
    Ok(Module {
        name: "identity",
        grpc: GrpcServices::default()
            .with(IdentityServer::new(grpc::IdentityService { graph, bus })),
        http: None,
        tasks: vec![
            Box::pin(async move { worker.await.map_err(|err| Box::new(err) as BoxError) }),
            Box::pin(async move { forgetting.await.map_err(|err| Box::new(err) as BoxError) }),
        ],
    })
}
