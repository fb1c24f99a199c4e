//! The identity graph over the store: identifier → profile, and merged profile →
//! surviving profile (union-find with persisted forwarding pointers).
//!
//! Records, in the `identity` table:
//! - `id:<type>:<value>` → the profile id the identifier was given to (an index: the
//!   profile's own list is the truth; an index entry whose profile does not list the
//!   identifier is a leftover of an interrupted change and is ignored);
//! - `pf:<profile id>` → the profile: its identifiers, or the profile it was merged into.
//!   Its timeline is the merge log;
//! - `gone:<sha-256 of type:value>` → when a profile holding the identifier was deleted
//!   (a hash, so the forgotten value is not kept). Events received before then with
//!   the identifier are dropped: a late redelivery or a rebuild does not bring the
//!   person back. A rebuild keeps these records.
//!
//! Changing a profile takes its lease (see [`crate::leases`]); a new identifier is
//! claimed by creating its index record, which only one worker can do. The survivor of
//! a merge is the profile with the smallest id; ids start with their creation time, so
//! the oldest profile survives, whichever worker merges.

use std::time::Duration;

use bytes::Bytes;
use cairn_store::{Expect, Retention, Store, TableSpec, Write};
use serde::{Deserialize, Serialize};

use crate::decide::{Decision, ProfileView, Seen, decide};
use crate::error::IdentityError;
use crate::leases::{Held, Leases};
use crate::rules::{ANONYMOUS_ID, Identifier, Rules, USER_ID};

/// The identity graph's table.
pub const IDENTITY: TableSpec = TableSpec {
    name: "identity",
    timeline: Retention {
        max_entries: 1000,
        max_age: None,
    },
};

/// How many times an event is retried inside the worker when the graph moves under it.
const ATTEMPTS: u32 = 10;
/// Longest chain of merged profiles followed (guards against a damaged graph).
const MAX_CHAIN: usize = 64;

/// A profile record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ProfileRecord {
    Alive { identifiers: Vec<Identifier> },
    Merged { into: String },
}

/// One entry of a profile's merge log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub kind: LogKind,
    pub at_ms: i64,
    pub message_id: String,
    pub from: String,
    pub into: String,
    pub identifiers: Vec<Identifier>,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogKind {
    Merged,
    Rejected,
    Split,
}

/// A live profile as read, with the version to change it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub id: String,
    pub identifiers: Vec<Identifier>,
    version: u64,
}

/// What identifying an event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identified {
    /// The profile the event belongs to.
    pub profile_id: String,
    /// Merges this event caused, now.
    pub merges: Vec<LogEntry>,
}

/// What [`Graph::see`] found.
#[derive(Debug, Default)]
struct Sight {
    seen: Vec<Seen>,
    stale: Vec<String>,
    /// For each identifier without a profile, the index state a claim must find.
    claims: Vec<(Identifier, Expect)>,
    /// Identifiers without a profile that were forgotten, and when.
    forgotten: Vec<(Identifier, i64)>,
}

/// The result of a split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub entry: LogEntry,
}

/// The graph, over any store.
#[derive(Debug, Clone)]
pub struct Graph<S> {
    store: S,
    rules: std::sync::Arc<Rules>,
    leases: Leases<S>,
    /// How long to wait for other workers' leases before giving the event back.
    patience: Duration,
}

fn profile_key(id: &str) -> Bytes {
    Bytes::from(format!("pf:{id}"))
}

fn index_key(identifier: &Identifier) -> Bytes {
    Bytes::from(format!("id:{}:{}", identifier.kind, identifier.value))
}

/// The key of the record that `identifier` was forgotten.
pub fn forgotten_key(identifier: &Identifier) -> Bytes {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("{}:{}", identifier.kind, identifier.value));
    Bytes::from(format!(
        "{FORGOTTEN_PREFIX}{}",
        cairn_runtime::encoding::hex(&digest)
    ))
}

/// Where the records of forgotten identifiers start.
pub const FORGOTTEN_PREFIX: &str = "gone:";

fn lease_name(profile: &str) -> String {
    format!("pf:{profile}")
}

/// A new profile id: creation time in hex (so ids sort oldest first) and randomness.
pub fn new_profile_id(now_ms: i64) -> String {
    format!("p{:012x}{:016x}", now_ms.max(0), rand::random::<u64>())
}

fn corrupt(what: &str, err: impl std::fmt::Display) -> IdentityError {
    IdentityError::Corrupt(format!("{what}: {err}"))
}

fn encode<T: Serialize>(value: &T) -> Result<Bytes, IdentityError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|err| corrupt("encoding", err))
}

fn union(into: &mut Vec<Identifier>, more: &[Identifier]) {
    for identifier in more {
        if !into.contains(identifier) {
            into.push(identifier.clone());
        }
    }
}

impl<S: Store> Graph<S> {
    pub fn new(
        store: S,
        rules: std::sync::Arc<Rules>,
        holder: String,
        lease: Duration,
        patience: Duration,
    ) -> Self {
        Self {
            leases: Leases::new(store.clone(), IDENTITY, holder, lease),
            store,
            rules,
            patience,
        }
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    async fn read_profile(&self, id: &str) -> Result<Option<(ProfileRecord, u64)>, IdentityError> {
        let Some(record) = self.store.get(&IDENTITY, &profile_key(id)).await? else {
            return Ok(None);
        };
        let profile: ProfileRecord = serde_json::from_slice(&record.value)
            .map_err(|err| corrupt(&format!("profile {id}"), err))?;
        Ok(Some((profile, record.version)))
    }

    /// The live profile `id` leads to, following merges.
    pub async fn root(&self, id: &str) -> Result<Option<Profile>, IdentityError> {
        let mut current = id.to_string();
        for _ in 0..MAX_CHAIN {
            match self.read_profile(&current).await? {
                None => return Ok(None),
                Some((ProfileRecord::Alive { identifiers }, version)) => {
                    return Ok(Some(Profile {
                        id: current,
                        identifiers,
                        version,
                    }));
                }
                Some((ProfileRecord::Merged { into }, _)) => current = into,
            }
        }
        Err(IdentityError::Corrupt(format!(
            "profile {id}: merges go round for more than {MAX_CHAIN} steps"
        )))
    }

    /// Where the index says `identifier` went, and the live profile that leads to.
    async fn index(
        &self,
        identifier: &Identifier,
    ) -> Result<Option<(String, u64, Option<Profile>)>, IdentityError> {
        self.index_cached(identifier, &mut Vec::new()).await
    }

    /// [`Graph::index`], reusing the profiles already read for other identifiers of the
    /// same event (a known visitor's identifiers all lead to one profile).
    async fn index_cached(
        &self,
        identifier: &Identifier,
        read: &mut Vec<(String, Option<Profile>)>,
    ) -> Result<Option<(String, u64, Option<Profile>)>, IdentityError> {
        let Some(record) = self.store.get(&IDENTITY, &index_key(identifier)).await? else {
            return Ok(None);
        };
        let pointed =
            String::from_utf8(record.value.to_vec()).map_err(|err| corrupt("index", err))?;
        let root = match read.iter().find(|(id, _)| *id == pointed) {
            Some((_, root)) => root.clone(),
            None => {
                let root = self.root(&pointed).await?;
                read.push((pointed.clone(), root.clone()));
                root
            }
        };
        Ok(Some((pointed, record.version, root)))
    }

    /// The live profile holding `identifier`, if one does.
    pub async fn lookup(&self, identifier: &Identifier) -> Result<Option<Profile>, IdentityError> {
        Ok(self
            .index(identifier)
            .await?
            .and_then(|(_, _, root)| root)
            .filter(|profile| profile.identifiers.contains(identifier)))
    }

    /// The identifiers of an event: an alias's `previousId` is a user id when one is
    /// known by that value, else an anonymous id.
    pub async fn event_identifiers(
        &self,
        found: &crate::extract::Found,
    ) -> Result<Vec<Identifier>, IdentityError> {
        let mut identifiers = found.identifiers.clone();
        if let Some(previous) = &found.previous_id {
            let as_user = Identifier::new(USER_ID, previous.clone());
            let previous = if self.lookup(&as_user).await?.is_some() {
                as_user
            } else {
                Identifier::new(ANONYMOUS_ID, previous.clone())
            };
            if !identifiers.contains(&previous) {
                identifiers.push(previous);
            }
        }
        Ok(identifiers)
    }

    /// Gives the event with `identifiers` (received at `received_ms`) its profile,
    /// stitching and merging under the rules. Safe to run for the same event again (it
    /// changes nothing the second time) and from many workers at once. Fails with
    /// [`IdentityError::Forgotten`] when an identifier was forgotten after the event was
    /// received.
    pub async fn identify(
        &self,
        identifiers: &[Identifier],
        message_id: &str,
        received_ms: i64,
        now_ms: i64,
    ) -> Result<Identified, IdentityError> {
        if identifiers.is_empty() {
            return Err(IdentityError::NoIdentifiers);
        }
        for _ in 0..ATTEMPTS {
            let Sight {
                seen,
                stale,
                forgotten,
                ..
            } = self.see(identifiers).await?;
            if let Some((identifier, _)) = forgotten.iter().find(|(_, at)| *at >= received_ms) {
                return Err(IdentityError::Forgotten {
                    kind: identifier.kind.clone(),
                });
            }
            let decision = decide(&self.rules, &seen);
            if decision.changes_nothing() && stale.is_empty() {
                let target = decision
                    .target
                    .as_ref()
                    .map(|profile| profile.id.clone())
                    .unwrap_or_default();
                self.record_rejections(&target, &decision, message_id, now_ms)
                    .await?;
                return Ok(Identified {
                    profile_id: target,
                    merges: Vec::new(),
                });
            }
            // Everything the change touches must hold still: take the profiles' leases,
            // then check that what was decided still holds.
            let new_id = new_profile_id(now_ms);
            let (mut profiles, _) = decision.touches();
            profiles.extend(stale.iter().cloned());
            if decision.target.is_none() {
                profiles.push(new_id.clone());
            }
            let names: Vec<String> = profiles.iter().map(|profile| lease_name(profile)).collect();
            let held = self.leases.take(&names, self.patience).await?;
            let result = self
                .apply_if_unchanged(
                    identifiers,
                    &decision,
                    &profiles,
                    &new_id,
                    message_id,
                    now_ms,
                )
                .await;
            self.leases.release(held).await;
            match result? {
                Some(identified) => return Ok(identified),
                None => continue, // the graph moved between the decision and the leases
            }
        }
        Err(IdentityError::Busy(format!(
            "the profiles of {} kept changing for {ATTEMPTS} attempts",
            identifiers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }

    /// What the graph holds for each identifier; the profiles of index entries left over
    /// by an interrupted change (to take their leases before reusing them); and, for
    /// each identifier without a profile, what its claim must replace.
    async fn see(&self, identifiers: &[Identifier]) -> Result<Sight, IdentityError> {
        let mut sight = Sight::default();
        let mut read = Vec::new();
        for identifier in identifiers {
            let profile = match self.index_cached(identifier, &mut read).await? {
                Some((_, _, Some(root))) if root.identifiers.contains(identifier) => {
                    Some(ProfileView {
                        id: root.id,
                        identifiers: root.identifiers,
                    })
                }
                Some((pointed, version, _)) => {
                    sight.stale.push(pointed);
                    sight
                        .claims
                        .push((identifier.clone(), Expect::Version(version)));
                    self.note_forgotten(identifier, &mut sight.forgotten)
                        .await?;
                    None
                }
                None => {
                    sight.claims.push((identifier.clone(), Expect::Absent));
                    self.note_forgotten(identifier, &mut sight.forgotten)
                        .await?;
                    None
                }
            };
            sight.seen.push(Seen {
                identifier: identifier.clone(),
                profile,
            });
        }
        Ok(sight)
    }

    /// Adds when `identifier` was forgotten, if it was.
    async fn note_forgotten(
        &self,
        identifier: &Identifier,
        forgotten: &mut Vec<(Identifier, i64)>,
    ) -> Result<(), IdentityError> {
        if let Some(record) = self
            .store
            .get(&IDENTITY, &forgotten_key(identifier))
            .await?
        {
            let at_ms = std::str::from_utf8(&record.value)
                .ok()
                .and_then(|text| text.parse().ok())
                .ok_or_else(|| corrupt("forgotten identifier", "not a time"))?;
            forgotten.push((identifier.clone(), at_ms));
        }
        Ok(())
    }

    /// Under the leases of `leased` profiles: decides again and applies the decision if
    /// it is the same one and touches nothing else.
    async fn apply_if_unchanged(
        &self,
        identifiers: &[Identifier],
        decided: &Decision,
        leased: &[String],
        new_id: &str,
        message_id: &str,
        now_ms: i64,
    ) -> Result<Option<Identified>, IdentityError> {
        let Sight {
            seen,
            stale,
            claims,
            ..
        } = self.see(identifiers).await?;
        let decision = decide(&self.rules, &seen);
        // An index entry pointing at a profile whose lease is not held may be another
        // worker's claim in progress, not a leftover: decide again with its lease.
        if decision.touches() != decided.touches()
            || stale.iter().any(|profile| !leased.contains(profile))
        {
            return Ok(None);
        }
        let mut profiles: Vec<Profile> = Vec::new();
        for view in decision.target.iter().chain(&decision.merge) {
            match self.root(&view.id).await? {
                Some(profile) if profile.id == view.id => profiles.push(profile),
                _ => return Ok(None),
            }
        }
        // Claim the new identifiers: creating the index record is the claim, or taking
        // over a leftover one (its profile's lease is held, so nobody is using it).
        let survivor_id = profiles
            .iter()
            .map(|profile| profile.id.clone())
            .min()
            .unwrap_or_else(|| new_id.to_string());
        let mut claimed = Vec::new();
        for identifier in &decision.attach {
            let Some((_, expect)) = claims.iter().find(|(claim, _)| claim == identifier) else {
                return Ok(None);
            };
            let write = Write::new(index_key(identifier)).record(*expect, survivor_id.clone());
            if !self.store.write(&IDENTITY, write).await?.is_applied() {
                return Ok(None); // another worker claimed it first: decide again
            }
            claimed.push(identifier.clone());
        }

        // The survivor gets everyone's identifiers and a log entry per merge.
        let mut holding = Vec::new();
        let survivor = profiles.iter().find(|profile| profile.id == survivor_id);
        if let Some(survivor) = survivor {
            union(&mut holding, &survivor.identifiers);
        }
        let mut merges = Vec::new();
        for profile in profiles.iter().filter(|profile| profile.id != survivor_id) {
            union(&mut holding, &profile.identifiers);
            merges.push(LogEntry {
                kind: LogKind::Merged,
                at_ms: now_ms,
                message_id: message_id.to_string(),
                from: profile.id.clone(),
                into: survivor_id.clone(),
                identifiers: profile.identifiers.clone(),
                reason: format!(
                    "linked by {}",
                    seen.iter()
                        .filter(|seen| seen
                            .profile
                            .as_ref()
                            .is_some_and(|view| view.id == profile.id))
                        .map(|seen| seen.identifier.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        union(&mut holding, &claimed);
        let mut write = Write::new(profile_key(&survivor_id)).record(
            survivor.map_or(Expect::Absent, |profile| Expect::Version(profile.version)),
            encode(&ProfileRecord::Alive {
                identifiers: holding,
            })?,
        );
        for (n, entry) in merges.iter().enumerate() {
            write = write.append(now_ms, format!("{message_id}/merge/{n}"), encode(entry)?);
        }
        if !self.store.write(&IDENTITY, write).await?.is_applied() {
            return Err(IdentityError::Busy(format!(
                "profile {survivor_id} changed while its lease was held"
            )));
        }
        // The others now point at the survivor, and so do their identifiers' index
        // entries (path compression).
        for profile in profiles.iter().filter(|profile| profile.id != survivor_id) {
            let forward = Write::new(profile_key(&profile.id)).record(
                Expect::Version(profile.version),
                encode(&ProfileRecord::Merged {
                    into: survivor_id.clone(),
                })?,
            );
            if !self.store.write(&IDENTITY, forward).await?.is_applied() {
                return Err(IdentityError::Busy(format!(
                    "profile {} changed while its lease was held",
                    profile.id
                )));
            }
            for identifier in &profile.identifiers {
                let write =
                    Write::new(index_key(identifier)).record(Expect::Any, survivor_id.clone());
                self.store.write(&IDENTITY, write).await?;
            }
        }
        self.record_rejections(&survivor_id, &decision, message_id, now_ms)
            .await?;
        Ok(Some(Identified {
            profile_id: survivor_id,
            merges,
        }))
    }

    /// Logs each refused merge once per (profile, identifier).
    async fn record_rejections(
        &self,
        target: &str,
        decision: &Decision,
        message_id: &str,
        now_ms: i64,
    ) -> Result<(), IdentityError> {
        for dropped in &decision.dropped {
            let entry = LogEntry {
                kind: LogKind::Rejected,
                at_ms: now_ms,
                message_id: message_id.to_string(),
                from: dropped.profile.clone().unwrap_or_default(),
                into: target.to_string(),
                identifiers: vec![dropped.identifier.clone()],
                reason: dropped.reason.clone(),
            };
            tracing::info!(profile_id = target, identifier_type = %dropped.identifier.kind, reason = %dropped.reason, "link refused");
            let once = format!("rejected/{}/{}", dropped.identifier, entry.from);
            let write = Write::new(profile_key(target))
                .append(now_ms, format!("{message_id}/{once}"), encode(&entry)?)
                .mark_once(once, Bytes::new(), None);
            // Already logged before: the mark is there and nothing is written.
            self.store.write(&IDENTITY, write).await?;
        }
        Ok(())
    }

    /// The merge log of `id`'s live profile: its own and those of the profiles merged
    /// into it, newest first.
    pub async fn history(&self, id: &str) -> Result<(String, Vec<LogEntry>), IdentityError> {
        let root = self
            .root(id)
            .await?
            .ok_or_else(|| IdentityError::NotFound(format!("no profile {id}")))?;
        let mut entries = Vec::new();
        let mut pending = vec![root.id.clone()];
        let mut visited = Vec::new();
        while let Some(profile) = pending.pop() {
            if visited.contains(&profile) || visited.len() > 10_000 {
                continue;
            }
            visited.push(profile.clone());
            let mut cursor = None;
            loop {
                let page = self
                    .store
                    .timeline(&IDENTITY, &profile_key(&profile), cursor, 500)
                    .await?;
                for item in &page.entries {
                    let entry: LogEntry = serde_json::from_slice(&item.value)
                        .map_err(|err| corrupt("merge log", err))?;
                    if entry.kind == LogKind::Merged && entry.into == profile {
                        pending.push(entry.from.clone());
                    }
                    entries.push(entry);
                }
                cursor = page.next;
                if cursor.is_none() {
                    break;
                }
            }
        }
        entries.sort_by_key(|entry| std::cmp::Reverse(entry.at_ms));
        entries.dedup();
        Ok((root.id, entries))
    }

    /// Forgets a person (right to be forgotten) deleted at `deleted_at_ms`: the index
    /// entries of `identifiers`, the profile they lead to, the profiles merged into it,
    /// and their merge logs; and records that the identifiers were forgotten then.
    pub async fn forget(
        &self,
        identifiers: &[Identifier],
        deleted_at_ms: i64,
    ) -> Result<(), IdentityError> {
        // First, so that events still in flight cannot bring the person back meanwhile.
        // The latest deletion counts; a repeat of this one changes nothing.
        for identifier in identifiers {
            self.store
                .update(&IDENTITY, forgotten_key(identifier), 10, |current| {
                    let known = current.and_then(|record| {
                        std::str::from_utf8(&record.value).ok()?.parse::<i64>().ok()
                    });
                    if known.is_some_and(|known| known >= deleted_at_ms) {
                        return None;
                    }
                    Some(cairn_store::Change::set(deleted_at_ms.to_string()))
                })
                .await?;
        }
        let mut roots = Vec::new();
        for identifier in identifiers {
            if let Some((_, _, Some(root))) = self.index(identifier).await?
                && !roots.contains(&root.id)
            {
                roots.push(root.id);
            }
        }
        for root in roots {
            let held = self
                .leases
                .take(&[lease_name(&root)], self.patience)
                .await?;
            let result = async {
                let (_, history) = self.history(&root).await?;
                let mut gone: Vec<String> = vec![root.clone()];
                for entry in history.iter().filter(|entry| entry.kind == LogKind::Merged) {
                    if !gone.contains(&entry.from) {
                        gone.push(entry.from.clone());
                    }
                }
                if let Some(profile) = self.root(&root).await? {
                    for identifier in &profile.identifiers {
                        self.store.delete(&IDENTITY, &index_key(identifier)).await?;
                    }
                }
                for profile in gone {
                    self.store.delete(&IDENTITY, &profile_key(&profile)).await?;
                }
                Ok::<(), IdentityError>(())
            }
            .await;
            self.leases.release(held).await;
            result?;
        }
        // What is left pointing nowhere (an identifier the deleted profile named but its
        // identity record no longer did). One that leads to a live profile is someone
        // else's now and stays; a conditional delete leaves one re-pointed meanwhile.
        for identifier in identifiers {
            if let Some((_, version, None)) = self.index(identifier).await? {
                let write =
                    Write::new(index_key(identifier)).delete_record(Expect::Version(version));
                self.store.write(&IDENTITY, write).await?;
            }
        }
        Ok(())
    }

    /// Takes `identifiers` out of `id`'s profile: back into the profile a recorded merge
    /// brought exactly them from, or into a new profile.
    pub async fn split(
        &self,
        id: &str,
        identifiers: &[Identifier],
        now_ms: i64,
    ) -> Result<Split, IdentityError> {
        if identifiers.is_empty() {
            return Err(IdentityError::InvalidArgument(
                "identifiers: name at least one to split out".to_string(),
            ));
        }
        let (root_id, history) = self.history(id).await?;
        let mut wanted: Vec<Identifier> = identifiers.to_vec();
        wanted.sort();
        let restored = history
            .iter()
            .find(|entry| {
                let mut merged = entry.identifiers.clone();
                merged.sort();
                entry.kind == LogKind::Merged && merged == wanted
            })
            .map(|entry| entry.from.clone());
        let into = restored.clone().unwrap_or_else(|| new_profile_id(now_ms));
        let names = vec![lease_name(&root_id), lease_name(&into)];
        let held: Held = self.leases.take(&names, self.patience).await?;
        let result = self
            .split_locked(&root_id, &into, restored.is_some(), &wanted, now_ms)
            .await;
        self.leases.release(held).await;
        result
    }

    async fn split_locked(
        &self,
        root_id: &str,
        into: &str,
        restore: bool,
        wanted: &[Identifier],
        now_ms: i64,
    ) -> Result<Split, IdentityError> {
        let root = self
            .root(root_id)
            .await?
            .filter(|root| root.id == root_id)
            .ok_or_else(|| {
                IdentityError::Busy(format!("profile {root_id} was merged meanwhile"))
            })?;
        if let Some(missing) = wanted
            .iter()
            .find(|identifier| !root.identifiers.contains(identifier))
        {
            return Err(IdentityError::InvalidArgument(format!(
                "identifiers: {missing} is not in profile {root_id}"
            )));
        }
        let remaining: Vec<Identifier> = root
            .identifiers
            .iter()
            .filter(|identifier| !wanted.contains(identifier))
            .cloned()
            .collect();
        if remaining.is_empty() {
            return Err(IdentityError::InvalidArgument(
                "identifiers: that is every identifier of the profile; there is nothing to split it from".to_string(),
            ));
        }
        let entry = LogEntry {
            kind: LogKind::Split,
            at_ms: now_ms,
            message_id: String::new(),
            from: root_id.to_string(),
            into: into.to_string(),
            identifiers: wanted.to_vec(),
            reason: if restore {
                format!("restores profile {into}")
            } else {
                "split into a new profile".to_string()
            },
        };
        // The split-out profile: revived (it was merged) or new.
        let expect = match self.read_profile(into).await? {
            Some((ProfileRecord::Merged { .. }, version)) if restore => Expect::Version(version),
            None if !restore => Expect::Absent,
            _ => {
                return Err(IdentityError::Busy(format!(
                    "profile {into} changed meanwhile"
                )));
            }
        };
        let revive = Write::new(profile_key(into))
            .record(
                expect,
                encode(&ProfileRecord::Alive {
                    identifiers: wanted.to_vec(),
                })?,
            )
            .append(now_ms, format!("split/{root_id}/{now_ms}"), encode(&entry)?);
        if !self.store.write(&IDENTITY, revive).await?.is_applied() {
            return Err(IdentityError::Busy(format!(
                "profile {into} changed meanwhile"
            )));
        }
        let shrink = Write::new(profile_key(root_id))
            .record(
                Expect::Version(root.version),
                encode(&ProfileRecord::Alive {
                    identifiers: remaining,
                })?,
            )
            .append(now_ms, format!("split/{into}/{now_ms}"), encode(&entry)?);
        if !self.store.write(&IDENTITY, shrink).await?.is_applied() {
            return Err(IdentityError::Busy(format!(
                "profile {root_id} changed while its lease was held"
            )));
        }
        for identifier in wanted {
            let write = Write::new(index_key(identifier)).record(Expect::Any, into.to_string());
            self.store.write(&IDENTITY, write).await?;
        }
        Ok(Split { entry })
    }
}
