//! Per-profile state for the enrichers that remember (activity, content): one JSON
//! document per profile in the enricher's table, changed once per event. The event's
//! mark is written with the change, so an event delivered again changes nothing and
//! gets the state as it is.

use std::time::Duration;

use bytes::Bytes;
use cairn_store::{Change, Mark, Outcome, Store, TableSpec};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::EnrichError;

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

/// Applies event `message_id` to the state of `profile_id` (a default state when there
/// is none yet), once: returns the state after it.
pub async fn apply_once<S, T, F>(
    store: &S,
    table: &TableSpec,
    profile_id: &str,
    message_id: &str,
    mut apply: F,
) -> Result<T, EnrichError>
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
        Some(Outcome::Applied { .. }) => {
            changed.ok_or_else(|| EnrichError::Data(format!("{}: no state", table.name)))
        }
        Some(Outcome::Conflict { present_marks, .. }) if !present_marks.is_empty() => {
            Ok(read(store, table, profile_id).await?.unwrap_or_default())
        }
        _ => Err(EnrichError::Unavailable(format!(
            "{}: profile {profile_id} kept changing",
            table.name
        ))),
    }
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
