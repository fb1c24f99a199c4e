//! The gRPC server every service's API runs on: health, reflection, and one tower stack
//! (trace context, timeout, auth) in front of every service.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{Either, Ready, ready};
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::{Layer, Service};

use crate::auth::{Credentials, Principal, authenticate_headers};
use crate::config::{ConfigError, Settings, Var};
use crate::error::to_status;
use crate::tls::ServerTls;

/// Puts the caller's [`Principal`] into the request's extensions; refuses a request whose
/// credentials are present but wrong. Requests without credentials pass through, and each
/// call checks what it needs (health and reflection need nothing).
#[derive(Clone, Debug)]
pub struct AuthLayer {
    credentials: Arc<Credentials>,
}

impl AuthLayer {
    pub fn new(credentials: Arc<Credentials>) -> Self {
        Self { credentials }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            credentials: self.credentials.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    credentials: Arc<Credentials>,
}

impl<S, B, ResBody> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        match authenticate_headers(request.headers(), &self.credentials) {
            Ok(principal) => {
                if let Some(principal) = principal {
                    request.extensions_mut().insert::<Principal>(principal);
                }
                Either::Right(self.inner.call(request))
            }
            Err(err) => Either::Left(ready(Ok(to_status(&err).into_http()))),
        }
    }
}

/// Opens a server span per call that continues the caller's W3C trace context; used on
/// the gRPC and HTTP servers alike.
#[derive(Clone, Debug)]
pub struct TraceContextLayer {
    /// "grpc" or "http", recorded on the span.
    protocol: &'static str,
}

impl TraceContextLayer {
    pub fn new(protocol: &'static str) -> Self {
        Self { protocol }
    }
}

impl<S> Layer<S> for TraceContextLayer {
    type Service = TraceContextService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceContextService {
            inner,
            protocol: self.protocol,
        }
    }
}

#[derive(Clone, Debug)]
pub struct TraceContextService<S> {
    inner: S,
    protocol: &'static str,
}

impl<S, B> Service<http::Request<B>> for TraceContextService<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tracing::instrument::Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        use tracing::Instrument as _;
        let span = crate::telemetry::request_span(
            self.protocol,
            request.method().as_str(),
            request.uri().path(),
            request.headers(),
        );
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        future.instrument(span)
    }
}

type AddService = Box<dyn FnOnce(Routes) -> Routes + Send>;

/// A module's gRPC services, and their fully qualified names (for health). Kept as
/// "add this service" steps so the services of several modules go into one router.
#[derive(Default)]
pub struct GrpcServices {
    adders: Vec<AddService>,
    pub names: Vec<&'static str>,
}

impl std::fmt::Debug for GrpcServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcServices")
            .field("names", &self.names)
            .finish()
    }
}

impl GrpcServices {
    /// Adds one generated tonic server.
    pub fn with<S>(mut self, service: S) -> Self
    where
        S: Service<http::Request<tonic::body::Body>, Error = Infallible>
            + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.adders
            .push(Box::new(move |routes: Routes| routes.add_service(service)));
        self
    }

    /// Combines the services of several modules.
    pub fn merge(mut self, other: GrpcServices) -> Self {
        self.names.extend(other.names);
        self.adders.extend(other.adders);
        self
    }

    /// One router with every service.
    fn into_routes(self) -> Routes {
        self.adders
            .into_iter()
            .fold(Routes::default(), |routes, add| add(routes))
    }
}

/// Serves `services` plus health and reflection on `listener` until `shutdown`
/// resolves, then drains in-flight calls. Health reports SERVING for every service
/// until `health` is told otherwise.
pub async fn serve(
    listener: TcpListener,
    tls: Option<&ServerTls>,
    services: GrpcServices,
    credentials: Arc<Credentials>,
    request_timeout: Duration,
    health: (
        HealthReporter,
        tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    ),
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health_service) = health;
    for name in &services.names {
        reporter
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(cairn_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1();
    let mut routes = services.into_routes().add_service(health_service);
    match reflection {
        Ok(reflection) => routes = routes.add_service(reflection),
        Err(err) => tracing::warn!(error = %err, "gRPC reflection unavailable"),
    }

    let stack = tower::ServiceBuilder::new()
        .layer(TraceContextLayer::new("grpc"))
        .layer(AuthLayer::new(credentials));
    let server = tonic::transport::Server::builder()
        .timeout(request_timeout)
        .layer(stack)
        .add_routes(routes);
    match tls {
        Some(tls) => {
            server
                .serve_with_incoming_shutdown(tls.grpc_listener(listener).into_stream(), shutdown)
                .await
        }
        None => {
            server
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    shutdown,
                )
                .await
        }
    }
}

/// Marks every service NOT_SERVING (on drain).
pub async fn set_not_serving(reporter: &HealthReporter, names: &[&'static str]) {
    for name in names {
        reporter
            .set_service_status(*name, ServingStatus::NotServing)
            .await;
    }
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
}

/// A client endpoint for Cairn's gRPC API at `addr` (`host:port`): over TLS trusting
/// the CA in `CAIRN_TLS_CA` when that is set, else plain. `var` names the setting
/// `addr` came from, for errors.
pub fn client_endpoint(
    settings: &Settings,
    var: &Var,
    addr: &str,
) -> Result<tonic::transport::Endpoint, ConfigError> {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig};
    match settings.optional(&crate::tls::TLS_CA) {
        Some(ca_path) => {
            let ca = std::fs::read(&ca_path).map_err(|err| {
                settings.invalid(&crate::tls::TLS_CA, format!("cannot read {ca_path}: {err}"))
            })?;
            Channel::from_shared(format!("https://{addr}"))
                .map_err(|err| settings.invalid(var, err.to_string()))?
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
                .map_err(|err| settings.invalid(&crate::tls::TLS_CA, err.to_string()))
        }
        None => Channel::from_shared(format!("http://{addr}"))
            .map_err(|err| settings.invalid(var, err.to_string())),
    }
}
