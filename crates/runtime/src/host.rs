//! Runs a set of modules in one process: one gRPC listener for every module's API, one
//! HTTP listener for the modules that serve HTTP, one admin listener, and a supervisor.
//!
//! Every module is wired the same way whichever set runs (`cairn serve collector` or
//! `cairn up`). If a module's task fails, the process shuts down and reports it. On
//! shutdown: readiness goes false and health NOT_SERVING, the servers stop accepting and
//! finish in-flight requests, background tasks finish their current work, all within
//! the drain timeout; the admin port closes last.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Extension;
use axum::extract::ConnectInfo;
use axum::middleware::AddExtension;
use axum::serve::{IncomingStream, Listener};
use futures::future::BoxFuture;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::Layer as _;

use cairn_proto::admin::v1::admin_server::AdminServer;

use crate::admin::{self, Readiness};
use crate::auth::Credentials;
use crate::config::{ConfigError, Settings, Var};
use crate::grpc::{self, GrpcServices, TraceContextLayer};
use crate::shutdown::Shutdown;
use crate::telemetry::Metrics;
use crate::tls::ServerTls;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A module's background work (see [`Module::tasks`]).
pub type ModuleTask = BoxFuture<'static, Result<(), BoxError>>;

pub const HTTP_ADDR: Var = Var {
    name: "CAIRN_HTTP_ADDR",
    default: "127.0.0.1:8080",
    doc: "HTTP listener (Segment-spec ingest and the browser tag).",
};
pub const GRPC_ADDR: Var = Var {
    name: "CAIRN_GRPC_ADDR",
    default: "127.0.0.1:50051",
    doc: "gRPC listener for every service's API in this process; the CLI's admin commands call it.",
};
pub const ADMIN_ADDR: Var = Var {
    name: "CAIRN_ADMIN_ADDR",
    default: "127.0.0.1:9090",
    doc: "Admin listener: /healthz, /readyz, /metrics.",
};
pub const DATA_DIR: Var = Var {
    name: "CAIRN_DATA_DIR",
    default: ".cairn",
    doc: "Where local state lives: the embedded store, `cairn up`'s nats-server data and log, development credentials.",
};
pub const REQUEST_TIMEOUT: Var = Var {
    name: "CAIRN_REQUEST_TIMEOUT",
    default: "30s",
    doc: "Longest a gRPC call may take before it fails with DEADLINE_EXCEEDED.",
};
pub const SHUTDOWN_TIMEOUT: Var = Var {
    name: "CAIRN_SHUTDOWN_TIMEOUT",
    default: "25s",
    doc: "On SIGTERM/SIGINT, how long in-flight work may take to finish before the process exits anyway.",
};

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr} ({var}): {source}")]
    Bind {
        var: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{module}: {source}")]
    Module { module: String, source: BoxError },
    #[error("{module} stopped on its own before shutdown")]
    Stopped { module: String },
}

/// What every module gets when it starts.
#[derive(Clone, Debug)]
pub struct ModuleContext {
    pub settings: Arc<Settings>,
    pub credentials: Arc<Credentials>,
    pub readiness: Readiness,
    pub metrics: Metrics,
    pub shutdown: Shutdown,
}

/// What a started module contributes to the process.
#[derive(Default)]
pub struct Module {
    pub name: &'static str,
    /// Its gRPC services, served on the shared gRPC listener.
    pub grpc: GrpcServices,
    /// Its HTTP routes, merged into the shared HTTP listener.
    pub http: Option<axum::Router>,
    /// Background work (consumers, timers) that runs until shutdown is requested, then
    /// finishes what it holds and returns. Returning early, or an error, stops the process.
    pub tasks: Vec<ModuleTask>,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module")
            .field("name", &self.name)
            .field("grpc", &self.grpc.names)
            .field("http", &self.http.is_some())
            .field("tasks", &self.tasks.len())
            .finish()
    }
}

/// The listeners of a process.
#[derive(Debug)]
pub struct Listeners {
    pub http: Option<TcpListener>,
    pub grpc: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds the configured addresses; the HTTP one only when `with_http`.
    pub async fn bind(settings: &Settings, with_http: bool) -> Result<Self, HostError> {
        async fn bind(settings: &Settings, var: &'static Var) -> Result<TcpListener, HostError> {
            let addr = settings.socket_addr(var)?;
            TcpListener::bind(addr)
                .await
                .map_err(|source| HostError::Bind {
                    var: var.name,
                    addr,
                    source,
                })
        }
        Ok(Self {
            http: if with_http {
                Some(bind(settings, &HTTP_ADDR).await?)
            } else {
                None
            },
            grpc: bind(settings, &GRPC_ADDR).await?,
            admin: bind(settings, &ADMIN_ADDR).await?,
        })
    }

    /// Binds every listener on 127.0.0.1 with a free port (tests, benchmarks).
    pub async fn ephemeral(with_http: bool) -> std::io::Result<Self> {
        let any = || TcpListener::bind("127.0.0.1:0");
        Ok(Self {
            http: if with_http { Some(any().await?) } else { None },
            grpc: any().await?,
            admin: any().await?,
        })
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.local_addr().ok()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.local_addr().ok()
    }
}

/// A finished piece of work: its module's name and how it ended.
type Finished = (String, Result<(), BoxError>);

/// Serves `modules` until shutdown is requested on `context.shutdown` (or a module
/// fails), then drains. Returns the first module failure, if any.
pub async fn serve(
    modules: Vec<Module>,
    listeners: Listeners,
    context: &ModuleContext,
) -> Result<(), HostError> {
    let settings = &context.settings;
    let request_timeout = settings.duration(&REQUEST_TIMEOUT)?;
    let shutdown_timeout = settings.duration(&SHUTDOWN_TIMEOUT)?;
    let tls = ServerTls::from_settings(settings)?;
    let shutdown = context.shutdown.clone();

    let mut grpc_services = GrpcServices::default();
    let mut http_router: Option<axum::Router> = None;
    let mut work: JoinSet<Finished> = JoinSet::new();
    let names: Vec<&'static str> = modules.iter().map(|module| module.name).collect();
    for module in modules {
        grpc_services = grpc_services.merge(module.grpc);
        if let Some(router) = module.http {
            http_router = Some(match http_router {
                Some(existing) => existing.merge(router),
                None => router,
            });
        }
        for task in module.tasks {
            let name = module.name.to_string();
            work.spawn(async move { (name, task.await) });
        }
    }

    // Admin: up first, down last, so probes see the whole drain.
    let admin_stop = CancellationToken::new();
    let admin_router = admin::router(context.readiness.clone(), context.metrics.clone());
    let admin_signal = admin_stop.clone().cancelled_owned();
    let admin = tokio::spawn(async move {
        axum::serve(listeners.admin, admin_router)
            .with_graceful_shutdown(admin_signal)
            .await
    });

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let admin_service = crate::status::AdminService::new(
        names.iter().map(|name| name.to_string()).collect(),
        context.readiness.clone(),
    );
    let grpc_services = grpc_services.with(AdminServer::new(admin_service));
    let service_names = grpc_services.names.clone();
    {
        let credentials = context.credentials.clone();
        let signal = shutdown.requested_owned();
        let reporter = health_reporter.clone();
        let tls = tls.clone();
        work.spawn(async move {
            let result = grpc::serve(
                listeners.grpc,
                tls.as_ref(),
                grpc_services,
                credentials,
                request_timeout,
                (reporter, health_service),
                signal,
            )
            .await
            .map_err(|err| Box::new(err) as BoxError);
            ("gRPC server".to_string(), result)
        });
    }

    if let (Some(listener), Some(router)) = (listeners.http, http_router) {
        let router = router.layer(TraceContextLayer::new("http"));
        let signal = shutdown.requested_owned();
        work.spawn(async move {
            let result = match tls {
                Some(tls) => serve_http(tls.http_listener(listener), router, signal).await,
                None => serve_http(listener, router, signal).await,
            }
            .map_err(|err| Box::new(err) as BoxError);
            ("HTTP server".to_string(), result)
        });
    }

    context.readiness.set_started();
    tracing::info!(modules = ?names, "serving");

    let mut failure = None;
    tokio::select! {
        biased;
        () = shutdown.requested() => {}
        Some(finished) = work.join_next() => {
            // A server that ends cleanly because shutdown began is not a failure.
            let clean = matches!(&finished, Ok((_, Ok(()))));
            if !(clean && shutdown.is_requested()) {
                failure = Some(failure_of(finished));
            }
            shutdown.trigger();
        }
    }

    tracing::info!(timeout = ?shutdown_timeout, "draining");
    context.readiness.set_draining();
    grpc::set_not_serving(&health_reporter, &service_names).await;
    let drain = async {
        while let Some(finished) = work.join_next().await {
            if let Ok((name, Err(source))) = finished {
                tracing::error!(module = %name, error = %source, "failed while draining");
                failure.get_or_insert(HostError::Module {
                    module: name,
                    source,
                });
            }
        }
    };
    if tokio::time::timeout(shutdown_timeout, drain).await.is_err() {
        tracing::warn!(timeout = ?shutdown_timeout, "drain timed out; abandoning in-flight work");
        work.abort_all();
    }
    admin_stop.cancel();
    let _ = admin.await;
    tracing::info!("stopped");
    failure.map_or(Ok(()), Err)
}

async fn serve_http<L>(
    listener: L,
    router: axum::Router,
    signal: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: Listener<Addr = SocketAddr>,
{
    axum::serve(listener, WithPeerAddr(router))
        .with_graceful_shutdown(signal)
        .await
}

/// Hands every request the peer's address as `ConnectInfo<SocketAddr>`, whichever
/// listener (plain or TLS) accepted the connection.
#[derive(Clone)]
struct WithPeerAddr(axum::Router);

impl<L> tower::Service<IncomingStream<'_, L>> for WithPeerAddr
where
    L: Listener<Addr = SocketAddr>,
{
    type Response = AddExtension<axum::Router, ConnectInfo<SocketAddr>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, incoming: IncomingStream<'_, L>) -> Self::Future {
        let peer = ConnectInfo(*incoming.remote_addr());
        std::future::ready(Ok(Extension(peer).layer(self.0.clone())))
    }
}

fn failure_of(finished: Result<Finished, tokio::task::JoinError>) -> HostError {
    match finished {
        Ok((module, Err(source))) => HostError::Module { module, source },
        Ok((module, Ok(()))) => HostError::Stopped { module },
        Err(err) => HostError::Module {
            module: "task".to_string(),
            source: Box::new(err),
        },
    }
}
