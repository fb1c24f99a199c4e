//! `/v1/unsubscribe?t=<token>`: the link in every campaign email (`List-Unsubscribe`).
//! `GET` shows a page asking to confirm (mail scanners follow links; they must not
//! unsubscribe anyone); `POST`, from that page's button or a mail client's one-click
//! unsubscribe (RFC 8058), adds the address to the SUPPRESSIONS bucket, after checking
//! the token was signed with `CAIRN_EMAIL_LINK_SECRET`. A link from an email of a list
//! unsubscribes from that list; its page also offers every campaign email (`all=1`).

use async_nats::jetstream::kv;
use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};
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
    /// From every campaign email, whatever list the link is from.
    #[serde(default)]
    all: Option<String>,
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
    /// The address and the list (none: every campaign email) the link is for.
    fn address(&self, query: &UnsubscribeQuery) -> Option<(String, Option<String>)> {
        let (email, list) = suppressions::verify_unsubscribe(self.secret.as_deref()?, &query.t)?;
        Some((email, list.filter(|_| query.all.is_none())))
    }
}

/// What a suppression from `list` covers, in words.
fn scope(list: Option<&str>) -> String {
    match list {
        Some(list) => format!("<b>{}</b> emails", escape(list)),
        None => "campaign emails".to_string(),
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
    let Some((email, list)) = unsubscribe.address(&query) else {
        return invalid();
    };
    let everything = match &list {
        Some(_) => format!(
            "<form method=\"post\" action=\"?t={}&amp;all=1\"><button type=\"submit\">Unsubscribe from all campaign emails</button></form>",
            escape(&query.t)
        ),
        None => String::new(),
    };
    page(
        StatusCode::OK,
        "Unsubscribe",
        &format!(
            "<p>Stop sending {} to <b>{}</b>?</p>\
             <form method=\"post\"><button type=\"submit\">Unsubscribe</button></form>{everything}",
            scope(list.as_deref()),
            escape(&email)
        ),
    )
}

pub async fn unsubscribe(
    State(unsubscribe): State<Unsubscribe>,
    Query(query): Query<UnsubscribeQuery>,
) -> Response {
    let Some((email, list)) = unsubscribe.address(&query) else {
        return invalid();
    };
    match suppressions::add(&unsubscribe.bucket, &email, list.as_deref(), "unsubscribed").await {
        Ok(()) => {
            tracing::info!(
                list = list.as_deref().unwrap_or("*"),
                "an address unsubscribed"
            );
            page(
                StatusCode::OK,
                "You are unsubscribed",
                &format!(
                    "<p>No more {} will go to <b>{}</b>.</p>",
                    scope(list.as_deref()),
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
