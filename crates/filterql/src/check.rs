//! Static checks of a filter before it is saved: fields the profile does not have,
//! conditions that cannot hold for a field's type, and segments that are missing or
//! include themselves.

use std::collections::BTreeSet;

use crate::ast::{Expr, Filter, Literal};
use crate::eval::time_of;
use crate::print::expr_text;

/// What a field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Number,
    Text,
    /// A time as RFC 3339 text.
    Time,
    Bool,
    List,
    Map,
    /// Anything (traits, facts).
    Any,
}

/// The fields a filter may read.
pub trait Schema {
    /// The type of `field`, or `None` when there is no such field.
    fn field_type(&self, field: &str) -> Option<FieldType>;

    /// What the fields belong to, for messages ("the profile has no field ...").
    fn subject(&self) -> &str {
        "the profile"
    }
}

/// Whether `literal` can be compared with a `kind` field (`now` for date math).
fn fits(kind: FieldType, literal: &Literal) -> bool {
    match (kind, literal) {
        (FieldType::Any | FieldType::List | FieldType::Map, _) => true,
        (FieldType::Number, Literal::Int(_) | Literal::Float(_)) => true,
        (FieldType::Text, Literal::Text(_)) => true,
        (FieldType::Time, Literal::Text(text)) => time_of(text, 0).is_some(),
        (FieldType::Bool, Literal::Bool(_)) => true,
        _ => false,
    }
}

fn describe(kind: FieldType) -> &'static str {
    match kind {
        FieldType::Number => "a number",
        FieldType::Text => "text",
        FieldType::Time => "a time (\"2026-11-01\", RFC 3339 or \"now-7d\")",
        FieldType::Bool => "true or false",
        FieldType::List => "a list",
        FieldType::Map => "a map",
        FieldType::Any => "anything",
    }
}

/// Every problem of `filter` against `schema`, each naming the condition.
pub fn check(filter: &Filter, schema: &dyn Schema) -> Vec<String> {
    let mut problems = Vec::new();
    check_expr(&filter.expr, schema, &mut problems);
    problems
}

fn check_expr(expr: &Expr, schema: &dyn Schema, problems: &mut Vec<String>) {
    let field_of = |field: &String, problems: &mut Vec<String>| {
        let kind = schema.field_type(field);
        if kind.is_none() {
            problems.push(format!(
                "{}: {} has no field {field:?}",
                expr_text(expr),
                schema.subject()
            ));
        }
        kind
    };
    let mismatch = |kind: FieldType, literal: &Literal, problems: &mut Vec<String>| {
        if !fits(kind, literal) {
            problems.push(format!(
                "{}: {} holds {}",
                expr_text(expr),
                field_name(expr),
                describe(kind)
            ));
        }
    };
    match expr {
        Expr::And(all) | Expr::Or(all) => {
            for expr in all {
                check_expr(expr, schema, problems);
            }
        }
        Expr::Not(inner) => check_expr(inner, schema, problems),
        Expr::Include(_) => {}
        Expr::Exists(field) => {
            field_of(field, problems);
        }
        Expr::Compare { field, value, .. } => {
            if let Some(kind) = field_of(field, problems) {
                mismatch(kind, value, problems);
            }
        }
        Expr::Contains { field, value } => match field_of(field, problems) {
            Some(FieldType::Text | FieldType::Time) => mismatch(FieldType::Text, value, problems),
            Some(FieldType::List | FieldType::Map | FieldType::Any) | None => {}
            Some(kind) => problems.push(format!(
                "{}: CONTAINS looks in text or a list, and {field} holds {}",
                expr_text(expr),
                describe(kind)
            )),
        },
        Expr::In { field, values } | Expr::Intersects { field, values } => {
            if let Some(kind) = field_of(field, problems) {
                for value in values {
                    mismatch(kind, value, problems);
                }
            }
        }
        Expr::Between { field, low, high } => {
            if let Some(kind) = field_of(field, problems) {
                mismatch(kind, low, problems);
                mismatch(kind, high, problems);
            }
        }
        Expr::Like { field, .. } => {
            if let Some(kind) = field_of(field, problems)
                && !matches!(kind, FieldType::Text | FieldType::Any)
            {
                problems.push(format!(
                    "{}: LIKE matches text, and {field} holds {}",
                    expr_text(expr),
                    describe(kind)
                ));
            }
        }
    }
}

fn field_name(expr: &Expr) -> &str {
    match expr {
        Expr::Compare { field, .. }
        | Expr::Exists(field)
        | Expr::In { field, .. }
        | Expr::Intersects { field, .. }
        | Expr::Contains { field, .. }
        | Expr::Like { field, .. }
        | Expr::Between { field, .. } => field,
        _ => "",
    }
}

/// Checks that every segment `name` includes exists and that no chain of INCLUDEs leads
/// back to `name`. `includes_of` gives the segments a saved segment includes, or `None`
/// when there is no segment of that name; `includes` are the new filter's own.
pub fn check_includes(
    name: &str,
    includes: &[String],
    includes_of: &dyn Fn(&str) -> Option<Vec<String>>,
) -> Result<(), String> {
    let mut path = vec![name.to_string()];
    let mut done = BTreeSet::new();
    visit(name, includes, includes_of, &mut path, &mut done)
}

fn visit(
    name: &str,
    includes: &[String],
    includes_of: &dyn Fn(&str) -> Option<Vec<String>>,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Result<(), String> {
    for included in includes {
        if let Some(start) = path.iter().position(|step| step == included) {
            let mut cycle = path[start..].to_vec();
            cycle.push(included.clone());
            return Err(format!("INCLUDE goes round: {}", cycle.join(" -> ")));
        }
        if done.contains(included) {
            continue;
        }
        let Some(next) = includes_of(included) else {
            return Err(format!(
                "{name} includes {included}, and there is no segment {included}"
            ));
        };
        path.push(included.clone());
        visit(included, &next, includes_of, path, done)?;
        path.pop();
        done.insert(included.clone());
    }
    Ok(())
}
