//! [`CachedPool`], the public handle: cheap to clone, every clone sharing one engine.

use crate::cacheable::Cacheable;
use crate::engine::Engine;
use crate::error::Error;
use crate::local::Origin;
use crate::rowkey::row_of;
use sqlacache_core::analyze::TableName;
use sqlacache_core::{StatsSnapshot, Tag};
use sqlx::PgPool;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

/// A [`PgPool`] with a query cache in front of it.
///
/// Every write made through it (with any sqlx API: `query`, `query_as`, `query!`, `raw_sql`)
/// invalidates the cached reads it may change before the write returns; reads made with the
/// typed calls ([`get`](CachedPool::get), [`query_as`](crate::query_as()),
/// [`query_scalar`](crate::query_scalar()), [`query_as!`](crate::query_as!)) are answered from
/// the cache when it holds a fresh copy. Cloning is cheap and clones share one cache.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), sqlacache_sqlx::Error> {
/// use sqlacache_sqlx::{CachedPool, Ops};
/// use std::time::Duration;
/// let cache = CachedPool::builder(pool)
///     .table("orders", Ops::ALL, Duration::from_secs(60))
///     .build()
///     .await?;
/// sqlx::query("UPDATE orders SET paid = true WHERE id = $1").bind(7_i64).execute(&cache).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CachedPool {
    pub(crate) engine: Arc<Engine>,
}

impl fmt::Debug for CachedPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedPool")
            .field("pool", &self.engine.pool)
            .field("store", self.engine.store())
            .field("stats", &self.engine.stats().snapshot())
            .finish()
    }
}

impl CachedPool {
    /// The wrapped pool.
    ///
    /// Writes made through it **bypass invalidation**: use it for migrations, `PgListener`,
    /// `COPY` and other work that must reach the connection itself, and invalidate by hand
    /// afterwards if cached tables changed.
    pub fn inner(&self) -> &PgPool {
        &self.engine.pool
    }

    /// A snapshot of the counters.
    ///
    /// ```no_run
    /// # fn demo(cache: &sqlacache_sqlx::CachedPool) {
    /// let s = cache.stats();
    /// println!("{} hits, {} misses", s.hits, s.misses);
    /// # }
    /// ```
    pub fn stats(&self) -> StatsSnapshot {
        let mut snapshot = self.engine.stats().snapshot();
        snapshot.widened += self.engine.store().tables_sharing_a_clock();
        snapshot
    }

    /// What the cache would do with a read statement, without running it: whether it is
    /// cached and, if not, why (the reason [`stats`](Self::stats) counts), the operation it
    /// counts as, the tables it reads, what invalidates it and the TTL. The statement is
    /// planned as a first read would plan it (parsed, and PostgreSQL asked what it depends on).
    ///
    /// ```no_run
    /// # async fn demo(cache: &sqlacache_sqlx::CachedPool) -> Result<(), sqlacache_sqlx::Error> {
    /// let explained = cache.explain("SELECT * FROM orders WHERE customer_id = $1").await?;
    /// println!("{explained}");
    /// // cached as FETCH for 900s; reads public.orders
    /// //   invalidated by public.orders.customer_id in ($1): a write of a row with one of these values, before or after
    /// # Ok(()) }
    /// ```
    pub async fn explain(&self, sql: &str) -> Result<crate::Explain, Error> {
        Ok(crate::explain::Explain::of(&self.engine, sql).await?)
    }

    /// What each read statement did, busiest first (by hits, misses, bypasses and degraded
    /// reads together): the hot query that is never cached, and why, is here. Bounded: the
    /// statements the planner keeps (up to 4,096 SQL texts); writes and statements never read
    /// through the cache's typed calls or the pool are left out.
    ///
    /// ```no_run
    /// # fn demo(cache: &sqlacache_sqlx::CachedPool) {
    /// for s in cache.statements().iter().take(10) {
    ///     println!("{:>8} hits {:>8} misses {:>8} bypassed {:?} saved {:?}: {}",
    ///         s.hits, s.misses, s.bypassed, s.reasons(), s.time_saved(), s.sql);
    /// }
    /// # }
    /// ```
    pub fn statements(&self) -> Vec<crate::StatementStats> {
        self.engine.planner.statements()
    }

    /// Copies the pool's counters into the [`metrics`](https://docs.rs/metrics) facade now
    /// (feature `metrics`; the pool also does so every second, see
    /// [`metrics_every`](crate::CachedPoolBuilder::metrics_every)). Call it before rendering a
    /// scrape to export exact totals. A read never touches the facade: the totals are copied
    /// (`Counter::absolute`), so exporting costs a hit nothing.
    ///
    /// Every metric has the label `pool` (the pool's key prefix). Names follow OpenTelemetry's
    /// conventions; a Prometheus exporter writes the dots as underscores.
    ///
    /// | name | type | unit | labels | what |
    /// | --- | --- | --- | --- | --- |
    /// | `sqlacache.reads` | counter | reads | `result` (`hit`, `stale_hit`, `stale_if_error`, `miss`, `bypass`, `degraded`), `tier` (`memory`, `redis`, `none`), `reason` (bypasses: `volatile`, `plain_sqlx`, .. as [`Uncached`](crate::Uncached) in snake case) | typed reads by how they were answered |
    /// | `sqlacache.invalidations` | counter | invalidations | `origin` (`pool`: writes through this pool and manual calls; `peer`: heard from other processes; `feed`: heard on the change feed) | invalidations applied here |
    /// | `sqlacache.invalidations.full` | counter | invalidations | | those that dropped every entry |
    /// | `sqlacache.invalidations.widened` | counter | times | | invalidations made wider because a bound was reached |
    /// | `sqlacache.tier.drops` | counter | times | | the in-process tier dropped (invalidations may have been missed) |
    /// | `sqlacache.redis.errors` | counter | commands | | Redis commands that failed or timed out |
    /// | `sqlacache.fills.rejected` | counter | fills | | fills refused because a write invalidated what they read |
    /// | `sqlacache.fills.coalesced` | counter | reads | | misses that waited for a concurrent fill |
    /// | `sqlacache.entries.corrupt` | counter | entries | | cached values that did not decode |
    /// | `sqlacache.bus.published` | counter | invalidations | | published to the other processes |
    /// | `sqlacache.strict.deadlines` | counter | writes | | strict writes that returned at their deadline |
    /// | `sqlacache.verify.checks` | counter | checks | `result` (`equal`, `mismatch`) | shadow checks of sampled hits |
    /// | `sqlacache.statements.analyzed` | counter | statements | | SQL strings parsed and planned |
    /// | `sqlacache.memory.usage` | gauge | bytes | | weight of the in-process tier's entries |
    /// | `sqlacache.memory.entries` | gauge | entries | | entries in the in-process tier |
    /// | `sqlacache.feed.lag` | gauge | seconds | | how long ago the newest change-feed heartbeat that came back was sent (with a change feed) |
    ///
    /// ```no_run
    /// # fn demo(cache: &sqlacache_sqlx::CachedPool) {
    /// // With a recorder installed (metrics-exporter-prometheus, say):
    /// cache.record_metrics();
    /// # }
    /// ```
    #[cfg(feature = "metrics")]
    pub fn record_metrics(&self) {
        crate::telemetry::record(&self.engine);
    }

    /// Bytes held by cached entries (by the store's weight formula) and the number of entries.
    pub fn memory_usage(&self) -> (u64, usize) {
        (self.engine.store().weight(), self.engine.store().len())
    }

    /// Row tags held by the in-process tier (rows, and values of tracked columns, written while
    /// entries depended on them) and the bytes they take. Bounded whatever the workload: past
    /// 32,768 tags in one of its 64 shards, the older half is folded into one floor (which
    /// only invalidates more).
    ///
    /// ```no_run
    /// # fn demo(cache: &sqlacache_sqlx::CachedPool) {
    /// let (tags, bytes) = cache.tag_memory();
    /// println!("{tags} row tags in {bytes} bytes");
    /// # }
    /// ```
    pub fn tag_memory(&self) -> (usize, u64) {
        self.engine.store().tag_memory()
    }

    /// Reads the row of `T` with primary key `key`, from the cache when it holds a fresh copy.
    /// Absent rows are cached too, and an `INSERT` of that key invalidates them.
    ///
    /// A composite key is a tuple, in field order (declare the fields in the order of the
    /// table's `PRIMARY KEY` so writes can be matched to single rows).
    ///
    /// ```no_run
    /// # #[derive(sqlx::FromRow, serde::Serialize, serde::Deserialize, sqlacache_sqlx::Cacheable)]
    /// # #[cache(table = "users")]
    /// # struct User { #[cache(pk)] id: i64 }
    /// # async fn demo(cache: &sqlacache_sqlx::CachedPool) -> Result<(), sqlx::Error> {
    /// let user: Option<User> = cache.get::<User>(1).await?;
    /// # Ok(()) }
    /// ```
    // Not an `async fn`: the read's own future is the call's, with no layer around it.
    pub fn get<T: Cacheable>(&self, key: T::Key) -> impl Future<Output = Result<Option<T>, sqlx::Error>> + Send + '_ {
        crate::read::get::<T>(&self.engine, key)
    }

    /// Begins a transaction. Writes made in it invalidate the cache when
    /// [`commit`](crate::CachedTransaction::commit) returns; a rollback, or dropping the
    /// transaction, invalidates nothing.
    pub async fn begin(&self) -> Result<crate::transaction::CachedTransaction, sqlx::Error> {
        crate::transaction::CachedTransaction::begin(self.engine.clone()).await
    }

    /// Invalidates cached reads of the rows of `T` with these keys (and every multi-row read of
    /// its table, pinned to values of its columns or not), for changes made where the cache
    /// cannot see them.
    pub async fn invalidate_rows<T: Cacheable>(&self, keys: &[T::Key]) -> Result<(), Error> {
        let plan = self.engine.plan(T::MODEL.get_sql, true).await?;
        let Some(single) = plan.read.as_ref().ok().and_then(|r| r.single.as_ref()) else {
            return self.invalidate_table(T::MODEL.table).await;
        };
        let mut tags = vec![Tag::Table(single.0)];
        // The values of their tracked columns are not known: every read pinned to some.
        tags.extend(
            self.engine.schema.catalog().tables.get(&single.0).into_iter().flat_map(crate::predicate::all_columns),
        );
        for key in keys {
            match row_of::<T>(single, key) {
                Some(row) => tags.push(Tag::Row(row)),
                None => {
                    tags.push(Tag::Rows(single.0));
                    break;
                }
            }
        }
        self.engine.tiers.apply_now(&tags, Origin::Write).await;
        Ok(())
    }

    /// Invalidates every cached read of a table (by SQL name, such as `users` or `app.users`).
    pub async fn invalidate_table(&self, table: &str) -> Result<(), Error> {
        let name = TableName::parse(table);
        let schema = &self.engine.schema;
        let mut catalog = schema.catalog();
        if catalog.resolve(&name).is_none() {
            schema.reload(catalog.generation).await?;
            catalog = schema.catalog();
        }
        let info = catalog.resolve(&name).ok_or_else(|| Error::UnknownTable(table.to_owned()))?;
        self.engine.tiers.apply_now(&catalog.family_tags(info.oid), Origin::Write).await;
        Ok(())
    }

    /// Drops every cached read (in Redis too, under this pool's key prefix and database, and in
    /// the other processes).
    pub async fn invalidate_all(&self) -> Result<(), Error> {
        self.engine.tiers.apply_now(&[Tag::All], Origin::Write).await;
        Ok(())
    }

    /// Reads the schema again (tables, keys, foreign keys). Schema changes made through the
    /// pool are noticed by themselves; call this after changing the schema elsewhere.
    pub async fn refresh_catalog(&self) -> Result<(), Error> {
        let schema = &self.engine.schema;
        schema.changed();
        schema.reload(schema.generation()).await?;
        Ok(())
    }
}
