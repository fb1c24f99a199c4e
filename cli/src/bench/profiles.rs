//! `cairn bench profiles`: the latency from publishing an event to its change
//! announcement at a steady rate (on a fresh store), then events/s from
//! `events.identified` to `profiles.changed` draining a backlog.

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::DeliverPolicy;
use bytes::Bytes;
use cairn_bus::server::NatsServer;
use cairn_bus::{Bus, BusConfig, Outgoing, streams, subjects};
use cairn_proto::event::v1::{Envelope, EventType, IdentifiedEvent};
use cairn_proto::identity::v1::Identifier;
use cairn_proto::profile::v1::ProfileChanged;
use cairn_runtime::Settings;
use prost::Message as _;
use serde_json::json;

use super::ProfilesArgs;
use crate::modules;

pub async fn run(args: ProfilesArgs) -> anyhow::Result<()> {
    let settings = Settings::from_env(&modules::all_vars())?;
    let dir = tempfile::tempdir()?;
    let (url, server) = super::nats(&settings, &dir.path().join("nats")).await?;
    println!(
        "cairn bench profiles: {} events/s for {} s, then a burst of {} events, on {} profiles, NATS at {}",
        args.rate,
        args.seconds,
        args.events,
        args.profiles,
        cairn_bus::config::redact_url(&url)
    );
    let context = super::context(&url, &[])?;
    let store = super::embedded_store(&dir.path().join("store"))?;
    let module = cairn_profile_store::start(&context, store.clone()).await?;
    let served = super::serve(module, &context).await?;
    let bus = Bus::connect(&BusConfig::for_url(&url), "cairn-bench").await?;
    // The replica claims its partitions within a round of its lease.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Latency at a steady rate: publish time to announcement received.
    let run = super::LatencyRun::default();
    let collector = run
        .listen(&bus, "profiles.changed.>", |payload| {
            ProfileChanged::decode(payload)
                .ok()
                .map(|changed| changed.message_id)
        })
        .await?;
    let total = args.rate * args.seconds;
    let profiles = args.profiles.max(1);
    run.publish(&bus, args.rate, total, |n| {
        (format!("s{n}"), event(&bus, n, profiles, "s"))
    })
    .await?;
    let latencies = run.latencies(total).await;
    collector.abort();
    let (p50, p99) = (
        super::percentile_ms(&latencies, 0.50),
        super::percentile_ms(&latencies, 0.99),
    );
    println!(
        "  latency at {} events/s ({} measured): p50 {p50:.2} ms, p99 {p99:.2} ms",
        args.rate,
        latencies.len()
    );

    // Throughput: a backlog drained. The replica stops, the burst is published, and a
    // new replica works through it (the publisher is not part of the path measured:
    // on this 2-core machine it would take a core from the profile store).
    context.shutdown.trigger();
    served.host.await??;
    publish_backlog(&bus, args.events, profiles, "t").await?;
    let context = super::context(&url, &[])?;
    let module = cairn_profile_store::start(&context, store).await?;
    let served = super::serve(module, &context).await?;
    let announced = total as u64;
    // Counted from the first change announced: claiming the partitions is not throughput.
    let first = wait_for(&bus, announced + 1).await?;
    let cpu_first = super::CpuUsed::now(server.as_ref());
    let last = wait_for(&bus, announced + args.events as u64).await?;
    let (cairn_cpu, nats_cpu) =
        super::CpuUsed::now(server.as_ref()).per_event_since(&cpu_first, args.events - 1);
    let eps = (args.events - 1) as f64 / (last - first).as_secs_f64();
    println!("  events.identified -> profiles.changed  {eps:>10.0} events/s (a backlog drained)");
    println!("  {}", super::cpu_line("event", cairn_cpu, nats_cpu));

    context.shutdown.trigger();
    served.host.await??;

    // The floor: the same runs through the same consumers and worker loop, by a stage
    // that only passes each event on. No stage of this shape (one JetStream message in
    // and one out per event) does better on this machine.
    let floor = floor(
        &bus,
        server.as_ref(),
        &args,
        2 * (total + args.events) as u64,
    )
    .await?;
    let (floor_p50, floor_p99) = (
        super::percentile_ms(&floor.latencies, 0.50),
        super::percentile_ms(&floor.latencies, 0.99),
    );
    let floor_eps = (args.events - 1) as f64 / floor.seconds;
    println!("  the floor, a stage passing each event on over the same consumers:");
    println!(
        "  latency at {} events/s ({} measured): p50 {floor_p50:.2} ms, p99 {floor_p99:.2} ms",
        args.rate,
        floor.latencies.len()
    );
    println!(
        "  events.identified -> profiles.changed  {floor_eps:>10.0} events/s (a backlog drained)"
    );
    println!("  {}", super::cpu_line("event", floor.cpu.0, floor.cpu.1));
    println!(
        "{}",
        json!({"profiles_eps": eps.round(), "cairn_cpu_us_per_event": cairn_cpu.map(f64::round), "nats_cpu_us_per_event": nats_cpu.map(f64::round), "latency_p50_ms": (p50 * 100.0).round() / 100.0, "latency_p99_ms": (p99 * 100.0).round() / 100.0, "rate": args.rate, "floor_eps": floor_eps.round(), "floor_cairn_cpu_us_per_event": floor.cpu.0.map(f64::round), "floor_nats_cpu_us_per_event": floor.cpu.1.map(f64::round), "floor_latency_p50_ms": (floor_p50 * 100.0).round() / 100.0, "floor_latency_p99_ms": (floor_p99 * 100.0).round() / 100.0})
    );
    Ok(())
}

/// What the floor's runs measured.
struct Floor {
    /// At the steady rate, sorted.
    latencies: Vec<Duration>,
    /// Draining the backlog: from the first output to the last.
    seconds: f64,
    /// Draining the backlog: CPU per event (Cairn, nats-server).
    cpu: (Option<f64>, Option<f64>),
}

/// The profile store's runs (`args`) again through a stage that does no work, on
/// consumers shaped as the profile store's, one worker per partition; the backlog is
/// drained when PROFILES holds `done` messages.
async fn floor(
    bus: &Bus,
    server: Option<&NatsServer>,
    args: &ProfilesArgs,
    done: u64,
) -> anyhow::Result<Floor> {
    let batch = cairn_profile_store::config::BATCH.default.parse()?;
    let profiles = args.profiles.max(1);
    let mut consumers = Vec::new();
    for partition in 0..bus.partitions().count() {
        let [(stream, mut config), ..] = cairn_profile_store::consumer_configs(partition, batch);
        config.durable_name = Some(format!("bench_floor_{partition}"));
        config.deliver_policy = DeliverPolicy::New;
        consumers.push(bus.ensure_consumer(stream, config).await?);
    }

    let passing = super::PassingOn::start(bus, &consumers, batch, "profiles.changed");
    let run = super::LatencyRun::default();
    let collector = run
        .listen(bus, "profiles.changed.>", |payload| {
            IdentifiedEvent::decode(payload)
                .ok()
                .and_then(|identified| identified.envelope)
                .map(|envelope| envelope.message_id)
        })
        .await?;
    let total = args.rate * args.seconds;
    run.publish(bus, args.rate, total, |n| {
        (format!("fs{n}"), event(bus, n, profiles, "fs"))
    })
    .await?;
    let latencies = run.latencies(total).await;
    collector.abort();
    passing.stop().await?;

    publish_backlog(bus, args.events, profiles, "f").await?;
    let passing = super::PassingOn::start(bus, &consumers, batch, "profiles.changed");
    // Counted from the first output, as for the profile store.
    let first = wait_for(bus, done - args.events as u64 + 1).await?;
    let cpu_first = super::CpuUsed::now(server);
    let last = wait_for(bus, done).await?;
    let cpu = super::CpuUsed::now(server).per_event_since(&cpu_first, args.events - 1);
    passing.stop().await?;
    Ok(Floor {
        latencies,
        seconds: (last - first).as_secs_f64(),
        cpu,
    })
}

/// Publishes `events` identified events of `profiles` people (message ids `<tag><n>`),
/// for a stage to drain.
async fn publish_backlog(
    bus: &Bus,
    events: usize,
    profiles: usize,
    tag: &str,
) -> anyhow::Result<()> {
    let backlog: Vec<Outgoing> = (0..events).map(|n| event(bus, n, profiles, tag)).collect();
    for chunk in backlog.chunks(1000) {
        bus.publish_all(chunk.to_vec()).await?;
    }
    Ok(())
}

/// Identified event `n`: a page view of one of `profiles` people, as identity publishes it.
fn event(bus: &Bus, n: usize, profiles: usize, tag: &str) -> Outgoing {
    let person = (n * 7919) % profiles;
    let profile_id = format!("bench-profile-{person:06}");
    let message_id = format!("{tag}{n}");
    let raw = json!({
        "type": "page",
        "messageId": message_id,
        "anonymousId": format!("anon-{person}"),
        "properties": {"title": "Shoes"},
        "context": {
            "page": {"url": format!("https://shop.example.com/section-{}", n % 7), "referrer": "https://www.google.com/"},
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0",
            "timezone": "Europe/London"
        }
    });
    let envelope = Envelope {
        raw: Bytes::from(serde_json::to_vec(&raw).unwrap_or_default()),
        received_at: Some(std::time::SystemTime::now().into()),
        source: "bench".into(),
        message_id: message_id.clone(),
        r#type: EventType::Page.into(),
        ..Default::default()
    };
    let identified = IdentifiedEvent {
        envelope: Some(envelope),
        profile_id: profile_id.clone(),
        identifiers: vec![Identifier {
            r#type: "anonymous_id".into(),
            value: format!("anon-{person}"),
        }],
    };
    Outgoing {
        subject: subjects::events_identified(bus.partitions().of(&profile_id)),
        message_id: Some(format!("bench:{message_id}")),
        headers: async_nats::HeaderMap::new(),
        payload: Bytes::from(identified.encode_to_vec()),
    }
}

/// Waits until `count` changes are in the stream, and says when they were.
async fn wait_for(bus: &Bus, count: u64) -> anyhow::Result<Instant> {
    let started = Instant::now();
    loop {
        let mut stream = bus.jetstream().get_stream(streams::PROFILES).await?;
        if stream.info().await?.state.messages >= count {
            return Ok(Instant::now());
        }
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("changes not announced after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
