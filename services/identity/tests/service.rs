//! The identity service against a real nats-server, fed by the real collector.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use cairn_bus::{Bus, Outgoing, streams, subjects};
use cairn_proto::event::v1::IdentifiedEvent;
use cairn_proto::identity::v1 as pb;
use cairn_proto::identity::v1::identity_client::IdentityClient;
use cairn_store::{Clock, EmbeddedStore, Fsync};
use cairn_testkit::{TestHost, TestNats, stream_messages, wait_for_messages};
use prost::Message as _;
use serde_json::json;
use tonic::Code;

struct Mesh {
    _nats: TestNats,
    host: TestHost,
    bus: Bus,
    _dir: tempfile::TempDir,
}

async fn mesh() -> Mesh {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = nats.url();
    let vars = [
        cairn_runtime::VARS.to_vec(),
        cairn_collector::vars(),
        cairn_identity::vars(),
    ]
    .concat();
    let context = TestHost::context(
        &vars,
        [
            ("CAIRN_NATS_URL", url.as_str()),
            ("CAIRN_WRITE_KEYS", "web:wk_web"),
            ("CAIRN_ADMIN_TOKENS", "read:tk_read,write:tk_write"),
        ],
    );
    let store = EmbeddedStore::open(dir.path(), Fsync::Buffer, 8 << 20, Clock::system()).unwrap();
    let collector = cairn_collector::start(&context).await.unwrap();
    let identity = cairn_identity::start(&context, store).await.unwrap();
    let host = TestHost::serve(vec![collector, identity], context).await;
    let bus = nats.bus().await;
    Mesh {
        _nats: nats,
        host,
        bus,
        _dir: dir,
    }
}

impl Mesh {
    async fn send(&self, batch: serde_json::Value) {
        self.host.send_batch("wk_web", batch).await;
    }

    async fn identified(&self, count: usize) -> Vec<(String, IdentifiedEvent)> {
        wait_for_messages(&self.bus, streams::IDENTIFIED, count)
            .await
            .into_iter()
            .map(|message| {
                (
                    message.subject,
                    IdentifiedEvent::decode(message.payload).unwrap(),
                )
            })
            .collect()
    }

    async fn client(&self) -> IdentityClient<tonic::transport::Channel> {
        IdentityClient::new(
            tonic::transport::Channel::from_shared(self.host.grpc_url())
                .unwrap()
                .connect()
                .await
                .unwrap(),
        )
    }
}

fn email(value: &str) -> Option<pb::Identifier> {
    Some(pb::Identifier {
        r#type: "email".into(),
        value: value.into(),
    })
}

#[tokio::test]
async fn events_get_their_profile_and_linking_events_merge_devices() {
    let mesh = mesh().await;
    mesh.send(json!([
        {"type": "page", "messageId": "m1", "anonymousId": "laptop", "properties": {"url": "https://shop.example.com/"}},
        {"type": "identify", "messageId": "m2", "anonymousId": "laptop", "traits": {"email": "tom@example.com"}},
        {"type": "page", "messageId": "m3", "anonymousId": "phone"},
        {"type": "track", "messageId": "m4", "anonymousId": "phone", "event": "Signed In", "context": {"traits": {"email": "TOM@example.com"}}},
    ]))
    .await;
    let identified = mesh.identified(4).await;
    let profile_of = |message_id: &str| {
        identified
            .iter()
            .find(|(_, event)| event.envelope.as_ref().unwrap().message_id == message_id)
            .map(|(subject, event)| (subject.clone(), event.profile_id.clone()))
            .unwrap()
    };
    let (_, laptop) = profile_of("m1");
    assert_eq!(profile_of("m2").1, laptop);
    let (_, phone) = profile_of("m3");
    assert_ne!(phone, laptop, "the phone is a stranger until it logs in");
    let (subject, linked) = profile_of("m4");
    assert_eq!(
        linked, laptop,
        "the linking event goes to the merged, older profile"
    );
    let partition = mesh.bus.partitions().of(&laptop);
    assert_eq!(subject, subjects::events_identified(partition));
    // The envelope travels unchanged.
    let event = &identified[0].1;
    assert_eq!(event.envelope.as_ref().unwrap().source, "web");

    let merged = wait_for_messages(&mesh.bus, streams::PROFILES, 1).await;
    let record = pb::MergeRecord::decode(merged[0].payload.clone()).unwrap();
    assert_eq!(merged[0].subject, subjects::profiles_merged(partition));
    assert_eq!(
        (
            record.from_profile_id.as_str(),
            record.into_profile_id.as_str()
        ),
        (phone.as_str(), laptop.as_str())
    );
    assert_eq!(record.message_id, "m4");

    // The API agrees.
    let mut client = mesh.client().await;
    let resolved = client
        .resolve(cairn_testkit::bearer(
            pb::ResolveRequest {
                identifier: email(" Tom@Example.com"),
            },
            "tk_read",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resolved.profile_id, laptop);
    assert_eq!(resolved.identifiers.len(), 3);
    let explained = client
        .explain(cairn_testkit::bearer(
            pb::ExplainRequest {
                profile_id: phone.clone(),
            },
            "tk_read",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(explained.profile_id, laptop);
    assert_eq!(explained.history[0].kind(), pb::merge_record::Kind::Merged);
}

#[tokio::test]
async fn redelivered_events_change_nothing_and_unreadable_ones_are_dead_lettered() {
    let mesh = mesh().await;
    mesh.send(json!([
        {"type": "track", "messageId": "ok-1", "event": "Viewed", "userId": "u-1", "anonymousId": "a-1"},
        {"type": "track", "messageId": "blocked-1", "event": "Viewed", "anonymousId": "undefined"},
    ]))
    .await;
    let identified = mesh.identified(1).await;
    let dead = wait_for_messages(&mesh.bus, streams::DEAD_LETTERS, 1).await;
    assert_eq!(dead[0].subject, "deadletter.identity");
    let reason = dead[0]
        .headers
        .get("Cairn-Dead-Letter-Reason")
        .unwrap()
        .as_str()
        .to_string();
    assert!(reason.starts_with("no usable identifier"), "{reason}");

    // The same raw event again, as a redelivery would bring it.
    let raw = cairn_testkit::stored_events(&mesh.bus).await;
    let first = raw
        .iter()
        .find(|event| event.envelope.message_id == "ok-1")
        .unwrap();
    mesh.bus
        .publish_all(vec![Outgoing {
            subject: first.subject.clone(),
            message_id: Some("redelivery-of-ok-1".into()),
            headers: async_nats::HeaderMap::new(),
            payload: Bytes::from(first.envelope.encode_to_vec()),
        }])
        .await
        .unwrap();
    // Something after it, to know the redelivery was handled.
    mesh.send(json!([{"type": "track", "messageId": "ok-2", "event": "Viewed", "userId": "u-2"}]))
        .await;
    let identified_after = mesh.identified(2).await;
    assert_eq!(identified_after.len(), 2, "ok-1 is published once");
    assert_eq!(identified_after[0].1, identified[0].1);
    assert!(
        stream_messages(&mesh.bus, streams::PROFILES)
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn the_api_needs_tokens_and_split_restores_a_merge() {
    let mesh = mesh().await;
    mesh.send(json!([
        {"type": "identify", "messageId": "s1", "userId": "tom", "anonymousId": "tom-laptop"},
        {"type": "page", "messageId": "s2", "anonymousId": "kiosk", "context": {"device": {"id": "kiosk-7"}}},
        {"type": "page", "messageId": "s3", "userId": "tom", "anonymousId": "kiosk"},
    ]))
    .await;
    let identified = mesh.identified(3).await;
    let tom = identified[0].1.profile_id.clone();
    let kiosk = identified[1].1.profile_id.clone();
    assert_eq!(identified[2].1.profile_id, tom);

    let mut client = mesh.client().await;
    let request = pb::ResolveRequest {
        identifier: email("x@y.z"),
    };
    let err = client
        .resolve(tonic::Request::new(request.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = client
        .resolve(cairn_testkit::bearer(request.clone(), "tk_wrong"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = client
        .resolve(cairn_testkit::bearer(request, "tk_read"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .resolve(cairn_testkit::bearer(
            pb::ResolveRequest {
                identifier: Some(pb::Identifier {
                    r#type: "shoe_size".into(),
                    value: "44".into(),
                }),
            },
            "tk_read",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .starts_with("identifier.type: unknown identifier type \"shoe_size\""),
        "{}",
        err.message()
    );

    let split = pb::SplitRequest {
        profile_id: tom.clone(),
        identifiers: vec![
            pb::Identifier {
                r#type: "anonymous_id".into(),
                value: "kiosk".into(),
            },
            pb::Identifier {
                r#type: "device_id".into(),
                value: "kiosk-7".into(),
            },
        ],
    };
    let err = client
        .split(cairn_testkit::bearer(split.clone(), "tk_read"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let done = client
        .split(cairn_testkit::bearer(split, "tk_write"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (done.profile_id.as_str(), done.from_profile_id.as_str()),
        (kiosk.as_str(), tom.as_str())
    );
    let published = wait_for_messages(&mesh.bus, streams::PROFILES, 2).await;
    assert_eq!(
        published[1].subject,
        subjects::profiles_split(mesh.bus.partitions().of(&tom))
    );

    // Events from the kiosk now go to the kiosk's own profile again.
    mesh.send(json!([{"type": "page", "messageId": "s4", "anonymousId": "kiosk"}]))
        .await;
    let identified = mesh.identified(4).await;
    assert_eq!(identified[3].1.profile_id, kiosk);
}
