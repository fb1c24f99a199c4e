//! `cairn bench campaigns`: the latency from a profile change carrying its event (what
//! the profile store publishes for every event) to the campaign action it causes,
//! through the segmenter service at a steady rate.

use bytes::Bytes;
use cairn_bus::{Bus, BusConfig, Outgoing, subjects};
use cairn_proto::campaign::v1::Action;
use cairn_proto::event::v1::{Envelope, EventType, IdentifiedEvent};
use cairn_proto::profile::v1::ProfileChanged;
use cairn_runtime::Settings;
use prost::Message as _;
use serde_json::json;

use super::CampaignsArgs;
use crate::modules;

/// The campaign every measured event moves: a product view worth showing an offer for,
/// each time.
const OFFER: &str = r#"
name: offer
reentry: always
transitions:
  - {from: start, to: offered, event: Product Viewed, when: "properties.price > 10"}
actions:
  offered:
    - {channel: web, content: offer, params: {item: event.properties.item, plan: profile.traits.plan}}
"#;

/// Campaigns on other events, running beside it as they would in a real workspace.
fn idle_campaign(n: usize) -> String {
    format!(
        "name: idle_{n}\ntransitions:\n  - {{from: start, to: carting, event: event_{n}}}\n  - {{from: carting, to: abandoned, after: 4h, without: event_{n}}}\nactions:\n  abandoned:\n    - {{channel: email, template: t{n}}}\n"
    )
}

pub async fn run(args: CampaignsArgs) -> anyhow::Result<()> {
    let settings = Settings::from_env(&modules::all_vars())?;
    let dir = tempfile::tempdir()?;
    let (url, server) = super::nats(&settings, &dir.path().join("nats")).await?;
    let store = super::embedded_store(&dir.path().join("store"))?;
    cairn_segmenter::campaigns::saved::put(&store, OFFER, 0).await?;
    for n in 0..9 {
        cairn_segmenter::campaigns::saved::put(&store, &idle_campaign(n), 0).await?;
    }
    let context = super::context(&url, &[])?;
    let module = cairn_segmenter::start(&context, store).await?;
    let served = super::serve(module, &context).await?;
    let bus = Bus::connect(&BusConfig::for_url(&url), "cairn-bench").await?;
    println!(
        "cairn bench campaigns: 10 campaigns (one moved by every event), {} profiles, {} events/s for {} s",
        args.profiles, args.rate, args.seconds
    );
    let profiles: Vec<(String, String)> = (0..args.profiles)
        .map(|n| {
            let profile = super::segments::profile(n);
            let id = profile["id"].as_str().unwrap_or_default().to_string();
            (id, profile.to_string())
        })
        .collect();

    let run = super::LatencyRun::default();
    let collector = run
        .listen(&bus, "campaign.web.>", |payload| {
            let action = Action::decode(payload).ok()?;
            let params: serde_json::Value = serde_json::from_str(&action.params_json).ok()?;
            params["item"].as_str().map(str::to_string)
        })
        .await?;
    let change = |n: usize| {
        let (id, profile_json) = &profiles[n % profiles.len()];
        let item = format!("item-{n}");
        let raw = json!({"type": "track", "messageId": format!("bench-{n}"), "anonymousId": id,
                         "event": "Product Viewed", "properties": {"item": item, "price": 20}});
        let changed = ProfileChanged {
            profile_id: id.clone(),
            version: (n / profiles.len() + 1) as u64,
            changed_fields: vec!["last_seen".to_string(), "events.Product Viewed".to_string()],
            message_id: format!("bench-{n}"),
            at: Some(std::time::SystemTime::now().into()),
            profile_json: profile_json.clone(),
            session_id: String::new(),
            session_index: 0,
            event: Some(IdentifiedEvent {
                envelope: Some(Envelope {
                    raw: Bytes::from(raw.to_string()),
                    received_at: Some(std::time::SystemTime::now().into()),
                    source: "bench".to_string(),
                    message_id: format!("bench-{n}"),
                    r#type: EventType::Track as i32,
                    partition_key: id.clone(),
                    ..Default::default()
                }),
                profile_id: id.clone(),
                identifiers: Vec::new(),
            }),
        };
        let message = Outgoing {
            subject: subjects::profiles_changed(bus.partitions().of(id)),
            message_id: Some(format!("changed/{id}/{n}")),
            headers: async_nats::HeaderMap::new(),
            payload: Bytes::from(changed.encode_to_vec()),
        };
        (item, message)
    };
    // Every profile's first journey is made before the clock starts.
    let warm_up = profiles.len();
    let (latencies, (cairn_cpu, nats_cpu)) = run
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
    let (p50, p99) = (
        super::percentile_ms(&latencies, 0.50),
        super::percentile_ms(&latencies, 0.99),
    );
    println!(
        "  profiles.changed (with its event) -> campaign action at {} events/s ({} measured): p50 {p50:.2} ms, p99 {p99:.2} ms",
        args.rate,
        latencies.len()
    );
    println!("  {}", super::cpu_line("event", cairn_cpu, nats_cpu));
    println!(
        "{}",
        json!({"event_to_action_p50_ms": (p50 * 100.0).round() / 100.0, "event_to_action_p99_ms": (p99 * 100.0).round() / 100.0, "cairn_cpu_us_per_event": cairn_cpu.map(f64::round), "nats_cpu_us_per_event": nats_cpu.map(f64::round), "rate": args.rate, "measured": latencies.len()})
    );
    Ok(())
}
