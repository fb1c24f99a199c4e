//! Keeping memberships live: every `profiles.changed` re-evaluates the segments the
//! change can affect (all of them when the segments changed since the profile was last
//! evaluated), and each profile entering or leaving a segment is announced on
//! `segments.changed.<partition>` (`segments.changed.<partition>.synced` when the
//! segment is synced to a webhook, for [`crate::activation`]). A profile in at least
//! one segment that gained identifiers is announced on `segments.identified.<partition>`
//! (for the personalization answers, [`crate::personalization`]).
//!
//! A profile's memberships are one record (`m:<profile id>`) holding the profile
//! version they were decided on: an older or repeated change is not evaluated again
//! (changes of one profile may arrive out of order when replicas share the consumer),
//! and a repeated change announces again what it decided (the stream drops what was
//! announced before).
//!
//! Date math (`last_seen > "now-7d"`) flips with no change to the profile: after each
//! evaluation, the instant the next condition flips is scheduled as a NATS message
//! schedule for the profile (`segments.timer.<p>.<profile>`, replacing any earlier one)
//! unless a timer at or before that instant is pending already (so a profile changing
//! often does not reschedule on every change); when due, it comes back on
//! `segments.due.<p>`, and the profile, read from the profile store as it is then, is
//! evaluated against every segment and its next timer set. A timer that comes early
//! (the boundary moved on since) only sets the next one.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use cairn_bus::worker::{Delivered, Handled, Handler};
use cairn_bus::{Outgoing, Partitions, subjects};
use cairn_proto::profile::v1::{ProfileChanged, ProfileDeleted};
use cairn_proto::segment::v1::SegmentChanged;
use cairn_runtime::clock::{now_ms, timestamp};

use cairn_store::{Change, Store};
use prost::Message as _;
use serde::{Deserialize, Serialize};

use cairn_profile_store::store::PROFILES;

use crate::definitions::{self, SEGMENTS};
use crate::error::SegmentError;
use crate::segments::Transition;

const ATTEMPTS: u32 = 50;
/// The furthest ahead a timer is ever set.
const MAX_TIMER_HORIZON: Duration = Duration::from_secs(3 * 86_400);

/// A profile's memberships, and what they were decided on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Members {
    /// The profile version last evaluated.
    pub version: u64,
    /// The version of the saved segments it was evaluated against.
    pub definitions: u64,
    /// Segment → since when (ms).
    pub members: BTreeMap<String, i64>,
    /// What the last evaluation that moved the profile decided, to announce again on a
    /// repeat (its announcements may not have gone out), and the version it was on.
    pub last: Vec<(String, bool)>,
    #[serde(default)]
    pub last_version: u64,
    /// When the pending timer is due (ms), if one is.
    #[serde(default)]
    pub timer_at: Option<i64>,
}

pub fn members_key(profile_id: &str) -> Bytes {
    Bytes::from(format!("m:{profile_id}"))
}

/// The memberships of `profile_id` as last decided (none when never evaluated).
pub async fn members<S: Store>(store: &S, profile_id: &str) -> Result<Members, SegmentError> {
    match store.get(&SEGMENTS, &members_key(profile_id)).await? {
        Some(record) => serde_json::from_slice(&record.value)
            .map_err(|err| SegmentError::Corrupt(format!("memberships of {profile_id}: {err}"))),
        None => Ok(Members::default()),
    }
}

/// Deletes every profile's memberships, keeping the saved segments; returns how many
/// were deleted. For a rebuild, which makes the profiles again (with new versions):
/// they are all evaluated anew as they are announced.
pub async fn forget_all<S: Store>(store: &S) -> Result<u64, SegmentError> {
    Ok(cairn_store::delete_all(store, &SEGMENTS, |key| !key.starts_with(b"m:")).await?)
}

#[derive(Clone)]
pub struct LiveHandler<S> {
    pub store: S,
    pub partitions: Partitions,
    /// The furthest ahead a timer is set (below the SEGMENTS stream's age limit, which
    /// would drop a schedule before it fires): a later flip is reached by a chain of
    /// timers, each evaluating the profile again.
    pub timer_horizon: Duration,
    /// The saved segments.
    pub definitions: definitions::Cache,
}

impl<S: Store> LiveHandler<S> {
    /// `stream_max_age`: how long the SEGMENTS stream keeps a message.
    pub fn new(store: S, partitions: Partitions, stream_max_age: Duration) -> Self {
        Self {
            store,
            partitions,
            timer_horizon: (stream_max_age / 2).min(MAX_TIMER_HORIZON),
            definitions: definitions::Cache::default(),
        }
    }

    async fn on_change(
        &self,
        message: &Delivered,
        due: bool,
    ) -> Result<Vec<Outgoing>, SegmentError> {
        let changed = ProfileChanged::decode(message.payload.clone())
            .map_err(|err| SegmentError::InvalidArgument(format!("not a profile change: {err}")))?;
        if due {
            return self.on_due(&changed.profile_id, message.is_repeat()).await;
        }
        if changed.profile_id.is_empty() || changed.profile_json.is_empty() {
            return Err(SegmentError::InvalidArgument(
                "a profile change needs the profile id and the profile".to_string(),
            ));
        }
        let profile: serde_json::Value = serde_json::from_str(&changed.profile_json)
            .map_err(|err| SegmentError::InvalidArgument(format!("profile_json: {err}")))?;
        let trigger = Trigger::Change {
            repeat: message.is_repeat(),
        };
        // A profile merged into another is no one any more: its memberships end.
        let merged = profile
            .get("merged_into")
            .is_some_and(|into| !into.is_null());
        let profile = (!merged).then_some(&profile);
        self.decide(&changed, profile, trigger, 0).await
    }

    /// A profile was deleted: its memberships end, for good (the record stays, empty, at
    /// the last version, so that no late change brings them back).
    async fn on_deleted(&self, message: &Delivered) -> Result<Vec<Outgoing>, SegmentError> {
        let deleted = ProfileDeleted::decode(message.payload.clone())
            .map_err(|err| SegmentError::InvalidArgument(format!("not a deletion: {err}")))?;
        if deleted.profile_id.is_empty() {
            return Err(SegmentError::InvalidArgument(
                "a deletion needs the profile id".to_string(),
            ));
        }
        let changed = ProfileChanged {
            profile_id: deleted.profile_id,
            version: u64::MAX,
            ..ProfileChanged::default()
        };
        let trigger = Trigger::Change {
            repeat: message.is_repeat(),
        };
        self.decide(&changed, None, trigger, 0).await
    }

    /// A timer of `profile_id` came due: its profile as stored now, against every segment.
    async fn on_due(&self, profile_id: &str, repeat: bool) -> Result<Vec<Outgoing>, SegmentError> {
        let Some(record) = self.store.get(&PROFILES, profile_id.as_bytes()).await? else {
            return Ok(Vec::new()); // deleted meanwhile
        };
        match stored_change(profile_id.as_bytes(), &record)? {
            Some((changed, profile)) => {
                self.decide(&changed, Some(&profile), Trigger::Due { repeat }, 0)
                    .await
            }
            None => Ok(Vec::new()), // merged into another meanwhile
        }
    }

    /// Decides `profile`'s memberships (as announced in `changed`) against the saved
    /// segments (at least of version `definitions`), keeps them, and returns the
    /// announcements of what entered or left, and the timer for the next date-math flip.
    /// `profile` is `None` when the profile is gone (merged into another, or deleted):
    /// every membership ends.
    pub(crate) async fn decide(
        &self,
        changed: &ProfileChanged,
        profile: Option<&serde_json::Value>,
        trigger: Trigger,
        definitions: u64,
    ) -> Result<Vec<Outgoing>, SegmentError> {
        let mut at_least = definitions;
        for _ in 0..3 {
            let (loaded, version) = self.definitions.get(&self.store, at_least).await?;
            match self
                .decide_on(&loaded, version, changed, profile, trigger)
                .await?
            {
                Decided::Announce(outgoing) => return Ok(outgoing),
                // Another replica (or a batch run) decided on newer segments than these.
                Decided::Stale { newer } => at_least = newer,
            }
        }
        Err(SegmentError::Busy("the segments kept changing".to_string()))
    }

    async fn decide_on(
        &self,
        loaded: &definitions::Loaded,
        definitions_version: u64,
        changed: &ProfileChanged,
        profile: Option<&serde_json::Value>,
        trigger: Trigger,
    ) -> Result<Decided, SegmentError> {
        let set = &loaded.set;
        let now = now_ms();
        let horizon = now.saturating_add(self.timer_horizon.as_millis() as i64);
        let repeat = trigger.is_repeat();
        // What to announce, and the profile version it was decided on.
        let mut decided: Option<(u64, Vec<(String, bool)>)> = None;
        let mut schedule = None;
        let mut damaged = None;
        let mut newer = None;
        let mut is_member = false;
        self.store
            .update(
                &SEGMENTS,
                members_key(&changed.profile_id),
                ATTEMPTS,
                |current| {
                    (decided, schedule, is_member) = (None, None, false);
                    let mut members: Members = match current {
                        Some(record) => match serde_json::from_slice(&record.value) {
                            Ok(members) => members,
                            Err(err) => {
                                damaged = Some(SegmentError::Corrupt(format!(
                                    "memberships of {}: {err}",
                                    changed.profile_id
                                )));
                                return None;
                            }
                        },
                        None => Members::default(),
                    };
                    newer =
                        (members.definitions > definitions_version).then_some(members.definitions);
                    if newer.is_some() {
                        return None;
                    }
                    let same_segments = members.definitions == definitions_version;
                    let is_due = matches!(trigger, Trigger::Due { .. });
                    let decided_before = changed.version < members.version
                        || (changed.version == members.version && same_segments && !is_due);
                    if decided_before {
                        // This may be a repeat whose announcements did not go out.
                        if repeat {
                            decided = Some((members.last_version, members.last.clone()));
                        }
                        return None;
                    }
                    // Only the segments reading what changed, when this change follows
                    // the last one evaluated; after a gap (changes out of order, one
                    // dead-lettered), every segment.
                    let only_changed = matches!(trigger, Trigger::Change { .. })
                        && same_segments
                        && changed.version == members.version + 1
                        && !changed.changed_fields.is_empty();
                    let fields = only_changed.then_some(changed.changed_fields.as_slice());
                    let transitions: Vec<Transition> = match profile {
                        // Segments changed since: the memberships of deleted ones end.
                        Some(profile) if !same_segments => {
                            let mut ended = set.forget_deleted(&mut members.members);
                            ended.extend(set.evaluate(profile, None, &mut members.members, now));
                            ended
                        }
                        Some(profile) => set.evaluate(profile, fields, &mut members.members, now),
                        None => std::mem::take(&mut members.members)
                            .into_keys()
                            .map(|segment| Transition {
                                segment,
                                entered: false,
                            })
                            .collect(),
                    };
                    if !transitions.is_empty() {
                        members.last = transitions
                            .into_iter()
                            .map(|transition| (transition.segment, transition.entered))
                            .collect();
                        members.last_version = changed.version;
                        decided = Some((members.last_version, members.last.clone()));
                    } else if repeat {
                        decided = Some((members.last_version, members.last.clone()));
                    }
                    members.version = changed.version;
                    members.definitions = definitions_version;
                    is_member = !members.members.is_empty();
                    // A timer that came due is used up, whatever the clocks say.
                    let pending = members.timer_at.filter(|at| *at > now && !is_due);
                    let next = profile
                        .and_then(|profile| set.next_change(profile, now))
                        .map(|next| next.min(horizon));
                    schedule = match (next, pending) {
                        (Some(next), Some(pending)) if pending <= next => None,
                        (next, _) => next,
                    };
                    members.timer_at = if profile.is_some() {
                        schedule.or(pending)
                    } else {
                        None
                    };
                    let value = serde_json::to_vec(&members).ok()?;
                    Some(Change::set(value))
                },
            )
            .await?;
        if let Some(err) = damaged {
            return Err(err);
        }
        if let Some(newer) = newer {
            return Ok(Decided::Stale { newer });
        }
        let partition = self.partitions.of(&changed.profile_id);
        let (version, decided) = decided.unwrap_or_default();
        let mut outgoing: Vec<Outgoing> = decided
            .into_iter()
            .map(|(segment, entered)| {
                let announcement = SegmentChanged {
                    profile_id: changed.profile_id.clone(),
                    segment: segment.clone(),
                    entered,
                    at: Some(timestamp(now)),
                    profile_version: version,
                };
                let mut headers = async_nats::HeaderMap::new();
                cairn_bus::trace::inject_current(&mut headers);
                let synced = loaded
                    .definitions
                    .segments
                    .get(&segment)
                    .is_some_and(|definition| definition.webhook.is_some());
                Outgoing {
                    subject: subjects::segments_changed(partition, synced),
                    message_id: Some(format!(
                        "segment:{}:{segment}:{}:{entered}",
                        changed.profile_id, version
                    )),
                    headers,
                    payload: Bytes::from(announcement.encode_to_vec()),
                }
            })
            .collect();
        if let Some(at) = schedule
            && let Some(timer) = timer(partition, &changed.profile_id, at)
        {
            outgoing.push(timer);
        }
        let identified = changed
            .changed_fields
            .iter()
            .any(|field| field == "identifiers");
        if is_member && identified && matches!(trigger, Trigger::Change { .. }) {
            outgoing.push(Outgoing {
                subject: subjects::segments_identified(partition),
                message_id: Some(format!(
                    "identified:{}:{}",
                    changed.profile_id, changed.version
                )),
                headers: async_nats::HeaderMap::new(),
                payload: Bytes::from(
                    ProfileChanged {
                        profile_id: changed.profile_id.clone(),
                        version: changed.version,
                        ..ProfileChanged::default()
                    }
                    .encode_to_vec(),
                ),
            });
        }
        Ok(Decided::Announce(outgoing))
    }
}

enum Decided {
    Announce(Vec<Outgoing>),
    Stale { newer: u64 },
}

/// What made the segmenter look at a profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// A `profiles.changed`; `repeat` when it may have been handled before.
    Change { repeat: bool },
    /// A timer came due: every segment again, on the profile as stored now.
    Due { repeat: bool },
    /// A batch run over every profile.
    Batch,
}

impl Trigger {
    fn is_repeat(self) -> bool {
        match self {
            Trigger::Change { repeat } | Trigger::Due { repeat } => repeat,
            Trigger::Batch => false,
        }
    }
}

/// The schedule that brings `profile_id` back on `segments.due.<partition>` at `at_ms`
/// (rounded up to the second). `None` for a profile id that cannot be a subject token.
fn timer(partition: u32, profile_id: &str, at_ms: i64) -> Option<Outgoing> {
    if !subjects::is_token(profile_id) {
        tracing::warn!(
            profile_id,
            "no segment timer: the profile id cannot be a subject"
        );
        return None;
    }
    Outgoing::schedule(
        subjects::segments_timer(partition, profile_id),
        &subjects::segments_due(partition),
        at_ms,
        Bytes::from(
            ProfileChanged {
                profile_id: profile_id.to_string(),
                ..ProfileChanged::default()
            }
            .encode_to_vec(),
        ),
    )
}

/// A stored profile record as a change to decide on (version: the record's), with its
/// view now; `None` when the profile was merged into another.
pub(crate) fn stored_change(
    key: &[u8],
    record: &cairn_store::Versioned,
) -> Result<Option<(ProfileChanged, serde_json::Value)>, SegmentError> {
    let profile = cairn_profile_store::store::decode(&record.value).map_err(|err| {
        SegmentError::Corrupt(format!("profile {}: {err}", String::from_utf8_lossy(key)))
    })?;
    if profile.merged_into.is_some() {
        return Ok(None);
    }
    let now = now_ms();
    let view = serde_json::to_value(profile.view(now))
        .map_err(|err| SegmentError::Corrupt(format!("profile view: {err}")))?;
    let changed = ProfileChanged {
        profile_id: profile.id.clone(),
        version: record.version,
        changed_fields: Vec::new(),
        message_id: format!("stored/{}/{}", profile.id, record.version),
        at: Some(timestamp(now)),
        profile_json: String::new(),
        session_id: String::new(),
        session_index: 0,
        event: None,
    };
    Ok(Some((changed, view)))
}

impl<S: Store> LiveHandler<S> {
    /// What a profile change, a due timer or a deletion changes in the memberships.
    pub(crate) async fn on_message(
        &self,
        message: &Delivered,
    ) -> Result<Vec<Outgoing>, SegmentError> {
        if message.subject == subjects::PROFILES_DELETED {
            self.on_deleted(message).await
        } else {
            let due = message.subject.starts_with("segments.due.");
            self.on_change(message, due).await
        }
    }
}

impl<S: Store> Handler for LiveHandler<S> {
    async fn handle(&self, message: &Delivered) -> Handled {
        crate::error::handled(self.on_message(message).await)
    }
}
