//! SQL analysis: what a statement reads, what it writes, and whether its result may be cached.
//!
//! The analysis is syntactic (no catalog): table names come back normalized the way PostgreSQL
//! folds them (unquoted identifiers to lower case, `public.` kept as written so the caller can
//! resolve it with the catalog). Callers memoize the result per SQL string; parsing costs
//! microseconds and a cache hit must not pay it.
//!
//! The analysis errs on the side of invalidating more: a statement it cannot read is reported as
//! [`Effect::Everything`], and a read it is unsure about is reported as not cacheable.

mod filters;
mod parse;
mod read;
mod scan;
mod session;
mod targets;
mod write;

use session::Control;
use sqlparser::ast::{self, ObjectName, ObjectNamePart, Statement, Visit};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

pub use crate::stats::Uncached;
pub use filters::{Constraint, Filters, Operand, Source};
pub use scan::{mentions_clock, mentions_clock_bytes};

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
        None => part.to_ascii_lowercase(),
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
#[non_exhaustive]
pub struct Read {
    /// The operation.
    pub op: ReadOp,
    /// Every relation referenced, including names that may turn out to be CTEs.
    pub tables: Vec<TableName>,
    /// Names defined by `WITH` clauses; such a name that does not resolve to a table is ignored.
    pub ctes: Vec<String>,
    /// What its conditions pin, when its shape lets them be known (see [`Filters`]).
    pub filters: Option<Filters>,
}

/// What a write statement does to one table.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
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
        /// Where more items can be appended to the list (the end of the statement), with the
        /// qualifier for them; `None` when the string holds more than one statement.
        end: Option<(usize, String)>,
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
#[non_exhaustive]
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
    /// What it does to its session and its transaction.
    pub reach: Reach,
}

/// How a statement reaches beyond itself, into the session and the transaction that run it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reach {
    /// Whether it may leave its session other than it found it: anything but a statement of a
    /// kind known to leave it alone (a query, a write, transaction control, `SET LOCAL`), and
    /// every string that does not parse. (Whether the functions it calls may is the catalog's
    /// call.) The connection that ran it must not answer for the pool's others afterwards.
    pub session: bool,
    /// Whether it may leave its connection inside a transaction when it returns: a `BEGIN`
    /// (or `COMMIT AND CHAIN`) the string does not end, or a string that does not parse.
    pub leaves_open: bool,
    /// Whether it changes the settings of the sessions opened from now on (`ALTER ROLE .. SET`,
    /// `ALTER DATABASE .. SET`): then new connections and old ones differ.
    pub new_sessions: bool,
    /// Whether it contains transaction control (`BEGIN`, `COMMIT`, `ROLLBACK`, `END`) or runs
    /// code that may commit (`CALL`, `EXECUTE`): then part of it may have committed even when it
    /// fails. (`DO` does not parse, and an unparsed string is assumed to.)
    pub transaction_control: bool,
    /// Whether it may end the transaction it runs in without beginning another: a `COMMIT`,
    /// `END` or `ROLLBACK` (not to a savepoint, not `AND CHAIN`), or a string that does not parse.
    pub ends_transaction: bool,
    /// Whether it may commit what its transaction wrote so far: [`Reach::ends_transaction`], or
    /// a `COMMIT AND CHAIN` / `ROLLBACK AND CHAIN` (after which the transaction goes on).
    pub commits: bool,
    /// Whether it contains a `BEGIN` / `START TRANSACTION`: if it fails, the session may be
    /// left inside an aborted transaction.
    pub begins: bool,
    /// Whether it may change settings (the role among them) for at least the rest of its
    /// transaction: any `SET` (`SET LOCAL` too), `set_config`, or anything of
    /// [`Reach::session`].
    pub sets: bool,
}

impl Reach {
    /// The reach of a statement nothing is known of: anything but settings of other sessions.
    ///
    /// ```
    /// let reach = sqlacache_core::analyze::Reach::unknown();
    /// assert!(reach.session && reach.leaves_open && reach.ends_transaction && !reach.new_sessions);
    /// ```
    pub fn unknown() -> Reach {
        Reach {
            session: true,
            leaves_open: true,
            new_sessions: false,
            transaction_control: true,
            ends_transaction: true,
            commits: true,
            begins: true,
            sets: true,
        }
    }
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
            reach: Reach::default(),
        }
    }
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
    let Some(statements) = parse(sql).or_else(|| parse(&parse::respell_locks(sql)?)) else {
        // What it runs is unknown: it may write anything, change its session, and begin, end or
        // commit a transaction.
        let mut analysis = Analysis::empty(Uncached::Unparsable, Effect::Everything { parsed: false }, 0);
        analysis.reach = Reach { new_sessions: parse::reaches_new_sessions_by_words(sql), ..Reach::unknown() };
        return analysis;
    };
    let mut analysis = Analysis::empty(Uncached::NotARead, Effect::None, statements.len());
    let mut writes = Vec::new();
    let mut everything = false;
    let single = statements.len() == 1;
    let mut open = false;
    for statement in &statements {
        let mut scan = scan::Scan::default();
        let _ = statement.visit(&mut scan);
        let effect = write::statement_effect(statement, sql, single, &scan);
        everything |= effect.everything;
        writes.extend(effect.writes);
        analysis.ddl |= effect.ddl;
        analysis.temp_tables.extend(effect.temp_tables);
        analysis.reach.session |= scan.session || !session::session_neutral(statement);
        analysis.reach.new_sessions |= session::reaches_new_sessions(statement);
        analysis.reach.sets |= scan.session || matches!(statement, Statement::Set(_) | Statement::Reset(_));
        let control = session::transaction_control(statement);
        analysis.reach.transaction_control |= control != Control::None;
        match control {
            Control::Begin => {
                open = true;
                analysis.reach.begins = true;
            }
            Control::End => {
                open = false;
                analysis.reach.ends_transaction = true;
                analysis.reach.commits = true;
            }
            // The transaction goes on: what follows commits at its real end, not here.
            Control::CommitChain | Control::RollbackChain => analysis.reach.commits = true,
            Control::MayCommit | Control::None => {}
        }
        for function in &scan.functions {
            if !analysis.functions.contains(function) {
                analysis.functions.push(function.clone());
            }
        }
        if single {
            if let Statement::Query(query) = statement {
                analysis.read = read::read_of(query, &scan);
            }
        }
    }
    analysis.reach.session |= open;
    analysis.reach.sets |= analysis.reach.session;
    analysis.reach.leaves_open = open;
    analysis.effect = if everything {
        Effect::Everything { parsed: true }
    } else if writes.is_empty() {
        Effect::None
    } else {
        Effect::Writes(writes)
    };
    analysis
}

/// The text of a read that PostgreSQL can analyze without its arguments, to ask it what the read
/// depends on: each placeholder `$n` becomes a null of type `types[n - 1]`, and the statement
/// is wrapped as `SELECT 1 FROM (..) AS ..` so that a view can be made of it. `None` when the
/// text does not tokenize or a placeholder has no type.
///
/// ```
/// use sqlacache_core::analyze::probe_text;
/// let text = probe_text("SELECT * FROM t WHERE a = $1 AND b = '$2'; -- done", &["integer".into()]).unwrap();
/// assert_eq!(text, "SELECT 1 FROM (\nSELECT * FROM t WHERE a = (NULL::integer) AND b = '$2'\n) AS sqlacache_probe_rows");
/// assert_eq!(probe_text("SELECT $2", &["integer".into()]), None);
/// ```
pub fn probe_text(sql: &str, types: &[String]) -> Option<String> {
    parse::probe_text(sql, types)
}

/// Folds an identifier like PostgreSQL: unquoted to lower case, quoted as written. Only ASCII
/// letters fold (in a UTF-8 database `Ät` and `ät` are two names).
fn ident(i: &ast::Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_ascii_lowercase()
    }
}

#[cfg(test)]
mod tests;
