//! FilterQL, the language segments are written in (the filter language of Lytics):
//!
//! ```text
//! FILTER AND (
//!     visit_count > 3,
//!     EXISTS email,
//!     NOT INCLUDE churned,
//!     last_seen > "now-7d",
//!     event_count.purchase.30d >= 2
//! )
//! ALIAS engaged_buyers
//! ```
//!
//! [`parse`] reads a statement, with errors that say where and what was expected;
//! [`print`] writes its canonical form (parsing that gives the same statement back);
//! [`check`] finds what cannot work before a filter is saved; [`eval`] decides whether
//! a profile matches, and [`eval::explain`] says why.

#![forbid(unsafe_code)]

pub mod ast;
pub mod check;
pub mod eval;
pub mod parse;
pub mod print;

pub use ast::{CompareOp, Expr, Filter, Literal};
pub use check::{FieldType, Schema, check, check_includes};
pub use eval::{Context, Explanation, explain, matches, next_change};
pub use parse::{ParseError, parse};
pub use print::{expr_text, print};
