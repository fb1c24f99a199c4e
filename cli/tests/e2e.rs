//! End to end: the mesh as a cluster runs it (see `common::mesh`), driven only from
//! outside, like a website and its marketers: the Segment HTTP API, the personalization
//! API, the CLI over gRPC, SMTP, and Prometheus metrics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::mesh::{CART, Mesh, header};
use serde_json::{Value, json};

const WELCOME: &str = r#"
name: welcome
audience: "visit_count <= 1"
transitions:
  - {from: start, to: welcomed, event: page, when: 'properties.path == "/"'}
actions:
  welcomed:
    - {channel: web, content: "Register and win $5"}
"#;

const SECTION: &str = r#"
name: section_offer
audience: "EXISTS email"
reentry: always
transitions:
  - {from: start, to: offered, event: page, when: "EXISTS properties.section"}
actions:
  offered:
    - {channel: web, content: "1+1 on {section}", params: {section: event.properties.section}}
"#;

const CHECKOUT: &str = r#"
name: vip_checkout
audience: vip
reentry: always
transitions:
  - {from: start, to: recommended, event: Checkout Started, when: "properties.cart_items < 4"}
actions:
  recommended:
    - {channel: web, content: "Picked for you in {topic}", params: {topic: profile.facts.content.top_topic, items: profile.facts.content.recommended}}
"#;

fn page(id: &str, anonymous_id: &str, properties: Value) -> Value {
    json!({"type": "page", "messageId": id, "anonymousId": anonymous_id, "properties": properties})
}

fn track(id: &str, anonymous_id: &str, event: &str, properties: Value) -> Value {
    json!({"type": "track", "messageId": id, "anonymousId": anonymous_id, "event": event,
           "properties": properties})
}

fn identify(id: &str, anonymous_id: &str, email: &str) -> Value {
    json!({"type": "identify", "messageId": id, "anonymousId": anonymous_id,
           "traits": {"email": email}})
}

const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";
const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_as_separate_processes_does_what_the_seeds_describe() {
    let Some(mesh) = Mesh::start(&[]).await else {
        return;
    };
    // What a marketer sets up, through the CLI.
    mesh.put_cart_reminder_template().await;
    mesh.cli(
        &["segment", "create", "--name", "vip"],
        Some("FILTER event_count.`Order Completed`.all >= 2"),
    )
    .await;
    for campaign in [CART, WELCOME, SECTION, CHECKOUT] {
        mesh.cli(&["campaign", "create"], Some(campaign)).await;
    }
    mesh.cli(
        &[
            "suppression",
            "add",
            "quiet@example.com",
            "--reason",
            "asked by phone",
        ],
        None,
    )
    .await;
    // Running replicas pick campaigns up within a second.
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    // 1. A first-time visitor on the landing page is asked to register; one elsewhere
    // is not.
    mesh.send(json!([
        page("w1", "visitor-1", json!({"path": "/"})),
        page("w2", "visitor-2", json!({"path": "/shoes"})),
    ]))
    .await;
    let welcomed = mesh
        .shown_when("anonymousId=visitor-1", |answer| {
            answer["content"].as_array().is_some_and(|c| !c.is_empty())
        })
        .await;
    assert_eq!(welcomed["content"][0]["content"], "Register and win $5");
    assert_eq!(
        mesh.shown("anonymousId=visitor-2").await["content"],
        json!([])
    );

    // 2. A known user viewing a section is offered a deal on it, each time; a stranger
    // is not.
    mesh.send(json!([identify("s1", "known-1", "tom@example.com")]))
        .await;
    mesh.profile_when(&["--email", "tom@example.com"], |_| true)
        .await;
    mesh.send(json!([
        page("s2", "known-1", json!({"section": "shoes"})),
        page("s3", "stranger-1", json!({"section": "shoes"})),
    ]))
    .await;
    mesh.shown_when("anonymousId=known-1", |answer| {
        answer["content"][0]["content"] == "1+1 on shoes"
    })
    .await;
    mesh.send(json!([page("s4", "known-1", json!({"section": "bags"}))]))
        .await;
    mesh.shown_when("anonymousId=known-1", |answer| {
        answer["content"][0]["content"] == "1+1 on bags"
    })
    .await;
    assert_eq!(
        mesh.shown("anonymousId=stranger-1").await["content"],
        json!([])
    );

    // 3. A VIP (two orders) at checkout with a small cart is shown pages of their
    // topics that others read; a bigger cart is not.
    let reading = |id: &str, who: &str, title: &str| {
        page(
            id,
            who,
            json!({"url": format!("https://shop.example.com/{id}"), "title": title}),
        )
    };
    mesh.send(json!([
        reading("r4", "other-1", "Trail running shoes review"),
        reading("r5", "other-2", "Trail shoes for mud"),
        reading("r6", "other-2", "Garden benches"),
    ]))
    .await;
    mesh.send(json!([
        identify("v0", "vip-1", "vip@example.com"),
        track("v1", "vip-1", "Order Completed", json!({})),
        track("v2", "vip-1", "Order Completed", json!({})),
        reading("r1", "vip-1", "Trail running shoes"),
        reading("r2", "vip-1", "Running shoes for trails"),
    ]))
    .await;
    mesh.profile_when(&["--anonymous-id", "vip-1"], |profile| {
        profile["segments"].get("vip").is_some()
            && profile["facts"]["content"]["recommended"]
                .as_array()
                .is_some_and(|items| !items.is_empty())
    })
    .await;
    mesh.send(json!([track(
        "v3",
        "vip-1",
        "Checkout Started",
        json!({"cart_items": 6})
    )]))
    .await;
    mesh.send(json!([track(
        "v4",
        "vip-1",
        "Checkout Started",
        json!({"cart_items": 2})
    )]))
    .await;
    let picked = mesh
        .shown_when("anonymousId=vip-1", |answer| {
            answer["content"].as_array().is_some_and(|c| !c.is_empty())
        })
        .await;
    let shown = picked["content"][0]["content"].as_str().unwrap();
    assert!(shown.starts_with("Picked for you in "), "{picked}");
    assert_ne!(shown, "Picked for you in ", "{picked}");
    let items = picked["content"][0]["params"]["items"].as_array().unwrap();
    assert!(!items.is_empty(), "{picked}");
    for item in items {
        let url = item["url"].as_str().unwrap();
        assert!(url.ends_with("/r4") || url.ends_with("/r5"), "{picked}");
    }

    // 4. Cross-device: two cookies, two cities, then the same email on both: one
    // profile with both devices and both cities.
    let on = |agent: &str, ip: &str| json!({"userAgent": agent, "ip": ip});
    let mut laptop = page("d1", "laptop-cookie", json!({"path": "/bags"}));
    laptop["context"] = on(FIREFOX, "81.2.69.142");
    let mut phone = page("d2", "phone-cookie", json!({"path": "/bags"}));
    phone["context"] = on(IPHONE, "89.160.20.112");
    mesh.send(json!([laptop, phone])).await;
    let mut on_laptop = identify("d3", "laptop-cookie", "ann@example.com");
    on_laptop["context"] = on(FIREFOX, "81.2.69.142");
    let mut on_phone = identify("d4", "phone-cookie", "ann@example.com");
    on_phone["context"] = on(IPHONE, "89.160.20.112");
    mesh.send(json!([on_laptop, on_phone])).await;
    let ann = mesh
        .profile_when(&["--email", "ann@example.com"], |profile| {
            profile["devices"].as_array().is_some_and(|d| d.len() == 2)
                && profile["cities"].as_array().is_some_and(|c| c.len() == 2)
        })
        .await;
    let mut cities: Vec<&str> = ann["cities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|place| place["city"].as_str().unwrap())
        .collect();
    cities.sort();
    assert_eq!(cities, ["Linköping", "London"], "{ann}");
    for cookie in ["laptop-cookie", "phone-cookie"] {
        let found = mesh
            .profile_when(&["--anonymous-id", cookie], |_| true)
            .await;
        assert_eq!(found["id"], ann["id"], "{cookie} leads elsewhere");
    }

    // 5. Carts left by three people with an address: one gets the reminder, one who
    // asked for no more emails gets none, and a crawler gets no campaign.
    let cart = |id: &str, who: &str, agent: &str| {
        let mut event = track(id, who, "add_to_cart", json!({"cart_items": 1}));
        event["context"] = json!({"userAgent": agent});
        event
    };
    let mut crawler_identify = identify("c5", "crawler-1", "crawler@example.com");
    crawler_identify["context"] = json!({"userAgent": GOOGLEBOT});
    mesh.send(json!([
        identify("c1", "shopper-1", "sue@example.com"),
        identify("c2", "quiet-1", "quiet@example.com"),
        crawler_identify,
    ]))
    .await;
    for email in [
        "sue@example.com",
        "quiet@example.com",
        "crawler@example.com",
    ] {
        mesh.profile_when(&["--email", email], |_| true).await;
    }
    mesh.send(json!([
        cart("c3", "shopper-1", FIREFOX),
        cart("c4", "quiet-1", FIREFOX),
        cart("c6", "crawler-1", GOOGLEBOT),
    ]))
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while mesh.emails_to("sue@example.com").is_empty()
        || mesh.emails_counted("suppressed").await == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "after 60 s: {} emails to sue, {} suppressed",
            mesh.emails_to("sue@example.com").len(),
            mesh.emails_counted("suppressed").await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reminder = mesh.emails_to("sue@example.com");
    assert_eq!(reminder.len(), 1);
    assert_eq!(
        header(&reminder[0], "Subject").as_deref(),
        Some("Still thinking it over?"),
        "{}",
        reminder[0]
    );
    assert!(mesh.emails_to("quiet@example.com").is_empty());
    assert!(mesh.emails_to("crawler@example.com").is_empty());

    // The reminder's one-click unsubscribe link works: the address is suppressed.
    let link = header(&reminder[0], "List-Unsubscribe")
        .and_then(|value| {
            value
                .strip_prefix('<')?
                .strip_suffix('>')
                .map(str::to_string)
        })
        .expect("a List-Unsubscribe link");
    let response = reqwest::Client::new().post(&link).send().await.unwrap();
    assert_eq!(response.status(), 200, "{link}");
    let suppressed = mesh
        .cli(&["suppression", "get", "sue@example.com"], None)
        .await;
    assert!(suppressed.contains("unsubscribed"), "{suppressed}");
    eprintln!(
        "e2e: shown to the VIP {shown:?} with {} items; ann's devices {} and cities {cities:?}; \
         {} emails received, {} suppressed",
        items.len(),
        ann["devices"].as_array().unwrap().len(),
        mesh.smtp.received_count(),
        mesh.emails_counted("suppressed").await
    );

    // Nothing any process logged names a person: addresses appear only as digests, the
    // visitors' IP addresses not at all.
    let logs = mesh.stop().await;
    for (name, log) in &logs {
        assert!(
            log.lines().count() > 10,
            "{name} logged at debug level: {log}"
        );
        for personal in ["@example.com", "81.2.69.142", "89.160.20.112"] {
            if let Some(line) = log.lines().find(|line| line.contains(personal)) {
                panic!("{name} logged {personal}: {line}");
            }
        }
    }
}
