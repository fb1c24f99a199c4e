//! Cairn's state: one [`Store`] trait with the operations the services need, and two
//! backends behind it.
//!
//! - [`model`]: tables, records with versions, timelines with retention, marks, the
//!   atomic [`Write`], token ranges for scans;
//! - [`embedded`]: the default backend, on fjall, in one local directory;
//! - [`scylla`]: ScyllaDB, for when one machine is not enough;
//! - [`config`]: choosing and configuring the backend from `CAIRN_*` variables.
//!
//! Services are generic over [`Store`]; the binary picks a backend at start-up and
//! hands out an [`AnyStore`].

#![forbid(unsafe_code)]

pub mod config;
pub mod embedded;
pub mod model;
pub mod scylla;

use std::time::Duration;

use bytes::Bytes;
use cairn_runtime::error::{Classify, ErrorKind};

pub use config::{StoreConfig, open};
pub use embedded::{Clock, EmbeddedStore, Fsync};
pub use model::{
    Expect, Mark, Outcome, RecordWrite, Retention, ScanCursor, ScanPage, TableSpec, TimelineCursor,
    TimelineEntry, TimelinePage, TokenRange, Versioned, Write, token_of,
};
pub use scylla::ScyllaStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("table {name:?}: {reason}")]
    InvalidTable { name: String, reason: String },
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("{what} is {size} bytes; the limit is {limit}")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
    #[error("embedded store: {0}")]
    Embedded(String),
    #[error("ScyllaDB: {0}")]
    Scylla(String),
    #[error("ScyllaDB unavailable: {0}")]
    Unavailable(String),
    #[error("migration {version} ({name}): {reason}")]
    Migration {
        version: u32,
        name: String,
        reason: String,
    },
    #[error("{0}")]
    Config(#[from] cairn_runtime::ConfigError),
    #[error("gave up after {attempts} attempts: the record kept changing underneath")]
    Contended { attempts: u32 },
}

impl Classify for StoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            StoreError::InvalidKey(_) | StoreError::TooLarge { .. } => ErrorKind::InvalidArgument,
            StoreError::Unavailable(_) | StoreError::Contended { .. } => ErrorKind::Unavailable,
            _ => ErrorKind::Internal,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The storage operations every backend provides. All of them are atomic per key.
pub trait Store: Clone + Send + Sync + 'static {
    /// The record of `key`, if any.
    fn get(
        &self,
        table: &TableSpec,
        key: &[u8],
    ) -> impl Future<Output = Result<Option<Versioned>>> + Send;

    /// Applies `write` atomically: the record change, the timeline appends and the marks
    /// all happen, or, when a condition fails, none of them.
    fn write(
        &self,
        table: &TableSpec,
        write: Write,
    ) -> impl Future<Output = Result<Outcome>> + Send;

    /// A page of `key`'s timeline, newest first, within the table's retention.
    fn timeline(
        &self,
        table: &TableSpec,
        key: &[u8],
        after: Option<TimelineCursor>,
        limit: u32,
    ) -> impl Future<Output = Result<TimelinePage>> + Send;

    /// The value of a mark, unless absent or expired.
    fn mark(
        &self,
        table: &TableSpec,
        key: &[u8],
        id: &[u8],
    ) -> impl Future<Output = Result<Option<Bytes>>> + Send;

    /// A page of the records whose key's token is in `range`, in token order.
    fn scan(
        &self,
        table: &TableSpec,
        range: TokenRange,
        after: Option<ScanCursor>,
        limit: u32,
    ) -> impl Future<Output = Result<ScanPage>> + Send;

    /// Removes everything stored under `key`: record, timeline and marks.
    fn delete(&self, table: &TableSpec, key: &[u8]) -> impl Future<Output = Result<()>> + Send;

    /// Read-modify-write of one key: reads the record, asks `change` what to write, and
    /// writes it on the version it read, retrying on a version conflict up to `attempts`
    /// times. `change` returning `None` writes nothing (and gives `Ok(None)`). A conflict
    /// on a mark is not retried: it is returned, as it means the change was made already.
    fn update<F>(
        &self,
        table: &TableSpec,
        key: Bytes,
        attempts: u32,
        mut change: F,
    ) -> impl Future<Output = Result<Option<Outcome>>> + Send
    where
        F: FnMut(Option<&Versioned>) -> Option<Change> + Send,
    {
        async move {
            for _ in 0..attempts.max(1) {
                let current = self.get(table, &key).await?;
                let Some(wanted) = change(current.as_ref()) else {
                    return Ok(None);
                };
                let expect = current
                    .as_ref()
                    .map_or(Expect::Absent, |record| Expect::Version(record.version));
                let outcome = self
                    .write(table, wanted.into_write(key.clone(), expect))
                    .await?;
                match &outcome {
                    Outcome::Conflict { present_marks, .. } if present_marks.is_empty() => continue,
                    _ => return Ok(Some(outcome)),
                }
            }
            Err(StoreError::Contended { attempts })
        }
    }
}

/// What a read-modify-write writes: the record's new value and whatever goes with it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Change {
    /// The new record; `None` deletes it.
    pub value: Option<Bytes>,
    pub appends: Vec<TimelineEntry>,
    pub marks: Vec<Mark>,
}

impl Change {
    /// Sets the record to `value`.
    pub fn set(value: impl Into<Bytes>) -> Self {
        Self {
            value: Some(value.into()),
            ..Default::default()
        }
    }

    pub fn into_write(self, key: Bytes, expect: Expect) -> Write {
        Write {
            key,
            record: Some(RecordWrite {
                expect,
                value: self.value,
            }),
            appends: self.appends,
            marks: self.marks,
        }
    }
}

/// Records `id` under `key` unless it is already there; returns the existing value
/// when it was. The building block of exactly-once effects.
pub async fn remember<S: Store>(
    store: &S,
    table: &TableSpec,
    key: &[u8],
    id: &[u8],
    value: Bytes,
    ttl: Option<Duration>,
) -> Result<Option<Bytes>> {
    let write =
        Write::new(Bytes::copy_from_slice(key)).mark_once(Bytes::copy_from_slice(id), value, ttl);
    match store.write(table, write).await? {
        Outcome::Applied { .. } => Ok(None),
        Outcome::Conflict { .. } => Ok(Some(store.mark(table, key, id).await?.unwrap_or_default())),
    }
}

/// Deletes everything in `table` (records, timelines, marks) except the keys `keep`
/// says to keep; returns how many keys were deleted. For rebuilding derived state.
pub async fn delete_all<S: Store>(
    store: &S,
    table: &TableSpec,
    keep: impl Fn(&[u8]) -> bool,
) -> Result<u64> {
    let mut deleted = 0;
    let mut cursor = None;
    loop {
        let page = store.scan(table, TokenRange::FULL, cursor, 500).await?;
        for (key, _) in &page.records {
            if !keep(key) {
                store.delete(table, key).await?;
                deleted += 1;
            }
        }
        cursor = page.next;
        if cursor.is_none() {
            return Ok(deleted);
        }
    }
}

/// The backend chosen at start-up.
#[derive(Clone, Debug)]
pub enum AnyStore {
    Embedded(EmbeddedStore),
    Scylla(ScyllaStore),
}

impl Store for AnyStore {
    async fn get(&self, table: &TableSpec, key: &[u8]) -> Result<Option<Versioned>> {
        match self {
            AnyStore::Embedded(store) => store.get(table, key).await,
            AnyStore::Scylla(store) => store.get(table, key).await,
        }
    }

    async fn write(&self, table: &TableSpec, write: Write) -> Result<Outcome> {
        match self {
            AnyStore::Embedded(store) => store.write(table, write).await,
            AnyStore::Scylla(store) => store.write(table, write).await,
        }
    }

    async fn timeline(
        &self,
        table: &TableSpec,
        key: &[u8],
        after: Option<TimelineCursor>,
        limit: u32,
    ) -> Result<TimelinePage> {
        match self {
            AnyStore::Embedded(store) => store.timeline(table, key, after, limit).await,
            AnyStore::Scylla(store) => store.timeline(table, key, after, limit).await,
        }
    }

    async fn mark(&self, table: &TableSpec, key: &[u8], id: &[u8]) -> Result<Option<Bytes>> {
        match self {
            AnyStore::Embedded(store) => store.mark(table, key, id).await,
            AnyStore::Scylla(store) => store.mark(table, key, id).await,
        }
    }

    async fn scan(
        &self,
        table: &TableSpec,
        range: TokenRange,
        after: Option<ScanCursor>,
        limit: u32,
    ) -> Result<ScanPage> {
        match self {
            AnyStore::Embedded(store) => store.scan(table, range, after, limit).await,
            AnyStore::Scylla(store) => store.scan(table, range, after, limit).await,
        }
    }

    async fn delete(&self, table: &TableSpec, key: &[u8]) -> Result<()> {
        match self {
            AnyStore::Embedded(store) => store.delete(table, key).await,
            AnyStore::Scylla(store) => store.delete(table, key).await,
        }
    }

    async fn update<F>(
        &self,
        table: &TableSpec,
        key: Bytes,
        attempts: u32,
        change: F,
    ) -> Result<Option<Outcome>>
    where
        F: FnMut(Option<&Versioned>) -> Option<Change> + Send,
    {
        match self {
            AnyStore::Embedded(store) => store.update(table, key, attempts, change).await,
            AnyStore::Scylla(store) => store.update(table, key, attempts, change).await,
        }
    }
}
