//! The segmenter: FilterQL segments kept live to the second.
//!
//! So far: the engine ([`segments`]: the set of segments, each indexed by the profile
//! changes that can affect it, through INCLUDE too, evaluated in dependency order with
//! the entered/exited transitions and the next instant a date-math condition flips),
//! and the saved segments ([`definitions`], all in one record changed by
//! compare-and-set so that checks across segments hold) served by
//! `cairn.segment.v1.Segments` ([`grpc`]); memberships kept live from
//! `profiles.changed` to `segments.changed`, with durable timers for date math
//! ([`live`]); batch runs over every profile, and the memberships read back ([`batch`]).

#![forbid(unsafe_code)]

pub mod activation;
pub mod batch;

pub mod campaigns;
pub mod definitions;
pub mod error;
pub mod grpc;
pub mod live;
pub mod personalization;
pub mod record;
pub mod segments;

use async_nats::jetstream::consumer;
use cairn_bus::worker::{Handling, WorkerOptions};
use cairn_bus::{Bus, BusConfig, streams, subjects};
use cairn_proto::campaign::v1::campaigns_server::CampaignsServer;
use cairn_proto::profile::v1::{ProfileChanged, ProfileDeleted};
use cairn_proto::segment::v1::SegmentChanged;
use cairn_proto::segment::v1::segments_server::SegmentsServer;
use cairn_runtime::grpc::GrpcServices;
use cairn_runtime::{BoxError, Module, ModuleContext, Var};
use cairn_store::Store;
use prost::Message as _;

pub use error::SegmentError;
pub use segments::{Segment, SegmentSet, Transition};

/// Every variable the segmenter reads.
pub fn vars() -> Vec<Var> {
    [
        cairn_bus::config::VARS,
        cairn_store::config::VARS,
        activation::VARS,
    ]
    .concat()
}

/// Profile changes handled per round.
pub const BATCH: usize = 500;

/// The durable consumer of profile changes, shared by the segmenter's replicas.
pub fn consumer_config() -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some("segmenter".to_string()),
        description: Some("Segmenter: memberships from profile changes".to_string()),
        filter_subject: subjects::profiles_changed_all(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: cairn_bus::worker::ACK_WAIT,
        max_ack_pending: (BATCH * 8) as i64,
        ..Default::default()
    }
}

/// The durable consumer of deleted profiles, whose memberships end.
pub fn deleted_consumer_config() -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some("segmenter_deleted".to_string()),
        description: Some("Segmenter: memberships of deleted profiles end".to_string()),
        filter_subject: subjects::PROFILES_DELETED.to_string(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: cairn_bus::worker::ACK_WAIT,
        ..Default::default()
    }
}

/// The durable consumer of due segment timers, shared by the segmenter's replicas.
pub fn timers_consumer_config() -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some("segmenter_timers".to_string()),
        description: Some("Segmenter: date math that came due".to_string()),
        filter_subject: "segments.due.>".to_string(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: cairn_bus::worker::ACK_WAIT,
        max_ack_pending: (BATCH * 8) as i64,
        ..Default::default()
    }
}

/// The durable consumer of due campaign timers, shared by the replicas (events and
/// segment changes reach the campaigns with the profile changes the `segmenter`
/// consumer reads). From the first timer kept: a stale one does nothing.
pub fn campaign_timers_consumer_config() -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some("segmenter_campaign_timers".to_string()),
        description: Some("Segmenter: campaign inactivity timers that came due".to_string()),
        filter_subject: "campaign.due.>".to_string(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: cairn_bus::worker::ACK_WAIT,
        max_ack_pending: (BATCH * 8) as i64,
        ..Default::default()
    }
}

/// What the segmenter does with a profile change, a due segment timer or a deletion:
/// the memberships decided, then the journeys moved by the segments entered and left
/// and by the change's event, in that order; one handling of one message, so a
/// redelivery repeats all of it and each part is idempotent.
#[derive(Clone)]
struct ChangeHandler<S> {
    live: live::LiveHandler<S>,
    campaigns: campaigns::engine::CampaignHandler<S>,
}

impl<S: Store> ChangeHandler<S> {
    async fn on_message(
        &self,
        message: &cairn_bus::worker::Delivered,
    ) -> Result<Vec<cairn_bus::Outgoing>, SegmentError> {
        let mut outgoing = self.live.on_message(message).await?;
        if message.subject == subjects::PROFILES_DELETED {
            // A person forgotten: their journeys go, and nothing acts on them any more.
            let deleted = ProfileDeleted::decode(message.payload.clone())
                .map_err(|err| SegmentError::InvalidArgument(format!("not a deletion: {err}")))?;
            self.campaigns.forget(&deleted.profile_id).await?;
            return Ok(outgoing);
        }
        let mut moved = Vec::new();
        for announced in &outgoing {
            if announced.subject.starts_with("segments.changed.") {
                let changed = SegmentChanged::decode(announced.payload.clone())
                    .map_err(|err| SegmentError::Corrupt(format!("segment change: {err}")))?;
                moved.extend(
                    self.campaigns
                        .on_segment_changed(changed, message.is_repeat())
                        .await?,
                );
            }
        }
        if message.subject.starts_with("profiles.changed.") {
            let changed = ProfileChanged::decode(message.payload.clone()).map_err(|err| {
                SegmentError::InvalidArgument(format!("not a profile change: {err}"))
            })?;
            if let Some(survivor) = merged_into(&changed)? {
                // One person now: the journeys go over to the survivor, and the exits of
                // the profile merged away move nothing.
                return Ok(outgoing
                    .into_iter()
                    .chain(
                        self.campaigns
                            .hand_over(&changed.profile_id, &survivor)
                            .await?,
                    )
                    .collect());
            }
            moved.extend(self.campaigns.on_message(message).await?);
        }
        outgoing.extend(moved);
        // What the change caused now carries its event's trace and receipt time; a timer
        // (a message schedule) fires later, so its time is not the event's.
        for caused in &mut outgoing {
            if !caused.is_schedule() {
                cairn_bus::trace::carry(&message.headers, &mut caused.headers);
            }
        }
        Ok(outgoing)
    }
}

/// The profile `changed` was merged into, when this is the announcement of the merge.
fn merged_into(changed: &ProfileChanged) -> Result<Option<String>, SegmentError> {
    if !changed
        .changed_fields
        .iter()
        .any(|field| field == "merged_into")
    {
        return Ok(None);
    }
    let view: serde_json::Value = serde_json::from_str(&changed.profile_json).map_err(|err| {
        SegmentError::InvalidArgument(format!("profiles.changed: not a profile: {err}"))
    })?;
    Ok(view["merged_into"].as_str().map(str::to_string))
}

impl<S: Store> cairn_bus::worker::Handler for ChangeHandler<S> {
    async fn handle(&self, message: &cairn_bus::worker::Delivered) -> cairn_bus::worker::Handled {
        error::handled(self.on_message(message).await)
    }
}

/// Starts the segmenter on `store`.
pub async fn start<S: Store>(context: &ModuleContext, store: S) -> Result<Module, SegmentError> {
    // The saved segments must be readable before anything is served.
    definitions::load(&store).await?.0.set()?;
    let bus_config = BusConfig::from_settings(&context.settings)?;
    let bus = Bus::connect(&bus_config, "cairn-segmenter").await?;
    for stream in [
        streams::profiles(&bus_config),
        streams::segments(&bus_config),
        streams::campaigns(&bus_config),
        streams::dead_letters(&bus_config),
    ] {
        bus.ensure_stream(stream).await?;
    }
    let consumer = bus
        .ensure_consumer(streams::PROFILES, consumer_config())
        .await?;
    let timers = bus
        .ensure_consumer(streams::SEGMENTS, timers_consumer_config())
        .await?;
    let deleted = bus
        .ensure_consumer(streams::PROFILES, deleted_consumer_config())
        .await?;
    let webhook_config = activation::WebhookConfig::from_settings(&context.settings)?;
    let webhooks_consumer = bus
        .ensure_consumer(
            streams::SEGMENTS,
            activation::consumer_config(&webhook_config),
        )
        .await?;

    context
        .readiness
        .add_check("segmenter: NATS", bus.readiness_check());
    let handler =
        live::LiveHandler::new(store.clone(), bus.partitions(), bus_config.derived_max_age);

    let webhooks = activation::Webhooks::new(
        bus.clone(),
        store.clone(),
        webhook_config.clone(),
        handler.definitions.clone(),
    )?;
    let campaign_store = store.clone();
    let campaigns = campaigns::engine::CampaignHandler::new(
        store.clone(),
        bus.partitions(),
        bus_config.derived_max_age,
    );
    let segments = grpc::SegmentsService {
        store,
        live: handler.clone(),
        bus: bus.clone(),
        batches: batch::Batches::default(),
        ranges: bus.partitions().count(),
    };
    let options = WorkerOptions {
        service: "segmenter",
        batch: BATCH,
        max_attempts: cairn_bus::worker::MAX_ATTEMPTS,
        handling: Handling::InOrder,
    };
    // Each profile change, due segment timer and deletion once, for the memberships
    // and then the campaigns.
    let changes = ChangeHandler {
        live: handler,
        campaigns: campaigns.clone(),
    };
    let worker = cairn_bus::worker::run(
        bus.clone(),
        consumer,
        changes.clone(),
        options.clone(),
        context.shutdown.clone(),
    );
    let due = cairn_bus::worker::run(
        bus.clone(),
        timers,
        changes.clone(),
        options.clone(),
        context.shutdown.clone(),
    );
    let forget = cairn_bus::worker::run(
        bus.clone(),
        deleted,
        changes,
        options.clone(),
        context.shutdown.clone(),
    );
    let campaign_timers = bus
        .ensure_consumer(streams::CAMPAIGNS, campaign_timers_consumer_config())
        .await?;
    let campaign_hooks = bus
        .ensure_consumer(
            streams::CAMPAIGNS,
            campaigns::webhooks::consumer_config(&webhook_config),
        )
        .await?;
    let campaign_webhooks = cairn_bus::worker::run(
        bus.clone(),
        campaign_hooks,
        campaigns::webhooks::CampaignWebhooks {
            poster: activation::Poster::new(webhook_config.timeout)?,
            config: webhook_config.clone(),
        },
        WorkerOptions {
            service: campaigns::webhooks::SERVICE,
            batch: BATCH,
            max_attempts: webhook_config.attempts,
            handling: Handling::InOrder,
        },
        context.shutdown.clone(),
    );
    // The personalization answers, from what the live path and the campaigns announce.
    let answers = personalization::AnswerWriter::new(
        campaign_store.clone(),
        cairn_bus::personalization::open(&bus).await?,
    );
    let mut answer_workers = Vec::new();
    for (stream, config) in personalization::consumer_configs() {
        let consumer = bus.ensure_consumer(stream, config).await?;
        answer_workers.push(cairn_bus::worker::run(
            bus.clone(),
            consumer,
            answers.clone(),
            WorkerOptions {
                service: personalization::SERVICE,
                batch: BATCH,
                max_attempts: cairn_bus::worker::MAX_ATTEMPTS,
                handling: Handling::InOrder,
            },
            context.shutdown.clone(),
        ));
    }
    let campaign_due = cairn_bus::worker::run(
        bus,
        campaign_timers,
        campaigns,
        options,
        context.shutdown.clone(),
    );
    let shutdown = context.shutdown.clone();
    let mut tasks = vec![
        task(worker),
        task(due),
        task(forget),
        task(campaign_due),
        task(campaign_webhooks),
        task(async move { webhooks.run(webhooks_consumer, shutdown).await }),
    ];
    tasks.extend(answer_workers.into_iter().map(task));
    Ok(Module {
        name: "segmenter",
        grpc: GrpcServices::default()
            .with(SegmentsServer::new(segments))
            .with(CampaignsServer::new(campaigns::grpc::CampaignsService {
                store: campaign_store,
                webhooks_signed: webhook_config.campaign_secret.is_some(),
            })),
        http: None,
        tasks,
    })
}

/// A module task from a future that fails with any error.
fn task<F, E>(work: F) -> cairn_runtime::ModuleTask
where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    Box::pin(async move { work.await.map_err(|err| Box::new(err) as BoxError) })
}
