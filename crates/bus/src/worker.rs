//! The loop every consuming service runs: pull messages from a durable consumer, handle
//! them (one partition's messages in order, partitions in parallel), publish what the
//! handler produced, and only then acknowledge. A message the handler cannot process
//! goes to `deadletter.<service>` with the reason and is acknowledged; a transient
//! failure is retried later, and given up on (dead-lettered) after the consumer's last
//! delivery.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::PullConsumer;
use bytes::Bytes;
use cairn_runtime::Shutdown;
use futures::StreamExt as _;

use crate::{Bus, BusError, Outgoing, subjects};

/// A message as a handler sees it.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub subject: String,
    pub headers: async_nats::HeaderMap,
    pub payload: Bytes,
    /// 1 on the first delivery, more on redeliveries.
    pub delivered: i64,
    pub stream_sequence: u64,
}

/// What became of one message.
#[derive(Debug)]
pub enum Handled {
    /// Done; publish these (maybe none), then acknowledge.
    Publish(Vec<Outgoing>),
    /// It can never be processed: dead-letter it with the reason, then acknowledge.
    DeadLetter { reason: String },
    /// Not now (a dependency is down): deliver it again after `delay`.
    Retry { reason: String, delay: Duration },
}

/// Handles one message. Cloned into each partition's task.
pub trait Handler: Clone + Send + Sync + 'static {
    fn handle(&self, message: &Delivered) -> impl Future<Output = Handled> + Send;
}

/// How the loop pulls.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The service name, for `deadletter.<service>` and the logs.
    pub service: &'static str,
    /// Most messages handled per round.
    pub batch: usize,
    /// The consumer's `max_deliver`: on that delivery a retry becomes a dead letter.
    pub max_deliver: i64,
}

/// Header naming why a message was dead-lettered.
pub const DEAD_LETTER_REASON: &str = "Cairn-Dead-Letter-Reason";
/// Header naming the subject a dead-lettered message came from.
pub const DEAD_LETTER_SUBJECT: &str = "Cairn-Dead-Letter-Subject";

/// Runs until `shutdown`; the messages of the round in hand are finished first.
pub async fn run<H: Handler>(
    bus: Bus,
    consumer: PullConsumer,
    handler: H,
    options: WorkerOptions,
    shutdown: Shutdown,
) -> Result<(), BusError> {
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(options.batch)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|err| BusError::Unavailable(format!("{}: cannot pull: {err}", options.service)))?
        .ready_chunks(options.batch);
    loop {
        let chunk = tokio::select! {
            () = shutdown.requested() => break,
            chunk = messages.next() => chunk,
        };
        let Some(chunk) = chunk else {
            return Err(BusError::Unavailable(format!(
                "{}: the consumer stream ended",
                options.service
            )));
        };
        let mut by_partition: BTreeMap<String, Vec<async_nats::jetstream::Message>> =
            BTreeMap::new();
        for message in chunk {
            match message {
                Ok(message) => by_partition
                    .entry(message.subject.to_string())
                    .or_default()
                    .push(message),
                Err(err) => {
                    tracing::warn!(service = options.service, error = %err, "pull failed; going on")
                }
            }
        }
        let mut partitions = Vec::with_capacity(by_partition.len());
        for (_, messages) in by_partition {
            let (bus, handler, options) = (bus.clone(), handler.clone(), options.clone());
            partitions.push(tokio::spawn(handle_in_order(
                bus, handler, options, messages,
            )));
        }
        for partition in partitions {
            if let Err(err) = partition.await {
                tracing::error!(service = options.service, error = %err, "a partition's task failed");
            }
        }
    }
    tracing::info!(service = options.service, "stopped consuming");
    Ok(())
}

async fn handle_in_order<H: Handler>(
    bus: Bus,
    handler: H,
    options: WorkerOptions,
    messages: Vec<async_nats::jetstream::Message>,
) {
    let mut outgoing = Vec::new();
    let mut done = Vec::new();
    for message in messages {
        let (delivered, stream_sequence) = message
            .info()
            .map(|info| (info.delivered, info.stream_sequence))
            .unwrap_or((1, 0));
        let view = Delivered {
            subject: message.subject.to_string(),
            headers: message.headers.clone().unwrap_or_default(),
            payload: message.payload.clone(),
            delivered,
            stream_sequence,
        };
        match handler.handle(&view).await {
            Handled::Publish(messages) => {
                outgoing.extend(messages);
                done.push(message);
            }
            Handled::Retry { reason, .. } if delivered >= options.max_deliver => {
                let reason = format!("gave up after {delivered} deliveries: {reason}");
                outgoing.push(dead_letter(&options, &view, &reason));
                done.push(message);
            }
            Handled::Retry { reason, delay } => {
                tracing::warn!(service = options.service, subject = %view.subject, delivered, %reason, "will retry");
                if let Err(err) = message.ack_with(AckKind::Nak(Some(delay))).await {
                    tracing::warn!(service = options.service, error = %err, "cannot nak; it will be redelivered");
                }
            }
            Handled::DeadLetter { reason } => {
                outgoing.push(dead_letter(&options, &view, &reason));
                done.push(message);
            }
        }
    }
    if done.is_empty() {
        return;
    }
    // Acknowledge only what is now durably published downstream.
    match bus.publish_all(outgoing).await {
        Ok(_) => {
            for message in done {
                if let Err(err) = message.ack().await {
                    tracing::warn!(service = options.service, error = %err, "cannot ack; it will be redelivered");
                }
            }
        }
        Err(err) => {
            tracing::warn!(service = options.service, error = %err, "cannot publish; the batch will be redelivered");
            for message in done {
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
            }
        }
    }
}

fn dead_letter(options: &WorkerOptions, message: &Delivered, reason: &str) -> Outgoing {
    tracing::warn!(service = options.service, subject = %message.subject, %reason, "dead letter");
    let mut headers = message.headers.clone();
    headers.insert(
        DEAD_LETTER_REASON,
        reason.replace(['\r', '\n'], " ").as_str(),
    );
    headers.insert(DEAD_LETTER_SUBJECT, message.subject.as_str());
    Outgoing {
        subject: subjects::dead_letter(options.service),
        message_id: Some(format!("{}/{}", options.service, message.stream_sequence)),
        headers,
        payload: message.payload.clone(),
    }
}
