//! `cairn loadgen`: synthetic shop traffic ([`traffic`]) sent to a running collector at
//! a target rate, steady or with a burst, through its HTTP API as websites send it;
//! progress each second on standard error, and a summary: events sent, accepted,
//! refused, and the throughput.

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
    let (accepted, refused) = (
        accepted.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    println!(
        "  {sent} events sent in {elapsed:.1} s: {accepted} accepted, {refused} refused, {:.0} events/s accepted",
        accepted as f64 / elapsed
    );
    println!(
        "{}",
        json!({"sent": sent, "accepted": accepted, "refused": refused,
               "seconds": (elapsed * 10.0).round() / 10.0,
               "accepted_per_s": (accepted as f64 / elapsed).round()})
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
