//! A Segment event as the services downstream of the collector read it: the raw JSON of
//! the envelope, with the batch's shared `context` filled in, the call type, the event
//! time by Segment's rules, and the context fields that several services need (page,
//! referrer, user agent, IP, timezone, traits).

#![forbid(unsafe_code)]

use cairn_proto::event::v1::{Envelope, EventType};
use serde_json::{Map, Value};

/// One event, read.
#[derive(Debug, Clone)]
pub struct Event {
    pub message_id: String,
    /// track, identify, page, screen, group, alias.
    pub call: &'static str,
    /// The event time (ms): see [`event_time`].
    pub at_ms: i64,
    /// When the collector received it (ms).
    pub received_ms: i64,
    /// The event's JSON (an object), its `context` completed from the batch's.
    pub json: Value,
    /// What the collector saw of the connection.
    client_ip: String,
    header_user_agent: String,
}

impl Event {
    /// Reads the event in `envelope`. The error says what is unreadable.
    pub fn read(envelope: &Envelope) -> Result<Self, String> {
        let mut json: Value = serde_json::from_slice(&envelope.raw)
            .map_err(|err| format!("the event is not JSON: {err}"))?;
        let Value::Object(event) = &mut json else {
            return Err("the event is not a JSON object".to_string());
        };
        if !envelope.batch_context.is_empty()
            && let Ok(Value::Object(shared)) =
                serde_json::from_slice::<Value>(&envelope.batch_context)
        {
            // The batch's context applies to every element; the element's own keys win.
            let context = event
                .entry("context")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(context) = context {
                for (key, value) in shared {
                    context.entry(key).or_insert(value);
                }
            }
        }
        let received_ms = envelope
            .received_at
            .as_ref()
            .map_or(0, cairn_runtime::clock::timestamp_ms);
        let call = match envelope.r#type() {
            EventType::Track | EventType::Unspecified => "track",
            EventType::Identify => "identify",
            EventType::Page => "page",
            EventType::Screen => "screen",
            EventType::Group => "group",
            EventType::Alias => "alias",
        };
        Ok(Self {
            message_id: envelope.message_id.clone(),
            call,
            at_ms: event_time(&json, received_ms, &envelope.batch_sent_at),
            received_ms,
            json,
            client_ip: envelope.client_ip.clone(),
            header_user_agent: envelope.user_agent.clone(),
        })
    }

    /// The value at `path`, if any.
    pub fn get(&self, path: &[&str]) -> Option<&Value> {
        path.iter()
            .try_fold(&self.json, |value, key| value.get(key))
    }

    /// The non-blank text at `path`, trimmed.
    pub fn text(&self, path: &[&str]) -> Option<String> {
        text(self.get(path))
    }

    /// What counts are kept under: a track's event name, else the call.
    pub fn name(&self) -> String {
        match self.call {
            "track" => self.text(&["event"]).unwrap_or_else(|| "track".to_string()),
            other => other.to_string(),
        }
    }

    /// The page the event happened on: `context.page.url`, else `properties.url`.
    pub fn page_url(&self) -> Option<String> {
        self.text(&["context", "page", "url"])
            .or_else(|| self.text(&["properties", "url"]))
    }

    pub fn referrer(&self) -> Option<String> {
        self.text(&["context", "page", "referrer"])
            .or_else(|| self.text(&["properties", "referrer"]))
    }

    /// `context.userAgent`, else the request's User-Agent header.
    pub fn user_agent(&self) -> Option<String> {
        self.text(&["context", "userAgent"])
            .or_else(|| Some(self.header_user_agent.clone()).filter(|agent| !agent.is_empty()))
    }

    /// Whether the client that reported this event says it is a crawler, in
    /// `context.userAgent` (what a browser or an SDK reports for the person; not the
    /// request's header, which for a server-side call is the server's own client).
    pub fn sent_by_a_bot(&self) -> bool {
        self.text(&["context", "userAgent"])
            .is_some_and(|agent| looks_like_a_bot(&agent))
    }

    /// `context.ip`, else the address the collector saw.
    pub fn ip(&self) -> Option<String> {
        self.text(&["context", "ip"])
            .or_else(|| Some(self.client_ip.clone()).filter(|ip| !ip.is_empty()))
    }

    /// An identify call's traits, else `context.traits`.
    pub fn traits(&self) -> Option<&Map<String, Value>> {
        let traits = if self.call == "identify" {
            self.get(&["traits"])
        } else {
            self.get(&["context", "traits"])
        };
        traits.and_then(Value::as_object)
    }
}

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

/// How far past its receipt an event time is believed: a clock a day fast is a broken
/// clock, and a time in the future would outweigh every real event after it.
pub const MAX_AHEAD_MS: i64 = 86_400_000;

/// The event time, as Segment defines it: `timestamp`; else `originalTimestamp` moved by
/// the client's clock skew (`receivedAt - sentAt`); else when it was received. A time
/// more than [`MAX_AHEAD_MS`] after the receipt is replaced by the receipt.
pub fn event_time(event: &Value, received_ms: i64, batch_sent_at: &str) -> i64 {
    let at = claimed_time(event, received_ms, batch_sent_at);
    if received_ms > 0 && at > received_ms.saturating_add(MAX_AHEAD_MS) {
        received_ms
    } else {
        at
    }
}

fn claimed_time(event: &Value, received_ms: i64, batch_sent_at: &str) -> i64 {
    if let Some(at) = parse_time(event.get("timestamp")) {
        return at;
    }
    let sent = parse_time(event.get("sentAt"))
        .or_else(|| parse_time(Some(&Value::String(batch_sent_at.to_string()))));
    match (parse_time(event.get("originalTimestamp")), sent) {
        (Some(original), Some(sent)) => original.saturating_add(received_ms.saturating_sub(sent)),
        (Some(original), None) => original,
        _ => received_ms,
    }
}

/// Crawler markers in a User-Agent: the ones common crawlers, headless browsers and HTTP
/// libraries carry (enrich-device adds uap-core's `Spider` family to these).
pub fn looks_like_a_bot(user_agent: &str) -> bool {
    let lower = user_agent.to_ascii_lowercase();
    [
        "bot",
        "crawler",
        "spider",
        "headlesschrome",
        "slurp",
        "python-requests",
        "curl/",
        "wget/",
    ]
    .iter()
    .any(|marker| lower.contains(marker))
}

/// The host of a URL, without `www.`.
pub fn domain_of(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let host = rest.split(['/', '?', '#']).next()?.rsplit('@').next()?;
    let host = host.split(':').next()?.trim().to_ascii_lowercase();
    let host = host.strip_prefix("www.").unwrap_or(&host).to_string();
    (!host.is_empty() && host.contains('.')).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope(raw: Value) -> Envelope {
        Envelope {
            raw: serde_json::to_vec(&raw).unwrap().into(),
            message_id: "m1".into(),
            client_ip: "203.0.113.9".into(),
            user_agent: "curl/8".into(),
            r#type: EventType::Page.into(),
            ..Default::default()
        }
    }

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
        let event = json!({
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

    #[test]
    fn a_time_far_in_the_future_is_taken_as_the_receipt() {
        let received = chrono::DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
            .unwrap()
            .timestamp_millis();
        let future = json!({"timestamp": "9999-01-01T00:00:00Z"});
        assert_eq!(event_time(&future, received, ""), received);
        let slightly = json!({"timestamp": "2026-11-22T11:00:00Z"});
        assert_eq!(event_time(&slightly, received, ""), received + 3_600_000);
    }

    #[test]
    fn the_event_s_own_context_comes_first_then_the_batch_s_then_the_connection() {
        let mut with_batch = envelope(json!({"type": "page", "context": {"ip": "198.51.100.1"}}));
        with_batch.batch_context = serde_json::to_vec(
            &json!({"ip": "192.0.2.1", "userAgent": "Firefox", "timezone": "Europe/Paris"}),
        )
        .unwrap()
        .into();
        let event = Event::read(&with_batch).unwrap();
        assert_eq!(event.ip().as_deref(), Some("198.51.100.1"));
        assert_eq!(event.user_agent().as_deref(), Some("Firefox"));
        assert_eq!(
            event.text(&["context", "timezone"]).as_deref(),
            Some("Europe/Paris")
        );

        let bare = Event::read(&envelope(json!({"type": "page"}))).unwrap();
        assert_eq!(bare.ip().as_deref(), Some("203.0.113.9"));
        assert_eq!(bare.user_agent().as_deref(), Some("curl/8"));
    }

    #[test]
    fn unreadable_events_say_why() {
        let mut broken = envelope(json!({}));
        broken.raw = b"{not json".to_vec().into();
        assert!(Event::read(&broken).unwrap_err().contains("not JSON"));
        assert!(
            Event::read(&envelope(json!([1, 2])))
                .unwrap_err()
                .contains("not a JSON object")
        );
    }
}
