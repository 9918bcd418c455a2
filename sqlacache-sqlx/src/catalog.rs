//! What the library knows about the database schema: tables, primary keys, foreign-key actions
//! and inheritance, read from the system catalogs.

use sqlacache_core::analyze::{FunctionName, TableName};
use sqlacache_core::Tag;
use sqlx::{PgPool, Row};
use std::collections::{HashMap, HashSet};

/// SQL that is true when the function `p` (a `pg_proc` row) is immutable in full: itself, and,
/// for an aggregate, every function it runs (an aggregate's own volatility says nothing of
/// them). Shared by the catalog (by name) and the proof (by resolved oid).
macro_rules! immutable_in_full {
    () => {
        "p.provolatile = 'i' AND (p.prokind <> 'a' OR coalesce((
           SELECT bool_and(f.provolatile = 'i')
             FROM pg_catalog.pg_aggregate a
             JOIN pg_catalog.pg_proc f
               ON f.oid IN (a.aggtransfn, a.aggfinalfn, a.aggcombinefn, a.aggserialfn, a.aggdeserialfn,
                            a.aggmtransfn, a.aggminvtransfn, a.aggmfinalfn)
            WHERE a.aggfnoid = p.oid), false))"
    };
}
pub(crate) use immutable_in_full;

/// Primary-key column types whose PostgreSQL text output equals the serde text of the matching
/// Rust types, so a row written through SQL and a key given in Rust hash to the same identity.
const TRUSTED_KEY_TYPES: &[&str] = &["int2", "int4", "int8", "text", "varchar", "uuid", "bool"];

/// At most this many columns of a table are tracked (bounding what a write invalidates).
pub(crate) const MAX_TRACKED: usize = 8;

/// How a tracked column's values are put in PostgreSQL's text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ValueKind {
    Int,
    Text,
    Uuid,
}

impl ValueKind {
    /// The kind of a column of type `typname`, if tracked columns may have it.
    pub fn of_type(typname: &str) -> Option<ValueKind> {
        match typname {
            "int2" | "int4" | "int8" => Some(ValueKind::Int),
            "text" | "varchar" => Some(ValueKind::Text),
            "uuid" => Some(ValueKind::Uuid),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub(crate) struct TableInfo {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// `pg_class.relkind`: `r` table, `p` partitioned table, `v` view, `m` materialized view, `f`
    /// foreign table.
    pub kind: char,
    /// Primary-key columns in index order, when every one has a trusted type, a deterministic
    /// collation and is not generated: then equal text means the same row, and only an
    /// assignment to the column changes it.
    pub key: Option<Vec<String>>,
    /// The types of the `key` columns (`pg_type.typname`), when there is a `key`.
    pub key_types: Option<Vec<String>>,
    /// Primary-key columns in index order, whatever their types.
    pub primary_key: Option<Vec<String>>,
    /// Whether the pool's role may read the key columns (so `RETURNING` them is accepted).
    pub key_readable: bool,
    /// Row-level security is enabled on the table or on one of its family.
    pub row_security: bool,
    /// The table has rewrite rules (`DO INSTEAD` may refuse an appended `RETURNING`).
    pub has_rules: bool,
    /// Tables whose rows change when rows of this one are deleted (cascade, set null/default).
    pub on_delete: Vec<u32>,
    /// Tables whose rows change when rows of this one are updated.
    pub on_update: Vec<u32>,
    /// Every table that references this one (what `TRUNCATE .. CASCADE` empties).
    pub referenced_by: Vec<u32>,
    /// Ancestors and descendants by inheritance or partitioning.
    pub family: Vec<u32>,
    /// The table has every trigger of the change feed, enabled.
    pub fed: bool,
    /// The columns whose values reads may depend on one by one (see [`crate::predicate`]), in
    /// column order.
    pub tracked: Vec<(String, ValueKind)>,
    /// The `tracked` columns the pool's role may not read (a write cannot return their values,
    /// so it invalidates each as a whole). Not part of the tracking rule, which must not
    /// depend on the role.
    pub unreadable: Vec<String>,
    /// The table has a `BEFORE UPDATE` row trigger of its own, which may change any column of
    /// an updated row, assigned or not.
    pub before_update: bool,
}

impl TableInfo {
    /// `schema.name`, quoted where SQL needs quotes.
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// Whether reads of this relation may be cached (views, foreign tables and the like change
    /// without a write to their own name).
    pub fn is_plain_table(&self) -> bool {
        matches!(self.kind, 'r' | 'p')
    }
}

#[derive(Debug, Default)]
pub(crate) struct Catalog {
    pub generation: u64,
    pub tables: HashMap<u32, TableInfo>,
    qualified: HashMap<(String, String), u32>,
    visible: HashMap<String, u32>,
    /// Names looked up and not found since this catalog was loaded.
    pub missing: std::sync::Mutex<HashSet<TableName>>,
    /// Whether every function of a name is immutable, by schema and name.
    functions: HashMap<(String, String), bool>,
    /// Whether every function of a name leaves the session alone, by schema and name.
    neutral: HashMap<(String, String), bool>,
    /// The schemas an unqualified name is looked up in, in order (`pg_catalog` included).
    search_path: Vec<String>,
    /// Every schema a change to may change what names resolve to (see `SEARCH_PATH`).
    searched: HashSet<String>,
    /// A digest of the role and the settings of the pool's sessions (see `SESSION`): part of
    /// every read's key, so pools whose reads would answer differently never share an entry.
    pub session: [u8; 32],
}

const TABLES: &str = r#"
SELECT c.oid::int8 AS oid, n.nspname::text AS schema, c.relname::text AS name,
       c.relkind::text AS kind,
       -- NULL when the table is dropped while this runs
       coalesce(pg_catalog.pg_table_is_visible(c.oid), false) AS visible,
       c.relrowsecurity AS row_security, c.relhasrules AS has_rules,
       pk.key_names, pk.key_types, coalesce(pk.key_exact, false) AS key_exact,
       coalesce(pk.key_readable, false) AS key_readable,
       (SELECT count(*) FROM pg_catalog.pg_trigger tg
         WHERE tg.tgrelid = c.oid AND NOT tg.tgisinternal AND tg.tgenabled <> 'D'
           AND tg.tgname IN ('sqlacache_feed_i', 'sqlacache_feed_u', 'sqlacache_feed_d', 'sqlacache_feed_t')) = 4 AS fed,
       -- row (1), before (2), update (16); enabled or not
       EXISTS (SELECT 1 FROM pg_catalog.pg_trigger tg
                WHERE tg.tgrelid = c.oid AND NOT tg.tgisinternal AND tg.tgtype & 19 = 19) AS before_update
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN LATERAL (
       SELECT array_agg(a.attname::text ORDER BY k.ord) AS key_names,
              array_agg(t.typname::text ORDER BY k.ord) AS key_types,
              -- equal text is the same row only under a deterministic collation, and a
              -- generated column changes without being assigned
              bool_and(a.attgenerated = '' AND coalesce(co.collisdeterministic, true)) AS key_exact,
              bool_and(coalesce(pg_catalog.has_column_privilege(c.oid, a.attnum, 'SELECT'), false)) AS key_readable
         FROM pg_catalog.pg_index i
        CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
         JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
         LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
        WHERE i.indrelid = c.oid AND i.indisprimary) pk ON true
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
   AND c.relpersistence <> 't'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\_toast%'
"#;

/// The columns that lead a btree index (valid or still being built, so that a pool reading the
/// catalog while one is built agrees with one reading it after), of a type whose equality is
/// equality of its text (integers, `uuid`, and `text`/`varchar` under a deterministic
/// collation), not generated (a generated column changes without being assigned), in column
/// order. Every pool of a database reads the same: they agree on which values a write names.
const TRACKED: &str = r#"
SELECT DISTINCT i.indrelid::int8 AS oid, a.attnum::int4 AS attnum, a.attname::text AS name, t.typname::text AS type,
       coalesce(pg_catalog.has_column_privilege(i.indrelid, a.attnum, 'SELECT'), false) AS readable
  FROM pg_catalog.pg_index i
  JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
  JOIN pg_catalog.pg_am am ON am.oid = ic.relam AND am.amname = 'btree'
  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] AND NOT a.attisdropped
  JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
  LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
 WHERE t.typname IN ('int2', 'int4', 'int8', 'uuid', 'text', 'varchar')
   AND a.attgenerated = '' AND coalesce(co.collisdeterministic, true)
 ORDER BY 1, 2
"#;

const FOREIGN_KEYS: &str = r#"
SELECT conrelid::int8 AS child, confrelid::int8 AS parent,
       confdeltype::text AS on_delete, confupdtype::text AS on_update
  FROM pg_catalog.pg_constraint WHERE contype = 'f'
"#;

const INHERITS: &str = "SELECT inhrelid::int8 AS child, inhparent::int8 AS parent FROM pg_catalog.pg_inherits";

/// Whether each function name is immutable in every overload: a read is cached only when the
/// functions it calls are (`random()`, `now()`, and a user function reading a table are not).
const FUNCTIONS: &str = concat!(
    r#"
SELECT n.nspname::text AS schema, p.proname::text AS name,
       bool_and("#,
    immutable_in_full!(),
    r#") AS immutable,
       -- Built-in functions other than set_config keep to their statement, and so do functions
       -- of extensions (uuid-ossp, pgcrypto); a user function is trusted to when it is declared
       -- immutable or stable.
       bool_and((n.nspname = 'pg_catalog' AND p.proname <> 'set_config') OR p.provolatile IN ('i', 's')
                OR EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                            WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid = p.oid
                              AND d.deptype = 'e')) AS neutral
  FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
 GROUP BY 1, 2
"#
);

/// What shapes the bytes of a result besides the statement and the data: the role reads run as
/// and the session's settings. Settings known to change no result (timeouts, logging, the
/// application's name, planner costs) are left out, so pools that differ only in those still
/// share entries; any other setting not at its default is in.
const SESSION: &str = r#"
SELECT current_user::text || '/' || session_user::text || '/' ||
       coalesce((SELECT string_agg(name || '=' || setting, ';' ORDER BY name)
                   FROM pg_catalog.pg_settings
                  WHERE source NOT IN ('default', 'override')
                    AND name NOT IN ('application_name', 'statement_timeout', 'lock_timeout',
                                     'idle_in_transaction_session_timeout', 'idle_session_timeout',
                                     'client_min_messages', 'cluster_name', 'work_mem',
                                     'maintenance_work_mem', 'temp_buffers', 'effective_cache_size')
                    AND name NOT LIKE 'log\_%' AND name NOT LIKE 'tcp\_%' AND name NOT LIKE 'autovacuum%'
                    AND name NOT LIKE 'enable\_%' AND name NOT LIKE '%\_cost' AND name NOT LIKE 'jit%'),
                '') AS session
"#;

/// The schemas names are looked up in: those that exist, and every one the setting names
/// (`$user` as the user), since creating one of those changes what names resolve to.
const SEARCH_PATH: &str = "SELECT pg_catalog.current_schemas(true)::text[] AS path, \
     pg_catalog.current_setting('search_path') AS setting, current_user::text AS user_name";

fn oid(value: i64) -> u32 {
    u32::try_from(value).unwrap_or_default()
}

impl Catalog {
    /// Reads the catalog: every query in one read-only `REPEATABLE READ` transaction, so they
    /// see one search path and one snapshot (a table created or dropped between two of them
    /// cannot appear in one and not the other).
    pub async fn load(pool: &PgPool, generation: u64) -> Result<Catalog, sqlx::Error> {
        Catalog::read(pool, generation, true).await
    }

    /// The tables alone (their names, keys, families, foreign keys and feed), without the
    /// functions and the session: enough to tell whether a schema change reached the cached
    /// tables, at a fraction of the cost (the functions are most of a catalog).
    pub async fn load_tables(pool: &PgPool) -> Result<Catalog, sqlx::Error> {
        Catalog::read(pool, 0, false).await
    }

    async fn read(pool: &PgPool, generation: u64, full: bool) -> Result<Catalog, sqlx::Error> {
        let mut conn = pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY").await?;
        let rows = sqlx::query(TABLES).fetch_all(&mut *conn).await?;
        let fks = sqlx::query(FOREIGN_KEYS).fetch_all(&mut *conn).await?;
        let tracked = sqlx::query(TRACKED).fetch_all(&mut *conn).await?;
        let inherits = sqlx::query(INHERITS).fetch_all(&mut *conn).await?;
        let functions = if full { sqlx::query(FUNCTIONS).fetch_all(&mut *conn).await? } else { Vec::new() };
        let path = sqlx::query(SEARCH_PATH).fetch_one(&mut *conn).await?;
        let session: String =
            if full { sqlx::query_scalar(SESSION).fetch_one(&mut *conn).await? } else { String::new() };
        conn.commit().await?;
        let search_path: Vec<String> = path.try_get("path")?;
        let (setting, user): (String, String) = (path.try_get("setting")?, path.try_get("user_name")?);
        let named = setting.split(',').map(|s| s.trim().trim_matches('"').replace("\"\"", "\"")).map(|s| {
            if s == "$user" {
                user.clone()
            } else {
                s
            }
        });

        let mut catalog =
            Catalog { generation, session: *blake3::hash(session.as_bytes()).as_bytes(), ..Catalog::default() };
        catalog.searched = search_path.iter().cloned().chain(named).collect();
        catalog.search_path = search_path;
        for row in functions {
            let immutable: Option<bool> = row.try_get("immutable")?;
            let neutral: Option<bool> = row.try_get("neutral")?;
            let name: (String, String) = (row.try_get("schema")?, row.try_get("name")?);
            catalog.neutral.insert(name.clone(), neutral.unwrap_or(false));
            catalog.functions.insert(name, immutable.unwrap_or(false));
        }
        for row in rows {
            let oid = oid(row.try_get("oid")?);
            let schema: String = row.try_get("schema")?;
            let name: String = row.try_get("name")?;
            let kind: String = row.try_get("kind")?;
            let names: Option<Vec<String>> = row.try_get("key_names")?;
            let types: Option<Vec<String>> = row.try_get("key_types")?;
            let exact: bool = row.try_get("key_exact")?;
            let (key, key_types) = match (&names, types) {
                (Some(names), Some(types))
                    if exact && types.iter().all(|t| TRUSTED_KEY_TYPES.contains(&t.as_str())) =>
                {
                    (Some(names.clone()), Some(types))
                }
                _ => (None, None),
            };
            if row.try_get::<bool, _>("visible")? {
                catalog.visible.insert(name.clone(), oid);
            }
            catalog.qualified.insert((schema.clone(), name.clone()), oid);
            catalog.tables.insert(
                oid,
                TableInfo {
                    oid,
                    schema,
                    name,
                    kind: kind.chars().next().unwrap_or('r'),
                    key,
                    key_types,
                    primary_key: names,
                    key_readable: row.try_get("key_readable")?,
                    row_security: row.try_get("row_security")?,
                    has_rules: row.try_get("has_rules")?,
                    on_delete: Vec::new(),
                    on_update: Vec::new(),
                    referenced_by: Vec::new(),
                    family: Vec::new(),
                    fed: row.try_get("fed")?,
                    tracked: Vec::new(),
                    unreadable: Vec::new(),
                    before_update: row.try_get("before_update")?,
                },
            );
        }
        for row in tracked {
            let kind = ValueKind::of_type(row.try_get::<String, _>("type")?.as_str());
            if let (Some(table), Some(kind)) = (catalog.tables.get_mut(&oid(row.try_get("oid")?)), kind) {
                if table.tracked.len() < MAX_TRACKED {
                    let name: String = row.try_get("name")?;
                    if !row.try_get::<bool, _>("readable")? {
                        table.unreadable.push(name.clone());
                    }
                    table.tracked.push((name, kind));
                }
            }
        }
        for fk in fks {
            let child = oid(fk.try_get("child")?);
            let parent = oid(fk.try_get("parent")?);
            let acts = |action: String| matches!(action.as_str(), "c" | "n" | "d");
            let on_delete = acts(fk.try_get("on_delete")?);
            let on_update = acts(fk.try_get("on_update")?);
            if let Some(table) = catalog.tables.get_mut(&parent) {
                table.referenced_by.push(child);
                if on_delete {
                    table.on_delete.push(child);
                }
                if on_update {
                    table.on_update.push(child);
                }
            }
        }
        let mut links: HashMap<u32, Vec<u32>> = HashMap::new();
        for row in inherits {
            let (child, parent) = (oid(row.try_get("child")?), oid(row.try_get("parent")?));
            links.entry(child).or_default().push(parent);
            links.entry(parent).or_default().push(child);
        }
        for (&start, _) in links.iter() {
            let family = closure([start], |t| links.get(&t).cloned().unwrap_or_default());
            // A policy on any member filters what reads of the family return.
            let row_security = family.iter().any(|t| catalog.tables.get(t).is_some_and(|i| i.row_security));
            if let Some(table) = catalog.tables.get_mut(&start) {
                table.family = family.into_iter().filter(|&t| t != start).collect();
                table.row_security |= row_security;
            }
        }
        Ok(catalog)
    }

    /// Whether the change feed covers `info`: it and every member of its family have the
    /// feed's triggers.
    pub fn fed(&self, info: &TableInfo) -> bool {
        info.fed && info.family.iter().all(|t| self.tables.get(t).is_some_and(|m| m.fed))
    }

    /// Whether a called function is immutable in every overload the name may resolve to.
    /// Unknown names are not.
    pub fn is_immutable(&self, function: &FunctionName) -> bool {
        self.every_overload(&self.functions, function)
    }

    /// Whether a called function leaves the session that runs it alone, in every overload the
    /// name may resolve to: built-in functions but `set_config`, functions of extensions, and
    /// functions declared immutable or stable. Unknown names do not.
    pub fn leaves_session_alone(&self, function: &FunctionName) -> bool {
        self.every_overload(&self.neutral, function)
    }

    fn every_overload(&self, by_name: &HashMap<(String, String), bool>, function: &FunctionName) -> bool {
        let of = |schema: &str| by_name.get(&(schema.to_owned(), function.name.clone())).copied();
        match &function.schema {
            Some(schema) => of(schema).unwrap_or(false),
            None => {
                let found: Vec<bool> = self.search_path.iter().filter_map(|schema| of(schema)).collect();
                !found.is_empty() && found.iter().all(|&yes| yes)
            }
        }
    }

    /// Whether a change to `schema` may change what names resolve to.
    pub fn searched(&self, schema: &str) -> bool {
        self.searched.contains(schema)
    }

    /// The schemas of [`Catalog::searched`], in no particular order.
    pub fn searched_schemas(&self) -> impl Iterator<Item = &str> {
        self.searched.iter().map(String::as_str)
    }

    /// Whether reads may call `schema.name` (it is immutable), so a change to it matters.
    pub fn calls(&self, schema: &str, name: &str) -> bool {
        self.functions.get(&(schema.to_owned(), name.to_owned())).copied().unwrap_or(false)
    }

    /// The schemas an unqualified name is looked up in, as a user set them.
    pub fn search_path(&self) -> Vec<&str> {
        self.search_path.iter().map(String::as_str).filter(|s| !s.starts_with("pg_")).collect()
    }

    /// Resolves a reference the way PostgreSQL would on a pool connection.
    pub fn resolve(&self, name: &TableName) -> Option<&TableInfo> {
        let oid = match &name.schema {
            Some(schema) => self.qualified.get(&(schema.clone(), name.name.clone())),
            None => self.visible.get(&name.name),
        }?;
        self.tables.get(oid)
    }

    /// Tables whose data changes as a consequence of deleting (or updating) rows of `start`,
    /// following foreign-key actions transitively. Does not include `start` itself.
    pub fn cascades(&self, start: u32, delete: bool) -> Vec<u32> {
        let first: Vec<u32> = match self.tables.get(&start) {
            Some(t) if delete => t.on_delete.clone(),
            Some(t) => t.on_update.clone(),
            None => return Vec::new(),
        };
        // A child reached by a cascade is itself deleted or updated; follow both kinds from it.
        let mut all = closure(first, |t| {
            self.tables.get(&t).map(|i| i.on_delete.iter().chain(&i.on_update).copied().collect()).unwrap_or_default()
        });
        all.remove(&start);
        all.into_iter().collect()
    }

    /// The `Table` and `Rows` tags of `table` and of every member of its family: what a change
    /// to the table's rows, keys unknown, invalidates.
    pub fn family_tags(&self, table: u32) -> Vec<Tag> {
        let family = self.tables.get(&table).map(|t| t.family.as_slice()).unwrap_or_default();
        std::iter::once(table).chain(family.iter().copied()).flat_map(|t| [Tag::Table(t), Tag::Rows(t)]).collect()
    }

    /// What a write to rows of `table` invalidates besides those rows (`Rows(table)` or their
    /// `Row` tags, which the caller adds): `Table(table)`, the `Table` and `Rows` tags of the
    /// other members of its family (reads of a partitioned parent or an inheritance ancestor see
    /// the rows of the member a write changes), and the [`Catalog::family_tags`] of every table
    /// that `actions`, declared on any member of the family, reach.
    pub fn write_tags(&self, table: u32, actions: Actions) -> Vec<Tag> {
        let family = self.tables.get(&table).map(|t| t.family.clone()).unwrap_or_default();
        let mut tags = vec![Tag::Table(table)];
        let mut push = |tag: Tag| {
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        };
        family.iter().flat_map(|&f| [Tag::Table(f), Tag::Rows(f)]).for_each(&mut push);
        for member in std::iter::once(table).chain(family) {
            let reached = match actions {
                Actions::None => Vec::new(),
                Actions::Update => self.cascades(member, false),
                Actions::Delete => self.cascades(member, true),
                Actions::Truncate => self.truncate_cascade(member),
                Actions::Any => {
                    let mut both = self.cascades(member, true);
                    both.extend(self.cascades(member, false));
                    both
                }
            };
            reached.into_iter().flat_map(|t| self.family_tags(t)).for_each(&mut push);
        }
        tags
    }

    /// Every table a `TRUNCATE .. CASCADE` of `start` empties, transitively.
    pub fn truncate_cascade(&self, start: u32) -> Vec<u32> {
        let first = self.tables.get(&start).map(|t| t.referenced_by.clone()).unwrap_or_default();
        let mut all = closure(first, |t| self.tables.get(&t).map(|i| i.referenced_by.clone()).unwrap_or_default());
        all.remove(&start);
        all.into_iter().collect()
    }
}

/// Which foreign-key actions a write fires (see [`Catalog::write_tags`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Actions {
    /// None: an insert, or a `TRUNCATE` without `CASCADE`.
    None,
    /// `ON UPDATE` actions.
    Update,
    /// `ON DELETE` actions.
    Delete,
    /// What `TRUNCATE .. CASCADE` empties.
    Truncate,
    /// Both `ON UPDATE` and `ON DELETE` actions (a write of unknown kind).
    Any,
}

/// An identifier as SQL would write it: quoted unless it is a plain lower-case name.
pub(crate) fn quote_ident(ident: &str) -> String {
    let plain = ident.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && ident.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        ident.to_owned()
    } else {
        format!("\"{}\"", ident.replace('"', "\"\""))
    }
}

fn closure(start: impl IntoIterator<Item = u32>, next: impl Fn(u32) -> Vec<u32>) -> HashSet<u32> {
    let mut seen = HashSet::new();
    let mut todo: Vec<u32> = start.into_iter().collect();
    while let Some(t) = todo.pop() {
        if seen.insert(t) {
            todo.extend(next(t));
        }
    }
    seen
}

/// The identity of the database the pool reads: the cluster's system identifier and the
/// database's oid (its name where the role may not read the system identifier). Two databases
/// never share it; every connection to one database, whatever host name it used, has the same.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) async fn database_identity(pool: &PgPool) -> Result<String, sqlx::Error> {
    const IDENTITY: &str = "SELECT (SELECT system_identifier FROM pg_control_system())::text || '-' || \
        (SELECT oid FROM pg_database WHERE datname = current_database())::text";
    match sqlx::query_scalar::<_, String>(IDENTITY).fetch_one(pool).await {
        Ok(identity) => Ok(identity),
        Err(sqlx::Error::Database(_)) => {
            sqlx::query_scalar::<_, String>("SELECT 'db-' || md5(current_database())").fetch_one(pool).await
        }
        Err(error) => Err(error),
    }
}
