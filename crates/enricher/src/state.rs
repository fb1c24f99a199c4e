//! Per-profile state for the enrichers that remember (activity, content): one JSON
//! document per profile in the enricher's table, changed once per event. The event's
//! mark is written with the change, so an event delivered again changes nothing and
//! gets the state as it is.
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

fn decode<T: DeserializeOwned>(table: &TableSpec, value: &[u8]) -> Result<T, EnrichError> {
    serde_json::from_slice(value)
        .map_err(|err| EnrichError::Data(format!("{} state: {err}", table.name)))
}

/// The state of `profile_id`, if any.
pub async fn read<S, T>(
    store: &S,
    table: &TableSpec,
    profile_id: &str,
) -> Result<Option<T>, EnrichError>
where
    S: Store,
    T: DeserializeOwned,
{
    match store.get(table, profile_id.as_bytes()).await? {
        Some(record) => decode(table, &record.value).map(Some),
        None => Ok(None),
    }
}

/// A state after an event.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied<T> {
    pub state: T,
    /// False when the event had been applied before (a redelivery): the state is then as
    /// it is now.
    pub first_time: bool,
}

/// Applies event `message_id` to the state of `profile_id` (a default state when there
/// is none yet), once: returns the state after it.
pub async fn apply_once<S, T, F>(
    store: &S,
    table: &TableSpec,
    profile_id: &str,
    message_id: &str,
    mut apply: F,
) -> Result<Applied<T>, EnrichError>
where
    S: Store,
    T: Serialize + DeserializeOwned + Default + Send,
    F: FnMut(&mut T) + Send,
{
    let mark = Mark {
        id: Bytes::from(format!("e:{message_id}")),
        value: Bytes::new(),
        ttl: Some(MARK_TTL),
        if_absent: true,
    };
    let mut changed = None;
    let mut damaged = None;
    let outcome = store
        .update(
            table,
            Bytes::from(profile_id.to_string()),
            ATTEMPTS,
            |current| {
                let mut state: T = match current {
                    Some(record) => match decode(table, &record.value) {
                        Ok(state) => state,
                        Err(err) => {
                            damaged = Some(err);
                            return None;
                        }
                    },
                    None => T::default(),
                };
                apply(&mut state);
                let value = serde_json::to_vec(&state).ok()?;
                changed = Some(state);
                Some(Change {
                    value: Some(Bytes::from(value)),
                    appends: Vec::new(),
                    marks: vec![mark.clone()],
                })
            },
        )
        .await?;
    if let Some(err) = damaged {
        return Err(err);
    }
    match outcome {
        Some(Outcome::Applied { .. }) => Ok(Applied {
            state: changed.ok_or_else(|| EnrichError::Data(format!("{}: no state", table.name)))?,
            first_time: true,
        }),
        Some(Outcome::Conflict { present_marks, .. }) if !present_marks.is_empty() => Ok(Applied {
            state: read(store, table, profile_id).await?.unwrap_or_default(),
            first_time: false,
        }),
        _ => Err(EnrichError::Unavailable(format!(
            "{}: profile {profile_id} kept changing",
            table.name
        ))),
    }
}

/// A per-person state that facts are drawn from.
pub trait FactSource: Serialize + DeserializeOwned + Default + Send {
    /// What the state says about the person.
    fn facts(&self) -> FactSet;
    /// The newest event time the state has counted (ms).
    fn as_of_ms(&self) -> i64;
    /// The digest ([`crate::digest`]) of the facts last published from it, kept in it.
    fn published(&mut self) -> &mut Option<u64>;
}

/// Applies event `message_id` to the state of `profile_id` once, and returns the facts
/// to publish: those after the event when they differ from the ones published last,
/// and, for an event applied before (a redelivery), the facts as they are, since what
/// was published then may not have reached NATS.
pub async fn facts_once<S, T, F>(
    store: &S,
    table: &TableSpec,
    profile_id: &str,
    message_id: &str,
    mut apply: F,
) -> Result<Option<Learned>, EnrichError>
where
    S: Store,
    T: FactSource,
    F: FnMut(&mut T) + Send,
{
    let mut changed = false;
    let mut learned = None;
    let applied = apply_once(store, table, profile_id, message_id, |state: &mut T| {
        apply(state);
        let facts = state.facts();
        let digest = crate::digest(&facts);
        changed = *state.published() != Some(digest);
        *state.published() = Some(digest);
        learned = Some(Learned {
            facts,
            as_of_ms: state.as_of_ms(),
        });
    })
    .await?;
    if !applied.first_time {
        return Ok(Some(Learned {
            facts: applied.state.facts(),
            as_of_ms: applied.state.as_of_ms(),
        }));
    }
    Ok(learned.filter(|_| changed))
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

    /// Counts events; says whether there were at least two.
    #[derive(Default, Serialize, serde::Deserialize)]
    struct Visits {
        count: u32,
        as_of: i64,
        published: Option<u64>,
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
}
