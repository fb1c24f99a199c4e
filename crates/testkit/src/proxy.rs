//! A TCP proxy whose link can be cut, as a network partition cuts it: bytes stop flowing
//! both ways while the connections stay open, so neither side notices until its own
//! timeouts fire. Restoring drops the stalled connections (as a peer's reset would) and
//! forwards again.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    /// `true` while the link is cut.
    cut: Arc<watch::Sender<bool>>,
    /// Bumped on restore: connections from before end.
    generation: Arc<watch::Sender<u64>>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free local port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let cut = Arc::new(watch::channel(false).0);
        let generation = Arc::new(watch::channel(0u64).0);
        let task = {
            let (cut, generation) = (cut.clone(), generation.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    tokio::spawn(forward(
                        client,
                        target,
                        cut.subscribe(),
                        generation.subscribe(),
                    ));
                }
            })
        };
        Self {
            addr,
            cut,
            generation,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `nats://<proxy address>`.
    pub fn nats_url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Stops every byte, both ways, on every connection, old and new.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Ends the stalled connections and forwards again.
    pub fn restore(&self) {
        self.generation.send_modify(|generation| *generation += 1);
        self.cut.send_replace(false);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    client: TcpStream,
    target: SocketAddr,
    cut: watch::Receiver<bool>,
    mut generation: watch::Receiver<u64>,
) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let born = *generation.borrow_and_update();
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, cut.clone());
    let down = pump(server_read, client_write, cut);
    let ended = async move {
        while generation.changed().await.is_ok() {
            if *generation.borrow() != born {
                return;
            }
        }
    };
    tokio::select! {
        () = up => {}
        () = down => {}
        () = ended => {}
    }
}

/// Copies `from` to `to`, holding everything while the link is cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: watch::Receiver<bool>,
) {
    use tokio::io::AsyncReadExt as _;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        if cut.wait_for(|cut| !*cut).await.is_err() {
            return;
        }
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        // Read while the link was up but cut since: these bytes are lost in the cut.
        if *cut.borrow() {
            continue;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
