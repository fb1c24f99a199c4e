//! When an email may leave in the profile's time zone (its `timezone`, else UTC):
//! outside the quiet hours (a window of local time, `21:00-08:00`), and, for a campaign
//! that asks for it, in the profile's best send hour.

use chrono::{NaiveTime, TimeZone as _, Timelike as _};
use chrono_tz::Tz;

fn zone(timezone: Option<&str>) -> Tz {
    timezone
        .and_then(|name| name.parse().ok())
        .unwrap_or(chrono_tz::UTC)
}

/// When an email due at `now_ms` reaches local hour `hour` (0..23) in `timezone`:
/// `None` when it is that hour now, else the next time the hour starts.
pub fn next_hour(now_ms: i64, timezone: Option<&str>, hour: u32) -> Option<i64> {
    let tz = zone(timezone);
    let now = tz.timestamp_millis_opt(now_ms).single()?;
    if now.hour() == hour {
        return None;
    }
    let mut day = now.date_naive();
    if now.hour() > hour {
        day = day.succ_opt()?;
    }
    local_instant(tz, day.and_time(NaiveTime::from_hms_opt(hour, 0, 0)?))
}

/// The instant of local time `local` in `tz` (ms); a time that does not exist that
/// day (the clock jumps over it) moves on an hour.
fn local_instant(tz: Tz, local: chrono::NaiveDateTime) -> Option<i64> {
    tz.from_local_datetime(&local)
        .earliest()
        .or_else(|| {
            tz.from_local_datetime(&(local + chrono::Duration::hours(1)))
                .earliest()
        })
        .map(|instant| instant.timestamp_millis())
}

/// A daily window of local time; it may wrap past midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

impl QuietHours {
    /// `HH:MM-HH:MM`; `None` for `off` or nothing.
    pub fn parse(text: &str) -> Result<Option<Self>, String> {
        let text = text.trim();
        if text.is_empty() || text.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let (start, end) = text
            .split_once('-')
            .ok_or_else(|| format!("{text:?} must read HH:MM-HH:MM (21:00-08:00) or off"))?;
        let time = |part: &str| {
            NaiveTime::parse_from_str(part.trim(), "%H:%M")
                .map_err(|_| format!("{part:?} is not a time of day HH:MM"))
        };
        let window = Self {
            start: time(start)?,
            end: time(end)?,
        };
        if window.start == window.end {
            return Err(format!("{text:?} is an empty window"));
        }
        Ok(Some(window))
    }

    fn contains(&self, time: NaiveTime) -> bool {
        if self.start < self.end {
            self.start <= time && time < self.end
        } else {
            time >= self.start || time < self.end
        }
    }

    /// When an email due at `now_ms` may leave, for a profile in `timezone` (an IANA
    /// name; unknown or none: UTC): `None` when it may leave now, else the instant the
    /// window ends.
    pub fn release_at(&self, now_ms: i64, timezone: Option<&str>) -> Option<i64> {
        let tz = zone(timezone);
        let now = tz.timestamp_millis_opt(now_ms).single()?;
        let local = now.time().with_nanosecond(0)?;
        if !self.contains(local) {
            return None;
        }
        // The window ends today or, past midnight, tomorrow.
        let mut day = now.date_naive();
        if self.start > self.end && local >= self.start {
            day = day.succ_opt()?;
        }
        local_instant(tz, day.and_time(self.end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(text)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn emails_in_the_window_wait_for_its_end_in_local_time() {
        let night = QuietHours::parse("21:00-08:00").unwrap().unwrap();
        // 23:30 in London (winter, UTC+0): held until 08:00 the next morning.
        assert_eq!(
            night.release_at(at("2026-11-23T23:30:00Z"), Some("Europe/London")),
            Some(at("2026-11-24T08:00:00Z"))
        );
        // 06:00 in New York: held until 08:00 New York time, the same day.
        assert_eq!(
            night.release_at(at("2026-11-23T11:00:00Z"), Some("America/New_York")),
            Some(at("2026-11-23T13:00:00Z"))
        );
        // 14:00 in Tokyo: goes now.
        assert_eq!(
            night.release_at(at("2026-11-23T05:00:00Z"), Some("Asia/Tokyo")),
            None
        );
        // Unknown zone: UTC.
        assert_eq!(
            night.release_at(at("2026-11-23T22:00:00Z"), Some("Mars/Olympus")),
            Some(at("2026-11-24T08:00:00Z"))
        );
        let lunch = QuietHours::parse("12:00-13:30").unwrap().unwrap();
        assert_eq!(
            lunch.release_at(at("2026-11-23T12:10:00Z"), None),
            Some(at("2026-11-23T13:30:00Z"))
        );
        assert_eq!(lunch.release_at(at("2026-11-23T13:30:00Z"), None), None);
    }

    #[test]
    fn the_best_hour_is_waited_for_in_local_time() {
        // 15:10 in Paris (UTC+1): the 19:00 hour starts at 18:00 UTC.
        assert_eq!(
            next_hour(at("2026-11-23T14:10:00Z"), Some("Europe/Paris"), 19),
            Some(at("2026-11-23T18:00:00Z"))
        );
        // Past it: tomorrow.
        assert_eq!(
            next_hour(at("2026-11-23T21:10:00Z"), Some("Europe/Paris"), 19),
            Some(at("2026-11-24T18:00:00Z"))
        );
        // In it: now.
        assert_eq!(
            next_hour(at("2026-11-23T18:59:00Z"), Some("Europe/Paris"), 19),
            None
        );
    }

    #[test]
    fn windows_are_read_strictly() {
        assert_eq!(QuietHours::parse("off").unwrap(), None);
        assert_eq!(QuietHours::parse("").unwrap(), None);
        assert!(QuietHours::parse("21-8").unwrap_err().contains("HH:MM"));
        assert!(QuietHours::parse("25:00-08:00").is_err());
        assert!(
            QuietHours::parse("08:00-08:00")
                .unwrap_err()
                .contains("empty")
        );
    }
}
