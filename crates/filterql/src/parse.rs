//! The lexer and the recursive-descent parser. Errors say where (line and column, both
//! from 1) and what was expected.

use crate::ast::{CompareOp, Expr, Filter, Literal};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// A bare word: an identifier or a keyword.
    Word(String),
    /// A name in back-ticks: always an identifier.
    Quoted(String),
    Text(String),
    Int(i64),
    Float(f64),
    Op(&'static str),
    Open,
    Close,
    Comma,
    End,
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Word(word) => format!("`{word}`"),
            Token::Quoted(name) => format!("`{name}`"),
            Token::Text(text) => format!("the text {text:?}"),
            Token::Int(number) => format!("the number {number}"),
            Token::Float(number) => format!("the number {number}"),
            Token::Op(op) => format!("`{op}`"),
            Token::Open => "`(`".to_string(),
            Token::Close => "`)`".to_string(),
            Token::Comma => "`,`".to_string(),
            Token::End => "the end of the filter".to_string(),
        }
    }

    fn is_keyword(&self, keyword: &str) -> bool {
        matches!(self, Token::Word(word) if word.eq_ignore_ascii_case(keyword))
    }
}

#[derive(Debug, Clone)]
struct Spanned {
    token: Token,
    line: usize,
    column: usize,
}

/// Words with a meaning of their own: a field with such a name needs back-ticks.
pub const KEYWORDS: &[&str] = &[
    "FILTER",
    "SELECT",
    "WHERE",
    "AND",
    "OR",
    "NOT",
    "EXISTS",
    "IN",
    "INTERSECTS",
    "CONTAINS",
    "LIKE",
    "BETWEEN",
    "INCLUDE",
    "FROM",
    "ALIAS",
    "LIMIT",
    "WITH",
    "TRUE",
    "FALSE",
    "NULL",
];

pub fn is_keyword(word: &str) -> bool {
    KEYWORDS
        .iter()
        .any(|keyword| keyword.eq_ignore_ascii_case(word))
}

/// Whether `name` can be written without back-ticks.
pub fn is_bare_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        && !name.ends_with('.')
        && !is_keyword(name)
}

/// Where the lexer is: the character index, and its line and column (from 1).
struct Cursor {
    index: usize,
    line: usize,
    column: usize,
}

impl Cursor {
    fn advance(&mut self, chars: &[char], count: usize) {
        for _ in 0..count {
            if chars.get(self.index) == Some(&'\n') {
                self.line += 1;
                self.column = 1;
            } else {
                self.column += 1;
            }
            self.index += 1;
        }
    }
}

fn lex(source: &str) -> Result<Vec<Spanned>, ParseError> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut cur = Cursor {
        index: 0,
        line: 1,
        column: 1,
    };
    let error = |line, column, message: String| ParseError {
        line,
        column,
        message,
    };
    while cur.index < chars.len() {
        let c = chars[cur.index];
        let (start_line, start_column) = (cur.line, cur.column);
        if c.is_whitespace() {
            cur.advance(&chars, 1);
            continue;
        }
        if c == '-' && chars.get(cur.index + 1) == Some(&'-') {
            while cur.index < chars.len() && chars[cur.index] != '\n' {
                cur.advance(&chars, 1);
            }
            continue;
        }
        let token = match c {
            '(' => {
                cur.advance(&chars, 1);
                Token::Open
            }
            ')' => {
                cur.advance(&chars, 1);
                Token::Close
            }
            ',' => {
                cur.advance(&chars, 1);
                Token::Comma
            }
            '=' | '!' | '<' | '>' => {
                let next = chars.get(cur.index + 1).copied();
                let (op, width) = match (c, next) {
                    ('=', Some('=')) => ("==", 2),
                    ('=', _) => ("=", 1),
                    ('!', Some('=')) => ("!=", 2),
                    ('<', Some('=')) => ("<=", 2),
                    ('<', Some('>')) => ("!=", 2),
                    ('<', _) => ("<", 1),
                    ('>', Some('=')) => (">=", 2),
                    ('>', _) => (">", 1),
                    _ => {
                        return Err(error(
                            start_line,
                            start_column,
                            "`!` must be followed by `=` (use NOT to negate)".to_string(),
                        ));
                    }
                };
                cur.advance(&chars, width);
                Token::Op(op)
            }
            '"' => {
                cur.advance(&chars, 1);
                let mut text = String::new();
                loop {
                    match chars.get(cur.index) {
                        None => {
                            return Err(error(
                                start_line,
                                start_column,
                                "this text has no closing `\"`".to_string(),
                            ));
                        }
                        Some('"') => {
                            cur.advance(&chars, 1);
                            break;
                        }
                        Some('\\') => {
                            let escaped = match chars.get(cur.index + 1) {
                                Some('"') => '"',
                                Some('\\') => '\\',
                                Some('n') => '\n',
                                Some('t') => '\t',
                                _ => {
                                    return Err(error(
                                        cur.line,
                                        cur.column,
                                        "unknown escape in text (use \\\", \\\\, \\n or \\t)"
                                            .to_string(),
                                    ));
                                }
                            };
                            text.push(escaped);
                            cur.advance(&chars, 2);
                        }
                        Some(other) => {
                            text.push(*other);
                            cur.advance(&chars, 1);
                        }
                    }
                }
                Token::Text(text)
            }
            '\'' => {
                return Err(error(
                    start_line,
                    start_column,
                    "text goes in double quotes (\"...\")".to_string(),
                ));
            }
            c if c.is_ascii_digit()
                || (c == '-' && chars.get(cur.index + 1).is_some_and(char::is_ascii_digit)) =>
            {
                let mut text = String::from(c);
                cur.advance(&chars, 1);
                while let Some(&next) = chars.get(cur.index) {
                    let exponent_sign = (next == '-' || next == '+') && text.ends_with(['e', 'E']);
                    if next.is_ascii_digit()
                        || next == '.'
                        || next == 'e'
                        || next == 'E'
                        || exponent_sign
                    {
                        text.push(next);
                        cur.advance(&chars, 1);
                    } else {
                        break;
                    }
                }
                if text.contains(['.', 'e', 'E']) {
                    match text.parse::<f64>() {
                        Ok(number) if number.is_finite() => Token::Float(number),
                        _ => {
                            return Err(error(
                                start_line,
                                start_column,
                                format!("{text} is not a number"),
                            ));
                        }
                    }
                } else {
                    Token::Int(text.parse().map_err(|_| {
                        error(
                            start_line,
                            start_column,
                            format!("{text} is not a whole number that fits in 64 bits"),
                        )
                    })?)
                }
            }
            // A name: words joined by dots, any part of which may be in back-ticks
            // (`event_count.`Order Completed`.30d`).
            c if c.is_ascii_alphabetic() || c == '_' || c == '`' => {
                let mut name = String::new();
                let mut quoted = false;
                loop {
                    match chars.get(cur.index) {
                        Some('`') if name.is_empty() || name.ends_with('.') => {
                            let (quote_line, quote_column) = (cur.line, cur.column);
                            cur.advance(&chars, 1);
                            let mut part = String::new();
                            loop {
                                match chars.get(cur.index) {
                                    None | Some('\n') => {
                                        return Err(error(
                                            quote_line,
                                            quote_column,
                                            "this name has no closing back-tick".to_string(),
                                        ));
                                    }
                                    Some('`') => {
                                        cur.advance(&chars, 1);
                                        break;
                                    }
                                    Some(other) => {
                                        part.push(*other);
                                        cur.advance(&chars, 1);
                                    }
                                }
                            }
                            if part.is_empty() {
                                return Err(error(
                                    quote_line,
                                    quote_column,
                                    "an empty name".to_string(),
                                ));
                            }
                            name.push_str(&part);
                            quoted = true;
                        }
                        Some(&next)
                            if next.is_ascii_alphanumeric() || next == '_' || next == '.' =>
                        {
                            name.push(next);
                            cur.advance(&chars, 1);
                        }
                        _ => break,
                    }
                }
                if quoted {
                    Token::Quoted(name)
                } else {
                    Token::Word(name)
                }
            }
            other => {
                return Err(error(
                    start_line,
                    start_column,
                    format!("unexpected character {other:?}"),
                ));
            }
        };
        tokens.push(Spanned {
            token,
            line: start_line,
            column: start_column,
        });
    }
    tokens.push(Spanned {
        token: Token::End,
        line: cur.line,
        column: cur.column,
    });
    Ok(tokens)
}

/// How deep conditions may nest: far beyond what people write, shallow enough that
/// parsing, printing and evaluation never run out of stack.
pub const MAX_DEPTH: usize = 64;

struct Parser {
    tokens: Vec<Spanned>,
    at: usize,
    /// Groups and NOTs open around the current position.
    depth: usize,
}

impl Parser {
    fn peek(&self) -> &Token {
        &self.tokens[self.at].token
    }

    fn peek_next(&self) -> &Token {
        &self.tokens[(self.at + 1).min(self.tokens.len() - 1)].token
    }

    fn next(&mut self) -> Token {
        let token = self.tokens[self.at].token.clone();
        if self.at + 1 < self.tokens.len() {
            self.at += 1;
        }
        token
    }

    fn fail<T>(&self, expected: &str) -> Result<T, ParseError> {
        let here = &self.tokens[self.at];
        Err(ParseError {
            line: here.line,
            column: here.column,
            message: format!("expected {expected}, found {}", here.token.describe()),
        })
    }

    fn keyword(&mut self, keyword: &str) -> bool {
        if self.peek().is_keyword(keyword) {
            self.next();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: Token, expected: &str) -> Result<(), ParseError> {
        if *self.peek() == token {
            self.next();
            Ok(())
        } else {
            self.fail(expected)
        }
    }

    fn identifier(&mut self, what: &str) -> Result<String, ParseError> {
        match self.peek().clone() {
            Token::Word(word) if !is_keyword(&word) => {
                self.next();
                Ok(word)
            }
            Token::Quoted(name) => {
                self.next();
                Ok(name)
            }
            _ => self.fail(what),
        }
    }

    fn literal(&mut self) -> Result<Literal, ParseError> {
        let literal = match self.peek().clone() {
            Token::Text(text) => Literal::Text(text),
            Token::Int(number) => Literal::Int(number),
            Token::Float(number) => Literal::Float(number),
            Token::Word(word) if word.eq_ignore_ascii_case("true") => Literal::Bool(true),
            Token::Word(word) if word.eq_ignore_ascii_case("false") => Literal::Bool(false),
            _ => return self.fail("a value (\"text\", a number, true or false)"),
        };
        self.next();
        Ok(literal)
    }

    fn list(&mut self) -> Result<Vec<Literal>, ParseError> {
        self.expect(Token::Open, "`(` and a list of values")?;
        let mut values = Vec::new();
        loop {
            if *self.peek() == Token::Close {
                self.next();
                break;
            }
            values.push(self.literal()?);
            match self.peek() {
                Token::Comma => {
                    self.next();
                }
                Token::Close => {}
                _ => return self.fail("`,` or `)`"),
            }
        }
        if values.is_empty() {
            return self.fail("at least one value in the list");
        }
        Ok(values)
    }

    /// An expression: terms joined by infix AND (binding tighter) and OR.
    fn expr(&mut self, in_list: bool) -> Result<Expr, ParseError> {
        let mut any = vec![self.all(in_list)?];
        while self.infix("OR", in_list) {
            self.next();
            any.push(self.all(in_list)?);
        }
        Ok(if any.len() == 1 {
            any.remove(0)
        } else {
            Expr::Or(any)
        })
    }

    fn all(&mut self, in_list: bool) -> Result<Expr, ParseError> {
        let mut all = vec![self.unary()?];
        while self.infix("AND", in_list) {
            self.next();
            all.push(self.unary()?);
        }
        Ok(if all.len() == 1 {
            all.remove(0)
        } else {
            Expr::And(all)
        })
    }

    /// Whether the next `keyword` joins what came before. In a list, where commas are
    /// optional, `AND (` on a new line starts the next element; on the same line as
    /// what came before, it joins it (`a = 1 AND (b = 2)` means the same everywhere).
    fn infix(&self, keyword: &str, in_list: bool) -> bool {
        if !self.peek().is_keyword(keyword) {
            return false;
        }
        if !in_list || *self.peek_next() != Token::Open || self.at == 0 {
            return true;
        }
        self.tokens[self.at - 1].line == self.tokens[self.at].line
    }

    /// Enters a group or a NOT, refusing to nest without end.
    fn deeper(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.fail(&format!("at most {MAX_DEPTH} levels of nested conditions"));
        }
        Ok(())
    }

    fn group(&mut self) -> Result<Vec<Expr>, ParseError> {
        self.expect(Token::Open, "`(`")?;
        let mut items = Vec::new();
        loop {
            if *self.peek() == Token::Close {
                self.next();
                return Ok(items);
            }
            if *self.peek() == Token::End {
                return self.fail("`)` to close the group");
            }
            items.push(self.expr(true)?);
            if *self.peek() == Token::Comma {
                self.next();
            }
        }
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        self.deeper()?;
        let unary = self.unary_at_depth();
        self.depth -= 1;
        unary
    }

    fn unary_at_depth(&mut self) -> Result<Expr, ParseError> {
        if self.keyword("NOT") {
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.peek().is_keyword("AND") && *self.peek_next() == Token::Open {
            self.next();
            return Ok(Expr::And(self.group()?));
        }
        if self.peek().is_keyword("OR") && *self.peek_next() == Token::Open {
            self.next();
            return Ok(Expr::Or(self.group()?));
        }
        if *self.peek() == Token::Open {
            self.next();
            let inner = self.expr(false)?;
            self.expect(Token::Close, "`)`")?;
            return Ok(inner);
        }
        if self.keyword("INCLUDE") {
            return Ok(Expr::Include(self.identifier("the name of a segment")?));
        }
        if self.keyword("EXISTS") {
            return Ok(Expr::Exists(self.identifier("a field name")?));
        }
        let field =
            self.identifier("a condition (a field, NOT, EXISTS, INCLUDE, AND (...) or OR (...))")?;
        self.predicate(field)
    }

    fn predicate(&mut self, field: String) -> Result<Expr, ParseError> {
        if let Token::Op(op) = self.peek().clone() {
            let op = match op {
                "==" | "=" => CompareOp::Eq,
                "!=" => CompareOp::Ne,
                "<" => CompareOp::Lt,
                "<=" => CompareOp::Le,
                ">" => CompareOp::Gt,
                ">=" => CompareOp::Ge,
                _ => return self.fail("a comparison"),
            };
            self.next();
            let value = self.literal()?;
            return Ok(Expr::Compare { field, op, value });
        }
        if self.keyword("IN") {
            return Ok(Expr::In {
                field,
                values: self.list()?,
            });
        }
        if self.keyword("INTERSECTS") {
            return Ok(Expr::Intersects {
                field,
                values: self.list()?,
            });
        }
        if self.keyword("CONTAINS") {
            return Ok(Expr::Contains {
                field,
                value: self.literal()?,
            });
        }
        if self.keyword("LIKE") {
            return match self.next() {
                Token::Text(pattern) => Ok(Expr::Like { field, pattern }),
                _ => {
                    self.at -= 1;
                    self.fail("a pattern in double quotes after LIKE")
                }
            };
        }
        if self.keyword("BETWEEN") {
            let low = self.literal()?;
            if !self.keyword("AND") {
                return self.fail("AND between the two bounds of BETWEEN");
            }
            let high = self.literal()?;
            return Ok(Expr::Between { field, low, high });
        }
        self.fail(&format!(
            "a comparison (==, !=, <, <=, >, >=), IN, INTERSECTS, CONTAINS, LIKE or BETWEEN after `{field}`"
        ))
    }

    fn filter(&mut self) -> Result<Filter, ParseError> {
        if !self.keyword("FILTER") {
            self.keyword("WHERE");
        }
        let expr = self.expr(false)?;
        let from = if self.keyword("FROM") {
            Some(self.identifier("the name of what is filtered after FROM")?)
        } else {
            None
        };
        let limit = if self.keyword("LIMIT") {
            match self.next() {
                Token::Int(limit) if limit >= 0 => Some(limit as u64),
                _ => {
                    self.at -= 1;
                    return self.fail("a whole number after LIMIT");
                }
            }
        } else {
            None
        };
        let mut with = Vec::new();
        if self.keyword("WITH") {
            loop {
                let key = self.identifier("an option name after WITH")?;
                if *self.peek() != Token::Op("=") && *self.peek() != Token::Op("==") {
                    return self.fail(&format!("`=` after `{key}`"));
                }
                self.next();
                with.push((key, self.literal()?));
                if *self.peek() == Token::Comma {
                    self.next();
                } else {
                    break;
                }
            }
        }
        let alias = if self.keyword("ALIAS") {
            Some(self.identifier("a name after ALIAS")?)
        } else {
            None
        };
        if *self.peek() != Token::End {
            return self.fail("the end of the filter (or FROM, LIMIT, WITH, ALIAS, in that order)");
        }
        Ok(Filter {
            expr,
            from,
            limit,
            with,
            alias,
        })
    }
}

/// Parses a FilterQL statement (`FILTER` may be left out).
pub fn parse(source: &str) -> Result<Filter, ParseError> {
    let mut parser = Parser {
        tokens: lex(source)?,
        at: 0,
        depth: 0,
    };
    parser.filter()
}
