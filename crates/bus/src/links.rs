//! Tokens of the tracked links in campaign emails, which lead back to the collector:
//! a click (`/v1/click`, a redirect that records `Email Link Clicked`), an open (the
//! `/v1/open` pixel, `Email Opened`) and, carried on to the landing page, a visit
//! (`cairn_t`, which the browser tag hands to `/v1/link` to tie its cookie to the
//! person).
//!
//! A token is sealed (ChaCha20-Poly1305, under a key derived from
//! `CAIRN_EMAIL_LINK_SECRET`) rather than only signed: it names the person (their user
//! id or address), and links travel — into browser histories, analytics and `Referer`
//! headers. Only the holder of the secret can read or make one, and each purpose is
//! bound in, so a click token does not pass for a visit token.

use base64::Engine as _;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Click,
    Open,
    Visit,
}

impl Purpose {
    fn name(self) -> &'static str {
        match self {
            Purpose::Click => "click",
            Purpose::Open => "open",
            Purpose::Visit => "visit",
        }
    }
}

/// Who an email went to, as the identity service knows them: a user id when the
/// profile has one, else one of its anonymous ids (every profile has one or the
/// other), and the address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous_id: Option<String>,
    pub email: String,
}

/// One email: its send (idempotency key), campaign and recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Email {
    pub send: String,
    pub campaign: String,
    pub person: Person,
}

/// A tracked link: the email it is in and where it leads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Click {
    pub email: Email,
    pub url: String,
}

/// Who followed a link, until when the landing page may say so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Visit {
    pub person: Person,
    pub expires_ms: i64,
}

fn key(secret: &str) -> LessSafeKey {
    let digest = Sha256::new()
        .chain_update(b"cairn email links v1:")
        .chain_update(secret.as_bytes())
        .finalize();
    let key = UnboundKey::new(&CHACHA20_POLY1305, &digest)
        .unwrap_or_else(|_| unreachable!("a SHA-256 digest is a ChaCha20 key"));
    LessSafeKey::new(key)
}

/// `value` sealed for `purpose` with `secret`, as URL-safe text.
pub fn seal<T: Serialize>(secret: &str, purpose: Purpose, value: &T) -> String {
    let mut sealed =
        serde_json::to_vec(value).unwrap_or_else(|_| unreachable!("link tokens are plain structs"));
    let nonce: [u8; NONCE_LEN] = rand::random();
    key(secret)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(purpose.name().as_bytes()),
            &mut sealed,
        )
        .unwrap_or_else(|_| unreachable!("tokens are far below ChaCha20's length limit"));
    let mut token = nonce.to_vec();
    token.extend_from_slice(&sealed);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token)
}

/// What `token` holds, when `secret` sealed it for `purpose` and it is whole.
pub fn open<T: DeserializeOwned>(secret: &str, purpose: Purpose, token: &str) -> Option<T> {
    let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim())
        .ok()?;
    if bytes.len() < NONCE_LEN {
        return None;
    }
    let mut sealed = bytes.split_off(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(&bytes).ok()?;
    let plain = key(secret)
        .open_in_place(nonce, Aad::from(purpose.name().as_bytes()), &mut sealed)
        .ok()?;
    serde_json::from_slice(plain).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn click() -> Click {
        Click {
            email: Email {
                send: "cart:p1:1:abandoned".into(),
                campaign: "cart".into(),
                person: Person {
                    user_id: Some("u-1".into()),
                    anonymous_id: None,
                    email: "ann@example.com".into(),
                },
            },
            url: "https://shop.example.com/cart?x=1&y=2".into(),
        }
    }

    #[test]
    fn only_the_secret_opens_a_token_and_only_for_its_purpose() {
        let token = seal("secret-0123456789", Purpose::Click, &click());
        assert!(!token.contains("ann"), "{token}");
        assert_eq!(
            open::<Click>("secret-0123456789", Purpose::Click, &token),
            Some(click())
        );
        assert_eq!(
            open::<Click>("another-secret-0123", Purpose::Click, &token),
            None
        );
        assert_eq!(
            open::<Click>("secret-0123456789", Purpose::Visit, &token),
            None
        );
        // A changed character anywhere spoils it.
        let mut tampered = token.clone().into_bytes();
        let middle = tampered.len() / 2;
        tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(
            open::<Click>("secret-0123456789", Purpose::Click, &tampered),
            None
        );
        for garbage in ["", "abc", "!!!!", &token[..10]] {
            assert_eq!(
                open::<Click>("secret-0123456789", Purpose::Click, garbage),
                None
            );
        }
        // Two seals of one value differ (a fresh nonce each).
        assert_ne!(token, seal("secret-0123456789", Purpose::Click, &click()));
    }
}
