//! `cairn bench personalize`: the latency of `GET /v1/personalize` through the collector
//! at a steady request rate, over a bucket of realistic answers that keeps changing
//! meanwhile (as the segmenter changes it), one visitor in ten never seen.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_bus::personalization::{identifier_key, profile_key};
use cairn_bus::{Bus, BusConfig};
use cairn_proto::personalize::v1::{Answer, Membership, WebContent};
use cairn_runtime::Settings;
use cairn_runtime::clock::{now_ms, timestamp};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use prost::Message as _;
use serde_json::json;

use super::PersonalizeArgs;
use crate::modules;

const WRITE_KEY: &str = "wk_bench";

fn profile_id(n: usize) -> String {
    format!("p{n:012}")
}

/// A profile's answer: a few segments and a campaign's web content, as of `version`.
fn answer(n: usize, version: u64) -> Answer {
    let member = |member| Membership {
        member,
        profile_version: version,
        at: Some(timestamp(now_ms())),
    };
    Answer {
        profile_id: profile_id(n),
        identifiers: Vec::new(),
        segments: [
            ("returning".to_string(), member(true)),
            (format!("topic_{}", n % 20), member(true)),
            ("vip".to_string(), member(n.is_multiple_of(10))),
        ]
        .into_iter()
        .collect(),
        web: [(
            "section_offer".to_string(),
            WebContent {
                state: "offered".to_string(),
                content: format!("1+1 on section {}", n % 50),
                params_json: json!({"section": format!("section {}", n % 50)}).to_string(),
                entry: version as u32,
                at: Some(timestamp(now_ms())),
                idempotency_key: format!("bench-{n}-{version}"),
            },
        )]
        .into_iter()
        .collect(),
    }
}

fn answer_key(n: usize) -> anyhow::Result<String> {
    profile_key(&profile_id(n)).ok_or_else(|| anyhow::anyhow!("bad profile id"))
}

fn visitor_key(n: usize) -> anyhow::Result<String> {
    identifier_key("anonymous_id", &format!("visitor-{n}"))
        .ok_or_else(|| anyhow::anyhow!("anonymous ids are looked up"))
}

pub async fn run(args: PersonalizeArgs) -> anyhow::Result<()> {
    let settings = Settings::from_env(&modules::all_vars())?;
    let dir = tempfile::tempdir()?;
    let (url, _server) = super::nats(&settings, &dir.path().join("nats")).await?;
    let context = super::context(&url, &[("CAIRN_WRITE_KEYS", "bench:wk_bench")])?;
    let module = cairn_collector::start(&context).await?;
    let served = super::serve(module, &context).await?;
    let http = served
        .http
        .ok_or_else(|| anyhow::anyhow!("the collector serves no HTTP"))?;
    let bus = Bus::connect(&BusConfig::for_url(&url), "cairn-bench").await?;
    let bucket = cairn_bus::personalization::open(&bus).await?;
    println!(
        "cairn bench personalize: {} profiles with answers, {} requests/s for {} s, {} answers changed/s meanwhile",
        args.profiles, args.rate, args.seconds, args.writes
    );

    let started = Instant::now();
    let mut pending = FuturesUnordered::new();
    for n in 0..args.profiles {
        let bucket = bucket.clone();
        let (id_key, key) = (visitor_key(n)?, answer_key(n)?);
        pending.push(async move {
            bucket
                .put(id_key, Bytes::from(profile_id(n)))
                .await
                .map_err(anyhow::Error::from)?;
            bucket
                .put(key, Bytes::from(answer(n, 1).encode_to_vec()))
                .await
                .map_err(anyhow::Error::from)
        });
        if pending.len() >= 512
            && let Some(result) = pending.next().await
        {
            result?;
        }
    }
    while let Some(result) = pending.next().await {
        result?;
    }
    println!(
        "  {} answers written in {:.1} s",
        args.profiles,
        started.elapsed().as_secs_f64()
    );

    // The answers keep changing, as the segmenter changes them.
    let writer = {
        let (bucket, profiles, writes) = (bucket.clone(), args.profiles, args.writes);
        tokio::spawn(async move {
            let per_tick = (writes / 100).max(1);
            let mut ticker = tokio::time::interval(Duration::from_millis(10));
            let mut n = 0usize;
            loop {
                ticker.tick().await;
                for _ in 0..per_tick {
                    n += 1;
                    let target = n.wrapping_mul(7919) % profiles;
                    if let Ok(key) = answer_key(target) {
                        let value = answer(target, 2 + n as u64).encode_to_vec();
                        let _ = bucket.put(key, Bytes::from(value)).await;
                    }
                }
            }
        })
    };

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()?;
    let base = format!("http://{http}/v1/personalize?writeKey={WRITE_KEY}&anonymousId=visitor-");
    let total = args.rate * args.seconds;
    let per_tick = (args.rate / 100).max(1);
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(total)));
    let failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    let mut requests = Vec::with_capacity(total);
    for n in 0..total {
        if n.is_multiple_of(per_tick) {
            ticker.tick().await;
        }
        // One visitor in ten was never seen (beyond the profiles with answers).
        let visitor = if n % 10 == 9 {
            args.profiles + n
        } else {
            n.wrapping_mul(104_729) % args.profiles
        };
        let known = visitor < args.profiles;
        let (client, url) = (client.clone(), format!("{base}{visitor}"));
        let (latencies, failures) = (latencies.clone(), failures.clone());
        requests.push(tokio::spawn(async move {
            let sent = Instant::now();
            let answered = async {
                let response = client.get(&url).send().await.ok()?;
                if !response.status().is_success() {
                    return None;
                }
                let body: serde_json::Value = response.json().await.ok()?;
                Some(body["profile_id"].is_string() == known)
            }
            .await;
            let took = sent.elapsed();
            if answered == Some(true) {
                if let Ok(mut latencies) = latencies.lock() {
                    latencies.push(took);
                }
            } else {
                failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    for request in requests {
        request.await?;
    }
    writer.abort();
    context.shutdown.trigger();
    served.host.await??;

    let mut latencies = latencies
        .lock()
        .map(|seen| seen.clone())
        .unwrap_or_default();
    latencies.sort();
    let failures = failures.load(std::sync::atomic::Ordering::Relaxed);
    let (p50, p99, max) = (
        super::percentile_ms(&latencies, 0.50),
        super::percentile_ms(&latencies, 0.99),
        super::percentile_ms(&latencies, 1.0),
    );
    println!(
        "  GET /v1/personalize at {} requests/s ({} answered, {failures} failed or wrong): p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms",
        args.rate,
        latencies.len()
    );
    println!(
        "{}",
        json!({"personalize_p50_ms": (p50 * 100.0).round() / 100.0, "personalize_p99_ms": (p99 * 100.0).round() / 100.0, "rate": args.rate, "answered": latencies.len(), "failed": failures})
    );
    if failures > 0 {
        anyhow::bail!("{failures} requests failed or were answered wrong");
    }
    Ok(())
}
