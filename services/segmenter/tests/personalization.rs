//! The personalization API (`GET /v1/personalize` on the collector) against a real
//! nats-server: what the segmenter announces (segments entered and left, web campaign
//! content) is answered by any id of the visitor, follows merges, and goes when the
//! person is forgotten.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cairn_bus::worker::{Delivered, Handled, Handler as _};
use cairn_proto::personalize::v1::Answer;
use cairn_proto::segment::v1::SegmentChanged;
use cairn_segmenter::personalization::AnswerWriter;
use common::{Mesh, VIP, mesh_with};
use prost::Message as _;
use serde_json::{Value, json};

const WELCOME_VIP: &str = r#"
name: welcome_vip
transitions:
  - {from: start, to: welcomed, entered: vip}
actions:
  welcomed:
    - {channel: web, content: "Welcome to the club, {name}", params: {name: profile.traits.name}}
"#;

fn identify(id: &str, anonymous_id: &str, user_id: Option<&str>) -> Value {
    let mut call = json!({"type": "identify", "messageId": id, "anonymousId": anonymous_id,
                          "traits": {"name": "Ann"}});
    if let Some(user_id) = user_id {
        call["userId"] = json!(user_id);
    }
    call
}

fn order(id: &str, anonymous_id: &str) -> Value {
    json!({"type": "track", "messageId": id, "anonymousId": anonymous_id, "event": "Order Completed"})
}

async fn vip_mesh() -> Mesh {
    let mesh = mesh_with(&[("vip", VIP)], &[WELCOME_VIP]).await;
    mesh.send(json!([
        identify("i1", "buyer-1", None),
        order("o1", "buyer-1"),
        order("o2", "buyer-1"),
    ]))
    .await;
    mesh
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_is_answered_with_their_segments_and_web_content() {
    let mesh = vip_mesh().await;
    let profile_id = mesh.profile().await["id"].clone();

    let (status, answer) = mesh.personalize("anonymousId=buyer-1").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["profile_id"], profile_id, "{answer}");
    assert_eq!(answer["segments"], json!(["vip"]), "{answer}");
    let content = &answer["content"];
    assert_eq!(content.as_array().unwrap().len(), 1, "{answer}");
    assert_eq!(content[0]["campaign"], "welcome_vip");
    assert_eq!(content[0]["state"], "welcomed");
    assert_eq!(content[0]["content"], "Welcome to the club, Ann");
    assert_eq!(content[0]["params"], json!({"name": "Ann"}));

    // Server side, with a token: a user id that leads nowhere falls back to the
    // anonymous id.
    let (_, again) = mesh
        .personalize_server_side("userId=nobody&anonymousId=buyer-1")
        .await;
    assert_eq!(again, answer);
    // With the public write key, nobody is looked up by user id.
    let (status, refused) = mesh.personalize("userId=nobody&anonymousId=buyer-1").await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["message"].as_str().unwrap().starts_with("userId:"),
        "{refused}"
    );

    let (status, stranger) = mesh.personalize("anonymousId=stranger-1").await;
    assert_eq!(status, 200);
    assert_eq!(
        stranger,
        json!({"profile_id": null, "segments": [], "content": []})
    );

    let (status, error) = mesh.personalize("anonymousId=&userId=").await;
    assert_eq!(status, 400, "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("anonymousId or userId"),
        "{error}"
    );
    let unauthorized = reqwest::get(format!(
        "{}/v1/personalize?anonymousId=buyer-1",
        mesh.host.http_url()
    ))
    .await
    .unwrap();
    assert_eq!(unauthorized.status(), 401);
    let wrong_key = reqwest::get(format!(
        "{}/v1/personalize?writeKey=wk_nope&anonymousId=buyer-1",
        mesh.host.http_url()
    ))
    .await
    .unwrap();
    assert_eq!(wrong_key.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_a_member_gains_lead_to_its_answer_until_it_is_forgotten() {
    let mesh = vip_mesh().await;
    // Identified: the user id leads to the answer too.
    mesh.send(json!([identify("i2", "buyer-1", Some("u7"))]))
        .await;
    let (_, by_user) = mesh.personalize_server_side("userId=u7").await;
    assert_eq!(by_user["segments"], json!(["vip"]), "{by_user}");

    // The same person on a phone: the phone's cookie leads to the merged profile.
    mesh.send(json!([
        {"type": "page", "messageId": "p1", "anonymousId": "phone-1"},
    ]))
    .await;
    mesh.send(json!([identify("i3", "phone-1", Some("u7"))]))
        .await;
    let (_, by_phone) = mesh.personalize("anonymousId=phone-1").await;
    assert_eq!(by_phone["segments"], json!(["vip"]), "{by_phone}");
    assert_eq!(by_phone["profile_id"], by_user["profile_id"], "{by_phone}");
    assert_eq!(
        by_phone["content"][0]["content"], "Welcome to the club, Ann",
        "{by_phone}"
    );

    // Forgotten: no id leads anywhere any more.
    let mut profiles =
        cairn_proto::profile::v1::profiles_client::ProfilesClient::connect(mesh.host.grpc_url())
            .await
            .unwrap();
    profiles
        .delete(common::with(cairn_proto::profile::v1::DeleteRequest {
            profile_id: by_user["profile_id"].as_str().unwrap().to_string(),
        }))
        .await
        .unwrap();
    mesh.answers_idle().await;
    for query in ["anonymousId=buyer-1", "anonymousId=phone-1", "userId=u7"] {
        let (_, gone) = mesh.personalize_server_side(query).await;
        assert_eq!(gone["profile_id"], Value::Null, "{query}: {gone}");
    }
}

/// A bucket of answers on its own nats-server, and a profile store for the writers.
struct Answers {
    _nats: cairn_testkit::TestNats,
    _dir: tempfile::TempDir,
    store: cairn_store::EmbeddedStore,
    bucket: async_nats::jetstream::kv::Store,
}

impl Answers {
    async fn start() -> Self {
        let nats = cairn_testkit::TestNats::start().await;
        let bus = nats.bus().await;
        let dir = tempfile::tempdir().unwrap();
        let store = cairn_store::EmbeddedStore::open(
            dir.path(),
            cairn_store::Fsync::Buffer,
            8 << 20,
            cairn_store::Clock::system(),
        )
        .unwrap();
        let bucket = cairn_bus::personalization::open(&bus).await.unwrap();
        Self {
            _nats: nats,
            _dir: dir,
            store,
            bucket,
        }
    }

    fn writer(&self) -> AnswerWriter<cairn_store::EmbeddedStore> {
        AnswerWriter::new(self.store.clone(), self.bucket.clone())
    }

    /// The answer of `profile` and its revision.
    async fn answer(&self, profile: &str) -> (Answer, u64) {
        let entry = self
            .bucket
            .entry(format!("p.{profile}"))
            .await
            .unwrap()
            .unwrap();
        (Answer::decode(entry.value).unwrap(), entry.revision)
    }
}

/// `profile` entered (or left) `segment`, decided on its version `version`, as the
/// answers' consumer is delivered it.
fn segment_change(profile: &str, segment: &str, entered: bool, version: u64) -> Delivered {
    Delivered {
        subject: "segments.changed.0".to_string(),
        headers: async_nats::HeaderMap::new(),
        payload: SegmentChanged {
            profile_id: profile.to_string(),
            segment: segment.to_string(),
            entered,
            at: Some(std::time::SystemTime::now().into()),
            profile_version: version,
        }
        .encode_to_vec()
        .into(),
        delivered: 1,
        stream: "SEGMENTS".to_string(),
        stream_sequence: version,
        attempt: 1,
    }
}

/// The segments an answer holds, each with whether the profile is in it.
fn memberships(answer: &Answer) -> Vec<(&str, bool)> {
    let sorted: std::collections::BTreeMap<&str, bool> = answer
        .segments
        .iter()
        .map(|(segment, membership)| (segment.as_str(), membership.member))
        .collect();
    sorted.into_iter().collect()
}

/// Two replicas write one answer in turn, each starting from the answer as it wrote it
/// last: the other's change in between is read again, never written over.
#[tokio::test]
async fn replicas_writing_one_answer_in_turn_keep_each_other_s_changes() {
    let answers = Answers::start().await;
    let replicas = [answers.writer(), answers.writer()];
    for (n, segment) in ["a", "b", "c", "d", "e", "f"].into_iter().enumerate() {
        let change = segment_change("p1", segment, true, n as u64 + 1);
        let handled = replicas[n % 2].handle(&change).await;
        assert!(matches!(handled, Handled::Publish(_)), "{handled:?}");
    }
    let (answer, _) = answers.answer("p1").await;
    assert_eq!(
        memberships(&answer),
        ["a", "b", "c", "d", "e", "f"].map(|segment| (segment, true))
    );
}

/// A round's segment changes of one profile are written into its answer together, once;
/// handling each of them afterwards (as the worker does) finds it kept and writes nothing.
#[tokio::test]
async fn a_round_of_changes_to_one_answer_is_written_once() {
    let answers = Answers::start().await;
    let writer = answers.writer();
    let round = [
        segment_change("p1", "a", true, 1),
        segment_change("p2", "x", true, 1),
        segment_change("p1", "b", true, 1),
        segment_change("p1", "a", false, 2),
        segment_change("p2", "y", true, 2),
        segment_change("p1", "c", true, 2),
    ];
    writer.prepare(&round).await;
    let revisions = [answers.answer("p1").await.1, answers.answer("p2").await.1];
    assert_eq!(
        revisions.iter().max(),
        Some(&2),
        "one write per profile for six changes: {revisions:?}"
    );
    for message in &round {
        let handled = writer.handle(message).await;
        assert!(matches!(handled, Handled::Publish(_)), "{handled:?}");
    }
    let (p1, p1_revision) = answers.answer("p1").await;
    let (p2, p2_revision) = answers.answer("p2").await;
    assert_eq!(
        [p1_revision, p2_revision],
        revisions,
        "handling the round's messages wrote nothing more"
    );
    assert_eq!(memberships(&p1), [("a", false), ("b", true), ("c", true)]);
    assert_eq!(memberships(&p2), [("x", true), ("y", true)]);
}
