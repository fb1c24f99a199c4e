//! Campaigns run: each profile's journey through each running campaign, kept in the
//! store under `j:<campaign>:<profile>`, moved on by the profile's events (read from
//! `profiles.changed`, which carries each event with the profile as it made it, so an
//! audience or a parameter reads the profile as of the event), its segment changes (as the live path decides them, in
//! the same handling of the same message) and its inactivity timers (`campaign.due`), with the actions of each state entered published for their
//! channel (`campaign.sends|web|webhooks.<partition>`).
//!
//! - Idempotent: a journey's change is written with a mark of the input that caused it,
//!   once; an input seen again changes nothing, and when it may be a repeat (its outputs
//!   may not have gone out) the journey's last outputs are published again, under the
//!   same message ids (the stream keeps one copy) and idempotency keys (a channel sends
//!   each once).
//! - Inactivity timers are message schedules, one subject per (campaign, profile,
//!   transition): setting one again (an event that puts it off) replaces it. A timer that
//!   comes due is checked against the journey, which keeps when each of its timers is
//!   due: a stale one does nothing. A timer further off than half the stream's age limit
//!   (which would drop the schedule first) is set for that horizon and set again when it
//!   comes, until it is due.

use std::collections::BTreeMap;

use std::time::Duration;

use bytes::Bytes;
use cairn_bus::Outgoing;
use cairn_bus::subjects::{self, Partitions};
use cairn_bus::worker::{Delivered, Handled, Handler};
use cairn_profile_store::store::PROFILES;
use cairn_proto::campaign::v1::{Action as ActionMessage, TimerDue};
use cairn_proto::profile::v1::ProfileChanged;
use cairn_proto::segment::v1::SegmentChanged;
use cairn_runtime::clock::{now_ms, timestamp, timestamp_ms};

use cairn_store::{Change, Mark, Outcome, Store};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::definition::{Audience, Campaign, Channel};
use super::machine::{self, Input, Journey};
use super::saved;
use crate::definitions::SEGMENTS;
use crate::error::SegmentError;
use crate::live;

/// The furthest ahead a timer is ever set.
const MAX_TIMER_HORIZON: Duration = Duration::from_secs(3 * 86_400);
/// How long the mark of an input applied to a journey is kept (redeliveries come sooner).
const MARK_TTL: Duration = Duration::from_secs(7 * 86_400);
const ATTEMPTS: u32 = 20;

/// A journey as stored, with what its last change published (to publish again when the
/// input that caused it comes again).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct JourneyRecord {
    journey: Journey,
    /// The input that caused the last change.
    last_input: String,
    /// The actions that change sent.
    last_actions: Vec<SentAction>,
    /// Actions sent and held back by the cap, over the journey's life.
    #[serde(default)]
    sent: u64,
    #[serde(default)]
    suppressed: u64,
}

/// An action as sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SentAction {
    state: String,
    channel: String,
    target: String,
    params: BTreeMap<String, Value>,
    entry: u32,
    at_ms: i64,
    key: String,
    /// For email: `best_hour` to send at the profile's best send hour.
    #[serde(default)]
    send_at: String,
    /// For email: no click or open tracking.
    #[serde(default)]
    untracked: bool,
}

fn journey_key(campaign: &str, profile_id: &str) -> Bytes {
    Bytes::from(format!("j:{campaign}:{profile_id}"))
}

fn decode_journey(key: &[u8], value: &[u8]) -> Result<JourneyRecord, SegmentError> {
    serde_json::from_slice(value).map_err(|err| {
        SegmentError::Corrupt(format!("journey {}: {err}", String::from_utf8_lossy(key)))
    })
}

/// What an input is about.
enum Received {
    Event {
        profile_id: String,
        id: String,
        name: String,
        at_ms: i64,
        json: Value,
        /// The profile as the event made it (JSON, read when a campaign needs it).
        profile_json: String,
        /// The event says it comes from a crawler.
        sent_by_a_bot: bool,
    },
    Segment {
        changed: SegmentChanged,
        at_ms: i64,
    },
    Timer(TimerDue),
}

impl Received {
    /// What `message` says; `None` for a profile change no event caused (a merge, a
    /// fact, a membership), which moves no journey.
    fn read(message: &Delivered) -> Result<Option<Received>, SegmentError> {
        let subject = message.subject.as_str();
        let invalid = |what: &str, err: &dyn std::fmt::Display| {
            SegmentError::InvalidArgument(format!("{subject}: not {what}: {err}"))
        };
        if subject.starts_with("profiles.changed.") {
            let changed = ProfileChanged::decode(message.payload.clone())
                .map_err(|err| invalid("a profile change", &err))?;
            let Some(identified) = changed.event else {
                return Ok(None);
            };
            let envelope = identified.envelope.unwrap_or_default();
            let event = cairn_event::Event::read(&envelope)
                .map_err(|err| invalid("a readable event", &err))?;
            Ok(Some(Received::Event {
                profile_id: changed.profile_id,
                id: format!("e:{}", event.message_id),
                name: event.name(),
                at_ms: event.at_ms,
                sent_by_a_bot: event.sent_by_a_bot(),
                json: event.json,
                profile_json: changed.profile_json,
            }))
        } else if subject.starts_with("campaign.due.") {
            Ok(Some(Received::Timer(
                TimerDue::decode(message.payload.clone())
                    .map_err(|err| invalid("a campaign timer", &err))?,
            )))
        } else {
            Err(SegmentError::InvalidArgument(format!(
                "{subject}: not an input of campaigns"
            )))
        }
    }

    fn sent_by_a_bot(&self) -> bool {
        matches!(
            self,
            Received::Event {
                sent_by_a_bot: true,
                ..
            }
        )
    }

    fn profile_id(&self) -> &str {
        match self {
            Received::Event { profile_id, .. } => profile_id,
            Received::Segment { changed, .. } => &changed.profile_id,
            Received::Timer(due) => &due.profile_id,
        }
    }

    /// What tells this input apart, for the journey's marks.
    fn id(&self) -> String {
        match self {
            Received::Event { id, .. } => id.clone(),
            Received::Segment { changed, .. } => format!(
                "s:{}:{}:{}",
                changed.segment, changed.profile_version, changed.entered
            ),
            Received::Timer(due) => format!("t:{}:{}", due.transition, due.due_ms),
        }
    }

    fn input(&self) -> Input<'_> {
        match self {
            Received::Event {
                name, at_ms, json, ..
            } => Input::Event {
                name,
                event: json,
                at_ms: *at_ms,
            },
            Received::Segment { changed, at_ms } => Input::Segment {
                name: &changed.segment,
                entered: changed.entered,
                at_ms: *at_ms,
            },
            Received::Timer(due) => Input::Timer {
                transition: due.transition as usize,
                due_ms: due.due_ms,
            },
        }
    }
}

/// The profile as stored now, and its memberships, read once per input when a campaign
/// needs them.
struct ProfileNow {
    view: Value,
    segments: Vec<String>,
}

impl ProfileNow {
    /// Whether enrich-device found the profile's visits to be a crawler's.
    fn is_a_bot(&self) -> bool {
        self.view["facts"]["device"]["bot"] == true
    }
}

#[derive(Clone)]
pub struct CampaignHandler<S> {
    pub store: S,
    pub partitions: Partitions,
    pub campaigns: saved::Cache,
    /// The furthest ahead a timer is set (below the CAMPAIGNS stream's age limit).
    pub timer_horizon: Duration,
}

impl<S: Store> CampaignHandler<S> {
    /// `stream_max_age`: how long the CAMPAIGNS stream keeps a message.
    pub fn new(store: S, partitions: Partitions, stream_max_age: Duration) -> Self {
        Self {
            store,
            partitions,
            campaigns: saved::Cache::default(),
            timer_horizon: (stream_max_age / 2).min(MAX_TIMER_HORIZON),
        }
    }

    /// What an event, a segment change or a due timer does to the journeys.
    pub(crate) async fn on_message(
        &self,
        message: &Delivered,
    ) -> Result<Vec<Outgoing>, SegmentError> {
        if self.campaigns.get(&self.store).await?.campaigns.is_empty() {
            return Ok(Vec::new());
        }
        match Received::read(message)? {
            Some(received) => self.on_received(&received, message.is_repeat()).await,
            None => Ok(Vec::new()),
        }
    }

    /// Deletes every journey of `profile_id` (forgotten), through every saved campaign;
    /// its pending timers find no journey when they come due, and do nothing.
    pub(crate) async fn forget(&self, profile_id: &str) -> Result<(), SegmentError> {
        for name in saved::load(&self.store).await?.campaigns.keys() {
            self.store
                .delete(&SEGMENTS, &journey_key(name, profile_id))
                .await?;
        }
        Ok(())
    }

    /// `merged` went into `survivor`: each of its journeys becomes the survivor's, unless
    /// the survivor has one of its own through that campaign (kept; the other goes), and
    /// the timers of what moved are set again under the survivor. Idempotent: what moved
    /// is gone from `merged`.
    pub(crate) async fn hand_over(
        &self,
        merged: &str,
        survivor: &str,
    ) -> Result<Vec<Outgoing>, SegmentError> {
        let running = self.campaigns.get(&self.store).await?;
        let mut outgoing = Vec::new();
        for name in saved::load(&self.store).await?.campaigns.keys() {
            let from = journey_key(name, merged);
            let Some(record) = self.store.get(&SEGMENTS, &from).await? else {
                continue;
            };
            let to = journey_key(name, survivor);
            let write = cairn_store::Write::new(to.clone())
                .record(cairn_store::Expect::Absent, record.value.clone());
            if let Outcome::Applied { .. } = self.store.write(&SEGMENTS, write).await?
                && let Some(campaign) = running.campaigns.iter().find(|c| &c.name == name)
            {
                let moved = decode_journey(&to, &record.value)?;
                outgoing.extend(self.outputs(campaign, survivor, &[], &moved.journey, None));
            }
            self.store.delete(&SEGMENTS, &from).await?;
        }
        Ok(outgoing)
    }

    /// What a profile entering or leaving a segment, as the live path just decided it
    /// (`repeat`: the decision may have been announced before), does to the journeys.
    pub(crate) async fn on_segment_changed(
        &self,
        changed: SegmentChanged,
        repeat: bool,
    ) -> Result<Vec<Outgoing>, SegmentError> {
        let at_ms = changed.at.as_ref().map_or_else(now_ms, timestamp_ms);
        self.on_received(&Received::Segment { changed, at_ms }, repeat)
            .await
    }

    async fn on_received(
        &self,
        received: &Received,
        repeat: bool,
    ) -> Result<Vec<Outgoing>, SegmentError> {
        let profile_id = received.profile_id().to_string();
        if profile_id.is_empty() {
            return Err(SegmentError::InvalidArgument(
                "a campaign input without a profile id".to_string(),
            ));
        }
        let running = self.campaigns.get(&self.store).await?;
        let mut profile: Option<ProfileNow> = None;
        let mut outgoing = Vec::new();
        let input = received.input();
        for campaign in &running.campaigns {
            let ours = match received {
                Received::Timer(due) => due.campaign == campaign.name,
                _ => true,
            };
            if !ours || !machine::may_move(campaign, &input) {
                continue;
            }
            let profile = match profile {
                Some(ref read) => read,
                None => &*profile.insert(self.profile_now(received).await?),
            };
            if received.sent_by_a_bot() || profile.is_a_bot() {
                // Campaigns are for people: a crawler moves no journey and gets nothing.
                return Ok(Vec::new());
            }
            outgoing.extend(
                self.advance(campaign, &profile_id, received, profile, repeat)
                    .await?,
            );
        }
        Ok(outgoing)
    }

    /// The profile for `received`: as the event made it, or as stored now; and its
    /// memberships as decided so far.
    async fn profile_now(&self, received: &Received) -> Result<ProfileNow, SegmentError> {
        let profile_id = received.profile_id();
        let view = match received {
            Received::Event { profile_json, .. } => {
                serde_json::from_str(profile_json).map_err(|err| {
                    SegmentError::InvalidArgument(format!("profiles.changed: not a profile: {err}"))
                })?
            }
            _ => match self.store.get(&PROFILES, profile_id.as_bytes()).await? {
                Some(record) => live::stored_change(profile_id.as_bytes(), &record)?
                    .map_or(Value::Null, |(_, view)| view),
                None => Value::Null,
            },
        };
        let segments = live::members(&self.store, profile_id)
            .await?
            .members
            .into_keys()
            .collect();
        Ok(ProfileNow { view, segments })
    }

    /// Moves the journey of `profile_id` through `campaign` on `received`; what to publish.
    async fn advance(
        &self,
        campaign: &Campaign,
        profile_id: &str,
        received: &Received,
        profile: &ProfileNow,
        repeat: bool,
    ) -> Result<Vec<Outgoing>, SegmentError> {
        let key = journey_key(&campaign.name, profile_id);
        let input_id = received.id();
        let input = received.input();
        let now = now_ms();
        let in_segment = |name: &str| profile.segments.iter().any(|segment| segment == name);
        let in_audience = match &campaign.audience {
            Audience::Everyone => true,
            audience => {
                !profile.view.is_null()
                    && machine::in_audience(audience, &profile.view, &in_segment, now)
            }
        };
        // A repeat already applied (the journey may have moved on since, so stepping it
        // again would not tell): publish again what it may not have published.
        if repeat
            && self
                .store
                .mark(&SEGMENTS, &key, input_id.as_bytes())
                .await?
                .is_some()
        {
            return self
                .seen_before(campaign, profile_id, &key, &input_id, repeat)
                .await;
        }
        for _ in 0..ATTEMPTS {
            let record = self.store.get(&SEGMENTS, &key).await?;
            let mut stored = match &record {
                Some(record) => Some(decode_journey(&key, &record.value)?),
                None => None,
            };

            // A timer set short of the horizon, not due yet: set again, if still current.
            if let Input::Timer { transition, due_ms } = input
                && due_ms > now
            {
                let current = stored
                    .as_ref()
                    .is_some_and(|stored| stored.journey.timers.get(&transition) == Some(&due_ms));
                return Ok(if current {
                    self.timer(campaign, profile_id, transition, due_ms)
                        .into_iter()
                        .collect()
                } else {
                    Vec::new()
                });
            }
            let before = stored.as_ref().map(|stored| stored.journey.clone());
            let Some(step) = machine::step(
                campaign,
                before.as_ref(),
                &input,
                in_audience,
                &profile.view,
            ) else {
                return Ok(Vec::new());
            };
            // A profile that has not entered: no journey is kept for it.
            if before.is_none() && step.entered.is_none() {
                return Ok(Vec::new());
            }
            let last_actions: Vec<SentAction> = step
                .actions
                .iter()
                .enumerate()
                .map(|(n, action)| {
                    let (channel, target) = channel_parts(&action.channel);
                    SentAction {
                        send_at: match action.channel {
                            Channel::Email {
                                best_hour: true, ..
                            } => "best_hour".to_string(),
                            _ => String::new(),
                        },
                        untracked: matches!(action.channel, Channel::Email { tracked: false, .. }),
                        state: action.state.clone(),
                        channel: channel.to_string(),
                        target: target.to_string(),
                        params: action.params.clone(),
                        entry: step.journey.entries,
                        at_ms: step.journey.since_ms,
                        key: format!(
                            "{}:{profile_id}:{}:{}:{}:{n}",
                            campaign.name,
                            step.journey.entries,
                            action.state,
                            step.journey.since_ms
                        ),
                    }
                })
                .collect();
            let moved = step.entered.is_some();
            let (sent, suppressed) = stored
                .as_ref()
                .map_or((0, 0), |stored| (stored.sent, stored.suppressed));
            let next = match stored.take() {
                // Put off timers only: what the last move sent is kept.
                Some(stored) if !moved => JourneyRecord {
                    journey: step.journey,
                    ..stored
                },
                _ => JourneyRecord {
                    journey: step.journey,
                    last_input: input_id.clone(),
                    sent: sent + last_actions.len() as u64,
                    suppressed: suppressed + u64::from(step.suppressed),
                    last_actions,
                },
            };
            let value = serde_json::to_vec(&next)
                .map_err(|err| SegmentError::Corrupt(format!("journey: {err}")))?;
            let change = Change {
                value: Some(Bytes::from(value)),
                appends: Vec::new(),
                marks: vec![Mark {
                    id: Bytes::from(input_id.clone()),
                    value: Bytes::new(),
                    ttl: Some(MARK_TTL),
                    if_absent: true,
                }],
            };
            let expect = record
                .as_ref()
                .map_or(cairn_store::Expect::Absent, |record| {
                    cairn_store::Expect::Version(record.version)
                });
            match self
                .store
                .write(&SEGMENTS, change.into_write(key.clone(), expect))
                .await?
            {
                Outcome::Applied { .. } => {
                    tracing::debug!(campaign = %campaign.name, profile_id, input = %input_id, state = %next.journey.state, "journey moved");
                    let timers_before = before.map(|journey| journey.timers).unwrap_or_default();
                    let actions: &[SentAction] = if moved { &next.last_actions } else { &[] };
                    return Ok(self.outputs(
                        campaign,
                        profile_id,
                        actions,
                        &next.journey,
                        Some(&timers_before),
                    ));
                }
                Outcome::Conflict { present_marks, .. } if !present_marks.is_empty() => {
                    return self
                        .seen_before(campaign, profile_id, &key, &input_id, repeat)
                        .await;
                }
                Outcome::Conflict { .. } => continue,
            }
        }
        Err(SegmentError::Busy(format!(
            "journey {} kept changing",
            String::from_utf8_lossy(&key)
        )))
    }

    /// `input_id` changed the journey before: nothing moves again. A repeat publishes
    /// again what that change may not have published: the timers as they are now, and
    /// the actions if it was the last move.
    async fn seen_before(
        &self,
        campaign: &Campaign,
        profile_id: &str,
        key: &[u8],
        input_id: &str,
        repeat: bool,
    ) -> Result<Vec<Outgoing>, SegmentError> {
        if !repeat {
            return Ok(Vec::new());
        }
        let Some(record) = self.store.get(&SEGMENTS, key).await? else {
            return Ok(Vec::new());
        };
        let stored = decode_journey(key, &record.value)?;
        let actions: &[SentAction] = if stored.last_input == input_id {
            &stored.last_actions
        } else {
            &[]
        };
        Ok(self.outputs(campaign, profile_id, actions, &stored.journey, None))
    }

    /// What a change of the journey publishes: `actions`, and the journey's timers (those
    /// not set already as they are in `timers_before`; all when `None`).
    fn outputs(
        &self,
        campaign: &Campaign,
        profile_id: &str,
        actions: &[SentAction],
        journey: &Journey,
        timers_before: Option<&BTreeMap<usize, i64>>,
    ) -> Vec<Outgoing> {
        let partition = self.partitions.of(profile_id);
        let mut outgoing: Vec<Outgoing> = actions
            .iter()
            .map(|action| action_message(&campaign.name, profile_id, partition, action))
            .collect();
        for (transition, due_ms) in &journey.timers {
            if timers_before.is_some_and(|before| before.get(transition) == Some(due_ms)) {
                continue;
            }
            outgoing.extend(self.timer(campaign, profile_id, *transition, *due_ms));
        }
        outgoing
    }

    /// The schedule that brings timer `transition` of the journey back when due (or at
    /// the horizon, if sooner). `None` for a profile id that cannot be a subject token.
    fn timer(
        &self,
        campaign: &Campaign,
        profile_id: &str,
        transition: usize,
        due_ms: i64,
    ) -> Option<Outgoing> {
        if !subjects::is_token(profile_id) {
            tracing::warn!(profile_id, campaign = %campaign.name, "no campaign timer: the profile id cannot be a subject");
            return None;
        }
        let partition = self.partitions.of(profile_id);
        let fire_ms = due_ms.min(now_ms().saturating_add(self.timer_horizon.as_millis() as i64));
        Outgoing::schedule(
            subjects::campaign_timer(partition, &campaign.name, profile_id, transition),
            &subjects::campaign_due(partition),
            fire_ms,
            Bytes::from(
                TimerDue {
                    campaign: campaign.name.clone(),
                    profile_id: profile_id.to_string(),
                    transition: transition as u32,
                    due_ms,
                }
                .encode_to_vec(),
            ),
        )
    }
}

/// The channel's name and its target (template, content, URL).
fn channel_parts(channel: &Channel) -> (&'static str, &str) {
    match channel {
        Channel::Email { template, .. } => ("email", template),
        Channel::Web { content } => ("web", content),
        Channel::Webhook { url } => ("webhook", url),
    }
}

/// The message asking `action`'s channel to act.
fn action_message(
    campaign: &str,
    profile_id: &str,
    partition: u32,
    action: &SentAction,
) -> Outgoing {
    let subject = match action.channel.as_str() {
        "email" => subjects::campaign_sends(partition),
        "web" => subjects::campaign_web(partition),
        _ => subjects::campaign_webhooks(partition),
    };
    let message = ActionMessage {
        campaign: campaign.to_string(),
        profile_id: profile_id.to_string(),
        state: action.state.clone(),
        channel: action.channel.clone(),
        target: action.target.clone(),
        params_json: serde_json::to_string(&action.params).unwrap_or_else(|_| "{}".to_string()),
        entry: action.entry,
        at: Some(timestamp(action.at_ms)),
        idempotency_key: action.key.clone(),
        send_at: action.send_at.clone(),
        untracked: action.untracked,
    };
    let mut headers = async_nats::HeaderMap::new();
    cairn_bus::trace::inject_current(&mut headers);
    Outgoing {
        subject,
        message_id: Some(format!("campaign:{}", action.key)),
        headers,
        payload: Bytes::from(message.encode_to_vec()),
    }
}

impl<S: Store> Handler for CampaignHandler<S> {
    async fn handle(&self, message: &Delivered) -> Handled {
        crate::error::handled(self.on_message(message).await)
    }
}

/// How a campaign is doing, from its journeys.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Profiles with a journey.
    pub profiles: u64,
    /// Entries, over every profile.
    pub entered: u64,
    /// Profiles per state now.
    pub in_state: BTreeMap<String, u64>,
    pub actions_sent: u64,
    pub suppressed: u64,
}

/// The stats of campaign `name`, read from every journey through it (a scan of the
/// segmenter's table).
pub async fn stats<S: Store>(store: &S, name: &str) -> Result<Stats, SegmentError> {
    let prefix = format!("j:{name}:");
    let mut stats = Stats::default();
    let mut cursor = None;
    loop {
        let page = store
            .scan(&SEGMENTS, cairn_store::TokenRange::FULL, cursor, 500)
            .await?;
        for (key, record) in &page.records {
            if !key.starts_with(prefix.as_bytes()) {
                continue;
            }
            let journey = decode_journey(key, &record.value)?;
            stats.profiles += 1;
            stats.entered += u64::from(journey.journey.entries);
            *stats.in_state.entry(journey.journey.state).or_default() += 1;
            stats.actions_sent += journey.sent;
            stats.suppressed += journey.suppressed;
        }
        cursor = page.next;
        if cursor.is_none() {
            return Ok(stats);
        }
    }
}
