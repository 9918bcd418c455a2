//! SQL analysis: what a statement reads, what it writes, and whether its result may be cached.
//!
//! The analysis is syntactic (no catalog): table names come back normalized the way PostgreSQL
//! folds them (unquoted identifiers to lower case, `public.` kept as written so the caller can
//! resolve it with the catalog). Callers memoize the result per SQL string; parsing costs
//! microseconds and a cache hit must not pay it.
//!
//! The analysis errs on the side of invalidating more: a statement it cannot read is reported as
//! [`Effect::Everything`], and a read it is unsure about is reported as not cacheable.

use sqlparser::ast::{
    self, AssignmentTarget, Expr, FromTable, ObjectName, ObjectNamePart, OnConflictAction, OnInsert, Query, SelectItem,
    SetExpr, Statement, TableFactor, TableObject, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};
use std::ops::ControlFlow;

pub use crate::stats::Uncached;

/// A table reference as written, normalized like PostgreSQL folds identifiers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TableName {
    /// The schema, when the reference is qualified.
    pub schema: Option<String>,
    /// The table name.
    pub name: String,
}

impl TableName {
    /// Parses a configuration name such as `users`, `app.users` or `"Mixed"`.
    ///
    /// ```
    /// use sqlacache_core::analyze::TableName;
    /// let t = TableName::parse("App.Users");
    /// assert_eq!((t.schema.as_deref(), t.name.as_str()), (Some("app"), "users"));
    /// assert_eq!(TableName::parse("\"Mixed\"").name, "Mixed");
    /// ```
    pub fn parse(text: &str) -> TableName {
        let parts: Vec<String> = split_name(text).into_iter().map(|p| fold(&p)).collect();
        match parts.as_slice() {
            [schema, name] => TableName { schema: Some(schema.clone()), name: name.clone() },
            _ => TableName { schema: None, name: parts.last().cloned().unwrap_or_default() },
        }
    }

    fn from_object(name: &ObjectName) -> Option<TableName> {
        let idents: Vec<&ast::Ident> = name
            .0
            .iter()
            .map(|part| match part {
                ObjectNamePart::Identifier(ident) => Some(ident),
                ObjectNamePart::Function(_) => None,
            })
            .collect::<Option<_>>()?;
        let norm = ident;
        match idents.as_slice() {
            [name] => Some(TableName { schema: None, name: norm(name) }),
            [schema, name] => Some(TableName { schema: Some(norm(schema)), name: norm(name) }),
            // database.schema.table: the database is always the current one in PostgreSQL.
            [_, schema, name] => Some(TableName { schema: Some(norm(schema)), name: norm(name) }),
            _ => None,
        }
    }
}

fn split_name(text: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut quoted = false;
    for c in text.trim().chars() {
        match c {
            '"' => {
                quoted = !quoted;
                parts.last_mut().expect("never empty").push(c);
            }
            '.' if !quoted => parts.push(String::new()),
            _ => parts.last_mut().expect("never empty").push(c),
        }
    }
    parts
}

fn fold(part: &str) -> String {
    match part.strip_prefix('"').and_then(|p| p.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => part.to_lowercase(),
    }
}

/// The operation a cacheable read performs, used to check the table's [`crate::Ops`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOp {
    /// Returns rows.
    Fetch,
    /// A single `count(..)` with no grouping.
    Count,
    /// A single `EXISTS (..)`.
    Exists,
}

/// A single read statement that may be cached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    /// The operation.
    pub op: ReadOp,
    /// Every relation referenced, including names that may turn out to be CTEs.
    pub tables: Vec<TableName>,
    /// Names defined by `WITH` clauses; such a name that does not resolve to a table is ignored.
    pub ctes: Vec<String>,
}

/// What a write statement does to one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    /// The table written.
    pub table: TableName,
    /// How it is written.
    pub kind: WriteKind,
    /// Columns assigned by `UPDATE .. SET` or `ON CONFLICT DO UPDATE SET` (a primary key among
    /// them means the old key is not known).
    pub assigned: Vec<String>,
    /// How the rows written can be learned from the statement's output.
    pub rows: RowSource,
}

/// The kind of a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteKind {
    /// `INSERT` (with or without `ON CONFLICT`).
    Insert,
    /// `UPDATE`.
    Update,
    /// `DELETE`.
    Delete,
    /// `MERGE`, `COPY .. FROM`: rows unknown.
    Other,
    /// `TRUNCATE`; `cascade` when it also truncates referencing tables.
    Truncate {
        /// `TRUNCATE .. CASCADE`.
        cascade: bool,
    },
    /// `ALTER TABLE` / `DROP TABLE`: the table's data may change or vanish.
    Ddl,
}

/// How the primary keys of the rows a write touched can be learned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowSource {
    /// They cannot: the write must invalidate all point reads of the table.
    Unknown,
    /// The statement has no `RETURNING`; one can be appended at byte offset `at`, with columns
    /// qualified by `qualifier` (the target's alias or name, as written).
    Append {
        /// Byte offset in the SQL text where ` RETURNING ..` goes.
        at: usize,
        /// The qualifier for the appended columns.
        qualifier: String,
    },
    /// The statement's own `RETURNING` list; each item's output name and, when the item is a
    /// plain reference to a column of the target, that column. `star_first` when it starts
    /// with `*`.
    Returning {
        /// Output name and source column of each item, in order.
        items: Vec<(String, Option<String>)>,
        /// Whether the list starts with `*` (every column, under its own name).
        star_first: bool,
    },
}

/// What executing a SQL string does to cached data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing (reads, transaction control, settings).
    None,
    /// Writes to known tables.
    Writes(Vec<Write>),
    /// Anything: the string could not be read, or it runs code the analysis cannot see.
    Everything {
        /// Whether the string parsed; an unparsable string that PostgreSQL rejects with a syntax
        /// error ran nothing.
        parsed: bool,
    },
}

/// A function called by a statement, as written (folded like PostgreSQL folds identifiers).
/// Whether a read calling it may be cached is decided with the catalog (`pg_proc`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FunctionName {
    /// The schema, when the call is qualified.
    pub schema: Option<String>,
    /// The function name.
    pub name: String,
}

/// The analysis of one SQL string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Analysis {
    /// `Ok` when the string is one read statement that may be cached; otherwise why not.
    pub read: Result<Read, Uncached>,
    /// Functions the statement calls; a read is cached only if every one is immutable.
    pub functions: Vec<FunctionName>,
    /// What executing it does.
    pub effect: Effect,
    /// Number of statements in the string (0 when it did not parse).
    pub statements: usize,
    /// Whether it changes the schema (the caller should reload its catalog).
    pub ddl: bool,
    /// Temporary relations (tables and views) it creates.
    pub temp_tables: Vec<String>,
    /// Whether it changes the state of the session that runs it beyond the statement: a
    /// session-level `SET`, `RESET`, `SET ROLE`, `SET SESSION AUTHORIZATION`, `DISCARD`,
    /// `set_config(..)`, or a `BEGIN` that the string leaves open.
    pub session: bool,
    /// Whether it contains transaction control (`BEGIN`, `COMMIT`, `ROLLBACK`, `END`) or runs
    /// code that may commit (`CALL`, `EXECUTE`): then part of it may have committed even when it
    /// fails. (`DO` does not parse, and an unparsed string is assumed to.)
    pub transaction_control: bool,
    /// Whether it contains a `COMMIT`, `END` or `ROLLBACK` (not to a savepoint): run inside a
    /// transaction, it ends it.
    pub ends_transaction: bool,
    /// Whether it contains a `BEGIN` / `START TRANSACTION`: if it fails, the session may be
    /// left inside an aborted transaction.
    pub begins: bool,
}

impl Analysis {
    fn empty(read: Uncached, effect: Effect, statements: usize) -> Analysis {
        Analysis {
            read: Err(read),
            functions: Vec::new(),
            effect,
            statements,
            ddl: false,
            temp_tables: Vec::new(),
            session: false,
            transaction_control: false,
            ends_transaction: false,
            begins: false,
        }
    }
}

/// Respells valid PostgreSQL that the parser does not know as what it means: blanks the words
/// that make `FOR NO KEY UPDATE` and `FOR KEY SHARE` (keeping every byte offset), so they
/// parse as the `FOR UPDATE` / `FOR SHARE` they lock like, and writes a leading `TABLE t` as
/// `SELECT * FROM t`. `None` when there is nothing to respell.
fn respell_locks(sql: &str) -> Option<String> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize_with_location().ok()?;
    let words: Vec<(usize, &sqlparser::tokenizer::TokenWithSpan)> =
        tokens.iter().filter(|t| !matches!(t.token, Token::Whitespace(_))).enumerate().collect();
    let is = |i: usize, word: &str| {
        words.get(i).is_some_and(|(_, t)| matches!(&t.token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word)))
    };
    let mut blank = Vec::new();
    for i in 0..words.len() {
        if !is(i, "for") {
            continue;
        }
        if is(i + 1, "no") && is(i + 2, "key") && is(i + 3, "update") {
            blank.extend([i + 1, i + 2]);
        } else if is(i + 1, "key") && is(i + 2, "share") {
            blank.push(i + 1);
        }
    }
    let table_statement = is(0, "table");
    if blank.is_empty() && !table_statement {
        return None;
    }
    let mut out = sql.to_owned();
    for i in blank {
        let (_, token) = words[i];
        let range = byte_range(sql, token.span)?;
        out.replace_range(range.clone(), &" ".repeat(range.len()));
    }
    if table_statement {
        // `TABLE t` is `SELECT * FROM t`. Offsets after it move, which only matters to writes.
        let range = byte_range(sql, words[0].1.span)?;
        out.replace_range(range, "SELECT * FROM");
    }
    Some(out)
}

/// Whether a string that does not parse has a statement starting with `COMMIT`, `END`,
/// `ABORT`, `ROLLBACK` (not `ROLLBACK TO`) or `PREPARE TRANSACTION`.
fn ends_transaction_by_words(sql: &str) -> bool {
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else {
        // Not even tokens: PostgreSQL rejects it before running anything.
        return false;
    };
    let mut starts = vec![Vec::new()];
    for token in tokens {
        match token {
            Token::SemiColon => starts.push(Vec::new()),
            Token::Whitespace(_) => {}
            Token::Word(w) => {
                let statement = starts.last_mut().expect("never empty");
                if statement.len() < 2 {
                    statement.push(if w.quote_style.is_none() { w.value.to_lowercase() } else { String::new() });
                }
            }
            _ => {
                let statement = starts.last_mut().expect("never empty");
                if statement.len() < 2 {
                    statement.push(String::new());
                }
            }
        }
    }
    starts.iter().any(|words| match words.as_slice() {
        [first, ..] if matches!(first.as_str(), "commit" | "end" | "abort") => true,
        [first, second, ..] if first == "rollback" => !matches!(second.as_str(), "to" | "prepared"),
        [first] if first == "rollback" => true,
        [first, second, ..] if first == "prepare" => second == "transaction",
        _ => false,
    })
}

/// The byte range of a token's span (lines and columns count characters from 1).
fn byte_range(sql: &str, span: sqlparser::tokenizer::Span) -> Option<std::ops::Range<usize>> {
    let offset = |loc: sqlparser::tokenizer::Location| -> Option<usize> {
        let line_start = if loc.line <= 1 {
            0
        } else {
            sql.match_indices('\n').nth(usize::try_from(loc.line).ok()? - 2).map(|(i, _)| i + 1)?
        };
        let column = usize::try_from(loc.column).ok()?.checked_sub(1)?;
        Some(sql[line_start..].char_indices().nth(column).map(|(i, _)| line_start + i).unwrap_or(sql.len()))
    };
    Some(offset(span.start)?..offset(span.end)?)
}

/// Analyzes one SQL string.
///
/// ```
/// use sqlacache_core::analyze::{analyze, Effect, ReadOp};
/// let a = analyze("SELECT count(*) FROM users WHERE name = 'count('");
/// assert_eq!(a.read.unwrap().op, ReadOp::Count);
/// assert_eq!(a.effect, Effect::None);
///
/// let w = analyze("UPDATE users SET name = $1 WHERE id = $2");
/// assert!(w.read.is_err());
/// assert!(matches!(w.effect, Effect::Writes(ref v) if v[0].table.name == "users"));
///
/// assert!(analyze("SELECT * FROM users FOR UPDATE").read.is_err());
/// // Whether `random` may be cached is the catalog's call: it is reported, not judged here.
/// assert_eq!(analyze("SELECT random() FROM users").functions[0].name, "random");
/// assert_eq!(analyze("SELEC oops").effect, Effect::Everything { parsed: false });
/// ```
pub fn analyze(sql: &str) -> Analysis {
    let parse = |text: &str| Parser::parse_sql(&PostgreSqlDialect {}, text).ok().filter(|s| !s.is_empty());
    let Some(statements) = parse(sql).or_else(|| parse(&respell_locks(sql)?)) else {
        let mut analysis = Analysis::empty(Uncached::Unparsable, Effect::Everything { parsed: false }, 0);
        // What it runs is unknown, but whether it ends a transaction can still be read from
        // the words that start its statements (a `DO` body is one string token).
        analysis.ends_transaction = ends_transaction_by_words(sql);
        analysis.transaction_control = true;
        return analysis;
    };
    let mut analysis = Analysis::empty(Uncached::NotARead, Effect::None, statements.len());
    let mut writes = Vec::new();
    let mut everything = false;
    let single = statements.len() == 1;
    let mut open = false;
    for statement in &statements {
        let mut scan = Scan::default();
        let _ = statement.visit(&mut scan);
        everything |= statement_effect(statement, sql, single, &scan, &mut writes, &mut analysis);
        analysis.session |= scan.session || session_effect(statement);
        match statement {
            Statement::StartTransaction { .. } => {
                open = true;
                analysis.begins = true;
                analysis.transaction_control = true;
            }
            Statement::Commit { .. } | Statement::Rollback { savepoint: None, .. } => {
                open = false;
                analysis.transaction_control = true;
                analysis.ends_transaction = true;
            }
            // `ROLLBACK TO SAVEPOINT` commits nothing and ends nothing.
            Statement::Call(_) | Statement::Execute { .. } => analysis.transaction_control = true,
            _ => {}
        }
        for function in &scan.functions {
            if !analysis.functions.contains(function) {
                analysis.functions.push(function.clone());
            }
        }
        if single {
            if let Statement::Query(query) = statement {
                analysis.read = read_of(query, &scan);
            }
        }
    }
    analysis.session |= open;
    analysis.effect = if everything {
        Effect::Everything { parsed: true }
    } else if writes.is_empty() {
        Effect::None
    } else {
        Effect::Writes(writes)
    };
    analysis
}

/// Everything one pass over a statement's tree collects.
#[derive(Default)]
struct Scan {
    relations: Vec<TableName>,
    unreadable_relation: bool,
    ctes: Vec<String>,
    locks: bool,
    volatile: bool,
    select_into: bool,
    /// DML nested in a query (data-modifying CTEs), found anywhere below the top statement.
    nested_writes: Vec<TableName>,
    depth: usize,
    functions: Vec<FunctionName>,
    /// The clock decides the result (`CURRENT_DATE`, `'now'`, a computed date/time input).
    clock: bool,
    /// `TABLESAMPLE`.
    sample: bool,
    /// `set_config(..)`, which changes the session.
    session: bool,
    /// Temporary tables made by `SELECT .. INTO TEMP`.
    temp_into: Vec<String>,
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
            TableFactor::Table { args: Some(_), .. }
            | TableFactor::Function { .. }
            | TableFactor::TableFunction { .. } => {
                // Table functions may be volatile or read anything.
                self.volatile = true;
            }
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
                Some(f) => {
                    if f.name == "set_config" && f.schema.as_deref().is_none_or(|s| s == "pg_catalog") {
                        self.session = true;
                    }
                    if !self.functions.contains(&f) {
                        self.functions.push(f);
                    }
                }
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

/// Folds an identifier like PostgreSQL: unquoted to lower case, quoted as written.
fn ident(i: &ast::Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_lowercase()
    }
}

fn function_name(name: &ObjectName) -> Option<FunctionName> {
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
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .any(|word| ["now", "today", "tomorrow", "yesterday"].iter().any(|w| word.eq_ignore_ascii_case(w)))
}

/// [`mentions_clock`] over raw bytes (a serialized argument): any run of ASCII letters and
/// digits that spells a clock word. Errs toward `true`, which only costs caching.
pub fn mentions_clock_bytes(bytes: &[u8]) -> bool {
    bytes
        .split(|b| !b.is_ascii_alphanumeric())
        .any(|word| [&b"now"[..], b"today", b"tomorrow", b"yesterday"].iter().any(|w| word.eq_ignore_ascii_case(w)))
}

fn is_date_time(data_type: &ast::DataType) -> bool {
    let text = data_type.to_string().to_lowercase();
    ["date", "time", "abstime", "reltime"].iter().any(|w| text.contains(w))
}

/// A column, a constant or a placeholder: a cast of it to a date/time type reads no clock
/// unless the constant itself says so (checked separately).
fn is_plain_operand(expr: &Expr) -> bool {
    match expr {
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) | Expr::Value(_) | Expr::TypedString(_) => true,
        Expr::Nested(inner) => is_plain_operand(inner),
        Expr::Cast { expr, .. } => is_plain_operand(expr),
        _ => false,
    }
}

/// Whether a top-level statement changes its session beyond itself.
fn session_effect(statement: &Statement) -> bool {
    use ast::{ContextModifier, Set};
    match statement {
        Statement::Set(set) => !matches!(
            set,
            Set::SingleAssignment { scope: Some(ContextModifier::Local), .. }
                | Set::SetRole { context_modifier: Some(ContextModifier::Local), .. }
                | Set::SetTimeZone { local: true, .. }
                | Set::SetTransaction { session: false, .. }
        ),
        Statement::Reset(_) | Statement::Discard { .. } | Statement::Load { .. } => true,
        _ => false,
    }
}

fn is_time_keyword(word: &str) -> bool {
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

fn write_targets(statement: &Statement) -> Vec<TableName> {
    match statement {
        Statement::Insert(insert) => match &insert.table {
            TableObject::TableName(name) => TableName::from_object(name).into_iter().collect(),
            _ => Vec::new(),
        },
        Statement::Update(update) => factor_name(&update.table.relation).into_iter().collect(),
        Statement::Delete(delete) => delete_targets(delete),
        Statement::Merge(merge) => factor_name(&merge.table).into_iter().collect(),
        _ => Vec::new(),
    }
}

fn factor_name(factor: &TableFactor) -> Option<TableName> {
    match factor {
        TableFactor::Table { name, .. } => TableName::from_object(name),
        _ => None,
    }
}

fn factor_qualifier(factor: &TableFactor) -> Option<String> {
    match factor {
        TableFactor::Table { name, alias, .. } => match alias {
            Some(alias) => Some(alias.name.to_string()),
            None => name.0.last().map(|part| part.to_string()),
        },
        _ => None,
    }
}

fn delete_targets(delete: &ast::Delete) -> Vec<TableName> {
    let from = match &delete.from {
        FromTable::WithFromKeyword(tables) | FromTable::WithoutKeyword(tables) => tables,
    };
    from.iter()
        .filter_map(|t| factor_name(&t.relation))
        .chain(delete.tables.iter().filter_map(TableName::from_object))
        .collect()
}

/// Adds the effect of one top-level statement. Returns `true` when it may change anything.
fn statement_effect(
    statement: &Statement,
    sql: &str,
    single: bool,
    scan: &Scan,
    writes: &mut Vec<Write>,
    analysis: &mut Analysis,
) -> bool {
    let unknown =
        |table: TableName, kind: WriteKind| Write { table, kind, assigned: Vec::new(), rows: RowSource::Unknown };
    for table in &scan.nested_writes {
        writes.push(unknown(table.clone(), WriteKind::Other));
    }
    if scan.unreadable_relation {
        return true;
    }
    match statement {
        Statement::Query(_) => {
            if scan.select_into {
                analysis.ddl = true;
                analysis.temp_tables.extend(scan.temp_into.iter().cloned());
            }
            false
        }
        Statement::Insert(insert) => {
            let Some(table) = write_targets(statement).pop() else {
                return true;
            };
            let mut assigned = Vec::new();
            if let Some(OnInsert::OnConflict(conflict)) = &insert.on {
                if let OnConflictAction::DoUpdate(update) = &conflict.action {
                    assigned = assigned_columns(&update.assignments);
                }
            }
            let qualifier = match &insert.table_alias {
                Some(alias) => alias.alias.to_string(),
                None => match &insert.table {
                    TableObject::TableName(name) => name.0.last().map(|p| p.to_string()).unwrap_or_default(),
                    _ => return true,
                },
            };
            let rows = row_source(sql, single, insert.returning.as_deref(), &qualifier);
            writes.push(Write { table, kind: WriteKind::Insert, assigned, rows });
            false
        }
        Statement::Update(update) => {
            let (Some(table), Some(qualifier)) =
                (factor_name(&update.table.relation), factor_qualifier(&update.table.relation))
            else {
                return true;
            };
            if !update.table.joins.is_empty() {
                return true;
            }
            let rows = row_source(sql, single, update.returning.as_deref(), &qualifier);
            writes.push(Write {
                table,
                kind: WriteKind::Update,
                assigned: assigned_columns(&update.assignments),
                rows,
            });
            false
        }
        Statement::Delete(delete) => {
            let targets = delete_targets(delete);
            let from = match &delete.from {
                FromTable::WithFromKeyword(tables) | FromTable::WithoutKeyword(tables) => tables,
            };
            match (targets.as_slice(), from.as_slice()) {
                ([table], [from]) if delete.tables.is_empty() && from.joins.is_empty() => {
                    let Some(qualifier) = factor_qualifier(&from.relation) else {
                        return true;
                    };
                    let rows = row_source(sql, single, delete.returning.as_deref(), &qualifier);
                    writes.push(Write { table: table.clone(), kind: WriteKind::Delete, assigned: Vec::new(), rows });
                }
                ([], _) => return true,
                _ => writes.extend(targets.into_iter().map(|t| unknown(t, WriteKind::Delete))),
            }
            false
        }
        Statement::Merge(_) => match write_targets(statement).pop() {
            Some(table) => {
                writes.push(unknown(table, WriteKind::Other));
                false
            }
            None => true,
        },
        Statement::Truncate(truncate) => {
            let cascade = matches!(truncate.cascade, Some(ast::CascadeOption::Cascade));
            for target in &truncate.table_names {
                match TableName::from_object(&target.name) {
                    Some(table) => writes.push(unknown(table, WriteKind::Truncate { cascade })),
                    None => return true,
                }
            }
            false
        }
        Statement::CreateTable(create) => {
            analysis.ddl = true;
            if create.temporary {
                if let Some(table) = TableName::from_object(&create.name) {
                    analysis.temp_tables.push(table.name);
                }
            }
            false
        }
        Statement::AlterTable(alter) => {
            analysis.ddl = true;
            match TableName::from_object(&alter.name) {
                Some(table) => {
                    writes.push(unknown(table, WriteKind::Ddl));
                    false
                }
                None => true,
            }
        }
        Statement::Drop { object_type, names, .. } => {
            analysis.ddl = true;
            match object_type {
                ast::ObjectType::Table => {
                    for name in names {
                        match TableName::from_object(name) {
                            Some(table) => writes.push(unknown(table, WriteKind::Ddl)),
                            None => return true,
                        }
                    }
                    false
                }
                ast::ObjectType::Index
                | ast::ObjectType::View
                | ast::ObjectType::MaterializedView
                | ast::ObjectType::Sequence => false,
                _ => true,
            }
        }
        Statement::Copy { source, to, .. } => match (source, to) {
            (_, true) => false,
            (ast::CopySource::Table { table_name, .. }, false) => match TableName::from_object(table_name) {
                Some(table) => {
                    writes.push(unknown(table, WriteKind::Other));
                    false
                }
                None => true,
            },
            _ => true,
        },
        Statement::Explain { analyze, statement, .. } => {
            if *analyze {
                // EXPLAIN ANALYZE runs the statement; its writes are not reported back.
                let mut scan = Scan::default();
                let _ = statement.visit(&mut scan);
                let mut inner = Analysis::empty(Uncached::NotARead, Effect::None, 1);
                let everything = statement_effect(statement, sql, false, &scan, writes, &mut inner);
                analysis.ddl |= inner.ddl;
                return everything;
            }
            false
        }
        Statement::CreateView(view) => {
            analysis.ddl = true;
            if view.temporary {
                analysis.temp_tables.extend(TableName::from_object(&view.name).map(|t| t.name));
            }
            false
        }
        Statement::CreateIndex(_)
        | Statement::CreateSchema { .. }
        | Statement::CreateSequence { .. }
        | Statement::CreateExtension(_)
        | Statement::CreateType { .. } => {
            analysis.ddl = true;
            false
        }
        Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. }
        | Statement::Set(_)
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::Comment { .. }
        | Statement::Analyze(_)
        | Statement::LISTEN { .. }
        | Statement::UNLISTEN { .. }
        | Statement::NOTIFY { .. }
        | Statement::Discard { .. }
        | Statement::Deallocate { .. }
        | Statement::Prepare { .. }
        | Statement::Declare { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. }
        | Statement::Lock(_)
        | Statement::Grant(_)
        | Statement::Revoke(_) => false,
        // CALL and EXECUTE: may write anywhere.
        Statement::Call(_) | Statement::Execute { .. } => true,
        // Anything not listed: may write anywhere and change the schema.
        _ => {
            analysis.ddl = true;
            true
        }
    }
}

fn assigned_columns(assignments: &[ast::Assignment]) -> Vec<String> {
    let column = |name: &ObjectName| {
        name.0
            .last()
            .map(|part| match part {
                ObjectNamePart::Identifier(i) if i.quote_style.is_some() => i.value.clone(),
                other => other.to_string().to_lowercase(),
            })
            .unwrap_or_default()
    };
    let mut columns = Vec::new();
    for assignment in assignments {
        match &assignment.target {
            AssignmentTarget::ColumnName(name) => columns.push(column(name)),
            AssignmentTarget::Tuple(names) => columns.extend(names.iter().map(column)),
        }
    }
    columns
}

fn row_source(sql: &str, single: bool, returning: Option<&[SelectItem]>, qualifier: &str) -> RowSource {
    match returning {
        None if single => match append_offset(sql) {
            Some(at) => RowSource::Append { at, qualifier: qualifier.to_owned() },
            None => RowSource::Unknown,
        },
        None => RowSource::Unknown,
        Some(items) => {
            // Only the target's own qualifier names it: with an alias, the table's name refers
            // to another instance of it (`UPDATE t AS x .. FROM t .. RETURNING t.id`).
            let folded_qualifier = fold(qualifier);
            let is_target = |q: &ast::Ident| ident(q) == folded_qualifier;
            let norm = ident;
            let source = |expr: &Expr| match expr {
                Expr::Identifier(i) => Some(norm(i)),
                Expr::CompoundIdentifier(parts) if parts.len() == 2 && is_target(&parts[0]) => Some(norm(&parts[1])),
                _ => None,
            };
            let mut star_first = false;
            let mut out = Vec::new();
            for (index, item) in items.iter().enumerate() {
                match item {
                    SelectItem::Wildcard(_) if index == 0 => star_first = true,
                    SelectItem::QualifiedWildcard(ast::SelectItemQualifiedWildcardKind::ObjectName(name), _)
                        if index == 0
                            && matches!(name.0.as_slice(), [ObjectNamePart::Identifier(i)] if is_target(i)) =>
                    {
                        star_first = true;
                    }
                    SelectItem::UnnamedExpr(expr) => {
                        let src = source(expr);
                        let output = match expr {
                            Expr::Identifier(i) => norm(i),
                            Expr::CompoundIdentifier(parts) => parts.last().map(norm).unwrap_or_default(),
                            _ => String::new(),
                        };
                        out.push((output, src));
                    }
                    SelectItem::ExprWithAlias { expr, alias } => out.push((norm(alias), source(expr))),
                    // Anything else makes the positions of later names uncertain.
                    _ => return RowSource::Unknown,
                }
            }
            RowSource::Returning { items: out, star_first }
        }
    }
}

/// The byte offset just after the last token of a single statement (before any trailing `;`,
/// comment or white space), where a `RETURNING` clause can be appended.
fn append_offset(sql: &str) -> Option<usize> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize_with_location().ok()?;
    let last =
        tokens.iter().rev().find(|t| !matches!(t.token, Token::Whitespace(_) | Token::SemiColon | Token::EOF))?;
    let end = last.span.end;
    let line_start = if end.line <= 1 {
        0
    } else {
        let mut seen = 1;
        let mut start = None;
        for (i, c) in sql.char_indices() {
            if c == '\n' {
                seen += 1;
                if seen == end.line {
                    start = Some(i + 1);
                    break;
                }
            }
        }
        start?
    };
    let column = usize::try_from(end.column).ok()?.checked_sub(1)?;
    let offset = sql[line_start..].char_indices().nth(column).map(|(i, _)| line_start + i).unwrap_or(sql.len());
    // A semicolon between the statement and the offset would mean the span is not what we think.
    if !sql.is_char_boundary(offset) || sql[..offset].trim_end().ends_with(';') {
        return None;
    }
    Some(offset)
}

fn read_of(query: &Query, scan: &Scan) -> Result<Read, Uncached> {
    if !scan.nested_writes.is_empty() || scan.select_into || scan.session {
        return Err(Uncached::NotARead);
    }
    if scan.locks {
        return Err(Uncached::Locking);
    }
    if scan.clock {
        return Err(Uncached::Clock);
    }
    if scan.sample {
        return Err(Uncached::Sample);
    }
    if scan.volatile {
        return Err(Uncached::Volatile);
    }
    if scan.unreadable_relation {
        return Err(Uncached::Unparsable);
    }
    let tables: Vec<TableName> = scan.relations.clone();
    if tables.is_empty() {
        return Err(Uncached::NotARead);
    }
    let op = match query.body.as_ref() {
        SetExpr::Select(select) if select.projection.len() == 1 => {
            let expr = match &select.projection[0] {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => Some(e),
                _ => None,
            };
            let grouped = !matches!(&select.group_by, ast::GroupByExpr::Expressions(e, _) if e.is_empty());
            match expr {
                Some(Expr::Function(f)) if !grouped && f.name.to_string().eq_ignore_ascii_case("count") => {
                    ReadOp::Count
                }
                Some(Expr::Exists { .. }) => ReadOp::Exists,
                _ => ReadOp::Fetch,
            }
        }
        _ => ReadOp::Fetch,
    };
    Ok(Read { op, tables, ctes: scan.ctes.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writes(sql: &str) -> Vec<Write> {
        match analyze(sql).effect {
            Effect::Writes(w) => w,
            other => panic!("{sql}: expected writes, got {other:?}"),
        }
    }

    fn names(read: &Read) -> Vec<String> {
        read.tables.iter().map(|t| t.name.clone()).collect()
    }

    #[test]
    fn op_comes_from_the_tree_not_the_text() {
        assert_eq!(analyze("SELECT * FROM t WHERE note = 'count('").read.unwrap().op, ReadOp::Fetch);
        assert_eq!(analyze("SELECT COUNT(*) AS n FROM t").read.unwrap().op, ReadOp::Count);
        assert_eq!(analyze("SELECT EXISTS (SELECT 1 FROM t WHERE a = $1)").read.unwrap().op, ReadOp::Exists);
        assert_eq!(analyze("SELECT g, count(*) FROM t GROUP BY g").read.unwrap().op, ReadOp::Fetch);
        assert_eq!(analyze("SELECT count(*) FROM t GROUP BY g").read.unwrap().op, ReadOp::Fetch);
    }

    #[test]
    fn joins_and_subqueries_list_every_table() {
        let read = analyze(
            "SELECT u.* FROM users u JOIN orders o ON o.user_id = u.id WHERE u.id IN (SELECT user_id FROM refunds)",
        )
        .read
        .unwrap();
        let mut tables = names(&read);
        tables.sort();
        assert_eq!(tables, ["orders", "refunds", "users"]);
    }

    #[test]
    fn ctes_are_reported_separately() {
        let read = analyze("WITH a AS (SELECT * FROM users) SELECT * FROM a").read.unwrap();
        assert_eq!(read.ctes, ["a"]);
        assert!(names(&read).contains(&"users".to_owned()));
    }

    #[test]
    fn identifiers_fold_like_postgres() {
        let read = analyze(r#"SELECT * FROM Public.Users JOIN "Mixed" ON true"#).read.unwrap();
        assert_eq!(read.tables[0], TableName { schema: Some("public".into()), name: "users".into() });
        assert_eq!(read.tables[1].name, "Mixed");
    }

    #[test]
    fn uncacheable_reads() {
        for sql in [
            "SELECT * FROM t FOR UPDATE",
            "SELECT * FROM t FOR SHARE",
            "SELECT * FROM t WHERE id IN (SELECT id FROM u FOR UPDATE)",
            "SELECT * FROM t WHERE created < CURRENT_TIMESTAMP",
            "SELECT * FROM t WHERE d = current_date",
            "SELECT * FROM t WHERE created < 'now'::timestamptz",
            "SELECT * FROM generate_series(1, 3)",
            "SELECT 1",
            "WITH d AS (DELETE FROM t RETURNING id) SELECT * FROM d",
        ] {
            assert!(analyze(sql).read.is_err(), "{sql} must not be cacheable");
        }
    }

    #[test]
    fn reasons_and_clock_spellings() {
        let reason = |sql: &str| analyze(sql).read.err();
        assert_eq!(reason("SELECT * FROM t FOR UPDATE"), Some(Uncached::Locking));
        assert_eq!(reason("SELECT * FROM t WHERE id = 1 FOR NO KEY UPDATE"), Some(Uncached::Locking));
        assert_eq!(reason("SELECT * FROM t FOR KEY SHARE"), Some(Uncached::Locking));
        assert_eq!(analyze("SELECT * FROM t FOR NO KEY UPDATE").effect, Effect::None, "a lock writes nothing");
        for sql in [
            "SELECT * FROM t WHERE c < $$now$$::timestamptz",
            "SELECT * FROM t WHERE c < E'now'::timestamptz",
            "SELECT * FROM t WHERE c < ('no' || 'w')::timestamptz",
            "SELECT * FROM t WHERE c < CAST('NOW ' AS timestamp with time zone)",
            "SELECT * FROM t WHERE d = date 'today'",
            "SELECT * FROM t WHERE d = 'tomorrow'",
        ] {
            assert_eq!(reason(sql), Some(Uncached::Clock), "{sql}");
        }
        assert_eq!(reason("SELECT * FROM t WHERE note = 'unknown'"), None, "clock words are whole words");
        assert_eq!(reason("SELECT * FROM t WHERE c < '2020-01-01'::timestamptz"), None);
        assert_eq!(reason("SELECT * FROM t WHERE c::date = $1"), None);
        assert_eq!(reason("SELECT * FROM t TABLESAMPLE SYSTEM (10)"), Some(Uncached::Sample));
        let functions = analyze(r#"SELECT s.lower(a), "LOWER"(b), count(*), coalesce(a, b) FROM t"#).functions;
        let names: Vec<(Option<&str>, &str)> =
            functions.iter().map(|f| (f.schema.as_deref(), f.name.as_str())).collect();
        assert_eq!(names, [(Some("s"), "lower"), (None, "LOWER"), (None, "count")]);
    }

    #[test]
    fn sessions_and_transaction_control() {
        for sql in [
            "SET search_path TO x",
            "SET TIME ZONE 'UTC'",
            "SET ROLE alice",
            "SET SESSION AUTHORIZATION alice",
            "RESET ALL",
            "DISCARD ALL",
            "SELECT set_config('app.tenant', '1', false)",
            "BEGIN",
            "BEGIN; UPDATE t SET a = 1",
        ] {
            assert!(analyze(sql).session, "{sql} changes the session");
        }
        for sql in
            ["SET LOCAL search_path TO x", "SET LOCAL ROLE alice", "BEGIN; UPDATE t SET a = 1; COMMIT", "SELECT 1"]
        {
            assert!(!analyze(sql).session, "{sql} leaves the session as it was");
        }
        assert!(analyze("BEGIN; UPDATE t SET a = 1; COMMIT").begins);
        for sql in ["UPDATE t SET a = 1; COMMIT; SELECT 1/0", "CALL p()", "ROLLBACK"] {
            assert!(analyze(sql).transaction_control, "{sql}");
        }
        for sql in ["UPDATE t SET a = 1; DELETE FROM u", "SAVEPOINT a", "ROLLBACK TO SAVEPOINT a", "RELEASE a"] {
            assert!(!analyze(sql).transaction_control, "{sql}");
            assert!(!analyze(sql).ends_transaction, "{sql}");
        }
        for sql in ["COMMIT", "END", "ROLLBACK", "UPDATE t SET a = 1; COMMIT"] {
            assert!(analyze(sql).ends_transaction, "{sql}");
        }
        assert!(!analyze("CALL p()").ends_transaction, "a procedure cannot commit inside a transaction block");
        // Strings the parser cannot read are judged by the words that start their statements.
        assert!(analyze("DO $$ BEGIN COMMIT; END $$; PREPARE TRANSACTION 'x'").ends_transaction);
        assert!(analyze("SELEC 1; ABORT").ends_transaction);
        assert!(!analyze("DO $$ BEGIN COMMIT; END $$").ends_transaction, "the body is one token");
    }

    #[test]
    fn table_statements_are_dependencies() {
        let mut tables = names(&analyze("SELECT id FROM a UNION TABLE b").read.unwrap());
        tables.sort();
        assert_eq!(tables, ["a", "b"]);
        let read = analyze("SELECT * FROM a WHERE id IN (TABLE banned)").read.unwrap();
        assert!(names(&read).contains(&"banned".to_owned()));
        assert_eq!(names(&analyze("TABLE users").read.unwrap()), ["users"]);
    }

    #[test]
    fn returning_of_another_instance_is_not_the_key() {
        let w = writes("UPDATE t AS x SET a = 1 FROM t WHERE x.id = t.id + 1 RETURNING t.id");
        let RowSource::Returning { items, .. } = &w[0].rows else { panic!() };
        assert_eq!(items[0], ("id".to_owned(), None), "t.id is the other instance");
        let w = writes("UPDATE t SET a = 1 FROM u WHERE u.id = t.id RETURNING u.*, t.id");
        assert_eq!(w[0].rows, RowSource::Unknown, "u.* hides where t.id is");
    }

    #[test]
    fn cacheable_reads() {
        for sql in [
            "SELECT * FROM t WHERE id = $1",
            "SELECT lower(name), coalesce(a, 0) FROM t ORDER BY id LIMIT 50",
            "SELECT * FROM t WHERE id = ANY($1) AND name LIKE 'a%'",
            "SELECT a FROM t UNION SELECT a FROM u",
        ] {
            assert!(analyze(sql).read.is_ok(), "{sql} should be cacheable: {:?}", analyze(sql).read);
        }
    }

    #[test]
    fn write_shapes() {
        let w = writes("UPDATE users SET name = 'x' WHERE id IN (1, 2)");
        assert_eq!(w[0].kind, WriteKind::Update);
        assert_eq!(w[0].assigned, ["name"]);
        assert!(matches!(w[0].rows, RowSource::Append { .. }));

        let w =
            writes("INSERT INTO users (id, name) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET name = excluded.name");
        assert_eq!((w[0].kind, w[0].assigned.as_slice()), (WriteKind::Insert, ["name".to_owned()].as_slice()));

        let w = writes("DELETE FROM users WHERE id = ANY($1) RETURNING *");
        assert!(matches!(&w[0].rows, RowSource::Returning { star_first: true, .. }));

        let w = writes("WITH d AS (DELETE FROM users WHERE id = $1 RETURNING id) SELECT count(*) FROM d");
        assert_eq!((w[0].table.name.as_str(), &w[0].rows), ("users", &RowSource::Unknown));

        let w = writes("UPDATE a SET x = 1; DELETE FROM b");
        assert_eq!(w.len(), 2);
        assert!(w.iter().all(|w| w.rows == RowSource::Unknown), "multi-statement strings are not rewritten");

        let w = writes("TRUNCATE a, b CASCADE");
        assert_eq!(w[1].kind, WriteKind::Truncate { cascade: true });
    }

    #[test]
    fn returning_items_know_their_source() {
        let w = writes("UPDATE users u SET name = 'x' WHERE true RETURNING u.id AS key, name, id + 1 AS id");
        let RowSource::Returning { items, star_first } = &w[0].rows else { panic!() };
        assert!(!star_first);
        assert_eq!(items[0], ("key".to_owned(), Some("id".to_owned())));
        assert_eq!(items[1], ("name".to_owned(), Some("name".to_owned())));
        assert_eq!(items[2], ("id".to_owned(), None));
    }

    #[test]
    fn append_offset_skips_trailing_noise() {
        for sql in [
            "UPDATE t SET a = 1 WHERE id = 2",
            "UPDATE t SET a = 1 WHERE id = 2;",
            "UPDATE t SET a = 1 WHERE id = 2 ; -- done\n",
            "UPDATE t SET a = 'é' WHERE id = 2 /* c */  ",
            "UPDATE t\nSET a = 'ü'\nWHERE id = 2\n-- trailing",
        ] {
            let w = writes(sql);
            let RowSource::Append { at, .. } = w[0].rows else { panic!("{sql}") };
            assert!(sql[..at].ends_with("id = 2"), "{sql:?} cut at {at}: {:?}", &sql[..at]);
        }
    }

    #[test]
    fn procedural_and_unparsable_statements_mean_everything() {
        assert_eq!(analyze("CALL do_things()").effect, Effect::Everything { parsed: true });
        assert_eq!(analyze("not sql at all").effect, Effect::Everything { parsed: false });
        assert_eq!(analyze("").effect, Effect::Everything { parsed: false });
    }

    #[test]
    fn harmless_statements_change_nothing() {
        for sql in ["BEGIN", "COMMIT", "ROLLBACK", "SET search_path TO x", "SELECT * FROM t", "SAVEPOINT a"] {
            assert_eq!(analyze(sql).effect, Effect::None, "{sql}");
        }
    }

    #[test]
    fn ddl_is_noticed() {
        let a = analyze("CREATE TEMP TABLE scratch (id int)");
        assert!(a.ddl);
        assert_eq!(a.temp_tables, ["scratch"]);
        assert!(matches!(analyze("ALTER TABLE t ADD COLUMN c int").effect, Effect::Writes(_)));
    }
}
