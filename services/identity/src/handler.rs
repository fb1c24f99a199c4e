//! What identity does with one raw event: find its identifiers, give it a profile, and
//! say so downstream.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cairn_bus::worker::{Delivered, Handled, Handler};
use cairn_bus::{Outgoing, Partitions, subjects};
use cairn_proto::event::v1::{Envelope, EventType, IdentifiedEvent};
use cairn_runtime::clock::now_ms;
use cairn_store::Store;
use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use prost::Message as _;

use crate::error::IdentityError;
use crate::extract;
use crate::graph::{Graph, LogEntry, LogKind};
use crate::proto;

/// Counts what identity does.
#[derive(Debug, Clone)]
pub struct IdentityMetrics {
    events: Counter<u64>,
    merges: Counter<u64>,
    dead_letters: Counter<u64>,
    dropped: Counter<u64>,
}

impl IdentityMetrics {
    pub fn new(meter: &opentelemetry::metrics::Meter) -> Self {
        Self {
            events: meter
                .u64_counter("cairn_identity_events")
                .with_description("Events given a profile")
                .build(),
            merges: meter
                .u64_counter("cairn_identity_merges")
                .with_description("Profiles merged into another")
                .build(),
            dead_letters: meter
                .u64_counter("cairn_identity_dead_letters")
                .with_description("Events identity could not process, by reason")
                .build(),
            dropped: meter
                .u64_counter("cairn_identity_dropped")
                .with_description(
                    "Events dropped on purpose, by reason (forgotten: of a deleted person)",
                )
                .build(),
        }
    }
}

/// The identity worker's handler.
#[derive(Clone)]
pub struct IdentityHandler<S> {
    pub graph: Arc<Graph<S>>,
    pub partitions: Partitions,
    pub metrics: IdentityMetrics,
}

/// A merge or a split, as published on `profiles.merged.<partition of the survivor>` or
/// `profiles.split.<partition of the profile split>` (where that profile's owner in the
/// profile store reads it).
pub fn merge_message(entry: &LogEntry, partitions: Partitions) -> Result<Outgoing, IdentityError> {
    let record = proto::merge_record(entry);
    let (subject, id) = match entry.kind {
        LogKind::Split => (
            subjects::profiles_split(partitions.of(&entry.from)),
            format!("split/{}/{}/{}", entry.from, entry.into, entry.at_ms),
        ),
        _ => (
            subjects::profiles_merged(partitions.of(&entry.into)),
            format!("merge/{}/{}", entry.from, entry.into),
        ),
    };
    let mut headers = async_nats::HeaderMap::new();
    cairn_bus::trace::inject_current(&mut headers);
    Ok(Outgoing {
        subject,
        message_id: Some(id),
        headers,
        payload: Bytes::from(record.encode_to_vec()),
    })
}

impl<S: Store> IdentityHandler<S> {
    async fn identify(&self, message: &Delivered) -> Result<Vec<Outgoing>, IdentityError> {
        let envelope = Envelope::decode(message.payload.clone())
            .map_err(|err| IdentityError::Unreadable(format!("not an event envelope: {err}")))?;
        let event: serde_json::Value = serde_json::from_slice(&envelope.raw)
            .map_err(|err| IdentityError::Unreadable(format!("the event is not JSON: {err}")))?;
        let is_alias = envelope.r#type() == EventType::Alias;
        let found = extract::identifiers(self.graph.rules(), &event, is_alias);
        let identifiers = self.graph.event_identifiers(&found).await?;
        let received_ms = envelope
            .received_at
            .as_ref()
            .map_or(0, cairn_runtime::clock::timestamp_ms);
        let identified = self
            .graph
            .identify(&identifiers, &envelope.message_id, received_ms, now_ms())
            .await?;

        let mut merges = identified.merges;
        if merges.is_empty() && message.is_repeat() {
            // A redelivery after a crash, or an attempt after one that failed halfway: the
            // merges this event caused may not have been announced. Announce them again
            // (the stream drops duplicates).
            let (_, history) = self.graph.history(&identified.profile_id).await?;
            merges = history
                .into_iter()
                .filter(|entry| {
                    entry.kind == LogKind::Merged && entry.message_id == envelope.message_id
                })
                .collect();
        }
        let mut outgoing = Vec::with_capacity(1 + merges.len());
        for entry in &merges {
            outgoing.push(merge_message(entry, self.partitions)?);
        }
        self.metrics.merges.add(merges.len() as u64, &[]);
        let partition = self.partitions.of(&identified.profile_id);
        let message_id = format!("{}:{}", envelope.source, envelope.message_id);
        let payload = IdentifiedEvent {
            envelope: Some(envelope),
            profile_id: identified.profile_id,
            identifiers: identifiers.iter().map(proto::identifier).collect(),
        }
        .encode_to_vec();
        // The trace and the receipt time go on from the collector's.
        let mut headers = async_nats::HeaderMap::new();
        cairn_bus::trace::carry(&message.headers, &mut headers);
        outgoing.push(Outgoing {
            subject: subjects::events_identified(partition),
            message_id: Some(message_id),
            headers,
            payload: Bytes::from(payload),
        });
        self.metrics.events.add(1, &[]);
        Ok(outgoing)
    }
}

impl<S: Store> Handler for IdentityHandler<S> {
    async fn handle(&self, message: &Delivered) -> Handled {
        match self.identify(message).await {
            Ok(outgoing) => Handled::Publish(outgoing),
            Err(err @ IdentityError::Forgotten { .. }) => {
                tracing::info!(subject = %message.subject, reason = %err, "event dropped");
                self.metrics
                    .dropped
                    .add(1, &[KeyValue::new("reason", "forgotten")]);
                Handled::Publish(Vec::new())
            }
            Err(err) if err.is_transient() => Handled::Retry {
                reason: err.to_string(),
                delay: Duration::from_secs(1),
            },
            Err(err) => {
                let reason = match &err {
                    IdentityError::NoIdentifiers => "no_identifiers",
                    IdentityError::Unreadable(_) => "unreadable",
                    _ => "error",
                };
                self.metrics
                    .dead_letters
                    .add(1, &[KeyValue::new("reason", reason)]);
                Handled::DeadLetter {
                    reason: err.to_string(),
                }
            }
        }
    }
}

/// Forgets the identifiers of deleted profiles (`profiles.deleted`).
#[derive(Clone)]
pub struct ForgetHandler<S> {
    pub graph: Arc<Graph<S>>,
}

impl<S: Store> Handler for ForgetHandler<S> {
    async fn handle(&self, message: &Delivered) -> Handled {
        let deleted =
            match cairn_proto::profile::v1::ProfileDeleted::decode(message.payload.clone()) {
                Ok(deleted) => deleted,
                Err(err) => {
                    return Handled::DeadLetter {
                        reason: format!("not a deleted profile: {err}"),
                    };
                }
            };
        let identifiers: Vec<crate::rules::Identifier> = deleted
            .identifiers
            .iter()
            .map(|identifier| {
                crate::rules::Identifier::new(identifier.r#type.clone(), identifier.value.clone())
            })
            .collect();
        let deleted_at_ms = deleted
            .at
            .as_ref()
            .map_or_else(now_ms, cairn_runtime::clock::timestamp_ms);
        match self.graph.forget(&identifiers, deleted_at_ms).await {
            Ok(()) => {
                tracing::info!(profile_id = %deleted.profile_id, identifiers = identifiers.len(), "forgot a deleted profile");
                Handled::Publish(Vec::new())
            }
            Err(err) if err.is_transient() => Handled::Retry {
                reason: err.to_string(),
                delay: Duration::from_secs(1),
            },
            Err(err) => Handled::DeadLetter {
                reason: err.to_string(),
            },
        }
    }
}
