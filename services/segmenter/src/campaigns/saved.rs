//! The saved campaigns: one record holding them all (as written, with whether each is
//! paused), changed by compare-and-set like the saved segments.

use std::collections::BTreeMap;
use std::sync::Arc;

use cairn_store::Store;
use serde::{Deserialize, Serialize};

use super::definition::{Audience, Campaign};
use crate::definitions::{self, SEGMENTS};
use crate::error::SegmentError;
use crate::record::{self, Cached};

/// The key of the record holding every campaign.
const CAMPAIGNS: &[u8] = b"campaigns";
const WHAT: &str = "saved campaigns";

/// A campaign as saved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    pub name: String,
    /// The YAML or JSON it was written in.
    pub source: String,
    pub paused: bool,
    pub updated_ms: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SavedCampaigns {
    pub campaigns: BTreeMap<String, Saved>,
}

/// Saves the campaign written in `source` (creating or replacing it, keeping whether it
/// was paused) once it checks out, and the segment its audience names exists.
pub async fn put<S: Store>(store: &S, source: &str, now_ms: i64) -> Result<Saved, SegmentError> {
    let campaign = Campaign::parse(source)?;
    if let Audience::Segment(segment) = &campaign.audience {
        let (segments, _) = definitions::load(store).await?;
        if !segments.segments.contains_key(segment) {
            return Err(SegmentError::InvalidArgument(format!(
                "campaign {}: audience: there is no segment {segment}",
                campaign.name
            )));
        }
    }
    let mut saved = None;
    record::change(
        store,
        &SEGMENTS,
        CAMPAIGNS,
        WHAT,
        |all: &mut SavedCampaigns| {
            let paused = all
                .campaigns
                .get(&campaign.name)
                .is_some_and(|old| old.paused);
            let entry = Saved {
                name: campaign.name.clone(),
                source: source.to_string(),
                paused,
                updated_ms: now_ms,
            };
            all.campaigns.insert(campaign.name.clone(), entry.clone());
            saved = Some(entry);
            Ok(())
        },
    )
    .await?;
    saved.ok_or_else(|| SegmentError::Corrupt("campaign not saved".to_string()))
}

/// Pauses campaign `name` (its journeys stay as they are, and nothing moves them) or
/// resumes it.
pub async fn set_paused<S: Store>(
    store: &S,
    name: &str,
    paused: bool,
    now_ms: i64,
) -> Result<Saved, SegmentError> {
    let all = record::change(
        store,
        &SEGMENTS,
        CAMPAIGNS,
        WHAT,
        |all: &mut SavedCampaigns| {
            let saved = all
                .campaigns
                .get_mut(name)
                .ok_or_else(|| SegmentError::MissingCampaign(name.to_string()))?;
            saved.paused = paused;
            saved.updated_ms = now_ms;
            Ok(())
        },
    )
    .await?;
    all.campaigns
        .get(name)
        .cloned()
        .ok_or_else(|| SegmentError::Corrupt(format!("campaign {name} not saved")))
}

/// Every saved campaign.
pub async fn load<S: Store>(store: &S) -> Result<SavedCampaigns, SegmentError> {
    Ok(record::load(store, &SEGMENTS, CAMPAIGNS, WHAT).await?.0)
}

/// The campaigns running (saved and not paused), read.
#[derive(Default)]
pub struct Running {
    pub campaigns: Vec<Campaign>,
}

/// The running campaigns a replica works with, shared by its tasks.
#[derive(Clone)]
pub struct Cache(Cached<Running>);

impl Default for Cache {
    fn default() -> Self {
        Self(Cached::new(&SEGMENTS, CAMPAIGNS))
    }
}

impl Cache {
    /// The running campaigns, at most a second old.
    pub async fn get<S: Store>(&self, store: &S) -> Result<Arc<Running>, SegmentError> {
        let (running, _) = self
            .0
            .get(store, 0, |found| {
                let all: SavedCampaigns = record::decode(found, WHAT)?;
                let campaigns = all
                    .campaigns
                    .values()
                    .filter(|saved| !saved.paused)
                    .map(|saved| {
                        Campaign::parse(&saved.source).map_err(|err| {
                            SegmentError::Corrupt(format!("campaign {}: {err}", saved.name))
                        })
                    })
                    .collect::<Result<_, _>>()?;
                Ok(Running { campaigns })
            })
            .await?;
        Ok(running)
    }
}
