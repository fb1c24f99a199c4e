//! The collector's errors.

use cairn_runtime::auth::AuthError;
use cairn_runtime::error::{Classify, ErrorKind};

use crate::event::Rejection;

#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("{0}")]
    Bus(#[from] cairn_bus::BusError),
    /// Not transparent: the configuration error stays visible in the source chain, where
    /// the binary looks for it to choose its exit code.
    #[error("{0}")]
    Config(#[from] cairn_runtime::ConfigError),
    #[error("cannot read the request body: {0}")]
    Body(String),
    /// A query parameter is missing or wrong; the message names it.
    #[error("{0}")]
    BadQuery(String),
    #[error(
        "the write key of source {source_name:?} is over its rate limit (CAIRN_INGEST_RATE_LIMIT); retry in {}s",
        retry_after_seconds(*.retry_after)
    )]
    RateLimited {
        source_name: String,
        retry_after: std::time::Duration,
    },
}

/// Whole seconds, rounded up, as `Retry-After` carries them.
fn retry_after_seconds(wait: std::time::Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

impl Classify for CollectorError {
    fn kind(&self) -> ErrorKind {
        match self {
            CollectorError::Rejected(_) | CollectorError::Body(_) | CollectorError::BadQuery(_) => {
                ErrorKind::InvalidArgument
            }
            CollectorError::Auth(err) => err.kind(),
            CollectorError::Bus(err) => err.kind(),
            CollectorError::Config(_) => ErrorKind::Internal,
            CollectorError::RateLimited { .. } => ErrorKind::ResourceExhausted,
        }
    }

    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            CollectorError::RateLimited { retry_after, .. } => Some(
                std::time::Duration::from_secs(retry_after_seconds(*retry_after)),
            ),
            _ => self.kind().retry_after(),
        }
    }
}

impl axum::response::IntoResponse for CollectorError {
    fn into_response(self) -> axum::response::Response {
        cairn_runtime::error::to_response(&self)
    }
}

impl From<CollectorError> for tonic::Status {
    fn from(err: CollectorError) -> Self {
        cairn_runtime::error::to_status(&err)
    }
}
