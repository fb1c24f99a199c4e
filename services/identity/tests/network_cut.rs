//! A network cut between a worker (identity) and NATS: a TCP proxy stalls the link the way
//! a partition does while the collector, on its own link, goes on storing events. When the
//! link heals, identity reconnects by itself and catches up: every event identified, once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use cairn_bus::streams;
use cairn_proto::event::v1::IdentifiedEvent;
use cairn_store::{Clock, EmbeddedStore, Fsync};
use cairn_testkit::proxy::TcpProxy;
use cairn_testkit::{TestHost, TestNats, stream_messages, wait_for_messages};
use prost::Message as _;
use serde_json::{Value, json};

fn pages(prefix: &str, count: usize) -> Value {
    (0..count)
        .map(|n| {
            json!({"type": "page", "messageId": format!("{prefix}-{n}"),
                   "anonymousId": format!("visitor-{}", n % 7)})
        })
        .collect()
}

#[tokio::test]
async fn identity_cut_off_from_nats_resumes_when_the_link_heals_and_identifies_each_event_once() {
    let nats = TestNats::start().await;
    let target = nats.url().trim_start_matches("nats://").parse().unwrap();
    let proxy = TcpProxy::start(target).await;
    let direct = nats.url();
    let through_proxy = proxy.nats_url();

    let collector_context = TestHost::context(
        &[cairn_runtime::VARS.to_vec(), cairn_collector::vars()].concat(),
        [
            ("CAIRN_NATS_URL", direct.as_str()),
            ("CAIRN_WRITE_KEYS", "web:wk_web"),
        ],
    );
    let collector = cairn_collector::start(&collector_context).await.unwrap();
    let collector = TestHost::serve(vec![collector], collector_context).await;

    let dir = tempfile::tempdir().unwrap();
    let identity_context = TestHost::context(
        &[cairn_runtime::VARS.to_vec(), cairn_identity::vars()].concat(),
        [
            ("CAIRN_NATS_URL", through_proxy.as_str()),
            ("CAIRN_PUBLISH_TIMEOUT", "1s"),
        ],
    );
    let store = EmbeddedStore::open(dir.path(), Fsync::Buffer, 8 << 20, Clock::system()).unwrap();
    let identity = cairn_identity::start(&identity_context, store)
        .await
        .unwrap();
    let _identity = TestHost::serve(vec![identity], identity_context).await;
    let bus = nats.bus().await;

    collector.send_batch("wk_web", pages("before", 50)).await;
    wait_for_messages(&bus, streams::IDENTIFIED, 50).await;

    // The cut: the collector still stores events, identity can neither read nor publish.
    proxy.cut();
    collector.send_batch("wk_web", pages("during", 50)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        stream_messages(&bus, streams::IDENTIFIED).await.len(),
        50,
        "nothing identified while identity is cut off"
    );

    // The heal: identity reconnects by itself and catches up.
    proxy.restore();
    collector.send_batch("wk_web", pages("after", 50)).await;
    wait_for_messages(&bus, streams::IDENTIFIED, 150).await;
    // Events delivered before the cut come again; identified again, they carry the same
    // message ids, and the stream keeps one of each.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut identified: BTreeMap<String, usize> = BTreeMap::new();
    for message in stream_messages(&bus, streams::IDENTIFIED).await {
        let event = IdentifiedEvent::decode(message.payload).unwrap();
        *identified
            .entry(event.envelope.unwrap().message_id)
            .or_default() += 1;
    }
    assert_eq!(identified.len(), 150);
    assert!(
        identified.values().all(|times| *times == 1),
        "{identified:?}"
    );
}
