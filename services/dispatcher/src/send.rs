//! Sending what campaigns ask for (`campaign.sends.*`, `cairn.campaign.v1.Action`):
//! the template rendered for the profile as it is now and sent to its `traits.email`,
//! once per idempotency key.
//!
//! Each key has a record (`s:<key>`) written before the email leaves and after:
//! `sending`, then `sent`, `deferred` (a temporary failure: a copy of the request comes
//! back after a pause, by a NATS message schedule, so that nothing waits meanwhile) or
//! `failed` (permanent: dead-lettered). A request whose record says `sent` or
//! `failed` is not sent again, whatever redelivers it. A record still saying `sending`
//! when a request comes in fresh means the dispatcher stopped in the middle of the
//! SMTP exchange: the server may or may not have taken the email, and rather than
//! risk sending twice it is not sent again and is reported `uncertain`. Every outcome
//! is published on `delivery.events.<partition>`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use cairn_bus::worker::{Delivered, Handled, Handler};
use cairn_bus::{Bus, Outgoing, Partitions, links, subjects};
use cairn_proto::campaign::v1::Action;
use cairn_proto::dispatch::v1::{DeliveryEvent, delivery_event::Outcome as Reported};
use cairn_runtime::clock::{now_ms, timestamp};
use cairn_runtime::error::{Classify as _, ErrorKind};
use cairn_store::{Expect, Outcome, Store, Write};
use lettre::Message;
use lettre::message::{Mailbox, MultiPart, header};
use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use prost::Message as _;
use serde::{Deserialize, Serialize};

use crate::config::DispatchConfig;
use crate::error::DispatchError;
use crate::templates::{self, DISPATCH};
use crate::transport::{Failure, Mailer};

const DAY_MS: i64 = 86_400_000;

/// The service name of the consumer and of its dead letters.
pub const SERVICE: &str = "dispatcher";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Sending,
    Sent,
    Deferred,
    Failed,
    Uncertain,
    Suppressed,
    Capped,
    /// Due in quiet hours: a copy comes back when they end.
    Held,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Sending => "sending",
            State::Sent => "sent",
            State::Deferred => "deferred",
            State::Failed => "failed",
            State::Uncertain => "uncertain",
            State::Suppressed => "suppressed",
            State::Capped => "capped",
            State::Held => "held",
        }
    }
}

/// What happened to one idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendRecord {
    pub state: State,
    pub message_id: String,
    pub to: String,
    pub at_ms: i64,
    #[serde(default)]
    pub reason: String,
    /// Attempts the SMTP server deferred so far.
    #[serde(default)]
    pub deferrals: u32,
}

fn record_key(key: &str) -> Bytes {
    Bytes::from(format!("s:{key}"))
}

/// The send record of idempotency key `key`, if any.
pub async fn record<S: Store>(store: &S, key: &str) -> Result<Option<SendRecord>, DispatchError> {
    Ok(read(store, key).await?.map(|(record, _)| record))
}

async fn read<S: Store>(store: &S, key: &str) -> Result<Option<(SendRecord, u64)>, DispatchError> {
    match store.get(&DISPATCH, &record_key(key)).await? {
        Some(stored) => {
            let record = serde_json::from_slice(&stored.value)
                .map_err(|err| DispatchError::Corrupt(format!("send {key}: {err}")))?;
            Ok(Some((record, stored.version)))
        }
        None => Ok(None),
    }
}

/// Template `template` rendered for `profile_id` as the profile is now, and the address
/// it goes to; or why there can never be such an email (no profile, no valid
/// `traits.email`, no such template, a render error).
pub async fn compose<S: Store>(
    store: &S,
    config: &DispatchConfig,
    template: &str,
    profile_id: &str,
    campaign: &str,
    params: serde_json::Value,
) -> Result<Result<Composed, String>, DispatchError> {
    let Some(stored) = cairn_profile_store::store::read(store, profile_id)
        .await
        .map_err(|err| match err.kind() {
            ErrorKind::Unavailable => {
                DispatchError::Bus(cairn_bus::BusError::Unavailable(err.to_string()))
            }
            _ => DispatchError::Corrupt(format!("profile {profile_id}: {err}")),
        })?
    else {
        return Ok(Err(format!("no profile {profile_id}")));
    };
    let profile = serde_json::to_value(stored.profile.view(now_ms()))
        .map_err(|err| DispatchError::Corrupt(format!("profile {profile_id}: {err}")))?;
    let Some(email) = profile["traits"]["email"].as_str() else {
        return Ok(Err("the profile has no traits.email".to_string()));
    };
    let to: Mailbox = match email.trim().parse() {
        Ok(to) => to,
        Err(err) => {
            return Ok(Err(format!(
                "traits.email {email:?} is not an address: {err}"
            )));
        }
    };
    let template = match templates::get(store, template).await {
        Ok(template) => template,
        Err(DispatchError::MissingTemplate(name)) => {
            return Ok(Err(format!("there is no template {name}")));
        }
        Err(err) => return Err(err),
    };
    let context = serde_json::json!({
        "profile": profile,
        "params": params,
        "campaign": campaign,
        "email": to.email.to_string(),
        "unsubscribe_url": config.unsubscribe_url(to.email.as_ref(), template.list.as_deref()),
    });
    let identifiers = profile["identifiers"].as_array();
    let last_of = |kind: &str| {
        identifiers?
            .iter()
            .rev()
            .find(|identifier| identifier["type"] == kind)
            .and_then(|identifier| identifier["value"].as_str())
            .map(str::to_string)
    };
    let (user_id, anonymous_id) = (last_of("user_id"), last_of("anonymous_id"));
    Ok(template
        .render(&context)
        .map(|rendered| Composed {
            person: links::Person {
                anonymous_id: anonymous_id.filter(|_| user_id.is_none()),
                user_id,
                email: to.email.to_string(),
            },
            to,
            rendered,
            list: template.list.clone(),
            customer_type: profile["facts"]["activity"]["customer_type"]
                .as_str()
                .map(str::to_string),
            timezone: profile["timezone"].as_str().map(str::to_string),
            best_send_hour: profile["facts"]["activity"]["best_send_hour"]
                .as_u64()
                .and_then(|hour| u32::try_from(hour).ok())
                .filter(|hour| *hour < 24),
        })
        .map_err(|err| err.to_string()))
}

/// An email rendered for one profile.
pub struct Composed {
    pub to: Mailbox,
    /// Who it goes to, as the identity service knows them (for tracked links).
    pub person: links::Person,
    /// The template's list.
    pub list: Option<String>,
    /// `b2b` or `b2c`, as the activity enricher tells from the profile's addresses.
    pub customer_type: Option<String>,
    pub rendered: templates::Rendered,
    /// The profile's time zone, when known.
    pub timezone: Option<String>,
    /// The local hour the profile reads email most, when known.
    pub best_send_hour: Option<u32>,
}

/// A fixed id for an idempotency key (of any text), for the Message-ID and the hold.
fn key_digest(key: &str) -> uuid::Uuid {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, key.as_bytes())
}

/// The email's Message-ID: the same for every attempt at one idempotency key.
pub fn message_id(key: &str) -> String {
    format!("<{}@cairn>", key_digest(key))
}

#[derive(Clone)]
pub struct Dispatcher<S> {
    pub store: S,
    pub suppressions: async_nats::jetstream::kv::Store,
    pub bus: Bus,
    pub senders: Senders,
    pub config: DispatchConfig,
    /// The copies of one request (by idempotency key) are handled one at a time here:
    /// a second waits for the first rather than take its `sending` for a stop.
    pub keys: KeyLocks,
    /// Emails by what became of them (`cairn_dispatcher_emails_total{outcome}`).
    pub emails: Counter<u64>,
}

impl<S: Store> Dispatcher<S> {
    pub fn new(
        store: S,
        suppressions: async_nats::jetstream::kv::Store,
        bus: Bus,
        senders: Senders,
        config: DispatchConfig,
        meter: &opentelemetry::metrics::Meter,
    ) -> Self {
        Self {
            store,
            suppressions,
            bus,
            senders,
            config,
            keys: KeyLocks::default(),
            emails: meter
                .u64_counter("cairn_dispatcher_emails")
                .with_description(
                    "Emails by outcome: sent, deferred, failed, uncertain, suppressed, capped, held",
                )
                .build(),
        }
    }
}

/// The ways out: the usual one, and a pool per customer type when configured
/// (`CAIRN_EMAIL_B2B_*`, `CAIRN_EMAIL_B2C_*`). A pool on the usual transport shares its
/// connections.
#[derive(Clone)]
pub struct Senders {
    usual: (Mailbox, Mailer),
    pools: Vec<(String, Mailbox, Mailer)>,
}

impl Senders {
    pub fn new(config: &DispatchConfig) -> Result<Self, DispatchError> {
        let usual = Mailer::new(&config.sender.transport)?;
        let mut pools = Vec::new();
        for (customer_type, sender) in &config.pools {
            let mailer = if sender.transport == config.sender.transport {
                usual.clone()
            } else {
                Mailer::new(&sender.transport)?
            };
            pools.push((customer_type.clone(), sender.from.clone(), mailer));
        }
        Ok(Self {
            usual: (config.sender.from.clone(), usual),
            pools,
        })
    }

    /// Who an email to a profile of `customer_type` is from, and how it leaves.
    fn of(&self, customer_type: Option<&str>) -> (&Mailbox, &Mailer) {
        self.pools
            .iter()
            .find(|(kind, _, _)| Some(kind.as_str()) == customer_type)
            .map_or((&self.usual.0, &self.usual.1), |(_, from, mailer)| {
                (from, mailer)
            })
    }
}

/// A lock per key, for as long as someone holds or waits for it.
#[derive(Clone, Default)]
pub struct KeyLocks(Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>);

impl KeyLocks {
    /// Waits for `key` to be free, and holds it until the guard is dropped.
    pub async fn lock(&self, key: &str) -> KeyGuard {
        let lock = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.to_string())
            .or_default()
            .clone();
        KeyGuard {
            held: Some(lock.lock_owned().await),
            locks: self.clone(),
            key: key.to_string(),
        }
    }
}

pub struct KeyGuard {
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
    locks: KeyLocks,
    key: String,
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        self.held = None;
        let mut locks = self.locks.0.lock().unwrap_or_else(PoisonError::into_inner);
        // Forgotten once no one holds it or waits for it (each of them has a clone).
        if locks
            .get(&self.key)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            locks.remove(&self.key);
        }
    }
}

/// What a request comes to before anything is sent.
enum Prepared {
    Send {
        message: Box<Message>,
        /// How it leaves (its customer type's pool, or the usual way).
        mailer: Mailer,
        to: String,
        /// When it may leave, if not now (quiet hours, the best send hour).
        release_at: Option<i64>,
    },
    /// The address must not get campaign emails.
    Suppressed {
        to: String,
        reason: String,
    },
    Fail(String),
}

impl<S: Store> Dispatcher<S> {
    fn event(&self, action: &Action, record: &SendRecord, outcome: Reported) -> Outgoing {
        let event = DeliveryEvent {
            idempotency_key: action.idempotency_key.clone(),
            campaign: action.campaign.clone(),
            profile_id: action.profile_id.clone(),
            template: action.target.clone(),
            outcome: outcome as i32,
            reason: record.reason.clone(),
            message_id: record.message_id.clone(),
            to: record.to.clone(),
            at: Some(timestamp(record.at_ms)),
        };
        Outgoing {
            subject: subjects::delivery_events(self.partitions().of(&action.profile_id)),
            message_id: Some(format!(
                "delivery:{}:{}:{}",
                action.idempotency_key,
                outcome.as_str_name(),
                record.at_ms
            )),
            headers: async_nats::HeaderMap::new(),
            payload: Bytes::from(event.encode_to_vec()),
        }
    }

    fn partitions(&self) -> Partitions {
        self.bus.partitions()
    }

    /// The email for `action`, or why there can never be one.
    /// `held_before`: it waited for its hour already (it is sent once quiet hours allow).
    async fn prepare(&self, action: &Action, held_before: bool) -> Result<Prepared, DispatchError> {
        let params: serde_json::Value =
            serde_json::from_str(&action.params_json).unwrap_or(serde_json::Value::Null);
        let Composed {
            to,
            person,
            rendered,
            list,
            customer_type,
            timezone,
            best_send_hour,
        } = match compose(
            &self.store,
            &self.config,
            &action.target,
            &action.profile_id,
            &action.campaign,
            params,
        )
        .await?
        {
            Ok(composed) => composed,
            Err(reason) => return Ok(Prepared::Fail(reason)),
        };
        let email = to.email.to_string();
        if let Some(reason) =
            cairn_bus::suppressions::find(&self.suppressions, &email, list.as_deref()).await?
        {
            return Ok(Prepared::Suppressed { to: email, reason });
        }
        let (from, mailer) = self.senders.of(customer_type.as_deref());
        let mut builder = Message::builder()
            .from(from.clone())
            .to(to.clone())
            .subject(rendered.subject)
            .message_id(Some(message_id(&action.idempotency_key)));
        let unsubscribe_url = self.config.unsubscribe_url(&email, list.as_deref());
        if let Some(url) = &unsubscribe_url {
            // RFC 2369 and RFC 8058: mail clients offer (one-click) unsubscribe.
            builder = builder
                .raw_header(header::HeaderValue::new(
                    header::HeaderName::new_from_ascii_str("List-Unsubscribe"),
                    format!("<{url}>"),
                ))
                .raw_header(header::HeaderValue::new(
                    header::HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                    "List-Unsubscribe=One-Click".to_string(),
                ));
        }
        let html = match (&self.config.link_secret, rendered.html) {
            (Some(secret), Some(html))
                if !action.untracked
                    && (person.user_id.is_some() || person.anonymous_id.is_some()) =>
            {
                let tracked = links::Email {
                    send: action.idempotency_key.clone(),
                    campaign: action.campaign.clone(),
                    person,
                };
                Some(crate::tracking::track(
                    &html,
                    &tracked,
                    secret,
                    &self.config.public_url,
                    unsubscribe_url.as_deref(),
                ))
            }
            (_, html) => html,
        };
        let built = match html {
            Some(html) => builder.multipart(MultiPart::alternative_plain_html(rendered.text, html)),
            None => builder
                .header(header::ContentType::TEXT_PLAIN)
                .body(rendered.text),
        };
        match built {
            Ok(message) => Ok(Prepared::Send {
                message: Box::new(message),
                mailer: mailer.clone(),
                to: to.email.to_string(),
                release_at: self.release_at(
                    action,
                    timezone.as_deref(),
                    best_send_hour.filter(|_| !held_before),
                ),
            }),
            Err(err) => Ok(Prepared::Fail(format!("the email cannot be built: {err}"))),
        }
    }

    /// Takes one of the profile's daily emails for `key` (again, if `key` took one
    /// already); false when the day's are used up. A slot is kept for 24 hours whatever
    /// becomes of its email.
    async fn take_slot(&self, profile_id: &str, key: &str) -> Result<bool, DispatchError> {
        let cap = self.config.daily_cap;
        if cap == 0 {
            return Ok(true);
        }
        let now = now_ms();
        let mut taken = false;
        let mut damaged = None;
        self.store
            .update(
                &DISPATCH,
                Bytes::from(format!("c:{profile_id}")),
                20,
                |current| {
                    taken = false;
                    let mut slots: Vec<(String, i64)> = match current {
                        Some(record) => match serde_json::from_slice(&record.value) {
                            Ok(slots) => slots,
                            Err(err) => {
                                damaged = Some(err.to_string());
                                return None;
                            }
                        },
                        None => Vec::new(),
                    };
                    slots.retain(|(_, at)| now - at < DAY_MS);
                    if slots.iter().any(|(taken_by, _)| taken_by == key) {
                        taken = true;
                        return None;
                    }
                    if slots.len() >= cap as usize {
                        return None;
                    }
                    slots.push((key.to_string(), now));
                    taken = true;
                    serde_json::to_vec(&slots)
                        .ok()
                        .map(cairn_store::Change::set)
                },
            )
            .await?;
        match damaged {
            Some(err) => Err(DispatchError::Corrupt(format!(
                "daily emails of {profile_id}: {err}"
            ))),
            None => Ok(taken),
        }
    }

    /// When an email for `action` may leave, if not now: after the quiet hours in the
    /// profile's zone, and in its best send hour when the action asks for it (then the
    /// quiet hours again, should that hour fall in them: they win).
    fn release_at(
        &self,
        action: &Action,
        timezone: Option<&str>,
        best_send_hour: Option<u32>,
    ) -> Option<i64> {
        let now = now_ms();
        let best = match (action.send_at.as_str(), best_send_hour) {
            ("best_hour", Some(hour)) => crate::quiet::next_hour(now, timezone, hour),
            _ => None,
        };
        let from = best.unwrap_or(now);
        let quiet = self
            .config
            .quiet_hours
            .and_then(|quiet| quiet.release_at(from, timezone));
        quiet.or(best)
    }

    /// Writes `record` for `key` if it is still at `version` (`None`: absent); whether
    /// it was. Each outcome written is counted.
    async fn write(
        &self,
        key: &str,
        record: &SendRecord,
        version: Option<u64>,
    ) -> Result<Option<u64>, DispatchError> {
        let value = serde_json::to_vec(record)
            .map_err(|err| DispatchError::Corrupt(format!("send record: {err}")))?;
        let expect = version.map_or(Expect::Absent, Expect::Version);
        match self
            .store
            .write(&DISPATCH, Write::new(record_key(key)).record(expect, value))
            .await?
        {
            Outcome::Applied { version } => {
                if record.state != State::Sending {
                    self.emails
                        .add(1, &[KeyValue::new("outcome", record.state.name())]);
                }
                Ok(Some(version.unwrap_or_default()))
            }
            Outcome::Conflict { .. } => Ok(None),
        }
    }

    async fn on_message(&self, message: &Delivered) -> Result<Handled, DispatchError> {
        let action = Action::decode(message.payload.clone()).map_err(|err| {
            DispatchError::InvalidArgument(format!("not a campaign action: {err}"))
        })?;
        let key = action.idempotency_key.clone();
        if key.is_empty() {
            return Err(DispatchError::InvalidArgument(
                "the action has no idempotency_key".to_string(),
            ));
        }
        let _key = self.keys.lock(&key).await;
        let existing = read(&self.store, &key).await?;
        let version = match &existing {
            Some((record, _)) if record.state == State::Sent => {
                // Sent before: said again, in case that was lost.
                return Ok(Handled::Publish(vec![self.event(
                    &action,
                    record,
                    Reported::Sent,
                )]));
            }
            Some((record, _))
                if matches!(
                    record.state,
                    State::Failed | State::Uncertain | State::Suppressed | State::Capped
                ) =>
            {
                return Ok(Handled::Publish(Vec::new()));
            }
            Some((record, version)) if record.state == State::Sending => {
                // Stopped mid-send (or the record of its outcome could not be
                // written): maybe sent, so never again.
                let uncertain = SendRecord {
                    state: State::Uncertain,
                    at_ms: now_ms(),
                    reason: "the dispatcher stopped while sending: sent once or not at all"
                        .to_string(),
                    ..record.clone()
                };
                if self
                    .write(&key, &uncertain, Some(*version))
                    .await?
                    .is_none()
                {
                    return Err(DispatchError::Busy(format!("send {key} changed meanwhile")));
                }
                tracing::warn!(key = %key, "email in an unknown state after a stop: not sent again");
                return Ok(Handled::Publish(vec![self.event(
                    &action,
                    &uncertain,
                    Reported::Uncertain,
                )]));
            }
            Some((_, version)) => Some(*version),
            None => None,
        };
        let held_before = matches!(&existing, Some((record, _)) if record.state == State::Held);
        let (message_out, to, mailer) = match self.prepare(&action, held_before).await? {
            Prepared::Send {
                to,
                release_at: Some(until),
                ..
            } => {
                let held = match &existing {
                    // Held before (a repeat): its schedule is published again, which
                    // replaces it, and its report is the same.
                    Some((record, _)) if record.state == State::Held => record.clone(),
                    _ => {
                        let held = SendRecord {
                            state: State::Held,
                            message_id: message_id(&key),
                            to,
                            at_ms: now_ms(),
                            reason: format!(
                                "quiet hours in the profile's time zone: held until {}",
                                cairn_runtime::clock::text(until)
                            ),
                            deferrals: 0,
                        };
                        if self.write(&key, &held, version).await?.is_none() {
                            return Err(DispatchError::Busy(format!(
                                "send {key} changed meanwhile"
                            )));
                        }
                        held
                    }
                };
                return Ok(Handled::Publish(vec![
                    self.comes_back(&action, message, until)?,
                    self.event(&action, &held, Reported::Held),
                ]));
            }
            Prepared::Send { message, to, .. }
                if !self.take_slot(&action.profile_id, &key).await? =>
            {
                let capped = SendRecord {
                    state: State::Capped,
                    message_id: message_id(&key),
                    to,
                    at_ms: now_ms(),
                    reason: format!(
                        "the profile had {} emails in the last 24 hours (CAIRN_EMAIL_DAILY_CAP)",
                        self.config.daily_cap
                    ),
                    deferrals: 0,
                };
                drop(message);
                if self.write(&key, &capped, version).await?.is_none() {
                    return Err(DispatchError::Busy(format!("send {key} changed meanwhile")));
                }
                return Ok(Handled::Publish(vec![self.event(
                    &action,
                    &capped,
                    Reported::Capped,
                )]));
            }
            Prepared::Send {
                message,
                to,
                mailer,
                ..
            } => (message, to, mailer),
            Prepared::Suppressed { to, reason } => {
                let suppressed = SendRecord {
                    state: State::Suppressed,
                    message_id: message_id(&key),
                    to,
                    at_ms: now_ms(),
                    reason: format!("the address is suppressed: {reason}"),
                    deferrals: 0,
                };
                if self.write(&key, &suppressed, version).await?.is_none() {
                    return Err(DispatchError::Busy(format!("send {key} changed meanwhile")));
                }
                return Ok(Handled::Publish(vec![self.event(
                    &action,
                    &suppressed,
                    Reported::Suppressed,
                )]));
            }
            Prepared::Fail(reason) => return self.fail(&action, &key, version, reason, "").await,
        };
        let deferrals = match &existing {
            Some((record, _)) if record.state == State::Deferred => record.deferrals,
            _ => 0,
        };
        // The record says `sending` only while a connection is ready for the email: a
        // stop then leaves as few as possible uncertain.
        let ready = match mailer.ready().await {
            Ok(ready) => ready,
            Err(failure) => {
                return self
                    .not_sent(&action, message, version, &to, deferrals, failure)
                    .await;
            }
        };
        let sending = SendRecord {
            state: State::Sending,
            message_id: message_id(&key),
            to: to.clone(),
            at_ms: now_ms(),
            reason: String::new(),
            deferrals,
        };
        let Some(sending_version) = self.write(&key, &sending, version).await? else {
            return Err(DispatchError::Busy(format!(
                "send {key} is being handled elsewhere"
            )));
        };
        match ready.send(*message_out).await {
            Ok(()) => {
                let sent = SendRecord {
                    state: State::Sent,
                    at_ms: now_ms(),
                    ..sending
                };
                self.write(&key, &sent, Some(sending_version)).await?;
                tracing::debug!(key = %key, campaign = %action.campaign, template = %action.target, "email sent");
                Ok(Handled::Publish(vec![self.event(
                    &action,
                    &sent,
                    Reported::Sent,
                )]))
            }
            Err(failure) => {
                self.not_sent(
                    &action,
                    message,
                    Some(sending_version),
                    &to,
                    deferrals,
                    failure,
                )
                .await
            }
        }
    }

    /// After the email for `action` to `to` was not taken (`failure`), with its record
    /// at `version` and deferred `deferrals` times before: deferred again (a copy of
    /// `message` comes back later), or failed for good.
    async fn not_sent(
        &self,
        action: &Action,
        message: &Delivered,
        version: Option<u64>,
        to: &str,
        deferrals: u32,
        failure: Failure,
    ) -> Result<Handled, DispatchError> {
        let key = &action.idempotency_key;
        match failure {
            Failure::Permanent { reason, bounced } => {
                if bounced {
                    // The mailbox does not exist: no campaign email goes there again.
                    cairn_bus::suppressions::add(&self.suppressions, to, None, "bounced").await?;
                }
                self.fail(action, key, version, reason, to).await
            }
            Failure::Temporary(reason) if deferrals + 1 < self.config.attempts => {
                let deferred = SendRecord {
                    state: State::Deferred,
                    message_id: message_id(key),
                    to: to.to_string(),
                    at_ms: now_ms(),
                    reason,
                    deferrals: deferrals + 1,
                };
                if self.write(key, &deferred, version).await?.is_none() {
                    return Err(DispatchError::Busy(format!("send {key} changed meanwhile")));
                }
                let again_at = now_ms()
                    + i64::try_from(self.config.wait_after(deferred.deferrals).as_millis())
                        .unwrap_or(i64::MAX / 2);
                tracing::info!(key = %key, reason = %deferred.reason, deferrals = deferred.deferrals, "email deferred");
                Ok(Handled::Publish(vec![
                    self.comes_back(action, message, again_at)?,
                    self.event(action, &deferred, Reported::Deferred),
                ]))
            }
            Failure::Temporary(reason) => {
                self.fail(
                    action,
                    key,
                    version,
                    format!("still deferred after {} attempts: {reason}", deferrals + 1),
                    to,
                )
                .await
            }
        }
    }

    /// A copy of the request `message` (for `action`) that comes back at `at_ms`, by a
    /// message schedule of its own (a later one replaces it).
    fn comes_back(
        &self,
        action: &Action,
        message: &Delivered,
        at_ms: i64,
    ) -> Result<Outgoing, DispatchError> {
        let partition = self.partitions().of(&action.profile_id);
        let digest = key_digest(&action.idempotency_key).simple().to_string();
        Outgoing::schedule(
            format!("campaign.hold.{partition}.{digest}"),
            &subjects::campaign_sends(partition),
            at_ms,
            message.payload.clone(),
        )
        .ok_or_else(|| DispatchError::InvalidArgument(format!("cannot schedule at {at_ms}")))
    }

    /// Records `key` as failed for good, reports it, and dead-letters the request.
    async fn fail(
        &self,
        action: &Action,
        key: &str,
        version: Option<u64>,
        reason: String,
        to: &str,
    ) -> Result<Handled, DispatchError> {
        let failed = SendRecord {
            state: State::Failed,
            message_id: message_id(key),
            to: to.to_string(),
            at_ms: now_ms(),
            reason: reason.clone(),
            deferrals: 0,
        };
        if self.write(key, &failed, version).await?.is_none() {
            return Err(DispatchError::Busy(format!("send {key} changed meanwhile")));
        }
        self.bus
            .publish_all(vec![self.event(action, &failed, Reported::Failed)])
            .await?;
        tracing::warn!(key, campaign = %action.campaign, reason = %reason, "email failed");
        Ok(Handled::DeadLetter { reason })
    }
}

impl<S: Store> Handler for Dispatcher<S> {
    async fn handle(&self, message: &Delivered) -> Handled {
        match self.on_message(message).await {
            Ok(handled) => handled,
            Err(err) if err.kind() == ErrorKind::Unavailable => Handled::Retry {
                reason: err.to_string(),
                delay: self.config.wait_after(message.attempt),
            },
            Err(err) => Handled::DeadLetter {
                reason: err.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn copies_of_one_key_take_turns_and_leave_nothing_behind() {
        let locks = KeyLocks::default();
        let first = locks.lock("k").await;
        let second = tokio::spawn({
            let locks = locks.clone();
            async move {
                let _held = locks.lock("k").await;
            }
        });
        // Another key is free meanwhile.
        let other = locks.lock("other").await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!second.is_finished());
        drop(first);
        second.await.unwrap();
        drop(other);
        assert!(locks.0.lock().unwrap().is_empty());
    }
}
