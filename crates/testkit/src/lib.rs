//! Test support shared by every crate's integration tests:
//!
//! - [`TestNats`]: a real nats-server with JetStream on a free port and a temporary
//!   store (or a cluster of them), stopped and restarted on demand, killed when dropped;
//! - [`TestHost`]: modules served in-process on free ports, exactly as `cairn serve` and
//!   `cairn up` serve them, with a handle to shut them down;
//! - [`events`]: Segment-spec event builders;
//! - [`smtp`]: a real SMTP server that keeps what it accepts.

#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use cairn_bus::server::{ClusterNode, NatsServer, find_binary};
use cairn_bus::{Bus, BusConfig};
use cairn_runtime::host::{self, HostError, Listeners, Module, ModuleContext};
use cairn_runtime::{Credentials, Metrics, Readiness, Settings, Shutdown, Var};

pub mod events;
pub mod proxy;
pub mod smtp;
pub mod tls;

/// A nats-server for one test, or a cluster of them.
#[derive(Debug)]
pub struct TestNats {
    servers: Vec<NatsServer>,
    _dir: tempfile::TempDir,
}

impl TestNats {
    /// Starts nats-server with JetStream on a free port. Panics with the install hint when
    /// the binary cannot be found.
    pub async fn start() -> Self {
        let binary = binary();
        let dir = tempfile::tempdir().expect("temporary directory");
        let server = NatsServer::start(&binary, free_addr(), &dir.path().join("jetstream"), None)
            .await
            .unwrap_or_else(|err| panic!("{err}"));
        Self {
            servers: vec![server],
            _dir: dir,
        }
    }

    /// Starts a JetStream cluster of `nodes` nats-servers on loopback, each with its own
    /// store, and waits until every node answers JetStream requests.
    pub async fn start_cluster(nodes: usize) -> Self {
        let binary = binary();
        let dir = tempfile::tempdir().expect("temporary directory");
        let routes: Vec<SocketAddr> = (0..nodes).map(|_| free_addr()).collect();
        let mut servers = Vec::with_capacity(nodes);
        for (index, listen) in routes.iter().enumerate() {
            let node = ClusterNode {
                cluster: "cairn-test".to_string(),
                server: format!("n{index}"),
                listen: *listen,
                routes: routes
                    .iter()
                    .filter(|route| *route != listen)
                    .copied()
                    .collect(),
            };
            let store = dir.path().join(format!("n{index}"));
            let server = NatsServer::launch_cluster_node(&binary, free_addr(), &store, None, node)
                .unwrap_or_else(|err| panic!("{err}"));
            servers.push(server);
        }
        for server in &mut servers {
            server
                .wait_until_ready()
                .await
                .unwrap_or_else(|err| panic!("{err}"));
        }
        Self { servers, _dir: dir }
    }

    /// The client URL: every node, comma-separated.
    pub fn url(&self) -> String {
        self.servers
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Bus settings pointed at this server.
    pub fn bus_config(&self) -> BusConfig {
        BusConfig::for_url(&self.url())
    }

    /// A connected bus.
    pub async fn bus(&self) -> Bus {
        Bus::connect(&self.bus_config(), "test").await.unwrap()
    }

    /// Stops every node (SIGTERM); the data stays for `restart`.
    pub async fn stop(&mut self) {
        for server in &mut self.servers {
            server.stop().await;
        }
    }

    /// Starts every node again on the same port with the same data.
    pub async fn restart(&mut self) {
        for server in &mut self.servers {
            server.restart().await.unwrap();
        }
    }

    /// SIGKILLs node `index` of a cluster (a crash); the others go on.
    pub async fn kill_node(&mut self, index: usize) {
        self.servers[index].kill().await;
    }

    /// Starts node `index` again on its port and data; it rejoins the cluster.
    pub async fn restart_node(&mut self, index: usize) {
        self.servers[index].restart().await.unwrap();
    }
}

fn binary() -> std::path::PathBuf {
    let configured =
        std::env::var_os(cairn_bus::server::NATS_SERVER.name).map(std::path::PathBuf::from);
    find_binary(configured.as_deref()).unwrap_or_else(|err| panic!("{err}"))
}

/// A message as a stream holds it.
#[derive(Debug, Clone)]
pub struct StreamMessage {
    pub subject: String,
    pub headers: async_nats::HeaderMap,
    pub payload: bytes::Bytes,
}

/// Every message in `stream`, in order.
pub async fn stream_messages(bus: &Bus, stream: &str) -> Vec<StreamMessage> {
    let stream = bus
        .jetstream()
        .get_stream(stream)
        .await
        .expect("the stream");
    let info = stream.get_info().await.expect("stream info");
    let mut stored = Vec::new();
    if info.state.messages == 0 {
        return stored;
    }
    for sequence in info.state.first_sequence..=info.state.last_sequence {
        // Deleted or expired sequences are skipped.
        if let Ok(message) = stream.get_raw_message(sequence).await {
            stored.push(StreamMessage {
                subject: message.subject.to_string(),
                headers: message.headers,
                payload: message.payload,
            });
        }
    }
    stored
}

/// Waits until `stream` holds at least `count` messages (30 s at most) and returns them.
pub async fn wait_for_messages(bus: &Bus, stream: &str, count: usize) -> Vec<StreamMessage> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Ok(mut found) = bus.jetstream().get_stream(stream).await
            && let Ok(info) = found.info().await
            && info.state.messages as usize >= count
        {
            return stream_messages(bus, stream).await;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{stream} did not reach {count} messages in 30s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Waits until `consumer` on `stream` has handled and acknowledged everything it was
/// given (30 s at most).
pub async fn wait_consumer_idle(bus: &Bus, stream: &str, consumer: &str) {
    wait_consumer_idle_within(bus, stream, consumer, std::time::Duration::from_secs(30)).await
}

/// The same, waiting at most `within` (messages a killed process had come back only
/// after the consumer's ack wait).
pub async fn wait_consumer_idle_within(
    bus: &Bus,
    stream: &str,
    consumer: &str,
    within: std::time::Duration,
) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Ok(mut found) = bus
            .jetstream()
            .get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
                consumer, stream,
            )
            .await
            && let Ok(info) = found.info().await
            && info.num_pending == 0
            && info.num_ack_pending == 0
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{consumer} on {stream} still busy after {within:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A message as the EVENTS stream holds it.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub subject: String,
    pub headers: async_nats::HeaderMap,
    pub envelope: cairn_proto::event::v1::Envelope,
}

/// Every message in the EVENTS stream, in order.
pub async fn stored_events(bus: &Bus) -> Vec<StoredEvent> {
    use prost::Message as _;
    stream_messages(bus, cairn_bus::streams::EVENTS)
        .await
        .into_iter()
        .map(|message| StoredEvent {
            subject: message.subject,
            headers: message.headers,
            envelope: cairn_proto::event::v1::Envelope::decode(message.payload)
                .expect("an envelope"),
        })
        .collect()
}

/// Every event in the EVENTS stream as its sender wrote it (the Segment call), in order.
pub async fn stored_calls(bus: &Bus) -> Vec<serde_json::Value> {
    stored_events(bus)
        .await
        .into_iter()
        .map(|stored| serde_json::from_slice(&stored.envelope.raw).expect("a JSON call"))
        .collect()
}

/// A free TCP address on 127.0.0.1.
pub fn free_addr() -> SocketAddr {
    cairn_bus::server::free_local_addr().expect("a free port on 127.0.0.1")
}

/// Modules served in-process, as `cairn serve`/`cairn up` serve them.
#[derive(Debug)]
pub struct TestHost {
    pub http: Option<SocketAddr>,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    pub context: ModuleContext,
    task: tokio::task::JoinHandle<Result<(), HostError>>,
}

impl TestHost {
    /// Module context from `pairs` over the defaults of `vars`.
    pub fn context<'a>(
        vars: &[Var],
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> ModuleContext {
        let settings = Settings::from_pairs(vars, pairs);
        let credentials = Credentials::from_settings(&settings).expect("credentials");
        ModuleContext {
            settings: Arc::new(settings),
            credentials: Arc::new(credentials),
            readiness: Readiness::default(),
            metrics: Metrics::prometheus_only("cairn-test").expect("metrics"),
            shutdown: Shutdown::new(),
        }
    }

    /// Serves `modules` on free ports.
    pub async fn serve(modules: Vec<Module>, context: ModuleContext) -> Self {
        let with_http = modules.iter().any(|module| module.http.is_some());
        let listeners = Listeners::ephemeral(with_http).await.expect("listeners");
        let (http, grpc, admin) = (
            listeners.http_addr(),
            listeners.grpc_addr().expect("grpc address"),
            listeners.admin_addr().expect("admin address"),
        );
        let serving = context.clone();
        let task = tokio::spawn(async move { host::serve(modules, listeners, &serving).await });
        Self {
            http,
            grpc,
            admin,
            context,
            task,
        }
    }

    /// What the admin endpoint's `/metrics` shows now (Prometheus text).
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `http://<http addr>`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http.expect("this host serves no HTTP"))
    }

    /// Posts `batch` (the events) to the collector's `/v1/batch` with `write_key`, and
    /// checks that it was accepted.
    pub async fn send_batch(&self, write_key: &str, batch: serde_json::Value) {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/batch", self.http_url()))
            .basic_auth(write_key, Some(""))
            .json(&serde_json::json!({ "batch": batch }))
            .send()
            .await
            .expect("the collector answers");
        let status = response.status();
        assert_eq!(status, 200, "{}", response.text().await.unwrap_or_default());
    }

    /// `http://<grpc addr>`, for tonic clients.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Requests shutdown and waits for the drain to finish.
    pub async fn shutdown(self) -> Result<(), HostError> {
        self.context.shutdown.trigger();
        self.task.await.expect("host task")
    }
}

/// A gRPC request carrying `token` as its bearer token.
pub fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("a token is ASCII"),
    );
    request
}
