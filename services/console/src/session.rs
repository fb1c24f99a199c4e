//! Signing in: the operator gives one of the admin tokens (`CAIRN_ADMIN_TOKENS`); the
//! console keeps it in an HttpOnly, SameSite=Strict cookie scoped to `/console` and
//! sends it as the bearer token of every gRPC call it makes for that operator, so the
//! services enforce the token's role themselves (a read-only token cannot save).
//!
//! Each request checks the token again (a token removed from the configuration stops
//! working at once). Requests that change something must also carry the header
//! `x-cairn-console: 1`, which a page on another site cannot send: with SameSite=Strict
//! that stops cross-site request forgery.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cairn_runtime::{Credentials, Role};

use crate::error::ConsoleError;

pub const COOKIE: &str = "cairn_console";
/// The header state-changing requests carry.
pub const CSRF_HEADER: &str = "x-cairn-console";
/// How long a sign-in lasts.
const SESSION_SECONDS: u32 = 12 * 60 * 60;

/// What a request needs to check who is calling.
#[derive(Clone)]
pub struct Sessions {
    pub credentials: Arc<Credentials>,
    /// Whether the console is served over TLS (cookies are then `Secure`).
    pub secure: bool,
}

impl Sessions {
    /// The `Set-Cookie` value signing in with `token`.
    pub fn cookie(&self, token: &str) -> Result<HeaderValue, ConsoleError> {
        let value = format!(
            "{COOKIE}={}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECONDS}{}",
            URL_SAFE_NO_PAD.encode(token),
            if self.secure { "; Secure" } else { "" }
        );
        HeaderValue::from_str(&value).map_err(|err| ConsoleError::Corrupt(err.to_string()))
    }

    /// The `Set-Cookie` value signing out.
    pub fn cleared(&self) -> HeaderValue {
        HeaderValue::from_static(
            "cairn_console=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
        )
    }
}

/// A signed-in operator: the token to call the services with, and its role.
#[derive(Clone)]
pub struct Operator {
    pub token: String,
    pub role: Role,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator")
            .field("role", &self.role)
            .finish()
    }
}

impl Operator {
    /// `message` as a gRPC request carrying the operator's token.
    pub fn request<T>(&self, message: T) -> Result<tonic::Request<T>, ConsoleError> {
        let mut request = tonic::Request::new(message);
        let value = format!("Bearer {}", self.token)
            .parse()
            .map_err(|_| ConsoleError::Unauthorized("the token cannot be sent".into()))?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

/// Fails unless the request carries `x-cairn-console: 1`, as the console's own requests
/// that change something do.
pub fn require_console_header(headers: &HeaderMap) -> Result<(), ConsoleError> {
    if headers.get(CSRF_HEADER).map(HeaderValue::as_bytes) == Some(b"1") {
        Ok(())
    } else {
        Err(ConsoleError::Forbidden(format!(
            "requests that change something need the header {CSRF_HEADER}: 1"
        )))
    }
}

/// The token in the session cookie of `headers`, if any.
fn token_in(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .and_then(|(_, value)| URL_SAFE_NO_PAD.decode(value).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
}

impl<S> FromRequestParts<S> for Operator
where
    S: Send + Sync,
    Sessions: axum::extract::FromRef<S>,
{
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let sessions = <Sessions as axum::extract::FromRef<S>>::from_ref(state);
        if parts.method != Method::GET {
            require_console_header(&parts.headers)?;
        }
        let token = token_in(&parts.headers)
            .ok_or_else(|| ConsoleError::Unauthorized("sign in first".into()))?;
        let role = sessions.credentials.role_for_token(&token).ok_or_else(|| {
            ConsoleError::Unauthorized(
                "the session's token is no longer valid; sign in again".into(),
            )
        })?;
        Ok(Operator { token, role })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_carries_the_token_and_reads_back() {
        let sessions = Sessions {
            credentials: Arc::new(Credentials::default()),
            secure: true,
        };
        let cookie = sessions.cookie("tk;=/ é").unwrap();
        let text = cookie.to_str().unwrap();
        assert!(text.contains("HttpOnly") && text.contains("SameSite=Strict"));
        assert!(text.ends_with("; Secure"), "{text}");
        let pair = text.split(';').next().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("other=1; {pair}")).unwrap(),
        );
        assert_eq!(token_in(&headers).as_deref(), Some("tk;=/ é"));
        headers.insert(header::COOKIE, HeaderValue::from_static("cairn_console=%%"));
        assert_eq!(token_in(&headers), None);
    }
}
