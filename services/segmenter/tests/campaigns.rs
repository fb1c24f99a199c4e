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
use common::{Mesh, mesh_with};
use prost::Message as _;
use serde_json::{Value, json};

/// Cart abandonment, its timer scaled down to seconds.
const CART: &str = r#"
name: cart_recovery
transitions:
  - {from: start, to: carting, event: add_to_cart}
  - {from: carting, to: bought, event: order_completed}
  - {from: carting, to: abandoned, after: 3s, without: add_to_cart}
actions:
  abandoned:
    - {channel: email, template: cart_reminder, params: {section: profile.traits.favourite}}
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_event_puts_the_timer_off_and_buying_sends_nothing() {
    let mesh = mesh_with(&[], &[CART]).await;
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
    let mesh = mesh.restart_with_nats_down(Duration::from_secs(4)).await;

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
        .put(put(&CART.replace("after: 3s", "after: soon")))
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
