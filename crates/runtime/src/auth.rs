//! Who is calling: write keys for ingest (HTTP Basic username, as in Segment) and bearer
//! tokens with roles for the admin and profile APIs.
//!
//! Secrets are compared in constant time and never printed: errors about them name the
//! variable and the entry's position, not its value.

use std::fmt;

use base64::Engine as _;
use subtle::ConstantTimeEq as _;

use crate::config::{ConfigError, Settings, Var};

pub const WRITE_KEYS: Var = Var {
    name: "CAIRN_WRITE_KEYS",
    default: "",
    doc: "Ingest write keys, comma-separated `source:key`. Clients send the key as the HTTP Basic username. `cairn up` creates a development key when none is set.",
};

pub const ADMIN_TOKENS: Var = Var {
    name: "CAIRN_ADMIN_TOKENS",
    default: "",
    doc: "Bearer tokens for the admin and profile APIs, comma-separated `role:token` with role read, write or admin. `cairn up` writes a development admin token into the data directory when none is set.",
};

/// What a bearer token may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Read,
    Write,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?} (use read, write or admin)")),
        }
    }
}

/// The authenticated caller of a request, set in its extensions by the auth layer.
#[derive(Clone, PartialEq, Eq)]
pub enum Principal {
    /// A client holding a source's write key.
    Source(String),
    /// An operator holding a bearer token.
    Operator(Role),
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Source(source) => write!(f, "Source({source})"),
            Principal::Operator(role) => write!(f, "Operator({role})"),
        }
    }
}

/// Why credentials were refused. The messages never contain the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing credentials: send the write key as the HTTP Basic username")]
    MissingWriteKey,
    #[error("unknown write key")]
    UnknownWriteKey,
    #[error("missing credentials: send `authorization: Bearer <token>`")]
    MissingToken,
    #[error("unknown bearer token")]
    UnknownToken,
    #[error("malformed authorization header: {0}")]
    Malformed(&'static str),
    #[error("this call needs the {needed} role; the token has {held}")]
    Forbidden { needed: Role, held: Role },
    #[error("this call needs a bearer token, not a write key")]
    NotAnOperator,
    #[error("this call needs a write key, not a bearer token")]
    NotASource,
}

/// Credentials as presented in an `authorization` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented<'a> {
    /// `Basic base64(user:password)`: the user is the write key (Segment's convention).
    WriteKey(&'a str),
    Bearer(&'a str),
}

/// Secrets the process accepts.
#[derive(Clone, Default)]
pub struct Credentials {
    write_keys: Vec<(String, Vec<u8>)>,
    tokens: Vec<(Role, Vec<u8>)>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("sources", &self.sources())
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl Credentials {
    /// Reads `CAIRN_WRITE_KEYS` and `CAIRN_ADMIN_TOKENS`.
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let mut credentials = Credentials::default();
        for (index, entry) in entries(&settings.string(&WRITE_KEYS)) {
            let (source, key) = split_pair(entry).ok_or_else(|| {
                settings.invalid_secret(&WRITE_KEYS, format!("entry {index} is not `source:key`"))
            })?;
            credentials.add_write_key(source, key);
        }
        for (index, entry) in entries(&settings.string(&ADMIN_TOKENS)) {
            let (role, token) = split_pair(entry).ok_or_else(|| {
                settings.invalid_secret(&ADMIN_TOKENS, format!("entry {index} is not `role:token`"))
            })?;
            let role: Role = role.parse().map_err(|err: String| {
                settings.invalid_secret(&ADMIN_TOKENS, format!("entry {index}: {err}"))
            })?;
            credentials.add_token(role, token);
        }
        Ok(credentials)
    }

    pub fn add_write_key(&mut self, source: &str, key: &str) {
        self.write_keys
            .push((source.to_string(), key.as_bytes().to_vec()));
    }

    pub fn add_token(&mut self, role: Role, token: &str) {
        self.tokens.push((role, token.as_bytes().to_vec()));
    }

    pub fn has_write_keys(&self) -> bool {
        !self.write_keys.is_empty()
    }

    /// The first configured write key (for command-line tools acting as a client).
    pub fn first_write_key(&self) -> Option<String> {
        self.write_keys
            .first()
            .map(|(_, key)| String::from_utf8_lossy(key).into_owned())
    }

    /// The configured source names.
    pub fn sources(&self) -> Vec<&str> {
        self.write_keys
            .iter()
            .map(|(source, _)| source.as_str())
            .collect()
    }

    /// The source owning `key`. Every configured key is compared, in constant time.
    pub fn source_for_write_key(&self, key: &str) -> Option<&str> {
        let mut found = None;
        for (source, expected) in &self.write_keys {
            if bool::from(expected.as_slice().ct_eq(key.as_bytes())) {
                found = Some(source.as_str());
            }
        }
        found
    }

    /// Every configured bearer token with its role, for a process that acts on behalf of
    /// signed-in operators (the console).
    pub fn tokens(&self) -> impl Iterator<Item = (Role, &str)> {
        self.tokens
            .iter()
            .filter_map(|(role, token)| Some((*role, std::str::from_utf8(token).ok()?)))
    }

    /// The role of `token`. Every configured token is compared, in constant time.
    pub fn role_for_token(&self, token: &str) -> Option<Role> {
        let mut found = None;
        for (role, expected) in &self.tokens {
            if bool::from(expected.as_slice().ct_eq(token.as_bytes())) {
                found = Some(*role);
            }
        }
        found
    }

    /// Resolves presented credentials to a principal.
    pub fn authenticate(&self, presented: Presented<'_>) -> Result<Principal, AuthError> {
        match presented {
            Presented::WriteKey(key) => self
                .source_for_write_key(key)
                .map(|source| Principal::Source(source.to_string()))
                .ok_or(AuthError::UnknownWriteKey),
            Presented::Bearer(token) => self
                .role_for_token(token)
                .map(Principal::Operator)
                .ok_or(AuthError::UnknownToken),
        }
    }
}

/// Parses an `authorization` header value. The decoded Basic credentials are returned
/// through `scratch`, which must outlive the result.
pub fn parse_authorization<'a>(
    header: &'a str,
    scratch: &'a mut String,
) -> Result<Presented<'a>, AuthError> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').ok_or(AuthError::Malformed(
        "expected `Basic <base64>` or `Bearer <token>`",
    ))?;
    if scheme.eq_ignore_ascii_case("bearer") {
        let token = rest.trim();
        if token.is_empty() {
            return Err(AuthError::Malformed("empty bearer token"));
        }
        return Ok(Presented::Bearer(token));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .map_err(|_| AuthError::Malformed("Basic credentials are not base64"))?;
        *scratch = String::from_utf8(decoded)
            .map_err(|_| AuthError::Malformed("Basic credentials are not UTF-8"))?;
        let user = scratch.split(':').next().unwrap_or_default();
        return Ok(Presented::WriteKey(user));
    }
    Err(AuthError::Malformed("unknown scheme; use Basic or Bearer"))
}

/// Checks that `principal` is an operator holding at least `needed`.
pub fn require_role(principal: Option<&Principal>, needed: Role) -> Result<Role, AuthError> {
    match principal {
        Some(Principal::Operator(held)) if *held >= needed => Ok(*held),
        Some(Principal::Operator(held)) => Err(AuthError::Forbidden {
            needed,
            held: *held,
        }),
        Some(Principal::Source(_)) => Err(AuthError::NotAnOperator),
        None => Err(AuthError::MissingToken),
    }
}

/// Checks that `principal` is a source (a write key holder) and returns its name.
pub fn require_source(principal: Option<&Principal>) -> Result<&str, AuthError> {
    match principal {
        Some(Principal::Source(source)) => Ok(source),
        Some(Principal::Operator(_)) => Err(AuthError::NotASource),
        None => Err(AuthError::MissingWriteKey),
    }
}

fn entries(list: &str) -> impl Iterator<Item = (usize, &str)> {
    list.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .enumerate()
        .map(|(index, entry)| (index + 1, entry))
}

fn split_pair(entry: &str) -> Option<(&str, &str)> {
    let (name, secret) = entry.split_once(':')?;
    let (name, secret) = (name.trim(), secret.trim());
    (!name.is_empty() && !secret.is_empty()).then_some((name, secret))
}

/// Authenticates the `authorization` header of a request: `Ok(None)` when there is none
/// (each call then decides whether it needs a principal), an error when there is one
/// that is malformed or unknown.
pub fn authenticate_headers(
    headers: &http::HeaderMap,
    credentials: &Credentials,
) -> Result<Option<Principal>, AuthError> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| AuthError::Malformed("header is not ASCII"))?;
    let mut scratch = String::new();
    let presented = parse_authorization(value, &mut scratch)?;
    credentials.authenticate(presented).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials() -> Credentials {
        let settings = Settings::from_pairs(
            &[WRITE_KEYS, ADMIN_TOKENS],
            [
                ("CAIRN_WRITE_KEYS", "web:wk_web, ios:wk_ios"),
                ("CAIRN_ADMIN_TOKENS", "read:t_read,admin:t_admin"),
            ],
        );
        Credentials::from_settings(&settings).unwrap()
    }

    #[test]
    fn write_keys_map_to_sources() {
        let credentials = credentials();
        assert_eq!(credentials.source_for_write_key("wk_ios"), Some("ios"));
        assert_eq!(credentials.source_for_write_key("wk_io"), None);
        assert_eq!(credentials.sources(), vec!["web", "ios"]);
    }

    #[test]
    fn basic_username_is_the_write_key() {
        let mut scratch = String::new();
        let header = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("wk_web:")
        );
        let presented = parse_authorization(&header, &mut scratch).unwrap();
        assert_eq!(presented, Presented::WriteKey("wk_web"));
        assert_eq!(
            credentials().authenticate(presented),
            Ok(Principal::Source("web".into()))
        );
    }

    #[test]
    fn roles_include_lower_roles() {
        let admin = Principal::Operator(Role::Admin);
        let read = Principal::Operator(Role::Read);
        assert_eq!(require_role(Some(&admin), Role::Write), Ok(Role::Admin));
        assert_eq!(
            require_role(Some(&read), Role::Write),
            Err(AuthError::Forbidden {
                needed: Role::Write,
                held: Role::Read
            })
        );
        assert_eq!(require_role(None, Role::Read), Err(AuthError::MissingToken));
    }

    #[test]
    fn bad_entries_are_named_without_the_secret() {
        let settings = Settings::from_pairs(
            &[WRITE_KEYS, ADMIN_TOKENS],
            [("CAIRN_ADMIN_TOKENS", "root:supersecret")],
        );
        let err = Credentials::from_settings(&settings)
            .unwrap_err()
            .to_string();
        assert!(err.contains("entry 1: unknown role \"root\""), "{err}");
        assert!(!err.contains("supersecret"), "{err}");
        let settings =
            Settings::from_pairs(&[WRITE_KEYS, ADMIN_TOKENS], [("CAIRN_WRITE_KEYS", "nokey")]);
        let err = Credentials::from_settings(&settings)
            .unwrap_err()
            .to_string();
        assert!(err.contains("entry 1 is not `source:key`"), "{err}");
    }
}
