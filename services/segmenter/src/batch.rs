//! Batch evaluation: a segment over every profile, the profile store scanned in
//! parallel by token range.
//!
//! Each profile is evaluated from its stored document, as it is now, against every
//! saved segment (so INCLUDEs are evaluated too, not read back). Where the memberships
//! kept live were decided on an older profile version or older segments (a segment just
//! saved, a profile the live path has not reached yet), the run decides them the same
//! way the live path does and announces what entered or left; where they are current it
//! leaves them alone. The run's size and sample are its own evaluation, so a batch run
//! over profiles the live path is done with agrees with the live memberships, and sets
//! nothing right.
//!
//! Memberships as kept live are read back by a scan too: [`scan_members`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use cairn_bus::Bus;
use cairn_profile_store::store::PROFILES;
use cairn_runtime::clock::now_ms;
use cairn_store::{ScanCursor, Store, TokenRange, token_of};
use tokio::sync::{mpsc, watch};

use crate::definitions::{self, SEGMENTS};
use crate::error::SegmentError;
use crate::live::{LiveHandler, Members, Trigger, stored_change};
use crate::segments::SegmentSet;

/// Profiles read per page of a scan.
const PAGE: u32 = 200;
/// Profiles a run names as a sample of the segment.
pub const SAMPLE: usize = 20;

/// How far a run got.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    pub segment: String,
    /// Profiles evaluated so far.
    pub evaluated: u64,
    /// The share of the profiles' token space scanned, from 0 to 1.
    pub fraction: f64,
    /// Profiles found in the segment so far.
    pub size: u64,
    /// Memberships set right (entered or exited announced).
    pub corrected: u64,
    pub sample: Vec<String>,
    pub done: bool,
    /// Why the run stopped short, when it did.
    pub error: Option<String>,
}

/// The tally of a run, shared by its scans.
struct Tally {
    progress: Progress,
    /// Per range: the share of it scanned.
    ranges: Vec<f64>,
}

/// Evaluates `segment` over every profile with `ranges` scans in parallel, publishing
/// what it sets right on `bus`, and reporting its progress on `progress`.
pub async fn run<S: Store>(
    live: &LiveHandler<S>,
    bus: &Bus,
    segment: &str,
    ranges: u32,
    progress: &watch::Sender<Progress>,
) -> Result<Progress, SegmentError> {
    let (saved, version) = definitions::load(&live.store).await?;
    let set = Arc::new(saved.set()?);
    if set.get(segment).is_none() {
        return Err(SegmentError::Missing(segment.to_string()));
    }
    let definitions = version.unwrap_or(0);
    let ranges = TokenRange::FULL.split(ranges);
    let tally = Arc::new(Mutex::new(Tally {
        progress: Progress {
            segment: segment.to_string(),
            ..Progress::default()
        },
        ranges: vec![0.0; ranges.len()],
    }));
    let started = std::time::Instant::now();
    let mut scans = tokio::task::JoinSet::new();
    for (index, range) in ranges.into_iter().enumerate() {
        let scan = RangeScan {
            live: live.clone(),
            bus: bus.clone(),
            set: set.clone(),
            definitions,
            segment: segment.to_string(),
            range,
            index,
            tally: tally.clone(),
            progress: progress.clone(),
        };
        scans.spawn(async move { scan.run().await });
    }
    while let Some(joined) = scans.join_next().await {
        joined.map_err(|err| SegmentError::Busy(format!("a scan stopped: {err}")))??;
    }
    let mut done = lock(&tally).progress.clone();
    done.fraction = 1.0;
    done.done = true;
    tracing::info!(
        segment,
        evaluated = done.evaluated,
        size = done.size,
        corrected = done.corrected,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "batch evaluation done"
    );
    Ok(done)
}

fn lock(tally: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    tally
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One scan of a run.
struct RangeScan<S> {
    live: LiveHandler<S>,
    bus: Bus,
    set: Arc<SegmentSet>,
    definitions: u64,
    segment: String,
    range: TokenRange,
    index: usize,
    tally: Arc<Mutex<Tally>>,
    progress: watch::Sender<Progress>,
}

impl<S: Store> RangeScan<S> {
    async fn run(self) -> Result<(), SegmentError> {
        let mut cursor: Option<ScanCursor> = None;
        loop {
            let page = self
                .live
                .store
                .scan(&PROFILES, self.range, cursor, PAGE)
                .await?;
            let (mut evaluated, mut found) = (0, Vec::new());
            let mut outgoing = Vec::new();
            for (key, record) in &page.records {
                let (changed, view) = match stored_change(key, record) {
                    Ok(Some(stored)) => stored,
                    Ok(None) => continue, // merged into another
                    Err(err) => {
                        tracing::warn!(error = %err, "batch evaluation skips a damaged profile");
                        continue;
                    }
                };
                evaluated += 1;
                let mut members = BTreeMap::new();
                self.set.evaluate(&view, None, &mut members, now_ms());
                if members.contains_key(&self.segment) {
                    found.push(changed.profile_id.clone());
                }
                outgoing.extend(
                    self.live
                        .decide(&changed, Some(&view), Trigger::Batch, self.definitions)
                        .await?,
                );
            }
            let corrected = outgoing
                .iter()
                .filter(|message| message.subject.starts_with("segments.changed."))
                .count() as u64;
            if !outgoing.is_empty() {
                self.bus.publish_all(outgoing).await?;
            }
            let scanned = match (&page.next, page.records.last()) {
                (Some(_), Some((key, _))) => self.share_below(token_of(key)),
                _ => 1.0,
            };
            let snapshot = {
                let mut tally = lock(&self.tally);
                tally.ranges[self.index] = scanned;
                let progress = &mut tally.progress;
                progress.evaluated += evaluated;
                progress.size += found.len() as u64;
                progress.corrected += corrected;
                let room = SAMPLE.saturating_sub(progress.sample.len());
                progress.sample.extend(found.into_iter().take(room));
                tally.progress.fraction =
                    tally.ranges.iter().sum::<f64>() / tally.ranges.len() as f64;
                tally.progress.clone()
            };
            self.progress.send_replace(snapshot);
            cursor = page.next;
            if cursor.is_none() {
                return Ok(());
            }
        }
    }

    fn share_below(&self, token: i64) -> f64 {
        share_below(self.range, token)
    }
}

/// The share of `range` at or below `token`.
fn share_below(range: TokenRange, token: i64) -> f64 {
    let width = (i128::from(range.end) - i128::from(range.start) + 1) as f64;
    let done = (i128::from(token) - i128::from(range.start) + 1) as f64;
    (done / width).clamp(0.0, 1.0)
}

/// What a filter not yet saved would hold, from a sample of the profiles.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Preview {
    pub evaluated: u64,
    pub matched: u64,
    /// The share of the profiles' token space evaluated, from 0 to 1.
    pub fraction: f64,
    pub sample: Vec<String>,
}

impl Preview {
    /// The size the segment would have over every profile. Tokens are hashes, so the
    /// profiles first in token order are a fair sample of them all.
    pub fn estimated_size(&self) -> u64 {
        if self.fraction >= 1.0 || self.fraction <= 0.0 {
            return self.matched;
        }
        (self.matched as f64 / self.fraction).round() as u64
    }
}

/// Evaluates segment `segment` of `set` (saved or not) over the profiles first in
/// token order, about `max_profiles` of them, from their stored documents.
pub async fn preview<S: Store>(
    store: &S,
    set: &SegmentSet,
    segment: &str,
    max_profiles: u64,
) -> Result<Preview, SegmentError> {
    let mut preview = Preview::default();
    let mut cursor: Option<ScanCursor> = None;
    loop {
        let page = store
            .scan(&PROFILES, TokenRange::FULL, cursor, PAGE)
            .await?;
        for (key, record) in &page.records {
            let (changed, view) = match stored_change(key, record) {
                Ok(Some(stored)) => stored,
                Ok(None) => continue, // merged into another
                Err(err) => {
                    tracing::warn!(error = %err, "preview skips a damaged profile");
                    continue;
                }
            };
            preview.evaluated += 1;
            let mut members = BTreeMap::new();
            set.evaluate(&view, None, &mut members, now_ms());
            if members.contains_key(segment) {
                preview.matched += 1;
                if preview.sample.len() < SAMPLE {
                    preview.sample.push(changed.profile_id);
                }
            }
        }
        preview.fraction = match (&page.next, page.records.last()) {
            (Some(_), Some((key, _))) => share_below(TokenRange::FULL, token_of(key)),
            _ => 1.0,
        };
        cursor = page.next;
        if cursor.is_none() || preview.evaluated >= max_profiles {
            return Ok(preview);
        }
    }
}

/// The runs going on (or last finished) in this replica, by segment.
#[derive(Clone, Default)]
pub struct Batches {
    runs: Arc<Mutex<HashMap<String, watch::Receiver<Progress>>>>,
}

impl Batches {
    /// Follows the run of `segment`, starting one unless one is going on.
    pub fn start<S: Store>(
        &self,
        live: &LiveHandler<S>,
        bus: &Bus,
        segment: &str,
        ranges: u32,
    ) -> watch::Receiver<Progress> {
        let mut runs = self
            .runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(going) = runs.get(segment)
            && !going.borrow().done
        {
            return going.clone();
        }
        let (sender, receiver) = watch::channel(Progress {
            segment: segment.to_string(),
            ..Progress::default()
        });
        runs.insert(segment.to_string(), receiver.clone());
        let (live, bus, segment) = (live.clone(), bus.clone(), segment.to_string());
        tokio::spawn(async move {
            let outcome = run(&live, &bus, &segment, ranges, &sender).await;
            sender.send_modify(|progress| {
                match outcome {
                    Ok(done) => *progress = done,
                    Err(err) => {
                        tracing::warn!(segment, error = %err, "batch evaluation failed");
                        progress.error = Some(err.to_string());
                    }
                }
                progress.done = true;
            });
        });
        receiver
    }
}

/// Sends (profile id, since ms) of every profile in `segment`, as kept live, to
/// `members`, with `ranges` scans in parallel; stops early when `members` is closed.
pub async fn scan_members<S: Store>(
    store: &S,
    segment: &str,
    ranges: u32,
    members: mpsc::Sender<(String, i64)>,
) -> Result<(), SegmentError> {
    let mut scans = tokio::task::JoinSet::new();
    for range in TokenRange::FULL.split(ranges) {
        let (store, segment, members) = (store.clone(), segment.to_string(), members.clone());
        scans.spawn(async move {
            let mut cursor = None;
            loop {
                let page = store.scan(&SEGMENTS, range, cursor, PAGE).await?;
                for (key, record) in &page.records {
                    let Some(profile_id) = key.strip_prefix(b"m:") else {
                        continue;
                    };
                    let profile_id = String::from_utf8_lossy(profile_id).into_owned();
                    let kept: Members = serde_json::from_slice(&record.value).map_err(|err| {
                        SegmentError::Corrupt(format!("memberships of {profile_id}: {err}"))
                    })?;
                    if let Some(since) = kept.members.get(&segment)
                        && members.send((profile_id, *since)).await.is_err()
                    {
                        return Ok::<(), SegmentError>(());
                    }
                }
                cursor = page.next;
                if cursor.is_none() {
                    return Ok(());
                }
            }
        });
    }
    drop(members);
    while let Some(joined) = scans.join_next().await {
        joined.map_err(|err| SegmentError::Busy(format!("a scan stopped: {err}")))??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preview_scales_its_matches_by_the_share_evaluated() {
        let part = |matched, fraction| Preview {
            evaluated: 100,
            matched,
            fraction,
            sample: Vec::new(),
        };
        assert_eq!(part(25, 0.25).estimated_size(), 100);
        assert_eq!(part(25, 1.0).estimated_size(), 25);
        assert_eq!(part(0, 0.1).estimated_size(), 0);
        assert_eq!(part(3, 0.0).estimated_size(), 3, "nothing to scale by");
    }
}
