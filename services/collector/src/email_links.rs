//! The tracked links of campaign emails ([`cairn_bus::links`] has their tokens):
//!
//! - `GET /v1/click?t=…`: records `Email Link Clicked` (campaign, link, email) for the
//!   person and redirects to the link, adding `cairn_t`, a visit token good for ten
//!   minutes;
//! - `GET /v1/open?t=…`: a 1×1 image; records `Email Opened`;
//! - `POST /v1/link` `{"t": <visit token>, "anonymousId": …}`: what the browser tag
//!   sends from the landing page; records an `identify` tying that anonymous id (the
//!   tag's cookie) to the person, so the visit joins their profile.
//!
//! The events go into the EVENTS stream like any other, from the source `email`. A click
//! whose event cannot be stored (NATS away) still leads to its page.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Query, State};
use axum::response::{Html, IntoResponse, Response};
use bytes::Bytes;
use cairn_bus::links::{self, Click, Email, Person, Purpose, Visit};
use http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::CollectorError;
use crate::event::{self, CallType};
use crate::ingest::{Ingest, RequestMeta};

/// The source the events of email links are stored from.
pub const SOURCE: &str = "email";

/// The landing page's parameter carrying the visit token.
pub const VISIT_PARAM: &str = "cairn_t";

/// How long after a click its landing page may tie the browser to the person.
const VISIT_TTL_MS: i64 = 10 * 60 * 1000;

/// The smallest transparent GIF.
const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

#[derive(Clone)]
pub struct EmailLinks {
    pub ingest: Ingest,
    /// `None`: no tracked links are made, so none is valid.
    pub secret: Option<String>,
    pub trust_forwarded_for: bool,
}

#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    #[serde(default)]
    t: String,
}

/// The routes, on their own state.
pub fn routes(email_links: EmailLinks) -> axum::Router {
    axum::Router::new()
        .route("/v1/click", axum::routing::get(click))
        .route("/v1/open", axum::routing::get(open))
        .route("/v1/link", axum::routing::post(link))
        .with_state(email_links)
}

impl EmailLinks {
    fn open<T: serde::de::DeserializeOwned>(&self, purpose: Purpose, token: &str) -> Option<T> {
        links::open(self.secret.as_deref()?, purpose, token)
    }

    /// Stores `event` (a Segment call) as the request `headers` from `peer` sent it.
    async fn record(
        &self,
        call: CallType,
        event: Value,
        headers: &HeaderMap,
        peer: SocketAddr,
    ) -> Result<(), CollectorError> {
        let request = event::parse_single(call, &Bytes::from(event.to_string()))?;
        let meta = RequestMeta {
            source: SOURCE.to_string(),
            client_ip: crate::http::client_ip(headers, Some(peer), self.trust_forwarded_for),
            user_agent: headers
                .get(header::USER_AGENT)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_string(),
        };
        self.ingest.store(request, &meta).await.map(|_| ())
    }
}

/// The fields of a Segment call that say who `person` is.
fn who(person: &Person) -> serde_json::Map<String, Value> {
    let mut fields = serde_json::Map::new();
    match (&person.user_id, &person.anonymous_id) {
        (Some(user_id), _) => fields.insert("userId".into(), json!(user_id)),
        (None, Some(anonymous_id)) => fields.insert("anonymousId".into(), json!(anonymous_id)),
        (None, None) => None,
    };
    fields.insert("context".into(), json!({"traits": {"email": person.email}}));
    fields
}

/// A `track` of `name` about `email`, with `properties` beside its campaign and send.
fn email_event(name: &str, email: &Email, mut properties: serde_json::Map<String, Value>) -> Value {
    properties.insert("campaign".into(), json!(email.campaign));
    properties.insert("email_id".into(), json!(email.send));
    let mut event = who(&email.person);
    event.insert("type".into(), json!("track"));
    event.insert("event".into(), json!(name));
    event.insert("messageId".into(), json!(uuid::Uuid::new_v4().to_string()));
    event.insert("properties".into(), Value::Object(properties));
    Value::Object(event)
}

/// `url` with `name=value` added to its query.
fn with_param(url: &str, name: &str, value: &str) -> String {
    let (base, fragment) = match url.find('#') {
        Some(at) => url.split_at(at),
        None => (url, ""),
    };
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}{name}={value}{fragment}")
}

fn invalid_link() -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CACHE_CONTROL, "no-store")],
        Html(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>This link does not work</title></head>\
             <body style=\"font:16px/1.5 system-ui,sans-serif;max-width:32em;margin:3em auto\">\
             <h1 style=\"font-size:1.4em\">This link does not work</h1>\
             <p>The link is incomplete or was not made by us. Use the link from the email as it is.</p></body></html>",
        ),
    )
        .into_response()
}

pub async fn click(
    State(email_links): State<EmailLinks>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Response {
    let Some(click) = email_links.open::<Click>(Purpose::Click, &query.t) else {
        return invalid_link();
    };
    let event = email_event(
        "Email Link Clicked",
        &click.email,
        serde_json::Map::from_iter([("link_url".to_string(), json!(click.url))]),
    );
    if let Err(err) = email_links
        .record(CallType::Track, event, &headers, peer)
        .await
    {
        tracing::warn!(error = %err, campaign = %click.email.campaign, "a click could not be recorded");
    }
    let location = match &email_links.secret {
        Some(secret) => {
            let visit = Visit {
                person: click.email.person,
                expires_ms: cairn_runtime::clock::now_ms() + VISIT_TTL_MS,
            };
            with_param(
                &click.url,
                VISIT_PARAM,
                &links::seal(secret, Purpose::Visit, &visit),
            )
        }
        None => click.url,
    };
    (
        StatusCode::FOUND,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, "no-store".to_string()),
            (header::REFERRER_POLICY, "no-referrer".to_string()),
        ],
    )
        .into_response()
}

pub async fn open(
    State(email_links): State<EmailLinks>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Response {
    // The image is answered whatever becomes of the event: the email must look right.
    if let Some(email) = email_links.open::<Email>(Purpose::Open, &query.t) {
        let event = email_event("Email Opened", &email, serde_json::Map::new());
        if let Err(err) = email_links
            .record(CallType::Track, event, &headers, peer)
            .await
        {
            tracing::warn!(error = %err, campaign = %email.campaign, "an open could not be recorded");
        }
    }
    (
        [
            (header::CONTENT_TYPE, "image/gif"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PIXEL,
    )
        .into_response()
}

fn bad_link_request(field: &str, problem: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": format!("{field}: {problem}")})),
    )
        .into_response()
}

/// Longest anonymous id taken, as Segment's.
const MAX_ANONYMOUS_ID: usize = 512;

pub async fn link(
    State(email_links): State<EmailLinks>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Sent as text/plain by the tag (no CORS preflight): JSON whatever the type says.
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return bad_link_request("body", "not a JSON object");
    };
    let Some(token) = body.get("t").and_then(Value::as_str) else {
        return bad_link_request("t", "required: the cairn_t parameter of the landing page");
    };
    let anonymous_id = match body
        .get("anonymousId")
        .and_then(Value::as_str)
        .map(str::trim)
    {
        Some(id) if !id.is_empty() && id.len() <= MAX_ANONYMOUS_ID => id.to_string(),
        Some(_) => return bad_link_request("anonymousId", "must be 1 to 512 characters"),
        None => return bad_link_request("anonymousId", "required"),
    };
    let Some(visit) = email_links.open::<Visit>(Purpose::Visit, token) else {
        return bad_link_request("t", "not a visit token made by this Cairn");
    };
    if visit.expires_ms < cairn_runtime::clock::now_ms() {
        return bad_link_request("t", "expired: the link was followed over ten minutes ago");
    }
    let mut event = who(&visit.person);
    event.insert("type".into(), json!("identify"));
    event.insert("anonymousId".into(), json!(anonymous_id));
    event.insert("messageId".into(), json!(uuid::Uuid::new_v4().to_string()));
    match email_links
        .record(CallType::Identify, Value::Object(event), &headers, peer)
        .await
    {
        Ok(()) => axum::Json(json!({"success": true})).into_response(),
        Err(err) => err.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_visit_token_joins_the_query_before_the_fragment() {
        assert_eq!(
            with_param("https://a.example/x", "t", "v"),
            "https://a.example/x?t=v"
        );
        assert_eq!(
            with_param("https://a.example/x?q=1#top", "t", "v"),
            "https://a.example/x?q=1&t=v#top"
        );
    }
}
