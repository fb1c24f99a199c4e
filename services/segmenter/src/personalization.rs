//! Keeping the personalization answers warm: every segment change the segmenter
//! announced (`segments.changed.*`) and every web campaign action (`campaign.web.*`)
//! goes into the profile's answer in the PERSONALIZATION bucket (see
//! [`cairn_bus::personalization`]), which the collector's `GET /v1/personalize` reads.
//! Merges move the answer to the survivor, deletions remove it with the keys leading
//! to it (`profiles.merged.*`, `profiles.deleted`).
//!
//! A profile in a segment that gains identifiers (a merge, an identify) is announced on
//! `segments.identified.*` by the live path, and the keys of its new ids are written.
//!
//! Three durable consumers shared by the replicas, apart from the live path so that
//! answering never slows deciding. An answer is changed by compare-and-set on its key
//! revision, starting from the answer as this replica wrote it last when it did (read
//! again when the compare-and-set finds another replica changed it since); a segment
//! change older than the one kept (by profile version, then time) and a web action
//! older than the one kept for its campaign change nothing, so the order messages
//! arrive in does not matter and a redelivery is harmless.
//!
//! An answer starts with the profile's first segment entered or web content; each
//! change to it also writes the keys of the anonymous and user ids the profile has
//! gained since (read from the profile store). A profile in a segment that gains ids
//! (an identify, a merge) is announced on `segments.identified.*` by the live path, and
//! its new ids are pointed at its answer then; one with web content only, at its next
//! change (the id it was first seen with leads to it meanwhile).

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::jetstream::{consumer, kv};
use bytes::Bytes;
use cairn_bus::personalization::{LOOKUP_TYPES, identifier_key, profile_key};
use cairn_bus::worker::{Delivered, Handled, Handler};
use cairn_bus::{BusError, subjects};
use cairn_proto::campaign::v1::Action;
use cairn_proto::identity::v1::{Identifier, MergeRecord, merge_record};
use cairn_proto::personalize::v1::{Answer, Membership, WebContent};
use cairn_proto::profile::v1::{ProfileChanged, ProfileDeleted};
use cairn_proto::segment::v1::SegmentChanged;
use cairn_runtime::clock::timestamp_ms;
use cairn_runtime::error::{Classify as _, ErrorKind};
use cairn_store::Store;
use prost::Message as _;

use crate::campaigns::definition::render;
use crate::error::SegmentError;

/// The service name of the consumers and of their dead letters.
pub const SERVICE: &str = "segmenter_personalization";

/// Tries at an answer while another replica keeps changing it.
const ATTEMPTS: u32 = 20;

/// The three durable consumers: (stream, config).
pub fn consumer_configs() -> [(&'static str, consumer::pull::Config); 3] {
    let config = |name: &str, what: &str, filters: &[&str]| consumer::pull::Config {
        durable_name: Some(format!("{SERVICE}_{name}")),
        description: Some(format!("Segmenter: personalization answers from {what}")),
        filter_subjects: filters.iter().map(|filter| filter.to_string()).collect(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: cairn_bus::worker::ACK_WAIT,
        ..Default::default()
    };
    [
        (
            cairn_bus::streams::SEGMENTS,
            config(
                "segments",
                "segment changes",
                &["segments.changed.>", "segments.identified.>"],
            ),
        ),
        (
            cairn_bus::streams::CAMPAIGNS,
            config("web", "web campaign content", &["campaign.web.>"]),
        ),
        (
            cairn_bus::streams::PROFILES,
            config(
                "profiles",
                "merges and deletions",
                &[&subjects::profiles_merged_all(), subjects::PROFILES_DELETED],
            ),
        ),
    ]
}

/// Writes the answers; cloned into each consumer's tasks.
#[derive(Clone)]
pub struct AnswerWriter<S> {
    pub store: S,
    pub bucket: kv::Store,
    written: Arc<Written>,
}

impl<S> AnswerWriter<S> {
    pub fn new(store: S, bucket: kv::Store) -> Self {
        Self {
            store,
            bucket,
            written: Arc::default(),
        }
    }
}

/// The answers this replica wrote last, with their revisions: a profile's segment
/// changes come a few at a time, and each would otherwise read back the answer just
/// written (a request to NATS). Only a starting point: the write is a compare-and-set
/// on the revision, so an answer another replica changed since is read again.
#[derive(Debug, Default)]
pub struct Written {
    by_key: std::sync::Mutex<HashMap<String, (Answer, u64)>>,
}

impl Written {
    /// Answers remembered at most; past it, everything is forgotten at once.
    const CAPACITY: usize = 100_000;

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Answer, u64)>> {
        self.by_key
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, key: &str) -> Option<(Answer, u64)> {
        self.lock().get(key).cloned()
    }

    fn remember(&self, key: &str, answer: Answer, revision: u64) {
        let mut by_key = self.lock();
        if by_key.len() >= Self::CAPACITY && !by_key.contains_key(key) {
            by_key.clear();
        }
        by_key.insert(key.to_string(), (answer, revision));
    }

    fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}

fn unavailable(what: &str, err: impl std::fmt::Display) -> SegmentError {
    SegmentError::Bus(BusError::Unavailable(format!(
        "{}: {what}: {err}",
        cairn_bus::personalization::BUCKET
    )))
}

fn unreadable(what: &str, err: prost::DecodeError) -> SegmentError {
    SegmentError::InvalidArgument(format!("not {what}: {err}"))
}

impl<S: Store> AnswerWriter<S> {
    async fn on_message(&self, message: &Delivered) -> Result<(), SegmentError> {
        let payload = message.payload.clone();
        if message.subject.starts_with("segments.changed.") {
            let changed = SegmentChanged::decode(payload)
                .map_err(|err| unreadable("a segment change", err))?;
            self.segment_changed(changed).await
        } else if message.subject.starts_with("segments.identified.") {
            let changed = ProfileChanged::decode(payload)
                .map_err(|err| unreadable("a profile change", err))?;
            // Nothing else changes: the ids it gained are pointed at its answer.
            self.update(&changed.profile_id, false, |_| true).await
        } else if message.subject.starts_with("campaign.web.") {
            let action = Action::decode(payload).map_err(|err| unreadable("an action", err))?;
            self.web(action).await
        } else if message.subject.starts_with("profiles.merged.") {
            let merge = MergeRecord::decode(payload).map_err(|err| unreadable("a merge", err))?;
            if merge.kind() == merge_record::Kind::Merged {
                self.merged(&merge).await?;
            }
            Ok(())
        } else if message.subject == subjects::PROFILES_DELETED {
            let deleted =
                ProfileDeleted::decode(payload).map_err(|err| unreadable("a deletion", err))?;
            self.deleted(&deleted).await
        } else {
            Err(SegmentError::InvalidArgument(format!(
                "{}: not a subject personalization reads",
                message.subject
            )))
        }
    }

    async fn segment_changed(&self, changed: SegmentChanged) -> Result<(), SegmentError> {
        // Leaving a segment makes no answer for a profile without one.
        self.update(&changed.profile_id, changed.entered, |answer| {
            keep_membership(answer, &changed)
        })
        .await
    }

    async fn web(&self, action: Action) -> Result<(), SegmentError> {
        let params: serde_json::Value = serde_json::from_str(&action.params_json)
            .map_err(|err| SegmentError::InvalidArgument(format!("params_json: {err}")))?;
        let content = WebContent {
            state: action.state.clone(),
            content: render(&action.target, &params),
            params_json: action.params_json.clone(),
            entry: action.entry,
            at: action.at,
            idempotency_key: action.idempotency_key.clone(),
        };
        self.update(&action.profile_id, true, |answer| {
            keep_newer(answer, &action.campaign, &content)
        })
        .await
    }

    /// `from` was merged into `into`: the ids that led to `from` lead to `into`, and its
    /// web content goes along (its memberships do not: the survivor's are decided anew).
    async fn merged(&self, merge: &MergeRecord) -> Result<(), SegmentError> {
        let (from, into) = (
            merge.from_profile_id.as_str(),
            merge.into_profile_id.as_str(),
        );
        let (Some(from_key), Some(into_key)) = (profile_key(from), profile_key(into)) else {
            return Ok(());
        };
        // The ids identity moved lead to `into` now, whether or not `from` had an
        // answer (nothing else may announce them: the profile store can take them over
        // before the event that linked them, which then changes no identifiers). Only
        // keys missing or still leading to `from`: a repeat of an older merge must not
        // take an id back from a later survivor.
        for identifier in &merge.identifiers {
            if LOOKUP_TYPES.contains(&identifier.r#type.as_str()) {
                self.point_from(identifier, from, into).await?;
            }
        }
        let Some(loser) = self.read(&from_key).await? else {
            return Ok(());
        };
        let loser = loser.0;
        for identifier in &loser.identifiers {
            self.point(identifier, into).await?;
        }
        self.update(into, true, |answer| {
            let mut changed = false;
            for (campaign, content) in &loser.web {
                changed |= keep_newer(answer, campaign, content);
            }
            for identifier in &loser.identifiers {
                if !answer.identifiers.contains(identifier) {
                    answer.identifiers.push(identifier.clone());
                    changed = true;
                }
            }
            changed
        })
        .await?;
        tracing::debug!(from, into, key = %into_key, "personalization answer merged");
        self.written.forget(&from_key);
        self.bucket
            .purge(&from_key)
            .await
            .map_err(|err| unavailable(&from_key, err))
    }

    /// A person forgotten: their answer goes, and so do the keys leading to it.
    async fn deleted(&self, deleted: &ProfileDeleted) -> Result<(), SegmentError> {
        let Some(key) = profile_key(&deleted.profile_id) else {
            return Ok(());
        };
        let mut identifiers = deleted.identifiers.clone();
        if let Some((answer, _)) = self.read(&key).await? {
            identifiers.extend(answer.identifiers);
        }
        for identifier in identifiers {
            if let Some(id_key) = identifier_key(&identifier.r#type, &identifier.value) {
                self.bucket
                    .purge(&id_key)
                    .await
                    .map_err(|err| unavailable(&id_key, err))?;
            }
        }
        self.written.forget(&key);
        self.bucket
            .purge(&key)
            .await
            .map_err(|err| unavailable(&key, err))
    }

    /// The answer at `key` and its revision, if there is one.
    async fn read(&self, key: &str) -> Result<Option<(Answer, u64)>, SegmentError> {
        let entry = self
            .bucket
            .entry(key)
            .await
            .map_err(|err| unavailable(key, err))?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let answer = Answer::decode(entry.value)
                    .map_err(|err| SegmentError::Corrupt(format!("answer {key}: {err}")))?;
                Ok(Some((answer, entry.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Makes `identifier` lead to `profile_id`.
    async fn point(&self, identifier: &Identifier, profile_id: &str) -> Result<(), SegmentError> {
        if let Some(key) = identifier_key(&identifier.r#type, &identifier.value) {
            self.bucket
                .put(&key, Bytes::from(profile_id.to_string()))
                .await
                .map_err(|err| unavailable(&key, err))?;
        }
        Ok(())
    }

    /// Makes `identifier` lead to `into` if it leads nowhere yet or to `from`.
    async fn point_from(
        &self,
        identifier: &Identifier,
        from: &str,
        into: &str,
    ) -> Result<(), SegmentError> {
        let Some(key) = identifier_key(&identifier.r#type, &identifier.value) else {
            return Ok(());
        };
        let entry = self
            .bucket
            .entry(&key)
            .await
            .map_err(|err| unavailable(&key, err))?;
        let value = Bytes::from(into.to_string());
        // A conflict means someone pointed it meanwhile: theirs stands.
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                if entry.value.as_ref() == from.as_bytes() {
                    let _ = self.bucket.update(&key, value, entry.revision).await;
                }
            }
            _ => {
                let _ = self.bucket.create(&key, value).await;
            }
        }
        Ok(())
    }

    /// The profile's anonymous and user ids, as the profile store has them now; none
    /// when it was merged away or deleted.
    async fn identifiers(&self, profile_id: &str) -> Result<Vec<Identifier>, SegmentError> {
        let stored = cairn_profile_store::store::read(&self.store, profile_id)
            .await
            .map_err(|err| match err.kind() {
                ErrorKind::Unavailable => SegmentError::Bus(BusError::Unavailable(err.to_string())),
                _ => SegmentError::Corrupt(format!("profile {profile_id}: {err}")),
            })?;
        Ok(stored
            .filter(|stored| stored.profile.id == profile_id)
            .map(|stored| {
                stored
                    .profile
                    .identifiers
                    .into_iter()
                    .filter(|identifier| LOOKUP_TYPES.contains(&identifier.kind.as_str()))
                    .map(|identifier| Identifier {
                        r#type: identifier.kind,
                        value: identifier.value,
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Applies `edit` (which says whether it changed anything) to the answer of
    /// `profile_id`, creating it when there is none if `create`; the ids the profile
    /// gained since are pointed at it first, so every id an answer lists leads to it.
    async fn update<F>(&self, profile_id: &str, create: bool, edit: F) -> Result<(), SegmentError>
    where
        F: Fn(&mut Answer) -> bool,
    {
        let Some(key) = profile_key(profile_id) else {
            tracing::warn!(
                profile_id,
                "no personalization answer: the profile id cannot be a key"
            );
            return Ok(());
        };
        // The answer as this replica wrote it last, if it did; read when that is stale.
        let mut written = self.written.get(&key);
        for attempt in 1..=ATTEMPTS {
            let from_memory = written.is_some();
            let known = match written.take() {
                Some(known) => Some(known),
                None => self.read(&key).await?,
            };
            let (mut answer, revision) = match known {
                Some((answer, revision)) => (answer, Some(revision)),
                None if create => (
                    Answer {
                        profile_id: profile_id.to_string(),
                        ..Default::default()
                    },
                    None,
                ),
                None => return Ok(()),
            };
            if !edit(&mut answer) {
                return Ok(());
            }
            for identifier in self.identifiers(profile_id).await? {
                if !answer.identifiers.contains(&identifier) {
                    self.point(&identifier, profile_id).await?;
                    answer.identifiers.push(identifier);
                }
            }
            let value = Bytes::from(answer.encode_to_vec());
            let stored = match revision {
                Some(revision) => self.bucket.update(&key, value, revision).await.ok(),
                None => self.bucket.create(&key, value).await.ok(),
            };
            if let Some(revision) = stored {
                self.written.remember(&key, answer, revision);
                return Ok(());
            }
            self.written.forget(&key);
            if !from_memory {
                // Another replica came first, or the bucket is not answering: a pause
                // before reading it again.
                tokio::time::sleep(std::time::Duration::from_millis(5 * u64::from(attempt))).await;
            }
        }
        Err(SegmentError::Busy(format!(
            "personalization answer {key} kept changing, or the bucket refuses writes"
        )))
    }
}

/// Keeps what `changed` says of its segment unless what is kept is as new (by profile
/// version, then time); whether it changed anything.
fn keep_membership(answer: &mut Answer, changed: &SegmentChanged) -> bool {
    let incoming = Membership {
        member: changed.entered,
        profile_version: changed.profile_version,
        at: changed.at,
    };
    let order = |membership: &Membership| {
        (
            membership.profile_version,
            membership.at.as_ref().map_or(0, timestamp_ms),
        )
    };
    match answer.segments.get(&changed.segment) {
        Some(kept) if order(kept) >= order(&incoming) => false,
        _ => {
            answer.segments.insert(changed.segment.clone(), incoming);
            true
        }
    }
}

/// Keeps `content` as `campaign`'s web content unless what is kept is as new; whether
/// it changed anything.
fn keep_newer(answer: &mut Answer, campaign: &str, content: &WebContent) -> bool {
    let order = |content: &WebContent| {
        (
            content.at.as_ref().map_or(0, timestamp_ms),
            content.entry,
            content.idempotency_key.clone(),
        )
    };
    match answer.web.get(campaign) {
        Some(kept) if order(kept) >= order(content) => false,
        _ => {
            answer.web.insert(campaign.to_string(), content.clone());
            true
        }
    }
}

impl<S: Store> AnswerWriter<S> {
    /// Writes the segment changes among `messages` into their answers, each profile's
    /// together: one compare-and-set for what would be one per change. Handling each
    /// message afterwards finds its change kept and writes nothing; one that fails
    /// here is written then, on its own.
    async fn prepare_round(&self, messages: &[Delivered]) {
        let mut by_profile: HashMap<String, Vec<SegmentChanged>> = HashMap::new();
        for message in messages {
            if message.subject.starts_with("segments.changed.")
                && let Ok(changed) = SegmentChanged::decode(message.payload.clone())
            {
                by_profile
                    .entry(changed.profile_id.clone())
                    .or_default()
                    .push(changed);
            }
        }
        for (profile_id, changes) in by_profile {
            if changes.len() < 2 {
                continue;
            }
            let create = changes.iter().any(|changed| changed.entered);
            let written = self
                .update(&profile_id, create, |answer| {
                    let mut any = false;
                    for changed in &changes {
                        any |= keep_membership(answer, changed);
                    }
                    any
                })
                .await;
            if let Err(err) = written {
                tracing::debug!(profile_id, error = %err, "a round's answer not written together; each change will be");
            }
        }
    }
}

impl<S: Store> Handler for AnswerWriter<S> {
    async fn handle(&self, message: &Delivered) -> Handled {
        crate::error::handled(self.on_message(message).await.map(|()| Vec::new()))
    }

    async fn prepare(&self, messages: &[Delivered]) {
        self.prepare_round(messages).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_runtime::clock::timestamp;

    fn web(at_ms: i64, entry: u32, content: &str) -> WebContent {
        WebContent {
            state: "offered".into(),
            content: content.into(),
            params_json: "{}".into(),
            entry,
            at: Some(timestamp(at_ms)),
            idempotency_key: format!("k{at_ms}-{entry}"),
        }
    }

    #[test]
    fn the_newest_web_content_of_a_campaign_is_kept_whatever_the_order() {
        let mut answer = Answer::default();
        assert!(keep_newer(&mut answer, "offer", &web(2_000, 2, "bags")));
        assert!(!keep_newer(&mut answer, "offer", &web(1_000, 1, "shoes")));
        assert!(!keep_newer(&mut answer, "offer", &web(2_000, 2, "bags")));
        assert_eq!(answer.web["offer"].content, "bags");
        assert!(keep_newer(&mut answer, "offer", &web(3_000, 3, "hats")));
        assert!(keep_newer(&mut answer, "welcome", &web(1_000, 1, "hello")));
        assert_eq!(answer.web["offer"].content, "hats");
        assert_eq!(answer.web.len(), 2);
    }
}
