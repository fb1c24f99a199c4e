//! Checks before a filter is saved, and explanations of a match.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_filterql::{Context, FieldType, Schema, check, check_includes, explain, parse};
use serde_json::json;

/// A small profile: counts, a time, a name, traits of any kind.
struct Profiles;

impl Schema for Profiles {
    fn field_type(&self, field: &str) -> Option<FieldType> {
        match field {
            "visit_count" => Some(FieldType::Number),
            "last_seen" => Some(FieldType::Time),
            "city" => Some(FieldType::Text),
            "vip" => Some(FieldType::Bool),
            "urls" => Some(FieldType::List),
            name if !name.contains('.') => Some(FieldType::Any),
            name if name.starts_with("traits.") => Some(FieldType::Any),
            _ => None,
        }
    }
}

fn problems(source: &str) -> Vec<String> {
    check(&parse(source).unwrap(), &Profiles)
}

#[test]
fn a_sound_filter_has_no_problems() {
    assert_eq!(
        problems(
            r#"FILTER AND (visit_count > 3, visit_count < 10, last_seen > "now-7d",
               last_seen BETWEEN "2026-01-01" AND "now", city LIKE "Lon*", vip == true,
               EXISTS plan, traits.plan IN ("pro", 3), urls CONTAINS "/shoes", INCLUDE churned)"#
        ),
        Vec::<String>::new()
    );
}

#[test]
fn unknown_fields_and_mismatched_values_are_named() {
    let found = problems(
        r#"FILTER AND (
            facts.geo.city == "London",
            visit_count > "many",
            last_seen > 5,
            last_seen < "yesterday",
            vip == "yes",
            visit_count LIKE "1*",
            city IN ("London", 4),
            visit_count CONTAINS 1
        )"#,
    );
    let expected = [
        r#"facts.geo.city == "London": the profile has no field "facts.geo.city""#,
        r#"visit_count > "many": visit_count holds a number"#,
        "last_seen > 5: last_seen holds a time",
        r#"last_seen < "yesterday": last_seen holds a time"#,
        r#"vip == "yes": vip holds true or false"#,
        r#"visit_count LIKE "1*": LIKE matches text, and visit_count holds a number"#,
        r#"city IN ("London", 4): city holds text"#,
        "visit_count CONTAINS 1: CONTAINS looks in text or a list, and visit_count holds a number",
    ];
    assert_eq!(found.len(), expected.len(), "{found:#?}");
    for (found, expected) in found.iter().zip(expected) {
        assert!(
            found.starts_with(expected),
            "{found}\n  expected {expected}"
        );
    }
}

#[test]
fn includes_must_exist_and_must_not_go_round() {
    // a -> b -> c; c is plain; d is missing.
    let saved = |name: &str| match name {
        "a" => Some(vec!["b".to_string()]),
        "b" => Some(vec!["c".to_string()]),
        "c" => Some(Vec::new()),
        "x" => Some(vec!["new".to_string()]),
        _ => None,
    };
    assert_eq!(
        check_includes("new", &["a".into(), "c".into()], &saved),
        Ok(())
    );
    assert_eq!(
        check_includes("new", &["d".into()], &saved),
        Err("new includes d, and there is no segment d".to_string())
    );
    assert_eq!(
        check_includes("new", &["x".into()], &saved),
        Err("INCLUDE goes round: new -> x -> new".to_string())
    );
    assert_eq!(
        check_includes("new", &["new".into()], &saved),
        Err("INCLUDE goes round: new -> new".to_string())
    );
    // Updating a segment that others include: b now including a goes round.
    assert_eq!(
        check_includes("b", &["a".into()], &saved),
        Err("INCLUDE goes round: b -> a -> b".to_string())
    );
}

#[test]
fn an_explanation_gives_each_condition_and_the_value_seen() {
    let filter =
        parse(r#"FILTER AND (visit_count > 3, NOT INCLUDE churned, plan == "pro")"#).unwrap();
    let profile = json!({"visit_count": 2, "traits": {"plan": "pro"}});
    let churned = |segment: &str| Some(segment != "churned");
    let explanation = explain(
        &filter.expr,
        &profile,
        &Context {
            now_ms: 0,
            includes: &churned,
        },
    );
    assert!(!explanation.holds);
    assert_eq!(
        explanation.to_json(),
        json!({
            "condition": "AND (visit_count > 3, NOT INCLUDE churned, plan == \"pro\")",
            "holds": false,
            "parts": [
                {"condition": "visit_count > 3", "holds": false, "value": 2},
                {"condition": "NOT INCLUDE churned", "holds": true, "parts": [
                    {"condition": "INCLUDE churned", "holds": false, "value": false}
                ]},
                {"condition": "plan == \"pro\"", "holds": true, "value": "pro"}
            ]
        })
    );
}

#[test]
fn date_math_conditions_say_when_they_next_flip() {
    use cairn_filterql::next_change;
    const DAY: i64 = 86_400_000;
    let now = 1_795_000_000_000;
    let seen = chrono::DateTime::from_timestamp_millis(now - 2 * DAY)
        .unwrap()
        .to_rfc3339();
    let profile = json!({"last_seen": seen, "visit_count": 4});
    let when = |source: &str| next_change(&parse(source).unwrap().expr, &profile, now);
    // Seen two days ago: "in the last 7 days" stops holding five days from now.
    assert_eq!(
        when(r#"FILTER last_seen > "now-7d""#),
        Some(now + 5 * DAY + 1)
    );
    assert_eq!(
        when(r#"FILTER AND (visit_count > 3, NOT last_seen > "now-3d", last_seen > "now-7d")"#),
        Some(now + DAY + 1)
    );
    // Already past, or nothing that moves.
    assert_eq!(when(r#"FILTER last_seen > "now-1d""#), None);
    assert_eq!(when("FILTER visit_count > 3"), None);
    assert_eq!(when(r#"FILTER last_seen > "2020-01-01""#), None);
    // Calendar months: the boundary passes a month after the visit.
    let flip = when(r#"FILTER last_seen > "now-1M""#).unwrap();
    let expected = chrono::DateTime::from_timestamp_millis(now - 2 * DAY)
        .unwrap()
        .checked_add_months(chrono::Months::new(1))
        .unwrap()
        .timestamp_millis()
        + 1;
    assert_eq!(flip, expected);

    // At a month's end the boundary still passes: seen on Mar 31, "now-1M" lets go
    // after Apr 30 (not never).
    let march = chrono::DateTime::parse_from_rfc3339("2027-03-31T12:00:00Z").unwrap();
    let profile = json!({"last_seen": march.to_rfc3339()});
    let on_april_10 = march.timestamp_millis() + 10 * DAY;
    let flip = next_change(
        &parse(r#"FILTER last_seen > "now-1M""#).unwrap().expr,
        &profile,
        on_april_10,
    )
    .unwrap();
    let filter = parse(r#"FILTER last_seen > "now-1M""#).unwrap();
    let none = |_: &str| None;
    let holds = |at: i64| {
        cairn_filterql::matches(
            &filter.expr,
            &profile,
            &Context {
                now_ms: at,
                includes: &none,
            },
        )
    };
    assert!(holds(flip - 2), "still in just before");
    assert!(!holds(flip + DAY), "out after the flip");
}
