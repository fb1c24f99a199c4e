//! Records the replicas share (the saved segments, the saved campaigns): JSON, changed
//! by compare-and-set so that checks across their entries hold even when two changes
//! race, and read through a [`Cached`] copy: checked at most every second, and decoded
//! again only when the record's version changed (decoding it for every message stalls
//! the messages meanwhile).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_store::{Expect, Outcome, Store, TableSpec, Versioned, Write};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

use crate::error::SegmentError;

/// How long a replica uses what it read before looking for changes.
const FRESH: Duration = Duration::from_secs(1);
/// Tries at a change while others keep changing the record.
const ATTEMPTS: u32 = 20;

/// The value of `record` (the default when there is none). `what` names it in errors.
pub fn decode<T: DeserializeOwned + Default>(
    record: Option<&Versioned>,
    what: &str,
) -> Result<T, SegmentError> {
    match record {
        Some(record) => serde_json::from_slice(&record.value)
            .map_err(|err| SegmentError::Corrupt(format!("{what}: {err}"))),
        None => Ok(T::default()),
    }
}

/// The value of record `key` and its version (`None` when it was never written).
pub async fn load<T: DeserializeOwned + Default, S: Store>(
    store: &S,
    table: &TableSpec,
    key: &'static [u8],
    what: &str,
) -> Result<(T, Option<u64>), SegmentError> {
    let record = store.get(table, key).await?;
    Ok((
        decode(record.as_ref(), what)?,
        record.map(|record| record.version),
    ))
}

/// Applies `edit` to the value of record `key` and saves it, trying again when another
/// change came first. `edit` checks what it changes; its error leaves everything as it
/// was.
pub async fn change<T, S, F>(
    store: &S,
    table: &TableSpec,
    key: &'static [u8],
    what: &str,
    mut edit: F,
) -> Result<T, SegmentError>
where
    T: Serialize + DeserializeOwned + Default,
    S: Store,
    F: FnMut(&mut T) -> Result<(), SegmentError>,
{
    for _ in 0..ATTEMPTS {
        let (mut value, version) = load::<T, S>(store, table, key, what).await?;
        edit(&mut value)?;
        let bytes =
            serde_json::to_vec(&value).map_err(|err| SegmentError::Corrupt(err.to_string()))?;
        let expect = version.map_or(Expect::Absent, Expect::Version);
        match store
            .write(
                table,
                Write::new(Bytes::from_static(key)).record(expect, bytes),
            )
            .await?
        {
            Outcome::Applied { .. } => return Ok(value),
            Outcome::Conflict { .. } => continue,
        }
    }
    Err(SegmentError::Busy(format!("the {what} kept changing")))
}

struct Current<T> {
    value: Arc<T>,
    version: u64,
    checked: Instant,
}

/// The value of record `key` in `table`, decoded.
pub struct Cached<T> {
    table: &'static TableSpec,
    key: &'static [u8],
    current: Arc<Mutex<Option<Current<T>>>>,
}

impl<T> Clone for Cached<T> {
    fn clone(&self) -> Self {
        Self {
            table: self.table,
            key: self.key,
            current: self.current.clone(),
        }
    }
}

impl<T: Send + Sync> Cached<T> {
    pub fn new(table: &'static TableSpec, key: &'static [u8]) -> Self {
        Self {
            table,
            key,
            current: Arc::default(),
        }
    }

    /// The value, at most a second old and of version `at_least` or later, and its
    /// version (0 when the record was never written). `decode` reads the record (`None`
    /// when there is none).
    pub async fn get<S: Store>(
        &self,
        store: &S,
        at_least: u64,
        decode: impl FnOnce(Option<&Versioned>) -> Result<T, SegmentError>,
    ) -> Result<(Arc<T>, u64), SegmentError> {
        let mut current = self.current.lock().await;
        if let Some(known) = current.as_ref()
            && known.checked.elapsed() < FRESH
            && known.version >= at_least
        {
            return Ok((known.value.clone(), known.version));
        }
        let record = store.get(self.table, self.key).await?;
        let version = record.as_ref().map_or(0, |record| record.version);
        let value = match current.take() {
            Some(known) if known.version == version => known.value,
            _ => Arc::new(decode(record.as_ref())?),
        };
        *current = Some(Current {
            value: value.clone(),
            version,
            checked: Instant::now(),
        });
        Ok((value, version))
    }
}
