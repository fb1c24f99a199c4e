//! The campaign state machine: one profile's journey through one campaign, moved on by
//! its events, its segment changes and its inactivity timers. Pure: the caller keeps
//! the journey, makes its changes idempotent, schedules the timers and sends the actions.

use std::collections::BTreeMap;

use cairn_filterql::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::definition::{Audience, Campaign, Channel, On, Reentry, START};

/// A profile's progress through one campaign.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Journey {
    pub state: String,
    /// In the state since (ms).
    pub since_ms: i64,
    /// How many times it left `start`.
    pub entries: u32,
    pub last_entry_ms: Option<i64>,
    /// The inactivity timers pending: transition index → when due (ms).
    pub timers: BTreeMap<usize, i64>,
    /// When its recent actions went (for the cap), oldest first.
    pub sent_ms: Vec<i64>,
    /// The last event that moved it or put off one of its timers (its name and
    /// properties): what `event.*` parameters read when a timer or a segment moves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event: Option<Value>,
}

impl Default for Journey {
    fn default() -> Self {
        Self {
            state: START.to_string(),
            since_ms: 0,
            entries: 0,
            last_entry_ms: None,
            timers: BTreeMap::new(),
            sent_ms: Vec::new(),
            last_event: None,
        }
    }
}

/// What happened to the profile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Input<'a> {
    /// An event: `event` is its Segment-spec JSON (`event`, `type`, `properties`,
    /// `context`).
    Event {
        name: &'a str,
        event: &'a Value,
        at_ms: i64,
    },
    Segment {
        name: &'a str,
        entered: bool,
        at_ms: i64,
    },
    /// An inactivity timer came due, as set for transition `transition` at `due_ms`.
    Timer { transition: usize, due_ms: i64 },
}

impl Input<'_> {
    fn at_ms(&self) -> i64 {
        match *self {
            Input::Event { at_ms, .. } | Input::Segment { at_ms, .. } => at_ms,
            Input::Timer { due_ms, .. } => due_ms,
        }
    }
}

/// An action to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    /// The state whose entry it belongs to.
    pub state: String,
    pub channel: Channel,
    /// Parameter values, from the event and the profile (null when missing).
    pub params: BTreeMap<String, Value>,
}

/// What a step changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub journey: Journey,
    /// The state entered, if the profile moved.
    pub entered: Option<String>,
    pub actions: Vec<Action>,
    /// Actions the cap held back.
    pub suppressed: u32,
}

/// Moves `journey` (a new one when `None`) on `input`. `in_audience` says whether the
/// profile may enter (leave `start`); `profile` is its view, for action parameters.
/// `None` when nothing changes (a stale timer, an event no transition takes, a
/// campaign not running at that time, a journey over for good).
pub fn step(
    campaign: &Campaign,
    journey: Option<&Journey>,
    input: &Input<'_>,
    in_audience: bool,
    profile: &Value,
) -> Option<Step> {
    let at = input.at_ms();
    if campaign.start_ms.is_some_and(|start| at < start)
        || campaign.stop_ms.is_some_and(|stop| at >= stop)
    {
        return None;
    }
    let mut journey = journey.cloned().unwrap_or_default();
    let mut changed = false;
    // A journey over may start again, as the campaign says.
    if journey.state != START && campaign.is_final(&journey.state) {
        let again = match campaign.reentry {
            Reentry::Once => false,
            Reentry::Always => true,
            Reentry::Every(every) => journey
                .last_entry_ms
                .is_none_or(|last| at - last >= every.as_millis() as i64),
        };
        if !again {
            return None;
        }
        journey.state = START.to_string();
        journey.since_ms = at;
        journey.timers.clear();
        journey.last_event = None;
        changed = true;
    }
    // Events put off the inactivity timers of the state they happen in.
    if let Input::Event { name, at_ms, event } = *input {
        for (index, transition) in campaign.transitions.iter().enumerate() {
            if transition.from != journey.state {
                continue;
            }
            if let On::After { after, without } = &transition.on
                && without.as_deref().is_none_or(|without| without == name)
            {
                let due = at_ms + after.as_millis() as i64;
                let current = journey.timers.entry(index).or_insert(due);
                if *current < due {
                    *current = due;
                }
                journey.last_event = Some(remembered(event));
                changed = true;
            }
        }
    }
    let taken = campaign
        .transitions
        .iter()
        .enumerate()
        .find(|(index, transition)| {
            transition.from == journey.state && takes(&transition.on, *index, input, &journey)
        })
        .map(|(_, transition)| transition);
    let Some(transition) = taken else {
        return changed.then(|| Step {
            journey,
            entered: None,
            actions: Vec::new(),
            suppressed: 0,
        });
    };
    if journey.state == START && !in_audience {
        return changed.then(|| Step {
            journey,
            entered: None,
            actions: Vec::new(),
            suppressed: 0,
        });
    }
    if journey.state == START {
        journey.entries += 1;
        journey.last_entry_ms = Some(at);
    }
    journey.state = transition.to.clone();
    journey.since_ms = at;
    // The timers of the state left go; those of the state entered start now.
    journey.timers = campaign
        .transitions
        .iter()
        .enumerate()
        .filter(|(_, next)| next.from == journey.state)
        .filter_map(|(index, next)| match &next.on {
            On::After { after, .. } => Some((index, at + after.as_millis() as i64)),
            _ => None,
        })
        .collect();
    if let Input::Event { event, .. } = *input {
        journey.last_event = Some(remembered(event));
    }
    let event = journey.last_event.clone().unwrap_or(Value::Null);
    let event = &event;
    let (mut actions, mut suppressed) = (Vec::new(), 0);
    for action in campaign.actions.get(&journey.state).into_iter().flatten() {
        if let Some(cap) = campaign.cap {
            let window_start = at - cap.per.as_millis() as i64;
            journey.sent_ms.retain(|sent| *sent > window_start);
            if journey.sent_ms.len() >= cap.actions as usize {
                suppressed += 1;
                continue;
            }
            journey.sent_ms.push(at);
        }
        let params = action
            .params
            .iter()
            .map(|(name, source)| (name.clone(), param(source, event, profile)))
            .collect();
        actions.push(Action {
            state: journey.state.clone(),
            channel: action.channel.clone(),
            params,
        });
    }
    Some(Step {
        entered: Some(journey.state.clone()),
        journey,
        actions,
        suppressed,
    })
}

/// Whether `input` can change a journey through `campaign` at all: an event a transition
/// waits for or an inactivity timer is put off by, a segment a transition follows, or a
/// timer. What cannot is skipped without reading the journey.
pub fn may_move(campaign: &Campaign, input: &Input<'_>) -> bool {
    campaign
        .transitions
        .iter()
        .any(|transition| match (&transition.on, *input) {
            (On::Event { name, .. }, Input::Event { name: seen, .. }) => name == seen,
            (On::After { without, .. }, Input::Event { name: seen, .. }) => {
                without.as_deref().is_none_or(|without| without == seen)
            }
            (On::Entered(segment) | On::Exited(segment), Input::Segment { name, .. }) => {
                segment == name
            }
            (On::After { .. }, Input::Timer { .. }) => true,
            _ => false,
        })
}

/// Whether transition `index`, whose trigger is `on`, fires on `input`.
fn takes(on: &On, index: usize, input: &Input<'_>, journey: &Journey) -> bool {
    match (on, *input) {
        (
            On::Event { name, when },
            Input::Event {
                name: seen,
                event,
                at_ms,
            },
        ) => {
            name == seen
                && when.as_ref().is_none_or(|filter| {
                    cairn_filterql::matches(
                        &filter.expr,
                        event,
                        &Context {
                            now_ms: at_ms,
                            includes: &|_| None,
                        },
                    )
                })
        }
        (On::Entered(segment), Input::Segment { name, entered, .. }) => segment == name && entered,
        (On::Exited(segment), Input::Segment { name, entered, .. }) => segment == name && !entered,
        // Only the timer as last set: an earlier one, put off since, is stale.
        (On::After { .. }, Input::Timer { transition, due_ms }) => {
            transition == index && journey.timers.get(&index) == Some(&due_ms)
        }
        _ => false,
    }
}

/// What a journey keeps of an event: its name and properties.
fn remembered(event: &Value) -> Value {
    serde_json::json!({"event": event["event"], "properties": event["properties"]})
}

/// The value `source` (`event.properties.section`, `profile.traits.plan`) names.
fn param(source: &str, event: &Value, profile: &Value) -> Value {
    let (root, path) = match source.split_once('.') {
        Some(("event", path)) => (event, path),
        Some(("profile", path)) => (profile, path),
        _ => return Value::Null,
    };
    path.split('.')
        .try_fold(root, |value, part| value.get(part))
        .cloned()
        .unwrap_or(Value::Null)
}

/// Whether a profile is in `audience`, given its view and whether it is in a segment.
pub fn in_audience(
    audience: &Audience,
    profile: &Value,
    in_segment: &dyn Fn(&str) -> bool,
    now_ms: i64,
) -> bool {
    match audience {
        Audience::Everyone => true,
        Audience::Segment(name) => in_segment(name),
        Audience::Filter(filter) => cairn_filterql::matches(
            &filter.expr,
            profile,
            &Context {
                now_ms,
                includes: &|name| Some(in_segment(name)),
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 24 * HOUR;
    const T0: i64 = 1_795_000_000_000;

    fn cart() -> Campaign {
        Campaign::parse(
            r#"
name: cart_recovery
reentry: every 7d
cap: 1 per 1d
transitions:
  - {from: start, to: carting, event: add_to_cart, when: "properties.cart_items < 4"}
  - {from: carting, to: bought, event: order_completed}
  - {from: carting, to: abandoned, after: 4h, without: add_to_cart}
actions:
  abandoned:
    - {channel: email, template: cart_reminder, params: {section: event.properties.section, plan: profile.traits.plan}}
  bought:
    - {channel: web, content: thanks}
"#,
        )
        .unwrap()
    }

    fn event(name: &str, items: i64) -> Value {
        json!({"event": name, "type": "track", "properties": {"cart_items": items, "section": "shoes"}})
    }

    fn on_event<'a>(name: &'a str, event: &'a Value, at_ms: i64) -> Input<'a> {
        Input::Event { name, event, at_ms }
    }

    #[test]
    fn only_inputs_a_transition_follows_may_move_a_journey() {
        let campaign = cart();
        let page = event("page", 0);
        assert!(may_move(&campaign, &on_event("add_to_cart", &page, T0)));
        assert!(may_move(&campaign, &on_event("order_completed", &page, T0)));
        assert!(!may_move(&campaign, &on_event("page", &page, T0)));
        let segment = Input::Segment {
            name: "vip",
            entered: true,
            at_ms: T0,
        };
        assert!(!may_move(&campaign, &segment));
        let timer = Input::Timer {
            transition: 2,
            due_ms: T0,
        };
        assert!(may_move(&campaign, &timer));
    }

    #[test]
    fn an_abandoned_cart_fires_its_timer_once_and_a_new_event_puts_it_off() {
        let campaign = cart();
        let profile = json!({"traits": {"plan": "pro"}});
        let add = event("add_to_cart", 2);
        let first = step(
            &campaign,
            None,
            &on_event("add_to_cart", &add, T0),
            true,
            &profile,
        )
        .unwrap();
        assert_eq!(first.entered.as_deref(), Some("carting"));
        assert_eq!(first.journey.timers, BTreeMap::from([(2, T0 + 4 * HOUR)]));
        // Another add_to_cart an hour later (in another section) puts the timer off.
        let bags = json!({"event": "add_to_cart", "type": "track",
                          "properties": {"cart_items": 3, "section": "bags"}});
        let later = step(
            &campaign,
            Some(&first.journey),
            &on_event("add_to_cart", &bags, T0 + HOUR),
            true,
            &profile,
        )
        .unwrap();
        assert_eq!(later.entered, None);
        assert_eq!(later.journey.timers, BTreeMap::from([(2, T0 + 5 * HOUR)]));
        // The first timer comes due anyway: stale, nothing happens.
        let stale = Input::Timer {
            transition: 2,
            due_ms: T0 + 4 * HOUR,
        };
        assert_eq!(
            step(&campaign, Some(&later.journey), &stale, true, &profile),
            None
        );
        // The one set last fires: abandoned, one email with its parameters.
        let due = Input::Timer {
            transition: 2,
            due_ms: T0 + 5 * HOUR,
        };
        let abandoned = step(&campaign, Some(&later.journey), &due, true, &profile).unwrap();
        assert_eq!(abandoned.entered.as_deref(), Some("abandoned"));
        assert_eq!(abandoned.actions.len(), 1);
        assert_eq!(
            abandoned.actions[0].channel,
            Channel::Email {
                template: "cart_reminder".into(),
                best_hour: false,
                tracked: true,
            }
        );
        assert_eq!(abandoned.actions[0].params["plan"], "pro");
        // A timer has no event of its own: `event.*` is the last one that put it off.
        assert_eq!(abandoned.actions[0].params["section"], "bags");
        assert!(abandoned.journey.timers.is_empty());
        // The same timer again (a redelivery): the journey is over, nothing happens.
        assert_eq!(
            step(&campaign, Some(&abandoned.journey), &due, true, &profile),
            None
        );
    }

    #[test]
    fn buying_before_the_timeout_sends_no_reminder() {
        let campaign = cart();
        let add = event("add_to_cart", 1);
        let bought = event("order_completed", 1);
        let carting = step(
            &campaign,
            None,
            &on_event("add_to_cart", &add, T0),
            true,
            &Value::Null,
        )
        .unwrap();
        let done = step(
            &campaign,
            Some(&carting.journey),
            &on_event("order_completed", &bought, T0 + HOUR),
            true,
            &Value::Null,
        )
        .unwrap();
        assert_eq!(done.entered.as_deref(), Some("bought"));
        assert!(done.journey.timers.is_empty());
        let late = Input::Timer {
            transition: 2,
            due_ms: T0 + 4 * HOUR,
        };
        assert_eq!(
            step(&campaign, Some(&done.journey), &late, true, &Value::Null),
            None
        );
    }

    #[test]
    fn conditions_audience_reentry_and_the_cap_decide_who_goes_on() {
        let campaign = cart();
        let big = event("add_to_cart", 9);
        assert_eq!(
            step(
                &campaign,
                None,
                &on_event("add_to_cart", &big, T0),
                true,
                &Value::Null
            ),
            None
        );
        let small = event("add_to_cart", 1);
        assert_eq!(
            step(
                &campaign,
                None,
                &on_event("add_to_cart", &small, T0),
                false,
                &Value::Null
            ),
            None
        );

        // Abandoned at T0 + 4h; again within 7 days: not yet; after: a new journey,
        // but the cap (1 per day) holds only within its day.
        let carting = step(
            &campaign,
            None,
            &on_event("add_to_cart", &small, T0),
            true,
            &Value::Null,
        )
        .unwrap();
        let due = Input::Timer {
            transition: 2,
            due_ms: T0 + 4 * HOUR,
        };
        let over = step(&campaign, Some(&carting.journey), &due, true, &Value::Null).unwrap();
        assert_eq!(over.actions.len(), 1);
        assert_eq!(
            step(
                &campaign,
                Some(&over.journey),
                &on_event("add_to_cart", &small, T0 + DAY),
                true,
                &Value::Null
            ),
            None
        );
        let again = step(
            &campaign,
            Some(&over.journey),
            &on_event("add_to_cart", &small, T0 + 8 * DAY),
            true,
            &Value::Null,
        )
        .unwrap();
        assert_eq!(again.entered.as_deref(), Some("carting"));
        assert_eq!(again.journey.entries, 2);

        let capped = Campaign {
            cap: Some(super::super::definition::Cap {
                actions: 1,
                per: std::time::Duration::from_secs(30 * 86_400),
            }),
            ..campaign
        };
        let due = Input::Timer {
            transition: 2,
            due_ms: T0 + 8 * DAY + 4 * HOUR,
        };
        let mut journey = again.journey.clone();
        journey.sent_ms = over.journey.sent_ms.clone();
        let held = step(&capped, Some(&journey), &due, true, &Value::Null).unwrap();
        assert_eq!((held.actions.len(), held.suppressed), (0, 1));
    }

    #[test]
    fn segments_move_profiles_and_audiences_read_profiles() {
        let campaign = Campaign::parse(
            "name: vip\ntransitions:\n  - {from: start, to: welcomed, entered: vips}\n  - {from: welcomed, to: lapsed, exited: vips}",
        )
        .unwrap();
        let entered = Input::Segment {
            name: "vips",
            entered: true,
            at_ms: T0,
        };
        let welcomed = step(&campaign, None, &entered, true, &Value::Null).unwrap();
        assert_eq!(welcomed.entered.as_deref(), Some("welcomed"));
        let exited = Input::Segment {
            name: "vips",
            entered: false,
            at_ms: T0 + DAY,
        };
        let lapsed = step(
            &campaign,
            Some(&welcomed.journey),
            &exited,
            true,
            &Value::Null,
        )
        .unwrap();
        assert_eq!(lapsed.entered.as_deref(), Some("lapsed"));

        let filter = Audience::Filter(
            cairn_filterql::parse("FILTER AND (visit_count > 3, INCLUDE vips)").unwrap(),
        );
        let profile = json!({"visit_count": 5});
        assert!(in_audience(&filter, &profile, &|name| name == "vips", T0));
        assert!(!in_audience(&filter, &profile, &|_| false, T0));
        assert!(in_audience(
            &Audience::Segment("vips".into()),
            &Value::Null,
            &|name| name == "vips",
            T0
        ));
    }

    #[test]
    fn a_campaign_outside_its_dates_does_nothing() {
        let campaign = Campaign {
            start_ms: Some(T0),
            stop_ms: Some(T0 + DAY),
            ..cart()
        };
        let add = event("add_to_cart", 1);
        assert_eq!(
            step(
                &campaign,
                None,
                &on_event("add_to_cart", &add, T0 - 1),
                true,
                &Value::Null
            ),
            None
        );
        assert_eq!(
            step(
                &campaign,
                None,
                &on_event("add_to_cart", &add, T0 + DAY),
                true,
                &Value::Null
            ),
            None
        );
        assert!(
            step(
                &campaign,
                None,
                &on_event("add_to_cart", &add, T0),
                true,
                &Value::Null
            )
            .is_some()
        );
    }
}
