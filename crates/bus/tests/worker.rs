//! The consume → handle → publish → acknowledge loop against a real nats-server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use async_nats::jetstream::{consumer, stream};
use bytes::Bytes;
use cairn_bus::worker::{self, DEAD_LETTER_REASON, Delivered, Handled, Handler, WorkerOptions};
use cairn_bus::{Bus, Outgoing, streams};
use cairn_runtime::Shutdown;
use cairn_testkit::{TestNats, stream_messages, wait_consumer_idle};

const INPUT: &str = "INPUT";
const OUTPUT: &str = "OUTPUT";
/// JetStream refuses anything larger on OUTPUT.
const OUTPUT_MAX_BYTES: usize = 1_000;

/// Reads the payload as an instruction:
/// - `ok <name>`: publish `<name>` to `out.<partition>`;
/// - `huge <name>`: publish more than OUTPUT stores;
/// - `flaky <n> <name>`: retry until attempt `n`, then as `ok`;
/// - `never`: always retry;
/// - `bad`: dead-letter;
/// - `slow`: retry after a minute (only shutdown ends it).
#[derive(Clone)]
struct Instructions;

impl Handler for Instructions {
    async fn handle(&self, message: &Delivered) -> Handled {
        let text = String::from_utf8(message.payload.to_vec()).unwrap();
        let words: Vec<&str> = text.split(' ').collect();
        let partition = message.subject.rsplit('.').next().unwrap();
        let output = |name: &str, payload: Bytes| {
            Handled::Publish(vec![Outgoing {
                subject: format!("out.{partition}"),
                message_id: Some(format!("out/{name}")),
                headers: async_nats::HeaderMap::new(),
                payload,
            }])
        };
        match words.as_slice() {
            ["ok", name] => output(name, Bytes::from(name.to_string())),
            ["huge", name] => output(name, Bytes::from(vec![b'x'; OUTPUT_MAX_BYTES * 2])),
            ["flaky", succeeds_at, name] => {
                if message.attempt >= succeeds_at.parse().unwrap() {
                    output(
                        name,
                        Bytes::from(format!("{name} at attempt {}", message.attempt)),
                    )
                } else {
                    Handled::Retry {
                        reason: "flaky".to_string(),
                        delay: Duration::from_millis(10),
                    }
                }
            }
            ["never"] => Handled::Retry {
                reason: "the dependency is down".to_string(),
                delay: Duration::from_millis(10),
            },
            ["bad"] => Handled::DeadLetter {
                reason: "field `x`: not a number".to_string(),
            },
            ["slow"] => Handled::Retry {
                reason: "slow".to_string(),
                delay: Duration::from_secs(60),
            },
            _ => panic!("unknown instruction {text}"),
        }
    }
}

async fn set_up(bus: &Bus) -> consumer::PullConsumer {
    bus.ensure_stream(stream::Config {
        name: INPUT.to_string(),
        subjects: vec!["in.>".to_string()],
        ..Default::default()
    })
    .await
    .unwrap();
    bus.ensure_stream(stream::Config {
        name: OUTPUT.to_string(),
        subjects: vec!["out.>".to_string()],
        max_message_size: OUTPUT_MAX_BYTES as i32,
        ..Default::default()
    })
    .await
    .unwrap();
    bus.ensure_stream(streams::dead_letters(bus.config()))
        .await
        .unwrap();
    bus.ensure_consumer(
        INPUT,
        consumer::pull::Config {
            durable_name: Some("test".to_string()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: worker::ACK_WAIT,
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

async fn send(bus: &Bus, partition: u32, instructions: &[&str]) {
    let messages = instructions
        .iter()
        .map(|text| Outgoing {
            subject: format!("in.{partition}"),
            message_id: None,
            headers: async_nats::HeaderMap::new(),
            payload: Bytes::from(text.to_string()),
        })
        .collect();
    bus.publish_all(messages).await.unwrap();
}

fn options() -> WorkerOptions {
    WorkerOptions {
        service: "test",
        batch: 16,
        max_attempts: 3,
        handling: worker::Handling::InOrder,
    }
}

fn payloads(messages: &[cairn_testkit::StreamMessage]) -> Vec<String> {
    messages
        .iter()
        .map(|message| String::from_utf8(message.payload.to_vec()).unwrap())
        .collect()
}

fn reasons(messages: &[cairn_testkit::StreamMessage]) -> Vec<String> {
    messages
        .iter()
        .map(|message| {
            message
                .headers
                .get(DEAD_LETTER_REASON)
                .unwrap()
                .as_str()
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn each_partition_is_handled_in_order_and_acknowledged_after_publishing() {
    let nats = TestNats::start().await;
    let bus = nats.bus().await;
    let consumer = set_up(&bus).await;
    send(&bus, 0, &["ok a", "ok b", "ok c"]).await;
    send(&bus, 1, &["ok x", "ok y"]).await;
    let shutdown = Shutdown::new();
    let running = tokio::spawn(worker::run(
        bus.clone(),
        consumer,
        Instructions,
        options(),
        shutdown.clone(),
    ));

    wait_consumer_idle(&bus, INPUT, "test").await;
    let output = stream_messages(&bus, OUTPUT).await;
    let in_partition = |partition: &str| -> Vec<String> {
        output
            .iter()
            .filter(|message| message.subject == format!("out.{partition}"))
            .map(|message| String::from_utf8(message.payload.to_vec()).unwrap())
            .collect()
    };
    assert_eq!(in_partition("0"), ["a", "b", "c"]);
    assert_eq!(in_partition("1"), ["x", "y"]);

    shutdown.trigger();
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn failing_messages_are_retried_in_place_then_dead_lettered() {
    let nats = TestNats::start().await;
    let bus = nats.bus().await;
    let consumer = set_up(&bus).await;
    send(&bus, 0, &["flaky 3 a", "never", "bad", "ok b"]).await;
    let shutdown = Shutdown::new();
    let running = tokio::spawn(worker::run(
        bus.clone(),
        consumer,
        Instructions,
        options(),
        shutdown.clone(),
    ));

    wait_consumer_idle(&bus, INPUT, "test").await;
    // The flaky message succeeded on its third attempt, before the next one was handled.
    assert_eq!(
        payloads(&stream_messages(&bus, OUTPUT).await),
        ["a at attempt 3", "b"]
    );
    let dead = stream_messages(&bus, streams::DEAD_LETTERS).await;
    assert_eq!(payloads(&dead), ["never", "bad"]);
    assert_eq!(
        reasons(&dead),
        [
            "gave up after 3 attempts: the dependency is down",
            "field `x`: not a number"
        ]
    );
    assert!(
        dead.iter()
            .all(|message| message.subject == "deadletter.test")
    );

    shutdown.trigger();
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn output_nats_refuses_dead_letters_only_the_message_that_made_it() {
    let nats = TestNats::start().await;
    let bus = nats.bus().await;
    let consumer = set_up(&bus).await;
    send(&bus, 0, &["ok a", "huge h", "ok b"]).await;
    let shutdown = Shutdown::new();
    let running = tokio::spawn(worker::run(
        bus.clone(),
        consumer,
        Instructions,
        options(),
        shutdown.clone(),
    ));

    wait_consumer_idle(&bus, INPUT, "test").await;
    assert_eq!(payloads(&stream_messages(&bus, OUTPUT).await), ["a", "b"]);
    let dead = stream_messages(&bus, streams::DEAD_LETTERS).await;
    assert_eq!(payloads(&dead), ["huge h"]);
    let reason = &reasons(&dead)[0];
    assert!(
        reason.starts_with("its output cannot be stored"),
        "{reason}"
    );

    shutdown.trigger();
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_leaves_unfinished_messages_to_be_delivered_again() {
    let nats = TestNats::start().await;
    let bus = nats.bus().await;
    let consumer = set_up(&bus).await;
    send(&bus, 0, &["slow", "ok a"]).await;
    let shutdown = Shutdown::new();
    let running = tokio::spawn(worker::run(
        bus.clone(),
        consumer,
        Instructions,
        options(),
        shutdown.clone(),
    ));
    let mut state = bus
        .jetstream()
        .get_consumer_from_stream::<consumer::pull::Config, _, _>("test", INPUT)
        .await
        .unwrap();
    while state.info().await.unwrap().num_ack_pending == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the worker stops promptly while a message waits")
        .unwrap()
        .unwrap();

    // Neither the waiting message nor the one after it was acknowledged: both come back.
    assert!(stream_messages(&bus, OUTPUT).await.is_empty());
    let info = state.info().await.unwrap();
    assert_eq!(
        info.num_ack_pending as u64 + info.num_pending,
        2,
        "{info:?}"
    );
}
