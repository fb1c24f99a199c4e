//! The profile document, and how events, facts and merges change it.
//!
//! Everything here is a pure function of the document and its input, so the same
//! events folded in any batch size, and replayed from the timeline, give the same
//! profile.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How many of each list a profile keeps.
pub const MAX_SESSIONS_KEPT: usize = 50;
pub const MAX_URLS: usize = 20;
pub const MAX_REFERRERS: usize = 50;
pub const MAX_DEVICES: usize = 20;
/// Cities kept per profile, the most recently seen.
pub const MAX_CITIES: usize = 20;
/// Event names counted one by one; further names are counted together under
/// [`OTHER_EVENTS`], so a client sending a new name with every event cannot grow a
/// profile without bound.
pub const MAX_EVENT_NAMES: usize = 500;
pub const OTHER_EVENTS: &str = "(other)";
/// Traits kept; new names past this are ignored (existing ones still change).
pub const MAX_TRAITS: usize = 1000;
/// Values an append trait keeps (the most recent).
pub const MAX_APPENDED_VALUES: usize = 100;

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// The rolling windows event counts are kept for.
pub const WINDOWS: [(&str, i64); 4] = [
    ("1h", HOUR),
    ("24h", DAY),
    ("7d", 7 * DAY),
    ("30d", 30 * DAY),
];

/// How a trait's values combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraitPolicy {
    /// The value with the latest event time wins (the default).
    Latest,
    /// The value with the earliest event time wins.
    First,
    /// Every value seen is kept, once each, in an array.
    Append,
}

/// Settings of the fold.
#[derive(Debug, Clone, PartialEq)]
pub struct FoldSettings {
    /// A gap longer than this between a profile's events starts a new session.
    pub session_timeout_ms: i64,
    /// Policies of traits that are not `latest`.
    pub trait_policies: BTreeMap<String, TraitPolicy>,
}

impl Default for FoldSettings {
    fn default() -> Self {
        Self {
            session_timeout_ms: 30 * MINUTE,
            trait_policies: BTreeMap::new(),
        }
    }
}

impl FoldSettings {
    pub fn policy(&self, name: &str) -> TraitPolicy {
        self.trait_policies
            .get(name)
            .copied()
            .unwrap_or(TraitPolicy::Latest)
    }
}

/// An identifier, as identity gave it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Identifier {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

/// A value and the event time it is from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stamped<T> {
    pub value: T,
    pub at: i64,
}

/// A session: a run of events with no gap longer than the timeout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub start: i64,
    pub end: i64,
    pub events: u32,
    pub pages: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// The device id, or the user agent when the event has none.
    pub key: String,
    pub user_agent: String,
    pub first_seen: i64,
    pub last_seen: i64,
}

/// A city the person was seen in (by the event's location or enrich-geo's reading of
/// their address).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Place {
    pub city: String,
    pub country: Option<String>,
    pub first_seen: i64,
    pub last_seen: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UrlVisit {
    pub url: String,
    pub at: i64,
}

/// Counts of one event name in time buckets: minutes for the last hour, hours for the
/// last day, days for the last 30 days (so each window is exact to its bucket size),
/// plus the all-time total.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EventCounts {
    pub total: u64,
    pub last: i64,
    /// (start, width, count), oldest first.
    pub buckets: Vec<(i64, i64, u64)>,
}

impl EventCounts {
    fn add(&mut self, at: i64, count: u64) {
        self.total += count;
        self.last = self.last.max(at);
        let start = at - at.rem_euclid(MINUTE);
        match self
            .buckets
            .iter_mut()
            .find(|(s, w, _)| *s <= at && at < s + w)
        {
            Some(bucket) => bucket.2 += count,
            None => {
                self.buckets.push((start, MINUTE, count));
                self.buckets.sort_unstable();
            }
        }
        self.compact(self.last);
    }

    /// Coarsens buckets as they age (relative to the newest event) and drops those older
    /// than the longest window.
    fn compact(&mut self, now: i64) {
        let mut merged: BTreeMap<(i64, i64), u64> = BTreeMap::new();
        for &(start, width, count) in &self.buckets {
            let age = now - start;
            let width_now = if age <= HOUR {
                width
            } else if age <= DAY {
                width.max(HOUR)
            } else if age <= 30 * DAY {
                width.max(DAY)
            } else {
                continue;
            };
            let aligned = start - start.rem_euclid(width_now);
            *merged.entry((aligned, width_now)).or_default() += count;
        }
        self.buckets = merged
            .into_iter()
            .map(|((start, width), count)| (start, width, count))
            .collect();
    }

    /// When the count of the `window` ms before `now` next drops with no new event: the
    /// instant its oldest bucket in the window leaves it. `None` when the window is empty.
    pub fn drops_at(&self, window: i64, now: i64) -> Option<i64> {
        let cutoff = now - window;
        self.buckets
            .iter()
            .map(|(start, _, _)| *start)
            .filter(|start| *start >= cutoff)
            .min()
            .map(|start| start + window + 1)
    }

    /// Events in the `window` ms before `now`, counting whole buckets.
    pub fn within(&self, window: i64, now: i64) -> u64 {
        let cutoff = now - window;
        self.buckets
            .iter()
            .filter(|(start, _, _)| *start >= cutoff)
            .map(|(_, _, count)| count)
            .sum()
    }

    fn absorb(&mut self, other: &EventCounts) {
        self.total += other.total;
        self.last = self.last.max(other.last);
        self.buckets.extend(other.buckets.iter().copied());
        self.buckets.sort_unstable();
        self.compact(self.last);
    }
}

/// A profile.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Profile {
    pub id: String,
    pub identifiers: Vec<Identifier>,
    pub first_seen: Option<i64>,
    pub last_seen: Option<i64>,
    pub session_count: u64,
    /// Sessions with at least one page or screen view.
    pub visit_count: u64,
    /// The most recent sessions, oldest first.
    pub sessions: Vec<Session>,
    /// Sessions ever started here, for session ids.
    pub sessions_started: u64,
    pub referrer_domains: BTreeMap<String, u64>,
    pub devices: Vec<Device>,
    /// Every city seen, the most recent first.
    pub cities: Vec<Place>,
    pub city: Option<Stamped<String>>,
    pub country: Option<Stamped<String>>,
    pub timezone: Option<Stamped<String>>,
    /// Most recent first.
    pub urls: Vec<UrlVisit>,
    pub events: BTreeMap<String, EventCounts>,
    pub traits: BTreeMap<String, Stamped<Value>>,
    /// What enrichers learned, by enricher.
    pub facts: BTreeMap<String, Stamped<Value>>,
    /// Segment name → since when (written by the segmenter).
    pub segments: BTreeMap<String, i64>,
    /// Profiles merged into this one.
    pub merged_from: Vec<String>,
    /// Set when this profile was merged into another: everything lives there now.
    pub merged_into: Option<String>,
}

/// One event, as the fold reads it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EventInput {
    pub message_id: String,
    /// track, identify, page, screen, group, alias.
    pub call: String,
    /// What the counts are kept under: the track's event name, else the call.
    pub name: String,
    /// The event time (ms).
    pub at: i64,
    pub identifiers: Vec<Identifier>,
    pub url: Option<String>,
    pub referrer_domain: Option<String>,
    pub user_agent: Option<String>,
    pub device_id: Option<String>,
    pub timezone: Option<String>,
    pub city: Option<String>,
    pub country: Option<String>,
    pub traits: BTreeMap<String, Value>,
}

/// Where an event landed: its session and the session's position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStamp {
    pub id: String,
    /// 1 for the profile's first session.
    pub index: u64,
}

fn set_latest<T: PartialEq>(
    slot: &mut Option<Stamped<T>>,
    value: T,
    at: i64,
    changed: &mut Vec<String>,
    name: &str,
) {
    if slot
        .as_ref()
        .is_none_or(|current| at >= current.at && current.value != value)
    {
        *slot = Some(Stamped { value, at });
        changed.push(name.to_string());
    } else if let Some(current) = slot
        && at > current.at
    {
        current.at = at;
    }
}

fn add_unique(changed: &mut Vec<String>, name: impl Into<String>) {
    let name = name.into();
    if !changed.contains(&name) {
        changed.push(name);
    }
}

impl Profile {
    pub fn new(id: &str) -> Self {
        Self {
            id: id.to_string(),
            ..Default::default()
        }
    }

    /// Folds one event in. Returns the fields that changed and the event's session.
    pub fn apply_event(
        &mut self,
        event: &EventInput,
        settings: &FoldSettings,
    ) -> (Vec<String>, SessionStamp) {
        let mut changed = Vec::new();
        for identifier in &event.identifiers {
            if !self.identifiers.contains(identifier) {
                self.identifiers.push(identifier.clone());
                self.identifiers.sort();
                add_unique(&mut changed, "identifiers");
            }
        }
        if self.first_seen.is_none_or(|first| event.at < first) {
            self.first_seen = Some(event.at);
            add_unique(&mut changed, "first_seen");
        }
        if self.last_seen.is_none_or(|last| event.at > last) {
            self.last_seen = Some(event.at);
            add_unique(&mut changed, "last_seen");
        }
        let is_view = event.call == "page" || event.call == "screen";
        let stamp = self.place_in_session(event.at, is_view, settings, &mut changed);

        if let Some(domain) = &event.referrer_domain {
            *self.referrer_domains.entry(domain.clone()).or_default() += 1;
            if self.referrer_domains.len() > MAX_REFERRERS
                && let Some(rarest) = self
                    .referrer_domains
                    .iter()
                    .filter(|(name, _)| *name != domain)
                    .min_by_key(|(_, count)| **count)
                    .map(|(name, _)| name.clone())
            {
                self.referrer_domains.remove(&rarest);
            }
            add_unique(&mut changed, "referrer_domains");
        }
        if let Some(key) = event.device_id.clone().or_else(|| event.user_agent.clone()) {
            let user_agent = event.user_agent.clone().unwrap_or_default();
            match self.devices.iter_mut().find(|device| device.key == key) {
                Some(device) => {
                    device.first_seen = device.first_seen.min(event.at);
                    device.last_seen = device.last_seen.max(event.at);
                }
                None => {
                    self.devices.push(Device {
                        key,
                        user_agent,
                        first_seen: event.at,
                        last_seen: event.at,
                    });
                    self.devices
                        .sort_by_key(|device| std::cmp::Reverse(device.last_seen));
                    self.devices.truncate(MAX_DEVICES);
                    add_unique(&mut changed, "devices");
                }
            }
        }
        if let Some(city) = &event.city {
            set_latest(&mut self.city, city.clone(), event.at, &mut changed, "city");
            self.seen_in(
                Place {
                    city: city.clone(),
                    country: event.country.clone(),
                    first_seen: event.at,
                    last_seen: event.at,
                },
                &mut changed,
            );
        }
        if let Some(country) = &event.country {
            set_latest(
                &mut self.country,
                country.clone(),
                event.at,
                &mut changed,
                "country",
            );
        }
        if let Some(timezone) = &event.timezone {
            set_latest(
                &mut self.timezone,
                timezone.clone(),
                event.at,
                &mut changed,
                "timezone",
            );
        }
        if let Some(url) = &event.url {
            self.urls.push(UrlVisit {
                url: url.clone(),
                at: event.at,
            });
            self.urls.sort_by_key(|visit| std::cmp::Reverse(visit.at));
            self.urls.truncate(MAX_URLS);
            add_unique(&mut changed, "urls");
        }
        let counted = self.count_event(&event.name);
        counted.add(event.at, 1);
        let counted_name = if self.events.contains_key(&event.name) {
            event.name.as_str()
        } else {
            OTHER_EVENTS
        };
        add_unique(&mut changed, format!("events.{counted_name}"));
        for (name, value) in &event.traits {
            if self.set_trait(name, value.clone(), event.at, settings) {
                add_unique(&mut changed, format!("traits.{name}"));
            }
        }
        (changed, stamp)
    }

    /// Puts an event at `at` into the session it belongs to, or a new one, keeping the
    /// sessions in time order whatever order events arrive in.
    fn place_in_session(
        &mut self,
        at: i64,
        is_view: bool,
        settings: &FoldSettings,
        changed: &mut Vec<String>,
    ) -> SessionStamp {
        let timeout = settings.session_timeout_ms;
        let index = self
            .sessions
            .iter()
            .position(|session| at >= session.start - timeout && at <= session.end + timeout);
        let index = match index {
            Some(index) => {
                let session = &mut self.sessions[index];
                session.start = session.start.min(at);
                session.end = session.end.max(at);
                session.events += 1;
                if is_view {
                    session.pages += 1;
                    if session.pages == 1 {
                        self.visit_count += 1;
                        add_unique(changed, "visit_count");
                    }
                }
                // An event that closes the gap between two sessions joins them.
                if index + 1 < self.sessions.len()
                    && self.sessions[index + 1].start - self.sessions[index].end <= timeout
                {
                    let next = self.sessions.remove(index + 1);
                    let session = &mut self.sessions[index];
                    session.end = session.end.max(next.end);
                    session.events += next.events;
                    if session.pages > 0 && next.pages > 0 {
                        self.visit_count = self.visit_count.saturating_sub(1);
                    }
                    session.pages += next.pages;
                    self.session_count = self.session_count.saturating_sub(1);
                    add_unique(changed, "session_count");
                }
                if index > 0 && self.sessions[index].start - self.sessions[index - 1].end <= timeout
                {
                    let joined = self.sessions.remove(index);
                    let previous = &mut self.sessions[index - 1];
                    previous.end = previous.end.max(joined.end);
                    previous.events += joined.events;
                    if previous.pages > 0 && joined.pages > 0 {
                        self.visit_count = self.visit_count.saturating_sub(1);
                    }
                    previous.pages += joined.pages;
                    self.session_count = self.session_count.saturating_sub(1);
                    add_unique(changed, "session_count");
                    index - 1
                } else {
                    index
                }
            }
            None => {
                self.sessions_started += 1;
                self.session_count += 1;
                if is_view {
                    self.visit_count += 1;
                    add_unique(changed, "visit_count");
                }
                let session = Session {
                    id: format!("{}:{}", self.id, self.sessions_started),
                    start: at,
                    end: at,
                    events: 1,
                    pages: u32::from(is_view),
                };
                let position = self
                    .sessions
                    .partition_point(|existing| existing.start < at);
                self.sessions.insert(position, session);
                add_unique(changed, "session_count");
                position
            }
        };
        let id = self.sessions[index].id.clone();
        // Sessions before the kept ones still count.
        let later = (self.sessions.len() - 1 - index) as u64;
        let stamp = SessionStamp {
            id,
            index: self.session_count.saturating_sub(later),
        };
        if self.sessions.len() > MAX_SESSIONS_KEPT {
            self.sessions.remove(0);
        }
        add_unique(changed, "sessions");
        stamp
    }

    /// The counts an event name goes to: its own, or [`OTHER_EVENTS`] once
    /// [`MAX_EVENT_NAMES`] names are counted.
    fn count_event(&mut self, name: &str) -> &mut EventCounts {
        let name = if self.events.contains_key(name) || self.events.len() < MAX_EVENT_NAMES {
            name
        } else {
            OTHER_EVENTS
        };
        self.events.entry(name.to_string()).or_default()
    }

    fn set_trait(&mut self, name: &str, value: Value, at: i64, settings: &FoldSettings) -> bool {
        let current = self.traits.get(name);
        if current.is_none() && self.traits.len() >= MAX_TRAITS {
            return false;
        }
        let next = match (settings.policy(name), current) {
            (_, None) => match settings.policy(name) {
                TraitPolicy::Append => Stamped {
                    value: Value::Array(vec![value]),
                    at,
                },
                _ => Stamped { value, at },
            },
            (TraitPolicy::Latest, Some(current)) if at >= current.at && current.value != value => {
                Stamped { value, at }
            }
            (TraitPolicy::First, Some(current)) if at < current.at && current.value != value => {
                Stamped { value, at }
            }
            (TraitPolicy::Append, Some(current)) => {
                let mut values = match &current.value {
                    Value::Array(values) => values.clone(),
                    other => vec![other.clone()],
                };
                let added = match value {
                    Value::Array(items) => items,
                    single => vec![single],
                };
                let before = values.len();
                for item in added {
                    if !values.contains(&item) {
                        values.push(item);
                    }
                }
                if values.len() == before {
                    return false;
                }
                if values.len() > MAX_APPENDED_VALUES {
                    values.drain(..values.len() - MAX_APPENDED_VALUES);
                }
                Stamped {
                    value: Value::Array(values),
                    at: at.max(current.at),
                }
            }
            _ => return false,
        };
        self.traits.insert(name.to_string(), next);
        true
    }

    /// Records that the profile entered (since `at`) or left a segment, as the segmenter
    /// decided.
    pub fn set_segment(&mut self, segment: &str, entered: bool, at: i64) -> Vec<String> {
        let changed = if entered {
            self.segments.insert(segment.to_string(), at).is_none()
        } else {
            self.segments.remove(segment).is_some()
        };
        if changed {
            vec![format!("segments.{segment}")]
        } else {
            Vec::new()
        }
    }

    /// Folds an enricher's facts in (under `facts.<source>`, newer keys win); geo's
    /// city, country and time zone are also the profile's last ones.
    pub fn apply_facts(
        &mut self,
        source: &str,
        facts: &serde_json::Map<String, Value>,
        at: i64,
    ) -> Vec<String> {
        let entry = self
            .facts
            .entry(source.to_string())
            .or_insert_with(|| Stamped {
                value: Value::Object(Default::default()),
                at,
            });
        if at < entry.at {
            return Vec::new();
        }
        let mut changed = Vec::new();
        if let Value::Object(known) = &mut entry.value {
            for (key, value) in facts {
                if known.get(key) != Some(value) {
                    known.insert(key.clone(), value.clone());
                    add_unique(&mut changed, format!("facts.{source}"));
                }
            }
        }
        entry.at = at;
        // Where the person is, by their address, is their last city, country and time
        // zone (as the event's own location would be).
        if source == "geo" {
            let text = |key: &str| facts.get(key).and_then(Value::as_str).map(str::to_string);
            if let Some(city) = text("city") {
                set_latest(&mut self.city, city.clone(), at, &mut changed, "city");
                self.seen_in(
                    Place {
                        city,
                        country: text("country"),
                        first_seen: at,
                        last_seen: at,
                    },
                    &mut changed,
                );
            }
            if let Some(country) = text("country") {
                set_latest(&mut self.country, country, at, &mut changed, "country");
            }
            if let Some(timezone) = text("timezone") {
                set_latest(&mut self.timezone, timezone, at, &mut changed, "timezone");
            }
        }
        changed
    }

    /// Adds `place` to the cities seen, or widens the times of the same city.
    fn seen_in(&mut self, place: Place, changed: &mut Vec<String>) {
        let same = |known: &Place| known.city == place.city && known.country == place.country;
        match self.cities.iter_mut().find(|known| same(known)) {
            Some(known) => {
                known.first_seen = known.first_seen.min(place.first_seen);
                known.last_seen = known.last_seen.max(place.last_seen);
            }
            None => {
                self.cities.push(place);
                add_unique(changed, "cities");
            }
        }
        self.cities
            .sort_by_key(|place| std::cmp::Reverse(place.last_seen));
        self.cities.truncate(MAX_CITIES);
    }

    /// Takes everything of `other` (merged into this profile) in: identifiers, counts,
    /// sessions, lists, traits by their policies, facts, segments.
    pub fn absorb(&mut self, other: &Profile, settings: &FoldSettings) {
        for identifier in &other.identifiers {
            if !self.identifiers.contains(identifier) {
                self.identifiers.push(identifier.clone());
            }
        }
        self.identifiers.sort();
        self.first_seen = match (self.first_seen, other.first_seen) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_seen = match (self.last_seen, other.last_seen) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.session_count += other.session_count;
        self.visit_count += other.visit_count;
        self.sessions_started += other.sessions_started;
        self.sessions.extend(other.sessions.iter().cloned());
        self.sessions.sort_by_key(|session| session.start);
        self.coalesce_sessions(settings.session_timeout_ms);
        while self.sessions.len() > MAX_SESSIONS_KEPT {
            self.sessions.remove(0);
        }
        for (domain, count) in &other.referrer_domains {
            *self.referrer_domains.entry(domain.clone()).or_default() += count;
        }
        for device in &other.devices {
            match self.devices.iter_mut().find(|mine| mine.key == device.key) {
                Some(mine) => {
                    mine.first_seen = mine.first_seen.min(device.first_seen);
                    mine.last_seen = mine.last_seen.max(device.last_seen);
                }
                None => self.devices.push(device.clone()),
            }
        }
        self.devices
            .sort_by_key(|device| std::cmp::Reverse(device.last_seen));
        self.devices.truncate(MAX_DEVICES);
        let mut ignored = Vec::new();
        for place in &other.cities {
            self.seen_in(place.clone(), &mut ignored);
        }
        for (mine, theirs) in [
            (&mut self.city, &other.city),
            (&mut self.country, &other.country),
            (&mut self.timezone, &other.timezone),
        ] {
            if let Some(theirs) = theirs
                && mine.as_ref().is_none_or(|mine| theirs.at > mine.at)
            {
                *mine = Some(theirs.clone());
            }
        }
        self.urls.extend(other.urls.iter().cloned());
        self.urls.sort_by_key(|visit| std::cmp::Reverse(visit.at));
        self.urls.truncate(MAX_URLS);
        for (name, counts) in &other.events {
            self.count_event(name).absorb(counts);
        }
        for (name, value) in &other.traits {
            self.set_trait(name, value.value.clone(), value.at, settings);
        }
        // A source's facts as of the same time are the survivor's: an enricher that
        // keeps state per person says what the two are together as of the newer.
        for (source, facts) in &other.facts {
            let newer = self
                .facts
                .get(source)
                .is_none_or(|known| facts.at > known.at);
            if let Value::Object(map) = &facts.value
                && newer
            {
                self.apply_facts(source, map, facts.at);
            }
        }
        for (segment, since) in &other.segments {
            self.segments.entry(segment.clone()).or_insert(*since);
        }
        // A split hands over part of a profile under the receiver's own id.
        if other.id != self.id {
            self.merged_from.push(other.id.clone());
        }
        self.merged_from.extend(other.merged_from.iter().cloned());
    }

    /// Joins sessions (in time order) that overlap or are closer than the timeout: the
    /// same person on two devices at once is one session.
    fn coalesce_sessions(&mut self, timeout: i64) {
        let mut joined: Vec<Session> = Vec::with_capacity(self.sessions.len());
        for session in std::mem::take(&mut self.sessions) {
            match joined.last_mut() {
                Some(previous) if session.start - previous.end <= timeout => {
                    previous.end = previous.end.max(session.end);
                    previous.events += session.events;
                    if previous.pages > 0 && session.pages > 0 {
                        self.visit_count = self.visit_count.saturating_sub(1);
                    }
                    previous.pages += session.pages;
                    self.session_count = self.session_count.saturating_sub(1);
                }
                _ => joined.push(session),
            }
        }
        self.sessions = joined;
    }

    /// The profile as people and segments read it, with the rolling windows counted as
    /// of `now`.
    pub fn view(&self, now: i64) -> ProfileView<'_> {
        ProfileView { profile: self, now }
    }

    /// [`Profile::view`] as JSON text.
    pub fn view_json(&self, now: i64) -> String {
        // Serializing maps with string keys and plain values cannot fail.
        serde_json::to_string(&self.view(now)).unwrap_or_default()
    }
}

/// The profile as clients read it (gRPC, `profiles.changed`): times as RFC 3339 text,
/// event counts per window as of `now`. Serialized straight from the profile, with no
/// JSON tree in between (it is written for every change).
pub struct ProfileView<'a> {
    profile: &'a Profile,
    now: i64,
}

fn time_text(ms: i64) -> String {
    cairn_runtime::clock::text(ms)
}

/// Serializes the pairs a function yields as a JSON object.
struct Pairs<F>(F);

impl<F, I, K, V> Serialize for Pairs<F>
where
    F: Fn() -> I,
    I: IntoIterator<Item = (K, V)>,
    K: Serialize,
    V: Serialize,
{
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map((self.0)())
    }
}

/// Serializes the items a function yields as a JSON array.
struct Items<F>(F);

impl<F, I> Serialize for Items<F>
where
    F: Fn() -> I,
    I: IntoIterator,
    I::Item: Serialize,
{
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq((self.0)())
    }
}

#[derive(Serialize)]
struct SessionView<'a> {
    id: &'a str,
    start: String,
    end: String,
    events: u32,
}

#[derive(Serialize)]
struct DeviceView<'a> {
    key: &'a str,
    user_agent: &'a str,
    first_seen: String,
    last_seen: String,
}

#[derive(Serialize)]
struct PlaceView<'a> {
    city: &'a str,
    country: Option<&'a str>,
    first_seen: String,
    last_seen: String,
}

#[derive(Serialize)]
struct UrlView<'a> {
    url: &'a str,
    at: String,
}

impl Serialize for ProfileView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let (profile, now) = (self.profile, self.now);
        let entries = 19 + usize::from(profile.merged_into.is_some());
        let mut map = serializer.serialize_map(Some(entries))?;
        map.serialize_entry("id", &profile.id)?;
        map.serialize_entry("identifiers", &profile.identifiers)?;
        map.serialize_entry("first_seen", &profile.first_seen.map(time_text))?;
        map.serialize_entry("last_seen", &profile.last_seen.map(time_text))?;
        map.serialize_entry("visit_count", &profile.visit_count)?;
        map.serialize_entry("session_count", &profile.session_count)?;
        map.serialize_entry(
            "sessions",
            &Items(|| {
                profile
                    .sessions
                    .iter()
                    .rev()
                    .take(5)
                    .map(|session| SessionView {
                        id: &session.id,
                        start: time_text(session.start),
                        end: time_text(session.end),
                        events: session.events,
                    })
            }),
        )?;
        map.serialize_entry("referrer_domains", &profile.referrer_domains)?;
        map.serialize_entry(
            "devices",
            &Items(|| {
                profile.devices.iter().map(|device| DeviceView {
                    key: &device.key,
                    user_agent: &device.user_agent,
                    first_seen: time_text(device.first_seen),
                    last_seen: time_text(device.last_seen),
                })
            }),
        )?;
        map.serialize_entry(
            "cities",
            &Items(|| {
                profile.cities.iter().map(|place| PlaceView {
                    city: &place.city,
                    country: place.country.as_deref(),
                    first_seen: time_text(place.first_seen),
                    last_seen: time_text(place.last_seen),
                })
            }),
        )?;
        map.serialize_entry("city", &profile.city.as_ref().map(|city| &city.value))?;
        map.serialize_entry(
            "country",
            &profile.country.as_ref().map(|country| &country.value),
        )?;
        map.serialize_entry(
            "timezone",
            &profile.timezone.as_ref().map(|timezone| &timezone.value),
        )?;
        map.serialize_entry(
            "urls",
            &Items(|| {
                profile.urls.iter().map(|visit| UrlView {
                    url: &visit.url,
                    at: time_text(visit.at),
                })
            }),
        )?;
        map.serialize_entry(
            "event_count",
            &Pairs(|| {
                profile.events.iter().map(move |(name, counts)| {
                    let windows = Pairs(move || {
                        WINDOWS
                            .iter()
                            .map(move |(window, length)| (*window, counts.within(*length, now)))
                            .chain(std::iter::once(("all", counts.total)))
                    });
                    (name, windows)
                })
            }),
        )?;
        map.serialize_entry(
            "event_count_drops",
            &Pairs(|| {
                profile.events.iter().map(move |(name, counts)| {
                    let windows = Pairs(move || {
                        WINDOWS.iter().filter_map(move |(window, length)| {
                            counts
                                .drops_at(*length, now)
                                .map(|at| (*window, time_text(at)))
                        })
                    });
                    (name, windows)
                })
            }),
        )?;
        map.serialize_entry(
            "event_last",
            &Pairs(|| {
                profile
                    .events
                    .iter()
                    .map(|(name, counts)| (name, time_text(counts.last)))
            }),
        )?;
        map.serialize_entry(
            "traits",
            &Pairs(|| {
                profile
                    .traits
                    .iter()
                    .map(|(name, value)| (name, &value.value))
            }),
        )?;
        map.serialize_entry(
            "facts",
            &Pairs(|| {
                profile
                    .facts
                    .iter()
                    .map(|(name, value)| (name, &value.value))
            }),
        )?;
        map.serialize_entry(
            "segments",
            &Pairs(|| {
                profile
                    .segments
                    .iter()
                    .map(|(name, since)| (name, time_text(*since)))
            }),
        )?;
        map.serialize_entry("merged_from", &profile.merged_from)?;
        // Only on a profile merged into another (announced once, so that its segment
        // memberships end).
        if let Some(into) = &profile.merged_into {
            map.serialize_entry("merged_into", into)?;
        }
        map.end()
    }
}

/// The fields of [`ProfileView`], for checking segments before they are saved.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProfileSchema;

impl ProfileSchema {
    /// Whether `name` is one of the profile view's top fields (`traits`, `visit_count`,
    /// ...), as opposed to a trait.
    pub fn is_top_field(name: &str) -> bool {
        TOP_FIELDS.contains(&name)
    }

    /// The profile view's top fields, in the view's order.
    pub fn top_fields() -> &'static [&'static str] {
        TOP_FIELDS
    }

    /// The name under which `profiles.changed` reports a change of the view's `field`
    /// (or of anything under it): event counts change as `events.<name>`, traits as
    /// `traits.<name>`, facts as `facts.<source>`; a one-word field the profile does
    /// not have is a trait.
    pub fn change_of(field: &str) -> String {
        let parts: Vec<&str> = field.split('.').collect();
        match parts.as_slice() {
            ["event_count" | "event_count_drops" | "event_last", name, ..] => {
                format!("events.{name}")
            }
            ["traits" | "facts", name, ..] => format!("{}.{name}", parts[0]),
            [top, ..] if TOP_FIELDS.contains(top) => (*top).to_string(),
            [name] => format!("traits.{name}"),
            [top, ..] => (*top).to_string(),
            [] => String::new(),
        }
    }
}

/// The fields at the top of the view.
const TOP_FIELDS: &[&str] = &[
    "id",
    "identifiers",
    "first_seen",
    "last_seen",
    "visit_count",
    "session_count",
    "sessions",
    "referrer_domains",
    "devices",
    "cities",
    "city",
    "country",
    "timezone",
    "urls",
    "event_count",
    "event_count_drops",
    "event_last",
    "traits",
    "facts",
    "segments",
    "merged_from",
];

impl cairn_filterql::Schema for ProfileSchema {
    fn field_type(&self, field: &str) -> Option<cairn_filterql::FieldType> {
        use cairn_filterql::FieldType::{Any, List, Map, Number, Text, Time};
        let parts: Vec<&str> = field.split('.').collect();
        let kind = match parts.as_slice() {
            ["id" | "city" | "country" | "timezone"] => Text,
            ["first_seen" | "last_seen"] => Time,
            ["visit_count" | "session_count"] => Number,
            ["identifiers" | "sessions" | "devices" | "cities" | "urls" | "merged_from"] => List,
            [
                "referrer_domains" | "event_count" | "event_count_drops" | "event_last" | "traits"
                | "facts" | "segments",
            ] => Map,
            // A field the profile does not have at its top is a trait.
            [_] => Any,
            ["referrer_domains", ..] => Number,
            ["traits" | "facts", ..] => Any,
            ["segments", _] => Time,
            ["event_last", _, ..] => Time,
            ["event_count_drops", _] => Map,
            ["event_count_drops", .., window] if WINDOWS.iter().any(|(name, _)| name == window) => {
                Time
            }
            ["event_count", _] => Map,
            ["event_count", .., window]
                if *window == "all" || WINDOWS.iter().any(|(name, _)| name == window) =>
            {
                Number
            }
            _ => return None,
        };
        Some(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T0: i64 = 1_763_800_000_000;

    fn event(name: &str, at: i64) -> EventInput {
        EventInput {
            message_id: format!("m{at}"),
            call: if name == "page" {
                "page".into()
            } else {
                "track".into()
            },
            name: name.into(),
            at,
            ..Default::default()
        }
    }

    fn fold(events: &[EventInput]) -> Profile {
        let mut profile = Profile::new("p1");
        for event in events {
            profile.apply_event(event, &FoldSettings::default());
        }
        profile
    }

    #[test]
    fn endless_new_names_cannot_grow_a_profile_without_bound() {
        let mut profile = Profile::new("p1");
        let settings = FoldSettings::default();
        for index in 0..(MAX_EVENT_NAMES + 100) {
            let mut input = event(&format!("Event {index}"), T0 + index as i64);
            input.traits = [(format!("trait_{index}"), json!(index))]
                .into_iter()
                .collect();
            profile.apply_event(&input, &settings);
        }
        assert_eq!(profile.events.len(), MAX_EVENT_NAMES + 1);
        assert_eq!(profile.events[OTHER_EVENTS].total, 100);
        assert_eq!(
            profile.events["Event 0"].total, 1,
            "names counted before stay"
        );
        let mut input = event("Event 0", T0 + 10_000);
        input.traits = [("trait_0".to_string(), json!("changed"))]
            .into_iter()
            .collect();
        profile.apply_event(&input, &settings);
        assert_eq!(profile.events["Event 0"].total, 2);
        assert_eq!(profile.traits.len(), MAX_EVENT_NAMES + 100);

        let mut many = Profile::new("p2");
        for index in 0..(MAX_TRAITS + 10) {
            many.set_trait(&format!("t{index}"), json!(index), T0, &settings);
        }
        assert_eq!(many.traits.len(), MAX_TRAITS);
        assert!(
            many.set_trait("t0", json!("new"), T0 + 1, &settings),
            "known traits still change"
        );
    }

    #[test]
    fn a_gap_longer_than_the_timeout_starts_a_session() {
        let mut profile = Profile::new("p1");
        let settings = FoldSettings::default();
        let (_, first) = profile.apply_event(&event("page", T0), &settings);
        let (_, same) = profile.apply_event(&event("page", T0 + 29 * MINUTE), &settings);
        let (_, next) =
            profile.apply_event(&event("page", T0 + 29 * MINUTE + 31 * MINUTE), &settings);
        assert_eq!(first, same);
        assert_eq!(
            first,
            SessionStamp {
                id: "p1:1".into(),
                index: 1
            }
        );
        assert_eq!(
            next,
            SessionStamp {
                id: "p1:2".into(),
                index: 2
            }
        );
        assert_eq!((profile.session_count, profile.visit_count), (2, 2));
    }

    #[test]
    fn out_of_order_events_land_in_the_right_session() {
        // Two sessions 45 minutes apart; a late event that belongs to the first; an older
        // session; then an event in the gap that brings the two sessions together.
        let mut profile = fold(&[event("page", T0), event("page", T0 + 45 * MINUTE)]);
        assert_eq!(profile.session_count, 2);
        let settings = FoldSettings::default();
        let (_, late) = profile.apply_event(&event("Clicked", T0 + 10 * MINUTE), &settings);
        assert_eq!(
            late,
            SessionStamp {
                id: "p1:1".into(),
                index: 1
            }
        );
        let (_, early) = profile.apply_event(&event("page", T0 - 3 * HOUR), &settings);
        assert_eq!(early.index, 1, "an older session goes first");
        assert_eq!(profile.session_count, 3);
        assert_eq!(profile.first_seen, Some(T0 - 3 * HOUR));
        let (_, bridge) = profile.apply_event(&event("page", T0 + 30 * MINUTE), &settings);
        assert_eq!(
            profile.session_count, 2,
            "the event in the gap joins two sessions"
        );
        assert_eq!(
            bridge,
            SessionStamp {
                id: "p1:1".into(),
                index: 2
            }
        );
        assert_eq!(profile.visit_count, 2);
        // The same events in time order give the same sessions.
        let mut in_order = vec![
            event("page", T0 - 3 * HOUR),
            event("page", T0),
            event("Clicked", T0 + 10 * MINUTE),
            event("page", T0 + 30 * MINUTE),
            event("page", T0 + 45 * MINUTE),
        ];
        in_order.sort_by_key(|event| event.at);
        let sorted = fold(&in_order);
        assert_eq!(sorted.session_count, profile.session_count);
        assert_eq!(sorted.visit_count, profile.visit_count);
        let spans = |profile: &Profile| {
            profile
                .sessions
                .iter()
                .map(|s| (s.start, s.end, s.events))
                .collect::<Vec<_>>()
        };
        assert_eq!(spans(&sorted), spans(&profile));
    }

    #[test]
    fn the_segment_schema_knows_every_field_of_the_view() {
        use cairn_filterql::{FieldType, Schema as _};
        let mut page = event("page", T0);
        page.url = Some("https://shop.example.com/shoes".into());
        page.referrer_domain = Some("google.com".into());
        page.user_agent = Some("Firefox".into());
        page.city = Some("London".into());
        page.country = Some("GB".into());
        page.timezone = Some("Europe/London".into());
        page.traits = [("plan".to_string(), json!("pro"))].into_iter().collect();
        let mut profile = fold(&[page, event("Order Completed", T0 + MINUTE)]);
        profile.apply_facts(
            "geo",
            &json!({"city": "London"}).as_object().unwrap().clone(),
            T0,
        );
        profile.segments.insert("vip".into(), T0);
        let view = serde_json::to_value(profile.view(T0)).unwrap();

        fn walk(value: &Value, path: &str, seen: &mut Vec<(String, FieldType)>) {
            let kind = match value {
                Value::Number(_) => FieldType::Number,
                Value::String(_) => FieldType::Text,
                Value::Bool(_) => FieldType::Bool,
                Value::Array(_) => FieldType::List,
                Value::Object(map) => {
                    for (key, inner) in map {
                        let inner_path = if path.is_empty() {
                            key.clone()
                        } else {
                            format!("{path}.{key}")
                        };
                        walk(inner, &inner_path, seen);
                    }
                    FieldType::Map
                }
                Value::Null => return,
            };
            if !path.is_empty() {
                seen.push((path.to_string(), kind));
            }
        }
        let mut seen = Vec::new();
        walk(&view, "", &mut seen);
        assert!(seen.len() > 20, "{seen:?}");
        for (path, kind) in seen {
            let known = ProfileSchema.field_type(&path);
            assert!(known.is_some(), "{path} is not in the schema");
            let fits = match (known.unwrap(), kind) {
                (FieldType::Any, _) => true,
                (FieldType::Time, FieldType::Text) => true,
                (expected, found) => expected == found,
            };
            assert!(fits, "{path}: schema says {known:?}, the view has {kind:?}");
        }
        let top: Vec<&String> = view.as_object().unwrap().keys().collect();
        let mut known: Vec<&str> = TOP_FIELDS.to_vec();
        known.sort();
        let mut top: Vec<&str> = top.iter().map(|key| key.as_str()).collect();
        top.sort();
        assert_eq!(top, known, "TOP_FIELDS must list the view's fields");
        assert_eq!(ProfileSchema.field_type("event_count.purchase.2d"), None);
        assert_eq!(ProfileSchema.field_type("sessions.id"), None);
    }

    #[test]
    fn fields_map_to_the_changes_that_announce_them() {
        let cases = [
            ("visit_count", "visit_count"),
            ("event_count.purchase.30d", "events.purchase"),
            ("event_last.purchase", "events.purchase"),
            ("traits.plan", "traits.plan"),
            ("plan", "traits.plan"),
            ("facts.geo.city", "facts.geo"),
            ("referrer_domains.google.com", "referrer_domains"),
            ("city", "city"),
        ];
        for (field, change) in cases {
            assert_eq!(ProfileSchema::change_of(field), change, "{field}");
        }
        // And the fold reports exactly these names.
        let mut profile = Profile::new("p1");
        let mut purchase = event("purchase", T0);
        purchase.traits = [("plan".to_string(), json!("pro"))].into_iter().collect();
        purchase.call = "identify".into();
        let (fields, _) = profile.apply_event(&purchase, &FoldSettings::default());
        for expected in ["events.purchase", "traits.plan", "last_seen"] {
            assert!(
                fields.iter().any(|field| field == expected),
                "{expected} not in {fields:?}"
            );
        }
    }

    #[test]
    fn counts_roll_over_their_windows() {
        let profile = fold(&[
            event("purchase", T0 - 40 * DAY),
            event("purchase", T0 - 10 * DAY),
            event("purchase", T0 - 3 * DAY),
            event("purchase", T0 - 2 * HOUR),
            event("purchase", T0 - 10 * MINUTE),
        ]);
        let counts = &profile.events["purchase"];
        assert_eq!(counts.total, 5);
        assert_eq!(counts.within(HOUR, T0), 1);
        assert_eq!(counts.within(DAY, T0), 2);
        assert_eq!(counts.within(7 * DAY, T0 + HOUR), 3);
        assert_eq!(counts.within(30 * DAY, T0 + HOUR), 4);
        assert!(counts.buckets.len() <= 5);
        let view = serde_json::to_value(profile.view(T0)).unwrap();
        assert_eq!(view["event_count"]["purchase"]["all"], 5);
        assert_eq!(view["event_count"]["purchase"]["24h"], 2);
        // Each window says when its count next drops, and it does drop then.
        for (window, length) in WINDOWS {
            let at = counts.drops_at(length, T0).unwrap();
            assert!(at > T0, "{window}");
            assert_eq!(
                counts.within(length, at),
                counts.within(length, at - 1) - 1,
                "{window}"
            );
            assert_eq!(
                view["event_count_drops"]["purchase"][window],
                cairn_runtime::clock::text(at)
            );
        }
        assert_eq!(counts.drops_at(HOUR, T0 + HOUR), None);
    }

    #[test]
    fn traits_follow_their_policies() {
        let settings = FoldSettings {
            trait_policies: BTreeMap::from([
                ("signup_source".to_string(), TraitPolicy::First),
                ("interests".to_string(), TraitPolicy::Append),
            ]),
            ..Default::default()
        };
        let mut profile = Profile::new("p1");
        let identify = |at: i64, plan: &str, source: &str, interest: &str| EventInput {
            call: "identify".into(),
            name: "identify".into(),
            at,
            traits: BTreeMap::from([
                ("plan".into(), json!(plan)),
                ("signup_source".into(), json!(source)),
                ("interests".into(), json!(interest)),
            ]),
            ..Default::default()
        };
        profile.apply_event(&identify(T0, "pro", "ads", "shoes"), &settings);
        profile.apply_event(
            &identify(T0 + HOUR, "team", "newsletter", "bags"),
            &settings,
        );
        // An older event arrives late: it does not override the latest plan, but is the first source.
        profile.apply_event(&identify(T0 - HOUR, "free", "friend", "shoes"), &settings);
        let view = serde_json::to_value(profile.view(T0)).unwrap();
        assert_eq!(view["traits"]["plan"], "team");
        assert_eq!(view["traits"]["signup_source"], "friend");
        assert_eq!(view["traits"]["interests"], json!(["shoes", "bags"]));
    }

    #[test]
    fn aggregates_follow_the_events() {
        let mut page = event("page", T0);
        page.url = Some("https://shop.example.com/shoes".into());
        page.referrer_domain = Some("google.com".into());
        page.user_agent = Some("Firefox".into());
        page.city = Some("London".into());
        page.timezone = Some("Europe/London".into());
        page.identifiers = vec![Identifier {
            kind: "anonymous_id".into(),
            value: "a1".into(),
        }];
        let mut later = page.clone();
        later.at = T0 + 5 * MINUTE;
        later.city = Some("Paris".into());
        later.device_id = Some("phone-1".into());
        let profile = fold(&[page, later]);
        let view = serde_json::to_value(profile.view(T0)).unwrap();
        assert_eq!(view["referrer_domains"]["google.com"], 2);
        assert_eq!(view["city"], "Paris");
        assert_eq!(view["timezone"], "Europe/London");
        assert_eq!(view["devices"].as_array().unwrap().len(), 2);
        let cities: Vec<&Value> = view["cities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|place| &place["city"])
            .collect();
        assert_eq!(cities, [&json!("Paris"), &json!("London")]);
        assert_eq!(view["urls"].as_array().unwrap().len(), 2);
        assert_eq!(view["identifiers"][0]["value"], "a1");
        assert_eq!(view["visit_count"], 1);
    }

    #[test]
    fn absorbing_a_profile_combines_everything_once() {
        let mut laptop = fold(&[event("page", T0), event("purchase", T0 + MINUTE)]);
        let mut phone = Profile::new("p2");
        phone.apply_event(&event("page", T0 + 5 * MINUTE), &FoldSettings::default());
        phone.apply_event(&event("page", T0 + 3 * HOUR), &FoldSettings::default());
        laptop.absorb(&phone, &FoldSettings::default());
        assert_eq!(
            laptop.session_count, 2,
            "overlapping sessions on two devices are one"
        );
        assert_eq!(laptop.events["page"].total, 3);
        assert_eq!(laptop.events["purchase"].total, 1);
        assert_eq!(laptop.last_seen, Some(T0 + 3 * HOUR));
        assert_eq!(laptop.merged_from, vec!["p2".to_string()]);
    }

    #[test]
    fn a_merge_takes_the_other_profile_s_facts_only_when_they_are_newer() {
        let facts = |value: &str| {
            json!({"best_send_hour": value})
                .as_object()
                .unwrap()
                .clone()
        };
        let mut survivor = Profile::new("p1");
        // What the enricher says of the two together, as of the newer of them.
        survivor.apply_facts("activity", &facts("both"), T0 + HOUR);
        survivor.apply_facts("content", &facts("mine"), T0);
        let mut merged = Profile::new("p2");
        merged.apply_facts("activity", &facts("theirs"), T0 + HOUR);
        merged.apply_facts("content", &facts("theirs"), T0 + HOUR);
        merged.apply_facts("device", &facts("theirs"), T0);
        survivor.absorb(&merged, &FoldSettings::default());
        let said = |source: &str| survivor.facts[source].value["best_send_hour"].clone();
        assert_eq!(said("activity"), "both");
        assert_eq!(said("content"), "theirs");
        assert_eq!(said("device"), "theirs");
    }

    #[test]
    fn the_cities_of_both_profiles_and_their_geo_facts_stay_after_a_merge() {
        let geo = |city: &str, country: &str| {
            json!({"city": city, "country": country})
                .as_object()
                .unwrap()
                .clone()
        };
        let mut laptop = Profile::new("p1");
        laptop.apply_facts("geo", &geo("London", "GB"), T0);
        laptop.apply_facts("geo", &geo("Paris", "FR"), T0 + HOUR);
        let mut phone = Profile::new("p2");
        phone.apply_facts("geo", &geo("Boxford", "GB"), T0 + 2 * HOUR);
        phone.apply_facts("geo", &geo("London", "GB"), T0 + 3 * HOUR);
        laptop.absorb(&phone, &FoldSettings::default());
        let cities: Vec<(&str, i64, i64)> = laptop
            .cities
            .iter()
            .map(|place| (place.city.as_str(), place.first_seen, place.last_seen))
            .collect();
        assert_eq!(
            cities,
            [
                ("London", T0, T0 + 3 * HOUR),
                ("Boxford", T0 + 2 * HOUR, T0 + 2 * HOUR),
                ("Paris", T0 + HOUR, T0 + HOUR),
            ]
        );
        assert_eq!(laptop.city.as_ref().unwrap().value, "London");
    }
}
