//! The console's errors: at start (configuration, NATS) and per request, where they
//! become a JSON `{"error": ...}` with the HTTP status that fits.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("{0}")]
    Config(#[from] cairn_runtime::ConfigError),
    #[error("{0}")]
    Bus(#[from] cairn_bus::BusError),
    /// No valid session: sign in first.
    #[error("{0}")]
    Unauthorized(String),
    /// A state-changing request without the console's header (a forged cross-site
    /// request, or a client that is not the console).
    #[error("{0}")]
    Forbidden(String),
    /// The request itself is wrong; the message names the field.
    #[error("{0}")]
    BadRequest(String),
    /// A service refused or failed the call.
    #[error("{}", .0.message())]
    Service(#[from] tonic::Status),
    /// A service answered with something the console cannot read.
    #[error("unexpected answer from a service: {0}")]
    Corrupt(String),
}

impl ConsoleError {
    fn status(&self) -> StatusCode {
        match self {
            ConsoleError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ConsoleError::Forbidden(_) => StatusCode::FORBIDDEN,
            ConsoleError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ConsoleError::Service(status) => match status.code() {
                tonic::Code::InvalidArgument | tonic::Code::OutOfRange => StatusCode::BAD_REQUEST,
                tonic::Code::NotFound => StatusCode::NOT_FOUND,
                tonic::Code::AlreadyExists
                | tonic::Code::FailedPrecondition
                | tonic::Code::Aborted => StatusCode::CONFLICT,
                tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
                tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
                tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                _ => StatusCode::BAD_GATEWAY,
            },
            ConsoleError::Config(_) | ConsoleError::Bus(_) | ConsoleError::Corrupt(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() || status == StatusCode::BAD_GATEWAY {
            tracing::warn!(error = %self, "console request failed");
        }
        let message = match &self {
            ConsoleError::Service(status) if status.code() == tonic::Code::Unavailable => {
                format!("the service is unavailable: {}", status.message())
            }
            other => other.to_string(),
        };
        (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
    }
}
