//! Cairn's messaging layer over NATS JetStream.
//!
//! - [`Bus`]: one connection and JetStream context per module, with acknowledged
//!   publishing and a bound on publishes awaiting acknowledgement;
//! - [`streams`]: the streams, declared in code and created or updated idempotently at
//!   start-up ([`Bus::ensure_stream`]); consumers likewise ([`Bus::ensure_consumer`]);
//! - [`subjects`]: subject names and the partition token where order matters;
//! - [`trace`]: W3C trace context in message headers;
//! - [`worker`]: the consume → handle → publish → acknowledge loop of every consumer;
//! - [`personalization`]: the key-value bucket the personalization API reads;
//! - [`suppressions`]: the key-value bucket of addresses emails must not go to;
//! - [`ownership`]: which replica works which partition of a stateful service;
//! - [`server`]: a local nats-server child process for `cairn up` and tests.

#![forbid(unsafe_code)]

pub mod config;
pub mod links;
pub mod ownership;
pub mod personalization;
pub mod server;
pub mod streams;
pub mod subjects;
pub mod suppressions;
pub mod trace;
pub mod worker;

use std::error::Error as _;

use async_nats::jetstream::{self, consumer, context::PublishErrorKind, stream};
use bytes::Bytes;
use cairn_runtime::error::{Classify, ErrorKind};

pub use async_nats;
pub use config::BusConfig;
pub use subjects::Partitions;

/// What can go wrong on the bus. Classified so callers map it to 503 / 429.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to NATS at {url} (CAIRN_NATS_URL): {reason}")]
    Connect { url: String, reason: String },
    #[error("NATS unavailable: {0}")]
    Unavailable(String),
    #[error("the stream storing {subject} is full: {reason}")]
    StreamFull { subject: String, reason: String },
    #[error("no stream stores subject {subject}")]
    NoStream { subject: String },
    #[error("message too large for NATS: {0}")]
    TooLarge(String),
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    #[error("stream {name}: {reason}")]
    Stream { name: String, reason: String },
    #[error("consumer {name} on {stream}: {reason}")]
    Consumer {
        stream: String,
        name: String,
        reason: String,
    },
    #[error("publish failed: {0}")]
    Publish(String),
    #[error("nats-server: {0}")]
    Server(String),
}

impl Classify for BusError {
    fn kind(&self) -> ErrorKind {
        match self {
            BusError::Connect { .. } | BusError::Unavailable(_) | BusError::NoStream { .. } => {
                ErrorKind::Unavailable
            }
            BusError::StreamFull { .. } => ErrorKind::ResourceExhausted,
            BusError::TooLarge(_) | BusError::InvalidMessage(_) => ErrorKind::InvalidArgument,
            _ => ErrorKind::Internal,
        }
    }
}

/// A message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub subject: String,
    /// Deduplication id (`Nats-Msg-Id`): the stream stores a second message with the same
    /// id within its duplicate window only once.
    pub message_id: Option<String>,
    pub headers: async_nats::HeaderMap,
    pub payload: Bytes,
}

/// The header that makes a message a schedule.
const SCHEDULE_HEADER: &str = "Nats-Schedule";

impl Outgoing {
    /// Whether this is a message schedule ([`Outgoing::schedule`]): produced later.
    pub fn is_schedule(&self) -> bool {
        self.headers.get(SCHEDULE_HEADER).is_some()
    }

    /// A message schedule (a durable timer) on `subject`, replacing any schedule there:
    /// at `at_ms`, rounded up to the second, the server produces `payload` on `target`, a
    /// subject of the same stream (which must allow schedules). `None` for an instant out
    /// of range.
    pub fn schedule(subject: String, target: &str, at_ms: i64, payload: Bytes) -> Option<Self> {
        let seconds = at_ms.div_euclid(1000) + i64::from(at_ms.rem_euclid(1000) > 0);
        let at = chrono::DateTime::from_timestamp(seconds, 0)?
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(SCHEDULE_HEADER, format!("@at {at}").as_str());
        headers.insert("Nats-Schedule-Target", target);
        Some(Self {
            subject,
            message_id: None,
            headers,
            payload,
        })
    }
}

/// One connection to NATS and its JetStream context.
#[derive(Clone, Debug)]
pub struct Bus {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    config: BusConfig,
}

impl Bus {
    /// Connects to `config.url`; fails with a clear error when no server answers. Once
    /// connected, the client reconnects on its own for ever.
    pub async fn connect(config: &BusConfig, name: &str) -> Result<Self, BusError> {
        let connect_error = |reason: String| BusError::Connect {
            url: config::redact_url(&config.url),
            reason,
        };
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .max_reconnects(None)
            .connection_timeout(std::time::Duration::from_secs(5))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS"),
                    async_nats::Event::Connected => tracing::info!("connected to NATS"),
                    other => tracing::debug!(event = %other, "NATS event"),
                }
            });
        if let Some(path) = &config.creds_file {
            options = options
                .credentials_file(path)
                .await
                .map_err(|err| connect_error(format!("credentials file {path}: {err}")))?;
        }
        let servers: Vec<&str> = config
            .url
            .split(',')
            .map(str::trim)
            .filter(|server| !server.is_empty())
            .collect();
        let client = options
            .connect(servers)
            .await
            .map_err(|err| connect_error(err.to_string()))?;
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(config.publish_timeout)
            .max_ack_inflight(config.max_in_flight)
            .backpressure_on_inflight(true)
            .build(client.clone());
        Ok(Self {
            client,
            jetstream,
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &BusConfig {
        &self.config
    }

    pub fn partitions(&self) -> Partitions {
        Partitions::new(self.config.partitions)
    }

    /// The core NATS client (plain subscriptions, for watching subjects).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// True while the connection to NATS is up.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// A readiness check for a service on this bus: failing while NATS is unreachable.
    pub fn readiness_check(&self) -> impl Fn() -> Result<(), String> + Send + Sync + 'static {
        let bus = self.clone();
        move || {
            if bus.is_connected() {
                Ok(())
            } else {
                Err("not connected".to_string())
            }
        }
    }

    /// Creates the stream, or updates it to `config` when it exists. Idempotent; waits
    /// (see [`declare`]) while JetStream cannot answer yet.
    pub async fn ensure_stream(&self, config: stream::Config) -> Result<stream::Info, BusError> {
        let name = config.name.clone();
        declare(&format!("stream {name}"), stream_not_ready, || {
            self.jetstream.create_or_update_stream(config.clone())
        })
        .await
        .map_err(|err| BusError::Stream {
            name,
            reason: error_chain(&err),
        })
    }

    /// The key-value bucket `name` (one value per key, in files, replicated like the
    /// streams; entries expire after `max_age`, never when zero), created or updated to
    /// that. Waits (see [`declare`]) while JetStream cannot answer yet.
    pub async fn key_value(
        &self,
        name: &str,
        description: &str,
        max_age: std::time::Duration,
    ) -> Result<jetstream::kv::Store, BusError> {
        let config = jetstream::kv::Config {
            bucket: name.to_string(),
            description: description.to_string(),
            history: 1,
            max_age,
            storage: stream::StorageType::File,
            num_replicas: self.config.replicas,
            ..Default::default()
        };
        declare(&format!("bucket {name}"), bucket_not_ready, || {
            self.jetstream.create_or_update_key_value(config.clone())
        })
        .await
        .map_err(|err| BusError::Unavailable(format!("bucket {name}: {}", error_chain(&err))))
    }

    /// Creates the durable pull consumer, or updates it to `config` when it exists. Waits
    /// (see [`declare`]) while JetStream cannot answer yet.
    pub async fn ensure_consumer(
        &self,
        stream: &str,
        config: consumer::pull::Config,
    ) -> Result<consumer::PullConsumer, BusError> {
        let name = config
            .durable_name
            .clone()
            .or_else(|| config.name.clone())
            .unwrap_or_default();
        declare(
            &format!("consumer {name} on {stream}"),
            consumer_not_ready,
            || {
                self.jetstream
                    .create_consumer_on_stream(config.clone(), stream)
            },
        )
        .await
        .map_err(|err| BusError::Consumer {
            stream: stream.to_string(),
            name,
            reason: error_chain(&err),
        })
    }

    /// A durable consumer's state, if the stream and the consumer exist.
    pub async fn consumer_info(
        &self,
        stream: &str,
        name: &str,
    ) -> Result<Option<consumer::Info>, BusError> {
        let fail = |err: &dyn std::error::Error| BusError::Consumer {
            stream: stream.to_string(),
            name: name.to_string(),
            reason: error_chain(err),
        };
        let found = match self.jetstream.get_stream(stream).await {
            Ok(found) => found,
            Err(err) if stream_missing(&err) => return Ok(None),
            Err(err) => return Err(fail(&err)),
        };
        match found.consumer_info(name).await {
            Ok(info) => Ok(Some(info)),
            Err(err) => match err.kind() {
                jetstream::context::ConsumerInfoErrorKind::NotFound
                | jetstream::context::ConsumerInfoErrorKind::StreamNotFound => Ok(None),
                _ => Err(fail(&err)),
            },
        }
    }

    /// Deletes a stream with its messages and consumers; false when there was none.
    pub async fn delete_stream(&self, name: &str) -> Result<bool, BusError> {
        match self.jetstream.delete_stream(name).await {
            Ok(_) => Ok(true),
            Err(err) => match err.kind() {
                jetstream::context::DeleteStreamErrorKind::JetStream(api)
                    if api.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    Ok(false)
                }
                _ => Err(BusError::Stream {
                    name: name.to_string(),
                    reason: error_chain(&err),
                }),
            },
        }
    }

    /// Deletes a durable consumer; false when there was none.
    pub async fn delete_consumer(&self, stream: &str, name: &str) -> Result<bool, BusError> {
        match self
            .jetstream
            .delete_consumer_from_stream(name, stream)
            .await
        {
            Ok(_) => Ok(true),
            Err(err) => match err.kind() {
                stream::ConsumerErrorKind::JetStream(api)
                    if [
                        jetstream::ErrorCode::CONSUMER_NOT_FOUND,
                        jetstream::ErrorCode::STREAM_NOT_FOUND,
                    ]
                    .contains(&api.error_code()) =>
                {
                    Ok(false)
                }
                _ => Err(BusError::Consumer {
                    stream: stream.to_string(),
                    name: name.to_string(),
                    reason: error_chain(&err),
                }),
            },
        }
    }

    /// Publishes every message, then waits for every acknowledgement. Succeeds only when
    /// JetStream acknowledged all of them (duplicates count: they are stored already).
    /// While NATS is unreachable it fails at once, so the caller can answer 503 without
    /// waiting for a timeout.
    pub async fn publish_all(
        &self,
        messages: Vec<Outgoing>,
    ) -> Result<Vec<jetstream::publish::PublishAck>, BusError> {
        self.send_all(messages).await?.acknowledged().await
    }

    /// Sends every message, in order, without waiting for JetStream's answers: the
    /// caller awaits [`Sent::acknowledged`] when it needs them (so it can do other work
    /// meanwhile). Messages sent earlier on this connection are stored earlier.
    pub async fn send_all(&self, messages: Vec<Outgoing>) -> Result<Sent, BusError> {
        if !self.is_connected() {
            return Err(BusError::Unavailable("not connected".to_string()));
        }
        let deadline = tokio::time::Instant::now() + self.config.publish_timeout;
        let mut pending = Vec::with_capacity(messages.len());
        for message in messages {
            let subject = message.subject;
            let mut publish = jetstream::message::PublishMessage::build()
                .payload(message.payload)
                .headers(message.headers);
            if let Some(id) = message.message_id {
                if id.contains(['\r', '\n']) {
                    return Err(BusError::InvalidMessage(format!(
                        "message id {id:?} contains a line break"
                    )));
                }
                publish = publish.message_id(id);
            }
            let ack = self
                .jetstream
                .send_publish(subject.clone(), publish)
                .await
                .map_err(|err| classify_publish(&subject, &err))?;
            pending.push((subject, ack));
        }
        Ok(Sent { pending, deadline })
    }
}

/// Messages sent and awaiting JetStream's acknowledgements.
#[derive(Debug)]
pub struct Sent {
    pending: Vec<(String, jetstream::context::PublishAckFuture)>,
    /// When the answers are due: the publish timeout counts from sending, not from the
    /// first wait. An answer lost with a dropped connection never comes, and a caller
    /// that awaits several `Sent` one after another must not wait a full timeout for each.
    deadline: tokio::time::Instant,
}

impl Sent {
    /// Waits for every acknowledgement; fails when any message was not stored, or when
    /// the answers are not all in by the publish timeout after sending.
    pub async fn acknowledged(self) -> Result<Vec<jetstream::publish::PublishAck>, BusError> {
        let answers =
            futures::future::join_all(self.pending.into_iter().map(|(subject, ack)| async move {
                ack.await.map_err(|err| classify_publish(&subject, &err))
            }));
        match tokio::time::timeout_at(self.deadline, answers).await {
            Ok(results) => results.into_iter().collect(),
            Err(_) => Err(BusError::Unavailable(
                "no acknowledgement within the publish timeout".to_string(),
            )),
        }
    }
}

/// How long a declaration waits for JetStream to answer before start-up fails.
const DECLARE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs a declaration (a stream, consumer or bucket) again while JetStream cannot answer
/// it yet, for up to [`DECLARE_PATIENCE`]. On a cluster the metadata leader takes seconds
/// to be elected after the nodes start or its node dies, and when several processes
/// declare the same replicated stream at once, the requests that lose the race may get
/// no answer at all; the declaration is idempotent, so asking again is safe.
async fn declare<T, E: std::error::Error, F: Future<Output = Result<T, E>>>(
    what: &str,
    not_ready: fn(&E) -> bool,
    mut attempt: impl FnMut() -> F,
) -> Result<T, E> {
    let deadline = tokio::time::Instant::now() + DECLARE_PATIENCE;
    let mut pause = std::time::Duration::from_millis(100);
    loop {
        match attempt().await {
            Err(err) if not_ready(&err) && tokio::time::Instant::now() + pause < deadline => {
                tracing::warn!(what, error = %error_chain(&err), "JetStream cannot answer yet; asking again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(2));
            }
            done => return done,
        }
    }
}

/// A JetStream API error that passes: the metadata leader is being elected.
fn leaderless(api: &jetstream::Error) -> bool {
    api.error_code() == jetstream::ErrorCode::CLUSTER_NOT_AVAILABLE
}

fn stream_not_ready(err: &jetstream::context::CreateStreamError) -> bool {
    use jetstream::context::CreateStreamErrorKind as Kind;
    match err.kind() {
        Kind::TimedOut | Kind::JetStreamUnavailable => true,
        Kind::JetStream(api) => leaderless(&api),
        _ => false,
    }
}

fn consumer_not_ready(err: &stream::ConsumerError) -> bool {
    match err.kind() {
        stream::ConsumerErrorKind::TimedOut => true,
        stream::ConsumerErrorKind::JetStream(api) => leaderless(&api),
        _ => false,
    }
}

fn bucket_not_ready(err: &jetstream::context::CreateKeyValueError) -> bool {
    use jetstream::context::{AccountErrorKind, CreateKeyValueErrorKind};
    if err.kind() == CreateKeyValueErrorKind::TimedOut {
        return true;
    }
    // The bucket is a stream: its errors are the stream's, or the account lookup's.
    let Some(source) = err.source() else {
        return false;
    };
    if let Some(stream) = source.downcast_ref::<jetstream::context::CreateStreamError>() {
        return stream_not_ready(stream);
    }
    source
        .downcast_ref::<jetstream::context::AccountError>()
        .is_some_and(|account| {
            matches!(
                account.kind(),
                AccountErrorKind::TimedOut | AccountErrorKind::JetStreamUnavailable
            )
        })
}

fn classify_publish(subject: &str, err: &jetstream::context::PublishError) -> BusError {
    let detail = error_chain(err);
    match err.kind() {
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => BusError::Unavailable(detail),
        PublishErrorKind::StreamNotFound => BusError::NoStream {
            subject: subject.to_string(),
        },
        PublishErrorKind::MaxPayloadExceeded => BusError::TooLarge(detail),
        _ => {
            if let Some(api) = err
                .source()
                .and_then(|source| source.downcast_ref::<jetstream::Error>())
                && is_stream_full(api)
            {
                return BusError::StreamFull {
                    subject: subject.to_string(),
                    reason: api.to_string(),
                };
            }
            BusError::Publish(detail)
        }
    }
}

/// JetStream's answers when a stream or the account has reached a limit.
fn is_stream_full(error: &jetstream::Error) -> bool {
    const STORE_FAILED: u64 = 10077;
    const INSUFFICIENT_RESOURCES: u64 = 10023;
    const MEMORY_RESOURCES_EXCEEDED: u64 = 10028;
    const STORAGE_RESOURCES_EXCEEDED: u64 = 10047;
    let code = error.error_code().0;
    let text = error.to_string();
    matches!(
        code,
        INSUFFICIENT_RESOURCES | MEMORY_RESOURCES_EXCEEDED | STORAGE_RESOURCES_EXCEEDED
    ) || (code == STORE_FAILED && text.contains("exceeded"))
        || text.contains("maximum messages exceeded")
        || text.contains("maximum bytes exceeded")
}

/// Whether getting a stream failed because there is no such stream.
pub(crate) fn stream_missing(err: &jetstream::context::GetStreamError) -> bool {
    matches!(err.kind(), jetstream::context::GetStreamErrorKind::JetStream(api)
        if api.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// An error and its sources, joined: async-nats keeps the useful part in the source.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
