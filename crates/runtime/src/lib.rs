//! What every Cairn process shares, so that each service is only its own logic:
//!
//! - [`config`]: `CAIRN_*` variables (and an optional TOML file), declared once each,
//!   with errors that name the variable and the bad value;
//! - [`telemetry`]: `tracing` logs, OpenTelemetry traces and metrics (OTLP when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set; Prometheus text always);
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`;
//! - [`auth`]: write keys and bearer tokens with roles;
//! - [`grpc`]: the gRPC server with health, reflection and the shared tower stack;
//! - [`error`]: the one mapping of errors to gRPC statuses and HTTP responses;
//! - [`pii`]: email addresses redacted from every log line;
//! - [`host`]: modules, listeners, the supervisor and the drain on SIGTERM/SIGINT;
//! - [`shutdown`]: the shutdown signal every part watches;
//! - [`tls`]: TLS on the HTTP and gRPC listeners;
//! - [`status`]: `cairn.admin.v1.Admin`, the process status for operators.

#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod clock;
pub mod config;
pub mod encoding;
pub mod error;
pub mod grpc;
pub mod host;
pub mod pii;
pub mod shutdown;
pub mod status;
pub mod telemetry;
pub mod tls;

pub use admin::Readiness;
pub use auth::{Credentials, Principal, Role};
pub use config::{ConfigError, Settings, Var};
pub use error::{Classify, ErrorKind};
pub use host::{BoxError, Listeners, Module, ModuleContext, ModuleTask};
pub use shutdown::Shutdown;
pub use telemetry::Metrics;

/// Every variable the runtime reads.
pub const VARS: &[Var] = &[
    config::CONFIG_FILE,
    telemetry::LOG,
    telemetry::LOG_FORMAT,
    auth::WRITE_KEYS,
    auth::ADMIN_TOKENS,
    host::HTTP_ADDR,
    host::GRPC_ADDR,
    host::ADMIN_ADDR,
    host::DATA_DIR,
    host::REQUEST_TIMEOUT,
    host::SHUTDOWN_TIMEOUT,
    tls::TLS_CERT,
    tls::TLS_KEY,
];
