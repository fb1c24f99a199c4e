//! The embedded backend: fjall (an LSM tree) in one local directory.
//!
//! Each table is three fjall keyspaces: `<table>.records` (keyed by token then key, so
//! scans go in token order like ScyllaDB's), `<table>.timeline` and `<table>.marks`
//! (keyed by key, so one key's entries are contiguous). Every [`Write`] is one fjall
//! batch, which is atomic and recovered whole or not at all after a crash. Conditions
//! are checked under a lock striped by key, so concurrent writers to one key serialise
//! and exactly one wins a compare-and-set; writers to different keys do not wait.
//!
//! Durability: with [`Fsync::Buffer`] (the default) a write is in the operating system
//! before it returns, so it survives the process being killed; with [`Fsync::Always`] it
//! is also fsynced, so it survives power loss. The work is synchronous and short (a
//! memtable insert and a journal write); it runs on the calling task.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::model::{
    Expect, Outcome, ScanCursor, ScanPage, TableSpec, TimelineCursor, TimelineEntry, TimelinePage,
    TokenRange, Versioned, Write, check_key, from_sortable, sortable, token_of,
};
use crate::{Result, Store, StoreError};

/// How hard a write is pushed to disk before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Written to the operating system: survives the process crashing, not power loss.
    Buffer,
    /// fsynced: survives power loss; each write waits for the disk.
    Always,
}

/// The time the store uses for retention and TTLs: the system clock, or a manual one
/// that tests move forward.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    manual: Option<Arc<AtomicI64>>,
}

impl Clock {
    pub fn system() -> Self {
        Self { manual: None }
    }

    /// A clock that stands still at `start_ms` until advanced.
    pub fn manual(start_ms: i64) -> Self {
        Self {
            manual: Some(Arc::new(AtomicI64::new(start_ms))),
        }
    }

    pub fn advance(&self, by: Duration) {
        if let Some(now) = &self.manual {
            now.fetch_add(millis(by), Ordering::SeqCst);
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        match &self.manual {
            Some(now) => now.load(Ordering::SeqCst),
            None => cairn_runtime::clock::now_ms(),
        }
    }
}

const LOCK_STRIPES: usize = 1024;
/// Most timeline entries one trim removes (the rest go on a later one).
const TRIM_BATCH: usize = 1024;

#[derive(Clone)]
struct TableKeyspaces {
    records: Keyspace,
    timeline: Keyspace,
    marks: Keyspace,
}

struct Inner {
    db: Database,
    tables: RwLock<HashMap<&'static str, TableKeyspaces>>,
    locks: Vec<Mutex<()>>,
    fsync: Fsync,
    clock: Clock,
}

/// The embedded store. Cheap to clone; one per process per directory.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("fsync", &self.inner.fsync)
            .finish()
    }
}

fn fjall_error(err: fjall::Error) -> StoreError {
    StoreError::Embedded(err.to_string())
}

impl EmbeddedStore {
    /// Opens (creating or recovering) the store in `dir`.
    pub fn open(dir: &Path, fsync: Fsync, cache_bytes: u64, clock: Clock) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|err| {
            StoreError::Embedded(format!("cannot create {}: {err}", dir.display()))
        })?;
        let db = Database::builder(dir)
            .cache_size(cache_bytes)
            .open()
            .map_err(|err| match err {
                fjall::Error::Locked => StoreError::Embedded(format!(
                    "{} is in use by another process (one process per data directory)",
                    dir.display()
                )),
                other => StoreError::Embedded(format!("cannot open {}: {other}", dir.display())),
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                tables: RwLock::new(HashMap::new()),
                locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
                fsync,
                clock,
            }),
        })
    }

    /// Forces everything written so far to disk (fsync).
    pub fn sync(&self) -> Result<()> {
        self.inner
            .db
            .persist(PersistMode::SyncAll)
            .map_err(fjall_error)
    }

    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    fn keyspaces(&self, table: &TableSpec) -> Result<TableKeyspaces> {
        if let Ok(tables) = self.inner.tables.read()
            && let Some(found) = tables.get(table.name)
        {
            return Ok(found.clone());
        }
        table.validate()?;
        let open = |suffix: &str, options: fn() -> KeyspaceCreateOptions| {
            self.inner
                .db
                .keyspace(&format!("{}.{suffix}", table.name), options)
                .map_err(fjall_error)
        };
        let keyspaces = TableKeyspaces {
            // Plain trees: key-value separation of the records (rewritten whole on every
            // change) measured slower for profiles of a few KB.
            records: open("records", KeyspaceCreateOptions::default)?,
            timeline: open("timeline", KeyspaceCreateOptions::default)?,
            marks: open("marks", KeyspaceCreateOptions::default)?,
        };
        if let Ok(mut tables) = self.inner.tables.write() {
            tables.insert(table.name, keyspaces.clone());
        }
        Ok(keyspaces)
    }

    fn lock(&self, table: &TableSpec, key: &[u8]) -> std::sync::MutexGuard<'_, ()> {
        let mut hash = token_of(key) as u64;
        hash ^= token_of(table.name.as_bytes()) as u64;
        let stripe = &self.inner.locks[(hash % LOCK_STRIPES as u64) as usize];
        // A poisoned stripe only means another writer panicked; the data is in fjall.
        stripe
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs a write. With fsync on every write it waits for the disk, so it tells Tokio
    /// to move other tasks off this thread meanwhile; buffered writes are short enough to
    /// run in place.
    fn blocking<T>(&self, work: impl FnOnce() -> T) -> T {
        let multi_thread = tokio::runtime::Handle::try_current().is_ok_and(|handle| {
            handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
        });
        if self.inner.fsync == Fsync::Always && multi_thread {
            tokio::task::block_in_place(work)
        } else {
            work()
        }
    }

    fn batch(&self) -> fjall::OwnedWriteBatch {
        let mode = match self.inner.fsync {
            Fsync::Buffer => PersistMode::Buffer,
            Fsync::Always => PersistMode::SyncAll,
        };
        self.inner.db.batch().durability(Some(mode))
    }

    fn read_state(keyspaces: &TableKeyspaces, key: &[u8]) -> Result<RecordState> {
        match keyspaces
            .records
            .get(record_key(key))
            .map_err(fjall_error)?
        {
            Some(stored) => decode_record(&stored),
            None => Ok(RecordState::default()),
        }
    }

    fn read_mark(
        &self,
        keyspaces: &TableKeyspaces,
        key: &[u8],
        id: &[u8],
    ) -> Result<Option<Bytes>> {
        let Some(stored) = keyspaces
            .marks
            .get(mark_key(key, id))
            .map_err(fjall_error)?
        else {
            return Ok(None);
        };
        let (expires_at, value) = decode_mark(&stored)?;
        Ok((expires_at > self.inner.clock.now_ms()).then(|| Bytes::copy_from_slice(value)))
    }

    fn apply(&self, table: &TableSpec, write: Write) -> Result<Outcome> {
        write.validate()?;
        let keyspaces = self.keyspaces(table)?;
        let _guard = self.lock(table, &write.key);
        let state = Self::read_state(&keyspaces, &write.key)?;
        self.apply_locked(table, &keyspaces, write, state)
    }

    /// Read-modify-write with one read, under the key's lock: no retries needed.
    fn modify<F>(&self, table: &TableSpec, key: Bytes, mut change: F) -> Result<Option<Outcome>>
    where
        F: FnMut(Option<&Versioned>) -> Option<crate::Change>,
    {
        check_key(&key)?;
        let keyspaces = self.keyspaces(table)?;
        let _guard = self.lock(table, &key);
        let state = Self::read_state(&keyspaces, &key)?;
        let current = state.live();
        let Some(wanted) = change(current.as_ref()) else {
            return Ok(None);
        };
        let expect = current
            .as_ref()
            .map_or(Expect::Absent, |record| Expect::Version(record.version));
        let write = wanted.into_write(key, expect);
        write.validate()?;
        self.apply_locked(table, &keyspaces, write, state).map(Some)
    }

    /// Checks the write's conditions against `state` (the record as read under the
    /// key's lock) and the marks, then commits it as one batch.
    fn apply_locked(
        &self,
        table: &TableSpec,
        keyspaces: &TableKeyspaces,
        write: Write,
        state: RecordState,
    ) -> Result<Outcome> {
        let key = write.key.as_ref();
        let now = self.inner.clock.now_ms();
        let current = state.live();

        // Conditions first; nothing is written unless all hold.
        let record_ok = match write.record.as_ref().map(|record| record.expect) {
            None | Some(Expect::Any) => true,
            Some(Expect::Absent) => current.is_none(),
            Some(Expect::Version(version)) => current
                .as_ref()
                .is_some_and(|record| record.version == version),
        };
        let mut present_marks = Vec::new();
        for mark in write.marks.iter().filter(|mark| mark.if_absent) {
            if self.read_mark(keyspaces, key, &mark.id)?.is_some() {
                present_marks.push(mark.id.clone());
            }
        }
        if !record_ok || !present_marks.is_empty() {
            return Ok(Outcome::Conflict {
                record: current,
                present_marks,
            });
        }

        let mut batch = self.batch();
        let mut version = None;
        // Versions never go back: a deleted record leaves its version behind, so a
        // compare-and-set made before the delete cannot succeed after a re-create.
        let next = state.version + 1;
        if let Some(record) = &write.record {
            match &record.value {
                Some(value) => {
                    batch.insert(
                        &keyspaces.records,
                        record_key(key),
                        encode_record(next, Some(value)),
                    );
                    version = Some(next);
                }
                None if current.is_some() => {
                    batch.insert(
                        &keyspaces.records,
                        record_key(key),
                        encode_record(next, None),
                    );
                }
                None => {}
            }
        }

        let cutoff = table.timeline.max_age.map(|age| now - millis(age));
        let mut trim = false;
        for entry in &write.appends {
            if cutoff.is_some_and(|cutoff| entry.at_ms < cutoff) {
                continue; // already older than the table keeps
            }
            batch.insert(
                &keyspaces.timeline,
                timeline_key(key, entry.at_ms, &entry.id),
                entry.value.as_ref(),
            );
            trim |= crate::model::trims_timeline(&entry.id);
        }
        for mark in &write.marks {
            let expires_at = mark
                .ttl
                .map_or(i64::MAX, |ttl| now.saturating_add(millis(ttl)));
            batch.insert(
                &keyspaces.marks,
                mark_key(key, &mark.id),
                encode_mark(expires_at, &mark.value),
            );
        }
        batch.commit().map_err(fjall_error)?;

        if trim {
            self.trim_timeline(table, keyspaces, key, cutoff)?;
        }
        Ok(Outcome::Applied { version })
    }

    /// Drops entries beyond the newest `max_entries` and entries past the age limit.
    fn trim_timeline(
        &self,
        table: &TableSpec,
        keyspaces: &TableKeyspaces,
        key: &[u8],
        cutoff: Option<i64>,
    ) -> Result<()> {
        let prefix = timeline_prefix(key);
        let mut batch = self.batch();
        let mut kept = 0u32;
        for item in keyspaces
            .timeline
            .range::<Vec<u8>, _>((
                std::ops::Bound::Included(prefix.clone()),
                std::ops::Bound::Excluded(prefix_end(&prefix)),
            ))
            .rev()
        {
            let entry_key = item.key().map_err(fjall_error)?;
            let expired = cutoff.is_some_and(|cutoff| {
                timeline_at(&entry_key, key.len()).is_ok_and(|at| at < cutoff)
            });
            if kept < table.timeline.max_entries && !expired {
                kept += 1;
            } else {
                batch.remove(&keyspaces.timeline, entry_key);
                if batch.len() >= TRIM_BATCH {
                    break; // the rest goes on a later trim
                }
            }
        }
        if !batch.is_empty() {
            batch.commit().map_err(fjall_error)?;
        }
        Ok(())
    }
}

impl Store for EmbeddedStore {
    async fn get(&self, table: &TableSpec, key: &[u8]) -> Result<Option<Versioned>> {
        check_key(key)?;
        let keyspaces = self.keyspaces(table)?;
        Ok(Self::read_state(&keyspaces, key)?.live())
    }

    async fn write(&self, table: &TableSpec, write: Write) -> Result<Outcome> {
        self.blocking(|| self.apply(table, write))
    }

    async fn timeline(
        &self,
        table: &TableSpec,
        key: &[u8],
        after: Option<TimelineCursor>,
        limit: u32,
    ) -> Result<TimelinePage> {
        check_key(key)?;
        let keyspaces = self.keyspaces(table)?;
        let cutoff = table
            .timeline
            .max_age
            .map(|age| self.inner.clock.now_ms() - millis(age));
        let seen = after.as_ref().map_or(0, |cursor| cursor.seen);
        let room = table
            .timeline
            .max_entries
            .saturating_sub(seen)
            .min(limit.max(1));
        let prefix = timeline_prefix(key);
        let upper = match &after {
            Some(cursor) => std::ops::Bound::Excluded(timeline_key(key, cursor.at_ms, &cursor.id)),
            None => std::ops::Bound::Excluded(prefix_end(&prefix)),
        };
        let mut entries = Vec::new();
        for item in keyspaces
            .timeline
            .range::<Vec<u8>, _>((std::ops::Bound::Included(prefix.clone()), upper))
            .rev()
        {
            if entries.len() as u32 >= room {
                break;
            }
            let (entry_key, value) = item.into_inner().map_err(fjall_error)?;
            let at_ms = timeline_at(&entry_key, key.len())?;
            if cutoff.is_some_and(|cutoff| at_ms < cutoff) {
                break; // older entries are older still
            }
            entries.push(TimelineEntry {
                at_ms,
                id: Bytes::copy_from_slice(&entry_key[prefix.len() + 8..]),
                value: Bytes::copy_from_slice(&value),
            });
        }
        Ok(TimelinePage::of(entries, limit, seen, &table.timeline))
    }

    async fn mark(&self, table: &TableSpec, key: &[u8], id: &[u8]) -> Result<Option<Bytes>> {
        check_key(key)?;
        let keyspaces = self.keyspaces(table)?;
        self.read_mark(&keyspaces, key, id)
    }

    async fn scan(
        &self,
        table: &TableSpec,
        range: TokenRange,
        after: Option<ScanCursor>,
        limit: u32,
    ) -> Result<ScanPage> {
        let keyspaces = self.keyspaces(table)?;
        let lower = match after {
            Some(ScanCursor(last)) => std::ops::Bound::Excluded(last.to_vec()),
            None => std::ops::Bound::Included(sortable(range.start).to_vec()),
        };
        let upper = match range.end.checked_add(1) {
            Some(next) => std::ops::Bound::Excluded(sortable(next).to_vec()),
            None => std::ops::Bound::Unbounded,
        };
        let limit = limit.max(1) as usize;
        let mut records = Vec::new();
        let mut last_key = None;
        for item in keyspaces.records.range::<Vec<u8>, _>((lower, upper)) {
            if records.len() == limit {
                break;
            }
            let (stored_key, stored) = item.into_inner().map_err(fjall_error)?;
            last_key = Some(Bytes::copy_from_slice(&stored_key));
            if let Some(record) = decode_record(&stored)?.live() {
                records.push((Bytes::copy_from_slice(&stored_key[8..]), record));
            }
        }
        let next = (records.len() == limit)
            .then_some(last_key)
            .flatten()
            .map(ScanCursor);
        Ok(ScanPage { records, next })
    }

    async fn update<F>(
        &self,
        table: &TableSpec,
        key: Bytes,
        _attempts: u32,
        change: F,
    ) -> Result<Option<Outcome>>
    where
        F: FnMut(Option<&Versioned>) -> Option<crate::Change> + Send,
    {
        self.blocking(|| self.modify(table, key, change))
    }

    async fn delete(&self, table: &TableSpec, key: &[u8]) -> Result<()> {
        check_key(key)?;
        let keyspaces = self.keyspaces(table)?;
        let _guard = self.lock(table, key);
        let mut batch = self.batch();
        batch.remove(&keyspaces.records, record_key(key));
        for keyspace in [&keyspaces.timeline, &keyspaces.marks] {
            for item in keyspace.prefix(timeline_prefix(key)) {
                batch.remove(keyspace, item.key().map_err(fjall_error)?);
            }
        }
        batch.commit().map_err(fjall_error)
    }
}

/// `duration` in milliseconds, saturating (a TTL of a thousand years stays far away).
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn record_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&sortable(token_of(key)));
    out.extend_from_slice(key);
    out
}

/// `len(key) key`: the start of everything a key has in the timeline and marks keyspaces.
fn timeline_prefix(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + key.len() + 9);
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.extend_from_slice(key);
    out
}

fn timeline_key(key: &[u8], at_ms: i64, id: &[u8]) -> Vec<u8> {
    let mut out = timeline_prefix(key);
    out.extend_from_slice(&sortable(at_ms));
    out.extend_from_slice(id);
    out
}

fn timeline_at(entry_key: &[u8], key_len: usize) -> Result<i64> {
    let at = entry_key
        .get(2 + key_len..)
        .and_then(<[u8]>::first_chunk::<8>)
        .ok_or_else(|| StoreError::Corrupt("timeline key too short".to_string()))?;
    Ok(from_sortable(*at))
}

fn mark_key(key: &[u8], id: &[u8]) -> Vec<u8> {
    let mut out = timeline_prefix(key);
    out.extend_from_slice(id);
    out
}

/// The first key after every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![u8::MAX; prefix.len() + 1]
}

/// A key's record as stored: its version (0 when never written) and its value (`None`
/// when absent or deleted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct RecordState {
    version: u64,
    value: Option<Bytes>,
}

impl RecordState {
    fn live(&self) -> Option<Versioned> {
        self.value.as_ref().map(|value| Versioned {
            value: value.clone(),
            version: self.version,
        })
    }
}

const LIVE: u8 = 1;
const DELETED: u8 = 0;

/// `version (8 bytes) | live or deleted (1 byte) | value`.
fn encode_record(version: u64, value: Option<&[u8]>) -> Vec<u8> {
    let value_len = value.map_or(0, <[u8]>::len);
    let mut out = Vec::with_capacity(9 + value_len);
    out.extend_from_slice(&version.to_be_bytes());
    out.push(if value.is_some() { LIVE } else { DELETED });
    out.extend_from_slice(value.unwrap_or_default());
    out
}

fn decode_record(stored: &[u8]) -> Result<RecordState> {
    let (version, rest) = stored
        .split_first_chunk::<8>()
        .ok_or_else(|| StoreError::Corrupt("record shorter than its version".to_string()))?;
    let (state, value) = rest
        .split_first()
        .ok_or_else(|| StoreError::Corrupt("record without its state".to_string()))?;
    Ok(RecordState {
        version: u64::from_be_bytes(*version),
        value: (*state == LIVE).then(|| Bytes::copy_from_slice(value)),
    })
}

fn encode_mark(expires_at: i64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + value.len());
    out.extend_from_slice(&expires_at.to_be_bytes());
    out.extend_from_slice(value);
    out
}

fn decode_mark(stored: &[u8]) -> Result<(i64, &[u8])> {
    let expires: [u8; 8] = stored
        .get(..8)
        .and_then(|slice| slice.try_into().ok())
        .ok_or_else(|| StoreError::Corrupt("mark shorter than its expiry".to_string()))?;
    Ok((i64::from_be_bytes(expires), &stored[8..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sortable_bytes_sort_like_numbers() {
        let tokens = [i64::MIN, -5, -1, 0, 1, 7, i64::MAX];
        for pair in tokens.windows(2) {
            assert!(sortable(pair[0]) < sortable(pair[1]));
        }
    }

    #[test]
    fn prefix_end_is_past_every_extension() {
        assert_eq!(prefix_end(&[1, 2]), vec![1, 3]);
        assert_eq!(prefix_end(&[1, 255]), vec![2]);
        assert!(prefix_end(&[0, 3, b'a']) > vec![0, 3, b'a', 255, 255]);
    }
}
