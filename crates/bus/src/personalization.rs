//! The PERSONALIZATION key-value bucket: what the personalization API answers for each
//! profile (`cairn.personalize.v1.Answer` under `p.<profile id>`, kept by the
//! segmenter), and how an anonymous or user id leads to it (`i.<type>.<hash>` holding
//! the profile id). The collector reads it on each request; nothing is evaluated there.

use async_nats::jetstream::kv;
use sha2::{Digest as _, Sha256};

use crate::{Bus, BusError, subjects};

pub const BUCKET: &str = "PERSONALIZATION";

/// The identifier types a visitor is looked up by.
pub const LOOKUP_TYPES: [&str; 2] = ["user_id", "anonymous_id"];

/// The bucket, created when missing.
pub async fn open(bus: &Bus) -> Result<kv::Store, BusError> {
    bus.key_value(
        BUCKET,
        "What the personalization API answers, per profile",
        std::time::Duration::ZERO,
    )
    .await
}

/// The key of a profile's answer; `None` for an id that cannot be part of a key.
pub fn profile_key(profile_id: &str) -> Option<String> {
    subjects::is_token(profile_id).then(|| format!("p.{profile_id}"))
}

/// The key leading from an identifier to its profile: the value hashed (any text, of
/// any length, makes a valid key of one length), under its type; `None` for a type
/// that is not looked up.
pub fn identifier_key(kind: &str, value: &str) -> Option<String> {
    if !LOOKUP_TYPES.contains(&kind) {
        return None;
    }
    let digest = Sha256::digest(value.as_bytes());
    Some(format!(
        "i.{kind}.{}",
        cairn_runtime::encoding::hex(&digest[..16])
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifier_keys_are_valid_whatever_the_value() {
        let key = identifier_key("anonymous_id", "a visitor / with * odd > text").unwrap();
        assert!(key.starts_with("i.anonymous_id."), "{key}");
        assert_eq!(key.len(), "i.anonymous_id.".len() + 32);
        assert!(
            key.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
        );
        assert_ne!(
            Some(key),
            identifier_key("user_id", "a visitor / with * odd > text")
        );
        assert_eq!(identifier_key("email", "tom@example.com"), None);
    }

    #[test]
    fn profile_keys_need_a_token() {
        assert_eq!(profile_key("p-1_a").as_deref(), Some("p.p-1_a"));
        assert_eq!(profile_key("a.b"), None);
        assert_eq!(profile_key(""), None);
    }
}
