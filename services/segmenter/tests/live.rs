//! Memberships kept live against a real nats-server: events sent to the collector move
//! profiles into and out of segments, each transition announced once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Receiver, mesh, with};

use cairn_bus::streams;
use std::collections::{BTreeMap, BTreeSet};

use cairn_proto::segment::v1 as pb;
use cairn_store::EmbeddedStore;
use cairn_testkit::{wait_consumer_idle, wait_for_messages};
use serde_json::json;

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
    let redelivered = mesh.redeliver_changes("again").await;
    assert!(redelivered >= 5, "{redelivered}");
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

/// Profile `n` of the batch tests: `n % 4` pages, and a pro plan when `n.is_multiple_of(3)`.
fn visitor(n: usize) -> Vec<serde_json::Value> {
    let anonymous = format!("v{n}");
    let plan = if n.is_multiple_of(3) { "pro" } else { "free" };
    let mut events = vec![
        json!({"type": "identify", "messageId": format!("i{n}"), "anonymousId": anonymous, "traits": {"plan": plan}}),
    ];
    for visit in 0..n % 4 {
        events.push(
            json!({"type": "page", "messageId": format!("p{n}-{visit}"), "anonymousId": anonymous}),
        );
    }
    events
}

/// The profile ids of the visitors with `n` matching.
async fn visitors(
    store: &EmbeddedStore,
    count: usize,
    which: impl Fn(usize) -> bool,
) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for n in (0..count).filter(|n| which(*n)) {
        let identifier = cairn_profile_store::profile::Identifier {
            kind: "anonymous_id".to_string(),
            value: format!("v{n}"),
        };
        let id = cairn_profile_store::store::lookup(store, &identifier)
            .await
            .unwrap()
            .unwrap();
        ids.insert(id.profile.id);
    }
    ids
}

#[tokio::test]
async fn a_batch_run_agrees_with_the_live_memberships_and_fills_in_a_new_segment() {
    const COUNT: usize = 30;
    let mesh = mesh(&[
        ("regulars", "FILTER event_count.page.all >= 2"),
        ("pros", "FILTER plan == \"pro\""),
        (
            "regular_pros",
            "FILTER AND (INCLUDE regulars, INCLUDE pros)",
        ),
    ])
    .await;
    mesh.send(json!((0..COUNT).flat_map(visitor).collect::<Vec<_>>()))
        .await;
    let expected = [
        (
            "regulars",
            visitors(&mesh.store, COUNT, |n| n % 4 >= 2).await,
        ),
        (
            "pros",
            visitors(&mesh.store, COUNT, |n| n.is_multiple_of(3)).await,
        ),
        (
            "regular_pros",
            visitors(&mesh.store, COUNT, |n| n % 4 >= 2 && n.is_multiple_of(3)).await,
        ),
    ];
    let announced = mesh.transitions().await.len();
    for (segment, expected) in &expected {
        assert!(expected.len() <= cairn_segmenter::batch::SAMPLE);
        assert_eq!(&mesh.members(segment).await, expected, "{segment} live");
        let batch = mesh.evaluate(segment).await;
        assert_eq!(batch.evaluated, COUNT as u64, "{batch:?}");
        assert_eq!(batch.size, expected.len() as u64, "{batch:?}");
        assert_eq!(
            &batch.sample.iter().cloned().collect::<BTreeSet<_>>(),
            expected
        );
        assert_eq!(
            batch.corrected, 0,
            "the live memberships were right: {batch:?}"
        );
    }

    // A filter not saved yet, previewed: what saving it would hold, with nothing saved
    // or announced.
    let preview = mesh
        .client()
        .await
        .preview(with(pb::PreviewRequest {
            filter: "FILTER AND (INCLUDE regulars, NOT plan == \"pro\")".to_string(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let free_regulars = visitors(&mesh.store, COUNT, |n| n % 4 >= 2 && !n.is_multiple_of(3)).await;
    assert_eq!(preview.evaluated, COUNT as u64, "{preview:?}");
    assert_eq!(preview.fraction, 1.0, "every profile was evaluated");
    assert_eq!(preview.matched, free_regulars.len() as u64, "{preview:?}");
    assert_eq!(preview.estimated_size, preview.matched);
    assert_eq!(
        preview.sample.into_iter().collect::<BTreeSet<_>>(),
        free_regulars
    );
    let refused = mesh
        .client()
        .await
        .preview(with(pb::PreviewRequest {
            filter: "FILTER INCLUDE nowhere".to_string(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("nowhere"),
        "{}",
        refused.message()
    );
    assert_eq!(mesh.transitions().await.len(), announced);

    // A segment saved now is filled in over everyone already profiled, each entry
    // announced once.
    mesh.client()
        .await
        .put(with(pb::PutRequest {
            name: "newcomers".to_string(),
            filter: "FILTER event_count.page.all == 1".to_string(),
            ..Default::default()
        }))
        .await
        .unwrap();
    let newcomers = visitors(&mesh.store, COUNT, |n| n % 4 == 1).await;
    let batch = mesh.evaluate("newcomers").await;
    assert_eq!(batch.size, newcomers.len() as u64);
    // (Saving started the run; this one joined it, or came after it.)
    assert!(batch.corrected <= newcomers.len() as u64, "{batch:?}");
    assert_eq!(mesh.members("newcomers").await, newcomers);
    let entered: Vec<(String, bool)> = mesh.transitions().await.split_off(announced);
    assert_eq!(
        entered,
        vec![("newcomers".to_string(), true); newcomers.len()]
    );
    assert_eq!(mesh.evaluate("newcomers").await.corrected, 0);
}

#[tokio::test]
async fn memberships_survive_a_restart_and_are_not_announced_again() {
    let mesh = mesh(&[("regulars", "FILTER event_count.page.all >= 2")]).await;
    mesh.send(json!([page("p1"), page("p2")])).await;
    let entered = vec![("regulars".to_string(), true)];
    assert_eq!(mesh.transitions().await, entered);

    let mesh = mesh.restart().await;
    mesh.send(json!([page("p3")])).await;
    // Every change delivered again after the restart, as after a crash before the acks.
    mesh.redeliver_changes("again").await;
    assert_eq!(mesh.transitions().await, entered);
    assert_eq!(mesh.members("regulars").await.len(), 1);
    assert!(mesh.profile().await["segments"]["regulars"].is_string());
}

#[tokio::test]
async fn a_timer_that_comes_early_sets_the_next_one() {
    // Six seconds: the second visit, sent 1.5 s after the first, must get through the
    // mesh before the first one's boundary, even on a machine busy with other tests.
    let mesh = mesh(&[("just_seen", "FILTER last_seen > \"now-6s\"")]).await;
    mesh.send(json!([page("p1")])).await;
    // A second visit moves the boundary on; the timer set for the first one stays, comes
    // early, and sets the next one instead of letting the profile go.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    mesh.send(json!([page("p2")])).await;
    let second_visit = std::time::Instant::now();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let transitions = mesh.transitions().await;
        if transitions.len() == 2 {
            assert_eq!(transitions[1], ("just_seen".to_string(), false));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{transitions:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        second_visit.elapsed() >= std::time::Duration::from_millis(5000),
        "left {:?} after the second visit",
        second_visit.elapsed()
    );
}

/// A webhook receiver: what it was sent, by path; `/flaky` fails the first request of
/// each batch with 500, `/broken` answers 400 to everything, `/down` 503.
#[tokio::test]
async fn a_segment_syncs_to_its_webhook_signed_retried_and_dead_lettered() {
    use hmac::Mac as _;
    const SECRET: &str = "a-secret-of-16-chars";
    let (receiver, url) = Receiver::start().await;
    // A segment without a webhook: its changes are none of activation's business.
    let mesh = mesh(&[("browsers", "FILTER event_count.page.all >= 1")]).await;
    for (name, filter, path) in [
        ("regulars", "FILTER event_count.page.all >= 2", "flaky"),
        ("visitors", "FILTER event_count.page.all >= 1", "broken"),
        ("viewers", "FILTER event_count.page.all >= 1", "down"),
    ] {
        mesh.client()
            .await
            .put(with(pb::PutRequest {
                name: name.to_string(),
                filter: filter.to_string(),
                webhook_url: format!("{url}/{path}"),
                webhook_secret: SECRET.to_string(),
                ..Default::default()
            }))
            .await
            .unwrap();
    }
    mesh.send(json!([page("p1"), page("p2")])).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while receiver.requests("flaky").len() < 2 || receiver.requests("broken").is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no webhooks");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Failed once, sent again the same: same batch id, signed each time.
    let flaky = receiver.requests("flaky");
    assert_eq!(flaky.len(), 2);
    assert_eq!(flaky[0].0["idempotency-key"], flaky[1].0["idempotency-key"]);
    assert_eq!(flaky[0].1, flaky[1].1);
    let (headers, batch, body) = &flaky[1];
    assert_eq!(batch["segment"], "regulars");
    assert_eq!(batch["batch"], headers["idempotency-key"].to_str().unwrap());
    let changes = batch["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0]["entered"], true);
    assert!(changes[0]["profile_id"].as_str().unwrap().starts_with('p'));
    let timestamp = headers["x-cairn-timestamp"].to_str().unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    let expected = format!(
        "sha256={}",
        cairn_runtime::encoding::hex(&mac.finalize().into_bytes())
    );
    assert_eq!(headers["x-cairn-signature"].to_str().unwrap(), expected);

    // Refused: not retried; down: retried up to the limit. Both dead-lettered with the
    // reason.
    let dead = wait_for_messages(&mesh.bus, streams::DEAD_LETTERS, 2).await;
    let mut reasons = BTreeMap::new();
    for letter in &dead {
        assert_eq!(letter.subject, "deadletter.segmenter_webhooks");
        let reason = letter
            .headers
            .get(cairn_bus::worker::DEAD_LETTER_REASON)
            .unwrap();
        let batch: serde_json::Value = serde_json::from_slice(&letter.payload).unwrap();
        reasons.insert(
            batch["segment"].as_str().unwrap().to_string(),
            reason.to_string(),
        );
    }
    assert!(
        reasons["visitors"].contains("answered 400 Bad Request"),
        "{reasons:?}"
    );
    assert!(
        reasons["viewers"].starts_with("gave up after 3 attempts")
            && reasons["viewers"].contains("503"),
        "{reasons:?}"
    );
    assert_eq!(receiver.requests("broken").len(), 1);
    assert_eq!(receiver.requests("down").len(), 3);

    // Only the changes of the segments with a webhook are on the subject the webhooks'
    // consumer reads, and it was given those alone.
    let changes: Vec<(String, String)> =
        cairn_testkit::stream_messages(&mesh.bus, streams::SEGMENTS)
            .await
            .into_iter()
            .filter(|message| message.subject.starts_with("segments.changed."))
            .map(|message| {
                let changed =
                    <pb::SegmentChanged as prost::Message>::decode(message.payload).unwrap();
                (changed.segment, message.subject)
            })
            .collect();
    let synced = |segment: &str| segment != "browsers";
    assert_eq!(
        changes
            .iter()
            .filter(|(segment, _)| !synced(segment))
            .count(),
        1,
        "{changes:?}"
    );
    for (segment, subject) in &changes {
        assert_eq!(subject.ends_with(".synced"), synced(segment), "{changes:?}");
    }
    let consumer = mesh
        .bus
        .consumer_info(streams::SEGMENTS, cairn_segmenter::activation::SERVICE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        consumer.delivered.consumer_sequence,
        changes
            .iter()
            .filter(|(segment, _)| synced(segment))
            .count() as u64
    );
}

#[tokio::test]
async fn memberships_end_when_a_profile_is_merged_into_another_or_deleted() {
    let mesh = mesh(&[("visitors", "FILTER event_count.page.all >= 1")]).await;
    mesh.send(json!([
        {"type": "identify", "messageId": "l1", "anonymousId": "laptop", "traits": {"email": "ann@example.com"}},
        {"type": "page", "messageId": "l2", "anonymousId": "laptop"},
        {"type": "page", "messageId": "p1", "anonymousId": "phone"},
    ]))
    .await;
    assert_eq!(mesh.members("visitors").await.len(), 2);
    // The phone logs in with the laptop's email: one person, in the segment once.
    mesh.send(json!([
        {"type": "track", "messageId": "link", "anonymousId": "phone", "event": "Signed In",
         "context": {"traits": {"email": "ann@example.com"}}},
    ]))
    .await;
    let survivor = visitors_of(&mesh.store, &["laptop", "phone"]).await;
    assert_eq!(survivor.len(), 1, "{survivor:?}");
    assert_eq!(mesh.members("visitors").await, survivor);
    let visitors = |entered| ("visitors".to_string(), entered);
    assert_eq!(
        mesh.transitions().await,
        vec![visitors(true), visitors(true), visitors(false)]
    );

    // Deleted: the last membership ends too, and a late change brings nothing back.
    let id = survivor.into_iter().next().unwrap();
    let mut profiles =
        cairn_proto::profile::v1::profiles_client::ProfilesClient::connect(mesh.host.grpc_url())
            .await
            .unwrap();
    profiles
        .delete(with(cairn_proto::profile::v1::DeleteRequest {
            profile_id: id.clone(),
        }))
        .await
        .unwrap();
    wait_consumer_idle(&mesh.bus, streams::PROFILES, "segmenter_deleted").await;
    mesh.redeliver_changes("late").await;
    assert!(mesh.members("visitors").await.is_empty());
    assert_eq!(
        mesh.transitions().await,
        vec![
            visitors(true),
            visitors(true),
            visitors(false),
            visitors(false)
        ]
    );
}

/// The profiles the anonymous ids lead to now.
async fn visitors_of(store: &EmbeddedStore, anonymous: &[&str]) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for value in anonymous {
        let identifier = cairn_profile_store::profile::Identifier {
            kind: "anonymous_id".to_string(),
            value: value.to_string(),
        };
        if let Some(found) = cairn_profile_store::store::lookup(store, &identifier)
            .await
            .unwrap()
        {
            ids.insert(found.profile.id);
        }
    }
    ids
}
