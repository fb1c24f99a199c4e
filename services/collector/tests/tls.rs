//! The collector's HTTP and gRPC listeners with TLS configured: only TLS is accepted, the
//! client's address still reaches the event, and a half-configured TLS is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use cairn_proto::collector::v1::IngestRequest;
use cairn_proto::collector::v1::collector_client::CollectorClient;
use cairn_testkit::tls::TestCertificate;
use cairn_testkit::{TestHost, TestNats, events, stored_events};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

async fn serve(nats: &TestNats, certificate: &TestCertificate) -> TestHost {
    let url = nats.url();
    let cert = certificate.cert.display().to_string();
    let key = certificate.key.display().to_string();
    let vars = [cairn_runtime::VARS.to_vec(), cairn_collector::vars()].concat();
    let context = TestHost::context(
        &vars,
        [
            ("CAIRN_NATS_URL", url.as_str()),
            ("CAIRN_WRITE_KEYS", "app:wk_app"),
            ("CAIRN_TLS_CERT", cert.as_str()),
            ("CAIRN_TLS_KEY", key.as_str()),
        ],
    );
    let module = cairn_collector::start(&context).await.unwrap();
    TestHost::serve(vec![module], context).await
}

fn https_client(certificate: &TestCertificate) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(certificate.cert_pem.as_bytes()).unwrap(),
        )
        .build()
        .unwrap()
}

#[tokio::test]
async fn http_ingest_over_tls_keeps_the_client_address_and_plain_http_is_refused() {
    let nats = TestNats::start().await;
    let certificate = TestCertificate::generate();
    let host = serve(&nats, &certificate).await;
    let port = host.http.unwrap().port();

    for (index, origin) in [
        format!("https://localhost:{port}"),
        format!("https://127.0.0.1:{port}"),
    ]
    .iter()
    .enumerate()
    {
        let response = https_client(&certificate)
            .post(format!("{origin}/v1/track"))
            .basic_auth("wk_app", Some(""))
            .json(&events::track(
                &format!("m-{index}"),
                "tls-visitor",
                "Viewed",
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{origin}");
    }

    let stored = stored_events(&nats.bus().await).await;
    assert_eq!(stored.len(), 2);
    for event in &stored {
        assert_eq!(event.envelope.client_ip, "127.0.0.1", "the peer's address");
    }

    // Plain HTTP to the TLS port gets no answer, and stores nothing.
    let plain = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/track"))
        .basic_auth("wk_app", Some(""))
        .json(&events::track("m-plain", "plain-visitor", "Viewed"))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");

    // A client that does not trust the certificate is refused by its own TLS check.
    let untrusting = reqwest::Client::new()
        .post(format!("https://localhost:{port}/v1/track"))
        .json(&events::track("m-untrusting", "untrusting", "Viewed"))
        .send()
        .await;
    assert!(untrusting.is_err());
    assert_eq!(stored_events(&nats.bus().await).await.len(), 2);
}

#[tokio::test]
async fn grpc_ingest_over_tls_and_plain_grpc_is_refused() {
    let nats = TestNats::start().await;
    let certificate = TestCertificate::generate();
    let host = serve(&nats, &certificate).await;
    let port = host.grpc.port();

    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&certificate.cert_pem));
    let channel = Channel::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut request = tonic::Request::new(IngestRequest {
        events: vec![
            serde_json::to_vec(&events::track("m-grpc", "grpc-visitor", "Viewed"))
                .unwrap()
                .into(),
        ],
    });
    let key = base64::engine::general_purpose::STANDARD.encode("wk_app:");
    request
        .metadata_mut()
        .insert("authorization", format!("Basic {key}").parse().unwrap());
    CollectorClient::new(channel).ingest(request).await.unwrap();
    assert_eq!(stored_events(&nats.bus().await).await.len(), 1);

    let plain = match Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
    {
        Ok(channel) => CollectorClient::new(channel)
            .ingest(IngestRequest { events: vec![] })
            .await
            .map(|_| ()),
        Err(err) => Err(tonic::Status::unavailable(err.to_string())),
    };
    assert!(plain.is_err(), "plain gRPC answered");
}

#[test]
fn tls_needs_both_the_certificate_and_the_key() {
    let certificate = TestCertificate::generate();
    let cert = certificate.cert.display().to_string();
    let key = certificate.key.display().to_string();
    let check = |pairs: &[(&str, &str)]| {
        let settings =
            cairn_runtime::Settings::from_pairs(cairn_runtime::VARS, pairs.iter().copied());
        cairn_runtime::tls::ServerTls::from_settings(&settings)
    };

    assert!(check(&[]).unwrap().is_none());
    assert!(
        check(&[("CAIRN_TLS_CERT", &cert), ("CAIRN_TLS_KEY", &key)])
            .unwrap()
            .is_some()
    );

    let err = check(&[("CAIRN_TLS_CERT", &cert)]).unwrap_err().to_string();
    assert!(err.contains("CAIRN_TLS_KEY"), "{err}");
    let err = check(&[("CAIRN_TLS_KEY", &key)]).unwrap_err().to_string();
    assert!(err.contains("CAIRN_TLS_CERT"), "{err}");
    // The key file given as the certificate: no certificate in it.
    let err = check(&[("CAIRN_TLS_CERT", &key), ("CAIRN_TLS_KEY", &key)])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("CAIRN_TLS_CERT") && err.contains("no certificate"),
        "{err}"
    );
    // The certificate given as the key: no key in it, and the message shows no secret.
    let err = check(&[("CAIRN_TLS_CERT", &cert), ("CAIRN_TLS_KEY", &cert)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("CAIRN_TLS_KEY"), "{err}");
    assert!(!err.contains("BEGIN"), "{err}");
}
