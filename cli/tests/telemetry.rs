//! Traces leave the process over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set, and a
//! caller's trace continues into the message stored in NATS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::sync::mpsc;

/// A real OTLP/gRPC trace receiver that hands every export to the test.
struct Receiver(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::test]
async fn spans_are_exported_over_otlp_and_the_trace_continues_into_nats() {
    let (sender, mut exports) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Receiver(sender)))
            .serve_with_incoming(tokio_stream_listener(listener)),
    );

    let nats = cairn_testkit::TestNats::start().await;
    let (http, admin) = (cairn_testkit::free_addr(), cairn_testkit::free_addr());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["serve", "collector"])
        .env("CAIRN_NATS_URL", nats.url())
        .env("CAIRN_HTTP_ADDR", http.to_string())
        .env("CAIRN_GRPC_ADDR", cairn_testkit::free_addr().to_string())
        .env("CAIRN_ADMIN_ADDR", admin.to_string())
        .env("CAIRN_WRITE_KEYS", "web:wk_web")
        .env("CAIRN_LOG", "warn")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"))
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("http://{admin}/readyz"))
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(tokio::time::Instant::now() < deadline, "not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = reqwest::Client::new()
        .post(format!("http://{http}/v1/track"))
        .basic_auth("wk_web", Some(""))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .body(r#"{"userId":"u-1","event":"Traced"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // The stored message carries the caller's trace, so the next hop continues it.
    let stored = cairn_testkit::stored_events(&nats.bus().await).await;
    let traceparent = stored[0]
        .headers
        .get("traceparent")
        .expect("traceparent on the message");
    assert!(
        traceparent.as_str().starts_with(&format!("00-{trace_id}-")),
        "{traceparent:?}"
    );

    // The request's span reaches the OTLP receiver, in the caller's trace.
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(export) = exports.recv().await {
            for resource_spans in export.resource_spans {
                let service = resource_spans
                    .resource
                    .iter()
                    .flat_map(|resource| &resource.attributes)
                    .find(|attribute| attribute.key == "service.name")
                    .and_then(|attribute| attribute.value.as_ref())
                    .map(|value| format!("{value:?}"))
                    .unwrap_or_default();
                for scope in resource_spans.scope_spans {
                    for span in scope.spans {
                        let id = cairn_runtime::encoding::hex(&span.trace_id);
                        if id == trace_id {
                            return service;
                        }
                    }
                }
            }
        }
        String::new()
    })
    .await
    .expect("a span in the caller's trace was exported");
    assert!(found.contains("cairn-collector"), "{found}");
    let _ = child.kill().await;
}

fn tokio_stream_listener(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    })
}
