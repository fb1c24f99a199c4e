//! `cairn bench enrich`: lookups/s on one core, with the code the enrichers run.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use cairn_bus::{Bus, BusConfig, Outgoing, streams, subjects};
use cairn_enrich_device::Devices;
use cairn_enrich_geo::{Databases, Geo};
use cairn_proto::event::v1::{Envelope, EventType, IdentifiedEvent};
use cairn_runtime::Settings;
use prost::Message as _;
use serde_json::json;

use super::EnrichArgs;
use crate::modules;

/// Addresses the MaxMind test databases know.
const KNOWN: [[u8; 4]; 6] = [
    [81, 2, 69, 142],
    [2, 125, 160, 216],
    [216, 160, 83, 56],
    [89, 160, 20, 128],
    [175, 16, 199, 1],
    [67, 43, 156, 1],
];

/// Browsers and systems in the proportions a shop sees, each in many versions.
const AGENTS: [&str; 8] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_{v} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; SM-S91{v}B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{v}.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0",
    "Mozilla/5.0 (iPad; CPU OS 16_{v} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36 Edg/{v}.0.0.0",
    "Mozilla/5.0 (compatible; Googlebot/2.{v}; +http://www.google.com/bot.html)",
];

pub async fn run(args: EnrichArgs) -> anyhow::Result<()> {
    println!(
        "cairn bench enrich: {} geo lookups on {}, {} device lookups, one core",
        args.lookups,
        args.db.display(),
        args.agents
    );
    let geo = Geo {
        databases: Arc::new(Databases::open(std::slice::from_ref(&args.db))?),
        anonymize: false,
    };
    // Half the addresses are known to the database, half are random public ones.
    let addresses: Vec<String> = (0..4096u32)
        .map(|n| {
            let ip = if n % 2 == 0 {
                Ipv4Addr::from(KNOWN[n as usize / 2 % KNOWN.len()])
            } else {
                Ipv4Addr::from(rand::random::<u32>() | 0x0100_0000)
            };
            IpAddr::V4(ip).to_string()
        })
        .collect();
    let started = Instant::now();
    let mut found = 0usize;
    for n in 0..args.lookups {
        found += usize::from(black_box(geo.locate(&addresses[n % addresses.len()])).is_some());
    }
    let geo_per_s = args.lookups as f64 / started.elapsed().as_secs_f64();
    println!("  geo: {geo_per_s:>12.0} lookups/s ({found} found)");

    let devices = Devices::load(None, 100_000)?;
    let distinct: Vec<String> = (0..2_000)
        .map(|n| AGENTS[n % AGENTS.len()].replace("{v}", &(80 + n / AGENTS.len()).to_string()))
        .collect();
    let started = Instant::now();
    let uncached = 20_000;
    for n in 0..uncached {
        black_box(devices.parse(&distinct[n % distinct.len()]));
    }
    let uncached_per_s = uncached as f64 / started.elapsed().as_secs_f64();
    println!("  device, uncached: {uncached_per_s:>12.0} parses/s");
    // A few agents are most of the traffic: index by a skewed draw.
    let picks: Vec<usize> = (0..65_536)
        .map(|_| {
            let draw: f64 = rand::random();
            ((draw * draw * draw) * distinct.len() as f64) as usize
        })
        .collect();
    let started = Instant::now();
    for n in 0..args.agents {
        black_box(devices.lookup(&distinct[picks[n % picks.len()]]));
    }
    let cached_per_s = args.agents as f64 / started.elapsed().as_secs_f64();
    println!("  device, cached mix: {cached_per_s:>12.0} lookups/s");
    let through = through_services(&args, &distinct).await?;
    let mut summary = json!({"geo_lookups_per_s": geo_per_s.round(), "device_cached_per_s": cached_per_s.round(), "device_uncached_per_s": uncached_per_s.round()});
    for (service, eps) in through {
        summary[format!("{}_eps", service.replace('-', "_"))] = json!(eps.round());
    }
    println!("{summary}");
    Ok(())
}

/// Events/s through each enricher: a backlog of identified events published first, then
/// each enricher alone works through it (on NATS as for `ingest`; the embedded store).
async fn through_services(
    args: &EnrichArgs,
    agents: &[String],
) -> anyhow::Result<Vec<(&'static str, f64)>> {
    let settings = Settings::from_env(&modules::all_vars())?;
    let dir = tempfile::tempdir()?;
    let (url, _server) = super::nats(&settings, &dir.path().join("nats")).await?;
    let bus = Bus::connect(&BusConfig::for_url(&url), "cairn-bench").await?;
    bus.ensure_stream(streams::identified(bus.config())).await?;
    let events: Vec<Outgoing> = (0..args.events)
        .map(|n| identified(&bus, n, &agents[n % agents.len()]))
        .collect();
    for chunk in events.chunks(1000) {
        bus.publish_all(chunk.to_vec()).await?;
    }
    println!(
        "  {} identified events published; each enricher works through them:",
        args.events
    );
    let db = args.db.display().to_string();
    let store = super::embedded_store(&dir.path().join("store"))?;
    let mut results = Vec::new();
    for service in [
        "enrich-geo",
        "enrich-device",
        "enrich-activity",
        "enrich-content",
    ] {
        let context = super::context(&url, &[("CAIRN_GEO_DATABASES", db.as_str())])?;
        let started = Instant::now();
        let module = match service {
            "enrich-geo" => cairn_enrich_geo::start(&context).await?,
            "enrich-device" => cairn_enrich_device::start(&context).await?,
            "enrich-activity" => cairn_enrich_activity::start(&context, store.clone()).await?,
            _ => cairn_enrich_content::start(&context, store.clone()).await?,
        };
        let served = super::serve(module, &context).await?;
        let consumer = format!("enrich_{}", service.trim_start_matches("enrich-"));
        super::drained(&bus, streams::IDENTIFIED, &consumer).await?;
        let eps = args.events as f64 / started.elapsed().as_secs_f64();
        println!("  {service:<16} {eps:>10.0} events/s");
        results.push((service, eps));
        context.shutdown.trigger();
        served.host.await??;
    }
    Ok(results)
}

/// Identified event `n`: a page view by one of 20,000 people, from a browser in `agent`,
/// from an address the test database knows every other time.
fn identified(bus: &Bus, n: usize, agent: &str) -> Outgoing {
    let person = (n * 7919) % 20_000;
    let profile_id = format!("bench-profile-{person:06}");
    let message_id = format!("e{n}");
    let ip = Ipv4Addr::from(if n.is_multiple_of(2) {
        KNOWN[n / 2 % KNOWN.len()]
    } else {
        [81, 2, (n % 250) as u8, (n % 199) as u8]
    });
    let section = ["shoes", "bags", "hats", "coats", "news", "sale", "boots"][n % 7];
    let raw = json!({
        "type": "page",
        "messageId": message_id,
        "anonymousId": format!("anon-{person}"),
        "context": {
            "ip": ip.to_string(),
            "userAgent": agent,
            "timezone": "Europe/London",
            "page": {"url": format!("https://shop.example.com/{section}/item-{}", n % 500), "title": format!("Winter {section} item {} | Shop", n % 500)},
            "traits": {"email": format!("person{person}@{}", if person.is_multiple_of(3) { "gmail.com" } else { "acme.example" })}
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
    let event = IdentifiedEvent {
        envelope: Some(envelope),
        profile_id: profile_id.clone(),
        identifiers: Vec::new(),
    };
    Outgoing {
        subject: subjects::events_identified(bus.partitions().of(&profile_id)),
        message_id: Some(format!("bench:{message_id}")),
        headers: async_nats::HeaderMap::new(),
        payload: Bytes::from(event.encode_to_vec()),
    }
}
