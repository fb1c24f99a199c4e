//! Property test of the HTTP API: whatever body, path, content type and encoding a
//! client sends, the answer is a 200 or a 4xx with a JSON message naming the problem,
//! never a 5xx, and the collector keeps serving.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;

use cairn_testkit::{TestHost, TestNats, stored_events};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

const PATHS: &[&str] = &[
    "/v1/batch",
    "/v1/b",
    "/v1/import",
    "/v1/track",
    "/v1/t",
    "/v1/identify",
    "/v1/page",
    "/v1/screen",
    "/v1/group",
    "/v1/alias",
];

const CONTENT_TYPES: &[&str] = &[
    "application/json",
    "application/x-www-form-urlencoded",
    "text/plain",
    "",
];

/// Any JSON value, with the keys Segment calls use so that parsing gets deep.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("type".to_string()),
        Just("event".to_string()),
        Just("userId".to_string()),
        Just("anonymousId".to_string()),
        Just("messageId".to_string()),
        Just("timestamp".to_string()),
        Just("sentAt".to_string()),
        Just("traits".to_string()),
        Just("properties".to_string()),
        Just("context".to_string()),
        Just("batch".to_string()),
        Just("previousId".to_string()),
        Just("groupId".to_string()),
        Just("writeKey".to_string()),
        "[a-zA-Z]{0,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|number| json!(number)),
        prop_oneof![
            Just("track".to_string()),
            Just("identify".to_string()),
            Just("alias".to_string()),
            Just("2026-11-23T10:00:00Z".to_string()),
            Just("not a time".to_string()),
            ".{0,20}",
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

/// A Segment call that is often valid: right keys, values sometimes of the wrong kind.
fn call() -> impl Strategy<Value = Value> {
    let id = prop_oneof![
        3 => "[a-z0-9-]{1,12}".prop_map(Value::from),
        1 => json_value(),
    ];
    (
        prop::sample::select(&["track", "identify", "page", "screen", "group", "alias", "x"][..]),
        prop::option::weighted(0.9, id.clone()),
        prop::option::of(id.clone()),
        prop::option::of(id),
        prop::option::of(prop_oneof![
            4 => Just(json!({"price": 9.5, "section": "running"})),
            1 => json_value(),
        ]),
        prop::option::of(prop_oneof![
            2 => Just(Value::from("2026-11-23T10:00:00Z")),
            2 => Just(Value::from("2026-11-23T10:00:00.123+01:00")),
            1 => json_value(),
        ]),
    )
        .prop_map(|(kind, user, anonymous, message, properties, timestamp)| {
            let mut call =
                json!({"type": kind, "event": "Viewed", "previousId": "p-1", "groupId": "g-1"});
            for (key, value) in [
                ("userId", user),
                ("anonymousId", anonymous),
                ("messageId", message),
                ("properties", properties),
                ("timestamp", timestamp),
            ] {
                if let Some(value) = value {
                    call[key] = value;
                }
            }
            call
        })
}

/// A body: calls and batches of them, any JSON, cut or bit-flipped JSON, or plain bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => call().prop_map(|call| serde_json::to_vec(&call).unwrap()),
        4 => prop::collection::vec(call(), 0..5)
            .prop_map(|calls| serde_json::to_vec(&json!({ "batch": calls })).unwrap()),
        1 => json_value().prop_map(|value| serde_json::to_vec(&value).unwrap()),
        1 => (json_value(), any::<prop::sample::Index>()).prop_map(|(value, cut)| {
            let bytes = serde_json::to_vec(&value).unwrap();
            bytes[..cut.index(bytes.len() + 1)].to_vec()
        }),
        1 => (call(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(value, at, flip)| {
            let mut bytes = serde_json::to_vec(&value).unwrap();
            let at = at.index(bytes.len());
            bytes[at] ^= flip | 1;
            bytes
        }),
        1 => prop::collection::vec(any::<u8>(), 0..512),
    ]
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[test]
fn no_body_gets_a_server_error_and_the_collector_keeps_serving() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (nats, host) = runtime.block_on(async {
        let nats = TestNats::start().await;
        let url = nats.url();
        let vars = [cairn_runtime::VARS.to_vec(), cairn_collector::vars()].concat();
        let context = TestHost::context(
            &vars,
            [
                ("CAIRN_NATS_URL", url.as_str()),
                ("CAIRN_WRITE_KEYS", "web:wk_web"),
                ("CAIRN_INGEST_RATE_LIMIT", "0"),
            ],
        );
        let module = cairn_collector::start(&context).await.unwrap();
        (nats, TestHost::serve(vec![module], context).await)
    });
    let client = reqwest::Client::new();
    let base = host.http_url();
    let accepted = std::sync::atomic::AtomicUsize::new(0);

    // Half the time a call goes to its own path or a batch to /v1/batch; otherwise anything.
    let path_and_body = prop_oneof![
        call().prop_map(|call| {
            let path = match call["type"].as_str() {
                Some("identify") => "/v1/identify",
                Some("page") => "/v1/page",
                Some("screen") => "/v1/screen",
                Some("group") => "/v1/group",
                Some("alias") => "/v1/alias",
                _ => "/v1/track",
            };
            (path, serde_json::to_vec(&call).unwrap())
        }),
        prop::collection::vec(call(), 0..5).prop_map(|calls| {
            (
                "/v1/batch",
                serde_json::to_vec(&json!({ "batch": calls })).unwrap(),
            )
        }),
        (prop::sample::select(PATHS), body()),
    ];
    let request = (
        path_and_body,
        prop::sample::select(CONTENT_TYPES),
        prop_oneof![4 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)],
    );
    let mut runner = TestRunner::new(Config {
        cases: 400,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&request, |((path, body), content_type, encoding)| {
            let (status, text) = runtime.block_on(async {
                let mut request = client
                    .post(format!("{base}{path}"))
                    .basic_auth("wk_web", Some(""));
                if !content_type.is_empty() {
                    request = request.header("content-type", content_type);
                }
                // 0: plain; 1: gzip, said so; 2: claimed gzip, sent plain.
                let body = match encoding {
                    1 => gzip(&body),
                    _ => body,
                };
                if encoding > 0 {
                    request = request.header("content-encoding", "gzip");
                }
                let response = request.body(body).send().await.expect("an answer");
                (response.status(), response.text().await.unwrap_or_default())
            });
            prop_assert!(
                status == 200 || status == 400 || status == 413,
                "{path}: {status} {text}"
            );
            let answer: Value = serde_json::from_str(&text)
                .map_err(|err| TestCaseError::fail(format!("not JSON ({err}): {text}")))?;
            if status == 200 {
                accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                prop_assert_eq!(&answer["success"], &json!(true));
            } else {
                prop_assert_eq!(&answer["success"], &json!(false));
                let message = answer["message"].as_str().unwrap_or_default();
                prop_assert!(!message.is_empty(), "{path}: {status} without a message");
            }
            Ok(())
        })
        .unwrap();

    // Still serving, and what it accepted was stored.
    let accepted = accepted.into_inner();
    runtime.block_on(async {
        host.send_batch(
            "wk_web",
            json!([{"type": "track", "event": "After", "userId": "u-1"}]),
        )
        .await;
        let stored = stored_events(&nats.bus().await).await;
        assert!(
            stored.len() > accepted.min(1),
            "{accepted} accepted requests"
        );
        eprintln!(
            "{accepted} of 400 random requests accepted; {} events stored",
            stored.len()
        );
    });
}
