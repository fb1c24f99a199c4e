//! What the profile store does with each message of a partition: events, enricher
//! facts, merges and splits. Every change is one atomic write with a mark, so a
//! redelivered message changes nothing; every durable change is announced on
//! `profiles.changed.<partition>`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cairn_bus::worker::{Delivered, Handled, Handler};
use cairn_bus::{Outgoing, Partitions, subjects};
use cairn_proto::event::v1::IdentifiedEvent;
use cairn_proto::identity::v1::MergeRecord;
use cairn_proto::profile::v1::{Facts, ProfileChanged};
use cairn_proto::segment::v1::SegmentChanged;
use cairn_runtime::clock::now_ms;
use cairn_store::{Mark, Store, TimelineEntry, Write};
use opentelemetry::metrics::Counter;
use prost::Message as _;

use crate::error::ProfileError;
use crate::input::event_input;
use crate::profile::{FoldSettings, Identifier, Profile, SessionStamp};
use crate::store::{self, Changed, MARK_TTL, PROFILES, WhenMerged};

/// Counts what the profile store does.
#[derive(Debug, Clone)]
pub struct ProfileMetrics {
    changes: Counter<u64>,
    duplicates: Counter<u64>,
    unchanged_facts: Counter<u64>,
}

impl ProfileMetrics {
    pub fn new(meter: &opentelemetry::metrics::Meter) -> Self {
        Self {
            changes: meter
                .u64_counter("cairn_profile_changes")
                .with_description("Durable profile changes")
                .build(),
            duplicates: meter
                .u64_counter("cairn_profile_duplicates")
                .with_description("Messages already applied (redeliveries)")
                .build(),
            unchanged_facts: meter
                .u64_counter("cairn_profile_unchanged_facts")
                .with_description("Enricher facts the profile already held, skipped without a read")
                .build(),
        }
    }
}

#[derive(Clone)]
pub struct ProfileHandler<S> {
    pub store: S,
    pub fold: Arc<FoldSettings>,
    pub partitions: Partitions,
    pub metrics: ProfileMetrics,
    pub facts_seen: Arc<FactsSeen>,
}

/// The facts this replica last wrote to each profile, by source: an enricher sends a
/// person's facts with each of their events, and most are what the profile holds
/// already (the same device, the same city), which would otherwise cost a read of the
/// profile each. Only the owner of a profile's partition writes its facts, so what it
/// wrote is what the profile holds, until a merge or a split changes the profile (they
/// forget it first) or the partition moves (a replica forgets a partition's profiles
/// when it starts working it).
#[derive(Debug, Default)]
pub struct FactsSeen {
    by_profile: std::sync::Mutex<std::collections::HashMap<String, Vec<(String, u64)>>>,
}

impl FactsSeen {
    /// Profiles remembered at most; past it, everything is forgotten at once.
    const CAPACITY: usize = 200_000;

    fn digest(facts_json: &str) -> u64 {
        subjects::fnv1a64(facts_json.as_bytes())
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Vec<(String, u64)>>> {
        self.by_profile
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `facts_json` from `source` is what was last written to `profile_id`.
    pub fn unchanged(&self, profile_id: &str, source: &str, facts_json: &str) -> bool {
        let digest = Self::digest(facts_json);
        self.lock().get(profile_id).is_some_and(|sources| {
            sources
                .iter()
                .any(|(known, seen)| known == source && *seen == digest)
        })
    }

    pub fn remember(&self, profile_id: &str, source: &str, facts_json: &str) {
        let digest = Self::digest(facts_json);
        let mut by_profile = self.lock();
        if by_profile.len() >= Self::CAPACITY && !by_profile.contains_key(profile_id) {
            by_profile.clear();
        }
        let sources = by_profile.entry(profile_id.to_string()).or_default();
        match sources.iter_mut().find(|(known, _)| known == source) {
            Some(entry) => entry.1 = digest,
            None => sources.push((source.to_string(), digest)),
        }
    }

    pub fn forget(&self, profile_id: &str) {
        self.lock().remove(profile_id);
    }

    /// Forgets the profiles of `partition` (its owner may have written them meanwhile).
    pub fn forget_partition(&self, partitions: Partitions, partition: u32) {
        self.lock()
            .retain(|profile_id, _| partitions.of(profile_id) != partition);
    }
}

fn once(id: String, ttl: Option<Duration>) -> Mark {
    Mark {
        id: Bytes::from(id),
        value: Bytes::new(),
        ttl,
        if_absent: true,
    }
}

/// The announcement of a durable change.
pub fn changed_message(
    partitions: Partitions,
    profile: &Profile,
    version: u64,
    fields: Vec<String>,
    message_id: &str,
    session: Option<&SessionStamp>,
    event: Option<&IdentifiedEvent>,
) -> Outgoing {
    let now = now_ms();
    let changed = ProfileChanged {
        profile_id: profile.id.clone(),
        version,
        changed_fields: fields,
        message_id: message_id.to_string(),
        at: Some(std::time::SystemTime::now().into()),
        profile_json: profile.view_json(now),
        session_id: session.map(|stamp| stamp.id.clone()).unwrap_or_default(),
        session_index: session.map_or(0, |stamp| stamp.index),
        event: event.cloned(),
    };
    let mut headers = async_nats::HeaderMap::new();
    cairn_bus::trace::inject_current(&mut headers);
    Outgoing {
        subject: subjects::profiles_changed(partitions.of(&profile.id)),
        message_id: Some(format!("changed/{}/{version}", profile.id)),
        headers,
        payload: Bytes::from(changed.encode_to_vec()),
    }
}

impl<S: Store> ProfileHandler<S> {
    /// What to announce after [`store::change`]: a change, or, when the message may have
    /// been handled before (a crash between the write and the announcement), the
    /// profile as it is (the stream drops the duplicate if it was announced).
    fn announce(
        &self,
        changed: &Changed,
        message: &Delivered,
        message_id: &str,
        session: Option<&SessionStamp>,
        event: Option<&IdentifiedEvent>,
    ) -> Option<Outgoing> {
        let mut announcement = match changed {
            Changed::Applied {
                profile,
                version,
                fields,
            } if !fields.is_empty() => {
                self.metrics.changes.add(1, &[]);
                Some(changed_message(
                    self.partitions,
                    profile,
                    *version,
                    fields.clone(),
                    message_id,
                    session,
                    event,
                ))
            }
            Changed::AlreadyApplied {
                profile: Some(stored),
            } if message.is_repeat() => Some(changed_message(
                self.partitions,
                &stored.profile,
                stored.version,
                Vec::new(),
                message_id,
                None,
                event,
            )),
            _ => None,
        }?;
        cairn_bus::trace::carry(&message.headers, &mut announcement.headers);
        Some(announcement)
    }

    async fn on_event(&self, message: &Delivered) -> Result<Vec<Outgoing>, ProfileError> {
        let identified = IdentifiedEvent::decode(message.payload.clone())
            .map_err(|err| ProfileError::Unreadable(format!("not an identified event: {err}")))?;
        let input = event_input(&identified).map_err(ProfileError::Unreadable)?;
        if identified.profile_id.is_empty() {
            return Err(ProfileError::Unreadable(
                "the event has no profile id".to_string(),
            ));
        }
        let entry = TimelineEntry {
            at_ms: input.at,
            id: Bytes::from(input.message_id.clone()),
            value: message.payload.clone(),
        };
        let mut stamp = None;
        let changed = store::change(
            &self.store,
            &identified.profile_id,
            WhenMerged::Follow,
            Some(once(format!("e:{}", input.message_id), Some(MARK_TTL))),
            vec![entry],
            |profile| {
                let (fields, session) = profile.apply_event(&input, &self.fold);
                stamp = Some(session);
                Some(fields)
            },
        )
        .await?;
        // Index the event's identifiers: when new to the profile, or again on a repeat
        // (the index write may not have happened before).
        let indexed = match &changed {
            Changed::Applied {
                profile, fields, ..
            } if fields.iter().any(|field| field == "identifiers") => Some(profile),
            Changed::AlreadyApplied {
                profile: Some(stored),
            } if message.is_repeat() => Some(&stored.profile),
            _ => None,
        };
        if let Some(profile) = indexed {
            let identifiers: Vec<Identifier> = input
                .identifiers
                .iter()
                .filter(|identifier| profile.identifiers.contains(identifier))
                .cloned()
                .collect();
            store::index(&self.store, &identifiers, &profile.id).await?;
        }
        if matches!(changed, Changed::AlreadyApplied { .. }) {
            self.metrics.duplicates.add(1, &[]);
        }
        Ok(self
            .announce(
                &changed,
                message,
                &input.message_id,
                stamp.as_ref(),
                Some(&identified),
            )
            .into_iter()
            .collect())
    }

    /// The segmenter's decision that the profile entered or left a segment.
    async fn on_segment(&self, message: &Delivered) -> Result<Vec<Outgoing>, ProfileError> {
        let changed = SegmentChanged::decode(message.payload.clone())
            .map_err(|err| ProfileError::Unreadable(format!("not a segment change: {err}")))?;
        if changed.profile_id.is_empty() || changed.segment.is_empty() {
            return Err(ProfileError::Unreadable(
                "a segment change needs a profile id and a segment".to_string(),
            ));
        }
        let at = changed
            .at
            .as_ref()
            .map_or_else(now_ms, cairn_runtime::clock::timestamp_ms);
        let message_id = format!(
            "s:{}:{}:{}",
            changed.segment, changed.profile_version, changed.entered
        );
        // Memberships belong to the profile they were decided for: one deleted since
        // is not brought back (the change would find an empty new profile: declined in
        // the same read-modify-write), and one merged since keeps nothing (the profile it
        // went into has memberships of its own).
        let outcome = match store::change(
            &self.store,
            &changed.profile_id,
            WhenMerged::Refuse,
            Some(once(message_id.clone(), Some(MARK_TTL))),
            Vec::new(),
            |profile| {
                let deleted = profile.identifiers.is_empty() && profile.first_seen.is_none();
                (!deleted).then(|| profile.set_segment(&changed.segment, changed.entered, at))
            },
        )
        .await
        {
            Err(ProfileError::Stale(_)) => return Ok(Vec::new()),
            outcome => outcome?,
        };
        Ok(self
            .announce(&outcome, message, &message_id, None, None)
            .into_iter()
            .collect())
    }

    async fn on_facts(&self, message: &Delivered) -> Result<Vec<Outgoing>, ProfileError> {
        let facts = Facts::decode(message.payload.clone())
            .map_err(|err| ProfileError::Unreadable(format!("not facts: {err}")))?;
        if facts.source.is_empty() || facts.profile_id.is_empty() {
            return Err(ProfileError::Unreadable(
                "facts need a source and a profile id".to_string(),
            ));
        }
        // What this replica wrote last time changes nothing, and is not even read (a
        // message handled before might still owe its announcement, so those go the long
        // way). Only what was written is remembered, so it was readable.
        if !message.is_repeat()
            && self
                .facts_seen
                .unchanged(&facts.profile_id, &facts.source, &facts.facts_json)
        {
            self.metrics.unchanged_facts.add(1, &[]);
            return Ok(Vec::new());
        }
        let parsed: serde_json::Value = serde_json::from_str(&facts.facts_json)
            .map_err(|err| ProfileError::Unreadable(format!("facts_json: {err}")))?;
        let serde_json::Value::Object(map) = parsed else {
            return Err(ProfileError::Unreadable(
                "facts_json: must be a JSON object".to_string(),
            ));
        };
        let at = facts
            .at
            .as_ref()
            .map_or_else(now_ms, cairn_runtime::clock::timestamp_ms);
        let changed = store::change(
            &self.store,
            &facts.profile_id,
            WhenMerged::Follow,
            Some(once(
                format!("f:{}:{}", facts.source, facts.message_id),
                Some(MARK_TTL),
            )),
            Vec::new(),
            |profile| Some(profile.apply_facts(&facts.source, &map, at)),
        )
        .await?;
        // Only facts written to the profile they name (not followed into the one it
        // was merged into, which has facts of its own).
        if let Changed::Applied { profile, .. } = &changed
            && profile.id == facts.profile_id
        {
            self.facts_seen
                .remember(&facts.profile_id, &facts.source, &facts.facts_json);
        }
        Ok(self
            .announce(&changed, message, &facts.message_id, None, None)
            .into_iter()
            .collect())
    }

    /// `from` becomes part of `into`: first `from` is marked merged (so its late events go
    /// to `into`), then its document, timeline and identifiers move, each step once.
    async fn on_merge(&self, message: &Delivered) -> Result<Vec<Outgoing>, ProfileError> {
        let merge = MergeRecord::decode(message.payload.clone())
            .map_err(|err| ProfileError::Unreadable(format!("not a merge: {err}")))?;
        let (from, into) = (merge.from_profile_id, merge.into_profile_id);
        if from.is_empty() || into.is_empty() || from == into {
            return Err(ProfileError::Unreadable(
                "a merge needs two different profiles".to_string(),
            ));
        }
        self.facts_seen.forget(&from);
        self.facts_seen.forget(&into);
        // 1. Freeze `from`: it now points at `into` and keeps its data for step 2.
        let mut merged_elsewhere = None;
        self.store
            .update(&PROFILES, Bytes::from(from.clone()), 50, |current| {
                let mut profile = match current {
                    Some(record) => store::decode(&record.value).ok()?,
                    None => Profile::new(&from),
                };
                match &profile.merged_into {
                    Some(other) if *other != into => {
                        merged_elsewhere = Some(other.clone());
                        return None;
                    }
                    Some(_) => return None, // done before
                    None => {}
                }
                profile.merged_into = Some(into.clone());
                Some(cairn_store::Change::set(store::encode(&profile).ok()?))
            })
            .await?;
        if let Some(other) = merged_elsewhere {
            return Err(ProfileError::Stale(format!(
                "merging {from} into {into}: {from} was merged into {other}"
            )));
        }
        let (frozen, frozen_version) = match self.store.get(&PROFILES, from.as_bytes()).await? {
            Some(record) => (store::decode(&record.value)?, record.version),
            None => (Profile::new(&from), 0),
        };
        // 2. Take its document in, once (`into` may itself have been merged on since: the
        //    mark is looked for along the way).
        let changed = store::change(
            &self.store,
            &into,
            WhenMerged::Follow,
            Some(once(format!("merge:{from}"), None)),
            Vec::new(),
            |profile| {
                profile.absorb(&frozen, &self.fold);
                Some(vec!["merged_from".to_string(), "identifiers".to_string()])
            },
        )
        .await?;
        // 3. Its timeline, with the marks of its events (a late redelivery of one of them
        //    must not count twice), and its identifiers. Appends, marks and index entries
        //    are idempotent, so this part is simply done again on a repeat.
        let survivor = match &changed {
            Changed::Applied { profile, .. } => profile.id.clone(),
            Changed::AlreadyApplied {
                profile: Some(stored),
            } => stored.profile.id.clone(),
            _ => store::read(&self.store, &into)
                .await?
                .map_or(into.clone(), |stored| stored.profile.id),
        };
        let mut cursor = None;
        loop {
            let page = self
                .store
                .timeline(&PROFILES, from.as_bytes(), cursor, 400)
                .await?;
            if !page.entries.is_empty() {
                let mut write = Write::new(Bytes::from(survivor.clone()));
                for entry in &page.entries {
                    write.marks.push(Mark {
                        id: Bytes::from(format!("e:{}", String::from_utf8_lossy(&entry.id))),
                        value: Bytes::new(),
                        ttl: Some(MARK_TTL),
                        if_absent: false,
                    });
                }
                write.appends = page.entries;
                self.store.write(&PROFILES, write).await?;
            }
            cursor = page.next;
            if cursor.is_none() {
                break;
            }
        }
        store::index(&self.store, &frozen.identifiers, &survivor).await?;
        let mut outgoing: Vec<Outgoing> = self
            .announce(&changed, message, &merge.message_id, None, None)
            .into_iter()
            .collect();
        // `from` is no one any more: said once (the stream drops a repeat), so that what
        // follows profiles (segment memberships) lets it go.
        if frozen_version > 0 {
            outgoing.push(changed_message(
                self.partitions,
                &frozen,
                frozen_version,
                vec!["merged_into".to_string()],
                &merge.message_id,
                None,
                None,
            ));
        }
        Ok(outgoing)
    }

    /// Identifiers leave `from` for `into`: `into` takes the events of those identifiers
    /// (on top of whatever it has already), then `from` is folded again from the rest of
    /// its timeline. Each side is written once, with a mark; a repeat redoes the index and
    /// the announcements.
    async fn on_split(&self, message: &Delivered) -> Result<Vec<Outgoing>, ProfileError> {
        let split = MergeRecord::decode(message.payload.clone())
            .map_err(|err| ProfileError::Unreadable(format!("not a split: {err}")))?;
        let (from, into) = (split.from_profile_id.clone(), split.into_profile_id.clone());
        self.facts_seen.forget(&from);
        self.facts_seen.forget(&into);
        let moved: BTreeSet<Identifier> = split
            .identifiers
            .iter()
            .map(|identifier| Identifier {
                kind: identifier.r#type.clone(),
                value: identifier.value.clone(),
            })
            .collect();
        if from.is_empty() || into.is_empty() || from == into || moved.is_empty() {
            return Err(ProfileError::Unreadable(
                "a split needs two different profiles and identifiers".to_string(),
            ));
        }
        // The events of `from`, oldest first, each to the side of its identifiers.
        let mut entries = Vec::new();
        let mut cursor = None;
        loop {
            let page = self
                .store
                .timeline(&PROFILES, from.as_bytes(), cursor, 500)
                .await?;
            entries.extend(page.entries);
            cursor = page.next;
            if cursor.is_none() {
                break;
            }
        }
        entries.sort_by_key(|entry| entry.at_ms);
        let mut leaving = Vec::new();
        let mut staying = Vec::new();
        for entry in entries {
            let Ok(identified) = IdentifiedEvent::decode(entry.value.clone()) else {
                continue;
            };
            let Ok(input) = event_input(&identified) else {
                continue;
            };
            let goes = !input.identifiers.is_empty()
                && input
                    .identifiers
                    .iter()
                    .all(|identifier| moved.contains(identifier));
            if goes {
                leaving.push((entry, input))
            } else {
                staying.push(input)
            }
        }
        let mut split_out = Profile::new(&into);
        split_out.identifiers = moved.iter().cloned().collect();
        for (_, input) in &leaving {
            split_out.apply_event(input, &self.fold);
        }
        let at_ms = split
            .at
            .as_ref()
            .map_or(0, cairn_runtime::clock::timestamp_ms);
        let mark = format!("split:{from}:{into}:{at_ms}");
        // 1. `into` takes what leaves, with those events' timeline entries. It may be a
        //    profile merged into `from` before (it comes back to life), or one that
        //    already has events of its own.
        let appends: Vec<TimelineEntry> = leaving
            .iter()
            .map(|(entry, _)| entry.clone())
            .take(900)
            .collect();
        let taken = store::change(
            &self.store,
            &into,
            WhenMerged::Revive,
            Some(once(mark.clone(), None)),
            appends,
            |profile| {
                profile.absorb(&split_out, &self.fold);
                Some(vec!["identifiers".to_string(), "split".to_string()])
            },
        )
        .await?;
        // 2. `from` keeps the rest.
        let fold = self.fold.clone();
        let kept = store::change(
            &self.store,
            &from,
            WhenMerged::Refuse,
            Some(once(mark, None)),
            Vec::new(),
            |profile| {
                let mut rebuilt = Profile::new(&profile.id);
                for input in &staying {
                    rebuilt.apply_event(input, &fold);
                }
                rebuilt.identifiers = profile
                    .identifiers
                    .iter()
                    .filter(|identifier| !moved.contains(identifier))
                    .cloned()
                    .collect();

                rebuilt.facts = profile.facts.clone();
                rebuilt.segments = profile.segments.clone();
                rebuilt.merged_from = profile
                    .merged_from
                    .iter()
                    .filter(|id| **id != into)
                    .cloned()
                    .collect();
                *profile = rebuilt;
                Some(vec!["identifiers".to_string(), "split".to_string()])
            },
        )
        .await?;
        let survivor = match &taken {
            Changed::Applied { profile, .. } => profile.id.clone(),
            Changed::AlreadyApplied {
                profile: Some(stored),
            } => stored.profile.id.clone(),
            _ => into.clone(),
        };
        let moved: Vec<Identifier> = moved.into_iter().collect();
        store::index(&self.store, &moved, &survivor).await?;
        Ok([
            self.announce(&taken, message, &split.message_id, None, None),
            self.announce(&kept, message, &split.message_id, None, None),
        ]
        .into_iter()
        .flatten()
        .collect())
    }
}

impl<S: Store> Handler for ProfileHandler<S> {
    async fn handle(&self, message: &Delivered) -> Handled {
        let subject = message.subject.as_str();
        let result = if subject.starts_with("events.identified.") {
            self.on_event(message).await
        } else if subject.starts_with("profile.facts.") {
            self.on_facts(message).await
        } else if subject.starts_with("segments.changed.") {
            self.on_segment(message).await
        } else if subject.starts_with("profiles.merged.") {
            self.on_merge(message).await
        } else if subject.starts_with("profiles.split.") {
            self.on_split(message).await
        } else {
            Err(ProfileError::Unreadable(format!(
                "unexpected subject {subject}"
            )))
        };
        match result {
            Ok(outgoing) => Handled::Publish(outgoing),
            Err(err) if err.is_transient() => Handled::Retry {
                reason: err.to_string(),
                delay: Duration::from_millis(500),
            },
            Err(err) => Handled::DeadLetter {
                reason: err.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod facts_seen_tests {
    use super::*;

    #[test]
    fn facts_seen_are_forgotten_by_profile_and_by_partition() {
        let seen = FactsSeen::default();
        let device = r#"{"browser":"Firefox"}"#;
        assert!(!seen.unchanged("p1", "device", device));
        seen.remember("p1", "device", device);
        seen.remember("p1", "geo", r#"{"city":"London"}"#);
        assert!(seen.unchanged("p1", "device", device));
        assert!(!seen.unchanged("p1", "device", r#"{"browser":"Safari"}"#));
        assert!(!seen.unchanged("p1", "activity", device));
        assert!(!seen.unchanged("p2", "device", device));
        seen.remember("p1", "device", r#"{"browser":"Safari"}"#);
        assert!(!seen.unchanged("p1", "device", device));
        seen.forget("p1");
        assert!(!seen.unchanged("p1", "geo", r#"{"city":"London"}"#));

        let partitions = Partitions::new(16);
        seen.remember("p1", "device", device);
        seen.remember("p2", "device", device);
        seen.forget_partition(partitions, partitions.of("p1"));
        assert!(!seen.unchanged("p1", "device", device));
        assert_eq!(
            seen.unchanged("p2", "device", device),
            partitions.of("p2") != partitions.of("p1")
        );
    }
}
