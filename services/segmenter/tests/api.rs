//! `cairn.segment.v1.Segments` served in-process on the embedded store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_proto::segment::v1 as pb;
use cairn_proto::segment::v1::segments_client::SegmentsClient;
use cairn_store::{Clock, EmbeddedStore, Fsync};
use cairn_testkit::{TestHost, TestNats};
use tonic::Code;

struct Api {
    host: TestHost,
    _nats: TestNats,
    _dir: tempfile::TempDir,
}

async fn api() -> Api {
    let nats = TestNats::start().await;
    let url = nats.url();
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), Fsync::Buffer, 1 << 20, Clock::system()).unwrap();
    let vars = [cairn_runtime::VARS.to_vec(), cairn_segmenter::vars()].concat();
    let context = TestHost::context(
        &vars,
        [
            ("CAIRN_ADMIN_TOKENS", "read:tk_read,write:tk_write"),
            ("CAIRN_NATS_URL", url.as_str()),
        ],
    );
    let module = cairn_segmenter::start(&context, store).await.unwrap();
    Api {
        host: TestHost::serve(vec![module], context).await,
        _nats: nats,
        _dir: dir,
    }
}

impl Api {
    async fn client(&self) -> SegmentsClient<tonic::transport::Channel> {
        SegmentsClient::connect(self.host.grpc_url()).await.unwrap()
    }
}

fn webhook(url: &str, secret: &str) -> pb::PutRequest {
    pb::PutRequest {
        webhook_url: url.into(),
        webhook_secret: secret.into(),
        ..put("hooked", "FILTER EXISTS email")
    }
}

fn put(name: &str, filter: &str) -> pb::PutRequest {
    pb::PutRequest {
        name: name.into(),
        filter: filter.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn segments_are_saved_checked_listed_and_deleted() {
    let api = api().await;
    let mut client = api.client().await;
    let saved = client
        .put(cairn_testkit::bearer(
            put("", "filter visit_count>3 alias frequent"),
            "tk_write",
        ))
        .await
        .unwrap()
        .into_inner()
        .segment
        .unwrap();
    assert_eq!(saved.name, "frequent");
    assert_eq!(saved.filter, "FILTER visit_count > 3\nALIAS frequent");
    client
        .put(cairn_testkit::bearer(
            put(
                "frequent_pros",
                "FILTER AND (INCLUDE frequent, plan == \"pro\")",
            ),
            "tk_write",
        ))
        .await
        .unwrap();

    let listed = client
        .list(cairn_testkit::bearer(pb::ListRequest {}, "tk_read"))
        .await
        .unwrap()
        .into_inner()
        .segments;
    let names: Vec<&str> = listed.iter().map(|segment| segment.name.as_str()).collect();
    assert_eq!(names, vec!["frequent", "frequent_pros"]);

    // A webhook's URL is shown; its secret never is.
    let hooked = client
        .put(cairn_testkit::bearer(
            webhook("https://example.com/hook", "a-secret-of-16-chars"),
            "tk_write",
        ))
        .await
        .unwrap()
        .into_inner()
        .segment
        .unwrap();
    assert_eq!(hooked.webhook_url, "https://example.com/hook");
    assert!(!format!("{hooked:?}").contains("a-secret-of-16-chars"));
    // An editor that never saw the secret changes the filter and keeps the webhook;
    // a save without the webhook and without keep_webhook removes it.
    for (keep, kept_url) in [(true, "https://example.com/hook"), (false, "")] {
        let saved = client
            .put(cairn_testkit::bearer(
                pb::PutRequest {
                    keep_webhook: keep,
                    ..put("hooked", "FILTER EXISTS phone")
                },
                "tk_write",
            ))
            .await
            .unwrap()
            .into_inner()
            .segment
            .unwrap();
        assert_eq!(saved.filter, "FILTER EXISTS phone");
        assert_eq!(saved.webhook_url, kept_url, "keep_webhook: {keep}");
    }
    client
        .delete(cairn_testkit::bearer(
            pb::DeleteRequest {
                name: "hooked".into(),
            },
            "tk_write",
        ))
        .await
        .unwrap();

    // What cannot work is refused, with the reason.
    let refusals = [
        (
            put("x", "FILTER visit_count >"),
            "filter: line 1, column 21",
        ),
        (
            put("x", "FILTER event_count.purchase.2d > 1"),
            "no field \"event_count.purchase.2d\"",
        ),
        (
            put("x", "FILTER INCLUDE nobody"),
            "there is no segment nobody",
        ),
        (
            put("frequent", "FILTER INCLUDE frequent_pros"),
            "INCLUDE goes round",
        ),
        (
            put("y", "FILTER EXISTS email ALIAS z"),
            "differs from the filter's ALIAS",
        ),
        (put("", "FILTER EXISTS email"), "name: required"),
        (
            webhook("ftp://example.com/x", "a-secret-of-16-chars"),
            "webhook_url: \"ftp://example.com/x\" must be an http or https URL",
        ),
        (
            webhook("not a url", "a-secret-of-16-chars"),
            "webhook_url: \"not a url\" is not a URL",
        ),
        (
            webhook("https://example.com/hook", "short"),
            "webhook_secret: required with webhook_url, at least 16 characters",
        ),
        (
            webhook("", "a-secret-of-16-chars"),
            "webhook_secret: given without",
        ),
    ];
    for (request, expected) in refusals {
        let status = client
            .put(cairn_testkit::bearer(request, "tk_write"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(expected), "{}", status.message());
    }
    let status = client
        .delete(cairn_testkit::bearer(
            pb::DeleteRequest {
                name: "frequent".into(),
            },
            "tk_write",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("included by frequent_pros"),
        "{}",
        status.message()
    );

    // Readers read; only writers write.
    let status = client
        .put(cairn_testkit::bearer(
            put("z", "FILTER EXISTS email"),
            "tk_read",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // Check says what is wrong without saving.
    let checked = client
        .check(cairn_testkit::bearer(
            pb::CheckRequest {
                filter: "FILTER AND (\n  visit_count > \"many\"\n  city ~ 1)".into(),
                name: String::new(),
            },
            "tk_read",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (checked.problems[0].line, checked.problems[0].column),
        (3, 8)
    );
    let checked = client
        .check(cairn_testkit::bearer(
            pb::CheckRequest {
                filter: "filter visit_count > \"many\"".into(),
                name: String::new(),
            },
            "tk_read",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(checked.canonical, "FILTER visit_count > \"many\"");
    assert!(
        checked.problems[0].message.contains("holds a number"),
        "{checked:?}"
    );

    client
        .delete(cairn_testkit::bearer(
            pb::DeleteRequest {
                name: "frequent_pros".into(),
            },
            "tk_write",
        ))
        .await
        .unwrap();
    client
        .delete(cairn_testkit::bearer(
            pb::DeleteRequest {
                name: "frequent".into(),
            },
            "tk_write",
        ))
        .await
        .unwrap();
    let status = client
        .get(cairn_testkit::bearer(
            pb::GetRequest {
                name: "frequent".into(),
            },
            "tk_read",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}
