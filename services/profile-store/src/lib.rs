//! The profile store: what Cairn knows about each person.
//!
//! It folds identified events, enricher facts, merges and splits into one document per
//! profile ([`profile`]), keeps each profile's timeline, and announces every durable
//! change on `profiles.changed.<partition>` for the segmenter. Partitions are owned by
//! one replica at a time ([`cairn_bus::ownership`]); within it a partition's events and
//! facts, and its merges and splits, are two consumers working side by side. Every
//! write is a read-modify-write on the profile's version with a mark, so concurrent
//! writers, redeliveries and handovers never lose an update or apply one twice
//! ([`store`], [`handler`]). `cairn.profile.v1.Profiles`
//! serves Get, Timeline, Delete and Export ([`grpc`]).

#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod grpc;
pub mod handler;
pub mod input;
pub mod profile;
pub mod rebuild;
pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer;
use cairn_bus::ownership::Ownership;
use cairn_bus::worker::{Handling, WorkerOptions};
use cairn_bus::{Bus, BusConfig, BusError, streams, subjects};
use cairn_proto::profile::v1::profiles_server::ProfilesServer;
use cairn_runtime::grpc::GrpcServices;
use cairn_runtime::{BoxError, Module, ModuleContext, Shutdown, Var};
use cairn_store::Store;

pub use config::ProfileConfig;
pub use error::ProfileError;

/// The replicas' group for partition ownership.
pub const OWNERS_GROUP: &str = "profile_store";

/// Every variable the profile store reads: its own, the bus's and the store's.
pub fn vars() -> Vec<Var> {
    [
        config::VARS,
        cairn_bus::config::VARS,
        cairn_store::config::VARS,
    ]
    .concat()
}

/// The consumers of partition `p`: its events and facts, its merges and splits, and its
/// segment memberships.
pub fn consumer_configs(
    partition: u32,
    batch: usize,
) -> [(&'static str, consumer::pull::Config); 3] {
    let base = |name: String, filters: Vec<String>| consumer::pull::Config {
        durable_name: Some(name),
        filter_subjects: filters,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: cairn_bus::worker::ACK_WAIT,
        max_ack_pending: (batch * 8).max(1000) as i64,
        ..Default::default()
    };
    [
        (
            streams::IDENTIFIED,
            base(
                format!("profile_store_events_{partition}"),
                vec![
                    subjects::events_identified(partition),
                    subjects::profile_facts(partition),
                ],
            ),
        ),
        (
            streams::PROFILES,
            base(
                format!("profile_store_links_{partition}"),
                vec![
                    subjects::profiles_merged(partition),
                    subjects::profiles_split(partition),
                ],
            ),
        ),
        (
            streams::SEGMENTS,
            base(
                format!("profile_store_segments_{partition}"),
                subjects::segments_changed_in(partition),
            ),
        ),
    ]
}

/// Starts the profile store on `store`.
pub async fn start<S: Store>(context: &ModuleContext, store: S) -> Result<Module, ProfileError> {
    let config = ProfileConfig::from_settings(&context.settings)?;
    let bus_config = BusConfig::from_settings(&context.settings)?;
    let bus = Bus::connect(&bus_config, "cairn-profile-store").await?;
    for stream in [
        streams::identified(&bus_config),
        streams::profiles(&bus_config),
        streams::segments(&bus_config),
        streams::dead_letters(&bus_config),
    ] {
        bus.ensure_stream(stream).await?;
    }
    let ownership =
        Ownership::join(&bus, OWNERS_GROUP, bus_config.partitions, config.lease).await?;
    tracing::info!(
        member = ownership.member(),
        "joined the profile-store replicas"
    );
    context
        .readiness
        .add_check("profile-store: NATS", bus.readiness_check());
    let handler = handler::ProfileHandler {
        store: store.clone(),
        fold: Arc::new(config.fold.clone()),
        partitions: bus.partitions(),
        metrics: handler::ProfileMetrics::new(&context.metrics.meter("cairn.profile_store")),
        facts_seen: Arc::default(),
    };
    let workers = PartitionWorkers {
        bus: bus.clone(),
        handler,
        batch: config.batch,
        running: BTreeMap::new(),
    };
    let task = own_partitions(ownership, workers, config.lease, context.shutdown.clone());
    Ok(Module {
        name: "profile-store",
        grpc: GrpcServices::default()
            .with(ProfilesServer::new(grpc::ProfilesService { store, bus })),
        http: None,
        tasks: vec![Box::pin(async move {
            task.await.map_err(|err| Box::new(err) as BoxError)
        })],
    })
}

/// A partition being worked: how to stop it, and its workers.
type Running = (Shutdown, Vec<tokio::task::JoinHandle<Result<(), BusError>>>);

/// The workers of the partitions this replica owns.
struct PartitionWorkers<S> {
    bus: Bus,
    handler: handler::ProfileHandler<S>,
    batch: usize,
    running: BTreeMap<u32, Running>,
}

impl<S: Store> PartitionWorkers<S> {
    async fn start(&mut self, partition: u32, shutdown: &Shutdown) -> Result<(), BusError> {
        // Another replica may have owned it since this one last did.
        self.handler
            .facts_seen
            .forget_partition(self.handler.partitions, partition);
        let stop = shutdown.child();
        let mut workers = Vec::new();
        for (stream, config) in consumer_configs(partition, self.batch) {
            let consumer = self.bus.ensure_consumer(stream, config).await?;
            let options = WorkerOptions {
                service: "profile-store",
                batch: self.batch,
                max_attempts: cairn_bus::worker::MAX_ATTEMPTS,
                handling: Handling::InOrder,
            };
            workers.push(tokio::spawn(cairn_bus::worker::run(
                self.bus.clone(),
                consumer,
                self.handler.clone(),
                options,
                stop.clone(),
            )));
        }
        tracing::info!(partition, "working partition");
        self.running.insert(partition, (stop, workers));
        Ok(())
    }

    /// Partitions with a worker that ended although it was not stopped (its consumer
    /// went away, or it failed).
    fn ended(&self) -> Vec<u32> {
        self.running
            .iter()
            .filter(|(_, (_, workers))| workers.iter().any(|worker| worker.is_finished()))
            .map(|(partition, _)| *partition)
            .collect()
    }

    /// Stops a partition's workers after they finish what they hold.
    async fn stop(&mut self, partition: u32) {
        if let Some((stop, workers)) = self.running.remove(&partition) {
            stop.trigger();
            for worker in workers {
                let _ = worker.await;
            }
            tracing::info!(partition, "stopped working partition");
        }
    }
}

/// Keeps this replica working its fair share of partitions until shutdown. When NATS
/// does not answer renewals for two thirds of the lease, everything stops (the entries
/// are about to expire and another replica may claim them); a partition whose worker
/// ended on its own is given back, to be claimed again on a later round.
async fn own_partitions<S: Store>(
    mut ownership: Ownership,
    mut workers: PartitionWorkers<S>,
    lease: Duration,
    shutdown: Shutdown,
) -> Result<(), BusError> {
    let round = lease / 3;
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        for partition in workers.ended() {
            tracing::warn!(
                partition,
                "a partition's worker ended; giving the partition back"
            );
            workers.stop(partition).await;
            ownership.release(partition).await;
        }
        match ownership.balance().await {
            Ok(plan) => {
                if plan.renewed {
                    last_renewed = tokio::time::Instant::now();
                }
                for partition in plan.lost {
                    workers.stop(partition).await;
                }
                for partition in plan.give_back {
                    workers.stop(partition).await;
                    ownership.release(partition).await;
                }
                for partition in plan.start {
                    if let Err(err) = workers.start(partition, &shutdown).await {
                        tracing::warn!(partition, error = %err, "cannot start a partition; giving it back");
                        ownership.release(partition).await;
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot balance partitions now"),
        }
        if last_renewed.elapsed() > lease * 2 / 3 {
            let abandoned = ownership.abandon();
            if !abandoned.is_empty() {
                tracing::warn!(
                    partitions = abandoned.len(),
                    "cannot renew partitions; stopping them before they expire"
                );
            }
            for partition in abandoned {
                workers.stop(partition).await;
            }
        }
        tokio::select! {
            () = shutdown.requested() => break,
            () = tokio::time::sleep(round) => {}
        }
    }
    let owned: Vec<u32> = workers.running.keys().copied().collect();
    for partition in owned {
        workers.stop(partition).await;
    }
    ownership.leave().await;
    Ok(())
}
