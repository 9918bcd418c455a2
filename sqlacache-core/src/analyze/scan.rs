//! One pass over a statement's tree: the relations, functions, locks and clock words it
//! holds, and the writes nested inside it.

use super::targets::write_targets;
use super::{ident, FunctionName, TableName};
use sqlparser::ast::{self, Expr, ObjectName, ObjectNamePart, Query, SetExpr, Statement, TableFactor, Visitor};
use std::ops::ControlFlow;

/// Everything one pass over a statement's tree collects.
#[derive(Default)]
pub(super) struct Scan {
    pub(super) relations: Vec<TableName>,
    pub(super) unreadable_relation: bool,
    pub(super) ctes: Vec<String>,
    pub(super) locks: bool,
    pub(super) volatile: bool,
    pub(super) select_into: bool,
    /// DML nested in a query (data-modifying CTEs), found anywhere below the top statement.
    pub(super) nested_writes: Vec<TableName>,
    pub(super) depth: usize,
    pub(super) functions: Vec<FunctionName>,
    /// The clock decides the result (`CURRENT_DATE`, `'now'`, a computed date/time input).
    pub(super) clock: bool,
    /// `TABLESAMPLE`.
    pub(super) sample: bool,
    /// `set_config(..)`, which changes the session.
    pub(super) session: bool,
    /// Temporary tables made by `SELECT .. INTO TEMP`.
    pub(super) temp_into: Vec<String>,
}

impl Visitor for Scan {
    type Break = ();

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        self.depth += 1;
        if self.depth > 1 {
            for table in write_targets(statement) {
                self.nested_writes.push(table);
            }
            if !matches!(statement, Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_)) {
                self.volatile = true;
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_statement(&mut self, _: &Statement) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if !query.locks.is_empty() || query.for_clause.is_some() {
            self.locks = true;
        }
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                self.ctes.push(ident(&cte.alias.name));
            }
        }
        self.table_statements(&query.body);
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &ast::Select) -> ControlFlow<()> {
        if let Some(into) = &select.into {
            self.select_into = true;
            if into.temporary {
                for target in &into.targets {
                    match target {
                        Expr::Identifier(i) => self.temp_into.push(ident(i)),
                        Expr::CompoundIdentifier(parts) => self.temp_into.extend(parts.last().map(ident)),
                        _ => {}
                    }
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        match TableName::from_object(relation) {
            Some(table) => self.relations.push(table),
            None => self.unreadable_relation = true,
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        if matches!(factor, TableFactor::Table { sample: Some(_), .. }) {
            self.sample = true;
        }
        match factor {
            TableFactor::Table { args: Some(_), name, .. } | TableFactor::Function { name, .. } => {
                // Table functions may be volatile or read anything; the catalog also judges
                // what they do to the session.
                self.volatile = true;
                self.call(name);
            }
            TableFactor::TableFunction { .. } => self.volatile = true,
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        match expr {
            Expr::Function(function) => match function_name(&function.name) {
                Some(f) if f.schema.is_none() && is_time_keyword(&f.name) => self.clock = true,
                // Grammar, not functions: PostgreSQL has no `pg_proc` entry for them.
                Some(f)
                    if f.schema.is_none()
                        && matches!(f.name.as_str(), "coalesce" | "nullif" | "greatest" | "least") => {}
                Some(_) => self.call(&function.name),
                None => self.volatile = true,
            },
            Expr::Identifier(ident) if ident.quote_style.is_none() && is_time_keyword(&ident.value) => {
                self.clock = true;
            }
            // A date/time value computed from anything but a constant or a column may be
            // 'now' spelled another way ('no' || 'w', a function of the clock).
            Expr::Cast { data_type, expr, .. } if is_date_time(data_type) && !is_plain_operand(expr) => {
                self.clock = true;
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_value(&mut self, value: &ast::ValueWithSpan) -> ControlFlow<()> {
        // 'now'::timestamptz and friends are evaluated when the statement runs, in any quoting.
        if value.value.clone().into_string().is_some_and(|s| mentions_clock(&s)) {
            self.clock = true;
        }
        ControlFlow::Continue(())
    }
}

impl Scan {
    /// Notes a call of the function `name` (an unreadable name counts as a volatile call that
    /// may change the session).
    fn call(&mut self, name: &ObjectName) {
        match function_name(name) {
            Some(f) => {
                if f.name == "set_config" && f.schema.as_deref().is_none_or(|s| s == "pg_catalog") {
                    self.session = true;
                }
                if !self.functions.contains(&f) {
                    self.functions.push(f);
                }
            }
            None => {
                self.volatile = true;
                self.session = true;
            }
        }
    }

    /// `TABLE name` inside a query body (also under `UNION` and friends) reads that table.
    fn table_statements(&mut self, body: &SetExpr) {
        match body {
            SetExpr::Table(table) => match &table.table_name {
                Some(name) => {
                    self.relations.push(TableName { schema: table.schema_name.as_ref().map(ident), name: ident(name) })
                }
                None => self.unreadable_relation = true,
            },
            SetExpr::SetOperation { left, right, .. } => {
                self.table_statements(left);
                self.table_statements(right);
            }
            _ => {}
        }
    }
}

pub(super) fn function_name(name: &ObjectName) -> Option<FunctionName> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(i) => Some(ident(i)),
            ObjectNamePart::Function(_) => None,
        })
        .collect::<Option<_>>()?;
    match parts.as_slice() {
        [name] => Some(FunctionName { schema: None, name: name.clone() }),
        [.., schema, name] => Some(FunctionName { schema: Some(schema.clone()), name: name.clone() }),
        [] => None,
    }
}

/// Whether a literal names a moment relative to now: PostgreSQL reads 'now', 'today',
/// 'tomorrow' and 'yesterday' (as whole words, in any case) when a date/time value is input.
pub fn mentions_clock(text: &str) -> bool {
    // Words are runs of letters: PostgreSQL's date/time input starts a new field where letters
    // follow digits.
    text.split(|c: char| !c.is_ascii_alphabetic())
        .any(|word| ["now", "today", "tomorrow", "yesterday"].iter().any(|w| word.eq_ignore_ascii_case(w)))
}

/// [`mentions_clock`] over a serialized argument, whose strings sit next to bytes that are not
/// text (a length before each, other values after): a clock word anywhere, in any case, counts
/// unless the byte before it is a letter that cannot be a string's length (so it is
/// part of a longer word, as in `snow`). What follows a word is never trusted, since the next
/// value may start with any byte. Errs toward `true`, which only costs caching.
///
/// ```
/// use sqlacache_core::analyze::mentions_clock_bytes;
/// assert!(mentions_clock_bytes(b"\x03now"));
/// // 'today' and 44 spaces: 49 bytes, whose length reads as the digit '1'.
/// let mut padded = vec![49_u8];
/// padded.extend(b"today");
/// padded.extend([b' '; 44]);
/// assert!(mentions_clock_bytes(&padded));
/// assert!(!mentions_clock_bytes(b"\x04snow"));
/// assert!(!mentions_clock_bytes(b"\x0a2020-01-01"));
/// ```
pub fn mentions_clock_bytes(bytes: &[u8]) -> bool {
    const WORDS: [&[u8]; 4] = [b"now", b"today", b"tomorrow", b"yesterday"];
    // The shortest word has three letters (most keys are a small integer: one or two bytes).
    bytes.len() >= 3
        && (0..bytes.len()).any(|i| {
            // Most bytes start no clock word: one comparison rules them out.
            let starts_word = matches!(bytes[i] | 0x20, b'n' | b't' | b'y')
                && WORDS.iter().any(|w| bytes[i..].get(..w.len()).is_some_and(|b| b.eq_ignore_ascii_case(w)));
            starts_word
                && match i.checked_sub(1).map(|j| bytes[j]) {
                    None => true,
                    // PostgreSQL's date/time input starts a new field where letters follow digits.
                    Some(before) if !before.is_ascii_alphabetic() => true,
                    // It may be the length of a string that starts here (or the last byte of a longer
                    // length).
                    Some(before) => i + usize::from(before) <= bytes.len() || bytes.len() >= 128,
                }
        })
}

pub(super) fn is_date_time(data_type: &ast::DataType) -> bool {
    let text = data_type.to_string().to_lowercase();
    ["date", "time", "abstime", "reltime"].iter().any(|w| text.contains(w))
}

/// A column, a constant or a placeholder: a cast of it to a date/time type reads no clock
/// unless the constant itself says so (checked separately).
pub(super) fn is_plain_operand(expr: &Expr) -> bool {
    match expr {
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) | Expr::Value(_) | Expr::TypedString(_) => true,
        Expr::Nested(inner) => is_plain_operand(inner),
        Expr::Cast { expr, .. } => is_plain_operand(expr),
        _ => false,
    }
}

pub(super) fn is_time_keyword(word: &str) -> bool {
    matches!(
        word.to_lowercase().as_str(),
        "current_date"
            | "current_time"
            | "current_timestamp"
            | "localtime"
            | "localtimestamp"
            | "current_user"
            | "session_user"
            | "current_role"
            | "user"
            | "current_schema"
            | "current_catalog"
    )
}
