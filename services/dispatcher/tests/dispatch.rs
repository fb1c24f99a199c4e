//! The dispatcher against a real nats-server and a real SMTP server
//! ([`SmtpServer`]: aiosmtpd, scripting its answers by recipient): campaign sends arrive rendered, once, deferred
//! ones after a retry, refused ones in the dead letters, each outcome on
//! `delivery.events`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_bus::{Bus, Outgoing, streams, subjects};
use cairn_dispatcher::send::{self, State};
use cairn_dispatcher::templates::{self, Template};
use cairn_profile_store::profile::{Profile, Stamped};
use cairn_proto::campaign::v1::Action;
use cairn_proto::dispatch::v1::DeliveryEvent;
use cairn_proto::dispatch::v1::delivery_event::Outcome;
use cairn_store::{EmbeddedStore, Expect, Store as _, Write};
use cairn_testkit::smtp::SmtpServer;
use cairn_testkit::{TestHost, TestNats, stream_messages};
use prost::Message as _;

struct Mesh {
    host: TestHost,
    bus: Bus,
    store: EmbeddedStore,
    _nats: TestNats,
    _dir: tempfile::TempDir,
}

const CART: &str = "cart_reminder";
const LINK_SECRET: &str = "link-secret-0123456789";

async fn mesh(transport: &[(&str, &str)]) -> Mesh {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(
        &dir.path().join("store"),
        cairn_store::Fsync::Buffer,
        8 << 20,
        cairn_store::Clock::system(),
    )
    .unwrap();
    templates::put(
        &store,
        Template {
            name: CART.into(),
            subject: "{{ profile.traits.name }}, your {{ params.section }} are waiting".into(),
            text: "Hi {{ profile.traits.name }}, finish your order on {{ params.section }}.".into(),
            html: Some(
                "<html><body><p>Hi {{ profile.traits.name }}</p>\
                 <p><a href=\"https://shop.example.com/cart?section={{ params.section }}\">Back to your cart</a></p>\
                 </body></html>"
                    .into(),
            ),
            list: None,
            version: 0,
            updated_ms: 0,
        },
    )
    .await
    .unwrap();
    for (id, email) in [
        ("p-ann", "ann@example.com"),
        ("p-evening", "eve@example.com"),
        ("p-defer", "defer-bob@example.com"),
        ("p-reject", "reject-cy@example.com"),
        ("p-busy", "busy-dan@example.com"),
        ("p-biz", "buyer@acme.example"),
        ("p-bad", "not an address"),
    ] {
        let profile = Profile {
            id: id.to_string(),
            traits: BTreeMap::from([
                ("email".to_string(), stamped(email)),
                ("name".to_string(), stamped("Ann")),
            ]),
            // Ann visited the site before (the anonymous id her events carried).
            identifiers: if id == "p-ann" {
                vec![cairn_profile_store::profile::Identifier {
                    kind: "anonymous_id".into(),
                    value: "a-ann".into(),
                }]
            } else {
                Vec::new()
            },
            // Eve reads email two hours from now (UTC: no zone known).
            facts: if id == "p-biz" {
                BTreeMap::from([(
                    "activity".to_string(),
                    Stamped {
                        value: serde_json::json!({"customer_type": "b2b"}),
                        at: 1,
                    },
                )])
            } else if id == "p-evening" {
                BTreeMap::from([(
                    "activity".to_string(),
                    Stamped {
                        value: serde_json::json!({"best_send_hour": evening_hour()}),
                        at: 1,
                    },
                )])
            } else {
                BTreeMap::new()
            },
            ..Profile::default()
        };
        store
            .write(
                &cairn_profile_store::store::PROFILES,
                Write::new(Bytes::from(id.to_string())).record(
                    Expect::Any,
                    cairn_profile_store::store::encode(&profile).unwrap(),
                ),
            )
            .await
            .unwrap();
    }
    let url = nats.url();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let mut pairs = vec![
        ("CAIRN_NATS_URL", url.as_str()),
        ("CAIRN_DATA_DIR", data),
        ("CAIRN_EMAIL_BACKOFF", "100ms"),
        ("CAIRN_EMAIL_ATTEMPTS", "4"),
        ("CAIRN_ADMIN_TOKENS", "admin:tk_admin,read:tk_read"),
        ("CAIRN_EMAIL_LINK_SECRET", LINK_SECRET),
        ("CAIRN_EMAIL_QUIET_HOURS", "off"),
    ];
    pairs.extend_from_slice(transport);
    let context = TestHost::context(
        &[
            cairn_runtime::VARS.to_vec(),
            cairn_collector::vars(),
            cairn_dispatcher::vars(),
        ]
        .concat(),
        pairs,
    );
    let modules = vec![
        cairn_collector::start(&context).await.unwrap(),
        cairn_dispatcher::start(&context, store.clone())
            .await
            .unwrap(),
    ];
    let host = TestHost::serve(modules, context).await;
    let bus = nats.bus().await;
    Mesh {
        host,
        bus,
        store,
        _nats: nats,
        _dir: dir,
    }
}

fn stamped(value: &str) -> Stamped<serde_json::Value> {
    Stamped {
        value: serde_json::json!(value),
        at: 1,
    }
}

fn action(profile_id: &str, key: &str) -> Action {
    Action {
        campaign: "cart_recovery".into(),
        profile_id: profile_id.into(),
        state: "abandoned".into(),
        channel: "email".into(),
        target: CART.into(),
        params_json: r#"{"section":"shoes"}"#.into(),
        entry: 1,
        at: Some(cairn_runtime::clock::timestamp(
            cairn_runtime::clock::now_ms(),
        )),
        idempotency_key: key.into(),
        send_at: String::new(),
        untracked: false,
    }
}

impl Mesh {
    /// Publishes `action` as the campaign engine does (`copy` tells copies apart, as a
    /// repeat of the action would be).
    async fn request(&self, action: &Action, copy: &str) {
        self.bus
            .publish_all(vec![Outgoing {
                subject: subjects::campaign_sends(self.bus.partitions().of(&action.profile_id)),
                message_id: Some(format!("{}:{copy}", action.idempotency_key)),
                headers: async_nats::HeaderMap::new(),
                payload: Bytes::from(action.encode_to_vec()),
            }])
            .await
            .unwrap();
    }

    /// Waits until the send record of `key` is in `state`.
    async fn wait_for(&self, key: &str, state: State) -> send::SendRecord {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(record) = send::record(&self.store, key).await.unwrap()
                && record.state == state
            {
                return record;
            }
            assert!(Instant::now() < deadline, "{key} never became {state:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn idle(&self) {
        cairn_testkit::wait_consumer_idle(&self.bus, streams::CAMPAIGNS, send::SERVICE).await;
    }

    /// The outcomes reported for `key`, in order.
    async fn outcomes(&self, key: &str) -> Vec<Outcome> {
        stream_messages(&self.bus, streams::DELIVERY)
            .await
            .into_iter()
            .map(|message| DeliveryEvent::decode(message.payload).unwrap())
            .filter(|event| event.idempotency_key == key)
            .map(|event| event.outcome())
            .collect()
    }

    async fn dead_letters(&self) -> Vec<String> {
        stream_messages(&self.bus, streams::DEAD_LETTERS)
            .await
            .into_iter()
            .filter(|message| message.subject == "deadletter.dispatcher")
            .map(|message| {
                message
                    .headers
                    .get(cairn_bus::worker::DEAD_LETTER_REASON)
                    .map(|value| value.to_string())
                    .unwrap_or_default()
            })
            .collect()
    }
}

/// aiosmtpd and the mesh sending to it; `None` when aiosmtpd is not installed.
async fn smtp_mesh() -> Option<(SmtpServer, Mesh)> {
    let server = SmtpServer::start().await?;
    let url = server.url();
    let mesh = mesh(&[
        ("CAIRN_EMAIL_TRANSPORT", "smtp"),
        ("CAIRN_SMTP_URL", url.as_str()),
    ])
    .await;
    Some((server, mesh))
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_arrives_rendered_and_once_however_often_it_is_asked_for() {
    let Some((server, mesh)) = smtp_mesh().await else {
        return;
    };

    let ann = action("p-ann", "cart_recovery:p-ann:1:abandoned");
    mesh.request(&ann, "first").await;
    let record = mesh.wait_for(&ann.idempotency_key, State::Sent).await;
    assert_eq!(record.to, "ann@example.com");
    // Asked again (a redelivery, a repeated action): nothing more leaves.
    mesh.request(&ann, "again").await;
    mesh.request(&ann, "and again").await;
    mesh.idle().await;

    let received = server.received();
    assert_eq!(received.len(), 1, "{received:?}");
    let email = &received[0];
    assert!(
        email.contains("Subject: Ann, your shoes are waiting"),
        "{email}"
    );
    assert!(email.contains("To: ann@example.com"), "{email}");
    assert!(
        email.contains("Hi Ann, finish your order on shoes."),
        "{email}"
    );
    assert!(email.contains("<p>Hi Ann</p>"), "{email}");
    assert!(
        email.contains(&format!(
            "Message-ID: {}",
            send::message_id(&ann.idempotency_key)
        )),
        "{email}"
    );
    assert_eq!(
        mesh.outcomes(&ann.idempotency_key).await,
        vec![Outcome::Sent]
    );
    // Counted once for operators, however often it was asked for.
    let metrics = mesh.host.metrics().await;
    assert!(
        metrics.contains(r#"cairn_dispatcher_emails_total{outcome="sent"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_send_is_tried_again_and_a_refused_one_is_dead_lettered() {
    let Some((server, mesh)) = smtp_mesh().await else {
        return;
    };

    let deferred = action("p-defer", "k-defer");
    let refused = action("p-reject", "k-reject");
    let no_address = action("p-bad", "k-bad");
    let no_template = Action {
        target: "nope".into(),
        ..action("p-ann", "k-no-template")
    };
    let busy = action("p-busy", "k-busy");
    for request in [&busy, &deferred, &refused, &no_address, &no_template] {
        mesh.request(request, "first").await;
    }
    // A deferred email waits off the line: one asked for after it goes out meanwhile.
    mesh.wait_for("k-busy", State::Deferred).await;
    let later = action("p-ann", "k-later");
    mesh.request(&later, "first").await;
    mesh.wait_for("k-later", State::Sent).await;
    assert_ne!(
        send::record(&mesh.store, "k-busy")
            .await
            .unwrap()
            .unwrap()
            .state,
        State::Failed
    );
    mesh.wait_for("k-defer", State::Sent).await;
    let failed = mesh.wait_for("k-reject", State::Failed).await;
    assert!(failed.reason.contains("550"), "{failed:?}");
    mesh.wait_for("k-bad", State::Failed).await;
    mesh.wait_for("k-no-template", State::Failed).await;
    mesh.idle().await;

    // The server that always defers is given up after CAIRN_EMAIL_ATTEMPTS (4).
    let given_up = mesh.wait_for("k-busy", State::Failed).await;
    assert!(
        given_up.reason.contains("still deferred after 4 attempts"),
        "{given_up:?}"
    );
    mesh.idle().await;
    let received = server.received();
    assert_eq!(received.len(), 2, "{received:?}");
    assert!(
        received
            .iter()
            .any(|email| email.contains("To: defer-bob@example.com"))
    );
    assert_eq!(
        mesh.outcomes("k-defer").await,
        vec![Outcome::Deferred, Outcome::Sent]
    );
    assert_eq!(mesh.outcomes("k-reject").await, vec![Outcome::Failed]);
    assert_eq!(
        mesh.outcomes("k-busy").await,
        vec![
            Outcome::Deferred,
            Outcome::Deferred,
            Outcome::Deferred,
            Outcome::Failed
        ]
    );
    let dead = mesh.dead_letters().await;
    assert_eq!(dead.len(), 4, "{dead:?}");
    assert!(dead.iter().any(|reason| reason.contains("550")), "{dead:?}");
    assert!(
        dead.iter()
            .any(|reason| reason.contains("is not an address")),
        "{dead:?}"
    );
    assert!(
        dead.iter()
            .any(|reason| reason.contains("there is no template nope")),
        "{dead:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_interrupted_mid_exchange_is_not_sent_again() {
    let Some((server, mesh)) = smtp_mesh().await else {
        return;
    };
    // What a dispatcher killed during the SMTP exchange leaves behind.
    let interrupted = action("p-ann", "k-interrupted");
    let record = send::SendRecord {
        state: State::Sending,
        message_id: send::message_id("k-interrupted"),
        to: "ann@example.com".into(),
        at_ms: 1,
        reason: String::new(),
        deferrals: 0,
    };
    mesh.store
        .write(
            &templates::DISPATCH,
            Write::new(Bytes::from("s:k-interrupted"))
                .record(Expect::Absent, serde_json::to_vec(&record).unwrap()),
        )
        .await
        .unwrap();
    mesh.request(&interrupted, "redelivered").await;
    mesh.wait_for("k-interrupted", State::Uncertain).await;
    mesh.idle().await;
    assert!(server.received().is_empty());
    assert_eq!(
        mesh.outcomes("k-interrupted").await,
        vec![Outcome::Uncertain]
    );
}

/// The local default: each email an .eml file under the data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_smtp_emails_are_written_to_the_outbox() {
    let mesh = mesh(&[]).await;
    let ann = action("p-ann", "k-file");
    mesh.request(&ann, "first").await;
    mesh.wait_for("k-file", State::Sent).await;
    let outbox: &Path = &mesh
        .host
        .context
        .settings
        .path(&cairn_runtime::host::DATA_DIR);
    let files: Vec<PathBuf> = std::fs::read_dir(outbox.join("outbox"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let email = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        email.contains("Subject: Ann, your shoes are waiting"),
        "{email}"
    );
}

/// Templates over gRPC: checked when saved (naming the part and the variable),
/// versioned, listed, and previewed for a profile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_are_checked_versioned_listed_and_previewed() {
    use cairn_proto::dispatch::v1 as pb;
    let mesh = mesh(&[]).await;
    let mut client = pb::templates_client::TemplatesClient::connect(mesh.host.grpc_url())
        .await
        .unwrap();
    let template = |subject: &str| pb::Template {
        name: "welcome".into(),
        subject: subject.into(),
        text: "Hello {{ profile.traits.name }}".into(),
        ..Default::default()
    };
    let refused = client
        .put(cairn_testkit::bearer(
            pb::PutRequest {
                template: Some(template("Hi {{ profile.emial }}")),
            },
            "tk_admin",
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused
            .message()
            .contains("subject: the profile has no field \"emial\""),
        "{refused:?}"
    );
    let reader = client
        .put(cairn_testkit::bearer(
            pb::PutRequest {
                template: Some(template("Hi")),
            },
            "tk_read",
        ))
        .await
        .unwrap_err();
    assert_eq!(reader.code(), tonic::Code::PermissionDenied);

    for subject in ["Hi", "Welcome, {{ profile.traits.name }}"] {
        client
            .put(cairn_testkit::bearer(
                pb::PutRequest {
                    template: Some(template(subject)),
                },
                "tk_admin",
            ))
            .await
            .unwrap();
    }
    let listed = client
        .list(cairn_testkit::bearer(pb::ListRequest {}, "tk_read"))
        .await
        .unwrap()
        .into_inner()
        .templates;
    let names: Vec<(String, u64)> = listed.into_iter().map(|t| (t.name, t.version)).collect();
    assert_eq!(
        names,
        vec![(CART.to_string(), 1), ("welcome".to_string(), 2)]
    );
    let preview = client
        .preview(cairn_testkit::bearer(
            pb::PreviewRequest {
                name: "welcome".into(),
                profile_id: "p-ann".into(),
                params_json: String::new(),
            },
            "tk_read",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(preview.to, "ann@example.com");
    assert_eq!(preview.subject, "Welcome, Ann");
    assert_eq!(preview.text, "Hello Ann");
    let missing = client
        .get(cairn_testkit::bearer(
            pb::GetRequest {
                name: "nope".into(),
            },
            "tk_read",
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

/// The unsubscribe link of `email` (its token), as the List-Unsubscribe header has it.
fn unsubscribe_token(email: &str) -> String {
    let header = email
        .lines()
        .find(|line| line.starts_with("List-Unsubscribe: "))
        .unwrap_or_else(|| panic!("no List-Unsubscribe in {email}"));
    let url = header
        .trim_start_matches("List-Unsubscribe: <")
        .trim_end_matches('>');
    url.split_once("?t=").unwrap().1.to_string()
}

/// The link in an email unsubscribes its address (after a confirmation page, or in
/// one click from the mail client); later sends to it are suppressed, as are sends to
/// an address whose mailbox the server said does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribed_and_bounced_addresses_get_no_more_emails() {
    let Some((server, mesh)) = smtp_mesh().await else {
        return;
    };

    mesh.request(&action("p-ann", "k-1"), "first").await;
    mesh.wait_for("k-1", State::Sent).await;
    let email = server.received().remove(0);
    assert!(
        email.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
        "{email}"
    );
    let token = unsubscribe_token(&email);
    let link = format!("{}/v1/unsubscribe?t={token}", mesh.host.http_url());
    let client = reqwest::Client::new();

    // Opening the link asks; it does not unsubscribe (mail scanners open links).
    let page = client.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("ann@example.com"));
    mesh.request(&action("p-ann", "k-2"), "first").await;
    mesh.wait_for("k-2", State::Sent).await;

    // A forged link does nothing.
    let forged = client.post(format!("{link}x")).send().await.unwrap();
    assert_eq!(forged.status(), 400);
    // One click (RFC 8058): unsubscribed.
    let done = client
        .post(&link)
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    mesh.request(&action("p-ann", "k-3"), "first").await;
    let suppressed = mesh.wait_for("k-3", State::Suppressed).await;
    assert!(suppressed.reason.contains("unsubscribed"), "{suppressed:?}");
    assert_eq!(mesh.outcomes("k-3").await, vec![Outcome::Suppressed]);

    // A mailbox that does not exist (550) is not tried again.
    mesh.request(&action("p-reject", "k-4"), "first").await;
    mesh.wait_for("k-4", State::Failed).await;
    mesh.request(&action("p-reject", "k-5"), "first").await;
    let bounced = mesh.wait_for("k-5", State::Suppressed).await;
    assert!(bounced.reason.contains("bounced"), "{bounced:?}");
    mesh.idle().await;
    assert_eq!(server.received().len(), 2);
}

/// Unsubscribing from a list's email stops that list only (its page offers every
/// campaign email too); an address an operator suppresses (a complaint) gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_unsubscribe_stops_that_list_and_a_complaint_stops_all() {
    use cairn_proto::dispatch::v1 as pb;
    use cairn_proto::dispatch::v1::suppressions_client::SuppressionsClient;

    let Some((server, mesh)) = smtp_mesh().await else {
        return;
    };
    templates::put(
        &mesh.store,
        Template {
            name: "promo".into(),
            subject: "Deals for {{ profile.traits.name }}".into(),
            text: "Deals. Unsubscribe: {{ unsubscribe_url }}".into(),
            html: None,
            list: Some("promotions".into()),
            version: 0,
            updated_ms: 0,
        },
    )
    .await
    .unwrap();
    let promo = |key: &str| Action {
        target: "promo".into(),
        ..action("p-ann", key)
    };
    mesh.request(&promo("promo-1"), "first").await;
    mesh.wait_for("promo-1", State::Sent).await;
    let email = server.received().remove(0);
    let token = unsubscribe_token(&email);
    let link = format!("{}/v1/unsubscribe?t={token}", mesh.host.http_url());
    let client = reqwest::Client::new();
    let page = client
        .get(&link)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("<b>promotions</b> emails"), "{page}");
    assert!(page.contains("all=1"), "{page}");
    let done = client
        .post(&link)
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    // No more promotions; the cart reminder (no list) still goes.
    mesh.request(&promo("promo-2"), "first").await;
    let suppressed = mesh.wait_for("promo-2", State::Suppressed).await;
    assert!(suppressed.reason.contains("unsubscribed"), "{suppressed:?}");
    mesh.request(&action("p-ann", "cart-1"), "first").await;
    mesh.wait_for("cart-1", State::Sent).await;

    // A complaint recorded by an operator: nothing more, of any list.
    let channel = tonic::transport::Channel::from_shared(mesh.host.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut suppressions = SuppressionsClient::new(channel);
    let complaint = |email: &str, token: &str| {
        cairn_testkit::bearer(
            pb::SuppressionsAddRequest {
                email: email.into(),
                list: String::new(),
                reason: "complained".into(),
            },
            token,
        )
    };
    let refused = suppressions
        .add(complaint("not an address", "tk_admin"))
        .await
        .unwrap_err();
    assert!(refused.message().starts_with("email:"), "{refused:?}");
    let read_only = suppressions
        .add(complaint("ann@example.com", "tk_read"))
        .await
        .unwrap_err();
    assert_eq!(read_only.code(), tonic::Code::PermissionDenied);
    suppressions
        .add(complaint("Ann@Example.com", "tk_admin"))
        .await
        .unwrap();
    let state = suppressions
        .get(cairn_testkit::bearer(
            pb::SuppressionsGetRequest {
                email: "ann@example.com".into(),
                list: String::new(),
            },
            "tk_read",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        state.suppressed && state.reason == "complained",
        "{state:?}"
    );
    mesh.request(&action("p-ann", "cart-2"), "first").await;
    let complained = mesh.wait_for("cart-2", State::Suppressed).await;
    assert!(complained.reason.contains("complained"), "{complained:?}");

    // Lifted: emails of no list go again; the promotions stay unsubscribed.
    let removed = suppressions
        .remove(cairn_testkit::bearer(
            pb::SuppressionsRemoveRequest {
                email: "ann@example.com".into(),
                list: String::new(),
            },
            "tk_admin",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(removed.removed);
    mesh.request(&action("p-ann", "cart-3"), "first").await;
    mesh.wait_for("cart-3", State::Sent).await;
    mesh.request(&promo("promo-3"), "first").await;
    mesh.wait_for("promo-3", State::Suppressed).await;
    mesh.idle().await;
    assert_eq!(server.received().len(), 3);
}

/// With a B2B pool configured, emails to business addresses leave through its server
/// and from its address; the others the usual way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_addresses_get_their_emails_from_the_b2b_pool() {
    let (Some(usual), Some(business)) = (SmtpServer::start().await, SmtpServer::start().await)
    else {
        return;
    };
    let (usual_url, business_url) = (usual.url(), business.url());
    let mesh = mesh(&[
        ("CAIRN_EMAIL_TRANSPORT", "smtp"),
        ("CAIRN_SMTP_URL", usual_url.as_str()),
        ("CAIRN_SMTP_RATE", "50"),
        ("CAIRN_EMAIL_B2B_SMTP_URL", business_url.as_str()),
        ("CAIRN_EMAIL_B2B_FROM", "Acme Sales <sales@cairn.example>"),
    ])
    .await;
    mesh.request(&action("p-biz", "k-biz"), "first").await;
    mesh.request(&action("p-ann", "k-ann"), "first").await;
    mesh.wait_for("k-biz", State::Sent).await;
    mesh.wait_for("k-ann", State::Sent).await;
    let (to_business, to_usual) = (business.received(), usual.received());
    assert_eq!((to_business.len(), to_usual.len()), (1, 1));
    assert!(
        to_business[0].contains("To: buyer@acme.example"),
        "{}",
        to_business[0]
    );
    assert!(
        to_business[0].contains("From: \"Acme Sales\" <sales@cairn.example>"),
        "{}",
        to_business[0]
    );
    assert!(
        to_usual[0].contains("To: ann@example.com"),
        "{}",
        to_usual[0]
    );
    assert!(
        to_usual[0].contains("From: Cairn <cairn@localhost>"),
        "{}",
        to_usual[0]
    );
}

/// At most CAIRN_EMAIL_DAILY_CAP emails per profile in 24 hours, across campaigns; a
/// repeat of one email takes no second slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_gets_no_more_emails_a_day_than_the_cap() {
    let mesh = mesh(&[("CAIRN_EMAIL_DAILY_CAP", "2")]).await;
    for key in ["cap-1", "cap-2"] {
        mesh.request(&action("p-ann", key), "first").await;
        mesh.wait_for(key, State::Sent).await;
    }
    mesh.request(&action("p-ann", "cap-1"), "again").await;
    let other_campaign = Action {
        campaign: "welcome".into(),
        ..action("p-ann", "cap-3")
    };
    mesh.request(&other_campaign, "first").await;
    let capped = mesh.wait_for("cap-3", State::Capped).await;
    assert!(
        capped.reason.contains("CAIRN_EMAIL_DAILY_CAP"),
        "{capped:?}"
    );
    assert_eq!(mesh.outcomes("cap-3").await, vec![Outcome::Capped]);
    // Another profile has its own emails.
    mesh.request(&action("p-defer", "cap-4"), "first").await;
    mesh.idle().await;
    assert_ne!(
        send::record(&mesh.store, "cap-4")
            .await
            .unwrap()
            .unwrap()
            .state,
        State::Capped
    );
}

/// An email due in the profile's quiet hours is held: a message schedule brings the
/// request back when they end, and nothing leaves now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_due_in_quiet_hours_is_held_until_they_end() {
    use chrono::Timelike as _;
    let now = chrono::Utc::now();
    let hhmm = |at: chrono::DateTime<chrono::Utc>| format!("{:02}:{:02}", at.hour(), at.minute());
    let end = now + chrono::Duration::minutes(90);
    let window = format!(
        "{}-{}",
        hhmm(now - chrono::Duration::minutes(30)),
        hhmm(end)
    );
    let mesh = mesh(&[("CAIRN_EMAIL_QUIET_HOURS", window.as_str())]).await;

    let ann = action("p-ann", "k-night");
    mesh.request(&ann, "first").await;
    let held = mesh.wait_for("k-night", State::Held).await;
    assert!(held.reason.contains("quiet hours"), "{held:?}");
    mesh.request(&ann, "again").await;
    mesh.idle().await;
    assert_eq!(mesh.outcomes("k-night").await, vec![Outcome::Held]);

    // One schedule (a repeat replaces it), due when the window ends, for the sends.
    let holds: Vec<_> = stream_messages(&mesh.bus, streams::CAMPAIGNS)
        .await
        .into_iter()
        .filter(|message| message.subject.starts_with("campaign.hold."))
        .collect();
    assert_eq!(holds.len(), 1, "{holds:?}");
    let headers = &holds[0].headers;
    assert_eq!(
        headers.get("Nats-Schedule-Target").unwrap().to_string(),
        subjects::campaign_sends(mesh.bus.partitions().of("p-ann"))
    );
    let due = headers.get("Nats-Schedule").unwrap().to_string();
    assert!(
        due.starts_with(&format!("@at {}", end.format("%Y-%m-%dT%H:%M"))),
        "{due}"
    );
    assert_eq!(Action::decode(holds[0].payload.clone()).unwrap(), ann);
    let outbox = mesh
        .host
        .context
        .settings
        .path(&cairn_runtime::host::DATA_DIR)
        .join("outbox");
    assert_eq!(
        std::fs::read_dir(outbox)
            .map(|dir| dir.count())
            .unwrap_or(0),
        0
    );
}

/// Two hours from now, in UTC.
fn evening_hour() -> u32 {
    use chrono::Timelike as _;
    (chrono::Utc::now().hour() + 2) % 24
}

/// A campaign that asks for the best send hour waits for it in the profile's zone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_for_the_best_send_hour_waits_for_it() {
    let mesh = mesh(&[]).await;
    let eve = Action {
        send_at: "best_hour".into(),
        untracked: false,
        ..action("p-evening", "k-evening")
    };
    mesh.request(&eve, "first").await;
    mesh.wait_for("k-evening", State::Held).await;
    // Without the request, the same profile gets its email now.
    mesh.request(&action("p-evening", "k-now"), "first").await;
    mesh.wait_for("k-now", State::Sent).await;
    mesh.idle().await;
    let hold = stream_messages(&mesh.bus, streams::CAMPAIGNS)
        .await
        .into_iter()
        .find(|message| message.subject.starts_with("campaign.hold."))
        .unwrap();
    let due = hold.headers.get("Nats-Schedule").unwrap().to_string();
    assert!(
        due.ends_with(&format!("T{:02}:00:00Z", evening_hour())),
        "{due}"
    );
}

/// The HTML part of `email` (an .eml), decoded.
fn html_part(email: &str) -> String {
    let start = email.find("Content-Type: text/html").expect("an HTML part");
    let part = &email[start..];
    let (headers, body) = part.split_once("\r\n\r\n").unwrap();
    let body = &body[..body.find("\r\n--").unwrap_or(body.len())];
    if headers.contains("Content-Transfer-Encoding: base64") {
        use base64::Engine as _;
        let joined: String = body.split_whitespace().collect();
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(joined)
                .unwrap(),
        )
        .unwrap()
    } else if headers.contains("Content-Transfer-Encoding: quoted-printable") {
        let joined = body.replace("=\r\n", "");
        let mut decoded = Vec::new();
        let bytes = joined.as_bytes();
        let mut at = 0;
        while at < bytes.len() {
            if bytes[at] == b'=' && at + 2 < bytes.len() {
                let hex = std::str::from_utf8(&bytes[at + 1..at + 3]).unwrap();
                decoded.push(u8::from_str_radix(hex, 16).unwrap());
                at += 3;
            } else {
                decoded.push(bytes[at]);
                at += 1;
            }
        }
        String::from_utf8(decoded).unwrap()
    } else {
        body.to_string()
    }
}

/// The value of the first `attribute="…"` in `html` that starts with `prefix`.
fn attribute_starting(html: &str, attribute: &str, prefix: &str) -> String {
    let needle = format!("{attribute}=\"{prefix}");
    let start = html
        .find(&needle)
        .unwrap_or_else(|| panic!("no {needle} in {html}"))
        + attribute.len()
        + 2;
    html[start..start + html[start..].find('"').unwrap()].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_in_emails_record_clicks_and_opens_and_tie_the_browser_to_the_person() {
    let Some((server, mesh)) = smtp_mesh().await else {
        return;
    };
    let ann = action("p-ann", "k-tracked");
    // A campaign with tracking off.
    let untracked = Action {
        untracked: true,
        ..action("p-ann", "k-untracked")
    };
    mesh.request(&ann, "first").await;
    mesh.request(&untracked, "first").await;
    mesh.wait_for("k-tracked", State::Sent).await;
    mesh.wait_for("k-untracked", State::Sent).await;
    let received = server.received();
    let email_of = |key: &str| {
        received
            .iter()
            .find(|email| email.contains(&send::message_id(key)))
            .map(|email| html_part(email))
            .unwrap()
    };
    let plain = email_of("k-untracked");
    assert!(
        plain.contains("href=\"https://shop.example.com/cart?section=shoes\""),
        "{plain}"
    );
    assert!(!plain.contains("/v1/open"), "{plain}");
    let tracked = email_of("k-tracked");
    assert!(!tracked.contains("shop.example.com"), "{tracked}");
    // The links lead to CAIRN_PUBLIC_URL (by default CAIRN_HTTP_ADDR, which the test
    // host does not use): here, to the collector where it listens.
    let public = mesh.host.http_url();
    let token_of = |link: String, path: &str| {
        let (_, token) = link
            .split_once(&format!("{path}?t="))
            .unwrap_or_else(|| panic!("{link}"));
        token.to_string()
    };
    let click = format!(
        "{public}/v1/click?t={}",
        token_of(attribute_starting(&tracked, "href", "http"), "/v1/click")
    );
    let open = format!(
        "{public}/v1/open?t={}",
        token_of(attribute_starting(&tracked, "src", "http"), "/v1/open")
    );

    // The click leads to the page, carrying the visit token.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = client.get(&click).send().await.unwrap();
    assert_eq!(response.status(), 302);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let visit = location
        .strip_prefix("https://shop.example.com/cart?section=shoes&cairn_t=")
        .unwrap_or_else(|| panic!("{location}"))
        .to_string();
    let pixel = client.get(&open).send().await.unwrap();
    assert_eq!(pixel.status(), 200);
    assert_eq!(pixel.headers()["content-type"], "image/gif");
    // The landing page's tag hands the token over with its own anonymous id.
    let linked = client
        .post(format!("{public}/v1/link"))
        .header("content-type", "text/plain")
        .body(serde_json::json!({"t": visit, "anonymousId": "browser-7"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(linked.status(), 200);

    let events: Vec<serde_json::Value> = cairn_testkit::stored_calls(&mesh.bus).await;
    let named = |name: &str| {
        events
            .iter()
            .find(|event| event["event"] == name)
            .unwrap_or_else(|| panic!("no {name} in {events:?}"))
    };
    let clicked = named("Email Link Clicked");
    assert_eq!(clicked["anonymousId"], "a-ann");
    assert_eq!(clicked["context"]["traits"]["email"], "ann@example.com");
    assert_eq!(clicked["properties"]["campaign"], "cart_recovery");
    assert_eq!(clicked["properties"]["email_id"], "k-tracked");
    assert_eq!(
        clicked["properties"]["link_url"],
        "https://shop.example.com/cart?section=shoes"
    );
    let opened = named("Email Opened");
    assert_eq!(opened["properties"]["email_id"], "k-tracked");
    assert_eq!(opened["anonymousId"], "a-ann");
    let identify = events
        .iter()
        .find(|event| event["type"] == "identify")
        .unwrap_or_else(|| panic!("no identify in {events:?}"));
    assert_eq!(identify["anonymousId"], "browser-7");
    assert_eq!(identify["context"]["traits"]["email"], "ann@example.com");

    // Forged, swapped or incomplete tokens do nothing but say so.
    let forged = client
        .get(format!("{public}/v1/click?t=AAAA{}", &visit[4..]))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);
    let open_token = open.split("t=").nth(1).unwrap();
    for (body, says) in [
        (
            serde_json::json!({"t": open_token, "anonymousId": "b"}),
            "t: not a visit token",
        ),
        (serde_json::json!({"t": visit}), "anonymousId: required"),
        (serde_json::json!({"anonymousId": "b"}), "t: required"),
    ] {
        let refused = client
            .post(format!("{public}/v1/link"))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 400);
        let text = refused.text().await.unwrap();
        assert!(text.contains(says), "{text}");
    }
    assert_eq!(cairn_testkit::stored_calls(&mesh.bus).await, events);
}
