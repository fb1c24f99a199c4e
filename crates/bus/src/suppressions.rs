//! The SUPPRESSIONS key-value bucket: addresses no campaign email may go to, under
//! `e.<sha-256 of the lower-cased address>` (the address itself is not kept) with the
//! reason as the value (`unsubscribed`, `bounced`). The collector's unsubscribe
//! endpoint and the dispatcher (on a hard bounce) write it; the dispatcher reads it
//! before each send. Unsubscribe links carry the address signed with
//! `CAIRN_EMAIL_LINK_SECRET`, so only links Cairn made can suppress an address.

use async_nats::jetstream::kv;
use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use cairn_runtime::config::{ConfigError, Settings, Var};

use crate::{Bus, BusError};

pub const BUCKET: &str = "SUPPRESSIONS";

pub const LINK_SECRET: Var = Var {
    name: "CAIRN_EMAIL_LINK_SECRET",
    default: "",
    doc: "Signs the unsubscribe links in emails and seals their tracked links (at least 16 characters; the collector checks them). Unset: emails carry neither (`cairn up` makes a development one).",
};

/// The variables of the unsubscribe links, read by the collector and the dispatcher.
pub const VARS: &[Var] = &[LINK_SECRET];

/// Secrets shorter than this are refused.
const MIN_SECRET: usize = 16;

/// The link secret, if one is set; one too short is an error.
pub fn link_secret(settings: &Settings) -> Result<Option<String>, ConfigError> {
    match settings.optional(&LINK_SECRET) {
        Some(secret) if secret.len() < MIN_SECRET => Err(settings.invalid_secret(
            &LINK_SECRET,
            format!("must be at least {MIN_SECRET} characters"),
        )),
        secret => Ok(secret),
    }
}

/// The bucket, created when missing.
pub async fn open(bus: &Bus) -> Result<kv::Store, BusError> {
    bus.key_value(BUCKET, "Addresses campaign emails must not go to")
        .await
}

/// The key of `email`'s suppression.
pub fn key(email: &str) -> String {
    let digest = Sha256::digest(email.trim().to_lowercase().as_bytes());
    format!("e.{}", cairn_runtime::encoding::hex(&digest))
}

fn signature(secret: &str, email: &str) -> String {
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(b"unsubscribe:");
    mac.update(email.trim().to_lowercase().as_bytes());
    cairn_runtime::encoding::hex(&mac.finalize().into_bytes()[..16])
}

/// The token of an unsubscribe link for `email`: the address, then its signature.
pub fn unsubscribe_token(secret: &str, email: &str) -> String {
    let address = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(email.trim());
    format!("{address}.{}", signature(secret, email))
}

/// The address an unsubscribe token was made for, when `secret` made it.
pub fn verify_unsubscribe(secret: &str, token: &str) -> Option<String> {
    let (address, given) = token.split_once('.')?;
    let email = String::from_utf8(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(address)
            .ok()?,
    )
    .ok()?;
    let expected = signature(secret, &email);
    bool::from(expected.as_bytes().ct_eq(given.as_bytes())).then_some(email)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tokens_made_with_the_secret_verify() {
        let token = unsubscribe_token("secret-0123456789", "Ann@Example.com");
        assert_eq!(
            verify_unsubscribe("secret-0123456789", &token).as_deref(),
            Some("Ann@Example.com")
        );
        assert_eq!(verify_unsubscribe("another-secret-0123", &token), None);
        let (_, signature) = token.split_once('.').unwrap();
        let forged = format!(
            "{}.{signature}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("bob@example.com")
        );
        assert_eq!(verify_unsubscribe("secret-0123456789", &forged), None);
        assert_eq!(verify_unsubscribe("secret-0123456789", "garbage"), None);
        assert_eq!(key("Ann@Example.com "), key("ann@example.com"));
    }
}
