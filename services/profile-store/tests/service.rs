//! The profile store against a real nats-server, fed by the real collector and identity.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use cairn_bus::{Bus, Outgoing, streams};
use cairn_proto::identity::v1::Identifier;
use cairn_proto::identity::v1::identity_client::IdentityClient;
use cairn_proto::profile::v1 as pb;
use cairn_proto::profile::v1::profiles_client::ProfilesClient;
use cairn_store::{Clock, EmbeddedStore, Fsync};
use cairn_testkit::{TestHost, TestNats, stream_messages, wait_for_messages};
use prost::Message as _;
use serde_json::{Value, json};
use tonic::Code;

struct Mesh {
    nats: TestNats,
    host: TestHost,
    bus: Bus,
    store: EmbeddedStore,
    _dir: tempfile::TempDir,
}

fn vars() -> Vec<cairn_runtime::Var> {
    [
        cairn_runtime::VARS.to_vec(),
        cairn_collector::vars(),
        cairn_identity::vars(),
        cairn_profile_store::vars(),
    ]
    .concat()
}

async fn mesh() -> Mesh {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), Fsync::Buffer, 8 << 20, Clock::system()).unwrap();
    let url = nats.url();
    let context = TestHost::context(
        &vars(),
        [
            ("CAIRN_NATS_URL", url.as_str()),
            ("CAIRN_WRITE_KEYS", "web:wk_web"),
            ("CAIRN_ADMIN_TOKENS", "read:tk_read,admin:tk_admin"),
            ("CAIRN_PARTITION_LEASE", "1s"),
        ],
    );
    let collector = cairn_collector::start(&context).await.unwrap();
    let identity = cairn_identity::start(&context, store.clone())
        .await
        .unwrap();
    let profiles = cairn_profile_store::start(&context, store.clone())
        .await
        .unwrap();
    let host = TestHost::serve(vec![collector, identity, profiles], context).await;
    let bus = nats.bus().await;
    Mesh {
        nats,
        host,
        bus,
        store,
        _dir: dir,
    }
}

fn by(kind: &str, value: &str) -> Option<pb::get_request::Key> {
    Some(pb::get_request::Key::Identifier(Identifier {
        r#type: kind.into(),
        value: value.into(),
    }))
}

impl Mesh {
    async fn send(&self, batch: Value) {
        self.host.send_batch("wk_web", batch).await;
    }

    async fn changes(&self, count: usize) -> Vec<pb::ProfileChanged> {
        wait_for_messages(&self.bus, streams::PROFILES, 0).await;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let changed: Vec<pb::ProfileChanged> = stream_messages(&self.bus, streams::PROFILES)
                .await
                .into_iter()
                .filter(|message| message.subject.starts_with("profiles.changed."))
                .map(|message| pb::ProfileChanged::decode(message.payload).unwrap())
                .collect();
            if changed.len() >= count {
                return changed;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {count} changes",
                changed.len()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
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

    async fn get(&self, key: Option<pb::get_request::Key>) -> Result<Value, tonic::Status> {
        let response = self
            .profiles()
            .await
            .get(cairn_testkit::bearer(pb::GetRequest { key }, "tk_read"))
            .await?;
        Ok(serde_json::from_str(&response.into_inner().profile_json).unwrap())
    }
}

#[tokio::test]
async fn events_make_profiles_with_sessions_and_aggregates() {
    let mesh = mesh().await;
    mesh.send(json!([
        {"type": "page", "messageId": "e1", "anonymousId": "a1", "timestamp": "2026-11-20T10:00:00Z",
         "context": {"page": {"url": "https://shop.example.com/shoes", "referrer": "https://www.google.com/search"},
                     "userAgent": "Firefox/120", "timezone": "Europe/London", "location": {"city": "London", "country": "GB"}}},
        {"type": "page", "messageId": "e2", "anonymousId": "a1", "timestamp": "2026-11-20T10:10:00Z",
         "context": {"page": {"url": "https://shop.example.com/shoes/boots", "referrer": "https://shop.example.com/shoes"}}},
        {"type": "track", "messageId": "e3", "anonymousId": "a1", "event": "Added to Cart", "timestamp": "2026-11-20T10:12:00Z"},
        {"type": "page", "messageId": "e4", "anonymousId": "a1", "timestamp": "2026-11-20T11:30:00Z",
         "context": {"page": {"url": "https://shop.example.com/"}}},
        {"type": "identify", "messageId": "e5", "anonymousId": "a1", "userId": "u1", "timestamp": "2026-11-20T11:31:00Z",
         "traits": {"email": "Tom@Example.com", "plan": "pro"}},
    ]))
    .await;
    let changes = mesh.changes(5).await;
    let session_of = |message_id: &str| {
        let change = changes
            .iter()
            .find(|change| change.message_id == message_id)
            .unwrap();
        (change.session_id.clone(), change.session_index)
    };
    assert_eq!(session_of("e1"), session_of("e3"));
    assert_eq!(session_of("e1").1, 1);
    assert_eq!(session_of("e4").1, 2, "80 minutes later is a new session");
    let fields = &changes
        .iter()
        .find(|change| change.message_id == "e5")
        .unwrap()
        .changed_fields;
    assert!(fields.contains(&"traits.plan".to_string()), "{fields:?}");

    let profile = mesh.get(by("email", " TOM@example.com")).await.unwrap();
    assert_eq!(profile["visit_count"], 2);
    assert_eq!(profile["session_count"], 2);
    assert_eq!(profile["event_count"]["page"]["all"], 3);
    assert_eq!(profile["event_count"]["Added to Cart"]["all"], 1);
    assert_eq!(
        profile["referrer_domains"],
        json!({"google.com": 1}),
        "navigation inside the site is no referral"
    );
    assert_eq!(profile["city"], "London");
    assert_eq!(profile["timezone"], "Europe/London");
    assert_eq!(profile["traits"]["plan"], "pro");
    assert_eq!(profile["first_seen"], "2026-11-20T10:00:00.000Z");
    assert_eq!(profile["urls"][0]["url"], "https://shop.example.com/");
    let same = mesh.get(by("user_id", "u1")).await.unwrap();
    assert_eq!(same["id"], profile["id"]);

    // The timeline, newest first, in pages.
    let mut client = mesh.profiles().await;
    let page = client
        .timeline(cairn_testkit::bearer(
            pb::TimelineRequest {
                profile_id: profile["id"].as_str().unwrap().into(),
                page_token: String::new(),
                page_size: 3,
            },
            "tk_read",
        ))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = page
        .entries
        .iter()
        .map(|entry| entry.message_id.as_str())
        .collect();
    assert_eq!(ids, vec!["e5", "e4", "e3"]);
    let rest = client
        .timeline(cairn_testkit::bearer(
            pb::TimelineRequest {
                profile_id: profile["id"].as_str().unwrap().into(),
                page_token: page.next_page_token,
                page_size: 3,
            },
            "tk_read",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.entries.len(), 2);
    let err = client
        .get(pb::GetRequest {
            key: by("user_id", "u1"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_merge_combines_two_rich_profiles_once_even_when_redelivered() {
    let mesh = mesh().await;
    mesh.send(json!([
        {"type": "identify", "messageId": "l1", "anonymousId": "laptop", "traits": {"email": "ann@example.com", "plan": "free"}, "timestamp": "2026-11-20T09:00:00Z"},
        {"type": "track", "messageId": "l2", "anonymousId": "laptop", "event": "Viewed", "timestamp": "2026-11-20T09:01:00Z"},
        {"type": "page", "messageId": "p1", "anonymousId": "phone", "timestamp": "2026-11-20T20:00:00Z"},
        {"type": "track", "messageId": "p2", "anonymousId": "phone", "event": "Viewed", "timestamp": "2026-11-20T20:01:00Z",
         "context": {"traits": {"plan": "pro"}}},
    ]))
    .await;
    mesh.changes(4).await;
    // The phone logs in with the laptop's email: one person.
    mesh.send(json!([
        {"type": "track", "messageId": "link", "anonymousId": "phone", "event": "Signed In", "timestamp": "2026-11-20T20:02:00Z",
         "context": {"traits": {"email": "ANN@example.com"}}},
    ]))
    .await;
    let merged = wait_for_messages(&mesh.bus, streams::PROFILES, 6).await;
    assert!(
        merged
            .iter()
            .any(|message| message.subject.starts_with("profiles.merged."))
    );
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let profile = loop {
        let profile = mesh.get(by("anonymous_id", "phone")).await.unwrap();
        if profile["event_count"]["Viewed"]["all"] == 2 {
            break profile;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the merge did not land: {profile}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let laptop = mesh.get(by("anonymous_id", "laptop")).await.unwrap();
    assert_eq!(laptop["id"], profile["id"]);
    assert_eq!(profile["event_count"]["Signed In"]["all"], 1);
    assert_eq!(profile["event_count"]["page"]["all"], 1);
    assert_eq!(profile["traits"]["plan"], "pro", "the later value wins");
    assert_eq!(profile["session_count"], 2, "{profile:#}");
    assert_eq!(profile["merged_from"].as_array().unwrap().len(), 1);

    // The merge message again (a redelivery), and an old event of the merged profile again.
    let mut again = Vec::new();
    for message in stream_messages(&mesh.bus, streams::PROFILES).await {
        if message.subject.starts_with("profiles.merged.") {
            again.push(Outgoing {
                subject: message.subject,
                message_id: Some("redelivered-merge".into()),
                headers: async_nats::HeaderMap::new(),
                payload: message.payload,
            });
        }
    }
    for message in stream_messages(&mesh.bus, streams::IDENTIFIED).await {
        let event =
            cairn_proto::event::v1::IdentifiedEvent::decode(message.payload.clone()).unwrap();
        if event.envelope.as_ref().unwrap().message_id == "p2" {
            again.push(Outgoing {
                subject: message.subject,
                message_id: Some("redelivered-p2".into()),
                headers: async_nats::HeaderMap::new(),
                payload: message.payload,
            });
        }
    }
    assert_eq!(again.len(), 2);
    mesh.bus.publish_all(again).await.unwrap();
    // A marker event after them, to know they were handled.
    mesh.send(json!([{"type": "track", "messageId": "after", "anonymousId": "laptop", "event": "Marker", "timestamp": "2026-11-20T20:05:00Z"}])).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let after = loop {
        let profile = mesh.get(by("anonymous_id", "laptop")).await.unwrap();
        if profile["event_count"]["Marker"]["all"] == 1 {
            break profile;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    // The redelivered merge is on the partition's other consumer: wait for it too.
    let partition = mesh.bus.partitions().of(after["id"].as_str().unwrap());
    cairn_testkit::wait_consumer_idle(
        &mesh.bus,
        streams::PROFILES,
        &format!("profile_store_links_{partition}"),
    )
    .await;
    let after = mesh.get(by("anonymous_id", "laptop")).await.unwrap();
    assert_eq!(
        after["event_count"]["Viewed"]["all"], 2,
        "nothing counted twice: {after}"
    );
    assert_eq!(after["session_count"], 2);
    assert_eq!(after["merged_from"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_split_gives_each_profile_its_own_events_once_even_when_redelivered() {
    let mesh = mesh().await;
    mesh.send(json!([
        {"type": "identify", "messageId": "t1", "userId": "tom", "anonymousId": "tom-laptop", "timestamp": "2026-11-20T09:00:00Z"},
        {"type": "page", "messageId": "t2", "userId": "tom", "timestamp": "2026-11-20T09:01:00Z"},
        {"type": "page", "messageId": "k1", "anonymousId": "kiosk", "timestamp": "2026-11-20T12:00:00Z",
         "context": {"device": {"id": "kiosk-7"}}},
        {"type": "page", "messageId": "k2", "anonymousId": "kiosk", "timestamp": "2026-11-20T12:01:00Z"},
    ]))
    .await;
    let changes = mesh.changes(4).await;
    let kiosk = changes
        .iter()
        .find(|change| change.message_id == "k1")
        .unwrap()
        .profile_id
        .clone();
    // Tom signs in on the kiosk: the kiosk's profile is merged into his.
    mesh.send(json!([
        {"type": "page", "messageId": "m1", "userId": "tom", "anonymousId": "kiosk", "timestamp": "2026-11-20T12:02:00Z"},
    ]))
    .await;
    let tom = wait_for(&mesh, by("device_id", "kiosk-7"), |profile| {
        profile["event_count"]["page"]["all"] == 4
    })
    .await;
    let tom_id = tom["id"].as_str().unwrap().to_string();
    assert_ne!(tom_id, kiosk);

    // The kiosk was never Tom's: split it out again.
    let mut identity = IdentityClient::new(
        tonic::transport::Channel::from_shared(mesh.host.grpc_url())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let split = identity
        .split(cairn_testkit::bearer(
            cairn_proto::identity::v1::SplitRequest {
                profile_id: tom_id.clone(),
                identifiers: ["anonymous_id:kiosk", "device_id:kiosk-7"]
                    .iter()
                    .map(|pair| {
                        let (kind, value) = pair.split_once(':').unwrap();
                        Identifier {
                            r#type: kind.into(),
                            value: value.into(),
                        }
                    })
                    .collect(),
            },
            "tk_admin",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        split.profile_id, kiosk,
        "the kiosk gets its own profile back"
    );
    let check = |kiosk_profile: &Value, tom_profile: &Value| {
        assert_eq!(kiosk_profile["id"], kiosk.as_str());
        assert_eq!(
            kiosk_profile["event_count"]["page"]["all"], 2,
            "{kiosk_profile:#}"
        );
        assert!(kiosk_profile["merged_from"].as_array().unwrap().is_empty());
        assert_eq!(tom_profile["id"], tom_id.as_str());
        assert_eq!(
            tom_profile["event_count"]["page"]["all"], 2,
            "t2 and m1: {tom_profile:#}"
        );
        assert_eq!(tom_profile["event_count"]["identify"]["all"], 1);
        assert!(tom_profile["merged_from"].as_array().unwrap().is_empty());
        let identifiers = tom_profile["identifiers"].to_string();
        assert!(!identifiers.contains("kiosk"), "{identifiers}");
    };
    let kiosk_profile = wait_for(&mesh, by("device_id", "kiosk-7"), |profile| {
        profile["id"] == kiosk.as_str()
    })
    .await;
    let tom_profile = wait_for(&mesh, by("user_id", "tom"), |profile| {
        profile["event_count"]["page"]["all"] == 2
    })
    .await;
    check(&kiosk_profile, &tom_profile);

    // The split again (a redelivery), then a marker behind it on the same consumer.
    let mut again = Vec::new();
    for message in stream_messages(&mesh.bus, streams::PROFILES).await {
        if message.subject.starts_with("profiles.split.") {
            again.push(Outgoing {
                subject: message.subject,
                message_id: Some("redelivered-split".into()),
                headers: async_nats::HeaderMap::new(),
                payload: message.payload,
            });
        }
    }
    assert_eq!(again.len(), 1);
    mesh.bus.publish_all(again).await.unwrap();
    let partition = mesh.bus.partitions().of(&tom_id);
    cairn_testkit::wait_consumer_idle(
        &mesh.bus,
        streams::PROFILES,
        &format!("profile_store_links_{partition}"),
    )
    .await;
    let kiosk_profile = mesh.get(by("device_id", "kiosk-7")).await.unwrap();
    let tom_profile = mesh.get(by("user_id", "tom")).await.unwrap();
    check(&kiosk_profile, &tom_profile);
}

/// Gets a profile until `done` holds for it (20 s at most).
async fn wait_for(
    mesh: &Mesh,
    key: Option<pb::get_request::Key>,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let profile = mesh.get(key.clone()).await;
        if let Ok(profile) = &profile
            && done(profile)
        {
            return profile.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not there in 20s: {profile:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn deleting_a_profile_leaves_nothing_findable() {
    let mesh = mesh().await;
    mesh.send(json!([
        {"type": "identify", "messageId": "d1", "userId": "gone", "anonymousId": "gone-cookie", "traits": {"email": "gone@example.com"}},
        {"type": "identify", "messageId": "d2", "userId": "stays", "traits": {"email": "stays@example.com"}},
    ]))
    .await;
    mesh.changes(2).await;
    let profile = mesh.get(by("email", "gone@example.com")).await.unwrap();
    let mut client = mesh.profiles().await;
    let request = pb::DeleteRequest {
        profile_id: profile["id"].as_str().unwrap().into(),
    };
    let err = client
        .delete(cairn_testkit::bearer(request.clone(), "tk_read"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let deleted = client
        .delete(cairn_testkit::bearer(request, "tk_admin"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.identifiers.len(), 3);

    for (kind, value) in [
        ("email", "gone@example.com"),
        ("user_id", "gone"),
        ("anonymous_id", "gone-cookie"),
    ] {
        let err = mesh.get(by(kind, value)).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{kind}");
    }
    let err = mesh
        .get(Some(pb::get_request::Key::ProfileId(
            profile["id"].as_str().unwrap().into(),
        )))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // Identity forgets too (it reads profiles.deleted).
    let mut identity = IdentityClient::new(
        tonic::transport::Channel::from_shared(mesh.host.grpc_url())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let request = cairn_proto::identity::v1::ResolveRequest {
            identifier: Some(Identifier {
                r#type: "email".into(),
                value: "gone@example.com".into(),
            }),
        };
        match identity
            .resolve(cairn_testkit::bearer(request, "tk_read"))
            .await
        {
            Err(err) if err.code() == Code::NotFound => break,
            _ => {
                if tokio::time::Instant::now() > deadline {
                    let dead: Vec<String> = stream_messages(&mesh.bus, streams::DEAD_LETTERS)
                        .await
                        .iter()
                        .map(|message| format!("{}: {:?}", message.subject, message.headers))
                        .collect();
                    let subjects: Vec<String> = stream_messages(&mesh.bus, streams::PROFILES)
                        .await
                        .iter()
                        .map(|m| m.subject.clone())
                        .collect();
                    let mut consumer: async_nats::jetstream::consumer::PullConsumer = mesh
                        .bus
                        .jetstream()
                        .get_consumer_from_stream("identity_forget", streams::PROFILES)
                        .await
                        .unwrap();
                    let info = consumer.info().await.unwrap().clone();
                    panic!(
                        "identity still knows the email; dead letters: {dead:?}; profiles: {subjects:?}; forget consumer: pending {} ack floor {:?} delivered {:?}",
                        info.num_pending, info.ack_floor, info.delivered
                    );
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        mesh.get(by("user_id", "stays")).await.is_ok(),
        "others stay"
    );
    let _ = (&mesh.nats, &mesh.store);
}

/// What each person's page count should be, from the events sent.
fn expected_pages(events: &[Value]) -> HashMap<String, u64> {
    let mut pages = HashMap::new();
    for event in events {
        *pages
            .entry(event["anonymousId"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    pages
}

#[tokio::test]
async fn partitions_move_between_replicas_without_losing_or_doubling_updates() {
    let mesh = mesh().await;
    // A second replica joins, sharing the store (as replicas share ScyllaDB).
    let url = mesh.nats.url();
    let context = TestHost::context(
        &vars(),
        [
            ("CAIRN_NATS_URL", url.as_str()),
            ("CAIRN_PARTITION_LEASE", "1s"),
        ],
    );
    let second = cairn_profile_store::start(&context, mesh.store.clone())
        .await
        .unwrap();
    let mut second = Some(TestHost::serve(vec![second], context).await);

    let batch = |from: usize, to: usize| -> Vec<Value> {
        (from..to)
            .map(|n| json!({"type": "page", "messageId": format!("m{n}"), "anonymousId": format!("visitor-{}", n % 40),
                            "timestamp": format!("2026-11-20T10:{:02}:{:02}Z", (n / 60) % 60, n % 60)}))
            .collect()
    };
    let mut sent = Vec::new();
    for round in 0..4 {
        let events = batch(round * 100, round * 100 + 100);
        mesh.send(Value::Array(events.clone())).await;
        sent.extend(events);
        if round == 1
            && let Some(second) = second.take()
        {
            // One replica leaves mid-stream; the other takes its partitions over.
            second.shutdown().await.unwrap();
        }
    }
    let expected = expected_pages(&sent);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(40);
    for (visitor, pages) in &expected {
        loop {
            let found = mesh
                .get(by("anonymous_id", visitor))
                .await
                .ok()
                .and_then(|profile| profile["event_count"]["page"]["all"].as_u64());
            if found == Some(*pages) {
                break;
            }
            assert!(
                found.is_none_or(|found| found < *pages),
                "{visitor}: {found:?} pages, {pages} sent: applied twice"
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "{visitor}: {found:?} of {pages} pages"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}
