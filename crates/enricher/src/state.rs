//! Per-profile state for the enrichers that remember (activity, content): one JSON
//! document per profile in the enricher's table, changed once per event. The event's
//! mark is written with the change, so an event delivered again changes nothing and
//! gets the state as it is.
//!
//! A person's state follows their profile ([`PersonState`]): when the profile is merged
//! into another, its state is taken into the other's once ([`merge_once`]) and what is
//! left points there, so that the person's late events count where the rest of them
//! are; a split makes a merged profile a person of its own again ([`revive`]).
//!
//! A state that facts are drawn from ([`FactSource`]) also keeps the digest of the facts
//! last published from it, written in the same change, so that facts are published only
//! when an event changed them ([`facts_once`]): most events change a person's habits a
//! little and what is said about them not at all.

use std::time::Duration;

use bytes::Bytes;
use cairn_store::{Change, Mark, Outcome, Store, TableSpec};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{EnrichError, FactSet, Learned};

/// How long an event's mark is kept: longer than any redelivery can come late.
pub const MARK_TTL: Duration = Duration::from_secs(7 * 86_400);
/// Attempts at a read-modify-write that keeps meeting other writers.
const ATTEMPTS: u32 = 50;
/// Merges a change follows at most, from the state it names to the live one.
const MAX_FORWARDS: usize = 16;

fn decode<T: DeserializeOwned>(table: &TableSpec, value: &[u8]) -> Result<T, EnrichError> {
    serde_json::from_slice(value)
        .map_err(|err| EnrichError::Data(format!("{} state: {err}", table.name)))
}

fn encode<T: Serialize>(table: &TableSpec, state: &T) -> Result<Bytes, EnrichError> {
    serde_json::to_vec(state)
        .map(Bytes::from)
        .map_err(|err| EnrichError::Data(format!("{} state: {err}", table.name)))
}

/// A state kept per person, under the key of their profile.
pub trait PersonState: Serialize + DeserializeOwned + Default + Send + Sync {
    /// Once the profile was merged into another: the key of that one's state.
    fn merged_into(&mut self) -> &mut Option<String>;
}

/// Where a state went when its profile was merged: `None` for states that never move.
type Forward<T> = fn(&mut T) -> Option<String>;

fn stays<T>(_: &mut T) -> Option<String> {
    None
}

fn follows<T: PersonState>(state: &mut T) -> Option<String> {
    state.merged_into().clone()
}

/// The state at `key`, if any.
pub async fn read<S, T>(store: &S, table: &TableSpec, key: &str) -> Result<Option<T>, EnrichError>
where
    S: Store,
    T: DeserializeOwned,
{
    match store.get(table, key.as_bytes()).await? {
        Some(record) => decode(table, &record.value).map(Some),
        None => Ok(None),
    }
}

/// The state `key` leads to, following merges.
async fn read_live<S, T>(
    store: &S,
    table: &TableSpec,
    key: &str,
    forward: Forward<T>,
) -> Result<Option<T>, EnrichError>
where
    S: Store,
    T: DeserializeOwned,
{
    let mut key = key.to_string();
    for _ in 0..MAX_FORWARDS {
        let Some(mut state) = read::<S, T>(store, table, &key).await? else {
            return Ok(None);
        };
        match forward(&mut state) {
            Some(into) => key = into,
            None => return Ok(Some(state)),
        }
    }
    Err(merges_go_round(table, &key))
}

fn merges_go_round(table: &TableSpec, key: &str) -> EnrichError {
    EnrichError::Data(format!("{}: the merges from {key} go round", table.name))
}

/// A state after a change.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied<T> {
    pub state: T,
    /// False when the change had been applied before (a redelivery): the state is then
    /// as it is now.
    pub first_time: bool,
}

/// Applies the change marked `mark` to the state at `key` (a default state when there
/// is none yet), once; when that state was merged into another (`forward`), to the one
/// it leads to instead, unless the change was applied here before the merge.
async fn change_once<S, T, F>(
    store: &S,
    table: &TableSpec,
    key: &str,
    mark: Mark,
    forward: Forward<T>,
    mut apply: F,
) -> Result<Applied<T>, EnrichError>
where
    S: Store,
    T: Serialize + DeserializeOwned + Default + Send,
    F: FnMut(&mut T) + Send,
{
    let mut key = key.to_string();
    for _ in 0..MAX_FORWARDS {
        let mut changed = None;
        let mut merged_into = None;
        let mut damaged = None;
        let outcome = store
            .update(table, Bytes::from(key.clone()), ATTEMPTS, |current| {
                let mut state: T = match current.map(|record| decode(table, &record.value)) {
                    Some(Ok(state)) => state,
                    Some(Err(err)) => {
                        damaged = Some(err);
                        return None;
                    }
                    None => T::default(),
                };
                merged_into = forward(&mut state);
                if merged_into.is_some() {
                    return None;
                }
                apply(&mut state);
                let value = serde_json::to_vec(&state).ok()?;
                changed = Some(state);
                Some(Change {
                    value: Some(Bytes::from(value)),
                    appends: Vec::new(),
                    marks: vec![mark.clone()],
                })
            })
            .await?;
        if let Some(err) = damaged {
            return Err(err);
        }
        match (outcome, merged_into) {
            (Some(Outcome::Applied { .. }), _) => {
                return Ok(Applied {
                    state: changed
                        .ok_or_else(|| EnrichError::Data(format!("{}: no state", table.name)))?,
                    first_time: true,
                });
            }
            (Some(Outcome::Conflict { present_marks, .. }), _) if !present_marks.is_empty() => {
                return Ok(Applied {
                    state: read_live(store, table, &key, forward)
                        .await?
                        .unwrap_or_default(),
                    first_time: false,
                });
            }
            (None, Some(into)) => {
                if store.mark(table, key.as_bytes(), &mark.id).await?.is_some() {
                    return Ok(Applied {
                        state: read_live(store, table, &into, forward)
                            .await?
                            .unwrap_or_default(),
                        first_time: false,
                    });
                }
                key = into;
            }
            _ => {
                return Err(EnrichError::Unavailable(format!(
                    "{}: {key} kept changing",
                    table.name
                )));
            }
        }
    }
    Err(merges_go_round(table, &key))
}

fn event_mark(message_id: &str) -> Mark {
    Mark {
        id: Bytes::from(format!("e:{message_id}")),
        value: Bytes::new(),
        ttl: Some(MARK_TTL),
        if_absent: true,
    }
}

/// Applies event `message_id` to the state at `key`, a state that is no one's and never
/// moves (a default state when there is none yet), once: returns the state after it.
pub async fn apply_once<S, T, F>(
    store: &S,
    table: &TableSpec,
    key: &str,
    message_id: &str,
    apply: F,
) -> Result<Applied<T>, EnrichError>
where
    S: Store,
    T: Serialize + DeserializeOwned + Default + Send,
    F: FnMut(&mut T) + Send,
{
    change_once(store, table, key, event_mark(message_id), stays, apply).await
}

/// Applies event `message_id` to a person's state at `key` once, following the merges of
/// their profile: returns the state after it.
pub async fn person_once<S, T, F>(
    store: &S,
    table: &TableSpec,
    key: &str,
    message_id: &str,
    apply: F,
) -> Result<Applied<T>, EnrichError>
where
    S: Store,
    T: PersonState,
    F: FnMut(&mut T) + Send,
{
    change_once(store, table, key, event_mark(message_id), follows, apply).await
}

/// The profile whose state is at `from_key` was merged into the one whose state is at
/// `into_key`: the state at `from_key` is frozen pointing at `into_key` (the person's
/// late events follow), `absorb` takes it into the state `into_key` leads to, once
/// (however often the merge is delivered, and wherever that state has moved since), and
/// then the frozen state is emptied, since its data lives on in the other (and is
/// deleted with it when the person is forgotten). Returns the state that took it in.
pub async fn merge_once<S, T, F>(
    store: &S,
    table: &TableSpec,
    from_key: &str,
    into_key: &str,
    mut absorb: F,
) -> Result<Applied<T>, EnrichError>
where
    S: Store,
    T: PersonState,
    F: FnMut(&mut T, &T) + Send,
{
    // 1. Freeze: from now on changes to `from_key` go to `into_key`.
    let mut elsewhere = None;
    let mut damaged = None;
    store
        .update(
            table,
            Bytes::from(from_key.to_string()),
            ATTEMPTS,
            |current| {
                let mut state: T = match current.map(|record| decode(table, &record.value)) {
                    Some(Ok(state)) => state,
                    Some(Err(err)) => {
                        damaged = Some(err);
                        return None;
                    }
                    None => T::default(),
                };
                match state.merged_into() {
                    Some(other) if other != into_key => {
                        elsewhere = Some(other.clone());
                        return None;
                    }
                    Some(_) => return None,
                    None => *state.merged_into() = Some(into_key.to_string()),
                }
                Some(Change::set(serde_json::to_vec(&state).ok()?))
            },
        )
        .await?;
    if let Some(err) = damaged {
        return Err(err);
    }
    if let Some(other) = elsewhere {
        return Err(EnrichError::Unreadable(format!(
            "merging {from_key} into {into_key}: {from_key} was merged into {other}"
        )));
    }
    // 2. Take it in, once (marked with where it came from).
    let frozen: T = read(store, table, from_key).await?.unwrap_or_default();
    let mark = Mark {
        id: Bytes::from(format!("merge:{from_key}")),
        value: Bytes::new(),
        ttl: None,
        if_absent: true,
    };
    let applied = change_once(store, table, into_key, mark, follows, |state: &mut T| {
        absorb(state, &frozen)
    })
    .await?;
    // 3. Empty what is left: only the pointer stays.
    let mut left = T::default();
    *left.merged_into() = Some(into_key.to_string());
    let left = encode(table, &left)?;
    store
        .update(
            table,
            Bytes::from(from_key.to_string()),
            ATTEMPTS,
            |current| {
                let current = current?;
                let mut state: T = decode(table, &current.value).ok()?;
                // Still frozen for this merge (not revived by a split since), not empty yet.
                let frozen_here = state.merged_into().as_deref() == Some(into_key);
                (frozen_here && current.value != left).then(|| Change::set(left.clone()))
            },
        )
        .await?;
    Ok(applied)
}

/// A split made the profile whose state is at `key` a person of its own again: a state
/// frozen by a merge starts anew (what it held lives on where it was merged).
pub async fn revive<S, T>(store: &S, table: &TableSpec, key: &str) -> Result<(), EnrichError>
where
    S: Store,
    T: PersonState,
{
    let fresh = encode(table, &T::default())?;
    store
        .update(table, Bytes::from(key.to_string()), ATTEMPTS, |current| {
            let mut state: T = decode(table, &current?.value).ok()?;
            state.merged_into().as_ref()?;
            Some(Change::set(fresh.clone()))
        })
        .await?;
    Ok(())
}

/// A state that facts are drawn from: a person's.
pub trait FactSource: PersonState {
    /// What the state says about the person.
    fn facts(&self) -> FactSet;
    /// The newest event time the state has counted (ms).
    fn as_of_ms(&self) -> i64;
    /// The digest ([`crate::digest`]) of the facts last published from it, kept in it.
    fn published(&mut self) -> &mut Option<u64>;
}

/// What to publish after a change to a [`FactSource`], noted inside the change, where
/// the digest of what was published is kept up to date.
#[derive(Default)]
struct Publication {
    learned: Option<Learned>,
    changed: bool,
}

impl Publication {
    fn note<T: FactSource>(&mut self, state: &mut T) {
        let facts = state.facts();
        let digest = crate::digest(&facts);
        self.changed = *state.published() != Some(digest);
        *state.published() = Some(digest);
        self.learned = Some(Learned {
            facts,
            as_of_ms: state.as_of_ms(),
        });
    }

    /// The facts after the change when they differ from the ones published last, and,
    /// for a change made before (a redelivery), the facts as they are, since what was
    /// published then may not have reached NATS.
    fn finish<T: FactSource>(self, applied: Applied<T>) -> Option<Learned> {
        if !applied.first_time {
            return Some(Learned {
                facts: applied.state.facts(),
                as_of_ms: applied.state.as_of_ms(),
            });
        }
        self.learned.filter(|_| self.changed)
    }
}

/// Applies event `message_id` to the person's state at `key` once ([`person_once`]), and
/// returns the facts to publish ([`Publication::finish`]).
pub async fn facts_once<S, T, F>(
    store: &S,
    table: &TableSpec,
    key: &str,
    message_id: &str,
    mut apply: F,
) -> Result<Option<Learned>, EnrichError>
where
    S: Store,
    T: FactSource,
    F: FnMut(&mut T) + Send,
{
    let mut publication = Publication::default();
    let applied = person_once(store, table, key, message_id, |state: &mut T| {
        apply(state);
        publication.note(state);
    })
    .await?;
    Ok(publication.finish(applied))
}

/// Merges the person's state at `from_key` into the one at `into_key` once
/// ([`merge_once`]), and returns the facts to publish about the person it went to.
pub async fn merge_facts_once<S, T, F>(
    store: &S,
    table: &TableSpec,
    from_key: &str,
    into_key: &str,
    mut absorb: F,
) -> Result<Option<Learned>, EnrichError>
where
    S: Store,
    T: FactSource,
    F: FnMut(&mut T, &T) + Send,
{
    let mut publication = Publication::default();
    let applied = merge_once(store, table, from_key, into_key, |state: &mut T, merged| {
        absorb(state, merged);
        publication.note(state);
    })
    .await?;
    Ok(publication.finish(applied))
}
#[cfg(test)]
mod tests {
    use super::*;
    use cairn_store::{Clock, EmbeddedStore, Fsync};

    const TABLE: TableSpec = TableSpec {
        name: "enrich_test",
        timeline: cairn_store::Retention {
            max_entries: 1,
            max_age: None,
        },
    };

    #[tokio::test]
    async fn an_event_changes_the_state_once_however_often_it_comes() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            EmbeddedStore::open(dir.path(), Fsync::Buffer, 1 << 20, Clock::system()).unwrap();
        let count = |store: &EmbeddedStore, message: &'static str| {
            let store = store.clone();
            async move {
                apply_once(&store, &TABLE, "p1", message, |seen: &mut Vec<String>| {
                    seen.push(message.to_string())
                })
                .await
                .unwrap()
                .state
            }
        };
        assert_eq!(count(&store, "m1").await, vec!["m1"]);
        assert_eq!(count(&store, "m2").await, vec!["m1", "m2"]);
        // m1 again: nothing changes, and the state comes back as it is.
        assert_eq!(count(&store, "m1").await, vec!["m1", "m2"]);
        assert_eq!(
            read::<_, Vec<String>>(&store, &TABLE, "p1").await.unwrap(),
            Some(vec!["m1".to_string(), "m2".to_string()])
        );
    }

    /// Counts a person's events; says whether there were at least two.
    #[derive(Debug, Default, Serialize, serde::Deserialize)]
    struct Visits {
        count: u32,
        as_of: i64,
        published: Option<u64>,
        merged_into: Option<String>,
    }

    impl PersonState for Visits {
        fn merged_into(&mut self) -> &mut Option<String> {
            &mut self.merged_into
        }
    }

    impl FactSource for Visits {
        fn facts(&self) -> FactSet {
            let mut facts = FactSet::new();
            facts.insert("regular".into(), (self.count >= 2).into());
            facts
        }
        fn as_of_ms(&self) -> i64 {
            self.as_of
        }
        fn published(&mut self) -> &mut Option<u64> {
            &mut self.published
        }
    }

    #[tokio::test]
    async fn facts_are_published_when_they_change_and_again_for_a_redelivery() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            EmbeddedStore::open(dir.path(), Fsync::Buffer, 1 << 20, Clock::system()).unwrap();
        let visit = |message: &'static str, at: i64| {
            let store = store.clone();
            async move {
                facts_once(&store, &TABLE, "p1", message, |visits: &mut Visits| {
                    visits.count += 1;
                    visits.as_of = visits.as_of.max(at);
                })
                .await
                .unwrap()
                .map(|learned| (learned.facts["regular"].clone(), learned.as_of_ms))
            }
        };
        assert_eq!(visit("m1", 10).await, Some((false.into(), 10)));
        assert_eq!(visit("m2", 20).await, Some((true.into(), 20)));
        // Still a regular: nothing new to say.
        assert_eq!(visit("m3", 30).await, None);
        // A late event changes nothing either; the facts hold as of the newest event.
        assert_eq!(visit("m4", 5).await, None);
        // m2 again: its facts may never have reached NATS, so they go again, as they are.
        assert_eq!(visit("m2", 20).await, Some((true.into(), 30)));
        let visits: Visits = read(&store, &TABLE, "p1").await.unwrap().unwrap();
        assert_eq!(visits.count, 4);
    }

    #[tokio::test]
    async fn a_damaged_state_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            EmbeddedStore::open(dir.path(), Fsync::Buffer, 1 << 20, Clock::system()).unwrap();
        store
            .write(
                &TABLE,
                cairn_store::Write::new(Bytes::from("p1"))
                    .record(cairn_store::Expect::Any, "not json"),
            )
            .await
            .unwrap();
        let err = apply_once(&store, &TABLE, "p1", "m1", |seen: &mut Vec<String>| {
            seen.push("m1".into())
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("enrich_test state"), "{err}");
    }

    #[tokio::test]
    async fn a_merged_person_s_state_is_taken_in_once_and_their_late_events_follow_it() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            EmbeddedStore::open(dir.path(), Fsync::Buffer, 1 << 20, Clock::system()).unwrap();
        let visit = |key: &'static str, message: &'static str| {
            let store = store.clone();
            async move {
                let applied = person_once(&store, &TABLE, key, message, |visits: &mut Visits| {
                    visits.count += 1
                })
                .await
                .unwrap();
                (applied.state.count, applied.first_time)
            }
        };
        let merge = |from: &'static str, into: &'static str| {
            let store = store.clone();
            async move {
                let applied = merge_once(&store, &TABLE, from, into, |visits, merged: &Visits| {
                    visits.count += merged.count
                })
                .await
                .unwrap();
                (applied.state.count, applied.first_time)
            }
        };
        let count = |key: &'static str| {
            let store = store.clone();
            async move {
                let visits: Visits = read(&store, &TABLE, key).await.unwrap().unwrap();
                (visits.count, visits.merged_into)
            }
        };
        visit("p1", "m1").await;
        visit("p1", "m2").await;
        visit("p2", "m3").await;

        assert_eq!(merge("p2", "p1").await, (3, true));
        // The merge delivered again: taken in once.
        assert_eq!(merge("p2", "p1").await, (3, false));
        // What is left of p2 is a pointer.
        assert_eq!(count("p2").await, (0, Some("p1".to_string())));
        // A late event of p2 counts with the rest of the person's.
        assert_eq!(visit("p2", "m4").await, (4, true));
        // An event p2 had counted before the merge, delivered again, does not count twice.
        assert_eq!(visit("p2", "m3").await, (4, false));
        assert_eq!(count("p1").await, (4, None));

        // The survivor merged on in turn: a later merge into it goes where it went.
        assert_eq!(merge("p1", "p0").await, (4, true));
        visit("p3", "m5").await;
        assert_eq!(merge("p3", "p1").await, (5, true));
        assert_eq!(count("p0").await, (5, None));
        assert_eq!(visit("p2", "m6").await, (6, true));

        // A split makes p2 someone of their own again, starting anew.
        revive::<_, Visits>(&store, &TABLE, "p2").await.unwrap();
        assert_eq!(visit("p2", "m7").await, (1, true));
        assert_eq!(count("p0").await, (6, None));
        // A live state is left as it is.
        revive::<_, Visits>(&store, &TABLE, "p2").await.unwrap();
        assert_eq!(count("p2").await, (1, None));
    }
}
