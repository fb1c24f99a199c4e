//! The profile store's tables and the writes that keep them.
//!
//! - `profiles`: one record per profile (its document as JSON), its timeline (every
//!   event as identity published it, newest first) and marks (which events, facts and
//!   merges it already took in, so a redelivery changes nothing);
//! - `profile_index`: identifier → profile id, for Get by identifier.

use std::time::Duration;

use bytes::Bytes;
use cairn_store::{
    Change, Expect, Mark, Outcome, Retention, Store, TableSpec, TimelineEntry, Write,
};

use crate::error::ProfileError;
use crate::profile::{Identifier, Profile};

pub const PROFILES: TableSpec = TableSpec {
    name: "profiles",
    timeline: Retention {
        max_entries: 1000,
        max_age: Some(Duration::from_secs(90 * 86_400)),
    },
};

pub const PROFILE_INDEX: TableSpec = TableSpec {
    name: "profile_index",
    timeline: Retention {
        max_entries: 1,
        max_age: None,
    },
};

/// How long the marks of applied events and facts are kept: longer than any
/// redelivery can come late.
pub const MARK_TTL: Duration = Duration::from_secs(7 * 86_400);
/// Attempts at a read-modify-write that keeps meeting concurrent changes.
const ATTEMPTS: u32 = 50;
/// Longest chain of merged profiles followed.
const MAX_FORWARDS: usize = 32;

pub fn index_key(identifier: &Identifier) -> Bytes {
    Bytes::from(format!("{}:{}", identifier.kind, identifier.value))
}

pub fn decode(value: &[u8]) -> Result<Profile, ProfileError> {
    serde_json::from_slice(value)
        .map_err(|err| ProfileError::Corrupt(format!("profile document: {err}")))
}

pub fn encode(profile: &Profile) -> Result<Bytes, ProfileError> {
    serde_json::to_vec(profile)
        .map(Bytes::from)
        .map_err(|err| ProfileError::Corrupt(format!("profile document: {err}")))
}

/// A profile as stored, with its version.
#[derive(Debug, Clone)]
pub struct Stored {
    pub profile: Profile,
    pub version: u64,
}

/// The live profile `id` leads to (following merges), if it exists.
pub async fn read<S: Store>(store: &S, id: &str) -> Result<Option<Stored>, ProfileError> {
    let mut current = id.to_string();
    for _ in 0..MAX_FORWARDS {
        let Some(record) = store.get(&PROFILES, current.as_bytes()).await? else {
            return Ok(None);
        };
        let profile = decode(&record.value)?;
        match &profile.merged_into {
            Some(into) => current = into.clone(),
            None => {
                return Ok(Some(Stored {
                    profile,
                    version: record.version,
                }));
            }
        }
    }
    Err(ProfileError::Corrupt(format!(
        "profile {id}: merges go round"
    )))
}

/// What [`change`] did.
#[derive(Debug)]
pub enum Changed {
    /// Written: the profile (its id may be the survivor of a merge), its new version,
    /// and what the change function reported.
    Applied {
        profile: Profile,
        version: u64,
        fields: Vec<String>,
    },
    /// The change's mark was there already: it was applied before.
    AlreadyApplied { profile: Option<Stored> },
    /// The change function declined.
    Nothing,
}

/// What [`change`] does when the profile was merged into another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenMerged {
    /// Change the profile it was merged into (and so on, to the live one).
    Follow,
    /// Fail with [`ProfileError::Stale`]: the change was meant for this profile only.
    Refuse,
    /// Make it live again, starting empty: a split hands a merged profile back its
    /// identifiers (its old data lives on in the profile it was merged into).
    Revive,
}

/// Read-modify-write of the profile `id` (creating it when it does not exist), with
/// `mark` written in the same atomic write so that the same change is never applied
/// twice. A merged profile is followed or refused (`when_merged`); before following,
/// the merged profile's own marks are checked (the change may have been applied there
/// before the merge). `apply` returns the changed fields, or `None` to write nothing;
/// `appends` go to the profile's timeline.
pub async fn change<S, F>(
    store: &S,
    id: &str,
    when_merged: WhenMerged,
    mark: Option<Mark>,
    appends: Vec<TimelineEntry>,
    mut apply: F,
) -> Result<Changed, ProfileError>
where
    S: Store,
    F: FnMut(&mut Profile) -> Option<Vec<String>> + Send,
{
    let mut target = id.to_string();
    for _ in 0..ATTEMPTS {
        let mut fields = Vec::new();
        let mut forward = None;
        let mut produced = None;
        let outcome = store
            .update(&PROFILES, Bytes::from(target.clone()), 1, |current| {
                let mut profile = match current {
                    Some(record) => match decode(&record.value) {
                        Ok(profile) => profile,
                        Err(_) => return None,
                    },
                    None => Profile::new(&target),
                };
                if let Some(into) = &profile.merged_into {
                    if when_merged == WhenMerged::Revive {
                        profile = Profile::new(&target);
                    } else {
                        forward = Some(into.clone());
                        return None;
                    }
                }
                fields = apply(&mut profile)?;
                let value = encode(&profile).ok()?;
                produced = Some(profile);
                Some(Change {
                    value: Some(value),
                    appends: appends.clone(),
                    marks: mark.iter().cloned().collect(),
                })
            })
            .await;
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(cairn_store::StoreError::Contended { .. }) => continue,
            Err(err) => return Err(err.into()),
        };
        match outcome {
            None => match forward.take() {
                Some(into) if when_merged == WhenMerged::Refuse => {
                    return Err(ProfileError::Stale(format!(
                        "profile {target} was merged into {into}"
                    )));
                }
                Some(into) => {
                    if let Some(mark) = &mark
                        && store
                            .mark(&PROFILES, target.as_bytes(), &mark.id)
                            .await?
                            .is_some()
                    {
                        return Ok(Changed::AlreadyApplied {
                            profile: read(store, &into).await?,
                        });
                    }
                    target = into;
                }
                None if produced.is_none() => {
                    // Declined, or a damaged document (reported by decode on the next read).
                    if let Some(record) = store.get(&PROFILES, target.as_bytes()).await? {
                        decode(&record.value)?;
                    }
                    return Ok(Changed::Nothing);
                }
                None => return Ok(Changed::Nothing),
            },
            Some(Outcome::Applied { version }) => {
                return Ok(Changed::Applied {
                    profile: produced.unwrap_or_else(|| Profile::new(&target)),
                    version: version.unwrap_or_default(),
                    fields,
                });
            }
            Some(Outcome::Conflict { present_marks, .. }) if !present_marks.is_empty() => {
                return Ok(Changed::AlreadyApplied {
                    profile: read(store, &target).await?,
                });
            }
            Some(Outcome::Conflict { .. }) => continue,
        }
    }
    Err(ProfileError::Busy(format!("profile {id} kept changing")))
}

/// Points each identifier at `profile` in the index.
pub async fn index<S: Store>(
    store: &S,
    identifiers: &[Identifier],
    profile: &str,
) -> Result<(), ProfileError> {
    for identifier in identifiers {
        let write = Write::new(index_key(identifier)).record(Expect::Any, profile.to_string());
        store.write(&PROFILE_INDEX, write).await?;
    }
    Ok(())
}

/// The profile an identifier leads to.
pub async fn lookup<S: Store>(
    store: &S,
    identifier: &Identifier,
) -> Result<Option<Stored>, ProfileError> {
    match store.get(&PROFILE_INDEX, &index_key(identifier)).await? {
        Some(record) => read(store, &String::from_utf8_lossy(&record.value)).await,
        None => Ok(None),
    }
}
