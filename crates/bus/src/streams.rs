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
