//! `/v1/unsubscribe?t=<token>`: the link in every campaign email (`List-Unsubscribe`).
//! `GET` shows a page asking to confirm (mail scanners follow links; they must not
//! unsubscribe anyone); `POST`, from that page's button or a mail client's one-click
//! unsubscribe (RFC 8058), adds the address to the SUPPRESSIONS bucket, after checking
//! the token was signed with `CAIRN_EMAIL_LINK_SECRET`.

use async_nats::jetstream::kv;
use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};
use bytes::Bytes;
use cairn_bus::suppressions;
use http::StatusCode;
use serde::Deserialize;

#[derive(Clone)]
pub struct Unsubscribe {
    pub bucket: kv::Store,
    /// `None`: no links are made, so none is valid.
    pub secret: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct UnsubscribeQuery {
    #[serde(default)]
    t: String,
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    (
        status,
        [(http::header::CACHE_CONTROL, "no-store")],
        Html(format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title>\
             <meta name=\"viewport\" content=\"width=device-width\"></head>\
             <body style=\"font:16px/1.5 system-ui,sans-serif;max-width:32em;margin:3em auto\">\
             <h1 style=\"font-size:1.4em\">{title}</h1>{body}</body></html>"
        )),
    )
        .into_response()
}

/// Text for HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The routes, on their own state.
pub fn routes(unsubscribe: Unsubscribe) -> axum::Router {
    axum::Router::new()
        .route(
            "/v1/unsubscribe",
            axum::routing::get(confirm).post(self::unsubscribe),
        )
        .with_state(unsubscribe)
}

impl Unsubscribe {
    fn address(&self, token: &str) -> Option<String> {
        suppressions::verify_unsubscribe(self.secret.as_deref()?, token)
    }
}

fn invalid() -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "This link does not work",
        "<p>The unsubscribe link is incomplete or was not made by us. Use the link from the email as it is.</p>",
    )
}

pub async fn confirm(
    State(unsubscribe): State<Unsubscribe>,
    Query(query): Query<UnsubscribeQuery>,
) -> Response {
    let Some(email) = unsubscribe.address(&query.t) else {
        return invalid();
    };
    page(
        StatusCode::OK,
        "Unsubscribe",
        &format!(
            "<p>Stop sending campaign emails to <b>{}</b>?</p>\
             <form method=\"post\"><button type=\"submit\">Unsubscribe</button></form>",
            escape(&email)
        ),
    )
}

pub async fn unsubscribe(
    State(unsubscribe): State<Unsubscribe>,
    Query(query): Query<UnsubscribeQuery>,
) -> Response {
    let Some(email) = unsubscribe.address(&query.t) else {
        return invalid();
    };
    match unsubscribe
        .bucket
        .put(
            suppressions::key(&email),
            Bytes::from_static(b"unsubscribed"),
        )
        .await
    {
        Ok(_) => {
            tracing::info!("an address unsubscribed");
            page(
                StatusCode::OK,
                "You are unsubscribed",
                &format!(
                    "<p>No more campaign emails will go to <b>{}</b>.</p>",
                    escape(&email)
                ),
            )
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot record an unsubscribe");
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Please try again",
                "<p>We could not record this just now. Please try again in a minute.</p>",
            )
        }
    }
}
