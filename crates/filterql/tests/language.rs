//! The language: every construct, errors with their place, the canonical form, and
//! evaluation against a profile.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_filterql::{CompareOp, Context, Expr, Filter, Literal, matches, parse, print};
use proptest::prelude::*;
use serde_json::json;

fn field(name: &str, op: CompareOp, value: Literal) -> Expr {
    Expr::Compare {
        field: name.into(),
        op,
        value,
    }
}

#[test]
fn the_example_of_the_issue_parses() {
    let filter = parse(
        r#"FILTER AND (visit_count > 3, EXISTS email, NOT INCLUDE churned, last_seen > "now-7d")"#,
    )
    .unwrap();
    assert_eq!(
        filter.expr,
        Expr::And(vec![
            field("visit_count", CompareOp::Gt, Literal::Int(3)),
            Expr::Exists("email".into()),
            Expr::Not(Box::new(Expr::Include("churned".into()))),
            field("last_seen", CompareOp::Gt, Literal::Text("now-7d".into())),
        ])
    );
}

#[test]
fn every_construct_parses() {
    let filter = parse(
        r#"
        -- engaged buyers, by the rules of marketing
        filter and (
            OR (
                plan == "pro"
                plan = "team"
            )
            event_count.purchase.30d >= 2
            score < 1.5, age <= 40, visits != 0
            city IN ("Portland, OR", "Seattle, WA")
            interests INTERSECTS ("shoes", "bags",)
            url CONTAINS "/blog/"
            email LIKE "*@acme.com"
            modified BETWEEN "2015-07-01" AND "2016-08-01"
            NOT NOT EXISTS `favourite colour`
            event_count.`Order Completed`.all > 1
            vip == true
            (a > 1 AND b > 2 OR c > 3)
        )
        FROM users
        LIMIT 100
        WITH schedule = "daily", backfill = true
        ALIAS engaged_buyers
        "#,
    )
    .unwrap();
    let Expr::And(items) = &filter.expr else {
        panic!("{filter:?}")
    };
    assert_eq!(items.len(), 14);
    assert_eq!(
        items[11],
        field(
            "event_count.Order Completed.all",
            CompareOp::Gt,
            Literal::Int(1)
        )
    );
    assert_eq!(
        items[0],
        Expr::Or(vec![
            field("plan", CompareOp::Eq, Literal::Text("pro".into())),
            field("plan", CompareOp::Eq, Literal::Text("team".into())),
        ])
    );
    assert_eq!(items[2], field("score", CompareOp::Lt, Literal::Float(1.5)));
    assert_eq!(
        items[5],
        Expr::In {
            field: "city".into(),
            values: vec![
                Literal::Text("Portland, OR".into()),
                Literal::Text("Seattle, WA".into())
            ],
        }
    );
    assert_eq!(
        items[10],
        Expr::Not(Box::new(Expr::Not(Box::new(Expr::Exists(
            "favourite colour".into()
        )))))
    );
    // Infix AND binds tighter than OR.
    assert_eq!(
        items[13],
        Expr::Or(vec![
            Expr::And(vec![
                field("a", CompareOp::Gt, Literal::Int(1)),
                field("b", CompareOp::Gt, Literal::Int(2)),
            ]),
            field("c", CompareOp::Gt, Literal::Int(3)),
        ])
    );
    assert_eq!(filter.from.as_deref(), Some("users"));
    assert_eq!(filter.limit, Some(100));
    assert_eq!(
        filter.with,
        vec![
            ("schedule".to_string(), Literal::Text("daily".into())),
            ("backfill".to_string(), Literal::Bool(true)),
        ]
    );
    assert_eq!(filter.alias.as_deref(), Some("engaged_buyers"));
}

#[test]
fn errors_say_where_and_what_was_expected() {
    let cases = [
        ("FILTER visit_count >", 1, 21, "expected a value"),
        (
            "FILTER AND (\n  visits > 5\n  plan ~ \"pro\"\n)",
            3,
            8,
            "unexpected character '~'",
        ),
        (
            "FILTER AND (\n  visits > 5,\n  plan\n)",
            4,
            1,
            "expected a comparison",
        ),
        (
            "FILTER AND (visits > 5",
            1,
            23,
            "expected `)` to close the group",
        ),
        (
            "FILTER city IN \"Paris\"",
            1,
            16,
            "expected `(` and a list of values",
        ),
        ("FILTER name == 'tom'", 1, 16, "double quotes"),
        ("FILTER name == \"tom", 1, 16, "no closing `\"`"),
        (
            "FILTER x BETWEEN 1 OR 2",
            1,
            20,
            "expected AND between the two bounds",
        ),
        (
            "FILTER EXISTS",
            1,
            14,
            "expected a field name, found the end of the filter",
        ),
        ("FILTER x > 1 ALIAS", 1, 19, "expected a name after ALIAS"),
        (
            "FILTER x > 1 y > 2",
            1,
            14,
            "expected the end of the filter",
        ),
        (
            "FILTER INCLUDE AND",
            1,
            16,
            "expected the name of a segment, found `AND`",
        ),
    ];
    for (source, line, column, message) in cases {
        let err = parse(source).unwrap_err();
        let source: &str = source;
        assert_eq!((err.line, err.column), (line, column), "{source}: {err}");
        assert!(err.message.contains(message), "{source}: {err}");
    }
}

#[test]
fn a_deep_filter_is_refused_not_a_crash() {
    let deep = format!("FILTER {}a = 1{}", "(".repeat(100_000), ")".repeat(100_000));
    assert!(
        parse(&deep)
            .unwrap_err()
            .message
            .contains("at most 64 levels")
    );
    let ands = format!(
        "FILTER {}a = 1{}",
        "AND (".repeat(100_000),
        ")".repeat(100_000)
    );
    assert!(
        parse(&ands)
            .unwrap_err()
            .message
            .contains("at most 64 levels")
    );
}

#[test]
fn and_with_a_group_means_the_same_in_a_list_as_anywhere() {
    let inside = parse("FILTER OR (a = 1 AND (b = 2))").unwrap();
    assert_eq!(
        inside.expr,
        Expr::Or(vec![Expr::And(vec![
            field("a", CompareOp::Eq, Literal::Int(1)),
            field("b", CompareOp::Eq, Literal::Int(2)),
        ])])
    );
    assert_eq!(
        parse("FILTER a = 1 AND (b = 2)").unwrap().expr,
        Expr::And(vec![
            field("a", CompareOp::Eq, Literal::Int(1)),
            field("b", CompareOp::Eq, Literal::Int(2)),
        ])
    );
    // On its own line, a group is the next condition of the list.
    let listed = parse("FILTER OR (\n  a = 1\n  AND (b = 2)\n)").unwrap();
    assert_eq!(
        listed.expr,
        Expr::Or(vec![
            field("a", CompareOp::Eq, Literal::Int(1)),
            Expr::And(vec![field("b", CompareOp::Eq, Literal::Int(2))]),
        ])
    );
}

#[test]
fn the_canonical_form_reads_well() {
    let filter = parse(r#"filter and(visit_count>3 exists email not include churned, `last seen` > "now-7d") alias x"#).unwrap();
    assert_eq!(
        print(&filter),
        "FILTER AND (\n    visit_count > 3,\n    EXISTS email,\n    NOT INCLUDE churned,\n    `last seen` > \"now-7d\"\n)\nALIAS x"
    );
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9_]{0,6}(\\.[a-z0-9_]{1,4}){0,2}",
        "[a-zA-Z ,()\"'-]{1,8}",
        Just("and".to_string()),
        Just("in".to_string()),
    ]
}

fn literal() -> impl Strategy<Value = Literal> {
    prop_oneof![
        any::<String>().prop_map(Literal::Text),
        any::<i64>().prop_map(Literal::Int),
        any::<f64>()
            .prop_filter("finite", |number| number.is_finite())
            .prop_map(Literal::Float),
        any::<bool>().prop_map(Literal::Bool),
    ]
}

fn op() -> impl Strategy<Value = CompareOp> {
    prop_oneof![
        Just(CompareOp::Eq),
        Just(CompareOp::Ne),
        Just(CompareOp::Lt),
        Just(CompareOp::Le),
        Just(CompareOp::Gt),
        Just(CompareOp::Ge),
    ]
}

fn expr() -> impl Strategy<Value = Expr> {
    let leaf = prop_oneof![
        (name(), op(), literal()).prop_map(|(field, op, value)| Expr::Compare { field, op, value }),
        name().prop_map(Expr::Exists),
        name().prop_map(Expr::Include),
        (name(), prop::collection::vec(literal(), 1..4))
            .prop_map(|(field, values)| Expr::In { field, values }),
        (name(), prop::collection::vec(literal(), 1..4))
            .prop_map(|(field, values)| Expr::Intersects { field, values }),
        (name(), literal()).prop_map(|(field, value)| Expr::Contains { field, value }),
        (name(), any::<String>()).prop_map(|(field, pattern)| Expr::Like { field, pattern }),
        (name(), literal(), literal()).prop_map(|(field, low, high)| Expr::Between {
            field,
            low,
            high
        }),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Expr::And),
            prop::collection::vec(inner.clone(), 0..4).prop_map(Expr::Or),
            inner.prop_map(|expr| Expr::Not(Box::new(expr))),
        ]
    })
}

fn filter() -> impl Strategy<Value = Filter> {
    (
        expr(),
        prop::option::of(name()),
        prop::option::of(any::<u32>().prop_map(u64::from)),
        prop::collection::vec((name(), literal()), 0..3),
        prop::option::of(name()),
    )
        .prop_map(|(expr, from, limit, with, alias)| Filter {
            expr,
            from,
            limit,
            with,
            alias,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn printing_then_parsing_gives_the_same_filter(filter in filter()) {
        let printed = print(&filter);
        let parsed = parse(&printed).map_err(|err| TestCaseError::fail(format!("{err}\n{printed}")))?;
        prop_assert_eq!(parsed, filter, "{}", printed);
    }

    #[test]
    fn the_tree_as_json_gives_the_same_filter(filter in filter()) {
        let json = serde_json::to_string(&filter).map_err(|err| TestCaseError::fail(err.to_string()))?;
        let read: Filter = serde_json::from_str(&json).map_err(|err| TestCaseError::fail(format!("{err}\n{json}")))?;
        prop_assert_eq!(read, filter, "{}", json);
    }
}

#[test]
fn the_tree_as_json_reads_as_the_console_writes_it() {
    let filter =
        parse(r#"FILTER AND (visit_count > 3, EXISTS email, NOT INCLUDE churned)"#).unwrap();
    assert_eq!(
        serde_json::to_value(&filter.expr).unwrap(),
        json!({"and": [
            {"compare": {"field": "visit_count", "op": "gt", "value": {"int": 3}}},
            {"exists": "email"},
            {"not": {"include": "churned"}},
        ]})
    );
}

const NOW: i64 = 1_795_000_000_000;

fn check(source: &str, profile: &serde_json::Value) -> bool {
    let filter = parse(source).unwrap();
    let in_vip = |segment: &str| Some(segment == "vip");
    matches(
        &filter.expr,
        profile,
        &Context {
            now_ms: NOW,
            includes: &in_vip,
        },
    )
}

#[test]
fn profiles_match_as_marketers_expect() {
    let now = chrono::DateTime::from_timestamp_millis(NOW).unwrap();
    let days_ago = |days: i64| (now - chrono::Duration::days(days)).to_rfc3339();
    let tom = json!({
        "visit_count": 5,
        "last_seen": days_ago(2),
        "first_seen": days_ago(40),
        "traits": {"email": "Tom@Acme.com", "plan": "pro", "interests": ["shoes", "bags"]},
        "event_count": {"purchase": {"30d": 2, "all": 7}},
        "facts": {"geo": {"city": "London"}},
        "urls": [],
    });
    let yes = [
        r#"FILTER AND (visit_count > 3, EXISTS email, NOT INCLUDE churned, last_seen > "now-7d")"#,
        "FILTER event_count.purchase.30d >= 2",
        r#"FILTER email LIKE "*@acme.com""#,
        r#"FILTER plan IN ("pro", "team")"#,
        r#"FILTER interests INTERSECTS ("bags", "hats")"#,
        r#"FILTER interests CONTAINS "shoes""#,
        r#"FILTER traits.email CONTAINS "Acme""#,
        r#"FILTER facts.geo.city == "London""#,
        r#"FILTER first_seen BETWEEN "now-2M" AND "now-1M""#,
        r#"FILTER last_seen > "2020-01-01""#,
        "FILTER visit_count BETWEEN 5 AND 5",
        "FILTER NOT EXISTS phone",
        "FILTER NOT EXISTS urls",
        "FILTER OR (visit_count > 100, plan == \"pro\")",
        "FILTER AND ()",
        "FILTER INCLUDE vip",
    ];
    for source in yes {
        assert!(check(source, &tom), "should match: {source}");
    }
    let no = [
        "FILTER visit_count > 5",
        r#"FILTER last_seen < "now-7d""#,
        "FILTER INCLUDE churned",
        "FILTER EXISTS phone",
        "FILTER phone == \"1\"",
        "FILTER event_count.purchase.30d >= 3",
        r#"FILTER plan IN ("free")"#,
        "FILTER OR ()",
        r#"FILTER visit_count == "five""#,
    ];
    for source in no {
        assert!(!check(source, &tom), "should not match: {source}");
    }
}
