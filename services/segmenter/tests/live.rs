//! Memberships kept live against a real nats-server: events sent to the collector move
//! profiles into and out of segments, each transition announced once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_bus::{Bus, Outgoing, streams};
use cairn_proto::segment::v1::SegmentChanged;
use cairn_store::{Clock, EmbeddedStore, Fsync};
use cairn_testkit::{TestHost, TestNats, stream_messages, wait_consumer_idle};
use prost::Message as _;
use serde_json::json;

struct Mesh {
    host: TestHost,
    bus: Bus,
    _nats: TestNats,
    _dir: tempfile::TempDir,
}

/// The mesh, with `segments` saved before it starts.
async fn mesh(segments: &[(&str, &str)]) -> Mesh {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), Fsync::Buffer, 8 << 20, Clock::system()).unwrap();
    for (name, filter) in segments {
        cairn_segmenter::definitions::put(&store, name, filter, "", 0)
            .await
            .unwrap();
    }
    let url = nats.url();
    let vars = [
        cairn_runtime::VARS.to_vec(),
        cairn_collector::vars(),
        cairn_identity::vars(),
        cairn_profile_store::vars(),
        cairn_segmenter::vars(),
    ]
    .concat();
    let context = TestHost::context(
        &vars,
        [
            ("CAIRN_NATS_URL", url.as_str()),
            ("CAIRN_WRITE_KEYS", "web:wk_web"),
            ("CAIRN_ADMIN_TOKENS", "read:tk_read"),
            ("CAIRN_PARTITION_LEASE", "1s"),
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
        cairn_segmenter::start(&context, store).await.unwrap(),
    ];
    let host = TestHost::serve(modules, context).await;
    let bus = nats.bus().await;
    Mesh {
        host,
        bus,
        _nats: nats,
        _dir: dir,
    }
}

impl Mesh {
    /// Sends `batch` and waits until the profile store and the segmenter are done with it.
    async fn send(&self, batch: serde_json::Value) {
        self.host.send_batch("wk_web", batch).await;
        // Identity, the profile store and the segmenter, one after the other.
        for _ in 0..3 {
            wait_consumer_idle(&self.bus, streams::EVENTS, "identity").await;
            for partition in 0..self.bus.partitions().count() {
                wait_consumer_idle(
                    &self.bus,
                    streams::IDENTIFIED,
                    &format!("profile_store_events_{partition}"),
                )
                .await;
                wait_consumer_idle(
                    &self.bus,
                    streams::SEGMENTS,
                    &format!("profile_store_segments_{partition}"),
                )
                .await;
            }
            wait_consumer_idle(&self.bus, streams::PROFILES, "segmenter").await;
        }
    }

    /// The profile as last announced.
    async fn profile(&self) -> serde_json::Value {
        let last = stream_messages(&self.bus, streams::PROFILES)
            .await
            .into_iter()
            .filter(|message| message.subject.starts_with("profiles.changed."))
            .map(|message| {
                cairn_proto::profile::v1::ProfileChanged::decode(message.payload).unwrap()
            })
            .max_by_key(|changed| changed.version)
            .unwrap();
        serde_json::from_str(&last.profile_json).unwrap()
    }

    async fn transitions(&self) -> Vec<(String, bool)> {
        stream_messages(&self.bus, streams::SEGMENTS)
            .await
            .into_iter()
            .filter(|message| message.subject.starts_with("segments.changed."))
            .map(|message| {
                let changed = SegmentChanged::decode(message.payload).unwrap();
                (changed.segment, changed.entered)
            })
            .collect()
    }
}

fn page(id: &str) -> serde_json::Value {
    json!({"type": "page", "messageId": id, "anonymousId": "a1"})
}

#[tokio::test]
async fn profiles_enter_and_leave_segments_once() {
    let mesh = mesh(&[
        ("regulars", "FILTER event_count.page.all >= 3"),
        (
            "regular_pros",
            "FILTER AND (INCLUDE regulars, plan == \"pro\")",
        ),
    ])
    .await;
    mesh.send(json!([page("p1"), page("p2")])).await;
    assert!(mesh.transitions().await.is_empty());

    mesh.send(json!([page("p3")])).await;
    assert_eq!(
        mesh.transitions().await,
        vec![("regulars".to_string(), true)]
    );

    mesh.send(json!([{"type": "identify", "messageId": "i1", "anonymousId": "a1", "traits": {"plan": "pro"}}]))
        .await;
    mesh.send(json!([page("p4")])).await;
    mesh.send(json!([{"type": "identify", "messageId": "i2", "anonymousId": "a1", "traits": {"plan": "free"}}]))
        .await;
    let expected = vec![
        ("regulars".to_string(), true),
        ("regular_pros".to_string(), true),
        ("regular_pros".to_string(), false),
    ];
    assert_eq!(mesh.transitions().await, expected);
    let profile = mesh.profile().await;
    assert!(profile["segments"]["regulars"].is_string(), "{profile}");
    assert!(
        profile["segments"].get("regular_pros").is_none(),
        "{profile}"
    );

    // Every profile change delivered again (as after a crash): nothing new.
    let changes: Vec<Outgoing> = stream_messages(&mesh.bus, streams::PROFILES)
        .await
        .into_iter()
        .filter(|message| message.subject.starts_with("profiles.changed."))
        .enumerate()
        .map(|(n, message)| Outgoing {
            subject: message.subject,
            message_id: Some(format!("again-{n}")),
            headers: async_nats::HeaderMap::new(),
            payload: message.payload,
        })
        .collect();
    assert!(changes.len() >= 5, "{}", changes.len());
    mesh.bus.publish_all(changes).await.unwrap();
    wait_consumer_idle(&mesh.bus, streams::PROFILES, "segmenter").await;
    assert_eq!(mesh.transitions().await, expected);
}

#[tokio::test]
async fn date_math_lets_a_profile_go_when_its_moment_passes_with_no_new_event() {
    let mesh = mesh(&[("just_seen", "FILTER last_seen > \"now-2s\"")]).await;
    mesh.send(json!([page("p1")])).await;
    assert_eq!(
        mesh.transitions().await,
        vec![("just_seen".to_string(), true)]
    );
    // No event: the durable timer brings the profile back when "now-2s" passes.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let transitions = mesh.transitions().await;
        if transitions.len() == 2 {
            assert_eq!(transitions[1], ("just_seen".to_string(), false));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{transitions:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // And the profile store writes the exit back.
    loop {
        if mesh.profile().await["segments"].get("just_seen").is_none() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still in the segment"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
