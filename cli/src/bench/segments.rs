//! `cairn bench segments`: segment evaluations/s on one core, with the code the
//! segmenter runs, over realistic profiles (folded from generated events) and 100
//! segments of the kinds marketers write.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use async_nats::jetstream::consumer::DeliverPolicy;
use bytes::Bytes;
use cairn_bus::{Bus, BusConfig, Outgoing, streams, subjects};
use cairn_profile_store::profile::{EventInput, FoldSettings, Identifier, Profile};
use cairn_proto::profile::v1::ProfileChanged;
use cairn_proto::segment::v1::SegmentChanged;
use cairn_runtime::Settings;
use cairn_segmenter::SegmentSet;
use prost::Message as _;
use serde_json::json;

use super::SegmentsArgs;
use crate::modules;

const HOUR: i64 = 3_600_000;
/// What a page view changes, as `profiles.changed` names it (and the age, which flips).
const PAGE_VIEW_CHANGES: [&str; 7] = [
    "last_seen",
    "visit_count",
    "session_count",
    "events.page",
    "urls",
    "referrer_domains",
    "traits.age",
];
const NOW: i64 = 1_795_000_000_000;
const SECTIONS: [&str; 6] = ["shoes", "bags", "hats", "coats", "sale", "news"];
const CITIES: [&str; 5] = ["London", "Paris", "Berlin", "Madrid", "Rome"];
const PLANS: [&str; 3] = ["free", "pro", "team"];
const DOMAINS: [&str; 2] = ["gmail.com", "acme.com"];

/// Person `n`: a few weeks of page views, carts and purchases, with traits and facts.
pub(super) fn profile(n: usize) -> serde_json::Value {
    let mut profile = Profile::new(&format!("p{n}"));
    let settings = FoldSettings::default();
    let events = 10 + n % 40;
    for k in 0..events {
        let at = NOW - ((events - k) as i64) * 7 * HOUR;
        let (call, name) = match k % 10 {
            7 => ("track", "Added to Cart"),
            9 if n.is_multiple_of(3) => ("track", "Order Completed"),
            _ => ("page", "page"),
        };
        let input = EventInput {
            message_id: format!("m{n}-{k}"),
            call: call.into(),
            name: name.into(),
            at,
            identifiers: vec![Identifier {
                kind: "anonymous_id".into(),
                value: format!("a{n}"),
            }],
            url: Some(format!(
                "https://shop.example.com/{}/item-{k}",
                SECTIONS[(n + k) % 6]
            )),
            referrer_domain: Some("google.com".into()),
            user_agent: Some("Mozilla/5.0 Firefox/120.0".into()),
            timezone: Some("Europe/London".into()),
            city: Some(CITIES[n % 5].into()),
            country: Some("GB".into()),
            traits: [
                ("plan".to_string(), json!(PLANS[n % 3])),
                (
                    "email".to_string(),
                    json!(format!("p{n}@{}", DOMAINS[n % 2])),
                ),
                ("age".to_string(), json!(18 + n % 60)),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        profile.apply_event(&input, &settings);
    }
    let device_type = ["desktop", "mobile", "tablet"][n % 3];
    let facts = json!({"device_type": device_type, "bot": n.is_multiple_of(50)});
    if let serde_json::Value::Object(facts) = facts {
        profile.apply_facts("device", &facts, NOW);
    }
    serde_json::to_value(profile.view(NOW)).unwrap_or_default()
}

/// Segment `n` of 100: twenty shapes, five thresholds each.
fn segment(n: usize) -> String {
    let k = n / 20 + 1;
    match n % 20 {
        0 => format!("FILTER visit_count > {k}"),
        1 => format!("FILTER event_count.page.30d >= {}", k * 5),
        2 => format!("FILTER event_count.`Order Completed`.all >= {k}"),
        3 => format!("FILTER last_seen > \"now-{k}d\""),
        4 => format!("FILTER AND (EXISTS email, plan == \"pro\", visit_count > {k})"),
        5 => "FILTER plan IN (\"pro\", \"team\")".to_string(),
        6 => "FILTER email LIKE \"*@acme.com\"".to_string(),
        7 => format!("FILTER age BETWEEN {} AND {}", 18 + k * 5, 30 + k * 5),
        8 => "FILTER city IN (\"London\", \"Paris\")".to_string(),
        9 => "FILTER facts.device.device_type == \"mobile\"".to_string(),
        10 => "FILTER NOT facts.device.bot == true".to_string(),
        11 => format!(
            "FILTER OR (event_count.`Added to Cart`.7d >= {k}, event_count.`Order Completed`.30d >= 1)"
        ),
        12 => format!(
            "FILTER AND (event_count.`Added to Cart`.30d >= 1, NOT event_count.`Order Completed`.30d >= {k})"
        ),
        13 => "FILTER referrer_domains.google.com > 2".to_string(),
        14 => format!("FILTER first_seen < \"now-{}d\"", k * 3),
        15 => "FILTER urls CONTAINS \"x\"".to_string(),
        16 => format!("FILTER AND (INCLUDE s{}, plan != \"free\")", n - 16),
        17 => format!("FILTER OR (INCLUDE s{}, INCLUDE s{})", n - 17, n - 14),
        18 => format!("FILTER session_count >= {k}"),
        _ => format!(
            "FILTER AND (country == \"GB\", visit_count BETWEEN {k} AND {})",
            k * 10
        ),
    }
}

pub async fn run(args: SegmentsArgs) -> anyhow::Result<()> {
    let mut set = SegmentSet::default();
    for n in 0..100 {
        let filter = cairn_filterql::parse(&segment(n))
            .map_err(|err| anyhow::anyhow!("segment {n}: {err}"))?;
        set.insert(&format!("s{n}"), filter)?;
    }
    let profiles: Vec<serde_json::Value> = (0..args.profiles).map(profile).collect();
    println!(
        "cairn bench segments: {} segments over {} profiles, {} rounds, one core",
        set.len(),
        profiles.len(),
        args.rounds
    );
    let started = Instant::now();
    let mut members_total = 0;
    for round in 0..args.rounds {
        for profile in &profiles {
            let mut members = BTreeMap::new();
            black_box(set.evaluate(profile, None, &mut members, NOW + round as i64));
            members_total += members.len();
        }
    }
    let evaluations = (args.rounds * profiles.len() * set.len()) as f64;
    let per_s = evaluations / started.elapsed().as_secs_f64();
    println!(
        "  {per_s:>12.0} segment evaluations/s ({:.1} memberships per profile)",
        members_total as f64 / (args.rounds * profiles.len()) as f64
    );
    let (latencies, (cairn_cpu, nats_cpu), floor) = latency(&args, &profiles).await?;
    let (p50, p99) = (
        super::percentile_ms(&latencies, 0.50),
        super::percentile_ms(&latencies, 0.99),
    );
    println!(
        "  profiles.changed -> segments.changed at {} changes/s ({} measured): p50 {p50:.2} ms, p99 {p99:.2} ms",
        args.rate,
        latencies.len()
    );
    println!("  {}", super::cpu_line("change", cairn_cpu, nats_cpu));
    let (floor_p50, floor_p99) = (
        super::percentile_ms(&floor, 0.50),
        super::percentile_ms(&floor, 0.99),
    );
    println!(
        "  the floor, a stage passing each change on over a consumer shaped as the segmenter's: p50 {floor_p50:.2} ms, p99 {floor_p99:.2} ms ({} measured)",
        floor.len()
    );
    println!(
        "{}",
        json!({"segment_evaluations_per_s": per_s.round(), "changed_to_segments_p50_ms": (p50 * 100.0).round() / 100.0, "changed_to_segments_p99_ms": (p99 * 100.0).round() / 100.0, "cairn_cpu_us_per_change": cairn_cpu.map(f64::round), "nats_cpu_us_per_change": nats_cpu.map(f64::round), "rate": args.rate, "floor_p50_ms": (floor_p50 * 100.0).round() / 100.0, "floor_p99_ms": (floor_p99 * 100.0).round() / 100.0})
    );
    Ok(())
}

/// The latency through the segmenter service: profile changes published at a steady
/// rate, each naming the fields a page view changes, so that most segments are
/// evaluated again, and alternating between the profile as it is and the profile aged
/// 99 (so about half the profiles leave or enter an age segment on every change), timed
/// to the first `segments.changed` decided on that version. Changes that flip nothing
/// announce nothing and are not measured. Every profile's first two versions go
/// through before the clock starts: a profile seen for the first time enters dozens of
/// segments at once, which is not the steady state. The latencies, sorted, and the CPU
/// per change (Cairn's, nats-server's); then, the segmenter stopped, the latencies of
/// more changes at the same rate through a stage that does no work (the floor).
async fn latency(
    args: &SegmentsArgs,
    profiles: &[serde_json::Value],
) -> anyhow::Result<(
    Vec<std::time::Duration>,
    (Option<f64>, Option<f64>),
    Vec<std::time::Duration>,
)> {
    let settings = Settings::from_env(&modules::all_vars())?;
    let dir = tempfile::tempdir()?;
    let (url, server) = super::nats(&settings, &dir.path().join("nats")).await?;
    let store = super::embedded_store(&dir.path().join("store"))?;
    for n in 0..100 {
        let draft = cairn_segmenter::definitions::Draft::new(&format!("s{n}"), &segment(n));
        cairn_segmenter::definitions::put(&store, draft, 0).await?;
    }
    let context = super::context(&url, &[])?;
    let module = cairn_segmenter::start(&context, store).await?;
    let served = super::serve(module, &context).await?;
    let bus = Bus::connect(&BusConfig::for_url(&url), "cairn-bench").await?;
    let states: Vec<(String, String, String)> = profiles
        .iter()
        .map(|profile| {
            let mut quiet = profile.clone();
            quiet["traits"]["age"] = json!(99);
            let id = profile["id"].as_str().unwrap_or_default().to_string();
            (id, profile.to_string(), quiet.to_string())
        })
        .collect();

    let run = super::LatencyRun::default();
    let collector = run
        .listen(&bus, "segments.changed.>", |payload| {
            let changed = SegmentChanged::decode(payload).ok()?;
            Some(format!(
                "{}:{}",
                changed.profile_id, changed.profile_version
            ))
        })
        .await?;
    let change = |n: usize| {
        let (id, full, quiet) = &states[n % states.len()];
        let version = (n / states.len() + 1) as u64;
        let changed = ProfileChanged {
            profile_id: id.clone(),
            version,
            changed_fields: PAGE_VIEW_CHANGES
                .iter()
                .map(|field| field.to_string())
                .collect(),
            message_id: format!("bench-{n}"),
            at: Some(std::time::SystemTime::now().into()),
            profile_json: if version % 2 == 1 { full } else { quiet }.clone(),
            session_id: String::new(),
            session_index: 0,
            event: None,
        };
        let message = Outgoing {
            subject: subjects::profiles_changed(bus.partitions().of(id)),
            message_id: Some(format!("changed/{id}/{version}")),
            headers: async_nats::HeaderMap::new(),
            payload: Bytes::from(changed.encode_to_vec()),
        };
        (format!("{id}:{version}"), message)
    };
    let warm_up = 2 * states.len();
    let (latencies, cpu) = run
        .through_segmenter(
            &bus,
            server.as_ref(),
            warm_up,
            args.rate,
            args.rate * args.seconds,
            change,
        )
        .await?;
    collector.abort();
    context.shutdown.trigger();
    served.host.await??;

    let mut config = cairn_segmenter::consumer_config();
    config.durable_name = Some("bench_floor".to_string());
    config.deliver_policy = DeliverPolicy::New;
    let consumer = bus.ensure_consumer(streams::PROFILES, config).await?;
    let passing = super::PassingOn::start(
        &bus,
        &[consumer],
        cairn_segmenter::BATCH,
        "segments.changed",
    );
    let floor = super::LatencyRun::default();
    let collector = floor
        .listen(&bus, "segments.changed.>", |payload| {
            let changed = ProfileChanged::decode(payload).ok()?;
            Some(format!("{}:{}", changed.profile_id, changed.version))
        })
        .await?;
    // Changes after those of the run above (new versions, so new message ids).
    let first = warm_up + args.rate * args.seconds;
    let total = args.rate * args.seconds;
    floor
        .publish(&bus, args.rate, total, |n| change(first + n))
        .await?;
    let floor = floor.latencies(total).await;
    collector.abort();
    passing.stop().await?;
    Ok((latencies, cpu, floor))
}
