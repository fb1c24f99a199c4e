//! The web console for marketers at `/console` on the HTTP listener: a segment builder
//! (nested AND/OR/NOT groups of attribute, behaviour and segment conditions, shown and
//! editable as FilterQL both ways, checked as you type, with a size estimate and sample
//! profiles before saving), a profile explorer (traits, facts, sessions, timeline,
//! segments and why a profile is in one or not), campaigns (stats per state,
//! pause/resume, the state machine drawn), and a live view (events per second, consumer
//! lag, recent segment changes).
//!
//! Every page and asset is served by Cairn itself (no CDN). The console calls the
//! services over their gRPC APIs with the signed-in operator's token, so what a token's
//! role may do is decided by the services (see [`session`]).
//!
//! - [`api`]: the JSON API the page calls;
//! - [`session`]: signing in, the session cookie and the cross-site request check;
//! - [`live`]: the live view's figures;
//! - [`start`]: the module for `cairn serve console` and `cairn up`.

#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod error;
pub mod live;
pub mod session;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use cairn_bus::{Bus, BusConfig};
use cairn_runtime::{Module, ModuleContext, Var};

pub use error::ConsoleError;

/// Every variable the console reads, its own and the bus's.
pub fn vars() -> Vec<Var> {
    [config::VARS, cairn_bus::config::VARS].concat()
}

const INDEX_HTML: &str = include_str!("../assets/index.html");
const CONSOLE_JS: &str = include_str!("../assets/console.js");
const CONSOLE_CSS: &str = include_str!("../assets/console.css");

/// What the browser may load and run: only what Cairn serves.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// The page and its assets.
fn pages() -> Router {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route(
            "/console/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/console/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", CONSOLE_JS) }),
        )
        .route(
            "/console/console.css",
            get(|| async { asset("text/css; charset=utf-8", CONSOLE_CSS) }),
        )
}

/// Connects to NATS (for the live view) and returns the module.
pub async fn start(context: &ModuleContext) -> Result<Module, ConsoleError> {
    let settings = &context.settings;
    let bus = Bus::connect(&BusConfig::from_settings(settings)?, "cairn-console").await?;
    let endpoints = config::Endpoints::from_settings(settings)?;
    context
        .readiness
        .add_check("console: NATS", bus.readiness_check());
    let live = live::Live::new(bus);
    let console = api::Console {
        sessions: session::Sessions {
            credentials: context.credentials.clone(),
            secure: cairn_runtime::tls::ServerTls::from_settings(settings)?.is_some(),
        },
        endpoints,
        live: live.clone(),
    };
    let stop = context.shutdown.requested_owned();
    Ok(Module {
        name: "console",
        grpc: Default::default(),
        http: Some(pages().merge(api::routes(console))),
        tasks: vec![Box::pin(async move {
            live.run(stop)
                .await
                .map_err(|err| Box::new(err) as cairn_runtime::BoxError)
        })],
    })
}
