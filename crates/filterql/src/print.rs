//! The canonical form: keywords in capitals, one condition per line in groups, commas
//! between conditions, four spaces per level, text in double quotes, names in
//! back-ticks when they need them.

use std::fmt::Write as _;

use crate::ast::{Expr, Filter, Literal};
use crate::parse::is_bare_identifier;

pub fn print(filter: &Filter) -> String {
    let mut out = String::from("FILTER ");
    expr(&mut out, &filter.expr, 0);
    if let Some(from) = &filter.from {
        let _ = write!(out, "\nFROM {}", name(from));
    }
    if let Some(limit) = filter.limit {
        let _ = write!(out, "\nLIMIT {limit}");
    }
    if !filter.with.is_empty() {
        out.push_str("\nWITH ");
        let options: Vec<String> = filter
            .with
            .iter()
            .map(|(key, value)| format!("{} = {}", name(key), literal(value)))
            .collect();
        out.push_str(&options.join(", "));
    }
    if let Some(alias) = &filter.alias {
        let _ = write!(out, "\nALIAS {}", name(alias));
    }
    out
}

/// A field or segment name, in back-ticks when it is not a plain identifier.
pub fn name(name: &str) -> String {
    if is_bare_identifier(name) {
        name.to_string()
    } else {
        format!("`{name}`")
    }
}

pub fn literal(value: &Literal) -> String {
    match value {
        Literal::Text(text) => {
            let mut quoted = String::from("\"");
            for c in text.chars() {
                match c {
                    '"' => quoted.push_str("\\\""),
                    '\\' => quoted.push_str("\\\\"),
                    '\n' => quoted.push_str("\\n"),
                    '\t' => quoted.push_str("\\t"),
                    other => quoted.push(other),
                }
            }
            quoted.push('"');
            quoted
        }
        Literal::Int(number) => number.to_string(),
        // `{:?}` always keeps a decimal point or an exponent, so it reads back as a float.
        Literal::Float(number) => format!("{number:?}"),
        Literal::Bool(value) => value.to_string(),
    }
}

/// One condition on one line (groups too), for messages and explanations.
pub fn expr_text(condition: &Expr) -> String {
    match condition {
        Expr::And(items) | Expr::Or(items) => {
            let keyword = if matches!(condition, Expr::And(_)) {
                "AND"
            } else {
                "OR"
            };
            let items: Vec<String> = items.iter().map(expr_text).collect();
            format!("{keyword} ({})", items.join(", "))
        }
        Expr::Not(inner) => format!("NOT {}", expr_text(inner)),
        leaf => {
            let mut out = String::new();
            expr(&mut out, leaf, 0);
            out
        }
    }
}

fn list(values: &[Literal]) -> String {
    let values: Vec<String> = values.iter().map(literal).collect();
    format!("({})", values.join(", "))
}

fn expr(out: &mut String, expr_: &Expr, depth: usize) {
    match expr_ {
        Expr::And(items) | Expr::Or(items) => {
            out.push_str(if matches!(expr_, Expr::And(_)) {
                "AND ("
            } else {
                "OR ("
            });
            if items.is_empty() {
                out.push(')');
                return;
            }
            for (index, item) in items.iter().enumerate() {
                out.push('\n');
                out.push_str(&"    ".repeat(depth + 1));
                expr(out, item, depth + 1);
                if index + 1 < items.len() {
                    out.push(',');
                }
            }
            out.push('\n');
            out.push_str(&"    ".repeat(depth));
            out.push(')');
        }
        Expr::Not(inner) => {
            out.push_str("NOT ");
            expr(out, inner, depth);
        }
        Expr::Compare { field, op, value } => {
            let _ = write!(out, "{} {} {}", name(field), op.symbol(), literal(value));
        }
        Expr::Exists(field) => {
            let _ = write!(out, "EXISTS {}", name(field));
        }
        Expr::In { field, values } => {
            let _ = write!(out, "{} IN {}", name(field), list(values));
        }
        Expr::Intersects { field, values } => {
            let _ = write!(out, "{} INTERSECTS {}", name(field), list(values));
        }
        Expr::Contains { field, value } => {
            let _ = write!(out, "{} CONTAINS {}", name(field), literal(value));
        }
        Expr::Like { field, pattern } => {
            let _ = write!(
                out,
                "{} LIKE {}",
                name(field),
                literal(&Literal::Text(pattern.clone()))
            );
        }
        Expr::Between { field, low, high } => {
            let _ = write!(
                out,
                "{} BETWEEN {} AND {}",
                name(field),
                literal(low),
                literal(high)
            );
        }
        Expr::Include(segment) => {
            let _ = write!(out, "INCLUDE {}", name(segment));
        }
    }
}
