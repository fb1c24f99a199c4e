//! What a FilterQL statement is, once parsed.
//!
//! As JSON (serde), the tree is what the console's segment builder edits: `{"and":
//! [...]}`, `{"compare": {"field": "visit_count", "op": "gt", "value": {"int": 3}}}`,
//! `{"exists": "email"}`, `{"include": "vip"}`, ...

use serde::{Deserialize, Serialize};

/// `FILTER <expr> [FROM name] [LIMIT n] [WITH key = value, ...] [ALIAS name]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Filter {
    pub expr: Expr,
    /// The collection filtered (`users` when unset).
    pub from: Option<String>,
    pub limit: Option<u64>,
    /// Options for whoever runs the filter, in the order given.
    pub with: Vec<(String, Literal)>,
    /// The name the filter is saved under, for `INCLUDE`.
    pub alias: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expr {
    /// All of them hold.
    And(Vec<Expr>),
    /// At least one holds.
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Compare {
        field: String,
        op: CompareOp,
        value: Literal,
    },
    /// The field has a value (not null, not empty).
    Exists(String),
    /// The field's value (or one of its values) is one of these.
    In {
        field: String,
        values: Vec<Literal>,
    },
    /// The field's values and these have one in common.
    Intersects {
        field: String,
        values: Vec<Literal>,
    },
    /// The field's text contains this text, or its values contain this value.
    Contains {
        field: String,
        value: Literal,
    },
    /// The field's text matches the pattern, `*` standing for any run of characters.
    Like {
        field: String,
        pattern: String,
    },
    /// `low <= value <= high`.
    Between {
        field: String,
        low: Literal,
        high: Literal,
    },
    /// The profile is in the segment of this name.
    Include(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CompareOp {
    pub fn symbol(self) -> &'static str {
        match self {
            CompareOp::Eq => "==",
            CompareOp::Ne => "!=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Literal {
    /// Text; also dates (`"2026-11-01"`) and date math (`"now-7d"`), read as times when
    /// compared with times.
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Expr {
    /// Every field the expression reads, and every segment it includes.
    pub fn fields(&self, fields: &mut Vec<String>, includes: &mut Vec<String>) {
        match self {
            Expr::And(all) | Expr::Or(all) => {
                for expr in all {
                    expr.fields(fields, includes);
                }
            }
            Expr::Not(expr) => expr.fields(fields, includes),
            Expr::Compare { field, .. }
            | Expr::Exists(field)
            | Expr::In { field, .. }
            | Expr::Intersects { field, .. }
            | Expr::Contains { field, .. }
            | Expr::Like { field, .. }
            | Expr::Between { field, .. } => {
                if !fields.contains(field) {
                    fields.push(field.clone());
                }
            }
            Expr::Include(name) => {
                if !includes.contains(name) {
                    includes.push(name.clone());
                }
            }
        }
    }
}
