//! Validation of Segment-spec calls, without rewriting them.
//!
//! A request body (already decompressed) becomes a list of [`AcceptedEvent`]s, each
//! holding the exact bytes of one event (the whole body for a single call, the element's
//! byte range for a batch) and what the collector needs to route it. Every rejection
//! names the field and, in a batch, the element's index.

use std::borrow::Cow;

use bytes::Bytes;
use cairn_proto::event::v1::EventType;
use serde::Deserialize;
use serde_json::value::RawValue;

/// Segment's limit on one event.
pub const MAX_EVENT_BYTES: usize = 32 * 1024;
/// Segment's limit on one batch request.
pub const MAX_BATCH_BYTES: usize = 500 * 1024;

/// The Segment call types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallType {
    Track,
    Identify,
    Page,
    Screen,
    Group,
    Alias,
}

impl CallType {
    pub const ALL: [CallType; 6] = [
        CallType::Track,
        CallType::Identify,
        CallType::Page,
        CallType::Screen,
        CallType::Group,
        CallType::Alias,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CallType::Track => "track",
            CallType::Identify => "identify",
            CallType::Page => "page",
            CallType::Screen => "screen",
            CallType::Group => "group",
            CallType::Alias => "alias",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|call| call.name() == name)
    }

    pub fn proto(self) -> EventType {
        match self {
            CallType::Track => EventType::Track,
            CallType::Identify => EventType::Identify,
            CallType::Page => EventType::Page,
            CallType::Screen => EventType::Screen,
            CallType::Group => EventType::Group,
            CallType::Alias => EventType::Alias,
        }
    }
}

/// One validated event.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptedEvent {
    /// The event's bytes exactly as received.
    pub raw: Bytes,
    pub call: CallType,
    /// The event's messageId; `None` when it had none (the collector generates one).
    pub message_id: Option<String>,
    /// anonymousId, else userId: what the partition is computed from.
    pub partition_key: String,
    /// A `writeKey` field in the event itself (some clients send it there).
    pub write_key: Option<String>,
}

/// A validated request: its events, plus what a batch says for all of them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AcceptedRequest {
    pub events: Vec<AcceptedEvent>,
    /// The batch's top-level `sentAt`.
    pub batch_sent_at: Option<String>,
    /// The batch's top-level `context`, as received.
    pub batch_context: Option<Bytes>,
    /// The batch's top-level `writeKey`.
    pub write_key: Option<String>,
}

impl AcceptedRequest {
    /// The write key sent in the body, if any (batch level first).
    pub fn body_write_key(&self) -> Option<&str> {
        self.write_key.as_deref().or_else(|| {
            self.events
                .iter()
                .find_map(|event| event.write_key.as_deref())
        })
    }
}

/// Why a request was refused. The message names the limit or the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("request body is {size} bytes; the limit is {limit_kb} KB {per}")]
    TooLarge {
        size: usize,
        limit_kb: usize,
        per: &'static str,
    },
    #[error("request body is more than {limit_kb} KB; the limit is {limit_kb} KB {per}")]
    BodyTooLarge { limit_kb: usize, per: &'static str },
    #[error("{at}event is {size} bytes; the limit is {} KB per event", MAX_EVENT_BYTES / 1024)]
    EventTooLarge { at: At, size: usize },
    #[error("invalid JSON at line {line}, column {column}: {reason}")]
    Json {
        line: usize,
        column: usize,
        reason: String,
    },
    #[error("{at}{field}: {problem}")]
    Field {
        at: At,
        field: &'static str,
        problem: String,
    },
    #[error("body is not valid gzip: {0}")]
    Gzip(String),
}

/// Where in the request an error is: nothing for a single call, `batch[i].` in an HTTP
/// batch, `events[i].` in a gRPC request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At(Option<(&'static str, usize)>);

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some((list, index)) => write!(f, "{list}[{index}]."),
            None => Ok(()),
        }
    }
}

fn field(at: At, field: &'static str, problem: impl Into<String>) -> Rejection {
    Rejection::Field {
        at,
        field,
        problem: problem.into(),
    }
}

fn json_error(err: &serde_json::Error) -> Rejection {
    let reason = err.to_string();
    // serde_json appends " at line L column C"; the position is reported separately.
    let reason = match reason.rfind(" at line ") {
        Some(index) => reason[..index].to_string(),
        None => reason,
    };
    Rejection::Json {
        line: err.line(),
        column: err.column(),
        reason,
    }
}

/// The fields the collector checks. Everything else passes through untouched.
#[derive(Deserialize)]
struct EventFields<'a> {
    #[serde(rename = "type", borrow)]
    call: Option<&'a RawValue>,
    #[serde(rename = "messageId", borrow)]
    message_id: Option<&'a RawValue>,
    #[serde(rename = "userId", borrow)]
    user_id: Option<&'a RawValue>,
    #[serde(rename = "anonymousId", borrow)]
    anonymous_id: Option<&'a RawValue>,
    #[serde(borrow)]
    event: Option<&'a RawValue>,
    #[serde(rename = "groupId", borrow)]
    group_id: Option<&'a RawValue>,
    #[serde(rename = "previousId", borrow)]
    previous_id: Option<&'a RawValue>,
    #[serde(borrow)]
    timestamp: Option<&'a RawValue>,
    #[serde(rename = "originalTimestamp", borrow)]
    original_timestamp: Option<&'a RawValue>,
    #[serde(rename = "sentAt", borrow)]
    sent_at: Option<&'a RawValue>,
    #[serde(borrow)]
    context: Option<&'a RawValue>,
    #[serde(borrow)]
    properties: Option<&'a RawValue>,
    #[serde(borrow)]
    traits: Option<&'a RawValue>,
    #[serde(borrow)]
    integrations: Option<&'a RawValue>,
    #[serde(rename = "writeKey", borrow)]
    write_key: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct BatchBody<'a> {
    #[serde(borrow)]
    batch: Option<&'a RawValue>,
    #[serde(rename = "sentAt", borrow)]
    sent_at: Option<&'a RawValue>,
    #[serde(borrow)]
    context: Option<&'a RawValue>,
    #[serde(rename = "writeKey", borrow)]
    write_key: Option<&'a RawValue>,
}

fn is_null(raw: &RawValue) -> bool {
    raw.get().trim() == "null"
}

/// A present, non-null field.
fn present(raw: Option<&RawValue>) -> Option<&RawValue> {
    raw.filter(|raw| !is_null(raw))
}

fn string_field<'a>(
    at: At,
    name: &'static str,
    raw: &'a RawValue,
) -> Result<Cow<'a, str>, Rejection> {
    serde_json::from_str::<Cow<'a, str>>(raw.get()).map_err(|_| field(at, name, "must be a string"))
}

/// An identifier: Segment allows strings and numbers. Empty strings count as absent.
fn id_field(
    at: At,
    name: &'static str,
    raw: Option<&RawValue>,
) -> Result<Option<String>, Rejection> {
    let Some(raw) = present(raw) else {
        return Ok(None);
    };
    let text = raw.get().trim();
    if text.starts_with('"') {
        let value = string_field(at, name, raw)?;
        let value = value.trim();
        return Ok((!value.is_empty()).then(|| value.to_string()));
    }
    if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        return Ok(Some(text.to_string()));
    }
    Err(field(at, name, "must be a string or a number"))
}

fn object_field(at: At, name: &'static str, raw: Option<&RawValue>) -> Result<(), Rejection> {
    match present(raw) {
        Some(raw) if !raw.get().trim_start().starts_with('{') => {
            Err(field(at, name, "must be a JSON object"))
        }
        _ => Ok(()),
    }
}

fn timestamp_field(
    at: At,
    name: &'static str,
    raw: Option<&RawValue>,
) -> Result<Option<String>, Rejection> {
    let Some(raw) = present(raw) else {
        return Ok(None);
    };
    let value = string_field(at, name, raw)?;
    if parse_timestamp(&value).is_none() {
        return Err(field(
            at,
            name,
            format!("not an ISO 8601 date-time: {value:?}"),
        ));
    }
    Ok(Some(value.into_owned()))
}

/// RFC 3339, or ISO 8601 with a `+hhmm` offset as some SDKs send.
pub fn parse_timestamp(value: &str) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_rfc3339(value)
        .or_else(|_| chrono::DateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .ok()
}

/// Validates one event. `endpoint` is the call type of a single-call endpoint; `None`
/// for a batch element, whose `type` field decides.
fn validate_event(
    raw: &RawValue,
    at: At,
    endpoint: Option<CallType>,
) -> Result<ValidEvent, Rejection> {
    let size = raw.get().len();
    if size > MAX_EVENT_BYTES {
        return Err(Rejection::EventTooLarge { at, size });
    }
    if !raw.get().trim_start().starts_with('{') {
        return Err(match at.0 {
            Some((list, index)) => field(
                At(None),
                list,
                format!("element {index} must be a JSON object"),
            ),
            None => field(at, "body", "must be a JSON object"),
        });
    }
    let fields: EventFields<'_> =
        serde_json::from_str(raw.get()).map_err(|err| json_error(&err))?;

    let declared = match present(fields.call) {
        Some(raw) => Some(string_field(at, "type", raw)?),
        None => None,
    };
    let call = match (endpoint, declared) {
        (Some(endpoint), None) => endpoint,
        (Some(endpoint), Some(declared)) => {
            if declared != endpoint.name() {
                return Err(field(
                    at,
                    "type",
                    format!("{declared:?} sent to /v1/{}", endpoint.name()),
                ));
            }
            endpoint
        }
        (None, Some(declared)) => CallType::from_name(&declared).ok_or_else(|| {
            field(
                at,
                "type",
                format!("unknown call type {declared:?} (use track, identify, page, screen, group or alias)"),
            )
        })?,
        (None, None) => {
            return Err(field(
                at,
                "type",
                "required (track, identify, page, screen, group or alias)",
            ));
        }
    };

    let user_id = id_field(at, "userId", fields.user_id)?;
    let anonymous_id = id_field(at, "anonymousId", fields.anonymous_id)?;
    match call {
        CallType::Alias => {
            if id_field(at, "previousId", fields.previous_id)?.is_none() {
                return Err(field(at, "previousId", "required for alias"));
            }
            if user_id.is_none() {
                return Err(field(at, "userId", "required for alias"));
            }
        }
        _ => {
            if user_id.is_none() && anonymous_id.is_none() {
                return Err(field(at, "userId", "userId or anonymousId is required"));
            }
        }
    }
    if call == CallType::Track {
        let event =
            present(fields.event).ok_or_else(|| field(at, "event", "required for track"))?;
        if string_field(at, "event", event)?.trim().is_empty() {
            return Err(field(at, "event", "must not be empty"));
        }
    }
    if call == CallType::Group && id_field(at, "groupId", fields.group_id)?.is_none() {
        return Err(field(at, "groupId", "required for group"));
    }

    let message_id = match present(fields.message_id) {
        Some(raw) => {
            Some(string_field(at, "messageId", raw)?.trim().to_string()).filter(|id| !id.is_empty())
        }
        None => None,
    };
    if let Some(id) = &message_id {
        if id.len() > 256 {
            return Err(field(at, "messageId", "longer than 256 characters"));
        }
        if id.chars().any(char::is_control) {
            return Err(field(
                at,
                "messageId",
                "must not contain control characters",
            ));
        }
    }
    timestamp_field(at, "timestamp", fields.timestamp)?;
    timestamp_field(at, "originalTimestamp", fields.original_timestamp)?;
    timestamp_field(at, "sentAt", fields.sent_at)?;
    object_field(at, "context", fields.context)?;
    object_field(at, "properties", fields.properties)?;
    object_field(at, "traits", fields.traits)?;
    object_field(at, "integrations", fields.integrations)?;
    let write_key = match present(fields.write_key) {
        Some(raw) => Some(string_field(at, "writeKey", raw)?.into_owned()),
        None => None,
    };

    Ok(ValidEvent {
        call,
        message_id,
        partition_key: anonymous_id.or(user_id).unwrap_or_default(),
        write_key,
    })
}

struct ValidEvent {
    call: CallType,
    message_id: Option<String>,
    partition_key: String,
    write_key: Option<String>,
}

/// The byte range of `part` inside `whole`, which it was borrowed from.
fn slice_of(whole: &Bytes, part: &str) -> Bytes {
    let start = (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize);
    whole.slice(start..start + part.len())
}

/// Validates a single call (`/v1/track`, ...): the body is the event.
pub fn parse_single(call: CallType, body: &Bytes) -> Result<AcceptedRequest, Rejection> {
    if body.len() > MAX_EVENT_BYTES {
        return Err(Rejection::TooLarge {
            size: body.len(),
            limit_kb: MAX_EVENT_BYTES / 1024,
            per: "per call",
        });
    }
    let raw: &RawValue = serde_json::from_slice(body).map_err(|err| json_error(&err))?;
    let valid = validate_event(raw, At(None), Some(call))?;
    Ok(AcceptedRequest {
        events: vec![AcceptedEvent {
            raw: body.clone(),
            call: valid.call,
            message_id: valid.message_id,
            partition_key: valid.partition_key,
            write_key: valid.write_key,
        }],
        ..Default::default()
    })
}

/// Validates a `/v1/batch` body: `{"batch": [events...], "sentAt"?, "context"?}`.
pub fn parse_batch(body: &Bytes) -> Result<AcceptedRequest, Rejection> {
    check_batch_size(body.len())?;
    let parsed: BatchBody<'_> = match serde_json::from_slice(body) {
        Ok(parsed) => parsed,
        Err(err) if err.is_data() => {
            return Err(field(
                At(None),
                "body",
                "must be a JSON object with a \"batch\" array",
            ));
        }
        Err(err) => return Err(json_error(&err)),
    };
    let batch = present(parsed.batch)
        .ok_or_else(|| field(At(None), "batch", "required: an array of events"))?;
    let elements: Vec<&RawValue> = serde_json::from_str(batch.get())
        .map_err(|_| field(At(None), "batch", "must be an array of events"))?;
    if elements.is_empty() {
        return Err(field(At(None), "batch", "must contain at least one event"));
    }
    let batch_sent_at = timestamp_field(At(None), "sentAt", parsed.sent_at)?;
    object_field(At(None), "context", parsed.context)?;
    let write_key = match present(parsed.write_key) {
        Some(raw) => Some(string_field(At(None), "writeKey", raw)?.into_owned()),
        None => None,
    };
    let mut events = Vec::with_capacity(elements.len());
    for (index, element) in elements.into_iter().enumerate() {
        let valid = validate_event(element, At(Some(("batch", index))), None)?;
        events.push(AcceptedEvent {
            raw: slice_of(body, element.get()),
            call: valid.call,
            message_id: valid.message_id,
            partition_key: valid.partition_key,
            write_key: valid.write_key,
        });
    }
    Ok(AcceptedRequest {
        events,
        batch_sent_at,
        batch_context: present(parsed.context).map(|raw| slice_of(body, raw.get())),
        write_key,
    })
}

/// Validates events that arrive one by one (gRPC), each a JSON object with its `type`.
pub fn parse_events(events: &[Bytes]) -> Result<AcceptedRequest, Rejection> {
    check_batch_size(events.iter().map(Bytes::len).sum())?;
    if events.is_empty() {
        return Err(field(At(None), "events", "must contain at least one event"));
    }
    let mut accepted = Vec::with_capacity(events.len());
    for (index, bytes) in events.iter().enumerate() {
        let at = At(Some(("events", index)));
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(Rejection::EventTooLarge {
                at,
                size: bytes.len(),
            });
        }
        let raw: &RawValue =
            serde_json::from_slice(bytes).map_err(|err| match json_error(&err) {
                Rejection::Json {
                    line,
                    column,
                    reason,
                } => field(
                    at,
                    "json",
                    format!("invalid JSON at line {line}, column {column}: {reason}"),
                ),
                other => other,
            })?;
        let valid = validate_event(raw, at, None)?;
        accepted.push(AcceptedEvent {
            raw: bytes.clone(),
            call: valid.call,
            message_id: valid.message_id,
            partition_key: valid.partition_key,
            write_key: valid.write_key,
        });
    }
    Ok(AcceptedRequest {
        events: accepted,
        ..Default::default()
    })
}

fn check_batch_size(size: usize) -> Result<(), Rejection> {
    if size > MAX_BATCH_BYTES {
        return Err(Rejection::TooLarge {
            size,
            limit_kb: MAX_BATCH_BYTES / 1024,
            per: "per batch",
        });
    }
    Ok(())
}

/// The body, gunzipped when it is gzip (by `Content-Encoding` or by its magic bytes),
/// refusing to inflate past `limit` bytes.
pub fn decode_body(
    body: Bytes,
    gzip_header: bool,
    limit: usize,
    per: &'static str,
) -> Result<Bytes, Rejection> {
    let is_gzip = gzip_header || body.starts_with(&[0x1f, 0x8b]);
    if !is_gzip {
        return Ok(body);
    }
    use std::io::Read as _;
    let mut inflated = Vec::with_capacity(body.len() * 4);
    flate2::read::MultiGzDecoder::new(body.as_ref())
        .take(limit as u64 + 1)
        .read_to_end(&mut inflated)
        .map_err(|err| Rejection::Gzip(err.to_string()))?;
    if inflated.len() > limit {
        return Err(Rejection::TooLarge {
            size: inflated.len(),
            limit_kb: limit / 1024,
            per,
        });
    }
    Ok(Bytes::from(inflated))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(elements: &str) -> Bytes {
        Bytes::from(format!(
            "{{\"batch\":[{elements}],\"sentAt\":\"2026-11-22T10:00:00Z\"}}"
        ))
    }

    fn error(result: Result<AcceptedRequest, Rejection>) -> String {
        result.unwrap_err().to_string()
    }

    #[test]
    fn batch_elements_keep_their_exact_bytes() {
        let first =
            r#"{"type":"track","event":"Signed Up","userId":"u1",  "properties":{"plan":"pro"}}"#;
        let second = r#"{ "type" : "identify", "anonymousId":"a1", "traits": {"email":"A@B.C"} }"#;
        let body = batch(&format!("{first},\n  {second}"));
        let request = parse_batch(&body).unwrap();
        assert_eq!(request.events.len(), 2);
        assert_eq!(request.events[0].raw, first.as_bytes());
        assert_eq!(request.events[1].raw, second.as_bytes());
        assert_eq!(request.events[0].call, CallType::Track);
        assert_eq!(request.events[0].partition_key, "u1");
        assert_eq!(request.events[1].partition_key, "a1");
        assert_eq!(
            request.batch_sent_at.as_deref(),
            Some("2026-11-22T10:00:00Z")
        );
    }

    #[test]
    fn anonymous_id_decides_the_partition_key() {
        let body = Bytes::from(r#"{"event":"x","userId":"u1","anonymousId":"a1"}"#);
        let request = parse_single(CallType::Track, &body).unwrap();
        assert_eq!(request.events[0].partition_key, "a1");
        assert_eq!(request.events[0].raw, body);
    }

    #[test]
    fn missing_required_fields_are_named_with_their_index() {
        assert_eq!(
            error(parse_batch(&batch(
                r#"{"type":"track","userId":"u"},{"type":"track","userId":"u"}"#
            ))),
            "batch[0].event: required for track"
        );
        assert_eq!(
            error(parse_batch(&batch(
                r#"{"type":"page","userId":"u"},{"type":"page"}"#
            ))),
            "batch[1].userId: userId or anonymousId is required"
        );
        assert_eq!(
            error(parse_batch(&batch(r#"{"type":"group","userId":"u"}"#))),
            "batch[0].groupId: required for group"
        );
        assert_eq!(
            error(parse_batch(&batch(r#"{"type":"alias","userId":"u"}"#))),
            "batch[0].previousId: required for alias"
        );
        assert_eq!(
            error(parse_batch(&batch(r#"{"userId":"u"}"#))),
            "batch[0].type: required (track, identify, page, screen, group or alias)"
        );
        assert_eq!(
            error(parse_batch(&batch(r#"{"type":"click","userId":"u"}"#))),
            "batch[0].type: unknown call type \"click\" (use track, identify, page, screen, group or alias)"
        );
        assert_eq!(
            error(parse_single(
                CallType::Track,
                &Bytes::from(r#"{"userId":"u"}"#)
            )),
            "event: required for track"
        );
        assert_eq!(
            error(parse_single(
                CallType::Identify,
                &Bytes::from(r#"{"userId":""}"#)
            )),
            "userId: userId or anonymousId is required"
        );
    }

    #[test]
    fn wrong_types_are_named() {
        assert_eq!(
            error(parse_single(
                CallType::Track,
                &Bytes::from(r#"{"userId":"u","event":5}"#)
            )),
            "event: must be a string"
        );
        assert_eq!(
            error(parse_single(
                CallType::Page,
                &Bytes::from(r#"{"userId":true}"#)
            )),
            "userId: must be a string or a number"
        );
        assert_eq!(
            error(parse_single(
                CallType::Page,
                &Bytes::from(r#"{"userId":"u","properties":[1]}"#)
            )),
            "properties: must be a JSON object"
        );
        assert_eq!(
            error(parse_single(
                CallType::Page,
                &Bytes::from(r#"{"userId":"u","timestamp":"yesterday"}"#)
            )),
            "timestamp: not an ISO 8601 date-time: \"yesterday\""
        );
        assert_eq!(
            error(parse_single(
                CallType::Page,
                &Bytes::from(r#"{"type":"track","userId":"u"}"#)
            )),
            "type: \"track\" sent to /v1/page"
        );
        assert_eq!(
            error(parse_batch(&batch(r#"{"type":"page","userId":"u"}, 7"#))),
            "batch: element 1 must be a JSON object"
        );
        assert_eq!(
            error(parse_single(
                CallType::Page,
                &Bytes::from(r#"{"userId":"u","messageId":"a\nb"}"#)
            )),
            "messageId: must not contain control characters"
        );
    }

    #[test]
    fn numbers_are_identifiers_and_timestamps_may_use_basic_offsets() {
        let body =
            Bytes::from(r#"{"userId":42,"originalTimestamp":"2026-11-22T10:00:00.123+0100"}"#);
        let request = parse_single(CallType::Identify, &body).unwrap();
        assert_eq!(request.events[0].partition_key, "42");
    }

    #[test]
    fn invalid_json_reports_the_position() {
        let err = error(parse_batch(&Bytes::from(
            "{\"batch\": [\n  {\"type\": \"track\",, }]}",
        )));
        assert_eq!(
            err,
            "invalid JSON at line 2, column 20: key must be a string"
        );
        let err = error(parse_single(CallType::Track, &Bytes::from("")));
        assert!(err.starts_with("invalid JSON at line 1, column 0"), "{err}");
    }

    #[test]
    fn limits_are_named() {
        let big = format!(
            r#"{{"type":"track","event":"x","userId":"u","properties":{{"pad":"{}"}}}}"#,
            "x".repeat(MAX_EVENT_BYTES)
        );
        assert!(error(parse_batch(&batch(&big))).starts_with("batch[0].event is 32"));
        assert!(
            error(parse_single(CallType::Track, &Bytes::from(big.clone())))
                .ends_with("the limit is 32 KB per call")
        );
        let many = vec![r#"{"type":"track","event":"x","userId":"u","properties":{"pad":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}}"#; 6000].join(",");
        assert!(error(parse_batch(&batch(&many))).ends_with("the limit is 500 KB per batch"));
    }

    #[test]
    fn gzip_is_detected_and_bounded() {
        use std::io::Write as _;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&vec![b' '; 600 * 1024]).unwrap();
        let bomb = Bytes::from(encoder.finish().unwrap());
        let err = decode_body(bomb, false, MAX_BATCH_BYTES, "per batch").unwrap_err();
        assert!(
            err.to_string().ends_with("the limit is 500 KB per batch"),
            "{err}"
        );

        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(b"{\"batch\":[]}").unwrap();
        let body = Bytes::from(encoder.finish().unwrap());
        assert_eq!(
            decode_body(body, false, 100, "per batch").unwrap(),
            "{\"batch\":[]}".as_bytes()
        );
        assert!(decode_body(Bytes::from("nope"), true, 100, "per batch").is_err());
    }
}
