//! `cairn up --demo`: once the mesh is ready, demo templates, segments and campaigns are
//! saved in it, and a trickle of shoppers (and a crawler) visits through its public
//! HTTP API, as a website's tag would send them. Within a minute there are profiles,
//! segment members, web content and emails in the outbox to look at.

use std::time::Duration;

use anyhow::Context as _;
use cairn_proto::campaign::v1 as campaign_pb;
use cairn_proto::campaign::v1::campaigns_client::CampaignsClient;
use cairn_proto::dispatch::v1 as dispatch_pb;
use cairn_proto::dispatch::v1::templates_client::TemplatesClient;
use cairn_proto::segment::v1 as segment_pb;
use cairn_proto::segment::v1::segments_client::SegmentsClient;
use cairn_runtime::Settings;
use cairn_runtime::host::{ADMIN_ADDR, HTTP_ADDR};
use serde_json::{Value, json};

use crate::admin::{AdminConnection, explain};
use crate::traffic;

/// The cart reminder, in MJML.
const CART_REMINDER: &str = r#"<mjml>
  <mj-body>
    <mj-section>
      <mj-column>
        <mj-text font-size="20px">Hi {{ profile.traits.name }},</mj-text>
        <mj-text>You left something in your cart. The {{ params.section }} are still waiting for you.</mj-text>
        <mj-button href="https://shop.example.com/{{ params.section }}">Back to the {{ params.section }}</mj-button>
        <mj-text font-size="12px"><a href="{{ unsubscribe_url }}">Unsubscribe</a></mj-text>
      </mj-column>
    </mj-section>
  </mj-body>
</mjml>"#;

/// Segments: name and FilterQL.
const SEGMENTS: &[(&str, &str)] = &[
    (
        "demo_engaged",
        "FILTER AND (event_count.page.all >= 3, EXISTS email)",
    ),
    ("demo_buyers", "FILTER event_count.order_completed.all >= 1"),
    (
        "demo_business",
        r#"FILTER facts.activity.customer_type == "b2b""#,
    ),
];

/// Campaigns, in YAML.
const CAMPAIGNS: &[&str] = &[
    r#"
name: demo_cart_recovery
description: An email 20 seconds after a cart is left without an order (demo timing).
audience: "EXISTS email"
reentry: always
transitions:
  - {from: start, to: carting, event: add_to_cart}
  - {from: carting, to: bought, event: order_completed}
  - {from: carting, to: abandoned, after: 20s, without: add_to_cart}
actions:
  abandoned:
    - {channel: email, template: demo_cart_reminder, params: {section: profile.traits.favourite_section}}
"#,
    r#"
name: demo_welcome
description: New visitors on the home page are offered $5 for registering.
audience: "visit_count <= 1"
transitions:
  - {from: start, to: welcomed, event: page, when: 'properties.path == "/"'}
actions:
  welcomed:
    - {channel: web, content: "Register and win $5"}
"#,
];

/// Demo shoppers.
const SHOPPERS: usize = 40;

/// Runs the demo until the process ends: waits for the mesh, saves the definitions,
/// then sends traffic. A failure is reported and ends the demo, not the mesh.
pub async fn run(settings: Settings, write_key: String) {
    if let Err(err) = demo(&settings, &write_key).await {
        eprintln!("demo: stopped: {err:#}");
    }
}

/// An address the mesh's listeners answer on (a wildcard becomes loopback).
fn reachable(addr: &str) -> String {
    addr.replace("0.0.0.0", "127.0.0.1")
        .replace("[::]", "[::1]")
}

async fn demo(settings: &Settings, write_key: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let ready = format!("http://{}/readyz", reachable(&settings.string(&ADMIN_ADDR)));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(response) = http.get(&ready).send().await
            && response.status().is_success()
        {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the mesh was not ready within two minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    save_definitions(settings).await?;
    println!(
        "demo: saved templates, segments ({}) and campaigns; {SHOPPERS} shoppers and a crawler are visiting",
        SEGMENTS
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let batch_url = format!(
        "http://{}/v1/batch",
        reachable(&settings.string(&HTTP_ADDR))
    );
    let mut sent = 0u64;
    loop {
        let batch: Vec<Value> = (0..4)
            .map(|_| traffic::next_event(&mut rand::rng(), SHOPPERS))
            .collect();
        let response = http
            .post(&batch_url)
            .basic_auth(write_key, Some(""))
            .json(&json!({ "batch": batch }))
            .send()
            .await
            .context("posting demo events")?;
        if !response.status().is_success() {
            eprintln!("demo: the collector answered {}", response.status());
        }
        sent += batch.len() as u64;
        if sent.is_multiple_of(400) {
            println!("demo: {sent} events sent");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn save_definitions(settings: &Settings) -> anyhow::Result<()> {
    let connection = AdminConnection::open(settings).await?;
    let mut templates = TemplatesClient::new(connection.channel.clone());
    templates
        .put(connection.request(dispatch_pb::PutRequest {
            template: Some(dispatch_pb::Template {
                name: "demo_cart_reminder".into(),
                subject: "{{ profile.traits.name }}, your {{ params.section }} are waiting".into(),
                text: "Hi {{ profile.traits.name }},\n\nyou left something in your cart: the {{ params.section }} are still waiting.\n\nUnsubscribe: {{ unsubscribe_url }}\n".into(),
                html: CART_REMINDER.into(),
                list: "demo".into(),
                ..Default::default()
            }),
        })?)
        .await
        .map_err(explain)?;
    let mut segments = SegmentsClient::new(connection.channel.clone());
    for (name, filter) in SEGMENTS {
        segments
            .put(connection.request(segment_pb::PutRequest {
                name: (*name).into(),
                filter: (*filter).into(),
                description: "cairn up --demo".into(),
                ..Default::default()
            })?)
            .await
            .map_err(explain)?;
    }
    let mut campaigns = CampaignsClient::new(connection.channel.clone());
    for source in CAMPAIGNS {
        campaigns
            .put(connection.request(campaign_pb::PutRequest {
                source: (*source).into(),
            })?)
            .await
            .map_err(explain)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_definitions_are_valid() {
        for (name, filter) in SEGMENTS {
            let parsed =
                cairn_filterql::parse(filter).unwrap_or_else(|err| panic!("{name}: {err:?}"));
            let problems =
                cairn_filterql::check(&parsed, &cairn_profile_store::profile::ProfileSchema);
            assert!(problems.is_empty(), "{name}: {problems:?}");
        }
        for source in CAMPAIGNS {
            cairn_segmenter::campaigns::Campaign::parse(source)
                .unwrap_or_else(|err| panic!("{err}\n{source}"));
        }
        let template = cairn_dispatcher::templates::Template {
            name: "demo_cart_reminder".into(),
            subject: "x".into(),
            text: "x".into(),
            html: Some(CART_REMINDER.into()),
            list: Some("demo".into()),
            version: 0,
            updated_ms: 0,
        };
        template.check().unwrap_or_else(|err| panic!("{err}"));
    }
}
