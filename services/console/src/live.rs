//! The live view: events per second into the EVENTS stream, the lag of every consumer,
//! and the latest segment changes with entered/exited counts per segment over the last
//! hour (as seen since the console started).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_bus::{Bus, streams};
use cairn_proto::segment::v1::SegmentChanged;
use futures::{StreamExt as _, TryStreamExt as _};
use prost::Message as _;
use serde::Serialize;

use crate::error::ConsoleError;

/// Segment changes kept for the live view.
const RECENT: usize = 50;
/// How often the EVENTS stream is sampled for the rate.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// The window of the per-segment counts, in minutes.
const WINDOW_MINUTES: u64 = 60;

#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub profile_id: String,
    pub segment: String,
    pub entered: bool,
    /// RFC 3339.
    pub at: String,
}

/// Entered and exited counts of one segment, per minute.
#[derive(Debug, Default)]
struct Rates {
    /// (minute since the console started, entered, exited), oldest first.
    minutes: VecDeque<(u64, u64, u64)>,
}

impl Rates {
    fn add(&mut self, minute: u64, entered: bool) {
        match self.minutes.back_mut() {
            Some((last, ..)) if *last == minute => {}
            _ => self.minutes.push_back((minute, 0, 0)),
        }
        if let Some((_, entered_count, exited_count)) = self.minutes.back_mut() {
            if entered {
                *entered_count += 1;
            } else {
                *exited_count += 1;
            }
        }
        self.forget_before(minute);
    }

    fn forget_before(&mut self, minute: u64) {
        while self
            .minutes
            .front()
            .is_some_and(|(first, ..)| first + WINDOW_MINUTES <= minute)
        {
            self.minutes.pop_front();
        }
    }

    /// (entered, exited) in the window ending at `minute`.
    fn totals(&self, minute: u64) -> (u64, u64) {
        self.minutes
            .iter()
            .filter(|(at, ..)| at + WINDOW_MINUTES > minute)
            .fold((0, 0), |(entered, exited), (_, e, x)| {
                (entered + e, exited + x)
            })
    }
}

#[derive(Debug, Default)]
struct State {
    recent: VecDeque<Change>,
    rates: BTreeMap<String, Rates>,
    /// The last sample of the EVENTS stream: when, and its last sequence.
    last_sample: Option<(Instant, u64)>,
    events_per_second: Option<f64>,
}

/// One consumer's backlog.
#[derive(Debug, Clone, Serialize)]
pub struct Lag {
    pub stream: String,
    pub consumer: String,
    /// Messages not yet delivered.
    pub pending: u64,
    /// Delivered, not yet acknowledged.
    pub unacknowledged: u64,
}

/// The entered/exited counts of a segment over the last hour.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SegmentRates {
    pub entered_last_hour: u64,
    pub exited_last_hour: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub events_per_second: Option<f64>,
    pub lag: Vec<Lag>,
    pub recent_changes: Vec<Change>,
}

#[derive(Clone)]
pub struct Live {
    bus: Bus,
    state: Arc<Mutex<State>>,
    started: Instant,
}

impl Live {
    pub fn new(bus: Bus) -> Self {
        Self {
            bus,
            state: Arc::default(),
            started: Instant::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn minute(&self) -> u64 {
        self.started.elapsed().as_secs() / 60
    }

    /// Follows `segments.changed` and samples the EVENTS stream until `stop` resolves.
    pub async fn run(self, stop: impl Future<Output = ()>) -> Result<(), ConsoleError> {
        let mut changes = self
            .bus
            .client()
            .subscribe("segments.changed.>")
            .await
            .map_err(|err| {
                ConsoleError::Bus(cairn_bus::BusError::Unavailable(format!(
                    "subscribing to segments.changed: {err}"
                )))
            })?;
        let mut sample = tokio::time::interval(SAMPLE_EVERY);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return Ok(()),
                Some(message) = changes.next() => self.record(&message.payload),
                _ = sample.tick() => self.sample_events().await,
            }
        }
    }

    fn record(&self, payload: &[u8]) {
        let Ok(changed) = SegmentChanged::decode(payload) else {
            tracing::debug!("the live view skips a segment change it cannot read");
            return;
        };
        let at = changed
            .at
            .and_then(|at| chrono::DateTime::from_timestamp(at.seconds, 0))
            .map(|at| at.to_rfc3339())
            .unwrap_or_default();
        let minute = self.minute();
        let mut state = self.lock();
        state
            .rates
            .entry(changed.segment.clone())
            .or_default()
            .add(minute, changed.entered);
        state.recent.push_front(Change {
            profile_id: changed.profile_id,
            segment: changed.segment,
            entered: changed.entered,
            at,
        });
        state.recent.truncate(RECENT);
    }

    async fn sample_events(&self) {
        let info = match self.bus.jetstream().get_stream(streams::EVENTS).await {
            Ok(mut stream) => match stream.info().await {
                Ok(info) => info.state.last_sequence,
                Err(err) => {
                    tracing::debug!(error = %err, "the live view cannot read the EVENTS stream");
                    return;
                }
            },
            Err(err) => {
                tracing::debug!(error = %err, "the live view cannot find the EVENTS stream");
                return;
            }
        };
        let now = Instant::now();
        let mut state = self.lock();
        if let Some((then, last)) = state.last_sample {
            let seconds = now.duration_since(then).as_secs_f64();
            if seconds > 0.0 {
                state.events_per_second = Some(info.saturating_sub(last) as f64 / seconds);
            }
        }
        state.last_sample = Some((now, info));
    }

    /// The entered/exited counts of `segment` over the last hour.
    pub fn rates(&self, segment: &str) -> SegmentRates {
        let minute = self.minute();
        let state = self.lock();
        let (entered, exited) = state
            .rates
            .get(segment)
            .map(|rates| rates.totals(minute))
            .unwrap_or_default();
        SegmentRates {
            entered_last_hour: entered,
            exited_last_hour: exited,
        }
    }

    /// Everything the live view shows, the consumers' lag read now.
    pub async fn snapshot(&self) -> Result<Snapshot, ConsoleError> {
        let lag = self.lag().await?;
        let state = self.lock();
        Ok(Snapshot {
            events_per_second: state.events_per_second,
            lag,
            recent_changes: state.recent.iter().cloned().collect(),
        })
    }

    async fn lag(&self) -> Result<Vec<Lag>, ConsoleError> {
        let unavailable =
            |err: String| ConsoleError::Service(tonic::Status::unavailable(format!("NATS: {err}")));
        let jetstream = self.bus.jetstream();
        let names: Vec<String> = jetstream
            .stream_names()
            .try_collect()
            .await
            .map_err(|err| unavailable(err.to_string()))?;
        let mut lag = Vec::new();
        // Key-value buckets' streams have only their watchers' ephemeral consumers.
        for name in names.into_iter().filter(|name| !name.starts_with("KV_")) {
            let stream = jetstream
                .get_stream(&name)
                .await
                .map_err(|err| unavailable(err.to_string()))?;
            let consumers: Vec<_> = stream
                .consumers()
                .try_collect()
                .await
                .map_err(|err| unavailable(err.to_string()))?;
            lag.extend(consumers.into_iter().map(|info| Lag {
                stream: name.clone(),
                consumer: info.name,
                pending: info.num_pending,
                unacknowledged: info.num_ack_pending as u64,
            }));
        }
        lag.sort_by(|a, b| (&a.stream, &a.consumer).cmp(&(&b.stream, &b.consumer)));
        Ok(lag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_count_the_last_hour_only() {
        let mut rates = Rates::default();
        rates.add(0, true);
        rates.add(0, true);
        rates.add(30, false);
        assert_eq!(rates.totals(30), (2, 1));
        assert_eq!(rates.totals(59), (2, 1));
        assert_eq!(rates.totals(60), (0, 1));
        rates.add(95, true);
        assert_eq!(rates.totals(95), (1, 0));
        assert_eq!(rates.minutes.len(), 1);
    }
}
