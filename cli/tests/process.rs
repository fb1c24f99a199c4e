//! The `cairn` binary as a user and Kubernetes run it: exit codes, messages, SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

mod common;

use cairn_testkit::{TestNats, free_addr};
use common::{cairn, exit_of, output, sigterm, stdout_of, wait_ready};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[tokio::test]
async fn an_unknown_service_is_a_usage_error() {
    let (code, _, stderr) = output(cairn().args(["serve", "colector"])).await;
    assert_eq!(code, 2);
    assert!(
        stderr.contains("unknown service \"colector\"; the services are: collector"),
        "{stderr}"
    );
}

#[tokio::test]
async fn segment_check_prints_the_canonical_form_or_where_the_error_is() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.fql");
    std::fs::write(&good, "filter and(visit_count>3 exists email) -- engaged").unwrap();
    let (code, stdout, _) = output(cairn().args(["segment", "check"]).arg(&good)).await;
    assert_eq!(code, 0);
    assert_eq!(
        stdout,
        "FILTER AND (\n    visit_count > 3,\n    EXISTS email\n)\n"
    );

    let bad = dir.path().join("bad.fql");
    std::fs::write(&bad, "FILTER AND (\n  visits > 5\n  plan ~ \"pro\"\n)").unwrap();
    let (code, _, stderr) = output(cairn().args(["segment", "check"]).arg(&bad)).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("bad.fql:3:8: unexpected character '~'"),
        "{stderr}"
    );

    let wrong = dir.path().join("wrong.fql");
    std::fs::write(&wrong, "FILTER event_count.purchase.2d > 1").unwrap();
    let (code, _, stderr) = output(cairn().args(["segment", "check"]).arg(&wrong)).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("the profile has no field \"event_count.purchase.2d\""),
        "{stderr}"
    );
}

#[tokio::test]
async fn bad_configuration_names_the_variable_and_exits_2() {
    let (code, _, stderr) = output(
        cairn()
            .args(["serve", "collector"])
            .env("CAIRN_HTTP_ADDR", "localhost"),
    )
    .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("CAIRN_HTTP_ADDR=\"localhost\": not a socket address"),
        "{stderr}"
    );

    let nats = TestNats::start().await;
    let (code, _, stderr) = output(
        cairn()
            .args(["serve", "collector"])
            .env("CAIRN_NATS_URL", nats.url())
            // Any free port: the admin listener is up before the bus's settings are
            // read, and a port picked ahead may be taken meanwhile by another test.
            .env("CAIRN_HTTP_ADDR", "127.0.0.1:0")
            .env("CAIRN_GRPC_ADDR", "127.0.0.1:0")
            .env("CAIRN_ADMIN_ADDR", "127.0.0.1:0")
            .env("CAIRN_PARTITIONS", "0"),
    )
    .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("CAIRN_PARTITIONS=\"0\": must be at least 1"),
        "{stderr}"
    );
}

#[tokio::test]
async fn unreachable_nats_is_a_clear_runtime_error() {
    let port = free_addr();
    let (code, _, stderr) = output(
        cairn()
            .args(["serve", "collector"])
            .env("CAIRN_NATS_URL", format!("nats://{port}"))
            .env("CAIRN_HTTP_ADDR", free_addr().to_string())
            .env("CAIRN_GRPC_ADDR", free_addr().to_string())
            .env("CAIRN_ADMIN_ADDR", free_addr().to_string()),
    )
    .await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot connect to NATS at nats://{port} (CAIRN_NATS_URL)"
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn sigterm_lets_requests_in_flight_finish_then_exits_0() {
    let nats = TestNats::start().await;
    let (http, admin) = (free_addr(), free_addr());
    let mut child = cairn()
        .args(["serve", "collector"])
        .env("CAIRN_NATS_URL", nats.url())
        .env("CAIRN_HTTP_ADDR", http.to_string())
        .env("CAIRN_GRPC_ADDR", free_addr().to_string())
        .env("CAIRN_ADMIN_ADDR", admin.to_string())
        .env("CAIRN_WRITE_KEYS", "web:wk_web")
        .spawn()
        .unwrap();
    wait_ready(admin, &mut child).await;

    let body = br#"{"userId":"u-1","event":"Signed Up","messageId":"sigterm-1"}"#;
    let head = format!(
        "POST /v1/track HTTP/1.1\r\nhost: x\r\nauthorization: Basic d2tfd2ViOg==\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(http).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..5]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    sigterm(&child);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "still draining the request in flight"
    );
    let ready = reqwest::get(format!("http://{admin}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "not ready while draining");

    stream.write_all(&body[5..]).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    assert!(String::from_utf8_lossy(&response).starts_with("HTTP/1.1 200"));

    let (code, stderr) = exit_of(&mut child).await;
    assert_eq!(code, Some(0), "{stderr}");
    let stored = cairn_testkit::stored_events(&nats.bus().await).await;
    assert_eq!(stored[0].envelope.message_id, "sigterm-1");
}

#[tokio::test]
async fn up_starts_nats_and_prints_a_write_key_that_send_uses() {
    let data = tempfile::tempdir().unwrap();
    let (nats, http, admin) = (free_addr(), free_addr(), free_addr());
    let env = [
        ("CAIRN_NATS_URL", format!("nats://{nats}")),
        ("CAIRN_HTTP_ADDR", http.to_string()),
        ("CAIRN_GRPC_ADDR", free_addr().to_string()),
        ("CAIRN_ADMIN_ADDR", admin.to_string()),
        ("CAIRN_DATA_DIR", data.path().display().to_string()),
    ];
    let mut up = cairn();
    up.arg("up").current_dir(env!("CARGO_MANIFEST_DIR"));
    for (name, value) in &env {
        up.env(name, value);
    }
    let mut child = up.spawn().unwrap();
    wait_ready(admin, &mut child).await;

    let mut send = cairn();
    send.args(["send", "--event", "Hello", "--user-id", "u-1"]);
    for (name, value) in &env {
        send.env(name, value);
    }
    let (code, stdout, stderr) = output(&mut send).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("200 OK: stored track"), "{stdout}");

    // The admin API takes the development token `cairn up` wrote, found by the CLI...
    let mut status = cairn();
    status.arg("status");
    for (name, value) in &env {
        status.env(name, value);
    }
    let (code, stdout, stderr) = output(&mut status).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("modules: collector"), "{stdout}");
    assert!(stdout.contains("ready"), "{stdout}");
    // ...and refuses a wrong one.
    let (code, _, stderr) = output(status.env("CAIRN_TOKEN", "tk_wrong")).await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("the server refused the token (CAIRN_TOKEN)"),
        "{stderr}"
    );

    sigterm(&child);
    let (code, stderr) = exit_of(&mut child).await;
    assert_eq!(code, Some(0), "{stderr}");
    let stdout = stdout_of(&mut child).await;
    let key = std::fs::read_to_string(data.path().join("dev-write-key")).unwrap();
    assert!(
        stdout.contains(&format!("development write key: {}", key.trim())),
        "{stdout}"
    );
    assert!(data.path().join("dev-admin-token").is_file());
    assert!(data.path().join("nats/nats-server.log").is_file());
    // The nats-server it started is gone with it.
    assert!(
        std::net::TcpStream::connect(nats).is_err(),
        "nats-server still running"
    );
}

#[tokio::test]
async fn the_cli_talks_tls_to_a_process_serving_tls() {
    let nats = TestNats::start().await;
    let certificate = cairn_testkit::tls::TestCertificate::generate();
    let (grpc, admin) = (free_addr(), free_addr());
    let mut child = cairn()
        .args(["serve", "collector"])
        .env("CAIRN_NATS_URL", nats.url())
        .env("CAIRN_HTTP_ADDR", free_addr().to_string())
        .env("CAIRN_GRPC_ADDR", grpc.to_string())
        .env("CAIRN_ADMIN_ADDR", admin.to_string())
        .env("CAIRN_ADMIN_TOKENS", "read:tk_read")
        .env("CAIRN_TLS_CERT", &certificate.cert)
        .env("CAIRN_TLS_KEY", &certificate.key)
        .spawn()
        .unwrap();
    // The admin port stays plain HTTP for probes.
    wait_ready(admin, &mut child).await;

    let status = || {
        let mut status = cairn();
        status
            .arg("status")
            .env("CAIRN_GRPC_ADDR", grpc.to_string())
            .env("CAIRN_TOKEN", "tk_read");
        status
    };
    let (code, stdout, stderr) = output(status().env("CAIRN_TLS_CA", &certificate.cert)).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("modules: collector"), "{stdout}");

    let (code, _, stderr) = output(&mut status()).await;
    assert_eq!(code, 1, "plain gRPC to a TLS listener: {stderr}");
    let (code, _, stderr) = output(status().env("CAIRN_TLS_CA", "/nonexistent/ca.pem")).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("CAIRN_TLS_CA"), "{stderr}");

    sigterm(&child);
    let (code, stderr) = exit_of(&mut child).await;
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test]
async fn the_readme_documents_every_variable() {
    let (code, table, _) = output(cairn().arg("config")).await;
    assert_eq!(code, 0);
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    for line in table.lines().skip(2) {
        assert!(
            readme.contains(line),
            "README.md lacks (or has an old version of) this row of `cairn config`:\n{line}"
        );
    }
}

#[tokio::test]
async fn killing_the_mesh_mid_stream_loses_and_doubles_nothing() {
    // NATS outlives the kills, as a NATS cluster would.
    let nats = TestNats::start().await;
    let data = tempfile::tempdir().unwrap();
    let (http, grpc, admin) = (free_addr(), free_addr(), free_addr());
    let env = [
        ("CAIRN_NATS_URL", nats.url()),
        ("CAIRN_HTTP_ADDR", http.to_string()),
        ("CAIRN_GRPC_ADDR", grpc.to_string()),
        ("CAIRN_ADMIN_ADDR", admin.to_string()),
        ("CAIRN_DATA_DIR", data.path().display().to_string()),
        ("CAIRN_WRITE_KEYS", "web:wk_web".to_string()),
        ("CAIRN_ADMIN_TOKENS", "read:tk_read".to_string()),
        ("CAIRN_PARTITION_LEASE", "1s".to_string()),
    ];
    let start = || {
        let mut up = cairn();
        up.arg("up");
        for (name, value) in &env {
            up.env(name, value);
        }
        up.spawn().unwrap()
    };
    let client = reqwest::Client::new();
    let send = |from: usize, to: usize| {
        let client = client.clone();
        async move {
            let batch: Vec<serde_json::Value> = (from..to)
                .map(|n| {
                    serde_json::json!({"type": "page", "messageId": format!("k{n}"), "anonymousId": format!("v{}", n % 25),
                                       "timestamp": format!("2026-11-20T10:{:02}:{:02}Z", (n / 60) % 60, n % 60),
                                       "context": {"userAgent": "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
                                                   "timezone": "Europe/London",
                                                   "page": {"url": format!("https://shop.example.com/shoes/item-{}", n % 10), "title": "Shoes"}}})
                })
                .collect();
            let response = client
                .post(format!("http://{http}/v1/batch"))
                .basic_auth("wk_web", Some(""))
                .json(&serde_json::json!({ "batch": batch }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        }
    };

    let mut child = start();
    wait_ready(admin, &mut child).await;
    for round in 0..10 {
        send(round * 100, round * 100 + 100).await;
    }
    // Killed while identity and the profile store are working through the events.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().await.unwrap();

    let mut child = start();
    wait_ready(admin, &mut child).await;
    for round in 10..15 {
        send(round * 100, round * 100 + 100).await;
    }
    // Every visitor ends with exactly the pages sent: none lost, none counted twice.
    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut profiles = cairn_proto::profile::v1::profiles_client::ProfilesClient::new(channel);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut profile_ids = Vec::new();
    for visitor in 0..25 {
        let expected = 1500 / 25;
        loop {
            let mut request = tonic::Request::new(cairn_proto::profile::v1::GetRequest {
                key: Some(cairn_proto::profile::v1::get_request::Key::Identifier(
                    cairn_proto::identity::v1::Identifier {
                        r#type: "anonymous_id".into(),
                        value: format!("v{visitor}"),
                    },
                )),
            });
            request
                .metadata_mut()
                .insert("authorization", "Bearer tk_read".parse().unwrap());
            let (pages, id) = match profiles.get(request).await {
                Ok(response) => {
                    let profile: serde_json::Value =
                        serde_json::from_str(&response.into_inner().profile_json).unwrap();
                    (
                        profile["event_count"]["page"]["all"].as_u64().unwrap_or(0),
                        profile["id"].as_str().unwrap_or("").to_string(),
                    )
                }
                Err(_) => (0, String::new()),
            };
            assert!(
                pages <= expected,
                "v{visitor}: {pages} pages counted, {expected} sent"
            );
            if pages == expected {
                profile_ids.push(id);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "v{visitor}: {pages} of {expected} pages after 60s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Every enricher published facts once per event (activity only for the events that
    // changed what it says): an event delivered again after the kill gave the same
    // facts, which the stream dropped.
    let bus = nats.bus().await;
    for consumer in ["enrich_device", "enrich_activity", "enrich_content"] {
        cairn_testkit::wait_consumer_idle(&bus, cairn_bus::streams::IDENTIFIED, consumer).await;
    }
    let mut facts: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    let mut published = 0;
    for message in cairn_testkit::stream_messages(&bus, cairn_bus::streams::IDENTIFIED).await {
        if message.subject.starts_with("profile.facts.") {
            let fact = <cairn_proto::profile::v1::Facts as prost::Message>::decode(message.payload)
                .unwrap();
            facts
                .entry(fact.source)
                .or_default()
                .insert(fact.message_id);
            published += 1;
        }
    }
    for source in ["device", "content"] {
        assert_eq!(
            facts.get(source).map_or(0, |ids| ids.len()),
            1500,
            "{source}"
        );
    }
    let activity = facts.get("activity").map_or(0, |ids| ids.len());
    assert!(
        activity > 0 && activity < 1500,
        "activity facts for {activity} of 1500 events"
    );
    assert_eq!(published, 2 * 1500 + activity, "facts published twice");
    sigterm(&child);
    let (code, stderr) = exit_of(&mut child).await;
    assert_eq!(code, Some(0), "{stderr}");

    // And each event counted once in the activity each enricher keeps per person.
    let store = cairn_store::EmbeddedStore::open(
        &data.path().join("store"),
        cairn_store::Fsync::Buffer,
        1 << 20,
        cairn_store::Clock::system(),
    )
    .unwrap();
    for id in &profile_ids {
        let habits: cairn_enrich_activity::Habits =
            cairn_enricher::state::read(&store, &cairn_enrich_activity::ACTIVITY, id)
                .await
                .unwrap()
                .unwrap();
        let weight: f64 = habits.hours.iter().sum();
        // 60 events within the hour, with a 30-day half-life: 60, less a hair of fading.
        assert!((weight - 60.0).abs() < 0.5, "{id}: weight {weight}");
    }
}

fn as_admin<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", "Bearer tk_admin".parse().unwrap());
    request
}

#[tokio::test]
async fn rebuild_applies_changed_rules_and_keeps_deleted_people_deleted() {
    let nats = TestNats::start().await;
    let bus = nats.bus().await;
    let data = tempfile::tempdir().unwrap();
    let rules = data.path().join("identity.toml");
    std::fs::write(&rules, "blocked = []\n").unwrap();
    let (http, grpc, admin) = (free_addr(), free_addr(), free_addr());
    let env = [
        ("CAIRN_NATS_URL", nats.url()),
        ("CAIRN_HTTP_ADDR", http.to_string()),
        ("CAIRN_GRPC_ADDR", grpc.to_string()),
        ("CAIRN_ADMIN_ADDR", admin.to_string()),
        ("CAIRN_DATA_DIR", data.path().display().to_string()),
        ("CAIRN_WRITE_KEYS", "web:wk_web".to_string()),
        ("CAIRN_ADMIN_TOKENS", "admin:tk_admin".to_string()),
        ("CAIRN_IDENTITY_RULES", rules.display().to_string()),
        ("CAIRN_PARTITION_LEASE", "1s".to_string()),
    ];
    let command = |args: &[&str]| {
        let mut command = cairn();
        command.args(args);
        for (name, value) in &env {
            command.env(name, value);
        }
        command
    };
    let client = reqwest::Client::new();
    let send = |batch: serde_json::Value| {
        let client = client.clone();
        async move {
            let response = client
                .post(format!("http://{http}/v1/batch"))
                .basic_auth("wk_web", Some(""))
                .json(&serde_json::json!({ "batch": batch }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        }
    };
    let profiles = || async {
        let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        cairn_proto::profile::v1::profiles_client::ProfilesClient::new(channel)
    };

    let profile_of = |anonymous_id: &'static str| async move {
        let request = as_admin(cairn_proto::profile::v1::GetRequest {
            key: Some(cairn_proto::profile::v1::get_request::Key::Identifier(
                cairn_proto::identity::v1::Identifier {
                    r#type: "anonymous_id".into(),
                    value: anonymous_id.into(),
                },
            )),
        });
        profiles()
            .await
            .get(request)
            .await
            .ok()
            .map(|response| response.into_inner().profile_id)
    };

    // Two desks share a team mailbox: one person, by the rules so far.
    let mut mesh = command(&["up"]).spawn().unwrap();
    wait_ready(admin, &mut mesh).await;
    send(serde_json::json!([
        {"type": "identify", "messageId": "d1", "anonymousId": "desk-1", "traits": {"email": "team@shop.example"}},
        {"type": "identify", "messageId": "d2", "anonymousId": "desk-2", "traits": {"email": "team@shop.example"}},
        {"type": "identify", "messageId": "g1", "anonymousId": "gone-1", "traits": {"email": "gone@example.com"}},
    ]))
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let gone = loop {
        let (one, two, gone) = (
            profile_of("desk-1").await,
            profile_of("desk-2").await,
            profile_of("gone-1").await,
        );
        if let (Some(one), Some(two), Some(gone)) = (one, two, gone)
            && one == two
        {
            break gone;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the desks were not merged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // One person asks to be forgotten.
    profiles()
        .await
        .delete(as_admin(cairn_proto::profile::v1::DeleteRequest {
            profile_id: gone.clone(),
        }))
        .await
        .unwrap();
    cairn_testkit::wait_consumer_idle(&bus, "PROFILES", "identity_forget").await;
    sigterm(&mesh);
    let (code, stderr) = exit_of(&mut mesh).await;
    assert_eq!(code, Some(0), "{stderr}");

    // The mailbox is blocked from now on; the rebuild asks before it deletes anything.
    std::fs::write(&rules, "blocked = [\"team@shop.example\"]\n").unwrap();
    let (code, _, stderr) = output(&mut command(&["rebuild"])).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("from the 3 raw events"), "{stderr}");
    assert!(stderr.contains("cairn rebuild --yes"), "{stderr}");
    let (code, stdout, stderr) = output(&mut command(&["rebuild", "--yes"])).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("rebuild them from the 3 raw events"),
        "{stdout}"
    );

    let mut mesh = command(&["up"]).spawn().unwrap();
    wait_ready(admin, &mut mesh).await;
    cairn_testkit::wait_consumer_idle(&bus, "EVENTS", "identity").await;
    // Identity replayed every event: the desks are two people now, and the forgotten
    // person's event was dropped, not given a profile again.
    let identified: Vec<(String, String)> = cairn_testkit::stream_messages(&bus, "IDENTIFIED")
        .await
        .into_iter()
        .filter_map(|message| {
            let event = <cairn_proto::event::v1::IdentifiedEvent as prost::Message>::decode(
                message.payload,
            )
            .ok()?;
            Some((event.envelope?.message_id, event.profile_id))
        })
        .collect();
    let ids: Vec<&str> = identified.iter().map(|(id, _)| id.as_str()).collect();
    assert!(!ids.contains(&"g1"), "{identified:?}");
    assert!(ids.contains(&"d1") && ids.contains(&"d2"), "{identified:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (one, two) = (profile_of("desk-1").await, profile_of("desk-2").await);
        if let (Some(one), Some(two)) = (&one, &two) {
            assert_ne!(one, two, "the blocked mailbox no longer links the desks");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the desks' profiles were not rebuilt"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(profile_of("gone-1").await, None);

    // While Cairn runs, a rebuild refuses.
    let (code, _, stderr) = output(&mut command(&["rebuild", "--yes"])).await;
    assert_ne!(code, 0);
    assert!(
        stderr.contains("stop every Cairn process first"),
        "{stderr}"
    );
    sigterm(&mesh);
    let (code, stderr) = exit_of(&mut mesh).await;
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_dispatcher_mid_send_sends_no_email_twice() {
    use bytes::Bytes;
    use cairn_dispatcher::send::{self, State};
    use cairn_store::{Expect, Store as _, Write};
    use prost::Message as _;

    const EMAILS: usize = 10_000;
    const PROFILES: usize = 1_000;
    const KILLS: usize = 3;
    let Some(smtp) = cairn_testkit::smtp::SmtpServer::start().await else {
        return;
    };
    let nats = TestNats::start().await;
    let data = tempfile::tempdir().unwrap();
    let open_store = || {
        cairn_store::EmbeddedStore::open(
            &data.path().join("store"),
            cairn_store::Fsync::Buffer,
            8 << 20,
            cairn_store::Clock::system(),
        )
        .unwrap()
    };
    {
        let store = open_store();
        cairn_dispatcher::templates::put(
            &store,
            cairn_dispatcher::templates::Template {
                name: "reminder".into(),
                subject: "{{ profile.traits.name }}, your cart is waiting".into(),
                text: "Hi {{ profile.traits.name }}, your {{ params.item }} are waiting.".into(),
                html: None,
                list: None,
                version: 0,
                updated_ms: 0,
            },
        )
        .await
        .unwrap();
        for n in 0..PROFILES {
            let profile = cairn_profile_store::profile::Profile {
                id: format!("p{n}"),
                traits: [
                    ("email", format!("person{n}@example.com")),
                    ("name", format!("Person {n}")),
                ]
                .into_iter()
                .map(|(name, value)| {
                    (
                        name.to_string(),
                        cairn_profile_store::profile::Stamped {
                            value: serde_json::json!(value),
                            at: 1,
                        },
                    )
                })
                .collect(),
                ..Default::default()
            };
            store
                .write(
                    &cairn_profile_store::store::PROFILES,
                    Write::new(Bytes::from(profile.id.clone())).record(
                        Expect::Any,
                        cairn_profile_store::store::encode(&profile).unwrap(),
                    ),
                )
                .await
                .unwrap();
        }
        store.sync().unwrap();
    }
    // Every send asked for, and a tenth of them asked for twice (as a campaign engine
    // repeating itself would), all waiting before the dispatcher starts.
    let bus = nats.bus().await;
    bus.ensure_stream(cairn_bus::streams::campaigns(&nats.bus_config()))
        .await
        .unwrap();
    let key = |n: usize| format!("chaos:{n}");
    let requests: Vec<cairn_bus::Outgoing> = (0..EMAILS)
        .chain((0..EMAILS).step_by(10))
        .enumerate()
        .map(|(copy, n)| {
            let profile_id = format!("p{}", n % PROFILES);
            let action = cairn_proto::campaign::v1::Action {
                campaign: "chaos".into(),
                profile_id: profile_id.clone(),
                state: "abandoned".into(),
                channel: "email".into(),
                target: "reminder".into(),
                params_json: r#"{"item":"shoes"}"#.into(),
                entry: 1,
                at: Some(cairn_runtime::clock::timestamp(1)),
                idempotency_key: key(n),
                send_at: String::new(),
                untracked: false,
            };
            cairn_bus::Outgoing {
                subject: cairn_bus::subjects::campaign_sends(bus.partitions().of(&profile_id)),
                message_id: Some(format!("request-{copy}")),
                headers: async_nats::HeaderMap::new(),
                payload: Bytes::from(action.encode_to_vec()),
            }
        })
        .collect();
    for chunk in requests.chunks(2_000) {
        bus.publish_all(chunk.to_vec()).await.unwrap();
    }

    let env = [
        ("CAIRN_NATS_URL", nats.url()),
        ("CAIRN_GRPC_ADDR", free_addr().to_string()),
        ("CAIRN_ADMIN_ADDR", free_addr().to_string()),
        ("CAIRN_DATA_DIR", data.path().display().to_string()),
        ("CAIRN_EMAIL_TRANSPORT", "smtp".to_string()),
        ("CAIRN_SMTP_URL", smtp.url()),
        ("CAIRN_EMAIL_QUIET_HOURS", "off".to_string()),
        ("CAIRN_EMAIL_DAILY_CAP", "0".to_string()),
        (
            "CAIRN_EMAIL_LINK_SECRET",
            "chaos-link-secret-0123".to_string(),
        ),
    ];
    let start = || {
        let mut serve = cairn();
        serve.args(["serve", "dispatcher"]);
        for (name, value) in &env {
            serve.env(name, value);
        }
        serve.spawn().unwrap()
    };
    // Killed (no chance to finish anything) each time another share of the emails is in.
    for kill in 1..=KILLS {
        let mut child = start();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while smtp.received_count() < kill * EMAILS / (KILLS + 1) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} emails after 120 s",
                smtp.received_count()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        child.wait().await.unwrap();
    }
    let mut child = start();
    cairn_testkit::wait_consumer_idle_within(
        &bus,
        cairn_bus::streams::CAMPAIGNS,
        send::SERVICE,
        Duration::from_secs(180),
    )
    .await;
    sigterm(&child);
    let (code, stderr) = exit_of(&mut child).await;
    assert_eq!(code, Some(0), "{stderr}");

    // The server got no email twice; each it got is recorded sent, or uncertain when
    // a kill came between its acceptance and the record; each recorded sent arrived.
    let mut received: std::collections::HashMap<String, usize> = Default::default();
    for email in smtp.received() {
        let message_id = email
            .lines()
            .find_map(|line| line.strip_prefix("Message-ID: "))
            .expect("a Message-ID")
            .trim()
            .to_string();
        *received.entry(message_id).or_default() += 1;
    }
    let twice: Vec<_> = received.iter().filter(|(_, count)| **count > 1).collect();
    assert!(twice.is_empty(), "received more than once: {twice:?}");
    let store = open_store();
    let (mut sent, mut uncertain) = (0, 0);
    for n in 0..EMAILS {
        let record = send::record(&store, &key(n))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{} has no record", key(n)));
        let arrived = received.contains_key(&send::message_id(&key(n)));
        match record.state {
            State::Sent => {
                assert!(arrived, "{} recorded sent, never arrived", key(n));
                sent += 1;
            }
            State::Uncertain => uncertain += 1,
            other => panic!("{}: {other:?} ({})", key(n), record.reason),
        }
    }
    assert_eq!(sent + uncertain, EMAILS);
    assert!(received.len() >= sent && received.len() <= EMAILS);
    // At most the emails in the middle of an exchange at each kill: one per connection.
    assert!(uncertain <= KILLS * 8, "{uncertain} uncertain");
    eprintln!(
        "{EMAILS} emails, {KILLS} kills: {sent} sent, {uncertain} uncertain ({} of those arrived), none twice",
        received.len() - sent
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_with_demo_shows_emails_within_a_minute_and_takes_generated_load() {
    let nats = TestNats::start().await;
    let data = tempfile::tempdir().unwrap();
    let admin = free_addr();
    let env = [
        ("CAIRN_NATS_URL", nats.url()),
        ("CAIRN_HTTP_ADDR", free_addr().to_string()),
        ("CAIRN_GRPC_ADDR", free_addr().to_string()),
        ("CAIRN_ADMIN_ADDR", admin.to_string()),
        ("CAIRN_DATA_DIR", data.path().display().to_string()),
    ];
    let mut up = cairn();
    up.args(["up", "--demo"]);
    for (name, value) in &env {
        up.env(name, value);
    }
    let mut child = up.spawn().unwrap();
    wait_ready(admin, &mut child).await;
    // Demo shoppers sign in, fill carts and leave them; 20 s later the reminder goes.
    let outbox = data.path().join("outbox");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(150);
    let email = loop {
        let found = std::fs::read_dir(&outbox).ok().and_then(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .find(|path| path.extension().is_some_and(|ext| ext == "eml"))
        });
        if let Some(path) = found {
            break std::fs::read_to_string(path).unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no demo email after 150 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(email.contains("are waiting"), "{email}");
    assert!(email.contains("To: shopper"), "{email}");
    assert!(email.contains("List-Unsubscribe: <"), "{email}");
    assert!(email.contains("Content-Type: text/html"), "{email}");

    // The load generator sends the same kind of traffic, at a rate, all accepted.
    let mut loadgen = cairn();
    loadgen.args([
        "loadgen",
        "--rate",
        "300",
        "--duration",
        "2s",
        "--shape",
        "burst",
    ]);
    for (name, value) in &env {
        loadgen.env(name, value);
    }
    let (code, stdout, stderr) = output(&mut loadgen).await;
    assert_eq!(code, 0, "{stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap();
    // 300/s for 2 s, ten times that in the middle third.
    assert_eq!(summary["sent"], 2_400, "{stdout}");
    assert_eq!(summary["accepted"], 2_400, "{stdout}");
    // Read off the stages' messages: every accepted event identified (and the demo's
    // own shoppers' events too), with its latency.
    let latency = &summary["latency"];
    assert!(
        latency["identified"]["messages"].as_u64() >= Some(2_400),
        "{stdout}"
    );
    assert!(latency["identified"]["p99_ms"].is_number(), "{stdout}");
    assert!(
        latency["profile"]["messages"].as_u64() > Some(0),
        "{stdout}"
    );
    sigterm(&child);
    let (code, stderr) = exit_of(&mut child).await;
    assert_eq!(code, Some(0), "{stderr}");
    let stdout = stdout_of(&mut child).await;
    assert!(stdout.contains("demo: saved templates"), "{stdout}");
}
