//! What the store keeps, whatever the backend.
//!
//! A table holds partitions, one per key (a profile id, an identifier, ...). Each
//! partition can have:
//! - a **record**: one versioned value, written with compare-and-set (the identity
//!   graph's entries, a profile document);
//! - a **timeline**: entries ordered by time, newest first, bounded by the table's
//!   retention (count and age);
//! - **marks**: small idempotency records by id, each with an optional time to live.
//!
//! One [`Write`] changes any of the three for one key atomically: all of it happens,
//! or (when a condition fails) none of it.

use std::time::Duration;

use bytes::Bytes;

use crate::StoreError;

/// Largest key.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest record value.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Largest timeline entry or mark value.
pub const MAX_ENTRY_BYTES: usize = 64 * 1024;
/// Largest timeline entry or mark id.
pub const MAX_ID_BYTES: usize = 512;
/// Most timeline entries plus marks in one write.
pub const MAX_WRITE_ITEMS: usize = 1000;

/// How much timeline a table keeps per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// At most this many entries, the newest.
    pub max_entries: u32,
    /// Entries older than this (by their time) are dropped; `None` keeps them.
    pub max_age: Option<Duration>,
}

/// A table, declared by the service that owns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSpec {
    /// Lower-case letters, digits and `_`, starting with a letter, at most 48 bytes: the
    /// same name is a directory-safe keyspace name and a CQL table name.
    pub name: &'static str,
    pub timeline: Retention,
}

/// Whether `name` is usable as a table (or keyspace) name in every backend: lower-case
/// letters, digits and `_`, starting with a letter, at most 48 bytes.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 48
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// An i64 as 8 bytes that sort like the number (for keys ordered by time or token).
pub(crate) fn sortable(value: i64) -> [u8; 8] {
    ((value as u64) ^ (1 << 63)).to_be_bytes()
}

/// The inverse of [`sortable`].
pub(crate) fn from_sortable(bytes: [u8; 8]) -> i64 {
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
}

impl TableSpec {
    pub fn validate(&self) -> Result<(), StoreError> {
        let name = self.name;
        if !is_valid_name(name) {
            return Err(StoreError::InvalidTable {
                name: name.to_string(),
                reason:
                    "use lower-case letters, digits and _, starting with a letter, at most 48 bytes"
                        .to_string(),
            });
        }
        if self.timeline.max_entries == 0 {
            return Err(StoreError::InvalidTable {
                name: name.to_string(),
                reason: "timeline.max_entries must be at least 1".to_string(),
            });
        }
        Ok(())
    }
}

/// A record and its version. Versions start at 1 and grow by 1 with every update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Bytes,
    pub version: u64,
}

/// The condition a record write needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No condition (a plain overwrite).
    Any,
    /// Create: the record must not exist.
    Absent,
    /// Update: the record must exist at exactly this version.
    Version(u64),
}

/// A change to the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordWrite {
    pub expect: Expect,
    /// The new value; `None` deletes the record.
    pub value: Option<Bytes>,
}

/// One timeline entry. Appending the same (`at_ms`, `id`) again replaces it, so
/// appends are idempotent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineEntry {
    /// The entry's time, milliseconds since the Unix epoch (the event time).
    pub at_ms: i64,
    /// Unique among entries of the same time (a message id).
    pub id: Bytes,
    pub value: Bytes,
}

/// An idempotency record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub id: Bytes,
    pub value: Bytes,
    /// Forgotten after this long; `None` keeps it until the key is deleted.
    pub ttl: Option<Duration>,
    /// When true, the whole write happens only if this mark does not exist yet.
    pub if_absent: bool,
}

/// Everything one write changes, for one key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Write {
    pub key: Bytes,
    pub record: Option<RecordWrite>,
    pub appends: Vec<TimelineEntry>,
    pub marks: Vec<Mark>,
}

impl Write {
    pub fn new(key: impl Into<Bytes>) -> Self {
        Self {
            key: key.into(),
            ..Default::default()
        }
    }

    /// Sets the record on `expect`.
    pub fn record(mut self, expect: Expect, value: impl Into<Bytes>) -> Self {
        self.record = Some(RecordWrite {
            expect,
            value: Some(value.into()),
        });
        self
    }

    /// Deletes the record on `expect`.
    pub fn delete_record(mut self, expect: Expect) -> Self {
        self.record = Some(RecordWrite {
            expect,
            value: None,
        });
        self
    }

    pub fn append(mut self, at_ms: i64, id: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        self.appends.push(TimelineEntry {
            at_ms,
            id: id.into(),
            value: value.into(),
        });
        self
    }

    /// Adds a mark that must not exist yet for the write to happen.
    pub fn mark_once(
        mut self,
        id: impl Into<Bytes>,
        value: impl Into<Bytes>,
        ttl: Option<Duration>,
    ) -> Self {
        self.marks.push(Mark {
            id: id.into(),
            value: value.into(),
            ttl,
            if_absent: true,
        });
        self
    }

    /// Whether any part of the write carries a condition.
    pub fn is_conditional(&self) -> bool {
        self.record
            .as_ref()
            .is_some_and(|record| record.expect != Expect::Any)
            || self.marks.iter().any(|mark| mark.if_absent)
    }

    /// Checks sizes and counts before anything is written.
    pub fn validate(&self) -> Result<(), StoreError> {
        check_key(&self.key)?;
        if let Some(RecordWrite {
            value: Some(value), ..
        }) = &self.record
        {
            check_size("record value", value.len(), MAX_RECORD_BYTES)?;
        }
        if self.appends.len() + self.marks.len() > MAX_WRITE_ITEMS {
            return Err(StoreError::TooLarge {
                what: "write (timeline entries + marks)",
                size: self.appends.len() + self.marks.len(),
                limit: MAX_WRITE_ITEMS,
            });
        }
        for entry in &self.appends {
            check_id("timeline entry id", &entry.id)?;
            check_size("timeline entry value", entry.value.len(), MAX_ENTRY_BYTES)?;
        }
        for mark in &self.marks {
            check_id("mark id", &mark.id)?;
            check_size("mark value", mark.value.len(), MAX_ENTRY_BYTES)?;
        }
        Ok(())
    }
}

pub(crate) fn check_key(key: &[u8]) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::InvalidKey("the key is empty".to_string()));
    }
    check_size("key", key.len(), MAX_KEY_BYTES)
}

fn check_id(what: &'static str, id: &[u8]) -> Result<(), StoreError> {
    if id.is_empty() {
        return Err(StoreError::InvalidKey(format!("{what} is empty")));
    }
    check_size(what, id.len(), MAX_ID_BYTES)
}

fn check_size(what: &'static str, size: usize, limit: usize) -> Result<(), StoreError> {
    if size > limit {
        return Err(StoreError::TooLarge { what, size, limit });
    }
    Ok(())
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Everything was written; `version` is the record's new version (when the write
    /// set one).
    Applied { version: Option<u64> },
    /// A condition failed and nothing was written. Says what is there now.
    Conflict {
        record: Option<Versioned>,
        /// Marks the write wanted absent that exist.
        present_marks: Vec<Bytes>,
    },
}

impl Outcome {
    pub fn is_applied(&self) -> bool {
        matches!(self, Outcome::Applied { .. })
    }
}

/// Where a timeline page starts: after the last entry of the previous page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineCursor {
    pub at_ms: i64,
    pub id: Bytes,
    /// Entries returned before this page, so the table's count limit holds across pages.
    pub seen: u32,
}

/// A page of a timeline, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TimelinePage {
    pub entries: Vec<TimelineEntry>,
    /// Where the next page starts; `None` when this was the last.
    pub next: Option<TimelineCursor>,
}

impl TimelinePage {
    /// A page of `entries` read for a request of `limit` after `seen` entries: it has a
    /// next page when it is full and the table's count limit is not reached.
    pub fn of(entries: Vec<TimelineEntry>, limit: u32, seen: u32, retention: &Retention) -> Self {
        let returned = entries.len() as u32;
        let next = (returned == limit.max(1) && seen + returned < retention.max_entries)
            .then(|| entries.last())
            .flatten()
            .map(|last| TimelineCursor {
                at_ms: last.at_ms,
                id: last.id.clone(),
                seen: seen + returned,
            });
        Self { entries, next }
    }
}

/// An inclusive range of partition tokens (Murmur3, as ScyllaDB computes them, in both
/// backends). Scanning every range of a split visits every key exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRange {
    pub start: i64,
    pub end: i64,
}

impl TokenRange {
    /// Every token.
    pub const FULL: TokenRange = TokenRange {
        start: i64::MIN,
        end: i64::MAX,
    };

    /// `count` contiguous ranges covering this one (for parallel batch jobs).
    pub fn split(self, count: u32) -> Vec<TokenRange> {
        let count = u128::from(count.max(1));
        let start = i128::from(self.start);
        let width = (i128::from(self.end) - start + 1) as u128;
        let mut ranges = Vec::new();
        for part in 0..count {
            let lo = start + (width * part / count) as i128;
            let hi = start + (width * (part + 1) / count) as i128 - 1;
            if hi >= lo {
                ranges.push(TokenRange {
                    start: lo as i64,
                    end: hi as i64,
                });
            }
        }
        ranges
    }

    pub fn contains(self, token: i64) -> bool {
        self.start <= token && token <= self.end
    }
}

/// The Murmur3 partition token of `key`: ScyllaDB's own placement of a blob key.
pub fn token_of(key: &[u8]) -> i64 {
    use scylla::routing::partitioner::{Murmur3Partitioner, Partitioner as _};
    Murmur3Partitioner.hash_one(key).value()
}

/// Whether appending the entry `id` also trims its timeline to the table's retention.
/// About one append in sixteen does (trimming reads the newest `max_entries` entries);
/// reads never show more than the retention allows meanwhile. Chosen by the id's hash,
/// so every backend and every replay makes the same choice.
pub fn trims_timeline(id: &[u8]) -> bool {
    token_of(id).rem_euclid(16) == 0
}

/// Where the next scan page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanCursor(pub Bytes);

/// A page of a scan over records, in token order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScanPage {
    pub records: Vec<(Bytes, Versioned)>,
    pub next: Option<ScanCursor>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_cover_the_range_once() {
        let ranges = TokenRange::FULL.split(7);
        assert_eq!(ranges.len(), 7);
        assert_eq!(ranges[0].start, i64::MIN);
        assert_eq!(ranges[6].end, i64::MAX);
        for pair in ranges.windows(2) {
            assert_eq!(pair[0].end + 1, pair[1].start);
        }
        let small = TokenRange { start: 0, end: 2 }.split(5);
        assert_eq!(small.len(), 3);
    }

    #[test]
    fn tokens_match_scylla() {
        // Murmur3 tokens are what ScyllaDB computes for a blob partition key; fixed
        // values guard against an accidental change of hash.
        assert_eq!(token_of(b"profile-1"), token_of(b"profile-1"));
        assert_ne!(token_of(b"profile-1"), token_of(b"profile-2"));
    }

    #[test]
    fn oversized_and_empty_parts_are_refused() {
        let err = Write::new(vec![b'k'; MAX_KEY_BYTES + 1])
            .validate()
            .unwrap_err();
        assert_eq!(err.to_string(), "key is 1025 bytes; the limit is 1024");
        let err = Write::new("k")
            .record(Expect::Any, vec![0; MAX_RECORD_BYTES + 1])
            .validate()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "record value is 1048577 bytes; the limit is 1048576"
        );
        assert!(Write::new("").validate().is_err());
        assert!(Write::new("k").append(1, "", "v").validate().is_err());
    }

    #[test]
    fn table_names_are_checked() {
        let retention = Retention {
            max_entries: 10,
            max_age: None,
        };
        assert!(
            TableSpec {
                name: "profiles",
                timeline: retention
            }
            .validate()
            .is_ok()
        );
        assert!(
            TableSpec {
                name: "Profiles",
                timeline: retention
            }
            .validate()
            .is_err()
        );
        assert!(
            TableSpec {
                name: "a-b",
                timeline: retention
            }
            .validate()
            .is_err()
        );
    }
}
