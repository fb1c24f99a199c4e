//! The saved segments: one record holding them all, changed by compare-and-set, so
//! that checks across segments (INCLUDE cycles) hold even when two changes race.

use std::collections::BTreeMap;
use std::sync::Arc;

use cairn_filterql::{Filter, parse, print};
use cairn_store::{Retention, Store, TableSpec};
use serde::{Deserialize, Serialize};

use crate::activation::MIN_SECRET;
use crate::error::SegmentError;
use crate::record::{self, Cached};
use crate::segments::SegmentSet;

/// The segmenter's table.
pub const SEGMENTS: TableSpec = TableSpec {
    name: "segments",
    timeline: Retention {
        max_entries: 1,
        max_age: None,
    },
};

/// The key of the record holding every segment.
const DEFINITIONS: &[u8] = b"definitions";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    pub name: String,
    /// Canonical FilterQL.
    pub filter: String,
    pub description: String,
    pub updated_ms: i64,
    /// Where entered/exited batches are sent, if anywhere.
    #[serde(default)]
    pub webhook: Option<Webhook>,
}

/// A segment's webhook destination.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    pub url: String,
    /// The HMAC-SHA256 signing secret.
    pub secret: String,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl Webhook {
    /// The webhook of a Put request: none when `url` is empty; an error naming the field
    /// when the URL is not http(s) or the secret is missing or short.
    pub fn from_request(url: &str, secret: &str) -> Result<Option<Webhook>, SegmentError> {
        let url = url.trim();
        if url.is_empty() {
            if !secret.is_empty() {
                return Err(SegmentError::InvalidArgument(
                    "webhook_secret: given without a webhook_url".to_string(),
                ));
            }
            return Ok(None);
        }
        let parsed = reqwest::Url::parse(url).map_err(|err| {
            SegmentError::InvalidArgument(format!("webhook_url: {url:?} is not a URL: {err}"))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(SegmentError::InvalidArgument(format!(
                "webhook_url: {url:?} must be an http or https URL with a host"
            )));
        }
        if secret.chars().count() < MIN_SECRET {
            return Err(SegmentError::InvalidArgument(format!(
                "webhook_secret: required with webhook_url, at least {MIN_SECRET} characters"
            )));
        }
        Ok(Some(Webhook {
            url: url.to_string(),
            secret: secret.to_string(),
        }))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Definitions {
    pub segments: BTreeMap<String, Definition>,
}

impl Definitions {
    /// The segments, checked and indexed.
    pub fn set(&self) -> Result<SegmentSet, SegmentError> {
        let mut parsed: Vec<(String, Filter)> = Vec::new();
        for definition in self.segments.values() {
            let filter = parse(&definition.filter).map_err(|err| {
                SegmentError::Corrupt(format!("segment {}: {err}", definition.name))
            })?;
            parsed.push((definition.name.clone(), filter));
        }
        // Included segments first: insert whatever has its includes in place, until done.
        let mut set = SegmentSet::default();
        while !parsed.is_empty() {
            let before = parsed.len();
            let mut waiting = Vec::new();
            for (name, filter) in parsed {
                let (mut fields, mut includes) = (Vec::new(), Vec::new());
                filter.expr.fields(&mut fields, &mut includes);
                if includes.iter().all(|included| set.get(included).is_some()) {
                    set.insert(&name, filter)?;
                } else {
                    waiting.push((name, filter));
                }
            }
            if waiting.len() == before {
                return Err(SegmentError::Corrupt(format!(
                    "segments include missing ones or go round: {}",
                    waiting
                        .iter()
                        .map(|(name, _)| name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            parsed = waiting;
        }
        Ok(set)
    }
}

/// The saved segments as a replica read them, indexed for evaluation.
pub struct Loaded {
    pub definitions: Definitions,
    pub set: Arc<SegmentSet>,
}

/// The saved segments a replica works with, shared by its tasks.
#[derive(Clone)]
pub struct Cache(Cached<Loaded>);

impl Default for Cache {
    fn default() -> Self {
        Self(Cached::new(&SEGMENTS, DEFINITIONS))
    }
}

impl Cache {
    /// The saved segments, at most a second old and at least of version `at_least`, and
    /// their version (0 when none were ever saved).
    pub async fn get<S: Store>(
        &self,
        store: &S,
        at_least: u64,
    ) -> Result<(Arc<Loaded>, u64), SegmentError> {
        self.0
            .get(store, at_least, |record| {
                let definitions: Definitions = record::decode(record, "saved segments")?;
                Ok(Loaded {
                    set: Arc::new(definitions.set()?),
                    definitions,
                })
            })
            .await
    }
}

/// The saved segments and the record's version (`None` when none were ever saved).
pub async fn load<S: Store>(store: &S) -> Result<(Definitions, Option<u64>), SegmentError> {
    record::load(store, &SEGMENTS, DEFINITIONS, "saved segments").await
}

/// Applies `edit` to the saved segments and saves them, retrying when another change
/// came first. `edit` checks what it changes; its error leaves everything as it was.
pub async fn change<S, F>(store: &S, edit: F) -> Result<Definitions, SegmentError>
where
    S: Store,
    F: FnMut(&mut Definitions) -> Result<(), SegmentError>,
{
    record::change(store, &SEGMENTS, DEFINITIONS, "saved segments", edit).await
}

/// What a segment is saved from.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    /// The name; may be empty when the filter has an ALIAS.
    pub name: String,
    /// FilterQL.
    pub filter: String,
    pub description: String,
    pub webhook: Option<Webhook>,
    /// Without a `webhook`: keep the one the segment has (instead of removing it).
    pub keep_webhook: bool,
}

impl Draft {
    pub fn new(name: &str, filter: &str) -> Self {
        Self {
            name: name.to_string(),
            filter: filter.to_string(),
            ..Self::default()
        }
    }
}

/// Saves `draft` (named by the filter's ALIAS when it has no name), after every check;
/// returns what was saved.
pub async fn put<S: Store>(
    store: &S,
    draft: Draft,
    now_ms: i64,
) -> Result<Definition, SegmentError> {
    let (name, source) = (draft.name.as_str(), draft.filter.as_str());
    let filter =
        parse(source).map_err(|err| SegmentError::InvalidArgument(format!("filter: {err}")))?;
    let name = match (name.trim(), filter.alias.as_deref()) {
        ("", Some(alias)) => alias.to_string(),
        ("", None) => {
            return Err(SegmentError::InvalidArgument(
                "name: required (or give the filter an ALIAS)".to_string(),
            ));
        }
        (name, Some(alias)) if name != alias => {
            return Err(SegmentError::InvalidArgument(format!(
                "name: {name:?} differs from the filter's ALIAS {alias:?}"
            )));
        }
        (name, _) => name.to_string(),
    };
    let definition = Definition {
        name: name.clone(),
        filter: print(&filter),
        description: draft.description.clone(),
        updated_ms: now_ms,
        webhook: draft.webhook.clone(),
    };
    let keep_webhook = draft.webhook.is_none() && draft.keep_webhook;
    let key = name.clone();
    let changed = change(store, move |definitions| {
        let mut set = definitions.set()?;
        set.insert(&name, filter.clone())?;
        let mut saved = definition.clone();
        if keep_webhook {
            saved.webhook = definitions
                .segments
                .get(&name)
                .and_then(|kept| kept.webhook.clone());
        }
        definitions.segments.insert(name.clone(), saved);
        Ok(())
    })
    .await?;
    changed
        .segments
        .get(&key)
        .cloned()
        .ok_or_else(|| SegmentError::Corrupt(format!("segment {key} not found once saved")))
}

/// Deletes segment `name`, unless another segment includes it.
pub async fn delete<S: Store>(store: &S, name: &str) -> Result<(), SegmentError> {
    change(store, |definitions| {
        let mut set = definitions.set()?;
        set.remove(name)?;
        definitions.segments.remove(name);
        Ok(())
    })
    .await?;
    Ok(())
}
