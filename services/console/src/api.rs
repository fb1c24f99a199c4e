//! The console's JSON API under `/console/api`, each call made on behalf of the signed-in
//! operator (see [`crate::session`]).

use std::collections::BTreeMap;

use axum::extract::{FromRef, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use cairn_filterql::{FieldType, Filter, Schema as _};
use cairn_profile_store::profile::{ProfileSchema, WINDOWS};
use cairn_proto::campaign::v1 as campaign_pb;
use cairn_proto::campaign::v1::campaigns_client::CampaignsClient;
use cairn_proto::dispatch::v1 as dispatch_pb;
use cairn_proto::dispatch::v1::templates_client::TemplatesClient;
use cairn_proto::identity::v1::Identifier;
use cairn_proto::profile::v1 as profile_pb;
use cairn_proto::profile::v1::profiles_client::ProfilesClient;
use cairn_proto::segment::v1 as segment_pb;
use cairn_proto::segment::v1::segments_client::SegmentsClient;
use cairn_runtime::Role;
use cairn_runtime::clock::timestamp_ms;
use cairn_segmenter::campaigns::definition::{Channel, On};
use cairn_segmenter::campaigns::{Campaign, START};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::Endpoints;
use crate::error::ConsoleError;
use crate::live::Live;
use crate::session::{Operator, Sessions};

#[derive(Clone)]
pub struct Console {
    pub sessions: Sessions,
    pub endpoints: Endpoints,
    pub live: Live,
}

impl FromRef<Console> for Sessions {
    fn from_ref(console: &Console) -> Sessions {
        console.sessions.clone()
    }
}

type Answer<T> = Result<Json<T>, ConsoleError>;

/// A JSON body; when it cannot be read, a 400 that says why (which field, what type).
struct Body<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ConsoleError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        Json::<T>::from_request(request, state)
            .await
            .map(|Json(value)| Body(value))
            .map_err(|rejection| ConsoleError::BadRequest(rejection.body_text()))
    }
}

/// Query parameters; when they cannot be read, a 400 that says which and why.
struct Params<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ConsoleError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| Params(value))
            .map_err(|rejection| ConsoleError::BadRequest(rejection.body_text()))
    }
}

pub fn routes(console: Console) -> Router {
    Router::new()
        .route("/console/api/login", post(login))
        .route("/console/api/logout", post(logout))
        .route("/console/api/me", get(me))
        .route("/console/api/schema", get(schema))
        .route("/console/api/filterql/parse", post(parse))
        .route("/console/api/filterql/print", post(print))
        .route("/console/api/segments", get(segments))
        .route("/console/api/segments/check", post(check))
        .route("/console/api/segments/preview", post(preview))
        .route("/console/api/segments/{name}", put(save_segment))
        .route("/console/api/segments/{name}/members", get(members))
        .route("/console/api/segments/{name}/explain", get(explain))
        .route("/console/api/profiles", get(profile))
        .route("/console/api/profiles/{id}/timeline", get(timeline))
        .route("/console/api/campaigns", get(campaigns))
        .route("/console/api/campaigns/{name}/pause", post(pause))
        .route("/console/api/campaigns/{name}/resume", post(resume))
        .route(
            "/console/api/templates/{name}/preview",
            get(template_preview),
        )
        .route("/console/api/live", get(live))
        .with_state(console)
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

async fn login(
    State(console): State<Console>,
    headers: HeaderMap,
    Body(login): Body<Login>,
) -> Result<Response, ConsoleError> {
    crate::session::require_console_header(&headers)?;
    let token = login.token.trim();
    if token.is_empty() {
        return Err(ConsoleError::BadRequest(
            "token: give one of the admin tokens".into(),
        ));
    }
    let Some(role) = console.sessions.credentials.role_for_token(token) else {
        tracing::info!("console sign-in refused");
        return Err(ConsoleError::Unauthorized("token: unknown token".into()));
    };
    tracing::info!(%role, "console sign-in");
    let cookie = console
        .sessions
        .cookie(token, cairn_runtime::clock::now_ms() / 1000)?;
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(json!({ "role": role.as_str() })),
    )
        .into_response())
}

/// Signs out: the cookie is cleared whether or not its token is still valid.
async fn logout(
    State(console): State<Console>,
    headers: HeaderMap,
) -> Result<Response, ConsoleError> {
    crate::session::require_console_header(&headers)?;
    Ok((
        [(header::SET_COOKIE, console.sessions.cleared())],
        StatusCode::NO_CONTENT,
    )
        .into_response())
}

async fn me(operator: Operator) -> Json<Value> {
    Json(json!({
        "role": operator.role.as_str(),
        "can_write": operator.role >= Role::Write,
    }))
}

/// A field the builder offers.
#[derive(Serialize)]
struct Field {
    name: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
}

fn type_name(kind: FieldType) -> &'static str {
    match kind {
        FieldType::Text => "text",
        FieldType::Number => "number",
        FieldType::Time => "time",
        FieldType::Bool => "bool",
        FieldType::List => "list",
        FieldType::Map => "map",
        FieldType::Any => "any",
    }
}

async fn schema(State(console): State<Console>, operator: Operator) -> Answer<Value> {
    let fields: Vec<Field> = ProfileSchema::top_fields()
        .iter()
        .filter_map(|name| {
            ProfileSchema.field_type(name).map(|kind| Field {
                name,
                kind: type_name(kind),
            })
        })
        // Maps are read through their keys (`traits.plan`, `event_count.purchase.7d`).
        .filter(|field| field.kind != "map")
        .collect();
    let windows: Vec<&str> = WINDOWS
        .iter()
        .map(|(name, _)| *name)
        .chain(["all"])
        .collect();
    let segments = segment_list(&console, &operator).await?;
    Ok(Json(json!({
        "fields": fields,
        "windows": windows,
        "segments": segments.iter().map(|segment| &segment.name).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
struct Text {
    text: String,
}

/// FilterQL text → the tree the builder edits, with the canonical text; or where the
/// text goes wrong.
async fn parse(_operator: Operator, Body(text): Body<Text>) -> Response {
    match cairn_filterql::parse(&text.text) {
        Ok(filter) => Json(json!({
            "tree": filter,
            "canonical": cairn_filterql::print(&filter),
        }))
        .into_response(),
        Err(err) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({
                "error": err.message,
                "line": err.line,
                "column": err.column,
            })),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct Tree {
    tree: Value,
}

/// The builder's tree → canonical FilterQL.
async fn print(_operator: Operator, Body(tree): Body<Tree>) -> Answer<Value> {
    let filter: Filter = serde_json::from_value(tree.tree)
        .map_err(|err| ConsoleError::BadRequest(format!("tree: {err}")))?;
    let text = cairn_filterql::print(&filter);
    // Names the language cannot write (a back-tick inside one) do not survive.
    if let Err(err) = cairn_filterql::parse(&text) {
        return Err(ConsoleError::BadRequest(format!(
            "tree: cannot be written as FilterQL: {}",
            err.message
        )));
    }
    Ok(Json(json!({ "text": text })))
}

#[derive(Deserialize)]
struct Draft {
    filter: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
}

fn segments_client(console: &Console) -> SegmentsClient<tonic::transport::Channel> {
    SegmentsClient::new(console.endpoints.segmenter.clone())
}

async fn check(
    State(console): State<Console>,
    operator: Operator,
    Body(draft): Body<Draft>,
) -> Answer<Value> {
    let checked = segments_client(&console)
        .check(operator.request(segment_pb::CheckRequest {
            filter: draft.filter,
            name: draft.name,
        })?)
        .await?
        .into_inner();
    Ok(Json(json!({
        "canonical": checked.canonical,
        "problems": checked.problems.iter().map(|problem| json!({
            "message": problem.message,
            "line": problem.line,
            "column": problem.column,
        })).collect::<Vec<_>>(),
    })))
}

async fn preview(
    State(console): State<Console>,
    operator: Operator,
    Body(draft): Body<Draft>,
) -> Answer<Value> {
    let preview = segments_client(&console)
        .preview(operator.request(segment_pb::PreviewRequest {
            filter: draft.filter,
            name: draft.name,
            max_profiles: 0,
        })?)
        .await?
        .into_inner();
    Ok(Json(json!({
        "evaluated": preview.evaluated,
        "matched": preview.matched,
        "fraction": preview.fraction,
        "estimated_size": preview.estimated_size,
        "sample": preview.sample,
    })))
}

async fn segment_list(
    console: &Console,
    operator: &Operator,
) -> Result<Vec<segment_pb::Segment>, ConsoleError> {
    Ok(segments_client(console)
        .list(operator.request(segment_pb::ListRequest {})?)
        .await?
        .into_inner()
        .segments)
}

fn rfc3339(at: Option<prost_types::Timestamp>) -> String {
    at.and_then(|at| chrono::DateTime::from_timestamp_millis(timestamp_ms(&at)))
        .map(|at| at.to_rfc3339())
        .unwrap_or_default()
}

async fn segments(State(console): State<Console>, operator: Operator) -> Answer<Value> {
    let list = segment_list(&console, &operator).await?;
    let mut rows = Vec::with_capacity(list.len());
    for segment in list {
        // A segment deleted meanwhile, or a size that cannot be had now, leaves its row
        // without one rather than the page without a list.
        let size = match segments_client(&console)
            .size(operator.request(segment_pb::SizeRequest {
                name: segment.name.clone(),
            })?)
            .await
        {
            Ok(answer) => Some(answer.into_inner().size),
            Err(status) => {
                tracing::debug!(segment = %segment.name, error = %status.message(), "no size");
                None
            }
        };
        let rates = console.live.rates(&segment.name);
        rows.push(json!({
            "name": segment.name,
            "filter": segment.filter,
            "description": segment.description,
            "updated_at": rfc3339(segment.updated_at),
            "size": size,
            "entered_last_hour": rates.entered_last_hour,
            "exited_last_hour": rates.exited_last_hour,
        }));
    }
    Ok(Json(Value::Array(rows)))
}

async fn save_segment(
    State(console): State<Console>,
    Path(name): Path<String>,
    operator: Operator,
    Body(draft): Body<Draft>,
) -> Answer<Value> {
    let saved = segments_client(&console)
        .put(operator.request(segment_pb::PutRequest {
            name,
            filter: draft.filter,
            description: draft.description,
            // The console edits filters; a webhook (its secret never shown) stays.
            keep_webhook: true,
            ..Default::default()
        })?)
        .await?
        .into_inner()
        .segment
        .ok_or_else(|| ConsoleError::Corrupt("Put answered no segment".into()))?;
    Ok(Json(json!({
        "name": saved.name,
        "filter": saved.filter,
        "updated_at": rfc3339(saved.updated_at),
    })))
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<u64>,
}

async fn members(
    State(console): State<Console>,
    Path(name): Path<String>,
    Params(limit): Params<Limit>,
    operator: Operator,
) -> Answer<Value> {
    let mut stream = segments_client(&console)
        .members(operator.request(segment_pb::MembersRequest {
            name,
            with_profiles: false,
            limit: limit.limit.unwrap_or(50).clamp(1, 1000),
        })?)
        .await?
        .into_inner();
    let mut members = Vec::new();
    while let Some(member) = stream.message().await? {
        members.push(json!({ "profile_id": member.profile_id, "since": rfc3339(member.since) }));
    }
    Ok(Json(Value::Array(members)))
}

#[derive(Deserialize)]
struct ProfileRef {
    profile: String,
}

async fn explain(
    State(console): State<Console>,
    Path(name): Path<String>,
    Params(profile): Params<ProfileRef>,
    operator: Operator,
) -> Answer<Value> {
    let explained = segments_client(&console)
        .explain(operator.request(segment_pb::ExplainRequest {
            segment: name,
            profile_id: profile.profile,
        })?)
        .await?
        .into_inner();
    let explanation: Value = serde_json::from_str(&explained.explanation_json)
        .map_err(|err| ConsoleError::Corrupt(format!("explanation: {err}")))?;
    Ok(Json(
        json!({ "matches": explained.matches, "explanation": explanation }),
    ))
}

/// A profile to find: by id, or by an identifier.
#[derive(Deserialize)]
struct Lookup {
    /// `id`, or an identifier type (`email`, `user_id`, `anonymous_id`, ...).
    kind: String,
    value: String,
}

async fn profile(
    State(console): State<Console>,
    Params(lookup): Params<Lookup>,
    operator: Operator,
) -> Answer<Value> {
    let value = lookup.value.trim().to_string();
    if value.is_empty() {
        return Err(ConsoleError::BadRequest(
            "value: give what to look for".into(),
        ));
    }
    let key = match lookup.kind.trim() {
        "" => {
            return Err(ConsoleError::BadRequest(
                "kind: give id or an identifier type".into(),
            ));
        }
        "id" => profile_pb::get_request::Key::ProfileId(value),
        kind => profile_pb::get_request::Key::Identifier(Identifier {
            r#type: kind.to_string(),
            value,
        }),
    };
    let found = ProfilesClient::new(console.endpoints.profile_store.clone())
        .get(operator.request(profile_pb::GetRequest { key: Some(key) })?)
        .await?
        .into_inner();
    let profile: Value = serde_json::from_str(&found.profile_json)
        .map_err(|err| ConsoleError::Corrupt(format!("profile: {err}")))?;
    Ok(Json(json!({
        "profile_id": found.profile_id,
        "version": found.version,
        "profile": profile,
    })))
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    page_token: String,
}

async fn timeline(
    State(console): State<Console>,
    Path(id): Path<String>,
    Params(page): Params<Page>,
    operator: Operator,
) -> Answer<Value> {
    let found = ProfilesClient::new(console.endpoints.profile_store.clone())
        .timeline(operator.request(profile_pb::TimelineRequest {
            profile_id: id,
            page_token: page.page_token,
            page_size: 50,
        })?)
        .await?
        .into_inner();
    let entries: Vec<Value> = found
        .entries
        .into_iter()
        .map(|entry| {
            json!({
                "at": rfc3339(entry.at),
                "message_id": entry.message_id,
                "event": serde_json::from_str::<Value>(&entry.event_json).unwrap_or(Value::String(entry.event_json)),
            })
        })
        .collect();
    Ok(Json(
        json!({ "entries": entries, "next_page_token": found.next_page_token }),
    ))
}

fn campaigns_client(console: &Console) -> CampaignsClient<tonic::transport::Channel> {
    CampaignsClient::new(console.endpoints.segmenter.clone())
}

/// A campaign's state machine, for the diagram: its states, the transitions with what
/// fires them, and the actions taken on entering each state.
fn graph(source: &str) -> Value {
    let Ok(campaign) = Campaign::parse(source) else {
        return Value::Null;
    };
    let transitions: Vec<Value> = campaign
        .transitions
        .iter()
        .map(|transition| {
            let label = match &transition.on {
                On::Event { name, when: None } => format!("on {name}"),
                On::Event {
                    name,
                    when: Some(_),
                } => format!("on {name} (when …)"),
                On::Entered(segment) => format!("entered {segment}"),
                On::Exited(segment) => format!("exited {segment}"),
                On::After { after, without } => match without {
                    Some(event) => format!("after {} without {event}", duration(*after)),
                    None => format!("after {} idle", duration(*after)),
                },
            };
            json!({ "from": transition.from, "to": transition.to, "label": label })
        })
        .collect();
    let actions: BTreeMap<&str, Vec<Value>> = campaign
        .actions
        .iter()
        .map(|(state, actions)| {
            let list = actions
                .iter()
                .map(|action| match &action.channel {
                    Channel::Email { template, .. } => {
                        json!({ "channel": "email", "target": template })
                    }
                    Channel::Web { content } => json!({ "channel": "web", "target": content }),
                    Channel::Webhook { url } => json!({ "channel": "webhook", "target": url }),
                })
                .collect();
            (state.as_str(), list)
        })
        .collect();
    json!({
        "start": START,
        "states": campaign.states(),
        "final": campaign.states().into_iter().filter(|state| campaign.is_final(state)).collect::<Vec<_>>(),
        "transitions": transitions,
        "actions": actions,
    })
}

fn duration(duration: std::time::Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0 => format!("{}ms", duration.as_millis()),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

async fn campaigns(State(console): State<Console>, operator: Operator) -> Answer<Value> {
    let list = campaigns_client(&console)
        .list(operator.request(campaign_pb::ListRequest {})?)
        .await?
        .into_inner()
        .campaigns;
    let mut rows = Vec::with_capacity(list.len());
    for campaign in list {
        let stats = match campaigns_client(&console)
            .stats(operator.request(campaign_pb::StatsRequest {
                name: campaign.name.clone(),
            })?)
            .await
        {
            Ok(answer) => answer.into_inner(),
            Err(status) => {
                tracing::debug!(campaign = %campaign.name, error = %status.message(), "no stats");
                campaign_pb::StatsResponse::default()
            }
        };
        rows.push(json!({
            "name": campaign.name,
            "paused": campaign.paused,
            "updated_at": rfc3339(campaign.updated_at),
            "source": campaign.source,
            "graph": graph(&campaign.source),
            "stats": {
                "profiles": stats.profiles,
                "entered": stats.entered,
                "in_state": stats.in_state,
                "actions_sent": stats.actions_sent,
                "suppressed": stats.suppressed,
            },
        }));
    }
    Ok(Json(Value::Array(rows)))
}

async fn pause(
    State(console): State<Console>,
    Path(name): Path<String>,
    operator: Operator,
) -> Answer<Value> {
    let campaign = campaigns_client(&console)
        .pause(operator.request(campaign_pb::PauseRequest { name })?)
        .await?
        .into_inner()
        .campaign;
    Ok(Json(
        json!({ "paused": campaign.is_some_and(|campaign| campaign.paused) }),
    ))
}

async fn resume(
    State(console): State<Console>,
    Path(name): Path<String>,
    operator: Operator,
) -> Answer<Value> {
    let campaign = campaigns_client(&console)
        .resume(operator.request(campaign_pb::ResumeRequest { name })?)
        .await?
        .into_inner()
        .campaign;
    Ok(Json(
        json!({ "paused": campaign.is_some_and(|campaign| campaign.paused) }),
    ))
}

async fn template_preview(
    State(console): State<Console>,
    Path(name): Path<String>,
    Params(profile): Params<ProfileRef>,
    operator: Operator,
) -> Answer<Value> {
    let preview = TemplatesClient::new(console.endpoints.dispatcher.clone())
        .preview(operator.request(dispatch_pb::PreviewRequest {
            name,
            profile_id: profile.profile,
            params_json: String::new(),
        })?)
        .await?
        .into_inner();
    Ok(Json(json!({
        "to": preview.to,
        "subject": preview.subject,
        "text": preview.text,
        "html": preview.html,
    })))
}

async fn live(State(console): State<Console>, _operator: Operator) -> Answer<Value> {
    let snapshot = console.live.snapshot().await?;
    serde_json::to_value(snapshot)
        .map(Json)
        .map_err(|err| ConsoleError::Corrupt(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_campaign_is_drawn_from_its_definition() {
        let drawn = graph(
            "name: carts\naudience: EXISTS email\ntransitions:\n  - {from: start, to: carting, event: add_to_cart}\n  - {from: carting, to: abandoned, after: 4h, without: add_to_cart}\nactions:\n  abandoned:\n    - {channel: email, template: reminder}\n",
        );
        assert_eq!(drawn["start"], "start");
        assert_eq!(drawn["states"], json!(["abandoned", "carting", "start"]));
        assert_eq!(drawn["final"], json!(["abandoned"]));
        assert_eq!(
            drawn["transitions"],
            json!([
                {"from": "start", "to": "carting", "label": "on add_to_cart"},
                {"from": "carting", "to": "abandoned", "label": "after 4h without add_to_cart"},
            ])
        );
        assert_eq!(
            drawn["actions"]["abandoned"],
            json!([{"channel": "email", "target": "reminder"}])
        );
        assert_eq!(graph("not: [a campaign"), Value::Null);
    }

    #[test]
    fn durations_read_in_their_largest_whole_unit() {
        use std::time::Duration;
        assert_eq!(duration(Duration::from_secs(2 * 86_400)), "2d");
        assert_eq!(duration(Duration::from_secs(7_200)), "2h");
        assert_eq!(duration(Duration::from_secs(90)), "90s");
        assert_eq!(duration(Duration::from_secs(1_200)), "20m");
        assert_eq!(duration(Duration::from_millis(500)), "500ms");
    }
}
