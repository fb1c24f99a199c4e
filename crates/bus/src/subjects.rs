//! Subject names and partitions.
//!
//! Where order matters, subjects end in a partition token: `events.raw.<partition>`.
//! The partition is a stable hash of a key (the profile id, or before identity the
//! first identifier) modulo the configured partition count, so one person's messages go
//! to one partition and each consumer of that partition handles them in order. The hash is
//! FNV-1a 64, fixed here forever: changing it would reshuffle every person.

/// The number of partitions, and the hash that picks one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partitions {
    count: u32,
}

impl Partitions {
    /// `count` is at least 1.
    pub fn new(count: u32) -> Self {
        Self {
            count: count.max(1),
        }
    }

    pub fn count(self) -> u32 {
        self.count
    }

    /// The partition of `key`, in `0..count`.
    pub fn of(self, key: &str) -> u32 {
        (fnv1a64(key.as_bytes()) % u64::from(self.count)) as u32
    }
}

/// FNV-1a, 64 bits.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}

/// Raw events as the collector stored them: `events.raw.<partition>`.
pub const EVENTS_RAW_PREFIX: &str = "events.raw";

/// The subject of a raw event in `partition`.
pub fn events_raw(partition: u32) -> String {
    format!("{EVENTS_RAW_PREFIX}.{partition}")
}

/// The wildcard covering every raw event.
pub fn events_raw_all() -> String {
    format!("{EVENTS_RAW_PREFIX}.>")
}

/// Events with the profile they belong to: `events.identified.<partition>`.
pub const EVENTS_IDENTIFIED_PREFIX: &str = "events.identified";

/// The subject of an identified event in `partition` (of its profile id).
pub fn events_identified(partition: u32) -> String {
    format!("{EVENTS_IDENTIFIED_PREFIX}.{partition}")
}

/// The wildcard covering every identified event.
pub fn events_identified_all() -> String {
    format!("{EVENTS_IDENTIFIED_PREFIX}.>")
}

/// Two profiles became one: `profiles.merged.<partition of the survivor>`.
pub fn profiles_merged(partition: u32) -> String {
    format!("profiles.merged.{partition}")
}

/// The wildcard covering every merge.
pub fn profiles_merged_all() -> String {
    "profiles.merged.>".to_string()
}

/// Identifiers were split out of a profile: `profiles.split.<partition of that profile>`.
pub fn profiles_split(partition: u32) -> String {
    format!("profiles.split.{partition}")
}

/// The wildcard covering every split.
pub fn profiles_split_all() -> String {
    "profiles.split.>".to_string()
}

/// A profile changed: `profiles.changed.<partition>`.
pub fn profiles_changed(partition: u32) -> String {
    format!("profiles.changed.{partition}")
}

/// The wildcard covering every profile change.
pub fn profiles_changed_all() -> String {
    "profiles.changed.>".to_string()
}

/// A person was forgotten.
pub const PROFILES_DELETED: &str = "profiles.deleted";

/// Every subject about profiles.
pub const PROFILES_ALL: &str = "profiles.>";

/// What an enricher learned about a profile: `profile.facts.<partition>`.
pub fn profile_facts(partition: u32) -> String {
    format!("profile.facts.{partition}")
}

/// The wildcard covering every fact.
pub const PROFILE_FACTS_ALL: &str = "profile.facts.>";

/// A profile entered or left a segment: `segments.changed.<partition>`, or
/// `segments.changed.<partition>.synced` when the segment is synced to a webhook, so that
/// activation reads only the changes it sends (see [`SEGMENTS_SYNCED_ALL`]).
pub fn segments_changed(partition: u32, synced: bool) -> String {
    if synced {
        format!("segments.changed.{partition}.synced")
    } else {
        format!("segments.changed.{partition}")
    }
}

/// Every segment change of `partition`, of synced segments or not.
pub fn segments_changed_in(partition: u32) -> Vec<String> {
    vec![
        segments_changed(partition, false),
        segments_changed(partition, true),
    ]
}

/// The changes of segments synced to a webhook, in every partition.
pub const SEGMENTS_SYNCED_ALL: &str = "segments.changed.*.synced";

/// A profile in at least one segment gained identifiers (a `ProfileChanged` with only
/// its id and version): `segments.identified.<partition>`, for the personalization
/// answers to lead its new ids to it.
pub fn segments_identified(partition: u32) -> String {
    format!("segments.identified.{partition}")
}

/// A profile's segment timer (a message schedule; one per profile):
/// `segments.timer.<partition>.<profile>`.
pub fn segments_timer(partition: u32, profile_id: &str) -> String {
    format!("segments.timer.{partition}.{profile_id}")
}

/// What a segment timer produces when due: `segments.due.<partition>`.
pub fn segments_due(partition: u32) -> String {
    format!("segments.due.{partition}")
}

/// Whether `text` can be one token of a subject (letters, digits, `-` and `_`).
pub fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// An email a campaign asks the dispatcher to send: `campaign.sends.<partition>`.
pub fn campaign_sends(partition: u32) -> String {
    format!("campaign.sends.{partition}")
}

/// Web content a campaign has for a profile: `campaign.web.<partition>`.
pub fn campaign_web(partition: u32) -> String {
    format!("campaign.web.{partition}")
}

/// A webhook call a campaign asks for: `campaign.webhooks.<partition>`.
pub fn campaign_webhooks(partition: u32) -> String {
    format!("campaign.webhooks.{partition}")
}

/// An inactivity timer of a campaign journey (a message schedule, one per campaign,
/// profile and transition): `campaign.timer.<partition>.<campaign>.<profile>.<transition>`.
pub fn campaign_timer(
    partition: u32,
    campaign: &str,
    profile_id: &str,
    transition: usize,
) -> String {
    format!("campaign.timer.{partition}.{campaign}.{profile_id}.{transition}")
}

/// What a campaign timer produces when due: `campaign.due.<partition>`.
pub fn campaign_due(partition: u32) -> String {
    format!("campaign.due.{partition}")
}

/// Every subject about campaigns.
pub const CAMPAIGNS_ALL: &str = "campaign.>";

/// What became of an email: `delivery.events.<partition>`.
pub fn delivery_events(partition: u32) -> String {
    format!("delivery.events.{partition}")
}

/// The wildcard covering every delivery event.
pub const DELIVERY_ALL: &str = "delivery.>";

/// Every subject about segments.
pub const SEGMENTS_ALL: &str = "segments.>";

/// Where a service puts what it cannot process, with the reason in a header:
/// `deadletter.<service>`.
pub fn dead_letter(service: &str) -> String {
    format!("deadletter.{service}")
}

/// The wildcard covering every dead letter.
pub const DEAD_LETTER_ALL: &str = "deadletter.>";

/// Reads the partition token, the last subject token, back out of a subject.
pub fn partition_of_subject(subject: &str) -> Option<u32> {
    subject.rsplit('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_fixed() {
        // Published FNV-1a 64 test vectors: a changed hash would move every person.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn partitions_spread_and_stay_in_range() {
        let partitions = Partitions::new(16);
        let mut seen = [0u32; 16];
        for visitor in 0..16_000 {
            let partition = partitions.of(&format!("anon-{visitor}"));
            seen[partition as usize] += 1;
        }
        assert!(
            seen.iter().all(|count| (700..1300).contains(count)),
            "{seen:?}"
        );
        assert_eq!(partitions.of("u1"), partitions.of("u1"));
        assert_eq!(Partitions::new(0).count(), 1);
    }

    #[test]
    fn subjects_carry_the_partition() {
        assert_eq!(events_raw(7), "events.raw.7");
        assert_eq!(partition_of_subject("events.raw.7"), Some(7));
        assert_eq!(events_raw_all(), "events.raw.>");
    }
}
