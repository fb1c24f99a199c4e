//! enrich-content: what people read. For page and screen views it takes the words of
//! the URL path, the title, the keywords and the description ([`text`]), finds the
//! page's topics (the terms that are frequent on the page and rare among the pages seen
//! so far, by TF-IDF; or the topics of a configured taxonomy), and adds them to the
//! person's topic affinities, which fade with a half-life. Facts: `topics` (the
//! strongest ten, each with its share of the person's reading in 0..1), `top_topic`,
//! and `recommended`: up to five pages (`url`, `title`, `topic`) among the most read of
//! the person's three strongest topics (`popular:<topic>`, views fading with the same
//! half-life), none of the fifty they read last.
//!
//! The corpus (how many pages were seen, and on how many of them each term occurs) is
//! kept in the enricher's table next to the affinities; a page counts once, by URL
//! (each counter marks the pages it counted).

#![forbid(unsafe_code)]

pub mod config;
pub mod text;

use std::collections::BTreeMap;

use bytes::Bytes;
use cairn_enricher::{Enrich, EnrichError, Learned, state};
use cairn_event::Event;
use cairn_runtime::{Module, ModuleContext, Var};
use cairn_store::{Change, Mark, Retention, Store, TableSpec};
use sha2::{Digest as _, Sha256};

pub use config::ContentConfig;
pub use text::{Affinity, Analyzer, PageText, PageTopic, Popular, Taxonomy, Term};

/// Affinities (`profile:<id>`) and the corpus (`docs`, `df:<stem>`).
pub const CONTENT: TableSpec = TableSpec {
    name: "enrich_content",
    timeline: Retention {
        max_entries: 1,
        max_age: None,
    },
};

const DOCS: &str = "docs";
/// How long the corpus remembers that it counted a page (read again after this, it
/// counts again).
const PAGE_MEMORY: std::time::Duration = std::time::Duration::from_secs(90 * 86_400);
/// Attempts at a counter that keeps meeting other writers.
const ATTEMPTS: u32 = 50;

/// Every variable enrich-content reads (besides the store's).
pub fn vars() -> Vec<Var> {
    [
        cairn_enricher::vars(config::VARS),
        cairn_store::config::VARS.to_vec(),
    ]
    .concat()
}

pub struct Content<S> {
    pub store: S,
    pub analyzer: Analyzer,
    pub taxonomy: Option<Taxonomy>,
    pub half_life_ms: f64,
}

/// What a page or screen view says about its page.
pub fn page_text(event: &Event) -> PageText {
    let path = event
        .text(&["context", "page", "path"])
        .or_else(|| event.text(&["properties", "path"]))
        .or_else(|| event.page_url().map(|url| path_of(&url)));
    let keywords = match event
        .get(&["properties", "keywords"])
        .or_else(|| event.get(&["context", "page", "keywords"]))
    {
        Some(serde_json::Value::String(list)) => list.split(',').map(str::to_string).collect(),
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .filter_map(|keyword| keyword.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    PageText {
        path,
        title: event
            .text(&["context", "page", "title"])
            .or_else(|| event.text(&["properties", "title"]))
            .or_else(|| event.text(&["name"])),
        keywords,
        description: event
            .text(&["properties", "description"])
            .or_else(|| event.text(&["context", "page", "description"])),
    }
}

/// The path of a URL, without scheme, host, query and fragment.
fn path_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = rest.find('/').map_or("", |start| &rest[start..]);
    path.split(['?', '#']).next().unwrap_or("").to_string()
}

/// The record of the most read pages of a topic.
fn popular_key(topic: &str) -> String {
    format!("popular:{topic}")
}

fn number(record: Option<&cairn_store::Versioned>) -> f64 {
    record
        .and_then(|record| serde_json::from_slice::<f64>(&record.value).ok())
        .unwrap_or(0.0)
}

impl<S: Store> Content<S> {
    pub fn new(store: S, config: &ContentConfig) -> Result<Self, EnrichError> {
        let analyzer = Analyzer::default();
        let taxonomy = match &config.taxonomy {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|err| {
                    EnrichError::Data(format!("taxonomy {}: {err}", path.display()))
                })?;
                Some(Taxonomy::parse(&text, &analyzer).map_err(|err| {
                    EnrichError::Data(format!("taxonomy {}: {err}", path.display()))
                })?)
            }
            None => None,
        };
        Ok(Self {
            store,
            analyzer,
            taxonomy,
            half_life_ms: config.half_life.as_millis() as f64,
        })
    }

    /// Counts the page at `url` into the corpus: the page count and each of its terms'
    /// counts go up once per page, however often it is read or an event redelivered
    /// (each counter keeps a mark per page it counted, for [`PAGE_MEMORY`]).
    async fn count_page(
        &self,
        url: &str,
        terms: &BTreeMap<String, Term>,
    ) -> Result<(), EnrichError> {
        let digest = Sha256::digest(url.as_bytes());
        let page = cairn_runtime::encoding::hex(&digest[..16]);
        let mark = Mark {
            id: Bytes::from(format!("page:{page}")),
            value: Bytes::new(),
            ttl: Some(PAGE_MEMORY),
            if_absent: true,
        };
        let counters =
            std::iter::once(DOCS.to_string()).chain(terms.keys().map(|stem| format!("df:{stem}")));
        for counter in counters {
            // A counter that has this page's mark already answers with a conflict:
            // counted before.
            self.store
                .update(&CONTENT, Bytes::from(counter), ATTEMPTS, |current| {
                    Some(Change {
                        value: Some(Bytes::from((number(current) + 1.0).to_string())),
                        appends: Vec::new(),
                        marks: vec![mark.clone()],
                    })
                })
                .await?;
        }
        Ok(())
    }

    /// What a person's affinities say: their topics and the pages to recommend them,
    /// as of the newest page they read.
    async fn learned(&self, affinity: &Affinity) -> Result<Learned, EnrichError> {
        let mut facts = affinity.facts();
        let mut popular = Vec::new();
        for topic in affinity.top_topics(text::RECOMMEND_FROM_TOPICS) {
            let pages: Option<Popular> =
                state::read(&self.store, &CONTENT, &popular_key(&topic)).await?;
            popular.push((topic, pages.unwrap_or_default()));
        }
        facts.insert("recommended".into(), affinity.recommend(&popular));
        Ok(Learned {
            facts,
            as_of_ms: affinity.as_of,
        })
    }

    /// The page's topics: by the taxonomy when there is one, else by TF-IDF.
    pub async fn topics(
        &self,
        url: Option<&str>,
        terms: &BTreeMap<String, Term>,
    ) -> Result<Vec<PageTopic>, EnrichError> {
        if let Some(taxonomy) = &self.taxonomy {
            return Ok(taxonomy.topics(terms));
        }
        if let Some(url) = url {
            self.count_page(url, terms).await?;
        }
        let pages = number(self.store.get(&CONTENT, DOCS.as_bytes()).await?.as_ref());
        let mut idf = BTreeMap::new();
        for stem in terms.keys() {
            let with_term = number(
                self.store
                    .get(&CONTENT, format!("df:{stem}").as_bytes())
                    .await?
                    .as_ref(),
            );
            // The page itself is counted: a term on every page weighs almost nothing.
            idf.insert(stem.as_str(), ((1.0 + pages) / with_term.max(1.0)).ln());
        }
        Ok(self
            .analyzer
            .topics_by_tf_idf(terms, |stem| idf.get(stem).copied().unwrap_or(1.0)))
    }
}

impl<S: Store> Enrich for Content<S> {
    fn source(&self) -> &'static str {
        "content"
    }

    async fn enrich(
        &self,
        profile_id: &str,
        event: &Event,
    ) -> Result<Option<Learned>, EnrichError> {
        if !matches!(event.call, "page" | "screen") {
            return Ok(None);
        }
        let page = page_text(event);
        let terms = self.analyzer.terms(&page);
        if terms.is_empty() {
            return Ok(None);
        }
        let url = event
            .page_url()
            .map(|url| url.split(['?', '#']).next().unwrap_or("").to_string());
        let topics = self.topics(url.as_deref(), &terms).await?;
        if topics.is_empty() {
            return Ok(None);
        }
        if let Some(url) = &url {
            let title = page.title.as_deref().unwrap_or_default();
            for topic in &topics {
                let _: state::Applied<Popular> = state::apply_once(
                    &self.store,
                    &CONTENT,
                    &popular_key(&topic.key),
                    &event.message_id,
                    |popular: &mut Popular| {
                        popular.view(url, title, event.at_ms, self.half_life_ms)
                    },
                )
                .await?;
            }
        }
        let affinity: Affinity = state::person_once(
            &self.store,
            &CONTENT,
            &person_key(profile_id),
            &event.message_id,
            |affinity: &mut Affinity| {
                affinity.add(&topics, url.as_deref(), event.at_ms, self.half_life_ms)
            },
        )
        .await?
        .state;
        self.learned(&affinity).await.map(Some)
    }

    fn keeps_person_state(&self) -> bool {
        true
    }

    async fn merge(&self, from: &str, into: &str) -> Result<Option<Learned>, EnrichError> {
        let affinity: Affinity = state::merge_once(
            &self.store,
            &CONTENT,
            &person_key(from),
            &person_key(into),
            |affinity: &mut Affinity, merged: &Affinity| affinity.absorb(merged, self.half_life_ms),
        )
        .await?
        .state;
        if affinity.scores.is_empty() {
            return Ok(None); // neither read anything with a topic: nothing to say
        }
        self.learned(&affinity).await.map(Some)
    }

    async fn split(&self, into: &str) -> Result<(), EnrichError> {
        state::revive::<_, Affinity>(&self.store, &CONTENT, &person_key(into)).await
    }

    async fn forget(&self, profile_id: &str) -> Result<(), EnrichError> {
        Ok(self
            .store
            .delete(&CONTENT, person_key(profile_id).as_bytes())
            .await?)
    }
}

/// Where a person's affinities are kept.
fn person_key(profile_id: &str) -> String {
    format!("profile:{profile_id}")
}

/// Starts enrich-content on `store`.
pub async fn start<S: Store>(context: &ModuleContext, store: S) -> Result<Module, EnrichError> {
    let config = ContentConfig::from_settings(&context.settings)?;
    let content = Content::new(store, &config)?;
    cairn_enricher::start(context, "enrich-content", content).await
}
