//! The enricher framework: what geo, device, activity and content share, so that each
//! of them is only its own logic ([`Enrich`]).
//!
//! An enricher consumes `events.identified.>` on its own durable consumer (replicas of
//! one enricher share it), reads each event ([`cairn_event::Event`]), asks its logic for
//! facts, and publishes them on `profile.facts.<partition>` for the profile store, with
//! the message id `facts:<source>:<event message id>`: a redelivered event yields the
//! same facts, which the stream drops as a duplicate and the profile store would apply
//! only once anyway. Facts are deltas: an enricher that keeps state per person
//! publishes them only when they differ from what it published last ([`state`]). The
//! worker loop of [`cairn_bus::worker`] acknowledges after publishing, retries what fails
//! for now and dead-letters what never can succeed.
//!
//! An enricher that keeps state per person also follows what happens to profiles, on a
//! second durable consumer (`enrich_<source>_links`) of `profiles.merged.>`,
//! `profiles.split.>` and `profiles.deleted`: a merged profile's state is taken into the
//! survivor's (and the survivor's facts published, with the message id
//! `facts:<source>:merge:<merged profile>`), a split profile starts anew, and a deleted
//! person's state is deleted.

#![forbid(unsafe_code)]

pub mod decay;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer;
use bytes::Bytes;
use cairn_bus::worker::{Delivered, Handled, Handler, Handling, WorkerOptions};
use cairn_bus::{Bus, BusConfig, Outgoing, Partitions, streams, subjects};
use cairn_event::Event;
use cairn_proto::event::v1::IdentifiedEvent;
use cairn_proto::identity::v1::MergeRecord;
use cairn_proto::identity::v1::merge_record::Kind;
use cairn_proto::profile::v1::{Facts, ProfileDeleted};
use cairn_runtime::config::{ConfigError, Settings, Var};
use cairn_runtime::error::{Classify, ErrorKind};
use cairn_runtime::grpc::GrpcServices;
use cairn_runtime::{BoxError, Module, ModuleContext, ModuleTask};
use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use prost::Message as _;
use serde_json::{Map, Value};

pub const BATCH: Var = Var {
    name: "CAIRN_ENRICH_BATCH",
    default: "500",
    doc: "Most events an enricher handles per round.",
};

/// The variables every enricher reads (besides the bus's).
pub const VARS: &[Var] = &[BATCH];

/// Every variable of an enricher with its `own`: those, the framework's and the bus's.
pub fn vars(own: &[Var]) -> Vec<Var> {
    [own, VARS, cairn_bus::config::VARS].concat()
}

/// What an enricher learned from one event: a JSON object kept under
/// `facts.<source>` in the profile.
pub type FactSet = Map<String, Value>;

/// Facts to publish, and the time they hold as of: the profile keeps, per source, the
/// facts with the newest such time.
#[derive(Debug, Clone, PartialEq)]
pub struct Learned {
    pub facts: FactSet,
    /// The event's time for facts about the event alone; for facts drawn from what an
    /// enricher keeps per person, the newest event time in it (a late event changes
    /// those facts too, and they are the newest there are).
    pub as_of_ms: i64,
}

impl Learned {
    /// Facts about `event` alone.
    pub fn of_event(facts: FactSet, event: &Event) -> Self {
        Self {
            facts,
            as_of_ms: event.at_ms,
        }
    }
}

/// The digest of a fact set, to tell whether it changed.
pub fn digest(facts: &FactSet) -> u64 {
    subjects::fnv1a64(&serde_json::to_vec(facts).unwrap_or_default())
}

/// An enricher's own logic.
pub trait Enrich: Send + Sync + 'static {
    /// Its name: `geo`, `device`, `activity`, `content`. Names the facts' source, the
    /// durable consumer (`enrich_<source>`) and the dead letters.
    fn source(&self) -> &'static str;

    /// What `event` tells about `profile_id` that the profile should learn, if anything.
    fn enrich(
        &self,
        profile_id: &str,
        event: &Event,
    ) -> impl Future<Output = Result<Option<Learned>, EnrichError>> + Send;

    /// Whether it keeps state per person, which must follow merges, splits and
    /// deletions of profiles (the three methods below).
    fn keeps_person_state(&self) -> bool {
        false
    }

    /// Profile `from` was merged into `into`: what is kept about `from` becomes part of
    /// what is kept about `into`, once however often this is called. Returns what the
    /// profile `into` should learn from it.
    fn merge(
        &self,
        _from: &str,
        _into: &str,
    ) -> impl Future<Output = Result<Option<Learned>, EnrichError>> + Send {
        async { Ok(None) }
    }

    /// Identifiers were split out of a profile into `into`, which is a person of its own
    /// again (maybe one merged before): what is kept about `into` starts anew.
    fn split(&self, _into: &str) -> impl Future<Output = Result<(), EnrichError>> + Send {
        async { Ok(()) }
    }

    /// The person of `profile_id` is forgotten: so is everything kept about them.
    fn forget(&self, _profile_id: &str) -> impl Future<Output = Result<(), EnrichError>> + Send {
        async { Ok(()) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    #[error("{0}")]
    Bus(#[from] cairn_bus::BusError),
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Store(#[from] cairn_store::StoreError),
    /// The message is not something an enricher can read.
    #[error("unreadable message: {0}")]
    Unreadable(String),
    /// A dependency is down; the event is tried again.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A data file (database, rules) cannot be used.
    #[error("{0}")]
    Data(String),
}

impl Classify for EnrichError {
    fn kind(&self) -> ErrorKind {
        match self {
            EnrichError::Bus(err) => err.kind(),
            EnrichError::Store(err) => err.kind(),
            EnrichError::Unreadable(_) => ErrorKind::InvalidArgument,
            EnrichError::Unavailable(_) => ErrorKind::Unavailable,
            EnrichError::Config(_) | EnrichError::Data(_) => ErrorKind::Internal,
        }
    }
}

/// Counts what an enricher does, by source.
#[derive(Debug, Clone)]
struct EnrichMetrics {
    events: Counter<u64>,
    facts: Counter<u64>,
    source: KeyValue,
}

/// The worker's handler: one event in, facts (maybe none) out.
pub struct Enricher<E> {
    logic: Arc<E>,
    partitions: Partitions,
    metrics: EnrichMetrics,
}

impl<E> Clone for Enricher<E> {
    fn clone(&self) -> Self {
        Self {
            logic: self.logic.clone(),
            partitions: self.partitions,
            metrics: self.metrics.clone(),
        }
    }
}

impl<E: Enrich> Enricher<E> {
    pub fn new(
        logic: Arc<E>,
        partitions: Partitions,
        meter: &opentelemetry::metrics::Meter,
    ) -> Self {
        let metrics = EnrichMetrics {
            events: meter
                .u64_counter("cairn_enrich_events")
                .with_description("Identified events an enricher read")
                .build(),
            facts: meter
                .u64_counter("cairn_enrich_facts")
                .with_description("Facts an enricher published")
                .build(),
            source: KeyValue::new("source", logic.source()),
        };
        Self {
            logic,
            partitions,
            metrics,
        }
    }

    /// The facts message for one identified event, if the logic learned anything.
    pub async fn facts_for(&self, payload: Bytes) -> Result<Option<Outgoing>, EnrichError> {
        let identified = IdentifiedEvent::decode(payload)
            .map_err(|err| EnrichError::Unreadable(format!("not an identified event: {err}")))?;
        if identified.profile_id.is_empty() {
            return Err(EnrichError::Unreadable(
                "the event has no profile id".to_string(),
            ));
        }
        let envelope = identified
            .envelope
            .as_ref()
            .ok_or_else(|| EnrichError::Unreadable("no envelope".to_string()))?;
        let event = Event::read(envelope).map_err(EnrichError::Unreadable)?;
        self.metrics
            .events
            .add(1, std::slice::from_ref(&self.metrics.source));
        let learned = self.logic.enrich(&identified.profile_id, &event).await?;
        Ok(self.facts_message(&identified.profile_id, &event.message_id, learned))
    }

    /// What a message on `profiles.merged.*`, `profiles.split.*` or `profiles.deleted`
    /// means for what the logic keeps per person; for a merge, the facts it gives the
    /// survivor.
    pub async fn follow_profile(
        &self,
        subject: &str,
        payload: Bytes,
    ) -> Result<Option<Outgoing>, EnrichError> {
        if subject == subjects::PROFILES_DELETED {
            let deleted = ProfileDeleted::decode(payload)
                .map_err(|err| EnrichError::Unreadable(format!("not a deleted profile: {err}")))?;
            if deleted.profile_id.is_empty() {
                return Err(EnrichError::Unreadable(
                    "profile_id: a deleted profile needs one".to_string(),
                ));
            }
            self.logic.forget(&deleted.profile_id).await?;
            return Ok(None);
        }
        let link = MergeRecord::decode(payload)
            .map_err(|err| EnrichError::Unreadable(format!("not a merge record: {err}")))?;
        let (from, into) = (&link.from_profile_id, &link.into_profile_id);
        if from.is_empty() || into.is_empty() || from == into {
            return Err(EnrichError::Unreadable(format!(
                "from_profile_id, into_profile_id: two different profiles are needed, got {from:?} and {into:?}"
            )));
        }
        match Kind::try_from(link.kind) {
            Ok(Kind::Merged) => {
                let learned = self.logic.merge(from, into).await?;
                Ok(self.facts_message(into, &format!("merge:{from}"), learned))
            }
            Ok(Kind::Split) => {
                self.logic.split(into).await?;
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// The facts message for what the logic `learned` about `profile_id` from the
    /// message `message_id`, if anything.
    fn facts_message(
        &self,
        profile_id: &str,
        message_id: &str,
        learned: Option<Learned>,
    ) -> Option<Outgoing> {
        let learned = learned.filter(|learned| !learned.facts.is_empty())?;
        self.metrics
            .facts
            .add(1, std::slice::from_ref(&self.metrics.source));
        let source = self.logic.source();
        let message = Facts {
            profile_id: profile_id.to_string(),
            message_id: message_id.to_string(),
            source: source.to_string(),
            at: Some(cairn_runtime::clock::timestamp(learned.as_of_ms)),
            facts_json: Value::Object(learned.facts).to_string(),
        };
        let mut headers = async_nats::HeaderMap::new();
        cairn_bus::trace::inject_current(&mut headers);
        Some(Outgoing {
            subject: subjects::profile_facts(self.partitions.of(profile_id)),
            message_id: Some(format!("facts:{source}:{message_id}")),
            headers,
            payload: Bytes::from(message.encode_to_vec()),
        })
    }
}

impl<E: Enrich> Handler for Enricher<E> {
    async fn handle(&self, message: &Delivered) -> Handled {
        let facts = if message.stream == streams::PROFILES {
            self.follow_profile(&message.subject, message.payload.clone())
                .await
        } else {
            self.facts_for(message.payload.clone()).await
        };
        match facts {
            Ok(facts) => Handled::Publish(
                facts
                    .into_iter()
                    .map(|mut facts| {
                        cairn_bus::trace::carry(&message.headers, &mut facts.headers);
                        facts
                    })
                    .collect(),
            ),
            Err(err) if err.kind() == ErrorKind::Unavailable => Handled::Retry {
                reason: err.to_string(),
                delay: Duration::from_millis(500),
            },
            Err(err) => Handled::DeadLetter {
                reason: err.to_string(),
            },
        }
    }
}

/// The durable consumer of the enricher `source`: every identified event.
pub fn consumer_config(source: &str, batch: usize) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(format!("enrich_{source}")),
        description: Some(format!("Enricher {source}: facts from identified events")),
        filter_subject: subjects::events_identified_all(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: cairn_bus::worker::ACK_WAIT,
        max_ack_pending: (batch * 8).max(1000) as i64,
        ..Default::default()
    }
}

/// The durable consumer of an enricher that keeps state per person: what happens to
/// profiles (merges, splits, deletions).
pub fn links_consumer_config(source: &str, batch: usize) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(format!("enrich_{source}_links")),
        description: Some(format!(
            "Enricher {source}: what it keeps per person follows merges, splits and deletions"
        )),
        filter_subjects: vec![
            subjects::profiles_merged_all(),
            subjects::profiles_split_all(),
            subjects::PROFILES_DELETED.to_string(),
        ],
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: cairn_bus::worker::ACK_WAIT,
        max_ack_pending: (batch * 8).max(1000) as i64,
        ..Default::default()
    }
}

/// Starts the enricher `service` (e.g. `enrich-geo`) around `logic`.
pub async fn start<E: Enrich>(
    context: &ModuleContext,
    service: &'static str,
    logic: E,
) -> Result<Module, EnrichError> {
    let batch = batch(&context.settings)?;
    let bus_config = BusConfig::from_settings(&context.settings)?;
    let bus = Bus::connect(&bus_config, &format!("cairn-{service}")).await?;
    for stream in [
        streams::identified(&bus_config),
        streams::dead_letters(&bus_config),
    ] {
        bus.ensure_stream(stream).await?;
    }
    let consumer = bus
        .ensure_consumer(streams::IDENTIFIED, consumer_config(logic.source(), batch))
        .await?;
    let links_consumer = if logic.keeps_person_state() {
        bus.ensure_stream(streams::profiles(&bus_config)).await?;
        Some(
            bus.ensure_consumer(
                streams::PROFILES,
                links_consumer_config(logic.source(), batch),
            )
            .await?,
        )
    } else {
        None
    };
    context
        .readiness
        .add_check(format!("{service}: NATS"), bus.readiness_check());
    let handler = Enricher::new(
        Arc::new(logic),
        bus.partitions(),
        &context.metrics.meter("cairn.enricher"),
    );
    let options = WorkerOptions {
        service,
        batch,
        max_attempts: cairn_bus::worker::MAX_ATTEMPTS,
        handling: Handling::InOrder,
    };
    let mut workers = vec![cairn_bus::worker::run(
        bus.clone(),
        consumer,
        handler.clone(),
        options.clone(),
        context.shutdown.clone(),
    )];
    if let Some(links_consumer) = links_consumer {
        workers.push(cairn_bus::worker::run(
            bus,
            links_consumer,
            handler,
            options,
            context.shutdown.clone(),
        ));
    }
    Ok(Module {
        name: service,
        grpc: GrpcServices::default(),
        http: None,
        tasks: workers
            .into_iter()
            .map(|worker| {
                Box::pin(async move { worker.await.map_err(|err| Box::new(err) as BoxError) })
                    as ModuleTask
            })
            .collect(),
    })
}

fn batch(settings: &Settings) -> Result<usize, ConfigError> {
    Ok(settings.number(&BATCH, 1)? as usize)
}
