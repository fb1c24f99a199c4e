//! Campaign definitions: what a marketer writes (YAML or JSON), read and checked into a
//! [`Campaign`] the state machine runs.
//!
//! ```yaml
//! name: cart_recovery
//! audience: "FILTER EXISTS email"       # FilterQL, or the name of a segment
//! reentry: every 7d                      # once (default) | always | every <duration>
//! cap: 2 per 1d                          # at most 2 actions per profile per day
//! transitions:
//!   - {from: start, to: carting, event: add_to_cart, when: "properties.cart_items < 4"}
//!   - {from: carting, to: bought, event: order_completed}
//!   - {from: carting, to: abandoned, after: 4h, without: add_to_cart}
//! actions:
//!   abandoned:
//!     - {channel: email, template: cart_reminder, params: {section: event.properties.section}}
//!     # send_at: best_hour  — wait for the profile's best send hour (activity enricher)
//! # email_tracking: false               # no click or open tracking in its emails
//! ```
//!
//! Every profile starts in `start`. A transition fires on an event (optionally with a
//! FilterQL condition on it), on entering or leaving a segment, or after a time without
//! an event (any event, or the one named by `without`). Entering a state runs its
//! actions. A state with no way out ends the journey; `reentry` says whether and when the
//! profile may start again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cairn_filterql::{FieldType, Filter, Schema};
use serde::Deserialize;

use crate::error::SegmentError;

/// The state every profile starts in.
pub const START: &str = "start";

/// Longest inactivity a transition may wait for.
const MAX_AFTER: Duration = Duration::from_secs(366 * 86_400);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CampaignSpec {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default)]
    start_at: Option<String>,
    #[serde(default)]
    stop_at: Option<String>,
    #[serde(default)]
    reentry: Option<String>,
    #[serde(default)]
    cap: Option<String>,
    /// Click and open tracking in the campaign's emails (on unless `false`).
    #[serde(default)]
    email_tracking: Option<bool>,
    transitions: Vec<TransitionSpec>,
    #[serde(default)]
    actions: BTreeMap<String, Vec<ActionSpec>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransitionSpec {
    from: String,
    to: String,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    when: Option<String>,
    #[serde(default)]
    entered: Option<String>,
    #[serde(default)]
    exited: Option<String>,
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    without: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionSpec {
    channel: String,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    params: BTreeMap<String, String>,
    #[serde(default)]
    send_at: Option<String>,
}

/// Who may enter.
#[derive(Debug, Clone, PartialEq)]
pub enum Audience {
    Everyone,
    /// Members of a saved segment.
    Segment(String),
    /// Profiles matching a filter.
    Filter(Filter),
}

/// Whether a profile whose journey ended may start again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reentry {
    Once,
    Always,
    /// When its last entry is at least this long ago.
    Every(Duration),
}

/// At most `actions` actions per profile in any `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    pub actions: u32,
    pub per: Duration,
}

/// What makes a transition fire.
#[derive(Debug, Clone, PartialEq)]
pub enum On {
    /// An event of this name, matching the condition when there is one.
    Event {
        name: String,
        when: Option<Filter>,
    },
    Entered(String),
    Exited(String),
    /// This long in the state without an event (of the name given, or any).
    After {
        after: Duration,
        without: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: String,
    pub to: String,
    pub on: On,
}

/// Where an action goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// A template sent by the email dispatcher; at the profile's best send hour (from
    /// the activity enricher) when `best_hour`, else as soon as quiet hours allow;
    /// its links and opens tracked when `tracked`.
    Email {
        template: String,
        best_hour: bool,
        tracked: bool,
    },
    /// Content answered by the personalization API while the profile is on the site.
    Web { content: String },
    /// An HTTP POST, signed like segment webhooks.
    Webhook { url: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionDef {
    pub channel: Channel,
    /// Parameter → where its value comes from (`event.properties.section`,
    /// `profile.facts.content.top_topics`).
    pub params: BTreeMap<String, String>,
}

/// A checked campaign.
#[derive(Debug, Clone, PartialEq)]
pub struct Campaign {
    pub name: String,
    pub description: String,
    pub audience: Audience,
    pub start_ms: Option<i64>,
    pub stop_ms: Option<i64>,
    pub reentry: Reentry,
    pub cap: Option<Cap>,
    pub transitions: Vec<Transition>,
    pub actions: BTreeMap<String, Vec<ActionDef>>,
}

impl Campaign {
    /// Reads a campaign from YAML (JSON is YAML too), with every problem named by where
    /// it is (`transitions[2].after: ...`).
    pub fn parse(source: &str) -> Result<Campaign, SegmentError> {
        let spec: CampaignSpec = serde_yaml::from_str(source)
            .map_err(|err| SegmentError::InvalidArgument(format!("campaign: {err}")))?;
        let mut problems = Vec::new();
        let campaign = check(spec, &mut problems);
        match campaign {
            Some(campaign) if problems.is_empty() => Ok(campaign),
            _ => Err(SegmentError::InvalidArgument(format!(
                "campaign: {}",
                problems.join("; ")
            ))),
        }
    }

    /// The states: `start`, and every state a transition leads from or to.
    pub fn states(&self) -> BTreeSet<&str> {
        std::iter::once(START)
            .chain(
                self.transitions
                    .iter()
                    .flat_map(|transition| [transition.from.as_str(), transition.to.as_str()]),
            )
            .collect()
    }

    /// Whether `state` has no way out (the journey ends there).
    pub fn is_final(&self, state: &str) -> bool {
        !self
            .transitions
            .iter()
            .any(|transition| transition.from == state)
    }
}

/// The fields an event condition may read.
struct EventSchema;

impl Schema for EventSchema {
    fn subject(&self) -> &str {
        "the event"
    }
    fn field_type(&self, field: &str) -> Option<FieldType> {
        let top = field.split('.').next().unwrap_or_default();
        match (top, field.contains('.')) {
            ("properties" | "context", _) => Some(FieldType::Any),
            ("event" | "type", false) => Some(FieldType::Text),
            _ => None,
        }
    }
}

fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `FILTER <source>` unless it says FILTER already.
fn filter_text(source: &str) -> String {
    let trimmed = source.trim_start();
    if trimmed
        .get(..6)
        .is_some_and(|word| word.eq_ignore_ascii_case("filter"))
    {
        source.to_string()
    } else {
        format!("FILTER {source}")
    }
}

fn duration(text: &str) -> Result<Duration, String> {
    cairn_runtime::config::parse_duration(text.trim())
}

fn time_ms(text: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|at| at.timestamp_millis())
        .map_err(|err| format!("{text:?} is not an RFC 3339 time: {err}"))
}

fn check(spec: CampaignSpec, problems: &mut Vec<String>) -> Option<Campaign> {
    if !name_ok(&spec.name) {
        problems.push(format!(
            "name: {:?} must be 1 to 100 letters, digits, _ or -",
            spec.name
        ));
    }
    let audience = match spec.audience.as_deref().map(str::trim) {
        None | Some("") => Audience::Everyone,
        Some(name) if name_ok(name) => Audience::Segment(name.to_string()),
        Some(source) => match cairn_filterql::parse(&filter_text(source)) {
            Ok(filter) => {
                let found =
                    cairn_filterql::check(&filter, &cairn_profile_store::profile::ProfileSchema);
                problems.extend(
                    found
                        .into_iter()
                        .map(|problem| format!("audience: {problem}")),
                );
                Audience::Filter(filter)
            }
            Err(err) => {
                problems.push(format!("audience: {err}"));
                Audience::Everyone
            }
        },
    };
    let mut moment = |field: &str, text: Option<&str>| {
        text.and_then(|text| match time_ms(text) {
            Ok(ms) => Some(ms),
            Err(err) => {
                problems.push(format!("{field}: {err}"));
                None
            }
        })
    };
    let start_ms = moment("start_at", spec.start_at.as_deref());
    let stop_ms = moment("stop_at", spec.stop_at.as_deref());
    if let (Some(start), Some(stop)) = (start_ms, stop_ms)
        && stop <= start
    {
        problems.push("stop_at: must be after start_at".to_string());
    }
    let reentry = match spec.reentry.as_deref().map(str::trim) {
        None | Some("once") => Reentry::Once,
        Some("always") => Reentry::Always,
        Some(other) => match other.strip_prefix("every ").map(duration) {
            Some(Ok(every)) if !every.is_zero() => Reentry::Every(every),
            _ => {
                problems.push(format!(
                    "reentry: {other:?} must be once, always or every <duration> (every 7d)"
                ));
                Reentry::Once
            }
        },
    };
    let cap = spec.cap.as_deref().and_then(|text| {
        let parsed = text.split_once(" per ").and_then(|(count, per)| {
            let actions = count.trim().parse::<u32>().ok().filter(|n| *n > 0)?;
            let per = duration(per).ok().filter(|per| !per.is_zero())?;
            Some(Cap { actions, per })
        });
        if parsed.is_none() {
            problems.push(format!(
                "cap: {text:?} must read <actions> per <duration> (2 per 1d)"
            ));
        }
        parsed
    });
    if spec.transitions.is_empty() {
        problems.push("transitions: a campaign needs at least one".to_string());
    }
    let mut transitions = Vec::new();
    for (index, transition) in spec.transitions.into_iter().enumerate() {
        let at = format!("transitions[{index}]");
        if let Some(on) = check_transition(&at, &transition, problems) {
            for (field, state) in [("from", &transition.from), ("to", &transition.to)] {
                if !name_ok(state) {
                    problems.push(format!(
                        "{at}.{field}: {state:?} must be 1 to 100 letters, digits, _ or -"
                    ));
                }
            }
            if transition.to == START {
                problems.push(format!("{at}.to: no transition leads back to start"));
            }
            transitions.push(Transition {
                from: transition.from,
                to: transition.to,
                on,
            });
        }
    }
    if !transitions.is_empty() && !transitions.iter().any(|t| t.from == START) {
        problems.push("transitions: none leads out of start".to_string());
    }
    let mut campaign = Campaign {
        name: spec.name,
        description: spec.description,
        audience,
        start_ms,
        stop_ms,
        reentry,
        cap,
        transitions,
        actions: BTreeMap::new(),
    };
    let states: BTreeSet<String> = campaign.states().into_iter().map(str::to_string).collect();
    let tracked = spec.email_tracking.unwrap_or(true);
    for (state, actions) in spec.actions {
        if !states.contains(&state) {
            problems.push(format!(
                "actions.{state}: no transition leads to a state {state:?}"
            ));
            continue;
        }
        let mut checked = Vec::new();
        for (index, action) in actions.into_iter().enumerate() {
            let at = format!("actions.{state}[{index}]");
            if let Some(action) = check_action(&at, action, tracked, problems) {
                checked.push(action);
            }
        }
        campaign.actions.insert(state, checked);
    }
    Some(campaign)
}

fn check_transition(
    at: &str,
    transition: &TransitionSpec,
    problems: &mut Vec<String>,
) -> Option<On> {
    let given = [
        transition.event.is_some(),
        transition.entered.is_some(),
        transition.exited.is_some(),
        transition.after.is_some(),
    ]
    .into_iter()
    .filter(|given| *given)
    .count();
    if given != 1 {
        problems.push(format!(
            "{at}: give exactly one of event, entered, exited, after"
        ));
        return None;
    }
    if transition.when.is_some() && transition.event.is_none() {
        problems.push(format!("{at}.when: only goes with event"));
    }
    if transition.without.is_some() && transition.after.is_none() {
        problems.push(format!("{at}.without: only goes with after"));
    }
    if let Some(name) = &transition.event {
        if name.trim().is_empty() {
            problems.push(format!("{at}.event: empty"));
            return None;
        }
        let when = match &transition.when {
            None => None,
            Some(source) => match cairn_filterql::parse(&filter_text(source)) {
                Ok(filter) => {
                    let found = cairn_filterql::check(&filter, &EventSchema);
                    problems.extend(found.into_iter().map(|problem| {
                        format!("{at}.when: {problem} (conditions read properties.*, context.*, event, type)")
                    }));
                    Some(filter)
                }
                Err(err) => {
                    problems.push(format!("{at}.when: {err}"));
                    None
                }
            },
        };
        return Some(On::Event {
            name: name.clone(),
            when,
        });
    }
    if let Some(segment) = &transition.entered {
        return Some(On::Entered(segment.clone()));
    }
    if let Some(segment) = &transition.exited {
        return Some(On::Exited(segment.clone()));
    }
    let text = transition.after.as_deref().unwrap_or_default();
    match duration(text) {
        Ok(after) if !after.is_zero() && after <= MAX_AFTER => Some(On::After {
            after,
            without: transition.without.clone(),
        }),
        Ok(_) => {
            problems.push(format!("{at}.after: {text:?} must be between 1s and 366d"));
            None
        }
        Err(err) => {
            problems.push(format!("{at}.after: {err}"));
            None
        }
    }
}

fn check_action(
    at: &str,
    action: ActionSpec,
    tracked: bool,
    problems: &mut Vec<String>,
) -> Option<ActionDef> {
    for (param, source) in &action.params {
        if !(source.starts_with("event.") || source.starts_with("profile.")) {
            problems.push(format!(
                "{at}.params.{param}: {source:?} must start with event. or profile."
            ));
        }
    }
    let required = |field: &str, value: Option<String>, problems: &mut Vec<String>| {
        let value = value.filter(|value| !value.trim().is_empty());
        if value.is_none() {
            problems.push(format!(
                "{at}.{field}: required for the {} channel",
                action.channel
            ));
        }
        value
    };
    let channel = match action.channel.as_str() {
        "email" => Channel::Email {
            template: required("template", action.template.clone(), problems)?,
            tracked,
            best_hour: match action.send_at.as_deref().map(str::trim) {
                None | Some("now") => false,
                Some("best_hour") => true,
                Some(other) => {
                    problems.push(format!("{at}.send_at: {other:?} must be now or best_hour"));
                    false
                }
            },
        },
        "web" => {
            let content = required("content", action.content.clone(), problems)?;
            for name in placeholders(&content) {
                if !action.params.contains_key(name) {
                    problems.push(format!(
                        "{at}.content: {{{name}}} is not one of the action's params"
                    ));
                }
            }
            Channel::Web { content }
        }
        "webhook" => {
            let url = required("url", action.url.clone(), problems)?;
            match reqwest::Url::parse(&url) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
                _ => {
                    problems.push(format!("{at}.url: {url:?} must be an http or https URL"));
                    return None;
                }
            }
            Channel::Webhook { url }
        }
        other => {
            problems.push(format!(
                "{at}.channel: {other:?} must be email, web or webhook"
            ));
            return None;
        }
    };
    Some(ActionDef {
        channel,
        params: action.params,
    })
}

/// The names of the `{name}` placeholders in web content (letters, digits and `_`;
/// other braces are text).
pub fn placeholders(content: &str) -> impl Iterator<Item = &str> {
    content.split('{').skip(1).filter_map(|rest| {
        let (name, _) = rest.split_once('}')?;
        (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            .then_some(name)
    })
}

/// Web content with each placeholder replaced by its parameter (text as it is, other
/// values as JSON, nothing for a parameter the profile or event did not have).
pub fn render(content: &str, params: &serde_json::Value) -> String {
    // One pass over the content: a value holding `{other}` stays as it is.
    let mut rendered = String::with_capacity(content.len());
    let mut rest = content;
    while let Some(open) = rest.find('{') {
        rendered.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let name = after.split_once('}').map(|(name, _)| name).filter(|name| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        match name {
            Some(name) => {
                match &params[name] {
                    serde_json::Value::String(text) => rendered.push_str(text),
                    serde_json::Value::Null => {}
                    other => rendered.push_str(&other.to_string()),
                }
                rest = &after[name.len() + 1..];
            }
            None => {
                rendered.push('{');
                rest = after;
            }
        }
    }
    rendered.push_str(rest);
    rendered
}

#[cfg(test)]
mod tests {
    use super::*;

    const CART: &str = r#"
name: cart_recovery
audience: "EXISTS email"
reentry: every 7d
cap: 2 per 1d
transitions:
  - {from: start, to: carting, event: add_to_cart, when: "properties.cart_items < 4"}
  - {from: carting, to: bought, event: order_completed}
  - {from: carting, to: abandoned, after: 4h, without: add_to_cart}
actions:
  abandoned:
    - {channel: email, template: cart_reminder, params: {section: event.properties.section}}
"#;

    #[test]
    fn a_campaign_reads_from_yaml() {
        let campaign = Campaign::parse(CART).unwrap();
        assert_eq!(campaign.name, "cart_recovery");
        assert!(matches!(campaign.audience, Audience::Filter(_)));
        assert_eq!(
            campaign.reentry,
            Reentry::Every(Duration::from_secs(7 * 86_400))
        );
        assert_eq!(
            campaign.cap,
            Some(Cap {
                actions: 2,
                per: Duration::from_secs(86_400)
            })
        );
        assert_eq!(
            campaign.transitions[2].on,
            On::After {
                after: Duration::from_secs(4 * 3600),
                without: Some("add_to_cart".into())
            }
        );
        assert_eq!(
            campaign.states().into_iter().collect::<Vec<_>>(),
            vec!["abandoned", "bought", "carting", "start"]
        );
        assert!(campaign.is_final("abandoned") && !campaign.is_final("carting"));
        assert_eq!(
            campaign.actions["abandoned"][0].channel,
            Channel::Email {
                template: "cart_reminder".into(),
                best_hour: false,
                tracked: true,
            }
        );
        // A campaign may turn click and open tracking off for its emails.
        let untracked = Campaign::parse(&format!("email_tracking: false\n{CART}")).unwrap();
        assert!(matches!(
            untracked.actions["abandoned"][0].channel,
            Channel::Email { tracked: false, .. }
        ));
        // JSON is YAML too.
        let json = r#"{"name": "vip", "audience": "vips",
            "transitions": [{"from": "start", "to": "welcomed", "entered": "vips"}]}"#;
        let vip = Campaign::parse(json).unwrap();
        assert_eq!(vip.audience, Audience::Segment("vips".into()));
        assert_eq!(vip.reentry, Reentry::Once);
    }

    #[test]
    fn every_problem_is_named_by_where_it_is() {
        let cases = [
            (
                "name: x\ntransitions: []\nextra: 1",
                "unknown field `extra`",
            ),
            (
                "name: x\ntransitions: []",
                "transitions: a campaign needs at least one",
            ),
            (
                "name: x\ntransitions: [{from: start, to: a, event: e, after: 1h}]",
                "transitions[0]: give exactly one of event, entered, exited, after",
            ),
            (
                "name: x\ntransitions: [{from: start, to: a, event: e, when: 'properties.n <'}]",
                "transitions[0].when: line 1, column",
            ),
            (
                "name: x\ntransitions: [{from: start, to: a, event: e, when: 'visit_count > 1'}]",
                "transitions[0].when: visit_count > 1: the event has no field \"visit_count\"",
            ),
            (
                "name: x\ntransitions: [{from: start, to: a, after: soon}]",
                "transitions[0].after:",
            ),
            (
                "name: x\ntransitions: [{from: a, to: b, event: e}]",
                "transitions: none leads out of start",
            ),
            (
                "name: x\ntransitions: [{from: start, to: start, event: e}]",
                "transitions[0].to: no transition leads back to start",
            ),
            (
                "name: x\nreentry: sometimes\ntransitions: [{from: start, to: a, event: e}]",
                "reentry: \"sometimes\" must be once, always or every <duration>",
            ),
            (
                "name: x\ncap: lots\ntransitions: [{from: start, to: a, event: e}]",
                "cap: \"lots\" must read <actions> per <duration>",
            ),
            (
                "name: x\nstart_at: tomorrow\ntransitions: [{from: start, to: a, event: e}]",
                "start_at: \"tomorrow\" is not an RFC 3339 time",
            ),
            (
                "name: x\naudience: 'visit_count >'\ntransitions: [{from: start, to: a, event: e}]",
                "audience: line 1, column",
            ),
            (
                "name: x\ntransitions: [{from: start, to: a, event: e}]\nactions: {b: []}",
                "actions.b: no transition leads to a state \"b\"",
            ),
            (
                "name: x\ntransitions: [{from: start, to: a, event: e}]\nactions: {a: [{channel: sms}]}",
                "actions.a[0].channel: \"sms\" must be email, web or webhook",
            ),
            (
                "name: x\ntransitions: [{from: start, to: a, event: e}]\nactions: {a: [{channel: email}]}",
                "actions.a[0].template: required for the email channel",
            ),
            (
                "name: x\ntransitions: [{from: start, to: a, event: e}]\nactions: {a: [{channel: web, content: hi, params: {s: section}}]}",
                "actions.a[0].params.s: \"section\" must start with event. or profile.",
            ),
            (
                "name: x\ntransitions: [{from: start, to: a, event: e}]\nactions: {a: [{channel: web, content: '1+1 on {section}'}]}",
                "actions.a[0].content: {section} is not one of the action's params",
            ),
            (
                "name: x\ntransitions: [{from: start, to: a, event: e}]\nactions: {a: [{channel: email, template: t, send_at: noon}]}",
                "actions.a[0].send_at: \"noon\" must be now or best_hour",
            ),
            (
                "name: 'bad name'\ntransitions: [{from: start, to: a, event: e}]",
                "name: \"bad name\" must be 1 to 100 letters",
            ),
        ];
        for (source, expected) in cases {
            let err = Campaign::parse(source).unwrap_err().to_string();
            assert!(err.contains(expected), "{source}\n  gave: {err}");
        }
    }

    #[test]
    fn web_content_is_rendered_from_its_params() {
        let params = serde_json::json!({"section": "shoes", "items": 3, "gone": null});
        assert_eq!(
            render(
                "1+1 on {section}, {items} left{gone} {not a param} {}",
                &params
            ),
            "1+1 on shoes, 3 left {not a param} {}"
        );
        let tricky = serde_json::json!({"a": "{b}", "b": "no"});
        assert_eq!(render("{a} and {b}", &tricky), "{b} and no");
        assert_eq!(
            placeholders("{a}{b_2}{c d}{").collect::<Vec<_>>(),
            vec!["a", "b_2"]
        );
    }
}
