//! `cairn bench ingest`: events/s through the collector's HTTP API to JetStream acks,
//! and raw async JetStream publishes of the same payloads in the same run.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use bytes::Bytes;
use cairn_bus::{Bus, BusConfig, Outgoing, streams, subjects};
use cairn_proto::event::v1::{Envelope, EventType};
use cairn_runtime::Settings;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use prost::Message as _;

use super::IngestArgs;
use crate::modules;

const WRITE_KEY: &str = "wk_bench";

pub async fn run(args: IngestArgs) -> anyhow::Result<()> {
    let batch = args.batch.max(1);
    let batches = args.events.div_ceil(batch);
    let events = batches * batch;

    let settings = Settings::from_env(&modules::all_vars())?;
    let store = tempfile::tempdir()?;
    let (url, _server) = super::nats(&settings, store.path()).await?;
    println!(
        "cairn bench ingest: {events} events of ~0.5 KB in batches of {batch}, {} concurrent requests, NATS at {}",
        args.concurrency,
        cairn_bus::config::redact_url(&url)
    );

    // The same events for both paths; message ids differ so neither path deduplicates
    // against the other.
    let bodies = Arc::new(http_bodies(batches, batch));
    let payloads = raw_payloads(events);
    let body_bytes: usize = bodies.iter().map(Bytes::len).sum();
    println!("  payload: {:.1} MB of JSON", body_bytes as f64 / 1e6);

    let context = super::context(
        &url,
        &[
            ("CAIRN_WRITE_KEYS", "bench:wk_bench"),
            // The benchmark measures the collector, not its limit.
            ("CAIRN_INGEST_RATE_LIMIT", "0"),
        ],
    )?;
    let collector = cairn_collector::start(&context).await?;
    let served = super::serve(collector, &context).await?;
    let http_addr = served.http.context("no HTTP listener")?;

    let collector_eps = http_phase(
        &format!("http://{http_addr}/v1/batch"),
        bodies,
        args.concurrency,
        events,
    )
    .await?;
    println!("  collector (HTTP -> JetStream ack): {collector_eps:>10.0} events/s");

    let bus = Bus::connect(&BusConfig::for_url(&url), "cairn-bench").await?;
    bus.ensure_stream(streams::events(bus.config())).await?;
    let raw_eps = raw_phase(&bus, payloads).await?;
    println!("  raw JetStream async publish:       {raw_eps:>10.0} events/s");
    let ratio = collector_eps / raw_eps;
    println!("  ratio collector / raw:             {ratio:>10.2}");

    context.shutdown.trigger();
    served.host.await??;
    println!(
        "{}",
        serde_json::json!({"collector_eps": collector_eps.round(), "raw_eps": raw_eps.round(), "ratio": (ratio * 100.0).round() / 100.0})
    );
    Ok(())
}

fn http_bodies(batches: usize, batch: usize) -> Vec<Bytes> {
    (0..batches)
        .map(|b| {
            let events: Vec<serde_json::Value> = (0..batch)
                .map(|i| {
                    let n = (b * batch + i) as u64;
                    let mut event = realistic_event(n);
                    event["messageId"] = serde_json::json!(format!("bench-http-{n}"));
                    event
                })
                .collect();
            Bytes::from(
                serde_json::to_vec(&serde_json::json!({"batch": events})).unwrap_or_default(),
            )
        })
        .collect()
}

/// The envelopes the collector would have published, ready to publish directly.
fn raw_payloads(events: usize) -> Vec<Outgoing> {
    let partitions = cairn_bus::Partitions::new(16);
    (0..events as u64)
        .map(|n| {
            let event = realistic_event(n);
            let anonymous_id = event["anonymousId"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let envelope = Envelope {
                raw: Bytes::from(serde_json::to_vec(&event).unwrap_or_default()),
                received_at: Some(std::time::SystemTime::now().into()),
                source: "bench".into(),
                message_id: format!("bench-raw-{n}"),
                r#type: EventType::Track.into(),
                partition_key: anonymous_id.clone(),
                ..Default::default()
            };
            Outgoing {
                subject: subjects::events_raw(partitions.of(&anonymous_id)),
                message_id: Some(format!("bench:bench-raw-{n}")),
                headers: async_nats::HeaderMap::new(),
                payload: Bytes::from(envelope.encode_to_vec()),
            }
        })
        .collect()
}

async fn http_phase(
    url: &str,
    bodies: Arc<Vec<Bytes>>,
    concurrency: usize,
    events: usize,
) -> anyhow::Result<f64> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .build()?;
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{WRITE_KEY}:"))
    );
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (client, url, auth, next, bodies) = (
            client.clone(),
            url.to_string(),
            auth.clone(),
            next.clone(),
            bodies.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(index) else {
                    return Ok::<(), anyhow::Error>(());
                };
                let response = client
                    .post(&url)
                    .header(reqwest::header::AUTHORIZATION, &auth)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
                    .send()
                    .await?;
                if !response.status().is_success() {
                    anyhow::bail!(
                        "collector answered {}: {}",
                        response.status(),
                        response.text().await.unwrap_or_default()
                    );
                }
            }
        }));
    }
    for worker in workers {
        worker.await??;
    }
    Ok(events as f64 / started.elapsed().as_secs_f64())
}

async fn raw_phase(bus: &Bus, payloads: Vec<Outgoing>) -> anyhow::Result<f64> {
    let window = bus.config().max_in_flight.min(8192);
    let events = payloads.len();
    let jetstream = bus.jetstream();
    let started = Instant::now();
    let mut pending = FuturesUnordered::new();
    for message in payloads {
        let mut publish = async_nats::jetstream::message::PublishMessage::build()
            .payload(message.payload)
            .headers(message.headers);
        if let Some(id) = message.message_id {
            publish = publish.message_id(id);
        }
        let ack = jetstream.send_publish(message.subject, publish).await?;
        pending.push(ack.into_future());
        while pending.len() >= window {
            if let Some(result) = pending.next().await {
                result?;
            }
        }
    }
    while let Some(result) = pending.next().await {
        result?;
    }
    let elapsed = started.elapsed().max(Duration::from_micros(1));
    Ok(events as f64 / elapsed.as_secs_f64())
}

/// A realistic ~0.5 KB page/track event for benchmarks: visitor `n` of a site.
pub(super) fn realistic_event(n: u64) -> serde_json::Value {
    let sections = ["shoes", "bags", "jackets", "sale", "new-in"];
    let section = sections[(n % sections.len() as u64) as usize];
    serde_json::json!({
        "type": if n.is_multiple_of(3) { "page" } else { "track" },
        "event": "Product Viewed",
        "anonymousId": format!("anon-{:016x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 8),
        "properties": {
            "section": section,
            "product_id": format!("sku-{}", n % 5000),
            "price": 49.99,
            "currency": "EUR",
            "url": format!("https://shop.example.com/{section}/item-{}", n % 5000)
        },
        "context": {
            "ip": "81.2.69.142",
            "userAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
            "locale": "en-GB",
            "timezone": "Europe/London",
            "page": {"referrer": "https://www.google.com/", "title": "Shop"}
        },
        "originalTimestamp": "2026-11-22T10:00:00.000Z",
        "sentAt": "2026-11-22T10:00:01.000Z"
    })
}
