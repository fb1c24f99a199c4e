//! Events per second per write key: a token bucket per source, in this replica.
//!
//! A request is admitted when its source's bucket holds credit for all its events, and
//! a batch larger than the whole bucket when the bucket is full: it is charged in full,
//! and the debt is paid off before the next request passes. A refused request is refused
//! whole (429 with the wait in `Retry-After`), so clients retry it and nothing is half
//! stored.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_runtime::config::{ConfigError, Settings, Var};

pub const INGEST_RATE_LIMIT: Var = Var {
    name: "CAIRN_INGEST_RATE_LIMIT",
    default: "10000",
    doc: "Events per second each write key may send to one collector replica, with a burst of one second's worth; over it the request gets 429 and Retry-After. 0 turns the limit off.",
};

#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Negative while a large request's debt is being paid off.
    tokens: f64,
    refilled: Instant,
}

impl RateLimiter {
    /// `None` when the limit is off.
    pub fn from_settings(settings: &Settings) -> Result<Option<Self>, ConfigError> {
        let per_second = settings.number(&INGEST_RATE_LIMIT, 0)?;
        Ok((per_second > 0).then(|| Self::new(per_second)))
    }

    pub fn new(per_second: u64) -> Self {
        Self {
            per_second: per_second as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Charges `events` to `source` at `now`, or says how long to wait first.
    pub fn admit(&self, source: &str, events: usize, now: Instant) -> Result<(), Duration> {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let bucket = buckets.entry(source.to_string()).or_insert(Bucket {
            tokens: self.per_second,
            refilled: now,
        });
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.per_second);
        bucket.refilled = now;
        let events = events as f64;
        let needed = events.min(self.per_second);
        if bucket.tokens < needed {
            return Err(Duration::from_secs_f64(
                (needed - bucket.tokens) / self.per_second,
            ));
        }
        bucket.tokens -= events;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_one_second_then_the_rate() {
        let limiter = RateLimiter::new(100);
        let start = Instant::now();
        for _ in 0..10 {
            assert!(limiter.admit("web", 10, start).is_ok());
        }
        let wait = limiter.admit("web", 1, start).unwrap_err();
        assert!(wait <= Duration::from_millis(10), "{wait:?}");
        // A tenth of a second later: ten more events' worth.
        let later = start + Duration::from_millis(100);
        assert!(limiter.admit("web", 10, later).is_ok());
        assert!(limiter.admit("web", 1, later).is_err());
    }

    #[test]
    fn each_source_has_its_own_bucket() {
        let limiter = RateLimiter::new(5);
        let now = Instant::now();
        assert!(limiter.admit("web", 5, now).is_ok());
        assert!(limiter.admit("web", 1, now).is_err());
        assert!(limiter.admit("ios", 5, now).is_ok());
    }

    #[test]
    fn a_batch_larger_than_the_bucket_passes_once_then_waits_out_its_debt() {
        let limiter = RateLimiter::new(100);
        let now = Instant::now();
        assert!(limiter.admit("web", 500, now).is_ok());
        let wait = limiter.admit("web", 1, now).unwrap_err();
        assert_eq!(
            wait,
            Duration::from_millis(4010),
            "400 events of debt at 100/s, and 1"
        );
        assert!(
            limiter
                .admit("web", 1, now + Duration::from_millis(4000))
                .is_err()
        );
        assert!(
            limiter
                .admit("web", 1, now + Duration::from_millis(4020))
                .is_ok()
        );
    }

    #[test]
    fn credit_never_exceeds_one_second() {
        let limiter = RateLimiter::new(10);
        let now = Instant::now();
        assert!(limiter.admit("web", 1, now).is_ok());
        let much_later = now + Duration::from_secs(3600);
        assert!(limiter.admit("web", 10, much_later).is_ok());
        assert!(limiter.admit("web", 1, much_later).is_err());
    }
}
