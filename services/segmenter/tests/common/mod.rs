//! The segmenter's test mesh: collector, identity, profile store and segmenter on one
//! store and a real nats-server, with helpers to send events and wait for them.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use cairn_bus::{Bus, Outgoing, streams};
use std::collections::BTreeSet;

use cairn_proto::segment::v1 as pb;
use cairn_proto::segment::v1::SegmentChanged;
use cairn_proto::segment::v1::segments_client::SegmentsClient;
use cairn_segmenter::definitions::Draft;
use cairn_store::{Clock, EmbeddedStore, Fsync};
use cairn_testkit::{TestHost, TestNats, stream_messages, wait_consumer_idle};
use prost::Message as _;

pub struct Mesh {
    pub host: TestHost,
    pub bus: Bus,
    pub store: EmbeddedStore,
    pub nats: TestNats,
    _dir: tempfile::TempDir,
}

/// The mesh, with `segments` saved before it starts.
pub async fn mesh(segments: &[(&str, &str)]) -> Mesh {
    mesh_with(segments, &[]).await
}

/// The mesh, with `segments` and `campaigns` (YAML) saved before it starts.
pub async fn mesh_with(segments: &[(&str, &str)], campaigns: &[&str]) -> Mesh {
    let nats = TestNats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), Fsync::Buffer, 8 << 20, Clock::system()).unwrap();
    for (name, filter) in segments {
        cairn_segmenter::definitions::put(&store, Draft::new(name, filter), 0)
            .await
            .unwrap();
    }
    for source in campaigns {
        cairn_segmenter::campaigns::saved::put(&store, source, 0)
            .await
            .unwrap();
    }
    let host = serve(&nats, &store).await;
    let bus = nats.bus().await;
    Mesh {
        host,
        bus,
        store,
        nats,
        _dir: dir,
    }
}

/// A segment of people who ordered at least twice.
pub const VIP: &str = "FILTER event_count.`Order Completed`.all >= 2";

/// What the mesh seals email links with.
pub const LINK_SECRET: &str = "link-secret-0123456789";

/// What the mesh signs campaign webhook calls with.
pub const CAMPAIGN_SECRET: &str = "campaign-secret-0123";

/// Collector, identity, enrich-content, profile store and segmenter on `store`.
pub async fn serve(nats: &TestNats, store: &EmbeddedStore) -> TestHost {
    let url = nats.url();
    let vars = [
        cairn_runtime::VARS.to_vec(),
        cairn_collector::vars(),
        cairn_identity::vars(),
        cairn_enrich_content::vars(),
        cairn_profile_store::vars(),
        cairn_segmenter::vars(),
    ]
    .concat();
    let context = TestHost::context(
        &vars,
        [
            ("CAIRN_NATS_URL", url.as_str()),
            ("CAIRN_WRITE_KEYS", "web:wk_web"),
            ("CAIRN_ADMIN_TOKENS", "admin:tk_admin"),
            ("CAIRN_PARTITION_LEASE", "1s"),
            ("CAIRN_WEBHOOK_BACKOFF", "100ms"),
            ("CAIRN_WEBHOOK_ATTEMPTS", "3"),
            ("CAIRN_CAMPAIGN_WEBHOOK_SECRET", CAMPAIGN_SECRET),
            ("CAIRN_EMAIL_LINK_SECRET", LINK_SECRET),
        ],
    );
    let modules = vec![
        cairn_collector::start(&context).await.unwrap(),
        cairn_identity::start(&context, store.clone())
            .await
            .unwrap(),
        cairn_enrich_content::start(&context, store.clone())
            .await
            .unwrap(),
        cairn_profile_store::start(&context, store.clone())
            .await
            .unwrap(),
        cairn_segmenter::start(&context, store.clone())
            .await
            .unwrap(),
    ];
    TestHost::serve(modules, context).await
}

pub fn with<T>(message: T) -> tonic::Request<T> {
    cairn_testkit::bearer(message, "tk_admin")
}

impl Mesh {
    /// Every profile change announced so far, delivered to the segmenter again (as
    /// after a crash before the acks); how many.
    pub async fn redeliver_changes(&self, tag: &str) -> usize {
        let changes: Vec<Outgoing> = stream_messages(&self.bus, streams::PROFILES)
            .await
            .into_iter()
            .filter(|message| message.subject.starts_with("profiles.changed."))
            .enumerate()
            .map(|(n, message)| Outgoing {
                subject: message.subject,
                message_id: Some(format!("{tag}-{n}")),
                headers: async_nats::HeaderMap::new(),
                payload: message.payload,
            })
            .collect();
        let count = changes.len();
        self.bus.publish_all(changes).await.unwrap();
        wait_consumer_idle(&self.bus, streams::PROFILES, "segmenter").await;
        count
    }

    /// Every service stopped and started again on the same store and NATS.
    pub async fn restart(self) -> Self {
        self.host.shutdown().await.unwrap();
        let host = serve(&self.nats, &self.store).await;
        Self { host, ..self }
    }

    pub async fn client(&self) -> SegmentsClient<tonic::transport::Channel> {
        SegmentsClient::connect(self.host.grpc_url()).await.unwrap()
    }

    /// Follows the batch run of `segment` to its end.
    pub async fn evaluate(&self, segment: &str) -> pb::EvaluateResponse {
        let mut progress = self
            .client()
            .await
            .evaluate(with(pb::EvaluateRequest {
                name: segment.to_string(),
            }))
            .await
            .unwrap()
            .into_inner();
        let mut last = None;
        while let Some(update) = progress.message().await.unwrap() {
            assert!((0.0..=1.0).contains(&update.fraction), "{update:?}");
            last = Some(update);
        }
        let last = last.unwrap();
        assert!(last.done, "{last:?}");
        last
    }

    /// The members of `segment` as kept live.
    pub async fn members(&self, segment: &str) -> BTreeSet<String> {
        let mut client = self.client().await;
        let mut members = client
            .members(with(pb::MembersRequest {
                name: segment.to_string(),
                with_profiles: false,
                limit: 0,
            }))
            .await
            .unwrap()
            .into_inner();
        let mut found = BTreeSet::new();
        while let Some(member) = members.message().await.unwrap() {
            assert!(found.insert(member.profile_id));
        }
        let size = client
            .size(with(pb::SizeRequest {
                name: segment.to_string(),
            }))
            .await
            .unwrap()
            .into_inner()
            .size;
        assert_eq!(size, found.len() as u64, "{segment}");
        found
    }

    /// Sends `batch` and waits until identity, the profile store (events, merges and
    /// memberships) and the segmenter are done with it.
    pub async fn send(&self, batch: serde_json::Value) {
        self.host.send_batch("wk_web", batch).await;
        self.settle().await;
    }

    /// Waits until identity, the profile store, the segmenter and the personalization
    /// answers are done with what the collector accepted.
    pub async fn settle(&self) {
        // Identity, the profile store and the segmenter, one after the other, until a
        // whole pass finds every consumer idle and no stream grown meanwhile (one step
        // may announce work for an earlier one: a merge, a member gaining ids).
        for _ in 0..20 {
            let before = self.stream_sizes().await;
            self.settle_pass().await;
            if self.stream_sizes().await == before {
                return;
            }
        }
        panic!("the mesh kept producing messages through 20 passes");
    }

    /// How many messages each stream the mesh writes holds now.
    async fn stream_sizes(&self) -> Vec<u64> {
        let mut sizes = Vec::new();
        for name in [
            streams::EVENTS,
            streams::IDENTIFIED,
            streams::PROFILES,
            streams::SEGMENTS,
            streams::CAMPAIGNS,
        ] {
            let size = match self.bus.jetstream().get_stream(name).await {
                Ok(mut stream) => stream.info().await.map_or(0, |info| info.state.messages),
                Err(_) => 0,
            };
            sizes.push(size);
        }
        sizes
    }

    /// One pass over every consumer, in pipeline order.
    async fn settle_pass(&self) {
        for _ in 0..3 {
            wait_consumer_idle(&self.bus, streams::EVENTS, "identity").await;
            wait_consumer_idle(&self.bus, streams::IDENTIFIED, "enrich_content").await;
            for partition in 0..self.bus.partitions().count() {
                wait_consumer_idle(
                    &self.bus,
                    streams::IDENTIFIED,
                    &format!("profile_store_events_{partition}"),
                )
                .await;
                wait_consumer_idle(
                    &self.bus,
                    streams::PROFILES,
                    &format!("profile_store_links_{partition}"),
                )
                .await;
                wait_consumer_idle(
                    &self.bus,
                    streams::SEGMENTS,
                    &format!("profile_store_segments_{partition}"),
                )
                .await;
            }
            wait_consumer_idle(&self.bus, streams::PROFILES, "segmenter").await;
            self.campaigns_idle().await;
        }
        self.answers_idle().await;
    }

    /// Waits until the personalization answers caught up with what was announced.
    pub async fn answers_idle(&self) {
        for (stream, config) in cairn_segmenter::personalization::consumer_configs() {
            wait_consumer_idle(&self.bus, stream, config.durable_name.as_deref().unwrap()).await;
        }
    }

    /// `GET /v1/personalize?<query>` with the write key: the status and the answer.
    pub async fn personalize(&self, query: &str) -> (u16, serde_json::Value) {
        let response = reqwest::get(format!(
            "{}/v1/personalize?writeKey=wk_web&{query}",
            self.host.http_url()
        ))
        .await
        .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// The same with the admin token, as a server asks (user ids allowed).
    pub async fn personalize_server_side(&self, query: &str) -> (u16, serde_json::Value) {
        let response = reqwest::Client::new()
            .get(format!("{}/v1/personalize?{query}", self.host.http_url()))
            .bearer_auth("tk_admin")
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// The content the personalization API shows `query`'s visitor now.
    pub async fn shown(&self, query: &str) -> Vec<String> {
        let (status, answer) = self.personalize(query).await;
        assert_eq!(status, 200, "{answer}");
        answer["content"]
            .as_array()
            .unwrap()
            .iter()
            .map(|content| content["content"].as_str().unwrap().to_string())
            .collect()
    }

    /// The profile as last announced.
    pub async fn profile(&self) -> serde_json::Value {
        let last = stream_messages(&self.bus, streams::PROFILES)
            .await
            .into_iter()
            .filter(|message| message.subject.starts_with("profiles.changed."))
            .map(|message| {
                cairn_proto::profile::v1::ProfileChanged::decode(message.payload).unwrap()
            })
            .max_by_key(|changed| changed.version)
            .unwrap();
        serde_json::from_str(&last.profile_json).unwrap()
    }

    pub async fn transitions(&self) -> Vec<(String, bool)> {
        stream_messages(&self.bus, streams::SEGMENTS)
            .await
            .into_iter()
            .filter(|message| message.subject.starts_with("segments.changed."))
            .map(|message| {
                let changed = SegmentChanged::decode(message.payload).unwrap();
                (changed.segment, changed.entered)
            })
            .collect()
    }

    /// Every service stopped, then NATS stopped for `down`, then both started again.
    pub async fn restart_with_nats_down(mut self, down: std::time::Duration) -> Self {
        self.host.shutdown().await.unwrap();
        self.nats.stop().await;
        tokio::time::sleep(down).await;
        self.nats.restart().await;
        let host = serve(&self.nats, &self.store).await;
        Self { host, ..self }
    }

    /// Waits until the campaign consumers are done with what they have.
    pub async fn campaigns_idle(&self) {
        wait_consumer_idle(&self.bus, streams::CAMPAIGNS, "segmenter_campaign_timers").await;
    }
}

/// A webhook receiver on a free port: answers 204, except `/flaky` (500 the first time
/// for each idempotency key), `/broken` (400) and `/down` (503); keeps every request.
#[derive(Clone, Default)]
pub struct Receiver {
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, axum::http::HeaderMap, bytes::Bytes)>>>,
}

impl Receiver {
    pub async fn start() -> (Self, String) {
        let receiver = Receiver::default();
        let state = receiver.clone();
        let app = axum::Router::new().route(
            "/{path}",
            axum::routing::post(
                move |axum::extract::Path(path): axum::extract::Path<String>,
                      headers: axum::http::HeaderMap,
                      body: bytes::Bytes| {
                    let state = state.clone();
                    async move {
                        let mut seen = state.seen.lock().unwrap();
                        let key = headers["idempotency-key"].clone();
                        let before = seen
                            .iter()
                            .filter(|(_, earlier, _)| earlier["idempotency-key"] == key)
                            .count();
                        seen.push((path.clone(), headers, body));
                        match path.as_str() {
                            "flaky" if before == 0 => axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                            "broken" => axum::http::StatusCode::BAD_REQUEST,
                            "down" => axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            _ => axum::http::StatusCode::NO_CONTENT,
                        }
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, url)
    }

    pub fn requests(
        &self,
        path: &str,
    ) -> Vec<(axum::http::HeaderMap, serde_json::Value, bytes::Bytes)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(seen, _, _)| seen == path)
            .map(|(_, headers, body)| {
                (
                    headers.clone(),
                    serde_json::from_slice(body).unwrap(),
                    body.clone(),
                )
            })
            .collect()
    }
}
