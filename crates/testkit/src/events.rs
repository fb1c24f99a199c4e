//! Segment-spec events for tests.

use serde_json::{Value, json};

/// A `track` call with a fixed messageId.
pub fn track(message_id: &str, anonymous_id: &str, event: &str) -> Value {
    json!({
        "type": "track",
        "messageId": message_id,
        "anonymousId": anonymous_id,
        "event": event,
        "properties": {"section": "shoes", "cart_items": 2},
        "context": {"ip": "81.2.69.142", "userAgent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0"},
        "originalTimestamp": "2026-11-22T10:00:00.000Z",
        "sentAt": "2026-11-22T10:00:01.000Z"
    })
}

/// An `identify` call.
pub fn identify(message_id: &str, user_id: &str, email: &str) -> Value {
    json!({
        "type": "identify",
        "messageId": message_id,
        "userId": user_id,
        "traits": {"email": email, "name": "Tom"},
        "timestamp": "2026-11-22T10:00:00Z"
    })
}

/// A `page` call.
pub fn page(message_id: &str, anonymous_id: &str, url: &str) -> Value {
    json!({
        "type": "page",
        "messageId": message_id,
        "anonymousId": anonymous_id,
        "name": "Landing",
        "properties": {"url": url, "title": "Welcome"},
        "context": {"page": {"url": url, "referrer": "https://www.google.com/"}}
    })
}

/// A `screen` call.
pub fn screen(message_id: &str, user_id: &str) -> Value {
    json!({"type": "screen", "messageId": message_id, "userId": user_id, "name": "Home"})
}

/// A `group` call.
pub fn group(message_id: &str, user_id: &str, group_id: &str) -> Value {
    json!({"type": "group", "messageId": message_id, "userId": user_id, "groupId": group_id, "traits": {"plan": "pro"}})
}

/// An `alias` call.
pub fn alias(message_id: &str, previous_id: &str, user_id: &str) -> Value {
    json!({"type": "alias", "messageId": message_id, "previousId": previous_id, "userId": user_id})
}
