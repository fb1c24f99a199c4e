//! The streams Cairn uses, declared in code and created or updated at start-up.

use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};

use crate::config::BusConfig;
use crate::subjects;

/// Raw events exactly as the collector accepted them.
pub const EVENTS: &str = "EVENTS";

/// The EVENTS stream: every accepted event, on `events.raw.<partition>`, in files,
/// deduplicated on `Nats-Msg-Id` within the duplicate window. When a size limit is set
/// and reached, new events are refused rather than old ones dropped ("never destroy
/// data"): the collector answers 429 and the client retries later.
pub fn events(config: &BusConfig) -> Config {
    Config {
        name: EVENTS.to_string(),
        description: Some("Raw Segment-spec events as received by the collector".to_string()),
        subjects: vec![subjects::events_raw_all()],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::New,
        max_age: config.events_max_age,
        max_bytes: config
            .events_max_bytes
            .and_then(|bytes| i64::try_from(bytes).ok())
            .unwrap_or(-1),
        max_messages: -1,
        duplicate_window: config.events_duplicate_window,
        num_replicas: config.replicas,
        ..Default::default()
    }
}

/// Events with their profile id, as identity published them.
pub const IDENTIFIED: &str = "IDENTIFIED";
/// What happens to profiles: merged, split, changed, deleted.
pub const PROFILES: &str = "PROFILES";
/// What services could not process, with the reason.
pub const DEAD_LETTERS: &str = "DEAD_LETTERS";
/// Profiles entering and leaving segments.
pub const SEGMENTS: &str = "SEGMENTS";
/// Campaign actions and timers.
pub const CAMPAIGNS: &str = "CAMPAIGNS";

/// The IDENTIFIED stream: `events.identified.<partition>` and what enrichers learn from
/// them, `profile.facts.<partition>` (one stream, so the profile store reads a
/// partition's events and facts through one consumer). Files, deduplicated on message
/// ids so a redelivered event is published once. Derived data (it can be rebuilt from
/// EVENTS), so it keeps 7 days by default.
pub fn identified(config: &BusConfig) -> Config {
    derived(
        config,
        IDENTIFIED,
        "Events with the profile they belong to, and facts enrichers derive from them",
        vec![
            subjects::events_identified_all(),
            subjects::PROFILE_FACTS_ALL.to_string(),
        ],
    )
}

/// The PROFILES stream: `profiles.>`.
pub fn profiles(config: &BusConfig) -> Config {
    derived(
        config,
        PROFILES,
        "Profile merges, splits, changes and deletions",
        vec![subjects::PROFILES_ALL.to_string()],
    )
}

/// The SEGMENTS stream: `segments.changed.<partition>[.synced]`, profiles entering and
/// leaving segments (`.synced` for segments synced to a webhook), deduplicated on
/// message ids so a redelivered change is announced once; and the segmenter's durable
/// timers, message schedules on `segments.timer.<partition>.<profile>` (one per
/// profile: a new one replaces the old) that produce `segments.due.<partition>`.
pub fn segments(config: &BusConfig) -> Config {
    Config {
        allow_message_schedules: true,
        ..derived(
            config,
            SEGMENTS,
            "Profiles entering and leaving segments",
            vec![subjects::SEGMENTS_ALL.to_string()],
        )
    }
}

/// The CAMPAIGNS stream: `campaign.>`, what campaigns ask channels to do
/// (`campaign.sends|web|webhooks.<partition>`, deduplicated on message ids so an action
/// repeated is published once) and the durable inactivity timers, message schedules on
/// `campaign.timer.<partition>.<campaign>.<profile>.<transition>` (a new one replaces
/// the old) that produce `campaign.due.<partition>`.
pub fn campaigns(config: &BusConfig) -> Config {
    Config {
        allow_message_schedules: true,
        ..derived(
            config,
            CAMPAIGNS,
            "Campaign actions and inactivity timers",
            vec![subjects::CAMPAIGNS_ALL.to_string()],
        )
    }
}

/// What became of each email.
pub const DELIVERY: &str = "DELIVERY";

/// The DELIVERY stream: `delivery.events.<partition>`, an event per outcome of each
/// email (sent, deferred, failed, uncertain), deduplicated on message ids.
pub fn delivery(config: &BusConfig) -> Config {
    derived(
        config,
        DELIVERY,
        "What became of each email the dispatcher was asked to send",
        vec![subjects::DELIVERY_ALL.to_string()],
    )
}

/// A stream of derived data (it can be rebuilt from EVENTS): files, the oldest dropped
/// past `CAIRN_DERIVED_MAX_AGE`, deduplicated on message ids within the duplicate window.
fn derived(config: &BusConfig, name: &str, description: &str, subjects: Vec<String>) -> Config {
    Config {
        name: name.to_string(),
        description: Some(description.to_string()),
        subjects,
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        max_age: config.derived_max_age,
        duplicate_window: config.events_duplicate_window,
        num_replicas: config.replicas,
        ..Default::default()
    }
}

/// The DEAD_LETTERS stream: `deadletter.>`, kept 30 days for people to look at.
pub fn dead_letters(config: &BusConfig) -> Config {
    Config {
        name: DEAD_LETTERS.to_string(),
        description: Some("Messages a service could not process, with the reason".to_string()),
        subjects: vec![subjects::DEAD_LETTER_ALL.to_string()],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        max_age: std::time::Duration::from_secs(30 * 86_400),
        num_replicas: config.replicas,
        ..Default::default()
    }
}
