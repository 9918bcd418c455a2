//! The SQL of the change feed: the functions and triggers that send its messages, and
//! installing them.

use crate::catalog::ValueKind;
use crate::catalog::{quote_ident, Catalog, TableInfo};
use crate::error::Cause;
use sqlx::{AssertSqlSafe, PgPool};

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
#[non_exhaustive]
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
fn rows_body(key: &str, columns: &str) -> String {
    format!(
        r#"
#variable_conflict use_column
DECLARE
  sqlacache_keys text;
  sqlacache_payload text;
  sqlacache_by text;
  sqlacache_context text;
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
  sqlacache_payload := 'r ' || TG_RELID::int8 || ' ' || lower(left(TG_OP, 1)) || ' {columns}' || sqlacache_keys;
  IF octet_length(sqlacache_payload) > {MAX_PAYLOAD} THEN
    sqlacache_payload := 't ' || TG_RELID::int8 || ' ' || lower(left(TG_OP, 1));
  END IF;
  -- Straight from a pool's write path, to this table: the pool that wrote is named, and skips
  -- what it already invalidated. Not a statement that a trigger (a cascade) or a function
  -- called by the pool's statement ran: this trigger's own line is then all of the context.
  IF pg_trigger_depth() = 1 THEN
    sqlacache_by := substring(right(current_query(), 64) from '/\*sqlacache ([0-9a-f]{{1,16}} [0-9]{{1,10}})\*/\s*$');
    IF split_part(sqlacache_by, ' ', 2) = TG_RELID::text THEN
      GET DIAGNOSTICS sqlacache_context = PG_CONTEXT;
      IF strpos(sqlacache_context, E'\n') = 0 THEN
        sqlacache_payload := 'w ' || split_part(sqlacache_by, ' ', 1) || ' ' || sqlacache_payload;
      END IF;
    END IF;
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

/// The text of one value of a tracked column in a message: as a key part, `_` for NULL.
fn value_part(column: &str, kind: ValueKind) -> String {
    let value = format!("{}::text", quote_ident(column));
    match kind {
        ValueKind::Int => format!("coalesce({value}, '_')"),
        ValueKind::Text | ValueKind::Uuid => {
            format!("coalesce('x' || encode(convert_to({value}, 'UTF8'), 'hex'), '_')")
        }
    }
}

/// The name of a keyed table's own trigger function: from its qualified name, so the same SQL
/// names the same function in every database.
fn function_name(info: &TableInfo) -> String {
    let hash = blake3::hash(info.qualified().as_bytes());
    let hex: String = hash.as_bytes()[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{SCHEMA}.t_{hex}")
}

/// A keyed table's own trigger function: its name and body (`None` for a table whose key has
/// no exact text form, fed by `feed()` as a whole).
fn own_function(info: &TableInfo) -> Option<(String, String)> {
    let (columns, types) = info.key.as_ref().zip(info.key_types.as_ref())?;
    let mut key = columns.iter().zip(types).map(|(c, t)| key_part(c, t)).collect::<Vec<_>>().join(" || ',' || ");
    // Each row's key, then the values of the tracked columns, which the message names.
    for (column, kind) in &info.tracked {
        key.push_str(&format!(" || ';' || {}", value_part(column, *kind)));
    }
    let named: Vec<String> = info.tracked.iter().map(|(c, _)| hex(c)).collect();
    let columns = if named.is_empty() { String::new() } else { format!("c{} ", named.join(",")) };
    Some((function_name(info), rows_body(&key, &columns)))
}

/// The function each of a table's triggers calls, by trigger name: its own function for rows,
/// `feed` for `TRUNCATE` and for tables without an own function.
fn trigger_functions(own: Option<&str>) -> [(&'static str, &'static str, &'static str, String); 4] {
    TRIGGERS.map(|(name, event, referencing)| {
        let op = &name[name.len() - 1..];
        match own {
            Some(function) if event != "TRUNCATE" => (name, event, referencing, format!("{function}()")),
            // Keys whose text may not be the row's identity: the table as a whole.
            _ => (name, event, "", format!("{SCHEMA}.feed('{op}')")),
        }
    })
}

/// The triggers of one table (and its own function, when its key has an exact text form).
fn table_sql(info: &TableInfo) -> String {
    let mut sql = String::new();
    let own = own_function(info);
    if let Some((function, body)) = &own {
        sql.push_str(&format!(
            "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $sqlacache${body}$sqlacache$;\n\
             COMMENT ON FUNCTION {function}() IS {};\n",
            quote_literal(&format!("sqlacache change feed of {}", info.qualified())),
        ));
    }
    for (name, event, referencing, call) in trigger_functions(own.as_ref().map(|(f, _)| f.as_str())) {
        sql.push_str(&format!(
            "CREATE OR REPLACE TRIGGER {name} AFTER {event} ON {table} {referencing} FOR EACH STATEMENT \
             EXECUTE FUNCTION {call};\n",
            table = info.qualified(),
        ));
    }
    sql
}

/// The hex of a name's UTF-8 bytes (as the messages spell names).
fn hex(name: &str) -> String {
    name.bytes().map(|b| format!("{b:02x}")).collect()
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
pub(crate) async fn install(pool: &PgPool, tables: &[&TableInfo]) -> Result<bool, crate::error::Error> {
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
        crate::error::Error::Feed(Cause::from_source(
            format!(
                "cannot install the change feed. It needs CREATE on the database (for the schema `{SCHEMA}`), \
             and to own each fed table (or hold TRIGGER on it); a migration can install it instead \
             (`change_feed_sql()`, then `change_feed_installed()`)"
            ),
            e,
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

/// The fed tables (of `tables`) whose triggers are missing or not the ones [`table_sql`] makes
/// today: a trigger calls another function, or the table's own function has another body (made
/// before a column was tracked, or before the key changed). The older triggers are sound (a
/// message that does not name a tracked column invalidates it as a whole) but less precise.
pub(crate) async fn outdated(pool: &PgPool, tables: &[&TableInfo]) -> Result<Vec<String>, sqlx::Error> {
    let oids: Vec<i64> = tables.iter().map(|t| i64::from(t.oid)).collect();
    let names: Vec<String> = TRIGGERS.iter().map(|(n, ..)| (*n).to_owned()).collect();
    let present: Vec<(i64, String, String, String, String)> = sqlx::query_as(
        "SELECT t.tgrelid::int8, t.tgname::text, n.nspname::text, p.proname::text, p.prosrc \
         FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid \
         JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         WHERE t.tgrelid::int8 = ANY($1) AND t.tgname = ANY($2) AND NOT t.tgisinternal",
    )
    .bind(&oids)
    .bind(&names)
    .fetch_all(pool)
    .await?;
    let current = |info: &TableInfo| {
        let own = own_function(info);
        trigger_functions(own.as_ref().map(|(f, _)| f.as_str())).iter().all(|(name, _, _, call)| {
            present.iter().any(|(oid, tg, schema, function, source)| {
                let wanted = match &own {
                    Some((f, body)) if call.starts_with(f.as_str()) => Some(body),
                    _ => None,
                };
                let qualified = format!("{schema}.{function}");
                *oid == i64::from(info.oid)
                    && tg == name
                    && call.starts_with(&format!("{qualified}("))
                    && wanted.is_none_or(|body| body == source)
            })
        })
    };
    Ok(tables.iter().filter(|t| !current(t)).map(|t| t.qualified()).collect())
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
