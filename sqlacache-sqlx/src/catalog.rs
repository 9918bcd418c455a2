//! What the library knows about the database schema: tables, primary keys, foreign-key actions
//! and inheritance, read from the system catalogs.

use sqlacache_core::analyze::TableName;
use sqlx::{PgPool, Row};
use std::collections::{HashMap, HashSet};

/// Primary-key column types whose PostgreSQL text output equals the serde text of the matching
/// Rust types, so a row written through SQL and a key given in Rust hash to the same identity.
const TRUSTED_KEY_TYPES: &[&str] = &["int2", "int4", "int8", "text", "varchar", "uuid", "bool"];

#[derive(Debug)]
pub(crate) struct TableInfo {
    pub oid: u32,
    /// `pg_class.relkind`: `r` table, `p` partitioned table, `v` view, `m` materialized view, `f`
    /// foreign table.
    pub kind: char,
    /// Primary-key columns in index order, when every one has a trusted type.
    pub key: Option<Vec<String>>,
    /// Tables whose rows change when rows of this one are deleted (cascade, set null/default).
    pub on_delete: Vec<u32>,
    /// Tables whose rows change when rows of this one are updated.
    pub on_update: Vec<u32>,
    /// Every table that references this one (what `TRUNCATE .. CASCADE` empties).
    pub referenced_by: Vec<u32>,
    /// Ancestors and descendants by inheritance or partitioning.
    pub family: Vec<u32>,
}

impl TableInfo {
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
}

const TABLES: &str = r#"
SELECT c.oid::int8 AS oid, n.nspname::text AS schema, c.relname::text AS name,
       c.relkind::text AS kind,
       -- NULL when the table is dropped while this runs
       coalesce(pg_catalog.pg_table_is_visible(c.oid), false) AS visible,
       (SELECT array_agg(a.attname::text ORDER BY k.ord)
          FROM pg_catalog.pg_index i
          CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
          JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE i.indrelid = c.oid AND i.indisprimary) AS key_names,
       (SELECT array_agg(t.typname::text ORDER BY k.ord)
          FROM pg_catalog.pg_index i
          CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
          JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
          JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
         WHERE i.indrelid = c.oid AND i.indisprimary) AS key_types
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
   AND c.relpersistence <> 't'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
   AND n.nspname NOT LIKE 'pg\_toast%'
"#;

const FOREIGN_KEYS: &str = r#"
SELECT conrelid::int8 AS child, confrelid::int8 AS parent,
       confdeltype::text AS on_delete, confupdtype::text AS on_update
  FROM pg_catalog.pg_constraint WHERE contype = 'f'
"#;

const INHERITS: &str = "SELECT inhrelid::int8 AS child, inhparent::int8 AS parent FROM pg_catalog.pg_inherits";

fn oid(value: i64) -> u32 {
    u32::try_from(value).unwrap_or_default()
}

impl Catalog {
    /// Reads the catalog. All three queries run on one connection so they see one search path.
    pub async fn load(pool: &PgPool, generation: u64) -> Result<Catalog, sqlx::Error> {
        let mut conn = pool.acquire().await?;
        let rows = sqlx::query(TABLES).fetch_all(&mut *conn).await?;
        let fks = sqlx::query(FOREIGN_KEYS).fetch_all(&mut *conn).await?;
        let inherits = sqlx::query(INHERITS).fetch_all(&mut *conn).await?;
        drop(conn);

        let mut catalog = Catalog { generation, ..Catalog::default() };
        for row in rows {
            let oid = oid(row.try_get("oid")?);
            let schema: String = row.try_get("schema")?;
            let name: String = row.try_get("name")?;
            let kind: String = row.try_get("kind")?;
            let names: Option<Vec<String>> = row.try_get("key_names")?;
            let types: Option<Vec<String>> = row.try_get("key_types")?;
            let key = match (names, types) {
                (Some(names), Some(types)) if types.iter().all(|t| TRUSTED_KEY_TYPES.contains(&t.as_str())) => {
                    Some(names)
                }
                _ => None,
            };
            if row.try_get::<bool, _>("visible")? {
                catalog.visible.insert(name.clone(), oid);
            }
            catalog.qualified.insert((schema, name), oid);
            catalog.tables.insert(
                oid,
                TableInfo {
                    oid,
                    kind: kind.chars().next().unwrap_or('r'),
                    key,
                    on_delete: Vec::new(),
                    on_update: Vec::new(),
                    referenced_by: Vec::new(),
                    family: Vec::new(),
                },
            );
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
            if let Some(table) = catalog.tables.get_mut(&start) {
                table.family = family.into_iter().filter(|&t| t != start).collect();
            }
        }
        Ok(catalog)
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

    /// Every table a `TRUNCATE .. CASCADE` of `start` empties, transitively.
    pub fn truncate_cascade(&self, start: u32) -> Vec<u32> {
        let first = self.tables.get(&start).map(|t| t.referenced_by.clone()).unwrap_or_default();
        let mut all = closure(first, |t| self.tables.get(&t).map(|i| i.referenced_by.clone()).unwrap_or_default());
        all.remove(&start);
        all.into_iter().collect()
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
