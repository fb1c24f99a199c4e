//! One mapping from service errors to gRPC statuses and HTTP responses.
//!
//! Each crate keeps its own error enum and says, through [`Classify`], what kind of
//! failure each variant is; this module alone decides what the client sees for each
//! kind, so HTTP and gRPC always agree.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::StatusCode;

/// The kinds of failure a client can tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is wrong; the message names the field and the problem.
    InvalidArgument,
    /// No or unknown credentials.
    Unauthenticated,
    /// Known credentials without the needed role.
    PermissionDenied,
    NotFound,
    AlreadyExists,
    /// The request conflicts with the current state (e.g. a version check failed).
    FailedPrecondition,
    /// Too much: a full stream, a rate limit. Retry later.
    ResourceExhausted,
    /// A dependency (NATS, the store) cannot be reached. Retry later.
    Unavailable,
    /// A bug or an unexpected failure; details go to the log, not to the client.
    Internal,
}

impl ErrorKind {
    pub fn code(self) -> tonic::Code {
        match self {
            ErrorKind::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorKind::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorKind::PermissionDenied => tonic::Code::PermissionDenied,
            ErrorKind::NotFound => tonic::Code::NotFound,
            ErrorKind::AlreadyExists => tonic::Code::AlreadyExists,
            ErrorKind::FailedPrecondition => tonic::Code::FailedPrecondition,
            ErrorKind::ResourceExhausted => tonic::Code::ResourceExhausted,
            ErrorKind::Unavailable => tonic::Code::Unavailable,
            ErrorKind::Internal => tonic::Code::Internal,
        }
    }

    pub fn http_status(self) -> StatusCode {
        match self {
            ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
            ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::AlreadyExists | ErrorKind::FailedPrecondition => StatusCode::CONFLICT,
            ErrorKind::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The snake_case name used in HTTP error bodies.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::FailedPrecondition => "failed_precondition",
            ErrorKind::ResourceExhausted => "resource_exhausted",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }

    /// How long a client should wait before retrying, for the kinds worth retrying.
    pub fn retry_after(self) -> Option<Duration> {
        match self {
            ErrorKind::ResourceExhausted => Some(Duration::from_secs(5)),
            ErrorKind::Unavailable => Some(Duration::from_secs(2)),
            _ => None,
        }
    }
}

/// Implemented by every crate's error type.
pub trait Classify: std::error::Error {
    fn kind(&self) -> ErrorKind;

    /// How long the client should wait before retrying; by default what its kind says.
    fn retry_after(&self) -> Option<Duration> {
        self.kind().retry_after()
    }
}

impl Classify for crate::auth::AuthError {
    fn kind(&self) -> ErrorKind {
        match self {
            crate::auth::AuthError::Forbidden { .. }
            | crate::auth::AuthError::NotAnOperator
            | crate::auth::AuthError::NotASource => ErrorKind::PermissionDenied,
            _ => ErrorKind::Unauthenticated,
        }
    }
}

/// The message a client sees: the error itself, except for internal errors, which are
/// logged with their details and shown as a generic message.
fn client_message<E: Classify>(err: &E) -> String {
    if err.kind() == ErrorKind::Internal {
        tracing::error!(error = %err, "internal error");
        "internal error; see the server log".to_string()
    } else {
        err.to_string()
    }
}

/// The gRPC status for `err`.
pub fn to_status<E: Classify>(err: &E) -> tonic::Status {
    let kind = err.kind();
    let mut status = tonic::Status::new(kind.code(), client_message(err));
    if let Some(after) = err.retry_after()
        && let Ok(value) = after.as_secs().to_string().parse()
    {
        status.metadata_mut().insert("retry-after", value);
    }
    status
}

/// The HTTP response for `err`: the status for its kind, `Retry-After` where retrying
/// helps, and a JSON body `{"success": false, "code": ..., "message": ...}`.
pub fn to_response<E: Classify>(err: &E) -> Response {
    let kind = err.kind();
    let body = error_body(kind.name(), &client_message(err));
    let mut response = (
        kind.http_status(),
        [(http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    if let Some(after) = err.retry_after() {
        response.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from(after.as_secs()),
        );
    }
    response
}

fn error_body(code: &str, message: &str) -> String {
    let mut body = String::from("{\"success\":false,\"code\":");
    push_json_string(&mut body, code);
    body.push_str(",\"message\":");
    push_json_string(&mut body, message);
    body.push('}');
    body
}

fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("batch[2].event: required for track")]
    struct Missing;

    impl Classify for Missing {
        fn kind(&self) -> ErrorKind {
            ErrorKind::InvalidArgument
        }
    }

    #[test]
    fn one_message_for_http_and_grpc() {
        let status = to_status(&Missing);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "batch[2].event: required for track");
        assert_eq!(
            error_body("invalid_argument", "a \"b\"\n"),
            r#"{"success":false,"code":"invalid_argument","message":"a \"b\"\n"}"#
        );
    }
}
