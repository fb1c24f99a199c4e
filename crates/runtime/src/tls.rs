//! TLS on the HTTP and gRPC listeners, when `CAIRN_TLS_CERT` and `CAIRN_TLS_KEY` name a
//! PEM certificate chain and its private key. The admin listener (probes, `/metrics`)
//! stays plain HTTP: keep it off the public network.
//!
//! Handshakes run off the accept loop, each with a deadline, so a slow or silent client
//! holds up no one else; a failed handshake is logged without the peer's address (PII).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::task::AbortOnDropHandle;

use crate::config::{ConfigError, Settings, Var};

pub const TLS_CERT: Var = Var {
    name: "CAIRN_TLS_CERT",
    default: "",
    doc: "PEM certificate chain for the HTTP and gRPC listeners; with CAIRN_TLS_KEY they accept TLS only. The admin listener stays plain HTTP.",
};
pub const TLS_KEY: Var = Var {
    name: "CAIRN_TLS_KEY",
    default: "",
    doc: "PEM private key of CAIRN_TLS_CERT.",
};

pub const TLS_CA: Var = Var {
    name: "CAIRN_TLS_CA",
    default: "",
    doc: "PEM certificate of the CA trusted by what calls Cairn's gRPC API (the CLI's admin commands, the console) when it serves TLS (CAIRN_TLS_CERT); set, they connect over TLS.",
};

/// Longest a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for the server to take them.
const ACCEPTED_BACKLOG: usize = 128;

/// The server side of TLS for both listeners: HTTP offers HTTP/2 and HTTP/1.1, gRPC
/// HTTP/2 only.
#[derive(Clone, Debug)]
pub struct ServerTls {
    http: Arc<ServerConfig>,
    grpc: Arc<ServerConfig>,
}

impl ServerTls {
    /// `None` when neither variable is set; an error naming the variable when only one is,
    /// or when a file cannot be read or holds no usable certificate or key.
    pub fn from_settings(settings: &Settings) -> Result<Option<Self>, ConfigError> {
        let (cert_path, key_path) =
            match (settings.optional(&TLS_CERT), settings.optional(&TLS_KEY)) {
                (None, None) => return Ok(None),
                (Some(_), None) => {
                    return Err(settings.invalid(&TLS_KEY, "must be set with CAIRN_TLS_CERT"));
                }
                (None, Some(_)) => {
                    return Err(settings.invalid(&TLS_CERT, "must be set with CAIRN_TLS_KEY"));
                }
                (Some(cert), Some(key)) => (cert, key),
            };
        let chain = CertificateDer::pem_file_iter(&cert_path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|err| {
                settings.invalid(&TLS_CERT, format!("cannot read {cert_path}: {err}"))
            })?;
        if chain.is_empty() {
            return Err(settings.invalid(&TLS_CERT, format!("{cert_path} holds no certificate")));
        }
        let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|err| {
            settings.invalid_secret(&TLS_KEY, format!("cannot read a private key: {err}"))
        })?;
        let config = |alpn: &[&[u8]]| -> Result<Arc<ServerConfig>, ConfigError> {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .and_then(|builder| {
                    builder
                        .with_no_client_auth()
                        .with_single_cert(chain.clone(), key.clone_key())
                })
                .map_err(|err| {
                    settings.invalid(&TLS_CERT, format!("unusable with CAIRN_TLS_KEY: {err}"))
                })?;
            config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
            Ok(Arc::new(config))
        };
        Ok(Some(Self {
            http: config(&[b"h2", b"http/1.1"])?,
            grpc: config(&[b"h2"])?,
        }))
    }

    pub fn http_listener(&self, tcp: TcpListener) -> TlsListener {
        TlsListener::new(tcp, self.http.clone())
    }

    pub fn grpc_listener(&self, tcp: TcpListener) -> TlsListener {
        TlsListener::new(tcp, self.grpc.clone())
    }
}

/// A TCP listener that hands out connections once their TLS handshake is done.
#[derive(Debug)]
pub struct TlsListener {
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: Option<SocketAddr>,
    _acceptor: AbortOnDropHandle<()>,
}

impl TlsListener {
    fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> Self {
        let (sender, accepted) = mpsc::channel(ACCEPTED_BACKLOG);
        let local_addr = tcp.local_addr().ok();
        let acceptor = TlsAcceptor::from(config);
        let task = tokio::spawn(accept_loop(tcp, acceptor, sender));
        Self {
            accepted,
            local_addr,
            _acceptor: AbortOnDropHandle::new(task),
        }
    }

    /// The next connection whose handshake succeeded.
    pub async fn next(&mut self) -> (TlsStream<TcpStream>, SocketAddr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The accept loop never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    /// The connections as a stream, for tonic's server.
    pub fn into_stream(self) -> impl Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> {
        futures::stream::unfold(self, |mut listener| async move {
            let (stream, _) = listener.next().await;
            Some((Ok(stream), listener))
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        self.next().await
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.local_addr
            .ok_or_else(|| std::io::Error::other("the TCP listener had no local address"))
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    sender: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let (stream, peer) = match tcp.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %err, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let sender = sender.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let _ = sender.send((stream, peer)).await;
                }
                Ok(Err(err)) => tracing::debug!(error = %err, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        });
    }
}
