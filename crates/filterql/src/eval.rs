//! Whether a profile (its JSON view, as the profile store serves it) matches.
//!
//! - Fields are paths into the profile: `visit_count`, `traits.plan`,
//!   `facts.geo.city`, `event_count.purchase.30d`; a one-word field that the profile
//!   does not have at its top is looked up among its traits (`email` is
//!   `traits.email`).
//! - A missing field matches no condition (so `NOT` of it matches).
//! - Text that reads as a time (`"2026-11-01"`, RFC 3339, or date math `"now-7d"`,
//!   units s, m, h, d, w, M, y) compares as a time with fields that hold times.
//! - `LIKE` is case-insensitive, `*` standing for any run of characters.

use chrono::{DateTime, Months, NaiveDate, TimeZone as _, Utc};
use serde_json::Value;

use crate::ast::{CompareOp, Expr, Literal};

/// What evaluation needs besides the profile.
pub struct Context<'a> {
    /// Now, for date math (ms since the epoch).
    pub now_ms: i64,
    /// Whether the profile is in the named segment (`INCLUDE`); `None` when unknown.
    pub includes: &'a dyn Fn(&str) -> Option<bool>,
}

/// The value of `field` in `profile`.
pub fn resolve<'v>(profile: &'v Value, field: &str) -> Option<&'v Value> {
    let found = field
        .split('.')
        .try_fold(profile, |value, key| value.get(key));
    match found {
        Some(Value::Null) | None if !field.contains('.') => profile
            .get("traits")
            .and_then(|traits| traits.get(field))
            .filter(|value| !value.is_null()),
        Some(Value::Null) => None,
        other => other,
    }
}

pub fn matches(expr: &Expr, profile: &Value, context: &Context<'_>) -> bool {
    match expr {
        Expr::And(all) => all.iter().all(|expr| matches(expr, profile, context)),
        Expr::Or(any) => any.iter().any(|expr| matches(expr, profile, context)),
        Expr::Not(inner) => !matches(inner, profile, context),
        Expr::Include(segment) => (context.includes)(segment).unwrap_or(false),
        Expr::Exists(field) => resolve(profile, field).is_some_and(|value| match value {
            Value::String(text) => !text.is_empty(),
            Value::Array(items) => !items.is_empty(),
            Value::Object(map) => !map.is_empty(),
            _ => true,
        }),
        Expr::Compare { field, op, value } => resolve(profile, field).is_some_and(|found| {
            compare(found, value, context.now_ms).is_some_and(|order| op.holds(order))
        }),
        Expr::In { field, values } => resolve(profile, field).is_some_and(|found| {
            each(found).any(|item| {
                values
                    .iter()
                    .any(|value| equal(item, value, context.now_ms))
            })
        }),
        Expr::Intersects { field, values } => resolve(profile, field).is_some_and(|found| {
            each(found).any(|item| {
                values
                    .iter()
                    .any(|value| equal(item, value, context.now_ms))
            })
        }),
        Expr::Contains { field, value } => {
            resolve(profile, field).is_some_and(|found| match (found, value) {
                (Value::String(text), Literal::Text(part)) => text.contains(part.as_str()),
                (Value::Array(items), value) => {
                    items.iter().any(|item| equal(item, value, context.now_ms))
                }
                (Value::Object(map), Literal::Text(key)) => map.contains_key(key),
                _ => false,
            })
        }
        Expr::Like { field, pattern } => resolve(profile, field)
            .and_then(Value::as_str)
            .is_some_and(|text| like(&text.to_lowercase(), &pattern.to_lowercase())),
        Expr::Between { field, low, high } => resolve(profile, field).is_some_and(|found| {
            compare(found, low, context.now_ms).is_some_and(|order| order.is_ge())
                && compare(found, high, context.now_ms).is_some_and(|order| order.is_le())
        }),
    }
}

/// Why a condition holds or not: for each condition, the value the profile has, and
/// for groups, their parts.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// The condition, on one line.
    pub condition: String,
    pub holds: bool,
    /// The value of the condition's field (`None` when missing, and for groups).
    pub value: Option<Value>,
    pub parts: Vec<Explanation>,
}

impl Explanation {
    pub fn to_json(&self) -> Value {
        let mut out = serde_json::Map::new();
        out.insert("condition".into(), Value::String(self.condition.clone()));
        out.insert("holds".into(), Value::Bool(self.holds));
        if let Some(value) = &self.value {
            out.insert("value".into(), value.clone());
        }
        if !self.parts.is_empty() {
            out.insert(
                "parts".into(),
                Value::Array(self.parts.iter().map(Explanation::to_json).collect()),
            );
        }
        Value::Object(out)
    }
}

/// Evaluates `expr` like [`matches`], saying for every condition whether it held and
/// what the profile had.
pub fn explain(expr: &Expr, profile: &Value, context: &Context<'_>) -> Explanation {
    let parts: Vec<Explanation> = match expr {
        Expr::And(all) | Expr::Or(all) => all
            .iter()
            .map(|part| explain(part, profile, context))
            .collect(),
        Expr::Not(inner) => vec![explain(inner, profile, context)],
        _ => Vec::new(),
    };
    let value = match expr {
        Expr::Compare { field, .. }
        | Expr::Exists(field)
        | Expr::In { field, .. }
        | Expr::Intersects { field, .. }
        | Expr::Contains { field, .. }
        | Expr::Like { field, .. }
        | Expr::Between { field, .. } => resolve(profile, field).cloned(),
        Expr::Include(segment) => (context.includes)(segment).map(Value::Bool),
        _ => None,
    };
    Explanation {
        condition: crate::print::expr_text(expr),
        holds: matches(expr, profile, context),
        value,
        parts,
    }
}

impl CompareOp {
    fn holds(self, order: std::cmp::Ordering) -> bool {
        match self {
            CompareOp::Eq => order.is_eq(),
            CompareOp::Ne => order.is_ne(),
            CompareOp::Lt => order.is_lt(),
            CompareOp::Le => order.is_le(),
            CompareOp::Gt => order.is_gt(),
            CompareOp::Ge => order.is_ge(),
        }
    }
}

/// The items of an array, or the value itself.
fn each(value: &Value) -> Box<dyn Iterator<Item = &Value> + '_> {
    match value {
        Value::Array(items) => Box::new(items.iter()),
        other => Box::new(std::iter::once(other)),
    }
}

fn equal(found: &Value, value: &Literal, now_ms: i64) -> bool {
    compare(found, value, now_ms).is_some_and(|order| order.is_eq())
}

/// How `found` orders against `value`; `None` when they cannot be compared.
fn compare(found: &Value, value: &Literal, now_ms: i64) -> Option<std::cmp::Ordering> {
    match (found, value) {
        (Value::Number(number), Literal::Int(int)) => number.as_f64()?.partial_cmp(&(*int as f64)),
        (Value::Number(number), Literal::Float(float)) => number.as_f64()?.partial_cmp(float),
        (Value::Bool(found), Literal::Bool(value)) => Some(found.cmp(value)),
        (Value::String(text), Literal::Text(literal)) => {
            match (time_of(text, now_ms), time_of(literal, now_ms)) {
                (Some(found), Some(value)) => Some(found.cmp(&value)),
                _ => Some(text.as_str().cmp(literal.as_str())),
            }
        }
        (Value::String(text), Literal::Int(_) | Literal::Float(_)) => {
            let number: f64 = text.trim().parse().ok()?;
            let value = match value {
                Literal::Int(int) => *int as f64,
                Literal::Float(float) => *float,
                _ => return None,
            };
            number.partial_cmp(&value)
        }
        _ => None,
    }
}

/// The time `text` stands for (ms): date math relative to `now_ms`, RFC 3339, or a date.
pub fn time_of(text: &str, now_ms: i64) -> Option<i64> {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix("now") {
        let now = Utc.timestamp_millis_opt(now_ms).single()?;
        if rest.is_empty() {
            return Some(now_ms);
        }
        let (sign, amount) = match rest.as_bytes().first()? {
            b'-' => (-1i64, &rest[1..]),
            b'+' => (1, &rest[1..]),
            _ => return None,
        };
        let unit = amount.chars().last()?;
        let count: i64 = amount[..amount.len() - unit.len_utf8()].parse().ok()?;
        let seconds = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            'M' | 'y' => {
                let months = u32::try_from(if unit == 'y' {
                    count.checked_mul(12)?
                } else {
                    count
                })
                .ok()?;
                let moved = if sign < 0 {
                    now.checked_sub_months(Months::new(months))?
                } else {
                    now.checked_add_months(Months::new(months))?
                };
                return Some(moved.timestamp_millis());
            }
            _ => return None,
        };
        return now_ms.checked_add(sign * count.checked_mul(seconds)?.checked_mul(1000)?);
    }
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at.timestamp_millis());
    }
    if let Ok(at) =
        chrono::NaiveDateTime::parse_from_str(text.trim_end_matches('Z'), "%Y-%m-%d %H:%M:%S")
    {
        return Some(at.and_utc().timestamp_millis());
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .map(|at| at.and_utc().timestamp_millis())
}

/// When, after `now_ms`, a condition on date math (`last_seen > "now-7d"`) can next
/// change its answer for this profile with no change to the profile: the earliest
/// instant (ms) at which a time field crosses a moving boundary, plus one millisecond
/// (so that it has crossed under any comparison). `None` when nothing moves.
pub fn next_change(expr: &Expr, profile: &Value, now_ms: i64) -> Option<i64> {
    let crossing = |field: &String, literal: &Literal| -> Option<i64> {
        let Literal::Text(text) = literal else {
            return None;
        };
        let text = text.trim();
        if !text.starts_with("now") {
            return None;
        }
        let at = time_of(resolve(profile, field)?.as_str()?, now_ms)?;
        // The boundary is `now + shift`: it passes `at` when now = at - shift.
        let shift = time_of(text, now_ms)? - now_ms;
        let months = calendar_months(text);
        let instant = match months {
            Some(months) => {
                let at = Utc.timestamp_millis_opt(at).single()?;
                let count = Months::new(u32::try_from(months.unsigned_abs()).ok()?);
                let mut moved = if months < 0 {
                    at.checked_add_months(count)?
                } else {
                    at.checked_sub_months(count)?
                };
                // Months are shortened at their ends (Mar 31 + 1 month = Apr 30): step on
                // a day at a time until the boundary has reached `at` for certain.
                for _ in 0..4 {
                    let boundary = time_of(text, moved.timestamp_millis())?;
                    if boundary >= at.timestamp_millis() {
                        break;
                    }
                    moved = moved.checked_add_days(chrono::Days::new(1))?;
                }
                // A shortened month makes the boundary jump at midnight: from there when so.
                let midnight = moved
                    .date_naive()
                    .and_hms_opt(0, 0, 0)?
                    .and_utc()
                    .timestamp_millis();
                if midnight > now_ms && time_of(text, midnight)? >= at.timestamp_millis() {
                    midnight.min(moved.timestamp_millis())
                } else {
                    moved.timestamp_millis()
                }
            }
            None => at.checked_sub(shift)?,
        };
        (instant >= now_ms).then_some(instant + 1)
    };
    match expr {
        Expr::And(all) | Expr::Or(all) => all
            .iter()
            .filter_map(|part| next_change(part, profile, now_ms))
            .min(),
        Expr::Not(inner) => next_change(inner, profile, now_ms),
        Expr::Compare { field, value, .. } => crossing(field, value),
        Expr::Between { field, low, high } => [crossing(field, low), crossing(field, high)]
            .into_iter()
            .flatten()
            .min(),
        _ => None,
    }
}

/// For date math in months or years, the signed number of months.
fn calendar_months(text: &str) -> Option<i64> {
    let rest = text.strip_prefix("now")?;
    let sign = match rest.as_bytes().first()? {
        b'-' => -1,
        b'+' => 1,
        _ => return None,
    };
    let unit = rest.chars().last()?;
    let count: i64 = rest[1..rest.len() - 1].parse().ok()?;
    match unit {
        'M' => Some(sign * count),
        'y' => Some(sign * count * 12),
        _ => None,
    }
}

/// `*`-wildcard matching.
fn like(text: &str, pattern: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return text == pattern;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}
