//! The SUPPRESSIONS key-value bucket: addresses no campaign email may go to, under
//! `e.<sha-256 of the lower-cased address>` (the address itself is not kept), or no
//! email of one list (a template's `list`: `promotions`, `newsletter`) under
//! `l.<list>.<sha-256>`, with the reason as the value (`unsubscribed`, `bounced`,
//! `complained`, ...). The collector's unsubscribe endpoint, the dispatcher (on a hard
//! bounce) and the admin API (`cairn suppression add`, e.g. for complaints) write it;
//! the dispatcher reads it before each send. Unsubscribe links carry the address (and
//! the list) signed with `CAIRN_EMAIL_LINK_SECRET`, so only links Cairn made can
//! suppress an address.

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
    bus.key_value(
        BUCKET,
        "Addresses campaign emails must not go to",
        std::time::Duration::ZERO,
    )
    .await
}

/// The key of `email`'s suppression from every campaign email (`list`: `None`) or
/// from one list's.
pub fn key(email: &str, list: Option<&str>) -> String {
    let digest =
        cairn_runtime::encoding::hex(&Sha256::digest(email.trim().to_lowercase().as_bytes()));
    match list {
        None => format!("e.{digest}"),
        Some(list) => format!("l.{list}.{digest}"),
    }
}

/// Whether `name` can name a list: 1 to 64 lower-case letters, digits, `_` and `-`.
pub fn list_name_ok(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn unavailable(err: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("{BUCKET}: {err}"))
}

/// Why `email` must not get an email of `list` (or of no list), if it must not: its
/// suppression from everything first, then from the list.
pub async fn find(
    bucket: &kv::Store,
    email: &str,
    list: Option<&str>,
) -> Result<Option<String>, BusError> {
    let mut scopes = vec![None];
    if list.is_some() {
        scopes.push(list);
    }
    for scope in scopes {
        if let Some(reason) = bucket.get(key(email, scope)).await.map_err(unavailable)? {
            return Ok(Some(String::from_utf8_lossy(&reason).into_owned()));
        }
    }
    Ok(None)
}

/// Suppresses `email` from `list` (or from everything) for `reason`.
pub async fn add(
    bucket: &kv::Store,
    email: &str,
    list: Option<&str>,
    reason: &str,
) -> Result<(), BusError> {
    bucket
        .put(key(email, list), bytes::Bytes::from(reason.to_string()))
        .await
        .map(|_| ())
        .map_err(unavailable)
}

/// Lifts `email`'s suppression from `list` (or from everything); whether there was one.
pub async fn remove(bucket: &kv::Store, email: &str, list: Option<&str>) -> Result<bool, BusError> {
    let key = key(email, list);
    let existed = bucket.get(&key).await.map_err(unavailable)?.is_some();
    if existed {
        bucket.delete(&key).await.map_err(unavailable)?;
    }
    Ok(existed)
}

fn signature(secret: &str, email: &str, list: Option<&str>) -> String {
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(b"unsubscribe:");
    mac.update(email.trim().to_lowercase().as_bytes());
    if let Some(list) = list {
        mac.update(b"\nlist:");
        mac.update(list.as_bytes());
    }
    cairn_runtime::encoding::hex(&mac.finalize().into_bytes()[..16])
}

/// The token of an unsubscribe link for `email` (from `list`, or from everything): the
/// address, the list, then their signature.
pub fn unsubscribe_token(secret: &str, email: &str, list: Option<&str>) -> String {
    let encode = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
    let signature = signature(secret, email, list);
    match list {
        None => format!("{}.{signature}", encode(email.trim())),
        Some(list) => format!("{}.{}.{signature}", encode(email.trim()), encode(list)),
    }
}

/// The address (and list) an unsubscribe token was made for, when `secret` made it.
pub fn verify_unsubscribe(secret: &str, token: &str) -> Option<(String, Option<String>)> {
    let decode = |text: &str| {
        String::from_utf8(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(text)
                .ok()?,
        )
        .ok()
    };
    let parts: Vec<&str> = token.split('.').collect();
    let (email, list, given) = match parts.as_slice() {
        [address, given] => (decode(address)?, None, *given),
        [address, list, given] => (decode(address)?, Some(decode(list)?), *given),
        _ => return None,
    };
    let expected = signature(secret, &email, list.as_deref());
    bool::from(expected.as_bytes().ct_eq(given.as_bytes())).then_some((email, list))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tokens_made_with_the_secret_verify() {
        let token = unsubscribe_token("secret-0123456789", "Ann@Example.com", None);
        assert_eq!(
            verify_unsubscribe("secret-0123456789", &token),
            Some(("Ann@Example.com".to_string(), None))
        );
        // From one list: the list is signed too.
        let from_list =
            unsubscribe_token("secret-0123456789", "ann@example.com", Some("promotions"));
        assert_eq!(
            verify_unsubscribe("secret-0123456789", &from_list),
            Some((
                "ann@example.com".to_string(),
                Some("promotions".to_string())
            ))
        );
        let (address, rest) = from_list.split_once('.').unwrap();
        let (_, signature_of_list) = rest.split_once('.').unwrap();
        let other_list = format!(
            "{address}.{}.{signature_of_list}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("newsletter")
        );
        assert_eq!(verify_unsubscribe("secret-0123456789", &other_list), None);
        assert_ne!(
            key("ann@example.com", None),
            key("ann@example.com", Some("promotions"))
        );
        assert!(list_name_ok("promotions") && list_name_ok("b2b-news_2"));
        assert!(!list_name_ok("") && !list_name_ok("Promo") && !list_name_ok("a.b"));
        assert_eq!(verify_unsubscribe("another-secret-0123", &token), None);
        let (_, signature) = token.split_once('.').unwrap();
        let forged = format!(
            "{}.{signature}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("bob@example.com")
        );
        assert_eq!(verify_unsubscribe("secret-0123456789", &forged), None);
        assert_eq!(verify_unsubscribe("secret-0123456789", "garbage"), None);
        assert_eq!(key("Ann@Example.com ", None), key("ann@example.com", None));
    }
}
