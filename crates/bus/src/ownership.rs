//! Partition ownership: each partition of a stateful service is worked by one replica at
//! a time, and partitions move when replicas join, leave or die.
//!
//! Replicas of a group share a NATS KV bucket whose entries expire after the lease:
//! - `m.<member>`: a replica's heartbeat, re-put every third of the lease;
//! - `o.<partition>`: who owns a partition, renewed with compare-and-set on its revision.
//!
//! Every round a replica counts the live members, works out its fair share (partitions
//! divided by members, rounded up), renews what it owns, gives back what it has over its
//! share (after its caller stopped working those partitions) and claims free partitions
//! up to its share (creating an entry only succeeds when nobody owns it). A replica that
//! dies stops renewing: its entries expire and the others claim its partitions. A
//! replica cut off from NATS cannot renew either: its caller stops working everything
//! once renewals have failed for two thirds of the lease ([`Ownership::abandon`]), before
//! the entries expire and another replica may claim them. A renewal refused because the
//! entry changed means the partition was lost. (Profile writes are read-modify-writes
//! with a version check, so the short overlap a paused replica may still cause loses no
//! update either.)

use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt as _;

use crate::{Bus, BusError, error_chain};

/// What the caller must do after a round.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Newly owned: start working them.
    pub start: Vec<u32>,
    /// Over the fair share: stop working them, then [`Ownership::release`] them.
    pub give_back: Vec<u32>,
    /// Taken by another replica (our lease ran out): stop working them now.
    pub lost: Vec<u32>,
    /// Whether every partition still owned was renewed (NATS answered every renewal).
    pub renewed: bool,
}

/// One replica's view of a group's partitions.
#[derive(Debug)]
pub struct Ownership {
    kv: kv::Store,
    member: String,
    partitions: u32,
    /// Owned partitions and the revision of their entry.
    owned: std::collections::BTreeMap<u32, u64>,
}

fn unavailable(what: &str, err: &dyn std::error::Error) -> BusError {
    BusError::Unavailable(format!("{what}: {}", error_chain(err)))
}

fn bucket_name(group: &str) -> String {
    format!("owners_{group}")
}

async fn count_members(kv: &kv::Store) -> Result<usize, BusError> {
    let mut keys = kv
        .keys()
        .await
        .map_err(|err| unavailable("partition owners", &err))?;
    let mut members = 0;
    while let Some(key) = keys.next().await {
        if key
            .map_err(|err| unavailable("partition owners", &err))?
            .starts_with("m.")
        {
            members += 1;
        }
    }
    Ok(members)
}

/// How many replicas of `group` are live now (0 when the group never ran).
pub async fn live_members(bus: &Bus, group: &str) -> Result<usize, BusError> {
    let bucket = bucket_name(group);

    match bus.jetstream().get_stream(format!("KV_{bucket}")).await {
        Ok(_) => {}
        Err(err) if crate::stream_missing(&err) => return Ok(0),
        Err(err) => return Err(unavailable("partition owners", &err)),
    }
    let kv = bus
        .jetstream()
        .get_key_value(bucket)
        .await
        .map_err(|err| unavailable("partition owners bucket", &err))?;
    count_members(&kv).await
}

impl Ownership {
    /// Joins `group` (one KV bucket per group) as a new member.
    pub async fn join(
        bus: &Bus,
        group: &str,
        partitions: u32,
        lease: Duration,
    ) -> Result<Self, BusError> {
        let kv = bus
            .key_value(
                &bucket_name(group),
                &format!("Which {group} replica owns which partition"),
                lease,
            )
            .await?;
        Ok(Self {
            kv,
            member: format!("{group}-{:016x}", rand::random::<u64>()),
            partitions: partitions.max(1),
            owned: Default::default(),
        })
    }

    pub fn member(&self) -> &str {
        &self.member
    }

    /// Forgets every partition without telling NATS (it cannot be reached): the entries
    /// expire on their own. Returns them, for the caller to stop.
    pub fn abandon(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.owned).into_keys().collect()
    }

    async fn live_members(&self) -> Result<usize, BusError> {
        Ok(count_members(&self.kv).await?.max(1))
    }

    /// One round: heartbeat, renew, and the plan to reach this replica's fair share.
    /// Fails when NATS cannot be reached at the start; a renewal NATS does not answer
    /// leaves the partition owned (nothing is known to be lost) and `renewed` false.
    pub async fn balance(&mut self) -> Result<Plan, BusError> {
        let me = Bytes::from(self.member.clone());
        self.kv
            .put(format!("m.{}", self.member), me.clone())
            .await
            .map_err(|err| unavailable("heartbeat", &err))?;
        let share = self.partitions.div_ceil(self.live_members().await? as u32) as usize;
        let mut plan = Plan {
            renewed: true,
            ..Plan::default()
        };

        let owned: Vec<(u32, u64)> = self.owned.iter().map(|(p, r)| (*p, *r)).collect();
        for (partition, revision) in owned {
            match self
                .kv
                .update(format!("o.{partition}"), me.clone(), revision)
                .await
            {
                Ok(revision) => {
                    self.owned.insert(partition, revision);
                }
                Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    tracing::warn!(member = %self.member, partition, error = %err, "lost a partition");
                    self.owned.remove(&partition);
                    plan.lost.push(partition);
                }
                Err(err) => {
                    tracing::warn!(member = %self.member, partition, error = %err, "cannot renew a partition now");
                    plan.renewed = false;
                }
            }
        }
        if !plan.renewed {
            return Ok(plan); // no claims or hand-backs while NATS is unsure
        }
        if self.owned.len() > share {
            plan.give_back = self
                .owned
                .keys()
                .rev()
                .take(self.owned.len() - share)
                .copied()
                .collect();
        } else {
            // Start looking at a different place per member, so members do not all race
            // for the same free partitions.
            let offset = (crate::subjects::fnv1a64(self.member.as_bytes())
                % u64::from(self.partitions)) as u32;
            for step in 0..self.partitions {
                if self.owned.len() >= share {
                    break;
                }
                let partition = (offset + step) % self.partitions;
                if self.owned.contains_key(&partition) {
                    continue;
                }
                if let Ok(revision) = self.kv.create(format!("o.{partition}"), me.clone()).await {
                    self.owned.insert(partition, revision);
                    plan.start.push(partition);
                }
            }
        }
        Ok(plan)
    }

    /// Gives a partition back, once the caller stopped working it.
    pub async fn release(&mut self, partition: u32) {
        if let Some(revision) = self.owned.remove(&partition)
            && let Err(err) = self
                .kv
                .delete_expect_revision(format!("o.{partition}"), Some(revision))
                .await
        {
            tracing::warn!(member = %self.member, partition, error = %err, "cannot release a partition; it will expire");
        }
    }

    /// Gives everything back and leaves (on shutdown, after stopping every partition).
    pub async fn leave(&mut self) {
        let owned: Vec<u32> = self.owned.keys().copied().collect();
        for partition in owned {
            self.release(partition).await;
        }
        let _ = self.kv.delete(format!("m.{}", self.member)).await;
    }
}
