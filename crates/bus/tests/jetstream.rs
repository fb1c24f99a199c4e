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

/// How many messages the EVENTS stream holds.
async fn events_stored(bus: &cairn_bus::Bus) -> u64 {
    let stream = bus.jetstream().get_stream(streams::EVENTS).await.unwrap();
    stream.get_info().await.unwrap().state.messages
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
    assert_eq!(events_stored(&bus).await, 100);
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

#[tokio::test]
async fn answers_lost_in_a_cut_fail_by_the_timeout_counted_from_sending() {
    let nats = TestNats::start().await;
    let target = nats.url().trim_start_matches("nats://").parse().unwrap();
    let proxy = cairn_testkit::proxy::TcpProxy::start(target).await;
    let mut config = cairn_bus::BusConfig::for_url(&proxy.nats_url());
    config.publish_timeout = Duration::from_secs(3);
    let bus = cairn_bus::Bus::connect(&config, "test").await.unwrap();
    bus.ensure_stream(streams::events(bus.config()))
        .await
        .unwrap();

    // Two batches go out into a cut: neither answer can come back.
    proxy.cut();
    let first = bus
        .send_all(vec![message("events.raw.1", "a")])
        .await
        .unwrap();
    let second = bus
        .send_all(vec![message("events.raw.2", "b")])
        .await
        .unwrap();
    tokio::time::sleep(config.publish_timeout).await;

    // Both are overdue already: awaited one after the other, they fail together instead
    // of taking a full timeout each (which held a worker for minutes after a NATS restart).
    let waiting = std::time::Instant::now();
    let err = first.acknowledged().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    let err = second.acknowledged().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(
        waiting.elapsed() < config.publish_timeout,
        "overdue answers took {:?}",
        waiting.elapsed()
    );

    // After the heal the same messages are published again and stored once each.
    proxy.restore();
    let mut acks = Vec::new();
    for attempt in 0..50 {
        match bus
            .publish_all(vec![
                message("events.raw.1", "a"),
                message("events.raw.2", "b"),
            ])
            .await
        {
            Ok(done) => {
                acks = done;
                break;
            }
            Err(err) => {
                assert!(attempt < 49, "never published after the heal: {err}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    assert_eq!(acks.len(), 2);
    assert_eq!(events_stored(&bus).await, 2);
}

#[tokio::test]
async fn the_bus_connects_to_any_of_the_listed_servers() {
    let nats = TestNats::start().await;
    let nobody = cairn_testkit::free_addr();
    let config = cairn_bus::BusConfig::for_url(&format!("nats://{nobody}, {}", nats.url()));
    let bus = cairn_bus::Bus::connect(&config, "test").await.unwrap();
    bus.ensure_stream(streams::events(bus.config()))
        .await
        .unwrap();
    bus.publish_all(vec![message("events.raw.0", "a")])
        .await
        .unwrap();
}
