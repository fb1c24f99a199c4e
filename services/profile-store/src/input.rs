//! What the fold reads from an identified event.

use std::collections::BTreeMap;

use cairn_proto::event::v1::{EventType, IdentifiedEvent};
use serde_json::Value;

use crate::profile::{EventInput, Identifier};

fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(text) if !text.trim().is_empty() => Some(text.trim().to_string()),
        _ => None,
    }
}

fn parse_time(value: Option<&Value>) -> Option<i64> {
    let text = value?.as_str()?;
    chrono::DateTime::parse_from_rfc3339(text)
        .or_else(|_| chrono::DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .ok()
        .map(|at| at.timestamp_millis())
}

/// The host of a URL, without `www.`.
pub fn domain_of(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let host = rest.split(['/', '?', '#']).next()?.rsplit('@').next()?;
    let host = host.split(':').next()?.trim().to_ascii_lowercase();
    let host = host.strip_prefix("www.").unwrap_or(&host).to_string();
    (!host.is_empty() && host.contains('.')).then_some(host)
}

/// The event time, as Segment defines it: `timestamp`; else `originalTimestamp` moved by
/// the client's clock skew (`receivedAt - sentAt`); else when it was received.
fn event_time(event: &Value, received_ms: i64, batch_sent_at: &str) -> i64 {
    if let Some(at) = parse_time(event.get("timestamp")) {
        return at;
    }
    let sent = parse_time(event.get("sentAt"))
        .or_else(|| parse_time(Some(&Value::String(batch_sent_at.to_string()))));
    match (parse_time(event.get("originalTimestamp")), sent) {
        (Some(original), Some(sent)) => original + (received_ms - sent),
        (Some(original), None) => original,
        _ => received_ms,
    }
}

/// Reads an identified event. Errors say what is unreadable.
pub fn event_input(identified: &IdentifiedEvent) -> Result<EventInput, String> {
    let envelope = identified.envelope.as_ref().ok_or("no envelope")?;
    let event: Value = serde_json::from_slice(&envelope.raw)
        .map_err(|err| format!("the event is not JSON: {err}"))?;
    let received_ms = envelope
        .received_at
        .as_ref()
        .map_or(0, cairn_runtime::clock::timestamp_ms);
    let call = match envelope.r#type() {
        EventType::Track => "track",
        EventType::Identify => "identify",
        EventType::Page => "page",
        EventType::Screen => "screen",
        EventType::Group => "group",
        EventType::Alias => "alias",
        EventType::Unspecified => "track",
    };
    let context = event.get("context");
    let at_path = |path: &[&str]| path.iter().try_fold(&event, |value, key| value.get(key));
    let name = match call {
        "track" => text(event.get("event")).unwrap_or_else(|| "track".to_string()),
        other => other.to_string(),
    };
    let url = text(at_path(&["context", "page", "url"]))
        .or_else(|| text(at_path(&["properties", "url"])));
    let referrer = text(at_path(&["context", "page", "referrer"]))
        .or_else(|| text(at_path(&["properties", "referrer"])));
    let traits_value = if call == "identify" {
        event.get("traits")
    } else {
        context.and_then(|context| context.get("traits"))
    };
    let traits: BTreeMap<String, Value> = traits_value
        .and_then(Value::as_object)
        .map(|traits| {
            traits
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect()
        })
        .unwrap_or_default();
    let own_domain = url.as_deref().and_then(domain_of);
    Ok(EventInput {
        message_id: envelope.message_id.clone(),
        call: call.to_string(),
        name,
        at: event_time(&event, received_ms, &envelope.batch_sent_at),
        identifiers: identified
            .identifiers
            .iter()
            .map(|identifier| Identifier {
                kind: identifier.r#type.clone(),
                value: identifier.value.clone(),
            })
            .collect(),
        // A referrer from the site itself is navigation, not a referral.
        referrer_domain: referrer
            .as_deref()
            .and_then(domain_of)
            .filter(|domain| Some(domain) != own_domain.as_ref()),
        url,
        user_agent: text(at_path(&["context", "userAgent"]))
            .or_else(|| Some(envelope.user_agent.clone()).filter(|agent| !agent.is_empty())),
        device_id: text(at_path(&["context", "device", "id"])),
        timezone: text(at_path(&["context", "timezone"])),
        city: text(at_path(&["context", "location", "city"])),
        country: text(at_path(&["context", "location", "country"])),
        traits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_lose_scheme_path_port_and_www() {
        assert_eq!(
            domain_of("https://www.Google.com/search?q=x").as_deref(),
            Some("google.com")
        );
        assert_eq!(
            domain_of("http://news.example.co.uk:8080/a").as_deref(),
            Some("news.example.co.uk")
        );
        assert_eq!(domain_of("android-app://localhost"), None);
    }

    #[test]
    fn the_event_time_corrects_client_clock_skew() {
        let event = serde_json::json!({
            "originalTimestamp": "2026-11-22T10:00:00Z",
            "sentAt": "2026-11-22T10:00:05Z"
        });
        // Received at 10:00:15 by the server's clock: the client's clock is 10 s slow.
        let received = chrono::DateTime::parse_from_rfc3339("2026-11-22T10:00:15Z")
            .unwrap()
            .timestamp_millis();
        let at = event_time(&event, received, "");
        assert_eq!(
            at,
            chrono::DateTime::parse_from_rfc3339("2026-11-22T10:00:10Z")
                .unwrap()
                .timestamp_millis()
        );
    }
}
