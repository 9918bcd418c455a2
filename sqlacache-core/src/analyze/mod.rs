//! SQL analysis: what a statement reads, what it writes, and whether its result may be cached.
//!
//! The analysis is syntactic (no catalog): table names come back normalized the way PostgreSQL
//! folds them (unquoted identifiers to lower case, `public.` kept as written so the caller can
//! resolve it with the catalog). Callers memoize the result per SQL string; parsing costs
//! microseconds and a cache hit must not pay it.
//!
//! The analysis errs on the side of invalidating more: a statement it cannot read is reported as
//! [`Effect::Everything`], and a read it is unsure about is reported as not cacheable.

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
    fn only_ascii_letters_fold() {
        let read = analyze("SELECT * FROM Ät JOIN ÄT ON true JOIN \"Ät\" ON true").read.unwrap();
        assert_eq!(names(&read), ["Ät", "Ät", "Ät"]);
        assert_eq!(TableName::parse("Schéma.ÉTÉ").name, "ÉtÉ");
        assert_eq!(TableName::parse("Schéma.ÉTÉ").schema.as_deref(), Some("schéma"));
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
            // Not a kind known to leave the session alone: the allow-list decides, not spelling.
            "CREATE TEMP TABLE x (a int)",
            "CREATE TABLE pg_temp.x (a int)",
            "CREATE VIEW pg_temp.v AS SELECT 1",
            "SELECT 1 INTO TEMP x",
            "PREPARE p AS SELECT 1",
            "LISTEN c",
            "CALL p()",
            "DO $$ BEGIN PERFORM set_config('a.b', 'c', false); END $$",
            "SET SCHEMA 'x'",
            "SET XML OPTION DOCUMENT",
            "BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE",
            "BEGIN; COMMIT AND CHAIN",
        ] {
            assert!(analyze(sql).reach.session, "{sql} may change the session");
        }
        for sql in [
            "SET LOCAL search_path TO x",
            "SET LOCAL ROLE alice",
            "BEGIN; UPDATE t SET a = 1; COMMIT",
            "SELECT 1",
            "INSERT INTO t VALUES (1)",
            "TRUNCATE t",
            "SAVEPOINT a",
            "BEGIN; COMMIT AND CHAIN; COMMIT",
        ] {
            assert!(!analyze(sql).reach.session, "{sql} leaves the session as it was");
        }
        assert!(analyze("BEGIN; UPDATE t SET a = 1; COMMIT").reach.begins);
        for sql in ["UPDATE t SET a = 1; COMMIT; SELECT 1/0", "CALL p()", "ROLLBACK"] {
            assert!(analyze(sql).reach.transaction_control, "{sql}");
        }
        for sql in ["UPDATE t SET a = 1; DELETE FROM u", "SAVEPOINT a", "ROLLBACK TO SAVEPOINT a", "RELEASE a"] {
            assert!(!analyze(sql).reach.transaction_control, "{sql}");
            assert!(!analyze(sql).reach.ends_transaction, "{sql}");
        }
        for sql in ["COMMIT", "END", "ROLLBACK", "UPDATE t SET a = 1; COMMIT", "COMMIT AND NO CHAIN"] {
            let reach = analyze(sql).reach;
            assert!(reach.ends_transaction && reach.commits, "{sql}");
        }
        for sql in ["COMMIT AND CHAIN", "ROLLBACK AND CHAIN", "COMMIT WORK AND CHAIN"] {
            let reach = analyze(sql).reach;
            assert!(reach.commits && !reach.ends_transaction, "{sql}: the transaction goes on");
        }
        assert!(analyze("BEGIN; UPDATE t SET a = 1; COMMIT AND CHAIN").reach.leaves_open);
        assert!(!analyze("BEGIN; COMMIT AND CHAIN; COMMIT").reach.leaves_open);
        assert!(!analyze("CALL p()").reach.ends_transaction, "a procedure cannot commit inside a transaction block");
        // Strings the parser cannot read may do anything to the transaction and the session.
        for sql in ["DO $$ BEGIN COMMIT; END $$", "SELEC 1; ABORT", "BEGIN ISOLATION LEVEL SERIALIZABLE, DEFERRABLE"] {
            assert_eq!(analyze(sql).reach, Reach::unknown(), "{sql}");
        }
        assert!(analyze("ALTER DATABASE test SET timezone = 'UTC'").reach.new_sessions);
        assert!(analyze("ALTER ROLE alice SET timezone = 'UTC'").reach.new_sessions);
        assert!(!analyze("DO $$ BEGIN END $$").reach.new_sessions);
        for sql in ["SET LOCAL ROLE alice", "SELECT set_config('role', 'alice', true)", "RESET ROLE"] {
            assert!(analyze(sql).reach.sets, "{sql} may change the role for the rest of its transaction");
        }
        assert!(!analyze("UPDATE t SET a = 1").reach.sets);
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
