//! Activation: segments synced to their webhooks.
//!
//! A durable consumer (`segmenter_webhooks`, shared by the replicas) reads the changes
//! of segments that had a webhook when they were decided (`segments.changed.*.synced`;
//! the changes of other segments cost it nothing) in rounds (up to 500 changes,
//! gathered for at most a second); each round's changes of a segment that still has a
//! webhook go to it as one batch:
//!
//! ```json
//! {"batch": "<id>", "segment": "buyers",
//!  "changes": [{"profile_id": "p…", "entered": true, "at": "2026-…Z", "profile_version": 7}]}
//! ```
//!
//! `POST`ed as JSON with `X-Cairn-Timestamp` (Unix seconds) and `X-Cairn-Signature:
//! sha256=<hex>`, the HMAC-SHA256 under the segment's secret of `<timestamp>.<body>`;
//! `Idempotency-Key` is the batch id, a hash of its changes: the same on every retry,
//! and whenever the same changes come again (each change is also told apart by its
//! profile_id, profile_version and entered). A 2xx answer delivers the
//! batch; a timeout, a connection failure, 408, 429 or 5xx is retried with a doubling
//! backoff (the round's messages kept from redelivery meanwhile); any other answer, or
//! the last failed attempt, sends the batch to `deadletter.segmenter_webhooks` with the
//! reason. The round is acknowledged once every batch is delivered or dead-lettered, so
//! a crash means changes are sent again, never lost (a store or NATS failure mid-round
//! leaves the round to come again, and the segmenter goes on).

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use cairn_bus::worker::{DEAD_LETTER_REASON, DEAD_LETTER_SUBJECT};
use cairn_bus::{Bus, Outgoing, subjects};
use cairn_proto::segment::v1::SegmentChanged;
use cairn_runtime::config::{ConfigError, Settings, Var};
use cairn_runtime::encoding::hex;
use cairn_runtime::{Shutdown, clock};
use cairn_store::Store;
use futures::StreamExt as _;
use hmac::{Hmac, Mac as _};
use prost::Message as _;
use sha2::{Digest as _, Sha256};

use crate::definitions::{self, Webhook};
use crate::error::SegmentError;

pub const WEBHOOK_ATTEMPTS: Var = Var {
    name: "CAIRN_WEBHOOK_ATTEMPTS",
    default: "8",
    doc: "Attempts at a webhook call (a segment's batch, a campaign's action) before it goes to the dead letters.",
};
pub const WEBHOOK_BACKOFF: Var = Var {
    name: "CAIRN_WEBHOOK_BACKOFF",
    default: "1s",
    doc: "Wait before the second attempt at a webhook; it doubles with each attempt, up to a minute.",
};
pub const WEBHOOK_TIMEOUT: Var = Var {
    name: "CAIRN_WEBHOOK_TIMEOUT",
    default: "10s",
    doc: "How long one webhook request may take.",
};

pub const CAMPAIGN_WEBHOOK_SECRET: Var = Var {
    name: "CAIRN_CAMPAIGN_WEBHOOK_SECRET",
    default: "",
    doc: "Signs campaign webhook calls (X-Cairn-Signature, HMAC-SHA256); at least 16 characters. While it is empty, campaigns with a webhook action are refused.",
};

pub const VARS: &[Var] = &[
    WEBHOOK_ATTEMPTS,
    WEBHOOK_BACKOFF,
    WEBHOOK_TIMEOUT,
    CAMPAIGN_WEBHOOK_SECRET,
];

/// The service name of webhook dead letters.
pub const SERVICE: &str = "segmenter_webhooks";
/// Changes read per round.
const ROUND: usize = 500;
const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub attempts: u32,
    pub backoff: Duration,
    pub timeout: Duration,
    /// What campaign webhook calls are signed with; `None` when not configured.
    pub campaign_secret: Option<String>,
}

impl WebhookConfig {
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let attempts = settings.number(&WEBHOOK_ATTEMPTS, 1)?;
        Ok(Self {
            attempts: u32::try_from(attempts)
                .map_err(|_| settings.invalid(&WEBHOOK_ATTEMPTS, "too large"))?,
            backoff: settings.duration(&WEBHOOK_BACKOFF)?,
            timeout: settings.duration(&WEBHOOK_TIMEOUT)?,
            campaign_secret: match settings.optional(&CAMPAIGN_WEBHOOK_SECRET) {
                Some(secret) if secret.len() < MIN_SECRET => {
                    return Err(settings.invalid_secret(
                        &CAMPAIGN_WEBHOOK_SECRET,
                        format!("must be at least {MIN_SECRET} characters"),
                    ));
                }
                secret => secret,
            },
        })
    }

    /// The wait after failed attempt `attempt` (1 for the first): the backoff, doubled
    /// with each attempt, up to a minute.
    pub fn wait_after(&self, attempt: u32) -> Duration {
        self.backoff
            .saturating_mul(1 << attempt.saturating_sub(1).min(16))
            .min(MAX_BACKOFF)
    }
}

/// Signing secrets shorter than this are refused.
pub const MIN_SECRET: usize = 16;

/// Posts signed JSON to webhooks: segment batches and campaign actions alike.
#[derive(Clone)]
pub struct Poster {
    http: reqwest::Client,
}

impl Poster {
    pub fn new(timeout: Duration) -> Result<Self, SegmentError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("cairn-segmenter/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| SegmentError::InvalidArgument(format!("webhook client: {err}")))?;
        Ok(Self { http })
    }

    /// One attempt at posting `body` to `url`, signed under `secret`, with
    /// `idempotency_key` (the same on every retry).
    pub(crate) async fn post(
        &self,
        url: &str,
        secret: &str,
        idempotency_key: &str,
        body: &[u8],
    ) -> Attempt {
        let timestamp = clock::now_ms() / 1000;
        let sent = self
            .http
            .post(url)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", idempotency_key)
            .header("X-Cairn-Timestamp", timestamp.to_string())
            .header("X-Cairn-Signature", signature(secret, timestamp, body))
            .body(body.to_vec())
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => Attempt::Delivered,
            Ok(response) => {
                let status = response.status();
                let reason = format!("{url} answered {status}");
                if status.is_server_error()
                    || status == reqwest::StatusCode::REQUEST_TIMEOUT
                    || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                {
                    Attempt::Failed(reason)
                } else {
                    Attempt::Refused(reason)
                }
            }
            Err(err) => Attempt::Failed(format!("{url}: {}", error_chain(&err))),
        }
    }
}

/// How often a round being retried tells NATS it is still being worked on.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// The durable consumer of the changes to sync: a round is kept from redelivery for
/// `ack_wait`, renewed at least every [`PROGRESS_EVERY`] and before each attempt, which
/// may take `config.timeout`.
pub fn consumer_config(config: &WebhookConfig) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(SERVICE.to_string()),
        description: Some("Segmenter: entered/exited batches to webhooks".to_string()),
        filter_subject: subjects::SEGMENTS_SYNCED_ALL.to_string(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: (config.timeout + PROGRESS_EVERY) * 3,
        max_ack_pending: (ROUND * 4) as i64,
        ..Default::default()
    }
}

/// The signature of `body` sent at `timestamp` (Unix seconds) under `secret`:
/// `sha256=` and the hex HMAC-SHA256 of `<timestamp>.<body>`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

/// One change in a batch.
struct Change {
    changed: SegmentChanged,
}

/// How an attempt went.
pub(crate) enum Attempt {
    Delivered,
    /// Worth trying again.
    Failed(String),
    /// Not worth trying again.
    Refused(String),
}

/// Delivers batches until `shutdown`.
pub struct Webhooks<S> {
    pub bus: Bus,
    pub store: S,
    pub config: WebhookConfig,
    /// The saved segments, shared with the live path.
    pub definitions: definitions::Cache,
    poster: Poster,
}

impl<S: Store> Webhooks<S> {
    pub fn new(
        bus: Bus,
        store: S,
        config: WebhookConfig,
        definitions: definitions::Cache,
    ) -> Result<Self, SegmentError> {
        Ok(Self {
            bus,
            store,
            poster: Poster::new(config.timeout)?,
            config,
            definitions,
        })
    }

    pub async fn run(
        self,
        consumer: consumer::PullConsumer,
        shutdown: Shutdown,
    ) -> Result<(), SegmentError> {
        loop {
            let fetched = tokio::select! {
                () = shutdown.requested() => return Ok(()),
                fetched = consumer
                    .batch()
                    .max_messages(ROUND)
                    .expires(Duration::from_secs(1))
                    .messages() => fetched,
            };
            let mut fetched = match fetched {
                Ok(fetched) => fetched,
                Err(err) => {
                    tracing::warn!(error = %err, "webhooks: cannot fetch; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut messages = Vec::new();
            while let Some(message) = fetched.next().await {
                match message {
                    Ok(message) => messages.push(message),
                    Err(err) => tracing::warn!(error = %err, "webhooks: pull failed; going on"),
                }
            }
            if messages.is_empty() {
                continue;
            }
            match self.round(&messages, &shutdown).await {
                Ok(true) => {}
                Ok(false) => return Ok(()), // shutdown mid-round: redelivered later
                Err(err) => {
                    // The round is redelivered after its ack wait; the rest goes on.
                    tracing::warn!(error = %err, "webhooks: round failed; it will come again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
            // Confirmed acks, one at a time: they pace the rounds (a burst of plain acks
            // made the NATS server stall the live path's publishes to the same stream,
            // p99 of `cairn bench segments` 8-12 ms -> 15-35 ms).
            for message in &messages {
                if let Err(err) = message.double_ack().await {
                    tracing::warn!(error = %err, "webhooks: ack failed; the changes may be sent again");
                }
            }
        }
    }

    /// Delivers (or dead-letters) every batch of a round; false when shutdown came first.
    async fn round(
        &self,
        messages: &[jetstream::Message],
        shutdown: &Shutdown,
    ) -> Result<bool, SegmentError> {
        let (loaded, _) = self.definitions.get(&self.store, 0).await?;
        let saved = &loaded.definitions;
        let mut batches: BTreeMap<String, Vec<Change>> = BTreeMap::new();
        for message in messages {
            let changed = match SegmentChanged::decode(message.payload.clone()) {
                Ok(changed) => changed,
                Err(err) => {
                    tracing::warn!(subject = %message.subject, error = %err, "webhooks: skipping what is not a segment change");
                    continue;
                }
            };

            if saved
                .segments
                .get(&changed.segment)
                .is_some_and(|definition| definition.webhook.is_some())
            {
                batches
                    .entry(changed.segment.clone())
                    .or_default()
                    .push(Change { changed });
            }
        }
        for (segment, changes) in batches {
            let Some(webhook) = saved
                .segments
                .get(&segment)
                .and_then(|definition| definition.webhook.clone())
            else {
                continue;
            };
            if !self
                .deliver(&segment, &webhook, &changes, messages, shutdown)
                .await?
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Sends one batch until it is delivered or given up on (then dead-lettered); false
    /// when shutdown came first.
    async fn deliver(
        &self,
        segment: &str,
        webhook: &Webhook,
        changes: &[Change],
        round: &[jetstream::Message],
        shutdown: &Shutdown,
    ) -> Result<bool, SegmentError> {
        // The same changes make the same id, whichever round they come in.
        let mut id = Sha256::new();
        id.update(segment.as_bytes());
        for change in changes {
            id.update(change.changed.profile_id.as_bytes());
            id.update(change.changed.profile_version.to_be_bytes());
            id.update([u8::from(change.changed.entered)]);
        }
        let batch = hex(&id.finalize()[..16]);
        let body = serde_json::to_vec(&serde_json::json!({
            "batch": batch,
            "segment": segment,
            "changes": changes.iter().map(|change| serde_json::json!({
                "profile_id": change.changed.profile_id,
                "entered": change.changed.entered,
                "at": change.changed.at.as_ref().map(|at| clock::text(clock::timestamp_ms(at))),
                "profile_version": change.changed.profile_version,
            })).collect::<Vec<_>>(),
        }))
        .map_err(|err| SegmentError::Corrupt(format!("webhook batch: {err}")))?;
        let mut attempt = 1;
        let reason = loop {
            still_working(round).await;
            match self
                .poster
                .post(&webhook.url, &webhook.secret, &batch, &body)
                .await
            {
                Attempt::Delivered => {
                    tracing::info!(
                        segment,
                        batch,
                        changes = changes.len(),
                        attempt,
                        "webhook batch delivered"
                    );
                    return Ok(true);
                }
                Attempt::Refused(reason) => break reason,
                Attempt::Failed(reason) if attempt >= self.config.attempts => {
                    break format!("gave up after {attempt} attempts: {reason}");
                }
                Attempt::Failed(reason) => {
                    tracing::warn!(segment, batch, attempt, %reason, "webhook failed; will retry");
                    let wait = self.config.wait_after(attempt);
                    let until = tokio::time::Instant::now() + wait;
                    while tokio::time::Instant::now() < until {
                        still_working(round).await;
                        let slice = until
                            .saturating_duration_since(tokio::time::Instant::now())
                            .min(PROGRESS_EVERY);
                        tokio::select! {
                            () = shutdown.requested() => return Ok(false),
                            () = tokio::time::sleep(slice) => {}
                        }
                    }
                    attempt += 1;
                }
            }
        };
        tracing::warn!(segment, batch, %reason, "webhook batch dead-lettered");
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            DEAD_LETTER_REASON,
            reason.replace(['\r', '\n'], " ").as_str(),
        );
        headers.insert(
            DEAD_LETTER_SUBJECT,
            format!("webhook {segment} {}", webhook.url).as_str(),
        );
        self.bus
            .publish_all(vec![Outgoing {
                subject: subjects::dead_letter(SERVICE),
                message_id: Some(format!("{SERVICE}/{batch}")),
                headers,
                payload: Bytes::from(body),
            }])
            .await?;
        Ok(true)
    }
}

/// Keeps `round` from being delivered elsewhere while it is worked on.
async fn still_working(round: &[jetstream::Message]) {
    for message in round {
        let _ = message.ack_with(jetstream::AckKind::Progress).await;
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hmac_of_the_timestamp_and_the_body() {
        // RFC 4231's test case 2 key, over "0.what do ya want for nothing?" (computed
        // with Python's hmac module).
        assert_eq!(
            signature("Jefe", 0, b"what do ya want for nothing?"),
            "sha256=37f471929915ccd2cbbe79feb84ffcff4f2bb25e15fc41c2506687331ae179cc"
        );
        assert_ne!(
            signature("secret-one-16-chars", 1, b"{}"),
            signature("secret-two-16-chars", 1, b"{}")
        );
        assert_ne!(
            signature("secret-one-16-chars", 1, b"{}"),
            signature("secret-one-16-chars", 2, b"{}")
        );
    }
}
