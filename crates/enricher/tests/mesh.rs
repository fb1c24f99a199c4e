//! The four enrichers in the mesh, against a real nats-server: events sent to
//! the collector come back as facts on the person's profile, once per event even when
//! an event is delivered again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cairn_bus::{Bus, Outgoing, streams};
use cairn_proto::identity::v1::Identifier;
use cairn_proto::profile::v1 as pb;
use cairn_proto::profile::v1::profiles_client::ProfilesClient;
use cairn_store::{Clock, EmbeddedStore, Fsync};
use cairn_testkit::{TestHost, TestNats, stream_messages, wait_consumer_idle};
use prost::Message as _;
use serde_json::{Value, json};

const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";

struct Mesh {
    _nats: TestNats,
    host: TestHost,
    bus: Bus,
    store: EmbeddedStore,
    _dir: tempfile::TempDir,
}

async fn mesh() -> Mesh {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), Fsync::Buffer, 8 << 20, Clock::system()).unwrap();
    let url = nats.url();
    let city = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/geo/GeoIP2-City-Test.mmdb"
    );
    let vars = [
        cairn_runtime::VARS.to_vec(),
        cairn_collector::vars(),
        cairn_identity::vars(),
        cairn_profile_store::vars(),
        cairn_enrich_geo::vars(),
        cairn_enrich_device::vars(),
        cairn_enrich_activity::vars(),
        cairn_enrich_content::vars(),
    ]
    .concat();
    let context = TestHost::context(
        &vars,
        [
            ("CAIRN_NATS_URL", url.as_str()),
            ("CAIRN_WRITE_KEYS", "web:wk_web"),
            ("CAIRN_ADMIN_TOKENS", "read:tk_read,admin:tk_admin"),
            ("CAIRN_PARTITION_LEASE", "1s"),
            ("CAIRN_GEO_DATABASES", city),
        ],
    );
    let modules = vec![
        cairn_collector::start(&context).await.unwrap(),
        cairn_identity::start(&context, store.clone())
            .await
            .unwrap(),
        cairn_profile_store::start(&context, store.clone())
            .await
            .unwrap(),
        cairn_enrich_activity::start(&context, store.clone())
            .await
            .unwrap(),
        cairn_enrich_content::start(&context, store.clone())
            .await
            .unwrap(),
        cairn_enrich_geo::start(&context).await.unwrap(),
        cairn_enrich_device::start(&context).await.unwrap(),
    ];
    let host = TestHost::serve(modules, context).await;
    let bus = nats.bus().await;
    Mesh {
        _nats: nats,
        host,
        bus,
        store,
        _dir: dir,
    }
}

impl Mesh {
    async fn send(&self, batch: Value) {
        self.host.send_batch("wk_web", batch).await;
    }

    async fn profiles(&self) -> ProfilesClient<tonic::transport::Channel> {
        ProfilesClient::new(
            tonic::transport::Channel::from_shared(self.host.grpc_url())
                .unwrap()
                .connect()
                .await
                .unwrap(),
        )
    }

    /// The profile of anonymous id `anonymous`, once `ready` holds for it (30 s at most).
    async fn profile_when(&self, anonymous: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let mut client = self.profiles().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut request = tonic::Request::new(pb::GetRequest {
                key: Some(pb::get_request::Key::Identifier(Identifier {
                    r#type: "anonymous_id".into(),
                    value: anonymous.into(),
                })),
            });
            request
                .metadata_mut()
                .insert("authorization", "Bearer tk_read".parse().unwrap());
            if let Ok(response) = client.get(request).await {
                let profile: Value =
                    serde_json::from_str(&response.into_inner().profile_json).unwrap();
                if ready(&profile) {
                    return profile;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the profile of {anonymous} never got its facts"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Facts published so far.
    async fn facts(&self) -> Vec<pb::Facts> {
        stream_messages(&self.bus, streams::IDENTIFIED)
            .await
            .into_iter()
            .filter(|message| message.subject.starts_with("profile.facts."))
            .map(|message| pb::Facts::decode(message.payload).unwrap())
            .collect()
    }

    async fn settle(&self) {
        for consumer in [
            "enrich_geo",
            "enrich_device",
            "enrich_activity",
            "enrich_content",
        ] {
            wait_consumer_idle(&self.bus, streams::IDENTIFIED, consumer).await;
        }
    }
}

fn count(facts: &[pb::Facts], source: &str) -> usize {
    facts.iter().filter(|fact| fact.source == source).count()
}

#[tokio::test]
async fn events_bring_every_enricher_s_facts_to_the_profile_once() {
    let mesh = mesh().await;
    mesh.send(json!([
        {"type": "page", "messageId": "p1", "anonymousId": "a1",
         "context": {"ip": "81.2.69.142", "userAgent": IPHONE, "timezone": "Europe/London",
                     "traits": {"email": "tom@acme-corp.example"}, "page": {"url": "https://shop.example.com/shoes/running-shoes", "title": "Running shoes"}}},
        {"type": "page", "messageId": "p2", "anonymousId": "a2",
         "context": {"ip": "192.168.1.20", "userAgent": "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"}},
        {"type": "track", "messageId": "p3", "anonymousId": "a3", "event": "Signed Up",
         "context": {"ip": "81.2.69.142"}},
    ]))
    .await;

    let tom = mesh
        .profile_when("a1", |profile| {
            profile["facts"]["geo"]["city"] == "London"
                && profile["facts"]["device"]["device_type"] == "mobile"
                && profile["facts"]["activity"]["customer_type"] == "b2b"
                && profile["facts"]["content"]["top_topic"] == "shoes"
        })
        .await;
    assert_eq!(tom["facts"]["geo"]["country"], "GB");
    assert_eq!(tom["facts"]["geo"]["timezone"], "Europe/London");
    // Where the address is becomes the profile's last city.
    assert_eq!(tom["city"], "London");
    assert_eq!(tom["country"], "GB");
    assert_eq!(tom["facts"]["device"]["os"], "iOS");
    assert_eq!(tom["facts"]["activity"]["timezone"], "Europe/London");

    // A private address gives no geo facts; a crawler is flagged.
    let bot = mesh
        .profile_when("a2", |profile| profile["facts"]["device"]["bot"] == true)
        .await;
    assert_eq!(bot["facts"]["device"]["device_type"], "bot");
    assert!(bot["facts"].get("geo").is_none(), "{bot}");

    // An event that does not say its time zone is counted in its address's.
    let signed_up = mesh
        .profile_when("a3", |profile| {
            profile["facts"]["activity"]["timezone"].is_string()
        })
        .await;
    assert_eq!(signed_up["facts"]["activity"]["timezone"], "Europe/London");

    mesh.settle().await;
    let before = mesh.facts().await;
    assert_eq!(count(&before, "geo"), 2);
    assert_eq!(count(&before, "device"), 2);
    assert_eq!(count(&before, "activity"), 3);
    assert_eq!(count(&before, "content"), 1);

    // The same identified event delivered again (as after a crash before the ack):
    // the enrichers answer with the same facts, which the stream drops.
    let identified = stream_messages(&mesh.bus, streams::IDENTIFIED)
        .await
        .into_iter()
        .find(|message| message.subject.starts_with("events.identified."))
        .unwrap();
    mesh.bus
        .publish_all(vec![Outgoing {
            subject: identified.subject.clone(),
            message_id: Some("redelivered".into()),
            headers: async_nats::HeaderMap::new(),
            payload: identified.payload.clone(),
        }])
        .await
        .unwrap();
    mesh.settle().await;
    let after = mesh.facts().await;
    assert_eq!(count(&after, "geo"), 2);
    assert_eq!(count(&after, "device"), 2);
    assert_eq!(count(&after, "activity"), 3);
    assert_eq!(count(&after, "content"), 1);

    // Facts are deltas: a second visit in the same hour of the week changes the
    // person's habits a little and what they say not at all, so activity publishes
    // nothing for it (device, which remembers nothing, says the device again).
    mesh.send(json!([
        {"type": "track", "messageId": "p4", "anonymousId": "a4", "event": "Viewed",
         "timestamp": "2026-11-02T09:10:00Z", "context": {"userAgent": IPHONE, "timezone": "Europe/Paris"}},
    ]))
    .await;
    mesh.profile_when("a4", |profile| {
        profile["facts"]["activity"]["best_send_hour"] == 10
    })
    .await;
    mesh.send(json!([
        {"type": "track", "messageId": "p5", "anonymousId": "a4", "event": "Viewed",
         "timestamp": "2026-11-02T09:40:00Z", "context": {"userAgent": IPHONE, "timezone": "Europe/Paris"}},
    ]))
    .await;
    mesh.profile_when("a4", |profile| profile["event_count"]["Viewed"]["all"] == 2)
        .await;
    mesh.settle().await;
    let of = |facts: &[pb::Facts], message: &str, source: &str| {
        facts
            .iter()
            .filter(|fact| fact.message_id == message && fact.source == source)
            .count()
    };
    let last = mesh.facts().await;
    assert_eq!(of(&last, "p4", "activity"), 1);
    assert_eq!(of(&last, "p5", "activity"), 0);
    assert_eq!(of(&last, "p5", "device"), 1);
}

/// Two devices of one person, each with its own habits and reading, until the person
/// signs in on both: the profiles merge, and so do what activity and content keep about
/// them, so that the facts speak of the person, not of whichever device survived.
#[tokio::test]
async fn the_habits_and_interests_of_merged_profiles_become_one_and_are_forgotten_with_them() {
    let mesh = mesh().await;
    let page = |id: &str, anonymous: &str, at: &str, path: &str, title: &str| {
        json!({"type": "page", "messageId": id, "anonymousId": anonymous, "timestamp": at,
               "context": {"timezone": "Europe/Paris",
                           "page": {"url": format!("https://shop.example.com{path}"), "title": title}}})
    };
    // The phone in the evening (20:00 in Paris), reading about hats.
    mesh.send(json!([
        page(
            "m1",
            "phone",
            "2026-11-02T19:10:00Z",
            "/hats/wool-hats",
            "Wool hats"
        ),
        page(
            "m2",
            "phone",
            "2026-11-03T19:20:00Z",
            "/hats/felt-hats",
            "Felt hats"
        ),
    ]))
    .await;
    // The laptop in the morning (09:00), reading about shoes.
    mesh.send(json!([
        page(
            "m3",
            "laptop",
            "2026-11-04T08:10:00Z",
            "/shoes/running-shoes",
            "Running shoes"
        ),
        page(
            "m4",
            "laptop",
            "2026-11-04T08:30:00Z",
            "/shoes/trail-shoes",
            "Trail shoes"
        ),
    ]))
    .await;
    for device in ["phone", "laptop"] {
        mesh.profile_when(device, |profile| {
            profile["facts"]["content"]["top_topic"].is_string()
                && profile["facts"]["activity"]["best_send_hour"].is_number()
        })
        .await;
    }
    mesh.settle().await;

    // The same person signs in on both.
    mesh.send(json!([
        {"type": "identify", "messageId": "m5", "anonymousId": "phone", "userId": "u-7",
         "timestamp": "2026-11-04T19:00:00Z", "context": {"timezone": "Europe/Paris"}},
        {"type": "identify", "messageId": "m6", "anonymousId": "laptop", "userId": "u-7",
         "timestamp": "2026-11-05T08:05:00Z", "context": {"timezone": "Europe/Paris"}},
    ]))
    .await;
    let hours = |profile: &Value| {
        let mut hours: Vec<u64> = profile["facts"]["activity"]["active_hours"]
            .as_array()
            .map(|hours| hours.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        hours.sort_unstable();
        hours
    };
    let person = mesh
        .profile_when("phone", |profile| {
            profile["merged_from"]
                .as_array()
                .is_some_and(|merged| !merged.is_empty())
                && hours(profile) == [9, 20]
                && profile["facts"]["content"]["topics"]
                    .as_object()
                    .is_some_and(|topics| topics.len() >= 2)
        })
        .await;
    let topics = &person["facts"]["content"]["topics"];
    assert!(
        topics.get("hats").is_some() && topics.get("shoes").is_some(),
        "{person}"
    );
    let survivor = person["id"].as_str().unwrap().to_string();
    let merged = person["merged_from"][0].as_str().unwrap().to_string();
    mesh.settle().await;
    let habits: cairn_enrich_activity::Habits =
        cairn_enricher::state::read(&mesh.store, &cairn_enrich_activity::ACTIVITY, &survivor)
            .await
            .unwrap()
            .unwrap();
    // Both devices' page views and sign-ins, once each.
    let weight: f64 = habits.hours.iter().sum();
    assert!(weight > 5.0 && weight < 6.0 + 1e-9, "{weight}");
    // What is left of the merged profile's habits is where they went.
    let left: cairn_enrich_activity::Habits =
        cairn_enricher::state::read(&mesh.store, &cairn_enrich_activity::ACTIVITY, &merged)
            .await
            .unwrap()
            .unwrap();
    assert_eq!(left.merged_into.as_deref(), Some(survivor.as_str()));
    assert!(left.hours.is_empty() && left.emails.is_empty(), "{left:?}");

    // Forgotten: nothing of the person stays with the enrichers.
    let mut request = tonic::Request::new(pb::DeleteRequest {
        profile_id: survivor.clone(),
    });
    request
        .metadata_mut()
        .insert("authorization", "Bearer tk_admin".parse().unwrap());
    mesh.profiles().await.delete(request).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let habits: Option<cairn_enrich_activity::Habits> =
            cairn_enricher::state::read(&mesh.store, &cairn_enrich_activity::ACTIVITY, &survivor)
                .await
                .unwrap();
        let affinity: Option<cairn_enrich_content::Affinity> = cairn_enricher::state::read(
            &mesh.store,
            &cairn_enrich_content::CONTENT,
            &format!("profile:{survivor}"),
        )
        .await
        .unwrap();
        if habits.is_none() && affinity.is_none() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the enrichers still keep the deleted person's state"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
