//! The saved segments: one record holding them all, changed by compare-and-set, so
//! that checks across segments (INCLUDE cycles) hold even when two changes race.

use std::collections::BTreeMap;

use bytes::Bytes;
use cairn_filterql::{Filter, parse, print};
use cairn_store::{Expect, Outcome, Retention, Store, TableSpec, Write};
use serde::{Deserialize, Serialize};

use crate::error::SegmentError;
use crate::segments::SegmentSet;

/// The segmenter's table.
pub const SEGMENTS: TableSpec = TableSpec {
    name: "segments",
    timeline: Retention {
        max_entries: 1,
        max_age: None,
    },
};

const DEFINITIONS: &[u8] = b"definitions";
const ATTEMPTS: u32 = 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    pub name: String,
    /// Canonical FilterQL.
    pub filter: String,
    pub description: String,
    pub updated_ms: i64,
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

/// The saved segments and the record's version (`None` when none were ever saved).
pub async fn load<S: Store>(store: &S) -> Result<(Definitions, Option<u64>), SegmentError> {
    match store.get(&SEGMENTS, DEFINITIONS).await? {
        Some(record) => Ok((
            serde_json::from_slice(&record.value)
                .map_err(|err| SegmentError::Corrupt(err.to_string()))?,
            Some(record.version),
        )),
        None => Ok((Definitions::default(), None)),
    }
}

/// Applies `edit` to the saved segments and saves them, retrying when another change
/// came first. `edit` checks what it changes; its error leaves everything as it was.
pub async fn change<S, F>(store: &S, mut edit: F) -> Result<Definitions, SegmentError>
where
    S: Store,
    F: FnMut(&mut Definitions) -> Result<(), SegmentError>,
{
    for _ in 0..ATTEMPTS {
        let (mut definitions, version) = load(store).await?;
        edit(&mut definitions)?;
        let value = serde_json::to_vec(&definitions)
            .map_err(|err| SegmentError::Corrupt(err.to_string()))?;
        let expect = version.map_or(Expect::Absent, Expect::Version);
        match store
            .write(
                &SEGMENTS,
                Write::new(Bytes::from_static(DEFINITIONS)).record(expect, value),
            )
            .await?
        {
            Outcome::Applied { .. } => return Ok(definitions),
            Outcome::Conflict { .. } => continue,
        }
    }
    Err(SegmentError::Busy("the segments kept changing".to_string()))
}

/// Saves segment `name` (or the filter's ALIAS when `name` is empty) from FilterQL
/// `source`, after every check; returns what was saved.
pub async fn put<S: Store>(
    store: &S,
    name: &str,
    source: &str,
    description: &str,
    now_ms: i64,
) -> Result<Definition, SegmentError> {
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
        description: description.to_string(),
        updated_ms: now_ms,
    };
    let saved = definition.clone();
    change(store, move |definitions| {
        let mut set = definitions.set()?;
        set.insert(&name, filter.clone())?;
        definitions.segments.insert(name.clone(), saved.clone());
        Ok(())
    })
    .await?;
    Ok(definition)
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
