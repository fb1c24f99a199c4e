//! Wall-clock time as Cairn stores it: milliseconds since the Unix epoch.

use prost_types::Timestamp;

/// Now, in milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

/// A protobuf timestamp in milliseconds; saturates instead of overflowing on absurd
/// values from the wire.
pub fn timestamp_ms(at: &Timestamp) -> i64 {
    at.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(at.nanos) / 1_000_000)
}

/// Milliseconds as a protobuf timestamp.
pub fn timestamp(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// Milliseconds as RFC 3339 text in UTC, to the millisecond (`2026-11-22T19:52:02.000Z`);
/// empty for an instant out of range.
pub fn text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_read_as_rfc_3339_in_utc() {
        assert_eq!(text(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
        assert_eq!(text(i64::MAX), "");
    }

    #[test]
    fn milliseconds_round_trip_through_timestamps() {
        for ms in [0, 1, 999, 1_000, -1, -1_001, 1_795_000_000_123] {
            assert_eq!(timestamp_ms(&timestamp(ms)), ms);
        }
    }

    #[test]
    fn absurd_timestamps_saturate() {
        let far = Timestamp {
            seconds: i64::MAX,
            nanos: 999_999_999,
        };
        assert_eq!(timestamp_ms(&far), i64::MAX);
        let before = Timestamp {
            seconds: i64::MIN,
            nanos: 0,
        };
        assert_eq!(timestamp_ms(&before), i64::MIN);
    }
}
