//! From validated events to acknowledged messages in the EVENTS stream.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use cairn_bus::{Bus, Outgoing, subjects};
use cairn_proto::event::v1::Envelope;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};
use prost::Message as _;

use crate::error::CollectorError;
use crate::event::AcceptedRequest;
use crate::rate_limit::RateLimiter;

/// The id of an event that came without one: derived from its source and bytes, so a
/// retried request whose first attempt was partly stored is still stored once.
fn generated_message_id(source: &str, raw: &[u8]) -> String {
    let mut name = Vec::with_capacity(source.len() + 1 + raw.len());
    name.extend_from_slice(source.as_bytes());
    name.push(0);
    name.extend_from_slice(raw);
    format!(
        "cairn-{}",
        uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, &name)
    )
}

/// What the collector saw about the request, beside the events.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    /// The source owning the write key.
    pub source: String,
    pub client_ip: String,
    pub user_agent: String,
}

/// Stores events in the EVENTS stream and counts what it did.
#[derive(Debug, Clone)]
pub struct Ingest {
    bus: Bus,
    rate_limit: Option<Arc<RateLimiter>>,
    events: Counter<u64>,
    rejected: Counter<u64>,
    batch_size: Histogram<u64>,
}

impl Ingest {
    pub fn new(bus: Bus, meter: &opentelemetry::metrics::Meter) -> Self {
        Self {
            bus,
            rate_limit: None,
            events: meter
                .u64_counter("cairn_collector_events")
                .with_description("Events stored in the EVENTS stream, by source")
                .build(),
            rejected: meter
                .u64_counter("cairn_collector_rejected_requests")
                .with_description("Requests refused, by reason")
                .build(),
            batch_size: meter
                .u64_histogram("cairn_collector_request_events")
                .with_description("Events per accepted request")
                .with_boundaries(vec![1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0])
                .build(),
        }
    }

    /// Refuses requests over `limit` (events per second per source).
    pub fn with_rate_limit(mut self, limit: Option<RateLimiter>) -> Self {
        self.rate_limit = limit.map(Arc::new);
        self
    }

    /// The same store, without the rate limit (for events the collector makes itself).
    pub fn without_rate_limit(&self) -> Self {
        Self {
            rate_limit: None,
            ..self.clone()
        }
    }

    /// Counts a refused request.
    pub fn count_rejection(&self, err: &CollectorError) {
        let reason = cairn_runtime::error::Classify::kind(err).name();
        self.rejected.add(1, &[KeyValue::new("reason", reason)]);
    }

    /// Stores every event of `request` and returns their message ids, once JetStream
    /// has acknowledged all of them. Nothing is acknowledged to the client otherwise.
    pub async fn store(
        &self,
        request: AcceptedRequest,
        meta: &RequestMeta,
    ) -> Result<Vec<String>, CollectorError> {
        if let Some(limit) = &self.rate_limit {
            limit
                .admit(&meta.source, request.events.len(), Instant::now())
                .map_err(|retry_after| CollectorError::RateLimited {
                    source_name: meta.source.clone(),
                    retry_after,
                })?;
        }
        let received = SystemTime::now();
        let received_at = prost_types::Timestamp::from(received);
        let partitions = self.bus.partitions();
        let batch_sent_at = request.batch_sent_at.unwrap_or_default();
        let batch_context = request.batch_context.unwrap_or_default();
        let mut message_ids = Vec::with_capacity(request.events.len());
        let mut outgoing = Vec::with_capacity(request.events.len());
        for event in request.events {
            let generated = event.message_id.is_none();
            let message_id = event
                .message_id
                .unwrap_or_else(|| generated_message_id(&meta.source, &event.raw));
            let subject = subjects::events_raw(partitions.of(&event.partition_key));
            let envelope = Envelope {
                raw: event.raw,
                received_at: Some(received_at),
                source: meta.source.clone(),
                message_id: message_id.clone(),
                message_id_generated: generated,
                client_ip: meta.client_ip.clone(),
                user_agent: meta.user_agent.clone(),
                r#type: event.call.proto().into(),
                partition_key: event.partition_key,
                batch_sent_at: batch_sent_at.clone(),
                batch_context: batch_context.clone(),
            };
            let mut headers = async_nats::HeaderMap::new();
            cairn_bus::trace::inject_current(&mut headers);
            cairn_bus::trace::stamp_received(&mut headers, received);
            outgoing.push(Outgoing {
                subject,
                // Scoped by source: two sources may reuse each other's ids.
                message_id: Some(format!("{}:{}", meta.source, message_id)),
                headers,
                payload: Bytes::from(envelope.encode_to_vec()),
            });
            message_ids.push(message_id);
        }
        let count = outgoing.len() as u64;
        self.bus.publish_all(outgoing).await?;
        self.events
            .add(count, &[KeyValue::new("source", meta.source.clone())]);
        self.batch_size.record(count, &[]);
        tracing::debug!(source = %meta.source, events = count, "stored");
        Ok(message_ids)
    }
}
