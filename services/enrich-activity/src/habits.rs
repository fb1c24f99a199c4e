//! A person's habits: an hour-of-week histogram in their local time, decayed so that
//! recent weeks count most, and the addresses they gave; and what follows from them.

use std::collections::{BTreeMap, HashSet};

use cairn_enricher::FactSet;
use cairn_enricher::decay::weigh;
use chrono::{Datelike as _, Timelike as _};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use serde_json::json;

pub const HOURS_OF_WEEK: usize = 7 * 24;
/// Addresses kept per person.
const MAX_EMAILS: usize = 10;
/// Weight (about events) below which no pattern is claimed.
const MIN_WEIGHT: f64 = 5.0;
/// The office day the work/private split is measured against.
const OFFICE: std::ops::Range<usize> = 9..17;

/// Domains of free mail providers.
#[derive(Debug, Clone, Default)]
pub struct FreeMail {
    domains: HashSet<String>,
}

impl FreeMail {
    /// Reads a list: one domain per line, `#` comments.
    pub fn parse(text: &str) -> Self {
        Self {
            domains: text
                .lines()
                .map(|line| {
                    line.split('#')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_ascii_lowercase()
                })
                .filter(|line| !line.is_empty())
                .collect(),
        }
    }

    /// Whether `domain` (or a domain it is under) is a free mail provider.
    pub fn is_free(&self, domain: &str) -> bool {
        let mut rest = domain;
        loop {
            if self.domains.contains(rest) {
                return true;
            }
            match rest.split_once('.') {
                Some((_, parent)) if parent.contains('.') => rest = parent,
                _ => return false,
            }
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Habits {
    /// Weight per hour of the week in local time (Monday 00:00 is 0), decayed to `as_of`.
    pub hours: Vec<f64>,
    /// The newest event time seen (ms).
    pub as_of: i64,
    /// The person's time zone, from their events.
    pub timezone: Option<String>,
    /// Addresses given, and whether each is a business one.
    pub emails: BTreeMap<String, bool>,
    /// The digest of the facts last published from these habits.
    #[serde(default)]
    pub published: Option<u64>,
    /// Once the person's profile was merged into another: where their habits went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_into: Option<String>,
}

impl cairn_enricher::state::PersonState for Habits {
    fn merged_into(&mut self) -> &mut Option<String> {
        &mut self.merged_into
    }
}

impl cairn_enricher::state::FactSource for Habits {
    fn facts(&self) -> FactSet {
        Habits::facts(self)
    }
    fn as_of_ms(&self) -> i64 {
        self.as_of
    }
    fn published(&mut self) -> &mut Option<u64> {
        &mut self.published
    }
}

impl Habits {
    /// Counts an event at `at_ms`, in `timezone` when the event says (an IANA name),
    /// else in the last one known, else UTC. `half_life_ms`: how fast weight fades.
    pub fn add(&mut self, at_ms: i64, timezone: Option<&str>, half_life_ms: f64) {
        if let Some(name) = timezone
            && name.parse::<Tz>().is_ok()
        {
            self.timezone = Some(name.to_string());
        }
        let zone: Tz = self
            .timezone
            .as_deref()
            .and_then(|name| name.parse().ok())
            .unwrap_or(Tz::UTC);
        let Some(at) = chrono::DateTime::from_timestamp_millis(at_ms) else {
            return;
        };
        let local = at.with_timezone(&zone);
        let slot = local.weekday().num_days_from_monday() as usize * 24 + local.hour() as usize;
        if self.hours.len() != HOURS_OF_WEEK {
            self.hours = vec![0.0; HOURS_OF_WEEK];
        }
        let hours = &mut self.hours;
        let weight = weigh(&mut self.as_of, at_ms, half_life_ms, |fade| {
            hours.iter_mut().for_each(|hour| *hour *= fade)
        });
        self.hours[slot] += weight;
    }

    /// Takes in the habits of a profile merged into this one: its hours, faded to the
    /// newer of the two, its addresses, and its time zone if it is the newer.
    pub fn absorb(&mut self, merged: &Habits, half_life_ms: f64) {
        if merged.hours.len() != HOURS_OF_WEEK {
            return;
        }
        if self.hours.len() != HOURS_OF_WEEK {
            self.hours = vec![0.0; HOURS_OF_WEEK];
        }
        let newer = merged.as_of > self.as_of;
        let hours = &mut self.hours;
        let weight = weigh(&mut self.as_of, merged.as_of, half_life_ms, |fade| {
            hours.iter_mut().for_each(|hour| *hour *= fade)
        });
        for (hour, theirs) in self.hours.iter_mut().zip(&merged.hours) {
            *hour += theirs * weight;
        }
        if newer || self.timezone.is_none() {
            self.timezone = merged.timezone.clone().or(self.timezone.take());
        }
        for (address, business) in &merged.emails {
            if self.emails.len() < MAX_EMAILS || self.emails.contains_key(address) {
                self.emails.insert(address.clone(), *business);
            }
        }
    }

    /// Remembers an address the person gave, and whether it is a business one.
    pub fn add_email(&mut self, address: &str, free_mail: &FreeMail) {
        let address = address.trim().to_ascii_lowercase();
        let Some((_, domain)) = address.rsplit_once('@') else {
            return;
        };
        if domain.is_empty() || !domain.contains('.') {
            return;
        }
        if self.emails.len() >= MAX_EMAILS && !self.emails.contains_key(&address) {
            return;
        }
        let business = !free_mail.is_free(domain);
        self.emails.insert(address, business);
    }

    /// Weight per hour of the day, over all days (or weekdays only).
    fn by_hour(&self, weekdays_only: bool) -> [f64; 24] {
        let mut hours = [0.0; 24];
        for (slot, weight) in self.hours.iter().enumerate() {
            if !weekdays_only || slot / 24 < 5 {
                hours[slot % 24] += weight;
            }
        }
        hours
    }

    /// What the habits say: active hours, the best hour to send, week and day patterns,
    /// working hours, and business or private addresses.
    pub fn facts(&self) -> FactSet {
        let mut facts = FactSet::new();
        let total: f64 = self.hours.iter().sum();
        if total > 0.0 {
            facts.insert(
                "timezone".into(),
                json!(self.timezone.as_deref().unwrap_or("UTC")),
            );
            let by_hour = self.by_hour(false);
            let mut ranked: Vec<usize> = (0..24).filter(|hour| by_hour[*hour] > 0.0).collect();
            ranked.sort_by(|a, b| by_hour[*b].total_cmp(&by_hour[*a]).then(a.cmp(b)));
            facts.insert(
                "active_hours".into(),
                json!(ranked.iter().take(3).collect::<Vec<_>>()),
            );
            facts.insert("best_send_hour".into(), json!(ranked.first()));
        }
        if total >= MIN_WEIGHT {
            let weekdays: f64 = self.hours[..5 * 24].iter().sum();
            let weekday_share = weekdays / total;
            facts.insert("weekday_share".into(), json!(tenths(weekday_share)));
            let week = if weekday_share >= 0.85 {
                "weekdays"
            } else if weekday_share <= 0.4 {
                "weekends"
            } else {
                "all week"
            };
            facts.insert("week_pattern".into(), json!(week));
            let office: f64 = (0..5)
                .flat_map(|day| OFFICE.map(move |hour| day * 24 + hour))
                .map(|slot| self.hours[slot])
                .sum();
            let office_share = office / total;
            let profile = if office_share >= 0.6 {
                "work"
            } else if office_share <= 0.3 {
                "private"
            } else {
                "mixed"
            };
            facts.insert("time_profile".into(), json!(profile));
            // Working hours are claimed only for someone active mostly at work.
            if profile == "work" {
                let weekday_hours = self.by_hour(true);
                let peak = weekday_hours.iter().copied().fold(0.0, f64::max);
                let busy: Vec<usize> = (0..24)
                    .filter(|hour| weekday_hours[*hour] >= 0.2 * peak)
                    .collect();
                if let (Some(start), Some(end)) = (busy.first(), busy.last()) {
                    facts.insert(
                        "working_hours".into(),
                        json!({"start": start, "end": end + 1}),
                    );
                }
            }
        }
        if !self.emails.is_empty() {
            let kinds: BTreeMap<&String, &str> = self
                .emails
                .iter()
                .map(|(address, business)| {
                    (address, if *business { "business" } else { "private" })
                })
                .collect();
            facts.insert("emails".into(), json!(kinds));
            let b2b = self.emails.values().any(|business| *business);
            facts.insert(
                "customer_type".into(),
                json!(if b2b { "b2b" } else { "b2c" }),
            );
        }
        facts
    }
}

fn tenths(share: f64) -> f64 {
    (share * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 24 * HOUR;
    const HALF_LIFE: f64 = 30.0 * DAY as f64;
    /// Monday 2026-11-02 00:00 UTC.
    const MONDAY: i64 = 1_793_577_600_000;

    fn free_mail() -> FreeMail {
        FreeMail::parse(include_str!("../data/free_mail_domains.txt"))
    }

    /// UTC ms of `day` days after MONDAY at `hour`:`minute` in Berlin (UTC+1 in November).
    fn berlin(day: i64, hour: i64, minute: i64) -> i64 {
        MONDAY + day * DAY + (hour - 1) * HOUR + minute * 60_000
    }

    #[test]
    fn an_office_worker_has_working_hours_and_a_business_address() {
        let mut habits = Habits::default();
        for week in 0..3 {
            for day in 0..5 {
                for (hour, minute) in [
                    (9, 15),
                    (10, 30),
                    (11, 45),
                    (13, 10),
                    (14, 20),
                    (15, 40),
                    (16, 50),
                ] {
                    habits.add(
                        berlin(week * 7 + day, hour, minute),
                        Some("Europe/Berlin"),
                        HALF_LIFE,
                    );
                }
            }
        }
        habits.add_email("Tom@Acme-Corp.de", &free_mail());
        let facts = habits.facts();
        assert_eq!(facts["working_hours"], json!({"start": 9, "end": 17}));
        assert_eq!(facts["time_profile"], "work");
        assert_eq!(facts["week_pattern"], "weekdays");
        assert_eq!(facts["timezone"], "Europe/Berlin");
        assert_eq!(facts["customer_type"], "b2b");
        assert_eq!(facts["emails"]["tom@acme-corp.de"], "business");
        let best = facts["best_send_hour"].as_u64().unwrap();
        assert!((9..17).contains(&best), "{best}");
    }

    #[test]
    fn an_evening_and_weekend_reader_is_private() {
        let mut habits = Habits::default();
        for week in 0..3 {
            for day in 0..7 {
                habits.add(
                    berlin(week * 7 + day, 21, 5),
                    Some("Europe/Berlin"),
                    HALF_LIFE,
                );
                habits.add(berlin(week * 7 + day, 22, 30), None, HALF_LIFE);
            }
            for day in 5..7 {
                habits.add(berlin(week * 7 + day, 15, 0), None, HALF_LIFE);
            }
        }
        habits.add_email("tom@gmail.com", &free_mail());
        habits.add_email("t.smith@mail.yahoo.co.uk", &free_mail());
        let facts = habits.facts();
        assert_eq!(facts["time_profile"], "private");
        assert_eq!(facts["week_pattern"], "all week");
        assert_eq!(facts.get("working_hours"), None);
        assert_eq!(facts["customer_type"], "b2c");
        // 21:00 and 22:00 equally often (the later events a little fresher), then 15:00.
        assert_eq!(facts["best_send_hour"], 22);
        assert_eq!(facts["active_hours"], json!([22, 21, 15]));
    }

    #[test]
    fn hours_are_counted_in_the_person_s_time_zone() {
        let mut habits = Habits::default();
        // 14:00 UTC on a Monday is 09:00 in New York (UTC-5 in November).
        habits.add(MONDAY + 14 * HOUR, Some("America/New_York"), HALF_LIFE);
        // Later events without a zone stay in the zone last known; an unknown one is ignored.
        habits.add(MONDAY + DAY + 14 * HOUR, Some("Mars/Olympus"), HALF_LIFE);
        assert!(habits.hours[9] > 0.9, "{}", habits.hours[9]); // a day of fading
        assert_eq!(habits.hours[24 + 9], 1.0);
        assert_eq!(habits.facts()["timezone"], "America/New_York");
    }

    #[test]
    fn recent_habits_outweigh_old_ones() {
        let mut habits = Habits::default();
        for day in 0..5 {
            habits.add(MONDAY + day * DAY + 9 * HOUR, None, HALF_LIFE);
        }
        for day in 90..93 {
            habits.add(MONDAY + day * DAY + 20 * HOUR, None, HALF_LIFE);
        }
        // An old event arriving late weighs what it would have weighed by now.
        habits.add(MONDAY + 9 * HOUR + DAY, None, HALF_LIFE);
        assert_eq!(habits.facts()["best_send_hour"], 20);
    }

    #[test]
    fn merged_habits_count_both_people_s_hours_as_of_the_newer() {
        // One device read in the evening, weeks ago; the other at lunch, lately.
        let mut evenings = Habits::default();
        for day in 0..10 {
            evenings.add(berlin(day, 21, 0), Some("Europe/Berlin"), HALF_LIFE);
        }
        evenings.add_email("tom@gmail.com", &free_mail());
        let mut lunches = Habits::default();
        for day in 40..44 {
            lunches.add(berlin(day, 12, 30), Some("Europe/Berlin"), HALF_LIFE);
        }
        lunches.add_email("tom@acme-corp.de", &free_mail());

        let mut merged = lunches.clone();
        merged.absorb(&evenings, HALF_LIFE);
        assert_eq!(merged.as_of, lunches.as_of);
        // Ten evenings, faded by a month or so, still outweigh four recent lunches.
        assert_eq!(merged.facts()["best_send_hour"], 21);
        assert_eq!(merged.facts()["active_hours"], json!([21, 12]));
        assert_eq!(merged.timezone.as_deref(), Some("Europe/Berlin"));
        assert_eq!(merged.facts()["customer_type"], "b2b");
        assert_eq!(merged.emails.len(), 2);
        let total = |habits: &Habits| habits.hours.iter().sum::<f64>();
        let faded = 0.5f64.powf((lunches.as_of - evenings.as_of) as f64 / HALF_LIFE);
        assert!((total(&merged) - (total(&lunches) + total(&evenings) * faded)).abs() < 1e-9);

        // The other way round: the same totals.
        let mut other_way = evenings.clone();
        other_way.absorb(&lunches, HALF_LIFE);
        assert_eq!(other_way.as_of, lunches.as_of);
        assert!((total(&other_way) - total(&merged)).abs() < 1e-9);

        // Nothing to take in from a profile with no habits.
        let mut unchanged = lunches.clone();
        unchanged.absorb(&Habits::default(), HALF_LIFE);
        assert_eq!(unchanged, lunches);
    }

    #[test]
    fn subdomains_of_free_providers_are_free() {
        let free = free_mail();
        assert!(free.is_free("gmail.com"));
        assert!(free.is_free("eu.mail.yahoo.com") || free.is_free("yahoo.com"));
        assert!(free.is_free("mail.yahoo.com"));
        assert!(!free.is_free("acme.com"));
        assert!(!free.is_free("notgmail.com"));
    }
}
