//! The builder's configuration, and its checks against the database at `build()`: every name
//! must resolve to a table, every model's key must be its table's key, and two models of one
//! table must agree.

use crate::catalog::{Catalog, TableInfo};
use crate::error::Cause;
use crate::error::Error;
use crate::model::Model;
use sqlacache_core::analyze::TableName;
use sqlacache_core::Ops;
use sqlx::PgPool;
use std::time::Duration;

/// A table's settings, and where they were given (for error messages).
#[derive(Debug, Clone)]
pub(crate) struct TableConfig {
    pub name: TableName,
    /// The name as written.
    pub written: String,
    pub ops: Ops,
    pub ttl: Option<Duration>,
    /// The stale windows a model declares (a table configured by name has none of its own).
    pub stale: Stale,
    /// `.table("orders", ..)`, or `.model::<User>()`.
    pub source: String,
    /// The declared key, for a model.
    pub model_key: Option<&'static [&'static str]>,
}

impl TableConfig {
    pub fn table(name: &str, ops: Ops, ttl: Duration) -> TableConfig {
        let source = format!("`.table({name:?}, ..)`");
        TableConfig {
            name: TableName::parse(name),
            written: name.to_owned(),
            ops,
            ttl: Some(ttl),
            stale: Stale::default(),
            source,
            model_key: None,
        }
    }

    /// The settings of a model, named for messages as `source` says where they came from.
    pub fn model(model: &Model, source: String) -> TableConfig {
        TableConfig {
            name: TableName::parse(model.table),
            written: model.table.to_owned(),
            ops: model.ops,
            ttl: model.ttl_secs.map(Duration::from_secs),
            stale: Stale {
                revalidate: Duration::from_secs(model.swr_secs.unwrap_or(0).into()),
                if_error: Duration::from_secs(model.stale_if_error_secs.unwrap_or(0).into()),
            },
            source,
            model_key: Some(model.primary_key),
        }
    }

    /// A model given to `.model::<T>()`.
    pub fn registered(model: &Model, type_name: &str) -> TableConfig {
        TableConfig::model(model, format!("`.model::<{}>()` (table {:?})", short_name(type_name), model.table))
    }
}

/// `app::models::User` as `User`: the name a user wrote.
fn short_name(path: &str) -> &str {
    path.rsplit("::").next().unwrap_or(path)
}

/// How a table is cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Policy {
    pub ops: Ops,
    pub ttl: Duration,
    pub stale: Stale,
}

/// How long past its TTL an entry that was not invalidated may still be served: while one
/// background read refreshes it (`revalidate`), or while PostgreSQL fails (`if_error`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Stale {
    pub revalidate: Duration,
    pub if_error: Duration,
}

impl Stale {
    /// How long past its TTL an entry is kept.
    pub fn keep(self) -> Duration {
        self.revalidate.max(self.if_error)
    }

    /// The windows of a read of several tables: the smallest of each.
    pub fn min(self, other: Stale) -> Stale {
        Stale { revalidate: self.revalidate.min(other.revalidate), if_error: self.if_error.min(other.if_error) }
    }
}

/// A table's stale windows set on the builder, which override its model's.
#[derive(Debug, Clone)]
pub(crate) struct StaleConfig {
    pub name: TableName,
    pub written: String,
    pub revalidate: Option<Duration>,
    pub if_error: Option<Duration>,
}

#[derive(Debug)]
pub(crate) struct Config {
    /// Models first, then `.table(..)` calls, each in call order: the last match wins.
    pub tables: Vec<TableConfig>,
    /// `.stale_while_revalidate(..)` and `.stale_if_error(..)` calls, in call order.
    pub stale: Vec<StaleConfig>,
    /// Disabled tables, with the name as written.
    pub disabled: Vec<(TableName, String)>,
    pub default_ttl: Duration,
    pub wildcard: Ops,
}

impl Config {
    pub fn new(
        mut tables: Vec<TableConfig>,
        stale: Vec<StaleConfig>,
        disabled: Vec<(TableName, String)>,
        default_ttl: Duration,
        wildcard: Ops,
    ) -> Config {
        // `.table(..)` overrides the settings of a model of the same table.
        tables.sort_by_key(|t| t.model_key.is_none());
        Config { tables, stale, disabled, default_ttl, wildcard }
    }

    /// The ops and TTL of a table; `None` when nothing of it is cached. A disabled table is
    /// never cached; an explicit `.table(..)` overrides a model's settings.
    pub fn policy(&self, catalog: &Catalog, info: &TableInfo) -> Option<Policy> {
        let is = |name: &TableName| catalog.resolve(name).is_some_and(|t| t.oid == info.oid);
        if self.disabled.iter().any(|(name, _)| is(name)) {
            return None;
        }
        let (ops, ttl) = match self.tables.iter().rev().find(|t| is(&t.name)) {
            Some(t) => (t.ops, t.ttl.unwrap_or(self.default_ttl)),
            None => (self.wildcard, self.default_ttl),
        };
        // A model's windows, then the builder's for the table, the last call winning.
        let mut stale = self
            .tables
            .iter()
            .rev()
            .filter(|t| t.model_key.is_some() && is(&t.name))
            .map(|t| t.stale)
            .next()
            .unwrap_or_default();
        for set in self.stale.iter().filter(|s| is(&s.name)) {
            stale.revalidate = set.revalidate.unwrap_or(stale.revalidate);
            stale.if_error = set.if_error.unwrap_or(stale.if_error);
        }
        (ops != Ops::NONE).then_some(Policy { ops, ttl, stale })
    }

    /// Checks the configuration against the database. The first mistake is the error.
    pub async fn check(&self, catalog: &Catalog, pool: &PgPool) -> Result<(), Error> {
        if self.default_ttl.is_zero() {
            return Err(Error::Config(Cause::new("default_ttl must be greater than zero")));
        }
        for table in &self.tables {
            Config::check_table(&self.tables, table, catalog, pool).await?;
        }
        for set in &self.stale {
            resolve(catalog, &set.name, &set.written, &format!("the stale window of `{}`", set.written))?;
        }
        for (name, written) in &self.disabled {
            resolve(catalog, name, written, &format!("`.disable_table({written:?})`"))?;
        }
        Ok(())
    }

    /// Checks one table's settings: the table exists, a model's key is its primary key, and no
    /// other model of the table declares other settings (unless a `.table(..)` call decides).
    /// Returns the table's oid.
    pub async fn check_table(
        tables: &[TableConfig],
        table: &TableConfig,
        catalog: &Catalog,
        pool: &PgPool,
    ) -> Result<u32, Error> {
        let info = resolve(catalog, &table.name, &table.written, &table.source)?;
        let qualified = info.qualified();
        if table.ttl.is_some_and(|ttl| ttl.is_zero()) {
            return Err(Error::Config(Cause::new(format!(
                "the TTL of `{qualified}` (from {}) must be greater than zero",
                table.source
            ))));
        }
        let Some(declared) = table.model_key else { return Ok(info.oid) };
        check_key(info, declared, &table.source, pool).await?;
        let same_table = |other: &TableConfig| catalog.resolve(&other.name).is_some_and(|o| o.oid == info.oid);
        if tables.iter().any(|t| t.model_key.is_none() && same_table(t)) {
            return Ok(info.oid);
        }
        let disagrees = |other: &&TableConfig| {
            !std::ptr::eq(*other, table)
                && other.model_key.is_some()
                && (other.ops, other.ttl) != (table.ops, table.ttl)
                && same_table(other)
        };
        if let Some(other) = tables.iter().find(disagrees) {
            return Err(Error::Config(Cause::new(format!(
                "two models of `{qualified}` declare different ops or TTL: {} ({:?}, TTL {}) and {} ({:?}, TTL {}); \
                 make them agree, or set the table's with `.table(..)`",
                other.source,
                other.ops,
                ttl_text(other.ttl),
                table.source,
                table.ops,
                ttl_text(table.ttl)
            ))));
        }
        Ok(info.oid)
    }

    /// Adds a model checked with [`Config::check_table`], before the `.table(..)` settings.
    pub fn add_model(&mut self, table: TableConfig) {
        let models = self.tables.iter().take_while(|t| t.model_key.is_some()).count();
        self.tables.insert(models, table);
    }
}

fn resolve<'c>(catalog: &'c Catalog, name: &TableName, written: &str, source: &str) -> Result<&'c TableInfo, Error> {
    catalog.resolve(name).ok_or_else(|| {
        Error::Config(Cause::new(format!(
            "{source} names no table: `{written}` is not in the database, or not on the search path ({})",
            catalog.search_path().join(", ")
        )))
    })
}

fn ttl_text(ttl: Option<Duration>) -> String {
    ttl.map_or_else(|| "the default".to_owned(), |t| format!("{t:?}"))
}

/// Unique indexes without a predicate or expressions, each as its columns in index order.
const UNIQUE_KEYS: &str = r#"
SELECT array_agg(a.attname::text ORDER BY k.ord) AS columns
  FROM pg_catalog.pg_index i
 CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
 WHERE i.indrelid = $1::int8::oid AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
 GROUP BY i.indexrelid
"#;

/// A model's `#[cache(pk)]` fields must be its table's primary key, in key order: `get` reads
/// one row by them, and a write's row is matched to cached `get`s by the same columns. A table
/// without a primary key must have a unique index on exactly those columns.
async fn check_key(info: &TableInfo, declared: &[&str], source: &str, pool: &PgPool) -> Result<(), Error> {
    let list = |columns: &[&str]| columns.join(", ");
    let qualified = info.qualified();
    if let Some(primary) = &info.primary_key {
        let primary: Vec<&str> = primary.iter().map(String::as_str).collect();
        if primary == declared {
            return Ok(());
        }
        let mut sorted = (primary.clone(), declared.to_vec());
        sorted.0.sort_unstable();
        sorted.1.sort_unstable();
        let hint = if sorted.0 == sorted.1 {
            "declare the key fields in the order of the primary key"
        } else {
            "mark exactly the primary-key fields with `#[cache(pk)]`"
        };
        return Err(Error::Config(Cause::new(format!(
            "{source}: the model's key ({}) is not the primary key of `{qualified}` ({}); {hint}",
            list(declared),
            list(&primary)
        ))));
    }
    let rows: Vec<(Vec<String>,)> = sqlx::query_as(UNIQUE_KEYS).bind(i64::from(info.oid)).fetch_all(pool).await?;
    let mut wanted = declared.to_vec();
    wanted.sort_unstable();
    let unique = rows.iter().any(|(columns,)| {
        let mut columns: Vec<&str> = columns.iter().map(String::as_str).collect();
        columns.sort_unstable();
        columns == wanted
    });
    if unique {
        return Ok(());
    }
    let what = match info.kind {
        'v' => "is a view and has no primary key",
        'm' => "is a materialized view without a unique index on those columns",
        'f' => "is a foreign table and has no primary key",
        _ => "has no primary key and no unique index on those columns",
    };
    Err(Error::Config(Cause::new(format!(
        "{source}: the model's key ({}) cannot be checked to name one row: `{qualified}` {what}, so `get` could \
         return any of several rows",
        list(declared)
    ))))
}
