//! "Why is this not cached?": what the cache would do with a statement, without running it.

use crate::admission::{decide, op_of};
use crate::engine::Engine;
use sqlacache_core::{Ops, Uncached};
use std::fmt;
use std::time::Duration;

/// What the cache does with a read statement, from [`CachedPool::explain`](crate::CachedPool::explain).
///
/// ```no_run
/// # async fn demo(cache: &sqlacache_sqlx::CachedPool) -> Result<(), sqlacache_sqlx::Error> {
/// let why = cache.explain("SELECT * FROM orders WHERE customer_id = $1 AND created_at > now()").await?;
/// assert!(!why.is_cached());
/// println!("{why}"); // not cached: Volatile ...
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Explain {
    /// The statement explained.
    pub sql: String,
    /// Why its reads are not cached (the reason [`stats`](crate::CachedPool::stats) counts), or
    /// `None` when they are.
    pub uncached: Option<Uncached>,
    /// The operation it counts as (`FETCH`, `COUNT` or `EXISTS`: what a table's `ops` must
    /// allow), when it is a read the analyzer could plan.
    pub operation: Option<Ops>,
    /// The tables it reads (`schema.name`), when known.
    pub tables: Vec<String>,
    /// What invalidates it, in words: a table's every write, or the writes of rows with given
    /// values of a tracked column (`$n` is the read's argument).
    pub depends_on: Vec<String>,
    /// How long an entry lives (the shortest TTL of its tables), when it is cached.
    pub ttl: Option<Duration>,
}

impl Explain {
    /// Whether reads of the statement are served from the cache (as far as the statement goes:
    /// an argument that cannot be part of a key, or that holds a clock word such as `'now'`,
    /// still makes one read bypass it).
    pub fn is_cached(&self) -> bool {
        self.uncached.is_none()
    }

    /// Plans `sql` (from the memo, or by parsing it and asking PostgreSQL what it depends on,
    /// as a first read would) and decides as a read by the typed calls would.
    pub(crate) async fn of(engine: &Engine, sql: &str) -> Result<Explain, sqlx::Error> {
        let plan = engine.plan(sql, true).await?;
        let verdict = decide(&engine.schema, Ok(()), &plan, None, Ok(()));
        let catalog = engine.schema.catalog();
        let read = plan.read.as_ref().ok();
        Ok(Explain {
            sql: sql.to_owned(),
            uncached: verdict.err(),
            operation: read.map(|r| op_of(r.op)),
            tables: read
                .map(|r| r.tables.iter().filter_map(|oid| catalog.tables.get(oid)).map(|t| t.qualified()).collect())
                .unwrap_or_default(),
            depends_on: read.map(|r| r.deps.described.clone()).unwrap_or_default(),
            ttl: verdict.ok().map(|r| r.ttl),
        })
    }
}

impl fmt::Display for Explain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.uncached {
            Some(reason) => write!(f, "not cached: {reason:?}")?,
            None => write!(f, "cached")?,
        }
        if let Some(op) = self.operation {
            write!(f, " as {op:?}")?;
        }
        if let Some(ttl) = self.ttl {
            write!(f, " for {}s", ttl.as_secs())?;
        }
        if !self.tables.is_empty() {
            write!(f, "; reads {}", self.tables.join(", "))?;
        }
        for dep in &self.depends_on {
            write!(f, "\n  invalidated by {dep}")?;
        }
        Ok(())
    }
}
