//! Campaign journeys against a real nats-server: events sent to the collector move
//! profiles through a campaign, inactivity timers are durable message schedules, and
//! each action is published once for its channel.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use cairn_bus::streams;
use cairn_proto::campaign::v1::{Action, TimerDue};
use cairn_segmenter::definitions::SEGMENTS;
use cairn_store::Store as _;
use cairn_testkit::stream_messages;
use common::{Mesh, VIP, mesh_with};
use prost::Message as _;
use serde_json::{Value, json};

/// Cart abandonment, its timer scaled down to seconds.
const CART: &str = r#"
name: cart_recovery
transitions:
  - {from: start, to: carting, event: add_to_cart}
  - {from: carting, to: bought, event: order_completed}
  - {from: carting, to: abandoned, after: 5s, without: add_to_cart}
actions:
  abandoned:
    - {channel: email, template: cart_reminder, params: {section: profile.traits.favourite}, send_at: best_hour}
"#;

fn track(id: &str, event: &str) -> Value {
    json!({"type": "track", "messageId": id, "anonymousId": "shopper-1", "event": event,
           "properties": {"cart_items": 2}})
}

fn identify(id: &str) -> Value {
    json!({"type": "identify", "messageId": id, "anonymousId": "shopper-1",
           "traits": {"favourite": "shoes"}})
}

impl Mesh {
    /// The emails campaigns asked for so far.
    async fn sends(&self) -> Vec<Action> {
        stream_messages(&self.bus, streams::CAMPAIGNS)
            .await
            .into_iter()
            .filter(|message| message.subject.starts_with("campaign.sends."))
            .map(|message| Action::decode(message.payload).unwrap())
            .collect()
    }

    /// The timers that came due so far.
    async fn due(&self) -> Vec<TimerDue> {
        stream_messages(&self.bus, streams::CAMPAIGNS)
            .await
            .into_iter()
            .filter(|message| message.subject.starts_with("campaign.due."))
            .map(|message| TimerDue::decode(message.payload).unwrap())
            .collect()
    }

    /// The journey of the one profile through `campaign`, as stored.
    async fn journey(&self, campaign: &str) -> Value {
        let profile_id = self.profile().await["id"].as_str().unwrap().to_string();
        let record = self
            .store
            .get(&SEGMENTS, format!("j:{campaign}:{profile_id}").as_bytes())
            .await
            .unwrap()
            .unwrap();
        serde_json::from_slice::<Value>(&record.value).unwrap()["journey"].clone()
    }

    /// Waits until `count` timers came due and the campaigns are done with them.
    async fn wait_due(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.due().await.len() < count {
            assert!(Instant::now() < deadline, "{count} timers never came due");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.campaigns_idle().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_cart_sends_one_email_after_the_timeout() {
    let mesh = mesh_with(&[], &[CART]).await;
    mesh.send(json!([identify("i1"), track("c1", "add_to_cart")]))
        .await;
    assert_eq!(mesh.journey("cart_recovery").await["state"], "carting");
    assert!(mesh.sends().await.is_empty());

    mesh.wait_due(1).await;
    let sends = mesh.sends().await;
    assert_eq!(sends.len(), 1, "{sends:?}");
    let send = &sends[0];
    assert_eq!(
        (
            send.campaign.as_str(),
            send.state.as_str(),
            send.channel.as_str()
        ),
        ("cart_recovery", "abandoned", "email")
    );
    assert_eq!(send.target, "cart_reminder");
    assert_eq!(send.send_at, "best_hour");
    assert_eq!(
        serde_json::from_str::<Value>(&send.params_json).unwrap(),
        json!({"section": "shoes"})
    );
    assert_eq!(send.entry, 1);
    assert!(!send.idempotency_key.is_empty());
    assert_eq!(mesh.journey("cart_recovery").await["state"], "abandoned");

    // The timer delivered again (as after a crash before its ack) sends nothing more.
    let due = mesh.due().await.remove(0);
    mesh.bus
        .publish_all(vec![cairn_bus::Outgoing {
            subject: cairn_bus::subjects::campaign_due(mesh.bus.partitions().of(&due.profile_id)),
            message_id: Some("again".to_string()),
            headers: async_nats::HeaderMap::new(),
            payload: due.encode_to_vec().into(),
        }])
        .await
        .unwrap();
    mesh.campaigns_idle().await;
    assert_eq!(mesh.sends().await.len(), 1);
}

/// Campaigns are for people: a crawler's cart starts no journey, and sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crawler_gets_no_campaign() {
    let mesh = mesh_with(&[], &[CART]).await;
    let crawler = json!({"userAgent": "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"});
    let mut cart = track("c1", "add_to_cart");
    cart["context"] = crawler.clone();
    let mut person = track("p1", "add_to_cart");
    person["anonymousId"] = json!("shopper-2");
    person["context"] = json!({"userAgent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"});
    mesh.send(json!([cart, person])).await;
    mesh.campaigns_idle().await;
    let journey_of = |profile_id: String| {
        let store = mesh.store.clone();
        async move {
            let key = format!("j:cart_recovery:{profile_id}");
            store.get(&SEGMENTS, key.as_bytes()).await.unwrap()
        }
    };
    let crawler_id = profile_of(&mesh, "shopper-1").await;
    let person_id = profile_of(&mesh, "shopper-2").await;
    assert!(
        journey_of(crawler_id).await.is_none(),
        "the crawler entered"
    );
    assert!(journey_of(person_id.clone()).await.is_some());
    mesh.wait_due(1).await;
    let sends = mesh.sends().await;
    assert_eq!(sends.len(), 1, "{sends:?}");
    assert_eq!(sends[0].profile_id, person_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_event_puts_the_timer_off_and_buying_sends_nothing() {
    // The second cart must be in well before the first timer fires, even when the
    // machine is busy and the mesh takes seconds to settle: a longer timeout.
    let cart = CART.replace("after: 5s", "after: 8s");
    let mesh = mesh_with(&[], &[&cart]).await;
    mesh.send(json!([track("c1", "add_to_cart")])).await;
    let first = mesh.journey("cart_recovery").await["timers"]["2"].clone();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    mesh.send(json!([track("c2", "add_to_cart")])).await;
    let second = mesh.journey("cart_recovery").await["timers"]["2"].clone();
    assert!(
        second.as_i64().unwrap() > first.as_i64().unwrap(),
        "{first} {second}"
    );

    // The first timer was replaced: past the second it would have fired at, nothing.
    let first_fire_ms = first.as_i64().unwrap().div_euclid(1000) * 1000 + 1000;
    let wait = first_fire_ms + 300 - cairn_runtime::clock::now_ms();
    tokio::time::sleep(Duration::from_millis(wait.max(0) as u64)).await;
    mesh.campaigns_idle().await;
    assert!(mesh.due().await.is_empty());
    assert_eq!(mesh.journey("cart_recovery").await["state"], "carting");

    // Bought before the timer: when it comes due, it is stale and sends nothing.
    mesh.send(json!([track("o1", "order_completed")])).await;
    assert_eq!(mesh.journey("cart_recovery").await["state"], "bought");
    mesh.wait_due(1).await;
    assert!(mesh.sends().await.is_empty());
    assert_eq!(mesh.journey("cart_recovery").await["state"], "bought");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_survives_the_service_and_nats_going_down_and_fires_once() {
    let mesh = mesh_with(&[], &[CART]).await;
    mesh.send(json!([track("c1", "add_to_cart")])).await;
    assert_eq!(mesh.journey("cart_recovery").await["state"], "carting");

    // Between schedule and fire: every service stops, and so does NATS, past the due time.
    let mesh = mesh.restart_with_nats_down(Duration::from_secs(6)).await;

    mesh.wait_due(1).await;
    assert_eq!(mesh.sends().await.len(), 1);
    assert_eq!(mesh.due().await.len(), 1, "the timer fired once");
    assert_eq!(mesh.journey("cart_recovery").await["state"], "abandoned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaigns_are_saved_checked_paused_and_counted() {
    use cairn_proto::campaign::v1 as pb;
    use cairn_proto::campaign::v1::campaigns_client::CampaignsClient;

    let mesh = mesh_with(&[], &[]).await;
    let mut client = CampaignsClient::connect(mesh.host.grpc_url())
        .await
        .unwrap();
    let put = |source: &str| {
        common::with(pb::PutRequest {
            source: source.to_string(),
        })
    };

    // Problems are named by where they are; nothing is saved.
    let err = client
        .put(put(&CART.replace("after: 5s", "after: soon")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("transitions[2].after"), "{err:?}");
    let err = client
        .put(put(&format!("audience: vips\n{CART}")))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("there is no segment vips"),
        "{err:?}"
    );
    let listed = client.list(common::with(pb::ListRequest {})).await.unwrap();
    assert!(listed.into_inner().campaigns.is_empty());
    // Without a token: refused.
    let err = client
        .put(pb::PutRequest {
            source: CART.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    let saved = client.put(put(CART)).await.unwrap().into_inner();
    assert_eq!(saved.campaign.unwrap().name, "cart_recovery");
    let found = client
        .get(common::with(pb::GetRequest {
            name: "cart_recovery".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.campaign.unwrap().source, CART);
    let err = client
        .get(common::with(pb::GetRequest {
            name: "nothing".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    // Paused: events move nobody.
    let paused = client
        .pause(common::with(pb::PauseRequest {
            name: "cart_recovery".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(paused.campaign.unwrap().paused);
    tokio::time::sleep(Duration::from_millis(1100)).await; // replicas see it within a second
    mesh.send(json!([identify("i1"), track("c1", "add_to_cart")]))
        .await;
    let stats_request = || {
        common::with(pb::StatsRequest {
            name: "cart_recovery".into(),
        })
    };
    let stats = client.stats(stats_request()).await.unwrap().into_inner();
    assert_eq!(stats.profiles, 0);

    // Resumed: the next add_to_cart enters, and the timer abandons the cart.
    client
        .resume(common::with(pb::ResumeRequest {
            name: "cart_recovery".into(),
        }))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    mesh.send(json!([track("c2", "add_to_cart")])).await;
    mesh.wait_due(1).await;
    let stats = client.stats(stats_request()).await.unwrap().into_inner();
    assert_eq!(
        (
            stats.profiles,
            stats.entered,
            stats.actions_sent,
            stats.suppressed
        ),
        (1, 1, 1, 0)
    );
    assert_eq!(
        stats.in_state.into_iter().collect::<Vec<_>>(),
        vec![("abandoned".to_string(), 1)]
    );
}

impl Mesh {
    /// The web content campaigns have for profiles so far: (campaign, target, params).
    async fn web(&self) -> Vec<(String, String, Value)> {
        stream_messages(&self.bus, streams::CAMPAIGNS)
            .await
            .into_iter()
            .filter(|message| message.subject.starts_with("campaign.web."))
            .map(|message| {
                let action = Action::decode(message.payload).unwrap();
                (
                    action.campaign,
                    action.target,
                    serde_json::from_str(&action.params_json).unwrap(),
                )
            })
            .collect()
    }
}

fn page(id: &str, anonymous_id: &str, properties: Value) -> Value {
    json!({"type": "page", "messageId": id, "anonymousId": anonymous_id, "properties": properties})
}

/// The seeds' first scenario: a first-time visitor landing on the landing page is asked
/// to register, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_time_visitor_on_the_landing_page_is_asked_to_register() {
    const WELCOME: &str = r#"
name: welcome
audience: "visit_count <= 1"
transitions:
  - {from: start, to: welcomed, event: page, when: 'properties.path == "/"'}
actions:
  welcomed:
    - {channel: web, content: "Register and win $5"}
"#;
    let mesh = mesh_with(&[], &[WELCOME]).await;
    mesh.send(json!([
        page("v1", "visitor-1", json!({"path": "/"})),
        page("v2", "visitor-2", json!({"path": "/shoes"})),
    ]))
    .await;
    mesh.send(json!([page("v3", "visitor-1", json!({"path": "/"}))]))
        .await;
    assert_eq!(
        mesh.web().await,
        vec![(
            "welcome".to_string(),
            "Register and win $5".to_string(),
            json!({})
        )]
    );
    // The site asks what to show each visitor now.
    assert_eq!(
        mesh.shown("anonymousId=visitor-1").await,
        vec!["Register and win $5"]
    );
    assert!(mesh.shown("anonymousId=visitor-2").await.is_empty());
}

/// The second: a known user viewing a store section is offered a deal on that section,
/// every time; an anonymous visitor is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_user_viewing_a_section_gets_an_offer_naming_it() {
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
    let mesh = mesh_with(&[], &[SECTION]).await;
    mesh.send(json!([
        {"type": "identify", "messageId": "i1", "anonymousId": "known-1", "userId": "u1",
         "traits": {"email": "tom@example.com"}},
    ]))
    .await;
    mesh.send(json!([
        page("k1", "known-1", json!({"section": "shoes"})),
        page("a1", "stranger-1", json!({"section": "shoes"})),
    ]))
    .await;
    mesh.send(json!([page("k2", "known-1", json!({"section": "bags"}))]))
        .await;
    let offers: Vec<Value> = mesh
        .web()
        .await
        .into_iter()
        .map(|(campaign, target, params)| {
            assert_eq!(
                (campaign.as_str(), target.as_str()),
                ("section_offer", "1+1 on {section}")
            );
            params
        })
        .collect();
    assert_eq!(
        offers,
        vec![json!({"section": "shoes"}), json!({"section": "bags"})]
    );
    // The latest offer, rendered, whichever id the site knows the visitor by.
    let (_, by_user) = mesh.personalize_server_side("userId=u1").await;
    assert_eq!(by_user["content"][0]["content"], "1+1 on bags", "{by_user}");
    assert_eq!(mesh.shown("anonymousId=known-1").await, vec!["1+1 on bags"]);
    assert!(mesh.shown("anonymousId=stranger-1").await.is_empty());
}

/// The third: a VIP (a segment on purchases) reaching checkout with fewer than 4 items
/// is shown items from the topics they read most; a bigger cart, or someone not VIP,
/// sees nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vip_at_checkout_with_a_small_cart_gets_recommendations_from_their_topics() {
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
    let mesh = mesh_with(&[("vip", VIP)], &[CHECKOUT]).await;
    let order = |id: &str, who: &str| json!({"type": "track", "messageId": id, "anonymousId": who, "event": "Order Completed"});
    let reading = |id: &str, who: &str, title: &str| {
        page(
            id,
            who,
            json!({"url": format!("https://shop.example.com/{id}"), "title": title}),
        )
    };
    let checkout = |id: &str, who: &str, items: u32| {
        json!({"type": "track", "messageId": id, "anonymousId": who, "event": "Checkout Started",
               "properties": {"cart_items": items}})
    };
    // What others read makes the most read pages of each topic.
    mesh.send(json!([
        reading("r4", "other-1", "Trail running shoes review"),
        reading("r5", "other-2", "Trail shoes for mud"),
        reading("r6", "other-2", "Garden benches"),
    ]))
    .await;
    mesh.send(json!([
        order("o1", "vip-1"),
        order("o2", "vip-1"),
        order("o3", "plain-1"),
        reading("r1", "vip-1", "Trail running shoes"),
        reading("r2", "vip-1", "Running shoes for trails"),
        reading("r3", "plain-1", "Garden furniture for small patios"),
    ]))
    .await;
    mesh.send(json!([
        checkout("c1", "vip-1", 6),
        checkout("c2", "plain-1", 2),
    ]))
    .await;
    assert!(mesh.web().await.is_empty());
    mesh.send(json!([checkout("c3", "vip-1", 2)])).await;

    let web = mesh.web().await;
    assert_eq!(web.len(), 1, "{web:?}");
    let (campaign, target, params) = &web[0];
    assert_eq!(
        (campaign.as_str(), target.as_str()),
        ("vip_checkout", "Picked for you in {topic}")
    );
    let topic = params["topic"].as_str().unwrap_or_default();
    assert!(!topic.is_empty(), "{params}");
    // The items: pages others read on the VIP's topics, none the VIP read.
    let items: Vec<&str> = params["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {params}"))
        .iter()
        .map(|item| item["url"].as_str().unwrap())
        .collect();
    assert!(!items.is_empty(), "{params}");
    for url in &items {
        assert!(
            url.ends_with("/r4") || url.ends_with("/r5"),
            "{url} is not a running page the VIP has not read: {params}"
        );
    }

    let (_, answer) = mesh.personalize("anonymousId=vip-1").await;
    assert_eq!(answer["segments"], json!(["vip"]), "{answer}");
    assert_eq!(
        answer["content"][0]["content"],
        format!("Picked for you in {topic}"),
        "{answer}"
    );
    assert_eq!(
        answer["content"][0]["params"]["items"], params["items"],
        "{answer}"
    );
    let (_, plain) = mesh.personalize("anonymousId=plain-1").await;
    assert_eq!(plain["content"], json!([]), "{plain}");
}

/// Entering a segment moves a journey, in the same handling as the change that made
/// the profile enter it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entering_a_segment_moves_a_journey_once() {
    const WELCOME_VIP: &str = r#"
name: welcome_vip
transitions:
  - {from: start, to: welcomed, entered: vip}
actions:
  welcomed:
    - {channel: web, content: "Welcome to the club"}
"#;
    let mesh = mesh_with(&[("vip", VIP)], &[WELCOME_VIP]).await;
    let order = |id: &str| json!({"type": "track", "messageId": id, "anonymousId": "buyer-1", "event": "Order Completed"});
    mesh.send(json!([order("o1")])).await;
    assert!(mesh.web().await.is_empty());
    mesh.send(json!([order("o2"), order("o3")])).await;
    assert!(mesh.redeliver_changes("again").await >= 3);
    mesh.campaigns_idle().await;
    let web = mesh.web().await;
    assert_eq!(web.len(), 1, "{web:?}");
    assert_eq!(web[0].1, "Welcome to the club");
    assert_eq!(mesh.journey("welcome_vip").await["state"], "welcomed");
}

/// A person forgotten leaves no journey behind, and their pending timer sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_person_has_no_journey_and_their_timer_sends_nothing() {
    let mesh = mesh_with(&[], &[CART]).await;
    mesh.send(json!([identify("i1"), track("c1", "add_to_cart")]))
        .await;
    let profile_id = mesh.profile().await["id"].as_str().unwrap().to_string();
    assert_eq!(mesh.journey("cart_recovery").await["state"], "carting");
    let mut profiles =
        cairn_proto::profile::v1::profiles_client::ProfilesClient::connect(mesh.host.grpc_url())
            .await
            .unwrap();
    profiles
        .delete(common::with(cairn_proto::profile::v1::DeleteRequest {
            profile_id: profile_id.clone(),
        }))
        .await
        .unwrap();
    cairn_testkit::wait_consumer_idle(&mesh.bus, streams::PROFILES, "segmenter_deleted").await;
    let key = format!("j:cart_recovery:{profile_id}");
    assert!(
        mesh.store
            .get(&SEGMENTS, key.as_bytes())
            .await
            .unwrap()
            .is_none()
    );
    mesh.wait_due(1).await;
    assert!(mesh.sends().await.is_empty());
}

/// The profile of anonymous id `value`, as the profile store finds it now.
async fn profile_of(mesh: &Mesh, value: &str) -> String {
    let identifier = cairn_profile_store::profile::Identifier {
        kind: "anonymous_id".to_string(),
        value: value.to_string(),
    };
    cairn_profile_store::store::lookup(&mesh.store, &identifier)
        .await
        .unwrap()
        .unwrap()
        .profile
        .id
}

/// Two profiles found to be one person: the journey goes over to the survivor, and its
/// timer, set again there, sends one email for the survivor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journey_follows_its_profile_into_a_merge() {
    let mesh = mesh_with(&[], &[CART]).await;
    // The phone is seen first, so its profile is the older one: the one that survives.
    mesh.send(json!([{"type": "page", "messageId": "p1", "anonymousId": "phone"}]))
        .await;
    mesh.send(json!([
        {"type": "identify", "messageId": "l1", "anonymousId": "laptop", "traits": {"email": "ann@example.com"}},
        {"type": "track", "messageId": "c1", "anonymousId": "laptop", "event": "add_to_cart"},
    ]))
    .await;
    let (laptop, phone) = (
        profile_of(&mesh, "laptop").await,
        profile_of(&mesh, "phone").await,
    );
    assert_ne!(laptop, phone);
    // The phone signs in with the laptop's email: one person.
    mesh.send(json!([
        {"type": "track", "messageId": "link", "anonymousId": "phone", "event": "Signed In",
         "context": {"traits": {"email": "ann@example.com"}}},
    ]))
    .await;
    let survivor = profile_of(&mesh, "phone").await;
    assert_eq!(survivor, profile_of(&mesh, "laptop").await);
    // The older profile survives: the journey has to move.
    assert_eq!(survivor, phone);
    let merged = &laptop;
    let journey = |id: &str| format!("j:cart_recovery:{id}");
    assert!(
        mesh.store
            .get(&SEGMENTS, journey(merged).as_bytes())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        mesh.store
            .get(&SEGMENTS, journey(&survivor).as_bytes())
            .await
            .unwrap()
            .is_some()
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    while mesh.sends().await.is_empty() {
        assert!(Instant::now() < deadline, "the cart was never abandoned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await; // any second timer too
    mesh.campaigns_idle().await;
    let sends = mesh.sends().await;
    assert_eq!(sends.len(), 1, "{sends:?}");
    assert_eq!(sends[0].profile_id, survivor);
}

/// The webhook channel: each action POSTed signed, with its idempotency key, tried
/// again on a 5xx under the same key, dead-lettered on a 4xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_actions_are_signed_retried_and_dead_lettered() {
    let (receiver, url) = common::Receiver::start().await;
    let campaign = |name: &str, path: &str| {
        format!(
            "name: {name}\ntransitions:\n  - {{from: start, to: signed_up, event: Signed Up}}\nactions:\n  signed_up:\n    - {{channel: webhook, url: \"{url}/{path}\", params: {{plan: event.properties.plan}}}}\n"
        )
    };
    let (flaky, broken) = (campaign("hook", "flaky"), campaign("broken_hook", "broken"));
    let mesh = mesh_with(&[], &[&flaky, &broken]).await;
    mesh.send(json!([
        {"type": "track", "messageId": "s1", "anonymousId": "new-1", "event": "Signed Up",
         "properties": {"plan": "pro"}},
    ]))
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while receiver.requests("flaky").len() < 2 || receiver.requests("broken").is_empty() {
        assert!(Instant::now() < deadline, "the webhooks were not called");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cairn_testkit::wait_consumer_idle(
        &mesh.bus,
        streams::CAMPAIGNS,
        cairn_segmenter::campaigns::webhooks::SERVICE,
    )
    .await;

    // 500 first, then delivered: the same call twice, under one idempotency key.
    let calls = receiver.requests("flaky");
    assert_eq!(calls.len(), 2);
    let (headers, body, raw) = &calls[1];
    assert_eq!(headers["idempotency-key"], calls[0].0["idempotency-key"]);
    assert_eq!(body["campaign"], "hook");
    assert_eq!(body["state"], "signed_up");
    assert_eq!(body["params"], json!({"plan": "pro"}));
    let timestamp: i64 = headers["x-cairn-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        headers["x-cairn-signature"].to_str().unwrap(),
        cairn_segmenter::activation::signature(common::CAMPAIGN_SECRET, timestamp, raw)
    );

    // 400: not tried again, dead-lettered with the reason.
    assert_eq!(receiver.requests("broken").len(), 1);
    let dead: Vec<_> = stream_messages(&mesh.bus, streams::DEAD_LETTERS)
        .await
        .into_iter()
        .filter(|message| message.subject == "deadletter.segmenter_campaign_webhooks")
        .collect();
    assert_eq!(dead.len(), 1);
    let reason = dead[0]
        .headers
        .get(cairn_bus::worker::DEAD_LETTER_REASON)
        .unwrap()
        .as_str();
    assert!(reason.contains("400"), "{reason}");
}
