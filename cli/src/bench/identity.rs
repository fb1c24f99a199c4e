//! `cairn bench identity`: events/s through identity, from `events.raw` to
//! `events.identified`, on the embedded store: a known-visitors workload (no change to
//! the graph) and a merge-heavy one (every other event makes a profile, every other
//! merges it into a customer's).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_bus::{Bus, BusConfig, Outgoing, streams, subjects};
use cairn_proto::event::v1::{Envelope, EventType};
use cairn_runtime::Settings;
use cairn_store::{Clock, EmbeddedStore, Fsync};
use prost::Message as _;
use serde_json::json;

use super::IdentityArgs;
use crate::modules;

pub async fn run(args: IdentityArgs) -> anyhow::Result<()> {
    let settings = Settings::from_env(&modules::all_vars())?;
    let dir = tempfile::tempdir()?;
    let (url, _server) = super::nats(&settings, &dir.path().join("nats")).await?;
    let visitors = args.visitors.max(1);
    println!(
        "cairn bench identity: {} events per workload, {visitors} known visitors, NATS at {}",
        args.events,
        cairn_bus::config::redact_url(&url)
    );

    let context = super::context(&url, &[])?;
    let store = super::embedded_store(&dir.path().join("store"))?;
    let identity = cairn_identity::start(&context, store).await?;
    let served = super::serve(identity, &context).await?;
    let bus = Bus::connect(&BusConfig::for_url(&url), "cairn-bench").await?;

    // Every visitor once: cookie and user id together, so the graph knows them.
    let warm_up: Vec<serde_json::Value> = (0..visitors)
        .map(|v| json!({"type": "identify", "anonymousId": format!("v{v}"), "userId": format!("u{v}")}))
        .collect();
    let warm_eps = phase(&bus, "warm-up (new visitors)", "warm", &warm_up).await?;

    let known: Vec<serde_json::Value> = (0..args.events)
        .map(|n| {
            let v = (n * 7919) % visitors;
            if n % 2 == 0 {
                json!({"type": "page", "anonymousId": format!("v{v}")})
            } else {
                json!({"type": "track", "event": "Viewed", "anonymousId": format!("v{v}"), "userId": format!("u{v}")})
            }
        })
        .collect();
    let known_eps = phase(&bus, "known visitors", "known", &known).await?;
    graph_only(&dir.path().join("graph"), &warm_up, &known).await?;

    // A stranger's cookie, then that cookie logging in as a known customer: a merge.
    let merging: Vec<serde_json::Value> = (0..args.events)
        .map(|n| {
            let stranger = format!("s{}", n / 2);
            if n % 2 == 0 {
                json!({"type": "page", "anonymousId": stranger})
            } else {
                json!({"type": "identify", "anonymousId": stranger, "userId": format!("u{}", (n / 2) % visitors)})
            }
        })
        .collect();
    let merge_eps = phase(&bus, "merge-heavy", "merge", &merging).await?;

    context.shutdown.trigger();
    served.host.await??;
    println!(
        "{}",
        json!({"identity_new_eps": warm_eps.round(), "identity_known_eps": known_eps.round(), "identity_merge_eps": merge_eps.round()})
    );
    Ok(())
}

/// Publishes `events` as the collector would and waits until identity has published
/// them all on events.identified; returns events/s.
async fn phase(
    bus: &Bus,
    name: &str,
    tag: &str,
    events: &[serde_json::Value],
) -> anyhow::Result<f64> {
    let before = stream_count(bus, streams::IDENTIFIED).await?;
    let partitions = bus.partitions();
    let started = Instant::now();
    for (chunk_index, chunk) in events.chunks(1000).enumerate() {
        let outgoing: Vec<Outgoing> = chunk
            .iter()
            .enumerate()
            .map(|(i, event)| {
                let message_id = format!("{tag}-{}", chunk_index * 1000 + i);
                let key = event["anonymousId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let call = match event["type"].as_str() {
                    Some("identify") => EventType::Identify,
                    Some("page") => EventType::Page,
                    _ => EventType::Track,
                };
                let envelope = Envelope {
                    raw: Bytes::from(serde_json::to_vec(event).unwrap_or_default()),
                    received_at: Some(std::time::SystemTime::now().into()),
                    source: "bench".into(),
                    message_id: message_id.clone(),
                    r#type: call.into(),
                    partition_key: key.clone(),
                    ..Default::default()
                };
                Outgoing {
                    subject: subjects::events_raw(partitions.of(&key)),
                    message_id: Some(format!("bench:{message_id}")),
                    headers: async_nats::HeaderMap::new(),
                    payload: Bytes::from(envelope.encode_to_vec()),
                }
            })
            .collect();
        bus.publish_all(outgoing).await?;
    }
    let target = before + events.len() as u64;
    loop {
        let done = stream_count(bus, streams::IDENTIFIED).await?;
        if done >= target {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!(
                "{name}: only {} of {} events identified after 10 minutes",
                done - before,
                events.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let eps = events.len() as f64 / started.elapsed().as_secs_f64();
    println!("  {name:<24} {eps:>10.0} events/s");
    Ok(eps)
}

async fn stream_count(bus: &Bus, stream: &str) -> anyhow::Result<u64> {
    let mut stream = bus.jetstream().get_stream(stream).await?;
    Ok(stream.info().await?.state.messages)
}

/// The graph alone, without NATS: what identity's own work costs per event.
async fn graph_only(
    dir: &std::path::Path,
    warm_up: &[serde_json::Value],
    known: &[serde_json::Value],
) -> anyhow::Result<()> {
    use cairn_identity::{Graph, Rules, extract};
    let store = EmbeddedStore::open(dir, Fsync::Buffer, 64 << 20, Clock::system())?;
    let graph = Arc::new(Graph::new(
        store,
        Arc::new(Rules::default()),
        "bench".into(),
        Duration::from_secs(30),
        Duration::from_secs(30),
    ));
    for (n, event) in warm_up.iter().enumerate() {
        let found = extract::identifiers(graph.rules(), event, false);
        graph
            .identify(&found.identifiers, &format!("w{n}"), 0, 0)
            .await?;
    }
    let started = Instant::now();
    let events = Arc::new(known.to_vec());
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let (graph, events) = (graph.clone(), events.clone());
        tasks.push(tokio::spawn(async move {
            for (n, event) in events.iter().enumerate().skip(worker).step_by(4) {
                let raw = serde_json::to_vec(event).unwrap_or_default();
                let event: serde_json::Value = serde_json::from_slice(&raw)?;
                let found = extract::identifiers(graph.rules(), &event, false);
                graph
                    .identify(&found.identifiers, &format!("k{n}"), 0, 0)
                    .await?;
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let eps = known.len() as f64 / started.elapsed().as_secs_f64();
    println!(
        "  {:<24} {eps:>10.0} events/s (the graph alone, no NATS)",
        "known visitors"
    );
    Ok(())
}
