//! The collector's HTTP API against a real nats-server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io::Write as _;
use std::time::Duration;

use base64::Engine as _;
use cairn_bus::{Bus, Partitions};
use cairn_proto::event::v1::EventType;
use cairn_testkit::{TestHost, TestNats, events, stored_events};
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

struct Fixture {
    nats: TestNats,
    host: TestHost,
    bus: Bus,
    client: reqwest::Client,
}

async fn fixture(extra: &[(&str, &str)]) -> Fixture {
    let nats = TestNats::start().await;
    let url = nats.url();
    let mut pairs = vec![
        ("CAIRN_NATS_URL", url.as_str()),
        ("CAIRN_WRITE_KEYS", "web:wk_web,ios:wk_ios"),
        ("CAIRN_ADMIN_TOKENS", "admin:tk_admin"),
        ("CAIRN_PUBLISH_TIMEOUT", "2s"),
    ];
    pairs.extend_from_slice(extra);
    let vars = [cairn_runtime::VARS.to_vec(), cairn_collector::vars()].concat();
    let context = TestHost::context(&vars, pairs);
    let module = cairn_collector::start(&context).await.unwrap();
    let host = TestHost::serve(vec![module], context).await;
    let bus = nats.bus().await;
    Fixture {
        nats,
        host,
        bus,
        client: reqwest::Client::new(),
    }
}

fn basic(key: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    )
}

impl Fixture {
    async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.host.http_url()))
            .header("authorization", basic("wk_web"))
            .header("user-agent", "analytics-node/2.1.0")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    async fn readyz(&self) -> StatusCode {
        reqwest::get(format!("http://{}/readyz", self.host.admin))
            .await
            .unwrap()
            .status()
    }
}

async fn message(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap();
    (
        status,
        body["message"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test]
async fn every_call_type_is_stored_byte_for_byte() {
    let fixture = fixture(&[]).await;
    let calls = [
        (
            "/v1/track",
            "track",
            EventType::Track,
            r#"{"event":"Order Completed", "anonymousId":"a-1","messageId":"m-track","properties":{"revenue":12.5,"emoji":"🥾"}}"#,
        ),
        (
            "/v1/identify",
            "identify",
            EventType::Identify,
            r#"{ "userId" : "u-1", "messageId":"m-identify", "traits": {"email": "Tom@Example.com"} }"#,
        ),
        (
            "/v1/page",
            "page",
            EventType::Page,
            r#"{"anonymousId":"a-1","messageId":"m-page","name":"Home","properties":{"url":"https://shop.example.com/"}}"#,
        ),
        (
            "/v1/screen",
            "screen",
            EventType::Screen,
            r#"{"userId":"u-1","messageId":"m-screen","name":"Cart"}"#,
        ),
        (
            "/v1/group",
            "group",
            EventType::Group,
            r#"{"userId":"u-1","messageId":"m-group","groupId":"acme","traits":{"plan":"pro"}}"#,
        ),
        (
            "/v1/alias",
            "alias",
            EventType::Alias,
            r#"{"userId":"u-1","previousId":"a-1","messageId":"m-alias"}"#,
        ),
        (
            "/v1/t",
            "track (short path)",
            EventType::Track,
            r#"{"event":"Clicked","userId":"u-2","messageId":"m-short"}"#,
        ),
    ];
    for (path, name, _, body) in &calls {
        let response = fixture.post(path, *body).await;
        assert_eq!(response.status(), StatusCode::OK, "{name}");
        assert_eq!(response.text().await.unwrap(), r#"{"success":true}"#);
    }

    let stored = stored_events(&fixture.bus).await;
    assert_eq!(stored.len(), calls.len());
    let partitions = Partitions::new(16);
    for (stored, (_, name, kind, body)) in stored.iter().zip(&calls) {
        let envelope = &stored.envelope;
        assert_eq!(envelope.raw, body.as_bytes(), "{name}: raw bytes");
        assert_eq!(envelope.r#type(), *kind, "{name}");
        assert_eq!(envelope.source, "web");
        assert_eq!(envelope.client_ip, "127.0.0.1");
        assert_eq!(envelope.user_agent, "analytics-node/2.1.0");
        assert!(!envelope.message_id_generated);
        assert!(envelope.received_at.is_some());
        let partition = partitions.of(&envelope.partition_key);
        assert_eq!(stored.subject, format!("events.raw.{partition}"), "{name}");
        assert_eq!(
            stored
                .headers
                .get("Nats-Msg-Id")
                .map(|value| value.as_str().to_string()),
            Some(format!("web:{}", envelope.message_id))
        );
    }
    assert_eq!(stored[0].envelope.partition_key, "a-1");
    assert_eq!(stored[1].envelope.partition_key, "u-1");
}

#[tokio::test]
async fn batch_elements_are_stored_as_their_own_bytes() {
    let fixture = fixture(&[]).await;
    let elements = [
        r#"{"type":"identify","userId":"u-9","traits":{"email":"x@y.z"},"messageId":"b-1"}"#,
        r#"{ "type": "track", "event": "Added to Cart", "anonymousId": "a-9", "properties": {"cart_items": 3} }"#,
        r#"{"type":"page","anonymousId":"a-9","originalTimestamp":"2026-11-22T10:00:00.000Z","sentAt":"2026-11-22T10:00:02.000Z"}"#,
    ];
    let body = format!(
        "{{\"batch\": [\n  {},\n  {},\n  {}\n], \"sentAt\": \"2026-11-22T10:00:03Z\", \"context\": {{\"library\": {{\"name\": \"analytics-python\"}}}}}}",
        elements[0], elements[1], elements[2]
    );
    let response = fixture.post("/v1/batch", body).await;
    assert_eq!(response.status(), StatusCode::OK);

    let stored = stored_events(&fixture.bus).await;
    assert_eq!(stored.len(), 3);
    for (stored, element) in stored.iter().zip(elements) {
        assert_eq!(stored.envelope.raw, element.as_bytes());
        assert_eq!(stored.envelope.batch_sent_at, "2026-11-22T10:00:03Z");
        assert_eq!(
            stored.envelope.batch_context,
            r#"{"library": {"name": "analytics-python"}}"#.as_bytes()
        );
    }
    // Elements without a messageId get a generated one, each different.
    assert_eq!(stored[0].envelope.message_id, "b-1");
    assert!(stored[1].envelope.message_id_generated);
    assert!(stored[1].envelope.message_id.starts_with("cairn-"));
    assert_ne!(stored[1].envelope.message_id, stored[2].envelope.message_id);
}

#[tokio::test]
async fn gzip_and_form_content_types_are_accepted() {
    let fixture = fixture(&[]).await;
    let body =
        serde_json::to_vec(&json!({"batch": [events::track("gz-1", "a-1", "Viewed")]})).unwrap();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(&body).unwrap();
    let gzipped = encoder.finish().unwrap();

    // With Content-Encoding: gzip, as analytics-node sends it.
    let response = fixture
        .client
        .post(format!("{}/v1/batch", fixture.host.http_url()))
        .header("authorization", basic("wk_web"))
        .header("content-encoding", "gzip")
        .body(gzipped.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // Gzip without the header, and JSON labelled as a form (one SDK does this).
    let body =
        serde_json::to_vec(&json!({"batch": [events::track("form-1", "a-1", "Viewed")]})).unwrap();
    for (label, bytes) in [
        ("gzip without header", gzipped),
        ("form content type", body),
    ] {
        let response = fixture
            .client
            .post(format!("{}/v1/batch", fixture.host.http_url()))
            .header("authorization", basic("wk_web"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(bytes)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{label}");
    }
    let stored = stored_events(&fixture.bus).await;
    let ids: Vec<_> = stored
        .iter()
        .map(|event| event.envelope.message_id.as_str())
        .collect();
    // The gzip body was sent twice with the same messageId: stored once.
    assert_eq!(ids, vec!["gz-1", "form-1"]);
    let raw: serde_json::Value = serde_json::from_slice(&stored[0].envelope.raw).unwrap();
    assert_eq!(raw, events::track("gz-1", "a-1", "Viewed"));
}

#[tokio::test]
async fn requests_without_a_valid_write_key_get_401() {
    let fixture = fixture(&[]).await;
    let url = format!("{}/v1/track", fixture.host.http_url());
    let body = r#"{"event":"x","userId":"u"}"#;
    let cases = [
        ("no credentials", None),
        ("wrong key", Some(basic("wk_nope"))),
        ("not base64", Some("Basic %%%".to_string())),
        ("unknown scheme", Some("Digest abc".to_string())),
    ];
    for (label, header) in cases {
        let mut request = fixture.client.post(&url).body(body);
        if let Some(header) = header {
            request = request.header("authorization", header);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{label}");
        let (_, message) = message(response).await;
        assert!(!message.is_empty(), "{label}: a message says why");
    }
    // An admin token is not a write key.
    let response = fixture
        .client
        .post(&url)
        .header("authorization", "Bearer tk_admin")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(stored_events(&fixture.bus).await.is_empty());

    // A write key in the body works for clients that cannot set headers.
    let response = fixture
        .client
        .post(&url)
        .body(r#"{"event":"x","userId":"u","writeKey":"wk_ios"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(stored_events(&fixture.bus).await[0].envelope.source, "ios");
}

#[tokio::test]
async fn bad_requests_get_400_naming_the_problem() {
    let fixture = fixture(&[]).await;
    let padding = "x".repeat(33 * 1024);
    let big_event = format!(
        r#"{{"type":"track","event":"x","userId":"u","properties":{{"pad":"{padding}"}}}}"#
    );
    let element = r#"{"type":"track","event":"Viewed","userId":"u","properties":{"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}"#;
    let huge_batch = format!("{{\"batch\":[{}]}}", vec![element; 4000].join(","));
    let cases = [
        ("/v1/track", big_event.clone(), "the limit is 32 KB per call"),
        ("/v1/batch", format!("{{\"batch\":[{big_event}]}}"), "batch[0].event is 33"),
        ("/v1/batch", huge_batch, "the limit is 500 KB per batch"),
        ("/v1/batch", "{\"batch\": [\n {\"type\": \"track\" \"event\": 1}]}".to_string(), "invalid JSON at line 2, column 19"),
        (
            "/v1/batch",
            r#"{"batch":[{"type":"track","event":"a","userId":"u"},{"type":"track","userId":"u"}]}"#.to_string(),
            "batch[1].event: required for track",
        ),
        ("/v1/identify", r#"{"traits":{}}"#.to_string(), "userId: userId or anonymousId is required"),
        ("/v1/alias", r#"{"userId":"u"}"#.to_string(), "previousId: required for alias"),
        ("/v1/group", r#"{"userId":"u"}"#.to_string(), "groupId: required for group"),
        ("/v1/track", r#"{"userId":"u","event":"x","timestamp":"yesterday"}"#.to_string(), "timestamp: not an ISO 8601 date-time: \"yesterday\""),
        ("/v1/batch", r#"{"events":[]}"#.to_string(), "batch: required"),
        (
            "/v1/track",
            r#"{"userId":"u","event":"x","messageId":"a\u000ab"}"#.to_string(),
            "messageId: must not contain control characters",
        ),
    ];
    for (path, body, expected) in cases {
        let response = fixture.post(path, body).await;
        let (status, message) = message(response).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{expected}");
        assert!(
            message.contains(expected),
            "expected {expected:?} in {message:?}"
        );
    }
    assert!(
        stored_events(&fixture.bus).await.is_empty(),
        "nothing of a refused request is stored"
    );
}

#[tokio::test]
async fn a_retried_message_id_is_stored_once() {
    let fixture = fixture(&[]).await;
    let body = serde_json::to_vec(&json!({"batch": [
        events::track("retry-1", "a-1", "Viewed"),
        events::page("retry-2", "a-1", "https://shop.example.com/shoes"),
    ]}))
    .unwrap();
    for _ in 0..3 {
        assert_eq!(
            fixture.post("/v1/batch", body.clone()).await.status(),
            StatusCode::OK
        );
    }
    let stored = stored_events(&fixture.bus).await;
    let ids: Vec<_> = stored
        .iter()
        .map(|event| event.envelope.message_id.clone())
        .collect();
    assert_eq!(ids, vec!["retry-1", "retry-2"]);
}

#[tokio::test]
async fn nats_down_gives_503_and_every_acknowledged_event_is_stored() {
    let mut fixture = fixture(&[]).await;
    assert_eq!(fixture.readyz().await, StatusCode::OK);

    // Four clients send batches continuously while NATS goes away and comes back.
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let statuses = std::sync::Arc::new(std::sync::Mutex::new(Vec::<StatusCode>::new()));
    let stop = stop_flag();
    let mut workers = Vec::new();
    for worker in 0..4 {
        let (client, url) = (
            fixture.client.clone(),
            format!("{}/v1/batch", fixture.host.http_url()),
        );
        let (acknowledged, statuses, stop) = (acknowledged.clone(), statuses.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let ids: Vec<String> = (0..10).map(|i| format!("w{worker}-{n}-{i}")).collect();
                let batch: Vec<_> = ids
                    .iter()
                    .map(|id| events::track(id, "a-1", "Viewed"))
                    .collect();
                let response = client
                    .post(&url)
                    .header("authorization", basic("wk_web"))
                    .json(&json!({ "batch": batch }))
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    assert!(response.headers().contains_key("retry-after"));
                }
                if status == StatusCode::OK {
                    acknowledged.lock().unwrap().extend(ids);
                }
                statuses.lock().unwrap().push(status);
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    fixture.nats.stop().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(fixture.readyz().await, StatusCode::SERVICE_UNAVAILABLE);
    fixture.nats.restart().await;
    // The collector reconnects by itself and becomes ready again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while fixture.readyz().await != StatusCode::OK {
        assert!(
            tokio::time::Instant::now() < deadline,
            "collector did not reconnect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Clients are served again (JetStream may take a moment more than the connection).
    let served_before = acknowledged.lock().unwrap().len();
    while acknowledged.lock().unwrap().len() == served_before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no request succeeded after NATS came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }

    let statuses = statuses.lock().unwrap().clone();
    assert!(
        statuses.contains(&StatusCode::SERVICE_UNAVAILABLE),
        "some requests met NATS down"
    );
    assert!(
        statuses
            .iter()
            .all(|status| *status == StatusCode::OK || *status == StatusCode::SERVICE_UNAVAILABLE),
        "{statuses:?}"
    );
    let bus = fixture.nats.bus().await;
    let stored: HashSet<String> = stored_events(&bus)
        .await
        .into_iter()
        .map(|event| event.envelope.message_id)
        .collect();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(!acknowledged.is_empty());
    let missing: Vec<_> = acknowledged
        .iter()
        .filter(|id| !stored.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not stored: {missing:?}"
    );
}

fn stop_flag() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false))
}

#[tokio::test]
async fn a_full_stream_gives_429_with_retry_after() {
    let fixture = fixture(&[("CAIRN_EVENTS_MAX_BYTES", "4KB")]).await;
    let mut refused = None;
    for n in 0..50 {
        let response = fixture
            .post(
                "/v1/track",
                serde_json::to_vec(&events::track(&format!("full-{n}"), "a-1", "Viewed")).unwrap(),
            )
            .await;
        if response.status() != StatusCode::OK {
            refused = Some((n, response));
            break;
        }
    }
    let (accepted, response) = refused.expect("the stream filled up");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    let (_, message) = message(response).await;
    assert!(message.contains("full"), "{message}");
    assert_eq!(
        stored_events(&fixture.bus).await.len(),
        accepted,
        "old events are kept, new ones refused"
    );
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let fixture = fixture(&[]).await;
    let body = serde_json::to_vec(&events::track("inflight-1", "a-1", "Viewed")).unwrap();
    let head = format!(
        "POST /v1/track HTTP/1.1\r\nhost: localhost\r\nauthorization: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        basic("wk_web"),
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(fixture.host.http.unwrap())
        .await
        .unwrap();
    // Half the request is on the wire when shutdown begins.
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let context = fixture.host.context.clone();
    let host = tokio::spawn(fixture.host.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !host.is_finished(),
        "the host waits for the request in flight"
    );
    assert!(
        context.readiness.check().is_err(),
        "not ready while draining"
    );
    stream.write_all(&body[10..]).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    host.await.unwrap().unwrap();
    let stored = stored_events(&fixture.bus).await;
    assert_eq!(stored[0].envelope.message_id, "inflight-1");
}

#[tokio::test]
async fn browsers_get_cors_and_operators_get_metrics() {
    let fixture = fixture(&[]).await;
    let response = fixture
        .client
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/t", fixture.host.http_url()),
        )
        .header("origin", "https://shop.example.com")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    assert_eq!(response.headers()["access-control-allow-origin"], "*");

    fixture
        .post("/v1/track", r#"{"event":"x","userId":"u"}"#)
        .await;
    fixture.post("/v1/track", r#"{"userId":"u"}"#).await;
    let metrics = fixture.host.metrics().await;
    assert!(
        metrics.contains(r#"cairn_collector_events_total{source="web"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"cairn_collector_rejected_requests_total{reason="invalid_argument"} 1"#),
        "{metrics}"
    );
    let health = reqwest::get(format!("http://{}/healthz", fixture.host.admin))
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_write_key_over_its_rate_limit_gets_429_with_the_wait_and_others_go_on() {
    let f = fixture(&[("CAIRN_INGEST_RATE_LIMIT", "20")]).await;
    let batch = |prefix: &str, count: usize| {
        let calls: Vec<_> = (0..count)
            .map(|index| events::track(&format!("{prefix}-{index}"), "a-1", "Viewed"))
            .collect();
        serde_json::to_vec(&json!({ "batch": calls })).unwrap()
    };

    assert_eq!(f.post("/v1/batch", batch("first", 20)).await.status(), 200);
    // Needs a whole second of credit back: refused however slow this machine is.
    let refused = f.post("/v1/batch", batch("second", 20)).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "1");
    let (_, text) = message(refused).await;
    assert!(
        text.contains("\"web\"") && text.contains("CAIRN_INGEST_RATE_LIMIT"),
        "{text}"
    );
    assert!(
        !text.contains("wk_web"),
        "the key itself is never shown: {text}"
    );

    // Another write key has its own allowance.
    let other = f
        .client
        .post(format!("{}/v1/batch", f.host.http_url()))
        .header("authorization", basic("wk_ios"))
        .body(batch("ios", 3))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);

    // The refused batch stored nothing; retried after the wait, it is stored.
    assert_eq!(stored_events(&f.bus).await.len(), 23);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(f.post("/v1/batch", batch("second", 20)).await.status(), 200);
    assert_eq!(stored_events(&f.bus).await.len(), 43);
    assert!(
        f.host
            .metrics()
            .await
            .contains("reason=\"resource_exhausted\""),
        "refusals are counted"
    );
}
