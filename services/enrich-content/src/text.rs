//! From page text to topics: words split, stop words dropped, stemmed (Snowball
//! English); a page's topics by TF-IDF or a configured taxonomy; and each person's
//! affinities, decayed over time.

use std::collections::{BTreeMap, HashMap, HashSet};

use cairn_enricher::FactSet;
use cairn_enricher::decay::weigh;
use rust_stemmers::{Algorithm, Stemmer};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Topics a page gets.
const TOPICS_PER_PAGE: usize = 3;
/// How strong a term must be, against the page's strongest, to be a topic of it.
const MIN_SHARE_OF_BEST: f64 = 0.25;
/// Topics kept per person.
const TOPICS_KEPT: usize = 20;
/// Topics published per person.
const TOPICS_SHOWN: usize = 10;
/// Pages remembered as read per person (not recommended to them again).
const READ_KEPT: usize = 50;
/// Pages kept per topic, the most read.
const POPULAR_KEPT: usize = 20;
/// Topics of a person recommendations come from, strongest first.
pub const RECOMMEND_FROM_TOPICS: usize = 3;
/// Pages recommended per person.
const RECOMMENDED: usize = 5;

const STOP_WORDS: &str = include_str!("../data/stop_words.txt");
/// Longer "words" are codes and hashes, not topics (and would make long store keys).
const MAX_WORD_BYTES: usize = 40;

/// What a page says about itself.
#[derive(Debug, Clone, Default)]
pub struct PageText {
    /// The URL's path (its segments are words too).
    pub path: Option<String>,
    pub title: Option<String>,
    pub keywords: Vec<String>,
    pub description: Option<String>,
}

/// A word of a page: how often it occurs (weighted by where), and how it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    pub weight: f64,
    pub label: String,
}

/// A topic of a page, with its share of the page (the shares add up to 1).
#[derive(Debug, Clone, PartialEq)]
pub struct PageTopic {
    pub key: String,
    pub label: String,
    pub share: f64,
}

pub struct Analyzer {
    stemmer: Stemmer,
    stop_words: HashSet<String>,
}

impl Default for Analyzer {
    fn default() -> Self {
        Self {
            stemmer: Stemmer::create(Algorithm::English),
            stop_words: STOP_WORDS
                .lines()
                .filter(|line| !line.starts_with('#'))
                .flat_map(str::split_whitespace)
                .map(str::to_string)
                .collect(),
        }
    }
}

impl Analyzer {
    /// The stem of `word`, if it is a word worth keeping.
    pub fn stem(&self, word: &str) -> Option<String> {
        let word = word.to_lowercase();
        if word.chars().count() < 3
            || word.len() > MAX_WORD_BYTES
            || word.chars().all(|c| c.is_ascii_digit())
            || self.stop_words.contains(&word)
        {
            return None;
        }
        Some(self.stemmer.stem(&word).into_owned())
    }

    /// The page's terms by stem. The path, title and keywords weigh double.
    pub fn terms(&self, page: &PageText) -> BTreeMap<String, Term> {
        let mut terms: BTreeMap<String, Term> = BTreeMap::new();
        let mut add = |text: &str, weight: f64| {
            for word in text.split(|c: char| !c.is_alphanumeric()) {
                if let Some(stem) = self.stem(word) {
                    terms
                        .entry(stem)
                        .or_insert_with(|| Term {
                            weight: 0.0,
                            label: word.to_lowercase(),
                        })
                        .weight += weight;
                }
            }
        };
        if let Some(path) = &page.path {
            add(path, 2.0);
        }
        if let Some(title) = &page.title {
            add(title, 2.0);
        }
        for keyword in &page.keywords {
            add(keyword, 2.0);
        }
        if let Some(description) = &page.description {
            add(description, 1.0);
        }
        terms
    }

    /// The page's topics by TF-IDF: `idf` says how rare a stem is in the pages seen.
    pub fn topics_by_tf_idf(
        &self,
        terms: &BTreeMap<String, Term>,
        idf: impl Fn(&str) -> f64,
    ) -> Vec<PageTopic> {
        let mut scored: Vec<(f64, &String, &Term)> = terms
            .iter()
            .map(|(stem, term)| (term.weight * idf(stem), stem, term))
            .filter(|(score, ..)| *score > 0.0)
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        scored.truncate(TOPICS_PER_PAGE);
        // A term far weaker than the page's strongest is no topic of it.
        let best = scored.first().map_or(0.0, |(score, ..)| *score);
        scored.retain(|(score, ..)| *score >= MIN_SHARE_OF_BEST * best);
        let total: f64 = scored.iter().map(|(score, ..)| score).sum();
        scored
            .into_iter()
            .map(|(score, stem, term)| PageTopic {
                key: stem.clone(),
                label: term.label.clone(),
                share: score / total,
            })
            .collect()
    }
}

/// Topics named by people, each with the words that signal it.
#[derive(Debug, Clone, Default)]
pub struct Taxonomy {
    /// Stem → the topics it signals.
    by_stem: HashMap<String, Vec<String>>,
}

impl Taxonomy {
    /// Reads `topic = ["word", ...]` lines (TOML). Errors name the topic.
    pub fn parse(text: &str, analyzer: &Analyzer) -> Result<Self, String> {
        let table: BTreeMap<String, Vec<String>> =
            toml::from_str(text).map_err(|err| format!("not a taxonomy: {err}"))?;
        let mut by_stem: HashMap<String, Vec<String>> = HashMap::new();
        for (topic, words) in table {
            if words.is_empty() {
                return Err(format!("{topic}: no words"));
            }
            for word in words.iter().chain(std::iter::once(&topic)) {
                if let Some(stem) = analyzer.stem(word) {
                    let topics = by_stem.entry(stem).or_default();
                    if !topics.contains(&topic) {
                        topics.push(topic.clone());
                    }
                }
            }
        }
        Ok(Self { by_stem })
    }

    /// The page's topics: those whose words it has, by how much of it they are.
    pub fn topics(&self, terms: &BTreeMap<String, Term>) -> Vec<PageTopic> {
        let mut weights: BTreeMap<&String, f64> = BTreeMap::new();
        for (stem, term) in terms {
            for topic in self.by_stem.get(stem).into_iter().flatten() {
                *weights.entry(topic).or_default() += term.weight;
            }
        }
        let mut ranked: Vec<(&String, f64)> = weights.into_iter().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        ranked.truncate(TOPICS_PER_PAGE);
        let total: f64 = ranked.iter().map(|(_, weight)| weight).sum();
        ranked
            .into_iter()
            .map(|(topic, weight)| PageTopic {
                key: topic.clone(),
                label: topic.clone(),
                share: weight / total,
            })
            .collect()
    }
}

/// A person's interest in topics: decayed scores of what they read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Affinity {
    /// Topic key → score, decayed to `as_of`.
    pub scores: BTreeMap<String, f64>,
    /// Topic key → how it is shown.
    pub labels: BTreeMap<String, String>,
    pub as_of: i64,
    /// The URLs of the pages read last, oldest first.
    #[serde(default)]
    pub read: Vec<String>,
    /// Once the person's profile was merged into another: where their affinities went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_into: Option<String>,
}

impl cairn_enricher::state::PersonState for Affinity {
    fn merged_into(&mut self) -> &mut Option<String> {
        &mut self.merged_into
    }
}

impl Affinity {
    /// Adds a page read at `at_ms` (at `url`, when it has one).
    pub fn add(&mut self, topics: &[PageTopic], url: Option<&str>, at_ms: i64, half_life_ms: f64) {
        if let Some(url) = url {
            self.read_last(url);
        }
        let scores = &mut self.scores;
        let weight = weigh(&mut self.as_of, at_ms, half_life_ms, |fade| {
            scores.values_mut().for_each(|score| *score *= fade)
        });
        for topic in topics {
            *self.scores.entry(topic.key.clone()).or_default() += weight * topic.share;
            self.labels
                .entry(topic.key.clone())
                .or_insert_with(|| topic.label.clone());
        }
        self.keep_strongest();
    }

    /// Takes in the affinities of a profile merged into this one: its scores, faded to
    /// the newer of the two, and the pages it read (those of the older one first).
    pub fn absorb(&mut self, merged: &Affinity, half_life_ms: f64) {
        let ours = std::mem::take(&mut self.read);
        let (older, newer) = if merged.as_of > self.as_of {
            (&ours, &merged.read)
        } else {
            (&merged.read, &ours)
        };
        for url in older.iter().chain(newer) {
            self.read_last(url);
        }
        let scores = &mut self.scores;
        let weight = weigh(&mut self.as_of, merged.as_of, half_life_ms, |fade| {
            scores.values_mut().for_each(|score| *score *= fade)
        });
        for (key, score) in &merged.scores {
            *self.scores.entry(key.clone()).or_default() += weight * score;
        }
        for (key, label) in &merged.labels {
            self.labels
                .entry(key.clone())
                .or_insert_with(|| label.clone());
        }
        self.keep_strongest();
    }

    /// Notes the page at `url` as the one read last.
    fn read_last(&mut self, url: &str) {
        self.read.retain(|read| read != url);
        self.read.push(url.to_string());
        if self.read.len() > READ_KEPT {
            self.read.drain(..self.read.len() - READ_KEPT);
        }
    }

    /// Forgets the weakest topics beyond those kept.
    fn keep_strongest(&mut self) {
        if self.scores.len() > TOPICS_KEPT {
            let mut ranked: Vec<(String, f64)> = self
                .scores
                .iter()
                .map(|(key, score)| (key.clone(), *score))
                .collect();
            ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
            for (key, _) in ranked.into_iter().skip(TOPICS_KEPT) {
                self.scores.remove(&key);
                self.labels.remove(&key);
            }
        }
    }

    /// The strongest topics with their affinity in 0..1 (their share of the person's
    /// decayed reading), and the top one.
    pub fn facts(&self) -> FactSet {
        let mut facts = FactSet::new();
        let total: f64 = self.scores.values().sum();
        if total <= 0.0 {
            return facts;
        }
        let mut ranked: Vec<(&String, f64)> = self
            .scores
            .iter()
            .map(|(key, score)| (key, *score))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let label = |key: &String| self.labels.get(key).unwrap_or(key).clone();
        let topics: serde_json::Map<String, serde_json::Value> = ranked
            .iter()
            .take(TOPICS_SHOWN)
            .map(|(key, score)| (label(key), json!(((score / total) * 100.0).round() / 100.0)))
            .collect();
        facts.insert("topics".into(), serde_json::Value::Object(topics));
        if let Some((key, _)) = ranked.first() {
            facts.insert("top_topic".into(), json!(label(key)));
        }
        facts
    }

    /// The keys of the person's strongest topics, strongest first.
    pub fn top_topics(&self, count: usize) -> Vec<String> {
        let mut ranked: Vec<(&String, f64)> = self
            .scores
            .iter()
            .map(|(key, score)| (key, *score))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        ranked
            .into_iter()
            .take(count)
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Pages to recommend: the most read of each of the person's strongest topics
    /// (`popular`, in the order of [`Affinity::top_topics`]), taken in turns, none they
    /// read lately, each once.
    pub fn recommend(&self, popular: &[(String, Popular)]) -> serde_json::Value {
        let mut chosen: Vec<serde_json::Value> = Vec::new();
        let read: HashSet<&str> = self.read.iter().map(String::as_str).collect();
        let mut seen = HashSet::new();
        let ranked: Vec<Vec<&PopularPage>> = popular
            .iter()
            .map(|(_, popular)| {
                let mut pages = popular.ranked();
                pages.retain(|page| !read.contains(page.url.as_str()));
                pages
            })
            .collect();
        let deepest = ranked.iter().map(Vec::len).max().unwrap_or(0);
        'turns: for place in 0..deepest {
            for (index, pages) in ranked.iter().enumerate() {
                let Some(page) = pages.get(place) else {
                    continue;
                };
                if !seen.insert(page.url.as_str()) {
                    continue;
                }
                let topic = &popular[index].0;
                chosen.push(json!({
                    "url": page.url,
                    "title": page.title,
                    "topic": self.labels.get(topic).unwrap_or(topic),
                }));
                if chosen.len() == RECOMMENDED {
                    break 'turns;
                }
            }
        }
        serde_json::Value::Array(chosen)
    }
}

/// The most read pages of one topic, by views that fade with the same half-life as
/// affinities.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Popular {
    pub pages: Vec<PopularPage>,
    pub as_of: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PopularPage {
    pub url: String,
    pub title: String,
    pub score: f64,
}

impl Popular {
    /// Counts a view of the page at `url` at `at_ms`.
    pub fn view(&mut self, url: &str, title: &str, at_ms: i64, half_life_ms: f64) {
        let pages = &mut self.pages;
        let weight = weigh(&mut self.as_of, at_ms, half_life_ms, |fade| {
            pages.iter_mut().for_each(|page| page.score *= fade)
        });
        match self.pages.iter_mut().find(|page| page.url == url) {
            Some(page) => {
                page.score += weight;
                if !title.is_empty() {
                    page.title = title.to_string();
                }
            }
            None => self.pages.push(PopularPage {
                url: url.to_string(),
                title: title.to_string(),
                score: weight,
            }),
        }
        if self.pages.len() > POPULAR_KEPT {
            self.pages.sort_by(|a, b| b.score.total_cmp(&a.score));
            self.pages.truncate(POPULAR_KEPT);
        }
    }

    /// The pages, most read first.
    pub fn ranked(&self) -> Vec<&PopularPage> {
        let mut ranked: Vec<&PopularPage> = self.pages.iter().collect();
        ranked.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.url.cmp(&b.url)));
        ranked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(path: &str, title: &str) -> PageText {
        PageText {
            path: Some(path.into()),
            title: Some(title.into()),
            ..Default::default()
        }
    }

    #[test]
    fn words_are_stemmed_and_stop_words_dropped() {
        let analyzer = Analyzer::default();
        let terms = analyzer.terms(&page("/shoes/running-shoes.html", "The best running shoes"));
        let stems: Vec<&String> = terms.keys().collect();
        assert_eq!(stems, vec!["run", "shoe"]);
        assert_eq!(terms["shoe"].weight, 6.0);
        assert_eq!(terms["shoe"].label, "shoes");
    }

    #[test]
    fn rare_words_make_the_topic_of_a_page() {
        let analyzer = Analyzer::default();
        let terms = analyzer.terms(&page("/news/shoes", "News: new shoes"));
        // "news" is on every page of the site, "shoe" on few.
        let topics =
            analyzer.topics_by_tf_idf(&terms, |stem| if stem == "news" { 0.1 } else { 2.0 });
        assert_eq!(topics[0].label, "shoes");
        let total: f64 = topics.iter().map(|topic| topic.share).sum();
        assert!((total - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_taxonomy_names_the_topics() {
        let analyzer = Analyzer::default();
        let taxonomy = Taxonomy::parse(
            "footwear = [\"shoe\", \"sneaker\", \"boot\"]\nbags = [\"handbag\", \"backpack\"]",
            &analyzer,
        )
        .unwrap();
        let topics =
            taxonomy.topics(&analyzer.terms(&page("/boots", "Winter boots and backpacks")));
        assert_eq!(topics[0].label, "footwear");
        assert_eq!(topics[1].label, "bags");
        assert!(
            Taxonomy::parse("footwear = []", &analyzer)
                .unwrap_err()
                .contains("footwear")
        );
    }

    fn topic(key: &str, share: f64) -> PageTopic {
        PageTopic {
            key: key.into(),
            label: key.into(),
            share,
        }
    }

    #[test]
    fn affinities_fade_and_follow_what_is_read_now() {
        const DAY: i64 = 86_400_000;
        let half_life = 14.0 * DAY as f64;
        let mut affinity = Affinity::default();
        for day in 0..5 {
            affinity.add(&[topic("hats", 1.0)], None, day * DAY, half_life);
        }
        for day in 60..63 {
            affinity.add(&[topic("shoes", 1.0)], None, day * DAY, half_life);
        }
        let facts = affinity.facts();
        assert_eq!(facts["top_topic"], "shoes");
        let shoes = facts["topics"]["shoes"].as_f64().unwrap();
        let hats = facts["topics"]["hats"].as_f64().unwrap();
        assert!(
            shoes > hats && (0.0..=1.0).contains(&shoes),
            "{shoes} {hats}"
        );
    }

    #[test]
    fn recommendations_are_the_most_read_pages_of_the_strongest_topics_not_read_yet() {
        const HOUR: f64 = 3_600_000.0;
        let mut shoes = Popular::default();
        let mut socks = Popular::default();
        for (url, views) in [("/trail", 5), ("/road", 3), ("/spikes", 1)] {
            for n in 0..views {
                shoes.view(url, &format!("{url} shoes"), n, 24.0 * HOUR);
            }
        }
        socks.view("/wool", "Wool socks", 0, 24.0 * HOUR);
        assert_eq!(
            shoes
                .ranked()
                .iter()
                .map(|page| page.url.as_str())
                .collect::<Vec<_>>(),
            vec!["/trail", "/road", "/spikes"]
        );

        let mut affinity = Affinity::default();
        affinity.add(&[topic("shoes", 1.0)], Some("/trail"), 0, 24.0 * HOUR);
        affinity.add(&[topic("socks", 0.5)], Some("/blog"), 1, 24.0 * HOUR);
        assert_eq!(affinity.top_topics(3), vec!["shoes", "socks"]);
        let recommended = affinity.recommend(&[("shoes".into(), shoes), ("socks".into(), socks)]);
        let urls: Vec<&str> = recommended
            .as_array()
            .unwrap()
            .iter()
            .map(|page| page["url"].as_str().unwrap())
            .collect();
        // Taken in turns from each topic, without the page already read.
        assert_eq!(urls, vec!["/road", "/wool", "/spikes"]);
        assert_eq!(recommended[0]["title"], "/road shoes");
        assert_eq!(recommended[0]["topic"], "shoes");
    }

    #[test]
    fn a_person_remembers_the_last_pages_read_once_each() {
        let mut affinity = Affinity::default();
        for n in 0..60 {
            affinity.add(&[], Some(&format!("/p{n}")), n, 1.0e9);
        }
        affinity.add(&[], Some("/p30"), 61, 1.0e9);
        assert_eq!(affinity.read.len(), 50);
        assert_eq!(affinity.read.first().map(String::as_str), Some("/p10"));
        assert_eq!(affinity.read.last().map(String::as_str), Some("/p30"));
    }

    #[test]
    fn merged_affinities_add_up_as_of_the_newer() {
        const DAY: i64 = 86_400_000;
        let half_life = 14.0 * DAY as f64;
        let mut phone = Affinity::default();
        for day in 0..3 {
            phone.add(&[topic("hats", 1.0)], Some("/hats"), day * DAY, half_life);
        }
        let mut laptop = Affinity::default();
        laptop.add(&[topic("shoes", 1.0)], Some("/shoes"), 14 * DAY, half_life);
        laptop.add(
            &[topic("hats", 1.0)],
            Some("/hats/wool"),
            14 * DAY,
            half_life,
        );

        let mut merged = laptop.clone();
        merged.absorb(&phone, half_life);
        assert_eq!(merged.as_of, 14 * DAY);
        // Three hat pages two weeks ago weigh about one and a half now.
        let hats = merged.scores["hats"];
        assert!(
            (hats - (1.0 + 0.5 + 0.5f64.powf(13.0 / 14.0) + 0.5f64.powf(12.0 / 14.0))).abs() < 1e-9,
            "{hats}"
        );
        assert_eq!(merged.scores["shoes"], 1.0);
        assert_eq!(merged.facts()["top_topic"], "hats");
        // The older device's pages come first: the newer ones were read last.
        assert_eq!(merged.read, vec!["/hats", "/shoes", "/hats/wool"]);

        let mut other_way = phone.clone();
        other_way.absorb(&laptop, half_life);
        assert_eq!(other_way.as_of, merged.as_of);
        assert_eq!(other_way.read, merged.read);
        assert!((other_way.scores["hats"] - hats).abs() < 1e-9);
    }
}
