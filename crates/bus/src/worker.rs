//! The loop every consuming service runs: pull messages from a durable consumer, handle
//! them (one partition's messages in order, or all at once when order does not matter;
//! partitions in parallel), publish what the
//! handler produced, and only then acknowledge.
//!
//! - A message the handler can never process goes to `deadletter.<service>` with the
//!   reason, and is acknowledged.
//! - A message that cannot be handled now is retried in place, with a growing pause and
//!   progress notices to NATS, until it succeeds or its attempts are used up (then it is
//!   dead-lettered).
//! - Publishing that fails for a while is retried; output NATS refuses for good (too
//!   large, malformed) dead-letters the message that produced it.
//! - A handler sees a partition's round as a whole first (`Handler::prepare`), to do
//!   the work of several messages together; each is still handled, and acknowledged, on
//!   its own.
//! - Rounds are pipelined: the next round is handled while JetStream stores the previous
//!   one's output, and each message is acknowledged (explicitly: several replicas may
//!   share a consumer) once everything its round produced is stored.
//! - On shutdown the loop stops at the next message boundary; what was not finished is
//!   not acknowledged and is delivered again (handlers are idempotent, and downstream
//!   streams drop duplicate message ids).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::PullConsumer;
use bytes::Bytes;
use cairn_runtime::Shutdown;
use cairn_runtime::error::{Classify as _, ErrorKind};
use futures::{FutureExt as _, StreamExt as _};

use crate::{Bus, BusError, Outgoing, subjects};

/// A message as a handler sees it.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub subject: String,
    pub headers: async_nats::HeaderMap,
    pub payload: Bytes,
    /// 1 on the first delivery, more on redeliveries.
    pub delivered: i64,
    /// The stream the message is from, and its place there.
    pub stream: String,
    pub stream_sequence: u64,
    /// 1 on the first attempt in this process, more when retried in place.
    pub attempt: u32,
}

impl Delivered {
    /// Whether this message may have been handled before (a redelivery after a crash, or
    /// an attempt after one that failed halfway): a handler re-announces what it finds
    /// already done.
    pub fn is_repeat(&self) -> bool {
        self.delivered > 1 || self.attempt > 1
    }
}

/// What became of one message.
#[derive(Debug)]
pub enum Handled {
    /// Done; publish these (maybe none), then acknowledge.
    Publish(Vec<Outgoing>),
    /// It can never be processed: dead-letter it with the reason, then acknowledge.
    DeadLetter { reason: String },
    /// Not now (a dependency is down): try it again in place after `delay`.
    Retry { reason: String, delay: Duration },
}

/// Handles one message. Cloned into each partition's task.
pub trait Handler: Clone + Send + Sync + 'static {
    fn handle(&self, message: &Delivered) -> impl Future<Output = Handled> + Send;

    /// Called with the messages of a partition's round (two or more) before each is
    /// handled: a handler may do their work together here (one write for several
    /// changes of one thing), as long as handling each afterwards finds it done and
    /// would do it otherwise. Nothing is acknowledged on the strength of this call.
    fn prepare(&self, messages: &[Delivered]) -> impl Future<Output = ()> + Send {
        let _ = messages;
        async {}
    }
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
    pub handling: Handling,
}

/// How a round's messages of one partition are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    /// One after another, in order: what per-profile state needs.
    InOrder,
    /// All at once, each kept from redelivery (progress notices) however long it takes:
    /// for independent messages that wait on something slow, such as an SMTP server.
    AllAtOnce,
}

/// How often a message handled [`Handling::AllAtOnce`] tells NATS it is still being
/// worked on: well within [`ACK_WAIT`].
const PROGRESS_EVERY: Duration = Duration::from_secs(3);

/// Attempts at a message that keeps failing, for services without a reason to differ.
pub const MAX_ATTEMPTS: u32 = 10;

/// How long a consumer waits for an acknowledgement before delivering a message again
/// (to another replica, or to a restarted one after a crash). A message retried in place
/// for longer keeps its claim with progress notices.
pub const ACK_WAIT: Duration = Duration::from_secs(10);

/// Header naming why a message was dead-lettered.
pub const DEAD_LETTER_REASON: &str = "Cairn-Dead-Letter-Reason";
/// Header naming the subject a dead-lettered message came from.
pub const DEAD_LETTER_SUBJECT: &str = "Cairn-Dead-Letter-Subject";

/// Rounds published and awaiting JetStream before they are acknowledged.
const ROUNDS_IN_FLIGHT: usize = 3;

type Message = async_nats::jetstream::Message;

/// Runs until `shutdown`. Fails when the consumer goes away (after acknowledging what
/// was finished).
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
        // Polled again after it ends (when draining a round): fused, it stays ended.
        .fuse();
    let mut in_flight: VecDeque<tokio::task::JoinHandle<Option<Vec<Message>>>> = VecDeque::new();
    let mut ended = None;
    loop {
        let first = tokio::select! {
            biased;
            () = shutdown.requested() => break,
            // Acknowledge finished rounds as soon as they finish, even when no new
            // messages come.
            finished = async {
                match in_flight.front_mut() {
                    Some(round) => round.await,
                    None => std::future::pending().await,
                }
            }, if !in_flight.is_empty() => {
                in_flight.pop_front();
                if !acknowledge(&options, finished).await {
                    break;
                }
                continue;
            }
            first = messages.next() => first,
        };
        let Some(first) = first else {
            ended = Some(BusError::Unavailable(format!(
                "{}: the consumer stream ended",
                options.service
            )));
            break;
        };
        // The round: the first message and whatever else has arrived, up to a batch.
        // (Grown as needed: reserving a whole batch per round costs more than it saves.)
        let mut chunk = vec![first];
        while chunk.len() < options.batch {
            match messages.next().now_or_never() {
                Some(Some(message)) => chunk.push(message),
                _ => break,
            }
        }
        let mut by_partition: BTreeMap<String, Vec<Message>> = BTreeMap::new();
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
        let tasks: Vec<_> = by_partition
            .into_values()
            .map(|messages| {
                let (handler, options, shutdown) =
                    (handler.clone(), options.clone(), shutdown.clone());
                tokio::spawn(handle_partition(handler, options, shutdown, messages))
            })
            .collect();
        // Every partition's task finishes (or stops at a message boundary) before the
        // loop goes on, so nothing keeps handling after `run` returns.
        let mut handled = Vec::with_capacity(tasks.len());
        let mut complete = true;
        for task in tasks {
            match task.await {
                Ok(Some(partition)) => handled.push(partition),
                Ok(None) => complete = false,
                Err(err) => {
                    complete = false;
                    tracing::error!(service = options.service, error = %err, "a partition's task failed");
                }
            }
        }
        if !complete {
            break; // shutdown, or a panic: none of this round is acknowledged
        }
        let sent = send_round(&bus, &options, handled).await;
        in_flight.push_back(tokio::spawn(complete_round(
            bus.clone(),
            options.clone(),
            shutdown.clone(),
            sent,
        )));
        while in_flight.len() > ROUNDS_IN_FLIGHT {
            let oldest = in_flight.pop_front();
            if let Some(oldest) = oldest
                && !acknowledge(&options, oldest.await).await
            {
                break;
            }
        }
    }
    while let Some(round) = in_flight.pop_front() {
        if !acknowledge(&options, round.await).await {
            break;
        }
    }
    tracing::info!(service = options.service, "stopped consuming");
    ended.map_or(Ok(()), Err)
}

/// One handled message and what it produced.
struct Done {
    message: Message,
    view: Delivered,
    outgoing: Vec<Outgoing>,
}

/// A round whose output was sent, per partition.
struct SentRound {
    parts: Vec<(Vec<Done>, Result<crate::Sent, BusError>)>,
}

async fn send_round(bus: &Bus, options: &WorkerOptions, handled: Vec<Vec<Done>>) -> SentRound {
    let mut parts = Vec::with_capacity(handled.len());
    for done in handled {
        let outgoing: Vec<Outgoing> = done
            .iter()
            .flat_map(|item| item.outgoing.iter().cloned())
            .collect();
        let sent = bus.send_all(outgoing).await;
        if let Err(err) = &sent {
            tracing::warn!(service = options.service, error = %err, "cannot publish; retrying");
        }
        parts.push((done, sent));
    }
    SentRound { parts }
}

/// Whether a publish failure can pass (NATS away, a stream full or being created).
fn transient(err: &BusError) -> bool {
    matches!(
        err.kind(),
        ErrorKind::Unavailable | ErrorKind::ResourceExhausted
    )
}

/// Waits until everything the round produced is stored and returns its messages to
/// acknowledge; `None` if shutdown came first. A part NATS refuses for good is published
/// message by message, and a message whose output cannot be stored is dead-lettered.
async fn complete_round(
    bus: Bus,
    options: WorkerOptions,
    shutdown: Shutdown,
    round: SentRound,
) -> Option<Vec<Message>> {
    let mut messages = Vec::new();
    for (done, sent) in round.parts {
        let mut result = match sent {
            Ok(sent) => sent.acknowledged().await.map(|_| ()),
            Err(err) => Err(err),
        };
        let mut attempt = 1;
        loop {
            match result {
                Ok(()) => break,
                Err(err) if transient(&err) => {
                    let subjects: std::collections::BTreeSet<&str> = done
                        .iter()
                        .flat_map(|item| item.outgoing.iter())
                        .map(|outgoing| outgoing.subject.as_str())
                        .collect();
                    tracing::warn!(service = options.service, error = %err, attempt, ?subjects, "cannot publish; retrying");
                    tokio::select! {
                        () = shutdown.requested() => return None,
                        () = tokio::time::sleep(backoff(attempt)) => {}
                    }
                    attempt += 1;
                    let outgoing: Vec<Outgoing> = done
                        .iter()
                        .flat_map(|item| item.outgoing.iter().cloned())
                        .collect();
                    result = bus.publish_all(outgoing).await.map(|_| ());
                }
                Err(err) => {
                    tracing::warn!(service = options.service, error = %err, "NATS refused the output; publishing message by message");
                    for item in &done {
                        publish_or_dead_letter(&bus, &options, &shutdown, item).await?;
                    }
                    break;
                }
            }
        }
        messages.extend(done.into_iter().map(|item| item.message));
    }
    Some(messages)
}

/// Publishes one message's output; when NATS refuses it for good, its dead letter instead.
async fn publish_or_dead_letter(
    bus: &Bus,
    options: &WorkerOptions,
    shutdown: &Shutdown,
    item: &Done,
) -> Option<()> {
    let mut outgoing = item.outgoing.clone();
    let mut outgoing_is_dead_letter = false;
    let mut attempt = 1;
    loop {
        match bus.publish_all(outgoing.clone()).await {
            Ok(_) => return Some(()),
            Err(err) if transient(&err) => {
                tokio::select! {
                    () = shutdown.requested() => return None,
                    () = tokio::time::sleep(backoff(attempt)) => {}
                }
                attempt += 1;
            }
            Err(err) if outgoing_is_dead_letter => {
                // The message itself was stored by NATS, so this should not happen; there
                // is nothing left to try.
                tracing::error!(service = options.service, subject = %item.view.subject, error = %err, "cannot dead-letter; dropping");
                return Some(());
            }
            Err(err) => {
                let reason = format!("its output cannot be stored: {err}");
                outgoing = vec![dead_letter(options, &item.view, &reason)];
                outgoing_is_dead_letter = true;
            }
        }
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

/// Handles one partition's messages in order. `None` when shutdown came first (it stops
/// at a message boundary; nothing of the round may be acknowledged then).
async fn handle_partition<H: Handler>(
    handler: H,
    options: WorkerOptions,
    shutdown: Shutdown,
    messages: Vec<Message>,
) -> Option<Vec<Done>> {
    let views: Vec<Delivered> = messages.iter().map(view_of).collect();
    if views.len() > 1 {
        handler.prepare(&views).await;
    }
    let messages = messages.into_iter().zip(views);
    if options.handling == Handling::InOrder {
        let mut done = Vec::with_capacity(messages.len());
        for (message, view) in messages {
            done.push(handle_one(&handler, &options, &shutdown, message, view).await?);
        }
        Some(done)
    } else {
        futures::future::join_all(
            messages
                .into_iter()
                .map(|(message, view)| handle_one(&handler, &options, &shutdown, message, view)),
        )
        .await
        .into_iter()
        .collect()
    }
}

/// A message as a handler sees it, on its first attempt here.
fn view_of(message: &Message) -> Delivered {
    let (delivered, stream, stream_sequence) = match message.info() {
        Ok(info) => (
            info.delivered,
            info.stream.to_string(),
            info.stream_sequence,
        ),
        Err(_) => (1, String::new(), 0),
    };
    Delivered {
        subject: message.subject.to_string(),
        headers: message.headers.clone().unwrap_or_default(),
        payload: message.payload.clone(),
        delivered,
        stream,
        stream_sequence,
        attempt: 1,
    }
}

/// The message handled (retried in place as the handler asks), or `None` if shutdown
/// came first.
async fn handle_one<H: Handler>(
    handler: &H,
    options: &WorkerOptions,
    shutdown: &Shutdown,
    message: Message,
    mut view: Delivered,
) -> Option<Done> {
    if shutdown.is_requested() {
        return None;
    }
    let outgoing = loop {
        let handled = match options.handling {
            Handling::InOrder => handler.handle(&view).await,
            Handling::AllAtOnce => {
                let handling = handler.handle(&view);
                tokio::pin!(handling);
                loop {
                    tokio::select! {
                        handled = &mut handling => break handled,
                        () = tokio::time::sleep(PROGRESS_EVERY) => {
                            let _ = message.ack_with(AckKind::Progress).await;
                        }
                    }
                }
            }
        };
        match handled {
            Handled::Publish(outgoing) => break outgoing,
            Handled::DeadLetter { reason } => {
                break vec![dead_letter(options, &view, &reason)];
            }
            Handled::Retry { reason, .. } if view.attempt >= options.max_attempts => {
                let reason = format!("gave up after {} attempts: {reason}", view.attempt);
                break vec![dead_letter(options, &view, &reason)];
            }
            Handled::Retry { reason, delay } => {
                tracing::warn!(service = options.service, subject = %view.subject, attempt = view.attempt, %reason, "will retry");
                // Still working on it: keep it from being delivered elsewhere.
                let _ = message.ack_with(AckKind::Progress).await;
                tokio::select! {
                    () = shutdown.requested() => return None,
                    () = tokio::time::sleep(delay.max(backoff(view.attempt))) => {}
                }
                view.attempt += 1;
            }
        }
    };
    Some(Done {
        message,
        view,
        outgoing,
    })
}

fn dead_letter(options: &WorkerOptions, message: &Delivered, reason: &str) -> Outgoing {
    tracing::warn!(service = options.service, subject = %message.subject, %reason, "dead letter");
    // The message's own headers, but not NATS's: those of a copy a schedule fired
    // (`Nats-Scheduler`, `Nats-Schedule-Next`) would make JetStream refuse the letter.
    let mut headers = async_nats::HeaderMap::new();
    for (name, values) in message.headers.iter() {
        if !name.to_string().to_ascii_lowercase().starts_with("nats-") {
            for value in values {
                headers.append(name.clone(), value.clone());
            }
        }
    }
    headers.insert(
        DEAD_LETTER_REASON,
        reason.replace(['\r', '\n'], " ").as_str(),
    );
    headers.insert(DEAD_LETTER_SUBJECT, message.subject.as_str());
    Outgoing {
        subject: subjects::dead_letter(options.service),
        // One dead letter per stored message, whichever consumer of whichever stream.
        message_id: Some(format!(
            "{}/{}/{}/{}",
            options.service, message.stream, message.stream_sequence, message.attempt
        )),
        headers,
        payload: message.payload.clone(),
    }
}
