//! `cairn loadgen`: synthetic shop traffic ([`traffic`]) sent to a running collector at
//! a target rate, steady or with a burst, through its HTTP API as websites send it;
//! progress each second on standard error, and a summary: events sent, accepted,
//! refused, the throughput, and the latency from the collector's receipt of an event to
//! each stage's message about it (identified, profile changed, segment changed, action),
//! read off the receipt time every stage carries in its messages' headers
//! ([`cairn_bus::trace::RECEIVED_AT`]) by listening on NATS (`CAIRN_NATS_URL`). The
//! figures cover every event received during the run, this run's and any other traffic.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cairn_runtime::Settings;
use cairn_runtime::host::HTTP_ADDR;
use futures::stream::{FuturesUnordered, StreamExt as _};
use serde_json::{Value, json};

use crate::modules;
use crate::traffic;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// The rate throughout.
    Steady,
    /// Ten times the rate in the middle third of the run.
    Burst,
}

#[derive(clap::Args)]
pub struct LoadgenArgs {
    /// Events per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// How long to send: 30s, 5m, ...
    #[arg(long, default_value = "30s", value_parser = cairn_runtime::config::parse_duration)]
    duration: Duration,
    /// Distinct shoppers.
    #[arg(long, default_value_t = 10_000)]
    shoppers: usize,
    /// Events per request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    #[arg(long, value_enum, default_value = "steady")]
    shape: Shape,
}

/// How often the sender tops up what it owes.
const TICK: Duration = Duration::from_millis(10);
/// Requests waiting for an answer at once.
const IN_FLIGHT: usize = 64;

/// The stages whose messages say how far an event got, and the subjects they are on.
const STAGES: [(&str, &str); 4] = [
    ("identified", "events.identified.>"),
    // Only the changes an event made (not those of its enrichers' facts after it).
    ("profile", "profiles.changed.>"),
    ("segment", "segments.changed.>"),
    ("action", "campaign.*.>"),
];

/// How long after the last event the stages may take to catch up (a burst's backlog).
const DRAIN: Duration = Duration::from_secs(300);

/// Latencies (microseconds) per stage, from the messages seen on NATS.
struct Latencies {
    /// The run: events received from `since_micros` to `until_micros`.
    since_micros: i64,
    until_micros: i64,
    by_stage: [Vec<u64>; STAGES.len()],
    /// When the last stage message of the run arrived.
    last_seen: Option<Instant>,
    /// From the last accepted event to the last stage message: how long the stages took
    /// to catch up.
    caught_up: Option<Duration>,
}

impl Latencies {
    /// Records `message` when it is about an event received during the run.
    fn record(&mut self, stage: usize, message: &async_nats::Message) {
        let Some(received) = message
            .headers
            .as_ref()
            .and_then(cairn_bus::trace::received_at)
        else {
            return;
        };
        if received < self.since_micros || received > self.until_micros {
            return;
        }
        if STAGES[stage].0 == "profile" {
            use prost::Message as _;
            let caused_by_event =
                cairn_proto::profile::v1::ProfileChanged::decode(message.payload.clone())
                    .is_ok_and(|changed| changed.event.is_some());
            if !caused_by_event {
                return;
            }
        }
        let latency = now_micros().saturating_sub(received).max(0) as u64;
        self.by_stage[stage].push(latency);
        self.last_seen = Some(Instant::now());
    }

    fn total(&self) -> usize {
        self.by_stage.iter().map(Vec::len).sum()
    }

    /// Per stage: messages, p50, p90, p99 and the worst, in milliseconds.
    fn summary(&mut self) -> Value {
        let mut summary = serde_json::Map::new();
        for ((name, _), latencies) in STAGES.iter().zip(&mut self.by_stage) {
            latencies.sort_unstable();
            let at = |quantile: f64| {
                if latencies.is_empty() {
                    return Value::Null;
                }
                let index = ((latencies.len() as f64 * quantile).ceil() as usize)
                    .clamp(1, latencies.len())
                    - 1;
                json!((latencies[index] as f64 / 100.0).round() / 10.0)
            };
            summary.insert(
                name.to_string(),
                json!({"messages": latencies.len(), "p50_ms": at(0.5), "p90_ms": at(0.9),
                       "p99_ms": at(0.99), "max_ms": at(1.0)}),
            );
        }
        Value::Object(summary)
    }
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as i64
}

/// Listens to every stage until `stop` says how many events were accepted, then until
/// each of them was identified and the stages have been quiet for two seconds (at most
/// [`DRAIN`] more); `None` when NATS cannot be reached.
async fn listen(
    settings: &Settings,
    since_micros: i64,
    stop: tokio::sync::oneshot::Receiver<u64>,
) -> Option<tokio::task::JoinHandle<Latencies>> {
    let config = cairn_bus::config::BusConfig::from_settings(settings).ok()?;
    let connect = cairn_bus::Bus::connect(&config, "cairn-loadgen");
    let bus = match tokio::time::timeout(Duration::from_secs(3), connect).await {
        Ok(Ok(bus)) => bus,
        _ => {
            eprintln!(
                "  no latency figures: NATS does not answer at {} (CAIRN_NATS_URL)",
                cairn_bus::config::redact_url(&settings.string(&cairn_bus::config::NATS_URL))
            );
            return None;
        }
    };
    let mut subscribers = futures::stream::SelectAll::new();
    for (stage, (_, subject)) in STAGES.iter().enumerate() {
        let subscriber = bus.client().subscribe(subject.to_string()).await.ok()?;
        subscribers.push(subscriber.map(move |message| (stage, message)).boxed());
    }
    Some(tokio::spawn(async move {
        let _bus = bus;
        let mut latencies = Latencies {
            since_micros,
            until_micros: i64::MAX,
            by_stage: Default::default(),
            last_seen: None,
            caught_up: None,
        };
        let mut stop = stop;
        let accepted = loop {
            tokio::select! {
                Some((stage, message)) = subscribers.next() => latencies.record(stage, &message),
                accepted = &mut stop => break accepted.unwrap_or_default(),
            }
        };
        // From now on only what the run's events cause counts (other traffic goes on).
        latencies.until_micros = now_micros();
        let stopped = Instant::now();
        let deadline = tokio::time::Instant::now() + DRAIN;
        let quiet = Duration::from_secs(2);
        while tokio::time::Instant::now() < deadline {
            let identified = latencies.by_stage[0].len() as u64;
            let last = latencies.last_seen.unwrap_or(stopped);
            if identified >= accepted && last.elapsed() >= quiet {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(200), subscribers.next()).await {
                Ok(Some((stage, message))) => latencies.record(stage, &message),
                Ok(None) => break,
                Err(_) => {}
            }
        }
        latencies.caught_up = latencies
            .last_seen
            .map(|last| last.saturating_duration_since(stopped));
        latencies
    }))
}

/// Events due by `elapsed` into a run of `total` at `rate` per second, in `shape`.
fn due(rate: u64, shape: Shape, elapsed: Duration, total: Duration) -> u64 {
    let at = |time: Duration| rate as f64 * time.as_secs_f64();
    let owed = match shape {
        Shape::Steady => at(elapsed),
        Shape::Burst => {
            let (start, end) = (total / 3, total * 2 / 3);
            let extra = elapsed.clamp(start, end) - start;
            at(elapsed) + 9.0 * at(extra)
        }
    };
    owed.round() as u64
}

pub async fn run(args: LoadgenArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.rate > 0, "--rate: at least 1 event per second");
    anyhow::ensure!(
        (1..=500).contains(&args.batch),
        "--batch: 1 to 500 events per request"
    );
    let settings = Settings::from_env(&modules::all_vars())?;
    let key = crate::send::write_key(&settings)?;
    let url = format!("http://{}/v1/batch", settings.string(&HTTP_ADDR));
    let client = reqwest::Client::new();
    let (accepted, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    eprintln!(
        "cairn loadgen: {} events/s ({:?}) for {:?} from {} shoppers to {url}",
        args.rate, args.shape, args.duration, args.shoppers
    );
    let (stop_listening, stopped) = tokio::sync::oneshot::channel();
    let listener = listen(&settings, now_micros(), stopped).await;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut pending = FuturesUnordered::new();
    let mut next_report = Duration::from_secs(1);
    let mut rng = rand::rng();
    loop {
        let elapsed = started.elapsed().min(args.duration);
        let owed = due(args.rate, args.shape, elapsed, args.duration).saturating_sub(sent);
        let mut left = owed;
        while left > 0 {
            let size = left.min(args.batch as u64);
            let batch: Vec<Value> = (0..size)
                .map(|_| traffic::next_event(&mut rng, args.shoppers))
                .collect();
            while pending.len() >= IN_FLIGHT {
                pending.next().await;
            }
            let request = client
                .post(&url)
                .basic_auth(&key, Some(""))
                .json(&json!({ "batch": batch }));
            let (accepted, refused) = (accepted.clone(), refused.clone());
            pending.push(async move {
                match request.send().await {
                    Ok(response) if response.status().is_success() => {
                        accepted.fetch_add(size, Ordering::Relaxed)
                    }
                    _ => refused.fetch_add(size, Ordering::Relaxed),
                };
            });
            sent += size;
            left -= size;
        }
        if elapsed >= next_report {
            eprintln!(
                "  {:>4} s: {sent} sent, {} accepted, {} refused",
                elapsed.as_secs(),
                accepted.load(Ordering::Relaxed),
                refused.load(Ordering::Relaxed)
            );
            next_report += Duration::from_secs(1);
        }
        if elapsed >= args.duration {
            break;
        }
        tokio::select! {
            _ = pending.next(), if !pending.is_empty() => {}
            () = tokio::time::sleep(TICK) => {}
        }
    }
    while pending.next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64().max(1e-6);
    let _ = stop_listening.send(accepted.load(Ordering::Relaxed));
    let (accepted, refused) = (
        accepted.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    println!(
        "  {sent} events sent in {elapsed:.1} s: {accepted} accepted, {refused} refused, {:.0} events/s accepted",
        accepted as f64 / elapsed
    );
    let latency = match listener {
        Some(listener) => {
            eprintln!("  waiting for the stages to catch up ...");
            let mut latencies = listener.await?;
            let mut summary = latencies.summary();
            println!("  latency from the collector's receipt (ms):");
            println!(
                "    {:<11} {:>9} {:>8} {:>8} {:>8} {:>8}",
                "stage", "messages", "p50", "p90", "p99", "max"
            );
            for (name, _) in STAGES {
                let stage = &summary[name];
                let ms = |key: &str| {
                    stage[key]
                        .as_f64()
                        .map_or("-".to_string(), |v| format!("{v:.1}"))
                };
                println!(
                    "    {name:<11} {:>9} {:>8} {:>8} {:>8} {:>8}",
                    stage["messages"].as_u64().unwrap_or_default(),
                    ms("p50_ms"),
                    ms("p90_ms"),
                    ms("p99_ms"),
                    ms("max_ms")
                );
            }
            if latencies.total() == 0 {
                eprintln!("  no stage message carried a receipt time from this run");
            }
            if let Some(caught_up) = latencies.caught_up {
                println!(
                    "  the stages caught up {:.1} s after the last event was accepted",
                    caught_up.as_secs_f64()
                );
                summary["caught_up_s"] = json!((caught_up.as_secs_f64() * 10.0).round() / 10.0);
            }
            summary
        }
        None => Value::Null,
    };
    println!(
        "{}",
        json!({"sent": sent, "accepted": accepted, "refused": refused,
               "seconds": (elapsed * 10.0).round() / 10.0,
               "accepted_per_s": (accepted as f64 / elapsed).round(),
               "latency": latency})
    );
    anyhow::ensure!(refused == 0, "{refused} events were refused");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_owes_ten_times_the_rate_in_the_middle_third() {
        let total = Duration::from_secs(30);
        let at = |s: u64| Duration::from_secs(s);
        assert_eq!(due(100, Shape::Steady, at(10), total), 1_000);
        assert_eq!(due(100, Shape::Steady, total, total), 3_000);
        assert_eq!(due(100, Shape::Burst, at(10), total), 1_000);
        assert_eq!(due(100, Shape::Burst, at(15), total), 1_000 + 5_000);
        assert_eq!(due(100, Shape::Burst, total, total), 1_000 + 10_000 + 1_000);
    }
}
