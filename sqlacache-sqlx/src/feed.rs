//! The change feed: writes the pool never sees (other services, `psql`, migrations, cron jobs,
//! functions, `cache.inner()`), told by PostgreSQL itself.
//!
//! - **Triggers.** Each fed table has four statement-level `AFTER` triggers, one per event
//!   (`INSERT`, `UPDATE` and `DELETE` with transition tables, which PostgreSQL allows one event
//!   at a time, and `TRUNCATE`). Each statement sends one `pg_notify` on [`CHANNEL`] naming the
//!   table and the primary keys it touched; a message that would pass the payload limit names
//!   the table alone. PostgreSQL delivers notifications at commit, in commit order, and never
//!   for a rolled-back transaction.
//! - **Schema changes.** An event trigger (which needs a superuser to create) sends a message
//!   at the end of every DDL command; without it, call `CachedPool::refresh_catalog` after
//!   changing the schema elsewhere.
//! - **The listener.** Each pool listens on a connection of its own (not one of its pool's)
//!   and applies each message as an invalidation: in-process, and in Redis when the pool has it.
//!   Its own writes come back too; applying them again costs at most a miss.
//! - **Nothing lost silently.** The pool publishes a heartbeat through the same channel (on a
//!   connection of its own, so a busy pool does not delay it) and
//!   serves cached reads only while it has heard one back within the lease: a heartbeat heard
//!   proves every commit before it was delivered. A lost connection, an error or a silence ends
//!   that trust; the tiers are dropped before cached reads are served again.
//!
//! Message forms (text, space-separated):
//!
//! - `r <table oid> <op> <key> <key> ...`: rows changed; `op` is `i`, `u` or `d`; a key is its
//!   columns' text forms joined by `,`, each as is when it is an integer, else `x` and the hex
//!   of its UTF-8 bytes;
//! - `t <table oid> <op>`: the table changed (a truncate is `op` `t`);
//! - `d <part> ...`: the schema changed; a part is `s` and the hex of a schema's name (something
//!   in it changed), `f` and the hex of a function's schema and name joined by `.`, or `*`
//!   (anything else: roles, extensions);
//! - `h <publisher> <sent>`: a pool's heartbeat.

use crate::catalog::{quote_ident, Actions, Catalog, TableInfo};
use crate::pool::Shared;
use sqlacache_core::bus::Lease;
use sqlacache_core::key::row_id;
use sqlacache_core::Tag;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// The channel the feed notifies on.
pub const CHANNEL: &str = "sqlacache_feed";

/// The schema that holds the feed's functions.
pub const SCHEMA: &str = "sqlacache";

/// The longest payload the triggers send with keys; past it they name the table alone
/// (PostgreSQL refuses payloads of 8,000 bytes or more).
const MAX_PAYLOAD: usize = 7900;

/// The names of a fed table's triggers, one per event.
const TRIGGERS: [(&str, &str, &str); 4] = [
    ("sqlacache_feed_i", "INSERT", "REFERENCING NEW TABLE AS sqlacache_new"),
    ("sqlacache_feed_u", "UPDATE", "REFERENCING OLD TABLE AS sqlacache_old NEW TABLE AS sqlacache_new"),
    ("sqlacache_feed_d", "DELETE", "REFERENCING OLD TABLE AS sqlacache_old"),
    ("sqlacache_feed_t", "TRUNCATE", ""),
];

/// The SQL of the feed, to run from a migration tool instead of at start-up (see
/// `CachedPoolBuilder::change_feed_sql`).
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), sqlacache_sqlx::Error> {
/// let builder = sqlacache_sqlx::CachedPool::builder(pool).table("orders", sqlacache_sqlx::Ops::ALL, std::time::Duration::from_secs(60));
/// let sql = builder.change_feed_sql().await?;
/// std::fs::write("migrations/0042_sqlacache_feed.sql", &sql.install).unwrap();
/// std::fs::write("migrations/0042_sqlacache_feed.down.sql", &sql.remove).unwrap();
/// let cache = builder.change_feed_installed().build().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedSql {
    /// Creates (or replaces) the feed's functions and the triggers of the tables.
    pub install: String,
    /// Creates the event trigger that reports schema changes (needs a superuser).
    pub install_schema_changes: String,
    /// Removes the triggers of the tables (the functions stay for other tables).
    pub remove: String,
    /// Removes everything the feed installed in the database, for every table.
    pub remove_all: String,
}

/// The body of the function of the triggers that name a table as a whole (`TRUNCATE`, and
/// every event of a table whose key has no exact text form); `TG_ARGV[0]` is the event.
fn feed_body() -> String {
    format!(
        r#"
BEGIN
  PERFORM pg_notify('{CHANNEL}', 't ' || TG_RELID::int8 || ' ' || TG_ARGV[0]);
  RETURN NULL;
END
"#
    )
}

/// The body of a keyed table's own trigger function: static SQL (planned once per session,
/// unlike a generic function's `EXECUTE`) over the transition tables; `key` is the text of one
/// key (see the module). An update names each key twice (old and new rows: `UNION ALL` costs
/// less than removing the repeats).
fn rows_body(key: &str) -> String {
    format!(
        r#"
#variable_conflict use_column
DECLARE
  sqlacache_keys text;
  sqlacache_payload text;
BEGIN
  IF TG_OP = 'INSERT' THEN
    SELECT string_agg({key}, ' ') INTO sqlacache_keys FROM sqlacache_new;
  ELSIF TG_OP = 'DELETE' THEN
    SELECT string_agg({key}, ' ') INTO sqlacache_keys FROM sqlacache_old;
  ELSE
    SELECT string_agg(sqlacache_k, ' ') INTO sqlacache_keys
      FROM (SELECT {key} AS sqlacache_k FROM sqlacache_new UNION ALL SELECT {key} FROM sqlacache_old) sqlacache_s;
  END IF;
  IF sqlacache_keys IS NULL THEN
    RETURN NULL; -- no row changed
  END IF;
  sqlacache_payload := 'r ' || TG_RELID::int8 || ' ' || lower(left(TG_OP, 1)) || ' ' || sqlacache_keys;
  IF octet_length(sqlacache_payload) > {MAX_PAYLOAD} THEN
    sqlacache_payload := 't ' || TG_RELID::int8 || ' ' || lower(left(TG_OP, 1));
  END IF;
  PERFORM pg_notify('{CHANNEL}', sqlacache_payload);
  RETURN NULL;
END
"#
    )
}

/// What a schema change touched, as one word of a `d` message (see the module).
const DDL_PART: &str = "CASE
      WHEN kind IN ('function', 'procedure', 'aggregate') AND cardinality(names) >= 2 THEN
        'f' || encode(convert_to(names[1], 'UTF8'), 'hex') || '.' || encode(convert_to(names[2], 'UTF8'), 'hex')
      WHEN kind = 'schema' AND cardinality(names) >= 1 THEN 's' || encode(convert_to(names[1], 'UTF8'), 'hex')
      WHEN sch IS NOT NULL THEN 's' || encode(convert_to(sch, 'UTF8'), 'hex')
      ELSE '*' END";

/// The body of the event trigger's function: at the end of each DDL command (and for each
/// drop), the schemas and functions it touched; `*` for anything else.
fn ddl_body() -> String {
    format!(
        r#"
DECLARE
  parts text;
BEGIN
  IF TG_EVENT = 'sql_drop' THEN
    SELECT string_agg(DISTINCT {DDL_PART}, ' ') INTO parts
      FROM (SELECT object_type, schema_name, address_names FROM pg_event_trigger_dropped_objects()) o(kind, sch, names);
  ELSIF TG_TAG LIKE 'DROP %' THEN
    RETURN; -- told by sql_drop
  ELSE
    SELECT string_agg(DISTINCT {DDL_PART}, ' ') INTO parts
      FROM (SELECT c.object_type, c.schema_name, (pg_identify_object_as_address(c.classid, c.objid, c.objsubid)).object_names
              FROM pg_event_trigger_ddl_commands() c) o(kind, sch, names);
  END IF;
  PERFORM pg_notify('{CHANNEL}', 'd ' || coalesce(parts, '*'));
EXCEPTION WHEN OTHERS THEN
  -- Never make a schema change fail: say that anything may have changed.
  PERFORM pg_notify('{CHANNEL}', 'd *');
END
"#
    )
}

/// The functions: one for the table triggers, one for the event trigger. Every role may use
/// them: a trigger runs as whoever writes, and must never make a write fail.
fn functions_sql() -> String {
    format!(
        "CREATE SCHEMA IF NOT EXISTS {SCHEMA};\n\
         GRANT USAGE ON SCHEMA {SCHEMA} TO PUBLIC;\n\
         CREATE OR REPLACE FUNCTION {SCHEMA}.feed() RETURNS trigger LANGUAGE plpgsql AS $sqlacache${}$sqlacache$;\n\
         CREATE OR REPLACE FUNCTION {SCHEMA}.feed_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $sqlacache${}$sqlacache$;\n",
        feed_body(),
        ddl_body()
    )
}

fn event_trigger_sql() -> String {
    format!(
        r#"DO $sqlacache$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger WHERE evtname = 'sqlacache_feed_ddl') THEN
    CREATE EVENT TRIGGER sqlacache_feed_ddl ON ddl_command_end EXECUTE FUNCTION {SCHEMA}.feed_ddl();
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger WHERE evtname = 'sqlacache_feed_drop') THEN
    CREATE EVENT TRIGGER sqlacache_feed_drop ON sql_drop EXECUTE FUNCTION {SCHEMA}.feed_ddl();
  END IF;
END $sqlacache$;
"#
    )
}

/// The text of one key column in a message (see the module): integers as they are, the other
/// types in hex.
fn key_part(column: &str, kind: &str) -> String {
    let value = format!("{}::text", quote_ident(column));
    match kind {
        "int2" | "int4" | "int8" => value,
        _ => format!("'x' || encode(convert_to({value}, 'UTF8'), 'hex')"),
    }
}

/// The name of a keyed table's own trigger function: from its qualified name, so the same SQL
/// names the same function in every database.
fn function_name(info: &TableInfo) -> String {
    let hash = blake3::hash(info.qualified().as_bytes());
    let hex: String = hash.as_bytes()[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{SCHEMA}.t_{hex}")
}

/// The triggers of one table (and its own function, when its key has an exact text form).
fn table_sql(info: &TableInfo) -> String {
    let mut sql = String::new();
    let keyed = info.key.as_ref().zip(info.key_types.as_ref()).map(|(columns, types)| {
        let key = columns.iter().zip(types).map(|(c, t)| key_part(c, t)).collect::<Vec<_>>().join(" || ',' || ");
        let function = function_name(info);
        sql.push_str(&format!(
            "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $sqlacache${}$sqlacache$;\n\
             COMMENT ON FUNCTION {function}() IS {};\n",
            rows_body(&key),
            quote_literal(&format!("sqlacache change feed of {}", info.qualified())),
        ));
        function
    });
    for (name, event, referencing) in TRIGGERS {
        let op = &name[name.len() - 1..];
        let (referencing, call) = match &keyed {
            Some(function) if event != "TRUNCATE" => (referencing, format!("{function}()")),
            // Keys whose text may not be the row's identity: the table as a whole.
            _ => ("", format!("{SCHEMA}.feed('{op}')")),
        };
        sql.push_str(&format!(
            "CREATE OR REPLACE TRIGGER {name} AFTER {event} ON {table} {referencing} FOR EACH STATEMENT \
             EXECUTE FUNCTION {call};\n",
            table = info.qualified(),
        ));
    }
    sql
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn remove_table_sql(info: &TableInfo) -> String {
    let mut sql: String =
        TRIGGERS.iter().map(|(name, ..)| format!("DROP TRIGGER IF EXISTS {name} ON {};\n", info.qualified())).collect();
    sql.push_str(&format!("DROP FUNCTION IF EXISTS {}();\n", function_name(info)));
    sql
}

/// The tables a pool feeds: `oids` and every member of their families (a write straight into a
/// partition fires the partition's triggers, not its parent's).
pub(crate) fn fed_tables<'c>(catalog: &'c Catalog, oids: &[u32]) -> Vec<&'c TableInfo> {
    let mut all: Vec<u32> = Vec::new();
    for &oid in oids {
        let family = catalog.tables.get(&oid).map(|t| t.family.clone()).unwrap_or_default();
        for t in std::iter::once(oid).chain(family) {
            if !all.contains(&t) {
                all.push(t);
            }
        }
    }
    all.iter().filter_map(|t| catalog.tables.get(t)).filter(|t| t.is_plain_table()).collect()
}

/// The feed's SQL for `tables`.
pub(crate) fn sql(tables: &[&TableInfo]) -> FeedSql {
    sql_with(tables, true)
}

/// The feed's SQL for `tables`, with or without the functions.
fn sql_with(tables: &[&TableInfo], functions: bool) -> FeedSql {
    let mut install = if functions { functions_sql() } else { String::new() };
    for table in tables {
        install.push_str(&table_sql(table));
    }
    FeedSql {
        install,
        install_schema_changes: event_trigger_sql(),
        remove: tables.iter().map(|t| remove_table_sql(t)).collect(),
        remove_all: format!(
            "DROP EVENT TRIGGER IF EXISTS sqlacache_feed_ddl;\nDROP EVENT TRIGGER IF EXISTS sqlacache_feed_drop;\n\
             DROP SCHEMA IF EXISTS {SCHEMA} CASCADE;\n"
        ),
    }
}

/// Serializes installers (replicas starting together): `CREATE OR REPLACE` of one function
/// from two sessions at once fails.
const INSTALL_LOCK: i64 = 0x5351_4c41_4665_6564;

/// Installs the feed on `tables`, in one transaction. Then tries to install the event trigger;
/// returns whether schema changes are reported.
pub(crate) async fn install(pool: &PgPool, tables: &[&TableInfo]) -> Result<bool, crate::Error> {
    // The functions as they are: replacing them needs their owner, so they are left alone
    // when they are already right.
    let current: Vec<String> = sqlx::query_scalar(
        "SELECT p.prosrc FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname = $1 AND p.proname IN ('feed', 'feed_ddl') ORDER BY p.proname",
    )
    .bind(SCHEMA)
    .fetch_all(pool)
    .await?;
    let sql = sql_with(tables, current != [feed_body(), ddl_body()]);
    let failed = |e: sqlx::Error| {
        crate::Error::Feed(format!(
            "cannot install the change feed: {e}. It needs CREATE on the database (for the schema `{SCHEMA}`), \
             and to own each fed table (or hold TRIGGER on it); a migration can install it instead \
             (`change_feed_sql()`, then `change_feed_installed()`)"
        ))
    };
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(INSTALL_LOCK).execute(&mut *tx).await?;
    if !sql.install.is_empty() {
        sqlx::raw_sql(AssertSqlSafe(sql.install)).execute(&mut *tx).await.map_err(failed)?;
    }
    tx.commit().await.map_err(failed)?;
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(INSTALL_LOCK).execute(&mut *tx).await?;
    match sqlx::raw_sql(AssertSqlSafe(sql.install_schema_changes)).execute(&mut *tx).await {
        Ok(_) => {
            tx.commit().await?;
            Ok(true)
        }
        Err(error) => {
            tracing::warn!(target: "sqlacache", %error, "the change feed cannot report schema changes made elsewhere \
                (creating an event trigger needs a superuser): call refresh_catalog() after them");
            Ok(false)
        }
    }
}

/// The fed tables (of `tables`) that miss a trigger of the feed.
pub(crate) async fn missing(pool: &PgPool, tables: &[&TableInfo]) -> Result<Vec<String>, sqlx::Error> {
    let oids: Vec<i64> = tables.iter().map(|t| i64::from(t.oid)).collect();
    let names: Vec<String> = TRIGGERS.iter().map(|(n, ..)| (*n).to_owned()).collect();
    let complete: Vec<i64> = sqlx::query_scalar(
        "SELECT tgrelid::int8 FROM pg_catalog.pg_trigger WHERE tgrelid::int8 = ANY($1) AND tgname = ANY($2) \
         AND NOT tgisinternal GROUP BY tgrelid HAVING count(*) = $3",
    )
    .bind(&oids)
    .bind(&names)
    .bind(TRIGGERS.len() as i64)
    .fetch_all(pool)
    .await?;
    Ok(tables.iter().filter(|t| !complete.contains(&i64::from(t.oid))).map(|t| t.qualified()).collect())
}

/// What a message asks for.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    /// Rows of a table, by the text of their keys.
    Rows { table: u32, op: char, keys: Vec<Vec<String>> },
    /// A table as a whole.
    Table { table: u32, op: char },
    /// The schema, where these parts say.
    Schema(Vec<Ddl>),
    /// A heartbeat.
    Heartbeat { publisher: u64, sent: u64 },
}

/// What a schema change touched.
#[derive(Debug, PartialEq, Eq)]
enum Ddl {
    /// Something in a schema (or the schema itself).
    Schema(String),
    /// A function, by schema and name.
    Function(String, String),
    /// Anything else.
    Any,
}

impl Ddl {
    fn parse(word: &str) -> Option<Ddl> {
        if word == "*" {
            return Some(Ddl::Any);
        }
        if let Some(schema) = word.strip_prefix('s') {
            return Some(Ddl::Schema(unhex(schema)?));
        }
        let (schema, name) = word.strip_prefix('f')?.split_once('.')?;
        Some(Ddl::Function(unhex(schema)?, unhex(name)?))
    }

    /// Whether a pool that caches reads of tables in the `cached` schemas must take this
    /// change into account.
    fn matters(&self, catalog: &Catalog, cached: &[String]) -> bool {
        match self {
            Ddl::Any => true,
            Ddl::Schema(schema) => catalog.searched(schema) || cached.contains(schema),
            Ddl::Function(schema, name) => catalog.searched(schema) || catalog.calls(schema, name),
        }
    }
}

/// Text from the hex of its UTF-8 bytes.
fn unhex(hex: &str) -> Option<String> {
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// Reads a message; `None` if it is not one of the feed's.
fn parse(payload: &str) -> Option<Change> {
    let mut words = payload.split(' ');
    let kind = words.next()?;
    let change = match kind {
        "d" => {
            let parts = words.map(Ddl::parse).collect::<Option<Vec<_>>>()?;
            return (!parts.is_empty()).then_some(Change::Schema(parts));
        }
        "h" => Change::Heartbeat { publisher: words.next()?.parse().ok()?, sent: words.next()?.parse().ok()? },
        "t" | "r" => {
            let table = words.next()?.parse().ok()?;
            let op = single(words.next()?)?;
            if kind == "t" {
                Change::Table { table, op }
            } else {
                let keys = words.by_ref().map(key).collect::<Option<Vec<_>>>()?;
                if keys.is_empty() {
                    return None;
                }
                return Some(Change::Rows { table, op, keys });
            }
        }
        _ => return None,
    };
    words.next().is_none().then_some(change)
}

fn single(word: &str) -> Option<char> {
    let mut chars = word.chars();
    let c = chars.next()?;
    chars.next().is_none().then_some(c)
}

/// One key of a message: its columns' text.
fn key(word: &str) -> Option<Vec<String>> {
    word.split(',')
        .map(|part| match part.strip_prefix('x') {
            Some(hex) => unhex(hex),
            None => {
                let digits = part.strip_prefix('-').unwrap_or(part);
                (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| part.to_owned())
            }
        })
        .collect()
}

/// The tags a change invalidates: the table, its family and what cascades from it, as a write
/// through the pool would (a cascade also fires the triggers of the tables it reaches, when they
/// are fed).
fn tags(catalog: &Catalog, change: &Change) -> Vec<Tag> {
    let (table, op, keys) = match change {
        Change::Rows { table, op, keys } => (*table, *op, Some(keys)),
        Change::Table { table, op } => (*table, *op, None),
        Change::Schema(_) => return vec![Tag::All],
        Change::Heartbeat { .. } => return Vec::new(),
    };
    // A table created after the catalog was read has no family or actions it knows: no
    // cached read depends on it (one that joins a known family was reported as a schema change).
    let actions = match op {
        'u' => Actions::Update,
        'd' => Actions::Delete,
        't' => Actions::Truncate,
        _ => Actions::None,
    };
    let mut tags = catalog.write_tags(table, actions);
    match keys {
        Some(keys) => tags.extend(keys.iter().map(|k| Tag::Row(row_id(table, k)))),
        None => tags.push(Tag::Rows(table)),
    }
    tags
}

/// The change feed of one pool: its listener, its heartbeat and the lease they keep.
pub(crate) struct Feed {
    lease: Lease,
    publisher: u64,
    /// The send time of the latest own heartbeat heard back.
    heard_sent: AtomicU64,
    /// The listener's backend process id (0 while it has none).
    pid: AtomicU32,
    /// Whether the pool installs the feed (and so installs it again on a table created anew).
    install: bool,
    /// Wakes whoever waits for an own heartbeat to come back.
    heard: tokio::sync::Notify,
    /// Asks the one task that installs the feed again on tables created anew (requests made
    /// while it runs coalesce into one more run).
    reinstall: Arc<tokio::sync::Notify>,
    tasks: crate::tasks::Tasks,
}

impl Feed {
    /// Whether the pool installs the feed itself (`change_feed`, not `change_feed_installed`).
    pub fn installs(&self) -> bool {
        self.install
    }

    pub fn new(lease: Duration, install: bool) -> Feed {
        Feed {
            lease: Lease::new(lease),
            publisher: crate::remote::fresh_publisher(),
            heard_sent: AtomicU64::new(0),
            pid: AtomicU32::new(0),
            install,
            heard: tokio::sync::Notify::new(),
            reinstall: Arc::new(tokio::sync::Notify::new()),
            tasks: crate::tasks::Tasks::default(),
        }
    }

    /// Starts the listener and the heartbeat of the pool `shared`, whose connections `pool`
    /// makes (the listener's is its own).
    pub fn start(&self, shared: Weak<Shared>, pool: &PgPool) {
        // The listener and the heartbeat each have a connection of their own: a heartbeat that
        // waited behind the application's queries for one of the pool's would end the lease of
        // a busy pool for nothing.
        let own = || {
            let options = pool.connect_options().as_ref().clone();
            PgPoolOptions::new().max_connections(1).min_connections(0).connect_lazy_with(options)
        };
        let lease = self.lease.duration();
        // The catalog reads that judge schema changes too: one that waited for a connection of
        // a busy pool would hold every notification behind it, heartbeats included.
        self.tasks.spawn(listen(shared.clone(), own(), own(), lease));
        // Often enough that trust comes back soon after a loss (and at start), whatever the lease.
        let every = (lease / 5).clamp(Duration::from_millis(5), Duration::from_millis(100));
        self.tasks.spawn(heartbeats(shared.clone(), own(), every));
        if self.install {
            // On a connection of its own too, not the application's.
            self.tasks.spawn(reinstaller(shared, own(), self.reinstall.clone()));
        }
    }

    /// Waits until an own heartbeat sent at or after `sent` has come back (`None`: until the
    /// feed is trusted); false if `within` passed first.
    pub async fn until_heard(&self, sent: Option<u64>, within: Duration) -> bool {
        let done = || match sent {
            Some(sent) => self.heard_sent.load(Ordering::Acquire) >= sent,
            None => self.trusted(),
        };
        let wait = async {
            loop {
                // Made before the check: a heartbeat heard in between still wakes it.
                let next = self.heard.notified();
                if done() {
                    return;
                }
                next.await;
            }
        };
        tokio::time::timeout(within, wait).await.is_ok()
    }

    /// Whether cached reads may be served now: a heartbeat came back within the lease.
    pub fn trusted(&self) -> bool {
        self.lease.trusted()
    }

    /// Sends one heartbeat through `pool`, if every table of `fed` (oids) still has the feed's
    /// triggers, enabled: a feed removed or disabled (by `remove_all`, `DROP TRIGGER`,
    /// `ALTER TABLE .. DISABLE TRIGGER`) then ends the lease instead of being trusted. Returns
    /// its send time.
    fn beat(
        &self,
        pool: &PgPool,
        fed: Vec<i64>,
    ) -> impl std::future::Future<Output = Result<u64, sqlx::Error>> + Send + 'static {
        const BEAT: &str = "SELECT pg_catalog.pg_notify($1, $2) \
            WHERE (SELECT count(*) FROM pg_catalog.pg_trigger \
                    WHERE tgrelid = ANY($3::int8[]::pg_catalog.oid[]) AND tgenabled <> 'D' \
                      AND tgname IN ('sqlacache_feed_i', 'sqlacache_feed_u', 'sqlacache_feed_d', 'sqlacache_feed_t')) \
                  = 4 * cardinality($3::int8[])";
        let sent = self.lease.now();
        let payload = format!("h {} {sent}", self.publisher);
        let pool = pool.clone();
        async move {
            let done = sqlx::query(BEAT).bind(CHANNEL).bind(payload).bind(fed).execute(&pool).await?;
            if done.rows_affected() == 0 {
                tracing::debug!(target: "sqlacache", "a table this pool reads lost the change feed's triggers: no heartbeat");
            }
            Ok(sent)
        }
    }

    /// Waits until everything committed before this call has been applied: a heartbeat sent now
    /// has come back (for tests).
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    pub async fn sync(&self, pool: &PgPool, fed: Vec<i64>) -> Result<(), sqlx::Error> {
        let sent = self.beat(pool, fed).await?;
        // Bounded: a listener that never hears it again is an error, not a hang. Generous: on
        // a machine loaded far past its cores, a listener has been seen to take over 30 s.
        let within = (self.lease.duration() * 20).max(Duration::from_secs(120));
        if self.until_heard(Some(sent), within).await {
            Ok(())
        } else {
            Err(sqlx::Error::Protocol(format!(
                "the change feed did not hear its heartbeat back within {within:?} (sent {sent}, heard up to {}, now {})",
                self.heard_sent.load(Ordering::Acquire),
                self.lease.now()
            )))
        }
    }

    /// The listener's backend process id (for tests).
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    pub fn listener_pid(&self) -> u32 {
        self.pid.load(Ordering::Acquire)
    }

    fn lose(&self, why: &str) {
        if self.lease.trusted() {
            tracing::info!(target: "sqlacache", why, "the change feed may have missed writes; cached reads wait until it is heard again");
            self.lease.lose_announced();
        } else {
            self.lease.lose();
        }
    }

    /// Applies notifications in the order they were sent: `payloads`, the ones that arrived
    /// together. Their invalidations are applied at once (one round trip to Redis, one catalog
    /// read for any number of schema changes), before any heartbeat among them renews the lease
    /// and by the end: a listener that does one round trip per notification falls behind a busy
    /// database (and far behind while Redis times out), and its lease lapses.
    async fn heard(&self, shared: &Arc<Shared>, payloads: &[String], catalog: &PgPool) {
        let mut due = Due::default();
        for payload in payloads {
            let Some(change) = parse(payload) else {
                // Not one of ours, or damaged: whatever it meant is unknown.
                tracing::warn!(target: "sqlacache", payload, "an unreadable message on the change feed");
                self.lose("an unreadable message");
                continue;
            };
            match change {
                Change::Heartbeat { publisher, sent } => {
                    if publisher == self.publisher {
                        // Everything sent before it is applied before it counts.
                        due.apply(self, shared, catalog).await;
                        if !self.lease.trusted() {
                            // Writes may have been missed while it was not trusted.
                            shared.drop_everywhere(!self.lease.ever_trusted()).await;
                        }
                        if self.lease.renew(sent) {
                            tracing::info!(target: "sqlacache", "the change feed is heard again; cached reads resume");
                        }
                        self.heard_sent.fetch_max(sent, Ordering::AcqRel);
                        self.heard.notify_waiters();
                    }
                }
                Change::Schema(parts) => {
                    let (catalog, cached) = (shared.catalog(), shared.cached_schemas());
                    // A change named in another schema may still reach the cached tables (a
                    // partition of one created elsewhere, their schema renamed, their feed
                    // disabled): judged by what it touched, read from the catalog.
                    if parts.iter().any(|part| part.matters(&catalog, &cached)) {
                        due.schema = Some(true);
                    } else if due.schema.is_none() {
                        due.schema = Some(false);
                    }
                }
                change => due.tags.extend(tags(&shared.catalog(), &change)),
            }
        }
        due.apply(self, shared, catalog).await;
    }
}

/// What notifications heard together still have to apply.
#[derive(Default)]
struct Due {
    tags: Vec<Tag>,
    /// A schema change: `Some(true)` if it matters, `Some(false)` if the catalog must tell.
    schema: Option<bool>,
}

impl Due {
    async fn apply(&mut self, feed: &Feed, shared: &Arc<Shared>, catalog: &PgPool) {
        if !self.tags.is_empty() {
            let mut seen = std::collections::HashSet::new();
            self.tags.retain(|tag| seen.insert(*tag));
            shared.apply_outside(&std::mem::take(&mut self.tags)).await;
        }
        if let Some(matters) = self.schema.take() {
            if matters || shared.cached_tables_changed(catalog).await {
                shared.schema_changed_elsewhere().await;
                if feed.install {
                    // A fed table dropped and created again has lost its triggers.
                    feed.reinstall.notify_one();
                }
            }
        }
    }
}

/// Installs the feed again, through `pool`, on the configured tables that lost it, each time it
/// is asked, until the pool is dropped.
async fn reinstaller(shared: Weak<Shared>, pool: PgPool, wanted: Arc<tokio::sync::Notify>) {
    loop {
        wanted.notified().await;
        let Some(shared) = shared.upgrade() else { return };
        shared.reinstall_feed(&pool).await;
    }
}

/// Sends heartbeats through the feed until the pool is dropped.
async fn heartbeats(shared: Weak<Shared>, pool: PgPool, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else { return };
        let Some(feed) = shared.feed.as_ref() else { return };
        let beat = feed.beat(&pool, shared.fed_oids());
        drop(shared);
        if let Ok(Err(error)) = tokio::time::timeout(every * 5, beat).await {
            tracing::debug!(target: "sqlacache", %error, "a change-feed heartbeat failed");
        }
    }
}

/// Listens until the pool is dropped. Any doubt (an error, a lost connection, a silence of
/// several leases) ends the lease; a new connection is made after an error or a silence.
/// `catalog` makes the connection of the catalog reads that judge schema changes.
async fn listen(shared: Weak<Shared>, own: PgPool, catalog: PgPool, lease: Duration) {
    let mut listener: Option<PgListener> = None;
    loop {
        let Some(active) = listener.as_mut() else {
            match connect(&own).await {
                Ok((new, pid)) => {
                    if let Some(shared) = shared.upgrade() {
                        if let Some(feed) = &shared.feed {
                            feed.pid.store(pid, Ordering::Release);
                        }
                    }
                    listener = Some(new);
                }
                Err(error) => {
                    tracing::debug!(target: "sqlacache", %error, "the change feed cannot listen yet");
                    if shared.strong_count() == 0 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            continue;
        };
        let next = tokio::time::timeout(lease * 4, active.try_recv()).await;
        let Some(shared) = shared.upgrade() else { return };
        let Some(feed) = shared.feed.as_ref() else { return };
        match next {
            Ok(Ok(Some(notification))) => {
                let mut payloads = vec![notification.payload().to_owned()];
                while let Some(next) = active.next_buffered() {
                    payloads.push(next.payload().to_owned());
                }
                feed.heard(&shared, &payloads, &catalog).await;
            }
            Ok(Ok(None)) => {
                // sqlx made the connection again: what was sent meanwhile is lost.
                feed.lose("the listener's connection was lost");
                listener = None;
            }
            Ok(Err(error)) => {
                tracing::debug!(target: "sqlacache", %error, "the change feed's connection failed");
                feed.lose("the listener's connection failed");
                listener = None;
            }
            Err(_) => {
                feed.lose("the change feed was silent");
                listener = None;
            }
        }
        if listener.is_none() {
            feed.pid.store(0, Ordering::Release);
        }
    }
}

async fn connect(own: &PgPool) -> Result<(PgListener, u32), sqlx::Error> {
    let mut listener = PgListener::connect_with(own).await?;
    listener.listen(CHANNEL).await?;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut listener).await?;
    Ok((listener, u32::try_from(pid).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_back() {
        assert_eq!(
            parse("d * s6170 f7075626c6963.6c6f776572"),
            Some(Change::Schema(vec![
                Ddl::Any,
                Ddl::Schema("ap".into()),
                Ddl::Function("public".into(), "lower".into())
            ]))
        );
        assert_eq!(parse("h 7 99"), Some(Change::Heartbeat { publisher: 7, sent: 99 }));
        assert_eq!(parse("t 16384 t"), Some(Change::Table { table: 16384, op: 't' }));
        assert_eq!(
            parse("r 16384 u 1 -2 x616263,7"),
            Some(Change::Rows {
                table: 16384,
                op: 'u',
                keys: vec![vec!["1".into()], vec!["-2".into()], vec!["abc".into(), "7".into()]]
            })
        );
        assert_eq!(parse("r 1 i x"), Some(Change::Rows { table: 1, op: 'i', keys: vec![vec![String::new()]] }));
        for bad in [
            "",
            "q",
            "d",
            "d 1",
            "d s6",
            "d f70",
            "h 1",
            "t x i",
            "t 1 io",
            "r 1 i",
            "r 1 i 1a",
            "r 1 i xzz",
            "r 1 i x6",
            "r 1 i -",
            "t 1 i 2",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
