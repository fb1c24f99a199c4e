//! Signing in: the operator gives one of the admin tokens (`CAIRN_ADMIN_TOKENS`). The
//! session cookie (HttpOnly, SameSite=Strict, scoped to `/console`, Secure under TLS)
//! does not hold the token: it holds when the session ends, the SHA-256 of the token,
//! and an HMAC-SHA256 of both keyed with the token. Each request finds the configured
//! token with that digest, checks the HMAC and the end, and sends that token as the
//! bearer of every gRPC call it makes for the operator, so the services enforce the
//! token's role themselves (a read-only token cannot save). Any replica can check any
//! session (no state is kept), a token removed from the configuration ends its sessions
//! at once, and a session ends after 12 hours whatever the browser does.
//!
//! Requests that change something must also carry the header `x-cairn-console: 1`,
//! which a page on another site cannot send: with SameSite=Strict that stops
//! cross-site request forgery.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cairn_runtime::{Credentials, Role};
use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::error::ConsoleError;

pub const COOKIE: &str = "cairn_console";
/// The header state-changing requests carry.
pub const CSRF_HEADER: &str = "x-cairn-console";
/// How long a sign-in lasts.
const SESSION_SECONDS: i64 = 12 * 60 * 60;
/// What the session's HMAC covers besides its end and digest.
const SESSION_CONTEXT: &[u8] = b"cairn console session v1";

/// What a request needs to check who is calling.
#[derive(Clone)]
pub struct Sessions {
    pub credentials: Arc<Credentials>,
    /// Whether the console is served over TLS (cookies are then `Secure`).
    pub secure: bool,
}

impl Sessions {
    /// The `Set-Cookie` value signing in with `token`, at `now` (seconds since the epoch).
    pub fn cookie(&self, token: &str, now: i64) -> Result<HeaderValue, ConsoleError> {
        let value = format!(
            "{COOKIE}={}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECONDS}{}",
            session_value(token, now + SESSION_SECONDS),
            if self.secure { "; Secure" } else { "" }
        );
        HeaderValue::from_str(&value).map_err(|err| ConsoleError::Corrupt(err.to_string()))
    }

    /// The operator of the session `value` (a cookie's), at `now`.
    fn operator(&self, value: &str, now: i64) -> Result<Operator, ConsoleError> {
        let again = || ConsoleError::Unauthorized("the session is not valid; sign in again".into());
        let mut parts = value.split('.');
        let (Some(ends), Some(digest), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(again());
        };
        let ends: i64 = ends.parse().map_err(|_| again())?;
        let digest = URL_SAFE_NO_PAD.decode(digest).map_err(|_| again())?;
        let mac = URL_SAFE_NO_PAD.decode(mac).map_err(|_| again())?;
        let mut found = None;
        for (role, token) in self.credentials.tokens() {
            if bool::from(Sha256::digest(token.as_bytes()).as_slice().ct_eq(&digest)) {
                found = Some((role, token));
            }
        }
        let (role, token) = found.ok_or_else(|| {
            ConsoleError::Unauthorized(
                "the session's token is no longer valid; sign in again".into(),
            )
        })?;
        signer(token, ends, &digest)
            .verify_slice(&mac)
            .map_err(|_| again())?;
        if ends <= now {
            return Err(ConsoleError::Unauthorized(
                "the session has ended; sign in again".into(),
            ));
        }
        Ok(Operator {
            token: token.to_string(),
            role,
        })
    }

    /// The `Set-Cookie` value signing out.
    pub fn cleared(&self) -> HeaderValue {
        HeaderValue::from_static(
            "cairn_console=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
        )
    }
}

/// The HMAC of a session ending at `ends` for the token with `digest`, keyed with the
/// token itself.
fn signer(token: &str, ends: i64, digest: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256>>::new_from_slice(token.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(SESSION_CONTEXT);
    mac.update(&ends.to_be_bytes());
    mac.update(digest);
    mac
}

/// A session's cookie value: `ends.digest.mac`.
fn session_value(token: &str, ends: i64) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mac = signer(token, ends, &digest).finalize().into_bytes();
    format!(
        "{ends}.{}.{}",
        URL_SAFE_NO_PAD.encode(digest),
        URL_SAFE_NO_PAD.encode(mac)
    )
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

/// The session cookie's value in `headers`, if any.
fn session_in(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
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
        let session = session_in(&parts.headers)
            .ok_or_else(|| ConsoleError::Unauthorized("sign in first".into()))?;
        sessions.operator(session, cairn_runtime::clock::now_ms() / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions() -> Sessions {
        let mut credentials = Credentials::default();
        credentials.add_token(Role::Read, "tk_read_0123456789");
        credentials.add_token(Role::Admin, "tk;=/ é admin");
        Sessions {
            credentials: Arc::new(credentials),
            secure: true,
        }
    }

    /// The cookie's value, as the browser sends it back.
    fn sent(cookie: &HeaderValue) -> String {
        let text = cookie.to_str().unwrap();
        let pair = text.split(';').next().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("other=1; {pair}")).unwrap(),
        );
        session_in(&headers).unwrap().to_string()
    }

    #[test]
    fn a_session_names_its_operator_without_holding_the_token() {
        let sessions = sessions();
        let cookie = sessions.cookie("tk;=/ é admin", 1_000).unwrap();
        let text = cookie.to_str().unwrap();
        assert!(text.contains("HttpOnly") && text.contains("SameSite=Strict"));
        assert!(text.ends_with("; Secure"), "{text}");
        let value = sent(&cookie);
        assert!(
            !value.contains("admin") && !value.contains(&URL_SAFE_NO_PAD.encode("tk;=/ é admin"))
        );
        let operator = sessions.operator(&value, 1_000).unwrap();
        assert_eq!(
            (operator.role, operator.token.as_str()),
            (Role::Admin, "tk;=/ é admin")
        );
    }

    #[test]
    fn sessions_end_and_cannot_be_forged() {
        let sessions = sessions();
        let value = sent(&sessions.cookie("tk_read_0123456789", 1_000).unwrap());
        let ends = 1_000 + SESSION_SECONDS;
        assert!(sessions.operator(&value, ends - 1).is_ok());
        assert!(sessions.operator(&value, ends).is_err(), "ended");
        // A later end, or another token's digest, does not match the HMAC.
        let (_, rest) = value.split_once('.').unwrap();
        assert!(
            sessions
                .operator(&format!("{}.{rest}", ends + 3600), 1_000)
                .is_err()
        );
        let admin = sent(&sessions.cookie("tk;=/ é admin", 1_000).unwrap());
        let digest = admin.split('.').nth(1).unwrap();
        let mac = value.split('.').nth(2).unwrap();
        assert!(
            sessions
                .operator(&format!("{ends}.{digest}.{mac}"), 1_000)
                .is_err()
        );
        for junk in ["", "x", "1.2.3", "1.2.3.4", "%%.%%.%%"] {
            assert!(sessions.operator(junk, 1_000).is_err(), "{junk}");
        }
        // A token taken out of the configuration ends its sessions.
        let without = Sessions {
            credentials: Arc::new(Credentials::default()),
            secure: false,
        };
        assert!(without.operator(&value, 1_000).is_err());
    }
}
