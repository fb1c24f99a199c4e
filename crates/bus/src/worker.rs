//! The loop every consuming service runs: pull messages from a durable consumer, handle
//! them (one partition's messages in order, partitions in parallel), publish what the
//! handler produced, and only then acknowledge. A message the handler cannot process
//! goes to `deadletter.<service>` with the reason and is acknowledged; a transient
//! failure is retried later, and given up on (dead-lettered) after the consumer's last
//! delivery.
//!
//! A message that cannot be handled now is retried in place, with a growing pause, until
//! it succeeds or its attempts are used up (then it is dead-lettered); publishing is
//! retried the same way. Rounds are pipelined: the next round is handled while
//! JetStream stores the previous one's output, and each message is acknowledged
//! (explicitly: several replicas may share the consumer) once its round is stored. A
//! process that dies mid-round acknowledged none of it, and the round is delivered
//! again (handlers are idempotent, and downstream streams drop duplicate message ids).

use std::collections::BTreeMap;
use std::time::Duration;

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
    /// Attempts at a message that keeps failing before it is dead-lettered.
    pub max_attempts: u32,
}

/// How long a consumer waits for an acknowledgement before delivering a message again
/// (to another replica, or to a restarted one after a crash). A message retried in place
/// for longer keeps its claim with progress notices.
pub const ACK_WAIT: Duration = Duration::from_secs(10);

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
    let mut in_flight = std::collections::VecDeque::new();
    'rounds: loop {
        let chunk = tokio::select! {
            biased;
            () = shutdown.requested() => break,
            // Acknowledge finished rounds as soon as they finish, even when no new
            // messages come.
                        finished = async {
                match in_flight.front_mut() {
                    Some(round) => round.await,
                    None => std::future::pending().await,
                }
            }, if !in_flight.is_empty() =>
            {
                in_flight.pop_front();
                if !acknowledge(&options, finished).await {
                    break;
                }
                continue;
            }
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
            let (handler, options, shutdown) = (handler.clone(), options.clone(), shutdown.clone());
            partitions.push(tokio::spawn(handle_in_order(
                handler, options, shutdown, messages,
            )));
        }
        let mut handled = Vec::with_capacity(partitions.len());
        for partition in partitions {
            match partition.await {
                Ok(Some(partition)) => handled.push(partition),
                Ok(None) => break 'rounds,
                Err(err) => {
                    tracing::error!(service = options.service, error = %err, "a partition's task failed");
                    break 'rounds;
                }
            }
        }
        // Publish the round, in partition order, and move on to the next one while
        // JetStream answers; rounds are acknowledged in order once stored.
        let sent = send_round(&bus, &options, handled).await;
        in_flight.push_back(tokio::spawn(complete_round(
            bus.clone(),
            options.clone(),
            shutdown.clone(),
            sent,
        )));
        while in_flight.len() > ROUNDS_IN_FLIGHT {
            if !acknowledge_oldest(&options, &mut in_flight).await {
                break 'rounds;
            }
        }
    }
    while !in_flight.is_empty() {
        if !acknowledge_oldest(&options, &mut in_flight).await {
            break;
        }
    }
    tracing::info!(service = options.service, "stopped consuming");
    Ok(())
}

/// Rounds published and awaiting JetStream before they are acknowledged.
const ROUNDS_IN_FLIGHT: usize = 3;

type Message = async_nats::jetstream::Message;

/// One partition's part of a round, handled.
struct PartitionDone {
    outgoing: Vec<Outgoing>,
    /// The messages handled, to acknowledge once their output is stored.
    messages: Vec<Message>,
}

/// A round whose output was sent.
struct SentRound {
    parts: Vec<(Vec<Outgoing>, Result<crate::Sent, BusError>)>,
    messages: Vec<Message>,
}

async fn send_round(bus: &Bus, options: &WorkerOptions, handled: Vec<PartitionDone>) -> SentRound {
    let mut round = SentRound {
        parts: Vec::with_capacity(handled.len()),
        messages: Vec::new(),
    };
    for part in handled {
        round.messages.extend(part.messages);
        let sent = bus.send_all(part.outgoing.clone()).await;
        if let Err(err) = &sent {
            tracing::warn!(service = options.service, error = %err, "cannot publish; retrying");
        }
        round.parts.push((part.outgoing, sent));
    }
    round
}

/// Waits until every output of the round is stored (sending again what failed) and
/// returns the round's messages to acknowledge; `None` if shutdown came first.
async fn complete_round(
    bus: Bus,
    options: WorkerOptions,
    shutdown: Shutdown,
    round: SentRound,
) -> Option<Vec<Message>> {
    for (outgoing, sent) in round.parts {
        let mut result = match sent {
            Ok(sent) => sent.acknowledged().await.map(|_| ()),
            Err(err) => Err(err),
        };
        let mut attempt = 1;
        while let Err(err) = result {
            tracing::warn!(service = options.service, error = %err, attempt, "cannot publish; retrying");
            tokio::select! {
                () = shutdown.requested() => return None,
                () = tokio::time::sleep(backoff(attempt)) => {}
            }
            result = bus.publish_all(outgoing.clone()).await.map(|_| ());
            attempt += 1;
        }
    }
    Some(round.messages)
}

/// Acknowledges the oldest round in flight once it completes. False when it could not
/// complete (shutdown): nothing after it may be acknowledged either.
async fn acknowledge_oldest(
    options: &WorkerOptions,
    in_flight: &mut std::collections::VecDeque<tokio::task::JoinHandle<Option<Vec<Message>>>>,
) -> bool {
    match in_flight.pop_front() {
        Some(round) => acknowledge(options, round.await).await,
        None => true,
    }
}

/// Acknowledges a completed round's messages. False when the round could not complete.
async fn acknowledge(
    options: &WorkerOptions,
    finished: Result<Option<Vec<Message>>, tokio::task::JoinError>,
) -> bool {
    match finished {
        Ok(Some(messages)) => {
            for message in messages {
                if let Err(err) = message.ack().await {
                    tracing::warn!(service = options.service, error = %err, "cannot ack; it will be redelivered");
                }
            }
            true
        }
        Ok(None) => false,
        Err(err) => {
            tracing::error!(service = options.service, error = %err, "a round's task failed");
            false
        }
    }
}

/// The pause before attempt `attempt` (1-based) at something that failed.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((50u64 << attempt.min(7)).min(5_000))
}

/// Handles one partition's messages in order. `None` when shutdown interrupted it
/// (nothing of the round may be acknowledged then).
async fn handle_in_order<H: Handler>(
    handler: H,
    options: WorkerOptions,
    shutdown: Shutdown,
    messages: Vec<Message>,
) -> Option<PartitionDone> {
    let mut outgoing = Vec::new();
    let mut handled = Vec::with_capacity(messages.len());
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
        let mut attempt = 1;
        loop {
            match handler.handle(&view).await {
                Handled::Publish(messages) => {
                    outgoing.extend(messages);
                    break;
                }
                Handled::DeadLetter { reason } => {
                    outgoing.push(dead_letter(&options, &view, &reason));
                    break;
                }
                Handled::Retry { reason, .. } if attempt >= options.max_attempts => {
                    let reason = format!("gave up after {attempt} attempts: {reason}");
                    outgoing.push(dead_letter(&options, &view, &reason));
                    break;
                }
                Handled::Retry { reason, delay } => {
                    tracing::warn!(service = options.service, subject = %view.subject, attempt, %reason, "will retry");
                    // Still working on it: keep it from being delivered elsewhere.
                    let _ = message
                        .ack_with(async_nats::jetstream::AckKind::Progress)
                        .await;
                    tokio::select! {
                        () = shutdown.requested() => return None,
                        () = tokio::time::sleep(delay.max(backoff(attempt))) => {}
                    }
                    attempt += 1;
                }
            }
        }
        handled.push(message);
    }
    Some(PartitionDone {
        outgoing,
        messages: handled,
    })
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
