//! Streams, consumers and publishing against a real nats-server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_nats::jetstream::consumer;
use bytes::Bytes;
use cairn_bus::{BusError, Outgoing, streams};
use cairn_runtime::{Classify, ErrorKind};
use cairn_testkit::TestNats;

fn message(subject: &str, id: &str) -> Outgoing {
    Outgoing {
        subject: subject.to_string(),
        message_id: Some(id.to_string()),
        headers: async_nats::HeaderMap::new(),
        payload: Bytes::from(format!("payload of {id}")),
    }
}

#[tokio::test]
async fn streams_are_created_once_then_updated_in_place() {
    let nats = TestNats::start().await;
    let bus = nats.bus().await;
    let mut config = bus.config().clone();
    let first = bus.ensure_stream(streams::events(&config)).await.unwrap();
    assert_eq!(first.config.subjects, vec!["events.raw.>"]);
    assert_eq!(first.config.duplicate_window, Duration::from_secs(600));
    bus.publish_all(vec![message("events.raw.3", "a")])
        .await
        .unwrap();

    // Start-up runs again: same declaration, nothing changes, nothing is lost.
    let again = bus.ensure_stream(streams::events(&config)).await.unwrap();
    assert_eq!(again.config.max_age, first.config.max_age);
    assert_eq!(again.state.messages, 1);

    // A changed declaration updates the stream and keeps its messages.
    config.events_max_age = Duration::from_secs(90 * 86_400);
    let updated = bus.ensure_stream(streams::events(&config)).await.unwrap();
    assert_eq!(updated.config.max_age, Duration::from_secs(90 * 86_400));
    assert_eq!(updated.state.messages, 1);
}

#[tokio::test]
async fn consumers_are_declared_idempotently() {
    let nats = TestNats::start().await;
    let bus = nats.bus().await;
    bus.ensure_stream(streams::events(bus.config()))
        .await
        .unwrap();
    let declaration = |max_ack_pending| consumer::pull::Config {
        durable_name: Some("identity".to_string()),
        filter_subject: "events.raw.>".to_string(),
        ack_policy: consumer::AckPolicy::Explicit,
        max_ack_pending,
        ..Default::default()
    };
    let mut first = bus
        .ensure_consumer(streams::EVENTS, declaration(1000))
        .await
        .unwrap();
    assert_eq!(first.info().await.unwrap().config.max_ack_pending, 1000);
    bus.ensure_consumer(streams::EVENTS, declaration(1000))
        .await
        .unwrap();
    let mut updated = bus
        .ensure_consumer(streams::EVENTS, declaration(5000))
        .await
        .unwrap();
    assert_eq!(updated.info().await.unwrap().config.max_ack_pending, 5000);

    let err = bus
        .ensure_consumer("NO_SUCH_STREAM", declaration(1))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("consumer identity on NO_SUCH_STREAM:"),
        "{err}"
    );
}

#[tokio::test]
async fn publish_all_waits_for_every_ack_and_dedupes_on_message_id() {
    let nats = TestNats::start().await;
    let bus = nats.bus().await;
    bus.ensure_stream(streams::events(bus.config()))
        .await
        .unwrap();
    let mut batch: Vec<Outgoing> = (0..100)
        .map(|n| message(&format!("events.raw.{}", n % 16), &format!("m-{n}")))
        .collect();
    batch.extend((0..10).map(|n| message("events.raw.0", &format!("m-{n}"))));
    let acks = bus.publish_all(batch).await.unwrap();
    assert_eq!(acks.len(), 110);
    assert_eq!(acks.iter().filter(|ack| ack.duplicate).count(), 10);
    let info = bus
        .jetstream()
        .get_stream(streams::EVENTS)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(info.state.messages, 100);
}

#[tokio::test]
async fn publishing_where_no_stream_listens_is_unavailable() {
    let nats = TestNats::start().await;
    let bus = nats.bus().await;
    let err = bus
        .publish_all(vec![message("nowhere.1", "x")])
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::NoStream { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::Unavailable);
}
