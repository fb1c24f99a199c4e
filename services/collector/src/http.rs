//! The Segment-spec HTTP API: `POST /v1/{track,identify,page,screen,group,alias,batch}`
//! (and analytics.js's short forms `/v1/t`, `/v1/i`, ... `/v1/b`, and `/v1/import`),
//! `GET /v1/personalize` ([`crate::personalize`]) and the browser tag, `GET /cairn.js`
//! ([`crate::tag`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use cairn_runtime::Credentials;
use cairn_runtime::auth::{AuthError, Presented, Principal, Role, authenticate_headers};
use http::{HeaderMap, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::CollectorConfig;
use crate::error::CollectorError;
use crate::event::{self, AcceptedRequest, CallType, MAX_BATCH_BYTES, MAX_EVENT_BYTES};
use crate::ingest::{Ingest, RequestMeta};
use crate::personalize::{PersonalizeQuery, Personalizer};

#[derive(Clone)]
struct HttpState {
    ingest: Ingest,
    personalizer: Personalizer,
    credentials: Arc<Credentials>,
    config: Arc<CollectorConfig>,
}

/// Which endpoint was called.
#[derive(Debug, Clone, Copy)]
enum Endpoint {
    Single(CallType),
    Batch,
}

/// The collector's HTTP routes, with CORS for browser tags.
pub fn router(
    ingest: Ingest,
    personalizer: Personalizer,
    credentials: Arc<Credentials>,
    config: CollectorConfig,
) -> Router {
    let cors = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::CONTENT_ENCODING,
            http::HeaderName::from_static("traceparent"),
            http::HeaderName::from_static("tracestate"),
        ])
        .max_age(std::time::Duration::from_secs(86_400))
        .allow_origin(match &config.cors_origins {
            None => AllowOrigin::any(),
            Some(origins) => AllowOrigin::list(origins.clone()),
        });
    let state = HttpState {
        ingest,
        personalizer,
        credentials,
        config: Arc::new(config),
    };
    let mut routes: Vec<(String, Endpoint)> = Vec::new();
    for call in CallType::ALL {
        // analytics.js posts to the first letter of the call: /v1/t, /v1/i, ...
        routes.push((format!("/v1/{}", call.name()), Endpoint::Single(call)));
        routes.push((format!("/v1/{}", &call.name()[..1]), Endpoint::Single(call)));
    }
    for path in ["/v1/batch", "/v1/b", "/v1/import"] {
        routes.push((path.to_string(), Endpoint::Batch));
    }
    let mut router = Router::new()
        .route("/v1/personalize", get(personalize))
        .route("/cairn.js", get(crate::tag::serve));
    for (path, endpoint) in routes {
        router = router.route(
            &path,
            post(move |state, connect, headers, body| {
                handle(state, connect, headers, body, endpoint)
            }),
        );
    }
    router.layer(cors).with_state(state)
}

async fn handle(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
    endpoint: Endpoint,
) -> Response {
    match ingest(&state, peer, &headers, body, endpoint).await {
        Ok(()) => (
            [(header::CONTENT_TYPE, "application/json")],
            "{\"success\":true}",
        )
            .into_response(),
        Err(err) => {
            state.ingest.count_rejection(&err);
            err.into_response()
        }
    }
}

async fn ingest(
    state: &HttpState,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: Body,
    endpoint: Endpoint,
) -> Result<(), CollectorError> {
    let header_principal = authenticate_headers(headers, &state.credentials)?;
    let (limit, per) = match endpoint {
        Endpoint::Single(_) => (MAX_EVENT_BYTES, "per call"),
        Endpoint::Batch => (MAX_BATCH_BYTES, "per batch"),
    };
    let body = axum::body::to_bytes(body, limit + 1).await.map_err(|err| {
        match err
            .into_inner()
            .downcast::<http_body_util::LengthLimitError>()
        {
            Ok(_) => CollectorError::Rejected(event::Rejection::BodyTooLarge {
                limit_kb: limit / 1024,
                per,
            }),
            Err(other) => CollectorError::Body(other.to_string()),
        }
    })?;
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim().eq_ignore_ascii_case("gzip"));
    let body = event::decode_body(body, gzip, limit, per)?;
    let parsed = match endpoint {
        Endpoint::Single(call) => event::parse_single(call, &body),
        Endpoint::Batch => event::parse_batch(&body),
    };

    let source = match header_principal {
        Some(principal) => source_of(principal)?,
        None => {
            // No header: the write key may be in the body (some clients put it there).
            let body_key = match &parsed {
                Ok(request) => request.body_write_key().map(str::to_string),
                Err(_) => write_key_in(&body),
            };
            let key = body_key.ok_or(AuthError::MissingWriteKey)?;
            source_of(state.credentials.authenticate(Presented::WriteKey(&key))?)?
        }
    };
    let request: AcceptedRequest = parsed?;
    let meta = RequestMeta {
        source,
        client_ip: client_ip(headers, Some(peer), state.config.trust_forwarded_for),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string(),
    };
    state.ingest.store(request, &meta).await?;
    Ok(())
}

/// `GET /v1/personalize`: the visitor's answer, never cached by the browser.
async fn personalize(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Query(query): Query<PersonalizeQuery>,
) -> Response {
    let answer = async {
        let principal = match authenticate_headers(&headers, &state.credentials)? {
            Some(principal) => principal,
            None => {
                let key = query
                    .write_key
                    .as_deref()
                    .ok_or(AuthError::MissingWriteKey)?;
                state.credentials.authenticate(Presented::WriteKey(key))?
            }
        };
        // A write key is public (it is in every page): with it, a visitor is looked up
        // by their own anonymous id only. Looking people up by user id is for servers
        // holding a token with the read role.
        let by_user_id = query
            .user_id
            .as_deref()
            .is_some_and(|user_id| !user_id.trim().is_empty());
        if by_user_id && !matches!(principal, Principal::Operator(role) if role >= Role::Read) {
            return Err(CollectorError::BadQuery(
                "userId: with a write key, visitors are looked up by anonymousId only (anyone can read a write key); a user id needs a bearer token with the read role".to_string(),
            ));
        }
        state
            .personalizer
            .answer(&query, cairn_runtime::clock::now_ms())
            .await
    };
    match answer.await {
        Ok(answer) => ([(header::CACHE_CONTROL, "no-store")], axum::Json(answer)).into_response(),
        Err(err) => err.into_response(),
    }
}

fn source_of(principal: Principal) -> Result<String, CollectorError> {
    match principal {
        Principal::Source(source) => Ok(source),
        Principal::Operator(_) => Err(AuthError::NotASource.into()),
    }
}

/// A top-level `writeKey` in a body that failed validation, so that the client still
/// gets the validation message rather than a 401.
fn write_key_in(body: &Bytes) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct WithKey {
        #[serde(rename = "writeKey")]
        write_key: Option<String>,
    }
    serde_json::from_slice::<WithKey>(body).ok()?.write_key
}

/// The client's address: the peer's, or, behind a trusted proxy, the last
/// `X-Forwarded-For` entry (the one that proxy added; earlier ones are the client's say).
pub fn client_ip(
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    trust_forwarded_for: bool,
) -> String {
    if trust_forwarded_for
        && let Some(last) = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .next_back()
            .filter(|value| value.parse::<std::net::IpAddr>().is_ok())
    {
        return last.to_string();
    }
    peer.map(|peer| peer.ip().to_string()).unwrap_or_default()
}
