//! The link between the collector and NATS cut (bytes stop, connections stay open, as in
//! a network partition): every request meanwhile gets 503, never a 200 for an event that
//! was not stored; when the link heals the collector reconnects by itself, and the
//! refused requests, sent again, are stored once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cairn_testkit::proxy::TcpProxy;
use cairn_testkit::{TestHost, TestNats, events, stored_events};

#[tokio::test]
async fn a_cut_to_nats_gives_503_never_200_and_the_collector_resumes_when_it_heals() {
    let nats = TestNats::start().await;
    let target = nats.url().trim_start_matches("nats://").parse().unwrap();
    let proxy = TcpProxy::start(target).await;
    let url = proxy.nats_url();
    let vars = [cairn_runtime::VARS.to_vec(), cairn_collector::vars()].concat();
    let context = TestHost::context(
        &vars,
        [
            ("CAIRN_NATS_URL", url.as_str()),
            ("CAIRN_WRITE_KEYS", "web:wk_web"),
            ("CAIRN_PUBLISH_TIMEOUT", "1s"),
        ],
    );
    let module = cairn_collector::start(&context).await.unwrap();
    let host = TestHost::serve(vec![module], context).await;
    let client = reqwest::Client::new();
    let post = |id: String| {
        let request = client
            .post(format!("{}/v1/track", host.http_url()))
            .basic_auth("wk_web", Some(""))
            .timeout(Duration::from_secs(10))
            .json(&events::track(&id, "a-1", "Viewed"));
        async move {
            request
                .send()
                .await
                .map(|response| response.status().as_u16())
        }
    };

    assert_eq!(post("before".into()).await.unwrap(), 200);

    proxy.cut();
    let mut refused = Vec::new();
    for n in 0..5 {
        let id = format!("during-{n}");
        let status = post(id.clone()).await.unwrap();
        assert_eq!(status, 503, "{id} during the cut");
        refused.push(id);
    }

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(30);
    while post("after".into()).await.ok() != Some(200) {
        assert!(
            Instant::now() < deadline,
            "no 200 within 30 s of the link healing"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The site retries what was refused.
    for id in &refused {
        assert_eq!(post(id.clone()).await.unwrap(), 200, "{id} retried");
    }

    let mut stored: BTreeMap<String, usize> = BTreeMap::new();
    for event in stored_events(&nats.bus().await).await {
        *stored.entry(event.envelope.message_id).or_default() += 1;
    }
    let expected: Vec<String> = ["before", "after"]
        .iter()
        .map(|id| id.to_string())
        .chain(refused)
        .collect();
    assert_eq!(stored.len(), expected.len(), "{stored:?}");
    for id in &expected {
        assert_eq!(stored.get(id), Some(&1), "{id}: {stored:?}");
    }
}
