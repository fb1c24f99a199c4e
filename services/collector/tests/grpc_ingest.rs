//! The collector's gRPC API, health and reflection against a real nats-server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use cairn_proto::collector::v1::collector_client::CollectorClient;
use cairn_proto::collector::v1::{IngestRequest, IngestStreamRequest};
use cairn_testkit::{TestHost, TestNats, events, stored_events};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn serve(nats: &TestNats) -> TestHost {
    let url = nats.url();
    let vars = [cairn_runtime::VARS.to_vec(), cairn_collector::vars()].concat();
    let context = TestHost::context(
        &vars,
        [
            ("CAIRN_NATS_URL", url.as_str()),
            ("CAIRN_WRITE_KEYS", "app:wk_app"),
        ],
    );
    let module = cairn_collector::start(&context).await.unwrap();
    TestHost::serve(vec![module], context).await
}

async fn channel(host: &TestHost) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(host.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn json(value: serde_json::Value) -> bytes::Bytes {
    bytes::Bytes::from(serde_json::to_vec(&value).unwrap())
}

fn with_key<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let header = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    );
    request
        .metadata_mut()
        .insert("authorization", header.parse().unwrap());
    request
}

#[tokio::test]
async fn unary_and_streaming_ingest_store_events_once_acknowledged() {
    let nats = TestNats::start().await;
    let host = serve(&nats).await;
    let mut client = CollectorClient::connect(host.grpc_url()).await.unwrap();

    let identify = json(events::identify("g-1", "u-1", "tom@example.com"));
    let anonymous_track =
        json(serde_json::json!({"type": "track", "event": "Viewed", "anonymousId": "a-1"}));
    let response = client
        .ingest(with_key(
            IngestRequest {
                events: vec![identify.clone(), anonymous_track],
            },
            "wk_app",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.message_ids.len(), 2);
    assert_eq!(response.message_ids[0], "g-1");
    assert!(
        response.message_ids[1].starts_with("cairn-"),
        "generated where absent"
    );

    let batches = vec![
        IngestStreamRequest {
            events: vec![json(events::track("s-1", "a-2", "Added to Cart"))],
        },
        IngestStreamRequest {
            events: vec![
                json(events::page("s-2", "a-2", "https://x.test/")),
                json(events::screen("s-3", "u-2")),
            ],
        },
    ];
    let totals = client
        .ingest_stream(with_key(futures::stream::iter(batches), "wk_app"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((totals.accepted, totals.batches), (3, 2));

    let bus = nats.bus().await;
    let stored = stored_events(&bus).await;
    assert_eq!(stored.len(), 5);
    assert_eq!(stored[0].envelope.raw, identify);
    assert_eq!(stored[0].envelope.source, "app");
    assert_eq!(stored[0].envelope.client_ip, "127.0.0.1");
}

#[tokio::test]
async fn grpc_refusals_say_why() {
    let nats = TestNats::start().await;
    let host = serve(&nats).await;
    let mut client = CollectorClient::connect(host.grpc_url()).await.unwrap();
    let good = json(events::track("r-1", "a-1", "Viewed"));

    let status = client
        .ingest(IngestRequest {
            events: vec![good.clone()],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = client
        .ingest(with_key(
            IngestRequest {
                events: vec![good.clone()],
            },
            "wk_wrong",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    let missing_event = json(serde_json::json!({"type": "track", "userId": "u"}));
    let status = client
        .ingest(with_key(
            IngestRequest {
                events: vec![good.clone(), missing_event],
            },
            "wk_app",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "events[1].event: required for track");

    let status = client
        .ingest(with_key(
            IngestRequest {
                events: vec![bytes::Bytes::from_static(b"{\"type\":")],
            },
            "wk_app",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("events[0].json: invalid JSON at line 1, column 8"),
        "{}",
        status.message()
    );

    let bus = nats.bus().await;
    assert!(stored_events(&bus).await.is_empty());
}

#[tokio::test]
async fn health_and_reflection_answer() {
    let nats = TestNats::start().await;
    let host = serve(&nats).await;
    let mut health = HealthClient::new(channel(&host).await);
    for service in ["", "cairn.collector.v1.Collector"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel(&host).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    assert!(
        names.contains(&"cairn.collector.v1.Collector".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );

    // On shutdown, health turns NOT_SERVING before the server goes away.
    let context = host.context.clone();
    let watcher = tokio::spawn(async move {
        let mut health = health;
        let mut stream = health
            .watch(HealthCheckRequest {
                service: "cairn.collector.v1.Collector".to_string(),
            })
            .await
            .unwrap()
            .into_inner();
        let mut seen = Vec::new();
        while let Ok(Some(message)) = stream.message().await {
            seen.push(message.status());
            if message.status() == ServingStatus::NotServing {
                break;
            }
        }
        seen
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    context.shutdown.trigger();
    host.shutdown().await.unwrap();
    let seen = watcher.await.unwrap();
    assert_eq!(seen.first(), Some(&ServingStatus::Serving));
    assert_eq!(seen.last(), Some(&ServingStatus::NotServing), "{seen:?}");
}
