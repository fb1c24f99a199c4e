//! Leases: short locks kept in the store, so that any number of identity workers, in
//! any number of processes, change one part of the graph at a time.
//!
//! A lease is a record `lock:<name>` naming its holder and expiry, taken with
//! compare-and-set (create-if-absent, or replace an expired one on its version) and
//! released by deleting it on the version taken. Leases are taken in sorted order, so
//! workers never wait on each other in a cycle; a worker that dies leaves leases that
//! expire. Profile records written under a lease are compare-and-sets on what was read
//! under it, so a worker that outlived its lease cannot overwrite a newer profile;
//! index entries are plain writes that only ever point at a profile's survivor, and
//! reads follow merges, so a late one still leads to the right profile.

use std::time::Duration;

use bytes::Bytes;
use cairn_runtime::clock::now_ms;
use cairn_store::{Expect, Outcome, Store, TableSpec, Write};
use serde::{Deserialize, Serialize};

use crate::error::IdentityError;

#[derive(Debug, Serialize, Deserialize)]
struct LeaseRecord {
    holder: String,
    expires_at_ms: i64,
}

/// Leases held by one worker, to give back with [`Leases::release`].
#[derive(Debug, Default)]
pub struct Held {
    taken: Vec<(Bytes, u64)>,
}

/// Takes and gives back leases in one table.
#[derive(Debug, Clone)]
pub struct Leases<S> {
    store: S,
    table: TableSpec,
    /// Who this worker is, in the lease records (for people reading them).
    holder: String,
    duration: Duration,
}

impl<S: Store> Leases<S> {
    pub fn new(store: S, table: TableSpec, holder: String, duration: Duration) -> Self {
        Self {
            store,
            table,
            holder,
            duration,
        }
    }

    fn key(name: &str) -> Bytes {
        Bytes::from(format!("lock:{name}"))
    }

    /// Tries once to take every lease in `names`. On `None` another worker holds one of
    /// them, and none are held.
    pub async fn try_take(&self, names: &[String]) -> Result<Option<Held>, IdentityError> {
        let mut sorted: Vec<&String> = names.iter().collect();
        sorted.sort();
        sorted.dedup();
        let mut held = Held::default();
        for name in sorted {
            match self.take_one(name).await {
                Ok(Some(version)) => held.taken.push((Self::key(name), version)),
                Ok(None) => {
                    self.release(held).await;
                    return Ok(None);
                }
                Err(err) => {
                    self.release(held).await;
                    return Err(err);
                }
            }
        }
        Ok(Some(held))
    }

    /// Takes every lease in `names`, retrying with a growing pause for up to `patience`.
    pub async fn take(&self, names: &[String], patience: Duration) -> Result<Held, IdentityError> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(held) = self.try_take(names).await? {
                return Ok(held);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(IdentityError::Busy(format!(
                    "{} held by other workers for longer than {patience:?}",
                    names.join(", ")
                )));
            }
            let jitter = rand::random::<u64>() % (pause.as_millis() as u64 + 1);
            tokio::time::sleep(pause + Duration::from_millis(jitter)).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    async fn take_one(&self, name: &str) -> Result<Option<u64>, IdentityError> {
        let key = Self::key(name);
        let now = now_ms();
        let record = serde_json::to_vec(&LeaseRecord {
            holder: self.holder.clone(),
            expires_at_ms: now + self.duration.as_millis() as i64,
        })
        .map_err(|err| IdentityError::Corrupt(err.to_string()))?;
        let expect = match self.store.get(&self.table, &key).await? {
            None => Expect::Absent,
            Some(current) => {
                let lease: LeaseRecord = serde_json::from_slice(&current.value)
                    .map_err(|err| IdentityError::Corrupt(format!("lease {name}: {err}")))?;
                if lease.expires_at_ms > now {
                    return Ok(None);
                }
                tracing::warn!(lease = name, holder = %lease.holder, "taking over an expired lease");
                Expect::Version(current.version)
            }
        };
        match self
            .store
            .write(&self.table, Write::new(key).record(expect, record))
            .await?
        {
            Outcome::Applied { version } => Ok(version),
            Outcome::Conflict { .. } => Ok(None),
        }
    }

    /// Gives the leases back. A lease someone took over after it expired stays theirs.
    pub async fn release(&self, held: Held) {
        for (key, version) in held.taken {
            let write = Write::new(key).delete_record(Expect::Version(version));
            if let Err(err) = self.store.write(&self.table, write).await {
                tracing::warn!(error = %err, "cannot release a lease; it will expire");
            }
        }
    }
}
