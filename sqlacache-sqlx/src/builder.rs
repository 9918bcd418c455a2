//! [`CachedPoolBuilder`]: the settings of a pool, checked against the schema by `build()`.

use crate::cacheable::Cacheable;
use crate::catalog::Catalog;
use crate::config::{Config, StaleConfig, TableConfig};
use crate::engine::Engine;
use crate::error::Cause;
use crate::error::Error;
use crate::feed::listener::Feed;
use crate::feed::sql::{fed_tables, install, missing, outdated, sql as feed_sql, FeedSql};
use crate::handle::CachedPool;
use crate::local::Local;
use crate::neighbours::Neighbours;
use crate::registry::Registry;
use crate::remote::{RedisSettings, Remote};
use crate::row::CachedRow;
use crate::schema::{configured, Schema};
use crate::strict::Consistency;
use crate::tiers::Tiers;
use sqlacache_core::analyze::TableName;
use sqlacache_core::Ops;
use sqlx::PgPool;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Configures a [`CachedPool`]. Obtained from [`CachedPool::builder`].
///
/// Tables not configured are cached under the `*` wildcard (all operations, the default TTL)
/// unless disabled. A read touching several tables uses the smallest TTL and is cached only if
/// every table allows its operation.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), sqlacache_sqlx::Error> {
/// use sqlacache_sqlx::{CachedPool, Ops};
/// use std::time::Duration;
/// let cache = CachedPool::builder(pool)
///     .table("orders", Ops::GET | Ops::COUNT, Duration::from_secs(60))
///     .disable_table("audit_log")
///     .default_ttl(Duration::from_secs(600))
///     .memory_capacity(256 * 1024 * 1024)
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[must_use = "call build() to create the pool"]
pub struct CachedPoolBuilder {
    pool: PgPool,
    tables: Vec<TableConfig>,
    stale: Vec<StaleConfig>,
    disabled: Vec<(TableName, String)>,
    models: Vec<u64>,
    default_ttl: Duration,
    wildcard: Ops,
    capacity: u64,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    redis: Option<RedisSettings>,
    lease: Duration,
    consistency: Consistency,
    /// The key prefix: of Redis keys and channels, and the scope of the in-process bus.
    prefix: String,
    feed: FeedMode,
    predicates: bool,
    /// The fraction of hits the shadow check reads again.
    verify: f64,
    /// Whether spans carry the SQL text.
    trace_text: bool,
    /// How often the counters are copied into the `metrics` facade.
    #[cfg(feature = "metrics")]
    metrics_every: Duration,
    #[cfg(feature = "test-hooks")]
    pub(crate) fill_hook: Option<crate::engine::FillHook>,
    #[cfg(feature = "test-hooks")]
    pub(crate) invalidate_hook: Option<crate::local::InvalidateHook>,
    /// The pool stands for a process of its own: it joins no in-process bus.
    #[cfg(feature = "test-hooks")]
    pub(crate) separate: bool,
}

impl fmt::Debug for CachedPoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedPoolBuilder")
            .field("tables", &self.tables)
            .field("disabled", &self.disabled)
            .field("default_ttl", &self.default_ttl)
            .field("wildcard", &self.wildcard)
            .field("memory_capacity", &self.capacity)
            .field("redis", &self.redis.as_ref().map(|r| (&r.prefix, r.timeout)))
            .field("lease", &self.lease)
            .field("consistency", &self.consistency)
            .field("feed", &self.feed)
            .field("predicate_tags", &self.predicates)
            .finish()
    }
}

impl CachedPool {
    /// Starts configuring a cache in front of `pool`.
    pub fn builder(pool: PgPool) -> CachedPoolBuilder {
        CachedPoolBuilder::new(pool)
    }
}

impl CachedPoolBuilder {
    fn new(pool: PgPool) -> CachedPoolBuilder {
        CachedPoolBuilder {
            pool,
            tables: Vec::new(),
            stale: Vec::new(),
            disabled: Vec::new(),
            models: Vec::new(),
            default_ttl: Duration::from_secs(3600),
            wildcard: Ops::ALL,
            capacity: 64 * 1024 * 1024,
            redis: None,
            lease: Duration::from_millis(500),
            consistency: Consistency::Lease,
            prefix: "sqlacache".to_owned(),
            feed: FeedMode::Off,
            predicates: true,
            verify: 0.0,
            trace_text: false,
            #[cfg(feature = "metrics")]
            metrics_every: Duration::from_secs(1),
            #[cfg(feature = "test-hooks")]
            fill_hook: None,
            #[cfg(feature = "test-hooks")]
            invalidate_hook: None,
            #[cfg(feature = "test-hooks")]
            separate: false,
        }
    }

    /// Registers the model `T`: its table takes the ops and TTL of its `#[cache(..)]`
    /// attribute, and reads into `T` may be cached. `build()` fails if the table does not exist
    /// or `T`'s `#[cache(pk)]` fields are not its primary key, in order. (A model used without
    /// this call is checked and registered at its first use; see [`Uncached::BadModel`](crate::Uncached::BadModel).)
    pub fn model<T: Cacheable>(mut self) -> Self {
        self.tables.push(TableConfig::registered(&T::MODEL, std::any::type_name::<T>()));
        self.models.push(T::fingerprint());
        self
    }

    /// Configures a table by SQL name (`orders`, `app.orders`), overriding the settings of a
    /// model of that table; the last call for a table wins. `build()` fails if no such table is
    /// on the search path.
    pub fn table(mut self, name: &str, ops: Ops, ttl: Duration) -> Self {
        self.tables.push(TableConfig::table(name, ops, ttl));
        self
    }

    /// Lets an entry of reads of this table (by SQL name) be served for up to `window` past its
    /// TTL while one read refreshes it in the background: the first read that finds it expired
    /// starts the refresh, and every read meanwhile gets the expired entry at once. An entry a
    /// write **invalidated** is never served, in any tier; only expiry is softened. A read of
    /// several tables takes the smallest window. Overrides a model's `#[cache(swr = ..)]`.
    /// Default: none (an expired entry is a miss).
    ///
    /// Applies to the in-process tier and to `get`, `query_as` and `query_scalar` (a
    /// `query_as!` read has no owned copy of its arguments to refresh with, so it misses).
    ///
    /// ```no_run
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), sqlacache_sqlx::Error> {
    /// use std::time::Duration;
    /// let cache = sqlacache_sqlx::CachedPool::builder(pool)
    ///     .stale_while_revalidate("products", Duration::from_secs(30))
    ///     .stale_if_error("products", Duration::from_secs(600))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn stale_while_revalidate(mut self, table: &str, window: Duration) -> Self {
        self.stale_window(table).revalidate = Some(window);
        self
    }

    /// Lets an entry of reads of this table be served for up to `window` past its TTL while
    /// PostgreSQL fails: when the read that would refresh it gets a connection error (I/O, TLS,
    /// pool timeout, a server shutting down or refusing connections, too many connections). Any
    /// other error (a permission revoked, a dropped column) is returned as it is. An
    /// invalidated entry is never served. Overrides a model's `#[cache(stale_if_error = ..)]`.
    /// Default: none.
    pub fn stale_if_error(mut self, table: &str, window: Duration) -> Self {
        self.stale_window(table).if_error = Some(window);
        self
    }

    fn stale_window(&mut self, table: &str) -> &mut StaleConfig {
        self.stale.push(StaleConfig {
            name: TableName::parse(table),
            written: table.to_owned(),
            revalidate: None,
            if_error: None,
        });
        self.stale.last_mut().expect("just pushed")
    }

    /// Never caches reads of this table, whatever else configures it (its writes still
    /// invalidate). `build()` fails if no such table is on the search path.
    pub fn disable_table(mut self, name: &str) -> Self {
        self.disabled.push((TableName::parse(name), name.to_owned()));
        self
    }

    /// The TTL of tables configured without one and of the `*` wildcard. Default: one hour.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = ttl;
        self
    }

    /// The operations cached for tables that are not configured. Default: [`Ops::ALL`];
    /// [`Ops::NONE`] caches configured tables only.
    pub fn wildcard(mut self, ops: Ops) -> Self {
        self.wildcard = ops;
        self
    }

    /// The most bytes the in-process store holds. Default: 64 MiB. With `redis` (feature `redis`),
    /// `0` keeps values in Redis only.
    pub fn memory_capacity(mut self, bytes: u64) -> Self {
        self.capacity = bytes;
        self
    }

    /// Keeps cached values in Redis too, shared by every process that uses the same Redis, key
    /// prefix and database, and keeps the in-process tiers of those processes fresh for each
    /// other (see the crate's README for the guarantees).
    ///
    /// `url` is `redis://[user:password@]host:port[/db]`, or `redis-cluster://host:port` for a
    /// Redis Cluster; with the `redis-tls` feature also `rediss://` and `rediss-cluster://`
    /// (trusting the system's root certificates, and those named by `SSL_CERT_FILE` or
    /// `SSL_CERT_DIR`). `build()` fails on an invalid URL; an unreachable Redis is not an error:
    /// the pool works on PostgreSQL alone and starts using Redis when it answers.
    ///
    /// ```no_run
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), sqlacache_sqlx::Error> {
    /// let cache = sqlacache_sqlx::CachedPool::builder(pool)
    ///     .redis("redis://127.0.0.1:6379/0")
    ///     .key_prefix("myapp")
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "redis")]
    pub fn redis(mut self, url: &str) -> Self {
        self.redis_settings().url = url.to_owned();
        self
    }

    /// The prefix of every Redis key and channel of this pool. Default: `sqlacache`.
    ///
    /// Pools of one process over one database with the same prefix share an in-process bus:
    /// each applies the others' writes to its in-process tier before the write returns, with
    /// or without Redis. Give a pool a prefix of its own to keep it apart.
    pub fn key_prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_owned();
        self
    }

    /// How long a Redis command may take before it counts as failed (and reads go to
    /// PostgreSQL). Default: 100 ms.
    #[cfg(feature = "redis")]
    pub fn redis_timeout(mut self, timeout: Duration) -> Self {
        self.redis_settings().timeout = timeout;
        self
    }

    /// How long after it last heard its own heartbeat a process may still trust what it has not
    /// heard: with Redis, how long it serves its in-process tier after the invalidation channel
    /// went silent; with the change feed, how long it serves cached reads after the feed went
    /// silent. It bounds how late a write made elsewhere can be seen when a channel fails
    /// without an error. Default: 500 ms.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// What a write guarantees to the in-process tiers of other processes (with Redis);
    /// default [`Consistency::Lease`]. With [`Consistency::Strict`], a write returns only once
    /// every other process that keeps an in-process tier has dropped what it invalidates (and
    /// acknowledged), or at most a lease later. Every process of a fleet acknowledges strict
    /// writes, whatever its own mode.
    ///
    /// ```no_run
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), sqlacache_sqlx::Error> {
    /// use sqlacache_sqlx::Consistency;
    /// let cache = sqlacache_sqlx::CachedPool::builder(pool)
    ///     .redis("redis://127.0.0.1:6379")
    ///     .change_feed()
    ///     .consistency(Consistency::Strict)
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn consistency(mut self, consistency: Consistency) -> Self {
        self.consistency = consistency;
        self
    }

    /// Whether a read whose conditions pin an indexed column (`WHERE customer_id = $1`) depends
    /// on those values of the column only, so that writes of other values leave it cached (on
    /// by default; see the README's "Precision"). Off, every multi-row read depends on its
    /// whole tables. Writes name the values they change either way, so pools configured
    /// differently stay fresh for each other.
    ///
    /// ```no_run
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), sqlacache_sqlx::Error> {
    /// let cache = sqlacache_sqlx::CachedPool::builder(pool).predicate_tags(false).build().await?;
    /// # Ok(()) }
    /// ```
    pub fn predicate_tags(mut self, on: bool) -> Self {
        self.predicates = on;
        self
    }

    /// Puts the SQL text of each statement in the `db.query.text` attribute of the pool's
    /// `tracing` spans (`sqlacache.fill` for a miss's read, `sqlacache.write` for a write).
    /// Default: off, since SQL text can hold values an application would not log. The spans,
    /// at debug level on target `sqlacache`, always carry `db.system.name` (`postgresql`) and
    /// `db.operation.name`, as OpenTelemetry names them; `sqlacache.invalidate` (the delivery
    /// of a write's invalidation to Redis and the other processes) carries `sqlacache.tags`.
    pub fn trace_query_text(mut self, on: bool) -> Self {
        self.trace_text = on;
        self
    }

    /// Checks a sampled `fraction` of hits (0 to 1) against PostgreSQL: each sampled hit is read
    /// again from PostgreSQL on a task of its own, off the caller's path, and compared with what
    /// was served. A difference that lasts (after a second, the entry is still served and a
    /// second read still differs, so a write through the pool that was on its way is not taken
    /// for one) is counted in [`StatsSnapshot::verify_mismatches`](crate::StatsSnapshot),
    /// logged at `warn` level with the SQL and the key, and what the entry depends on is
    /// invalidated in every tier and process. Equal ones are counted in `verified`. Default: 0
    /// (off). Applies to hits of `get`, `query_as` and `query_scalar` in either tier.
    ///
    /// ```no_run
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), sqlacache_sqlx::Error> {
    /// let cache = sqlacache_sqlx::CachedPool::builder(pool).verify_sample(0.01).build().await?;
    /// // later: cache.stats().verify_mismatches should stay 0
    /// # Ok(()) }
    /// ```
    pub fn verify_sample(mut self, fraction: f64) -> Self {
        self.verify = fraction;
        self
    }

    /// How often the pool's counters are copied into the [`metrics`](https://docs.rs/metrics)
    /// facade (feature `metrics`; see [`CachedPool::record_metrics`] for the metrics). `ZERO`
    /// copies them only when `record_metrics` is called. Default: every second.
    #[cfg(feature = "metrics")]
    pub fn metrics_every(mut self, every: Duration) -> Self {
        self.metrics_every = every;
        self
    }

    /// Listens to a change feed in PostgreSQL, so that writes made outside this pool (other
    /// services, `psql`, migrations, `cache.inner()`) invalidate what they change, and installs
    /// it on the configured tables (those of `.table(..)` and `.model::<T>()`, with their
    /// partitions) if it is not there. Idempotent; replicas starting together take turns.
    ///
    /// With the feed, reads of tables it does not cover are not cached
    /// ([`Uncached::NotInFeed`](crate::Uncached::NotInFeed)), and cached reads are served only while the pool has heard
    /// its own heartbeat through the feed within the [lease](Self::lease). Installing needs
    /// CREATE on the database (for the schema `sqlacache`) and ownership of (or TRIGGER on)
    /// each table; `build()` fails with [`Error::Feed`] without them. Reporting schema
    /// changes made elsewhere needs a superuser (an event trigger); without one, `build()`
    /// logs a warning and [`CachedPool::refresh_catalog`] is the way. See the README.
    ///
    /// ```no_run
    /// # async fn demo(pool: sqlx::PgPool) -> Result<(), sqlacache_sqlx::Error> {
    /// use sqlacache_sqlx::{CachedPool, Ops};
    /// let cache = CachedPool::builder(pool)
    ///     .table("orders", Ops::ALL, std::time::Duration::from_secs(60))
    ///     .change_feed()
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn change_feed(mut self) -> Self {
        self.feed = FeedMode::Install;
        self
    }

    /// Listens to a change feed installed beforehand (from a migration, with the SQL of
    /// [`change_feed_sql`](Self::change_feed_sql)), without installing anything: for roles that
    /// may not create triggers. `build()` fails with [`Error::Feed`], naming the tables, if a
    /// configured table does not have the feed.
    pub fn change_feed_installed(mut self) -> Self {
        self.feed = FeedMode::Installed;
        self
    }

    /// The SQL that installs (and removes) the change feed on the tables configured so far,
    /// for a migration tool; see [`FeedSql`]. Fails if a configured table does not exist.
    pub async fn change_feed_sql(&self) -> Result<FeedSql, Error> {
        let config = Config::new(
            self.tables.clone(),
            self.stale.clone(),
            self.disabled.clone(),
            self.default_ttl,
            self.wildcard,
        );
        let catalog = Catalog::load(&self.pool, 1).await?;
        config.check(&catalog, &self.pool).await?;
        Ok(feed_sql(&fed_tables(&catalog, &configured(&config, &catalog))))
    }

    /// Uses `tier` as the shared tier instead of a Redis connection: any store that keeps the
    /// freshness contract of [`sqlacache_core::tier`], with the bus of the processes sharing
    /// it. The key prefix is then the tier's business; the timeout and the lease apply as with
    /// Redis. It also lets an application test how its replicas behave when the shared tier
    /// fails, without a server.
    ///
    /// ```no_run
    /// # async fn demo(pool: sqlx::PgPool, url: &str) -> Result<(), Box<dyn std::error::Error>> {
    /// use sqlacache_core::redis::RedisStore;
    /// use std::{sync::Arc, time::Duration};
    /// let tier = RedisStore::connect(url, "myapp", "db1", Duration::from_millis(100))?;
    /// let cache = sqlacache_sqlx::CachedPool::builder(pool).shared_tier(Arc::new(tier)).build().await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "redis")]
    pub fn shared_tier(mut self, tier: Arc<dyn sqlacache_core::tier::SharedTier>) -> Self {
        self.redis_settings().tier = Some(tier);
        self
    }

    #[cfg(feature = "redis")]
    fn redis_settings(&mut self) -> &mut RedisSettings {
        let lease = self.lease;
        self.redis.get_or_insert_with(|| RedisSettings {
            tier: None,
            url: String::new(),
            prefix: String::new(),
            timeout: Duration::from_millis(100),
            lease,
            strict: false,
            fed: false,
        })
    }

    /// Reads the schema (tables, primary keys, foreign-key actions), checks the configuration
    /// against it, and creates the pool.
    ///
    /// Fails with [`Error::Config`], naming the mistake, when a table given to
    /// [`table`](Self::table), [`disable_table`](Self::disable_table) or a model is not in the
    /// database (or not on the search path of the pool's connections), when a model's key is not
    /// its table's primary key, when two models of one table declare different settings, and
    /// when a TTL is zero. Create the tables (run migrations) first.
    ///
    /// ```no_run
    /// # async fn demo(pool: sqlx::PgPool) {
    /// let error = sqlacache_sqlx::CachedPool::builder(pool).disable_table("audti_log").build().await.unwrap_err();
    /// assert!(error.to_string().contains("audti_log"));
    /// # }
    /// ```
    pub async fn build(mut self) -> Result<CachedPool, Error> {
        let local = local_tier(self.capacity, &mut self);
        let config = Config::new(self.tables, self.stale, self.disabled, self.default_ttl, self.wildcard);
        let mut catalog = Catalog::load(&self.pool, 1).await?;
        config.check(&catalog, &self.pool).await?;
        let feed = match self.feed {
            FeedMode::Off => None,
            mode => {
                let tables = fed_tables(&catalog, &configured(&config, &catalog));
                if mode == FeedMode::Install {
                    install(&self.pool, &tables).await?;
                } else {
                    let missing = missing(&self.pool, &tables).await?;
                    if !missing.is_empty() {
                        return Err(Error::Feed(Cause::new(format!(
                            "the change feed is not installed on {}: run the `install` SQL of \
                             `change_feed_sql()` (from a migration), or use `change_feed()`",
                            missing.join(", ")
                        ))));
                    }
                    let older = outdated(&self.pool, &tables).await?;
                    if !older.is_empty() {
                        // Sound (their messages invalidate columns as a whole), less precise.
                        tracing::warn!(target: "sqlacache", tables = %older.join(", "), "the change feed's triggers \
                            are older than the schema: run the `install` SQL of `change_feed_sql()` again");
                    }
                }
                // Read again, with the triggers.
                catalog = Catalog::load(&self.pool, 1).await?;
                Some(Feed::new(self.lease, mode == FeedMode::Install))
            }
        };
        if let Some(redis) = self.redis.as_mut() {
            redis.prefix.clone_from(&self.prefix);
            redis.lease = self.lease;
            redis.strict = self.consistency == Consistency::Strict;
            redis.fed = feed.is_some();
        }
        let identity = crate::catalog::database_identity(&self.pool).await?;
        let remote = connect_redis(self.redis.as_ref(), &identity, self.capacity).await?;
        let local = Arc::new(local);
        // A pool that keeps nothing in process has nothing for the others to invalidate.
        #[cfg_attr(not(feature = "test-hooks"), allow(unused_mut))]
        let mut joins = self.capacity > 0;
        #[cfg(feature = "test-hooks")]
        {
            joins &= !self.separate;
        }
        let scope = joins.then(|| format!("{identity}/{}", self.prefix));
        let neighbours = Arc::new(Neighbours::join(scope, &local));
        let tiers = Tiers { local, remote, neighbours };
        let schema = Schema::new(self.pool.clone(), config, catalog);
        #[cfg_attr(not(feature = "test-hooks"), allow(unused_mut))]
        let mut engine = Engine::new(self.pool, schema, Registry::new(&self.models), tiers, feed, self.predicates);
        engine.shadow = crate::sampler::Sampler::new(self.verify);
        engine.name = self.prefix.clone();
        engine.trace_text = self.trace_text;
        #[cfg(feature = "test-hooks")]
        {
            engine.fill_hook = self.fill_hook.take();
        }
        engine.start().map_err(|e| Error::Redis(Cause::from_source("the invalidation channel", e)))?;
        if let Some(feed) = &engine.feed {
            // Cached reads wait for the feed's first heartbeat; a lease at most.
            feed.until_heard(None, self.lease).await;
        }
        let engine = Arc::new(engine);
        #[cfg(feature = "metrics")]
        if !self.metrics_every.is_zero() {
            let (weak, every) = (Arc::downgrade(&engine), self.metrics_every);
            engine.exporter.spawn(async move {
                let mut ticks = tokio::time::interval(every);
                loop {
                    ticks.tick().await;
                    let Some(engine) = weak.upgrade() else { return };
                    crate::telemetry::record(&engine);
                }
            });
        }
        Ok(CachedPool { engine })
    }
}

/// Whether and how a pool uses the change feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FeedMode {
    Off,
    Install,
    Installed,
}

/// The in-process tier, with the invalidation hook of tests.
#[cfg_attr(not(feature = "test-hooks"), allow(unused_variables))]
fn local_tier(capacity: u64, builder: &mut CachedPoolBuilder) -> Local {
    #[cfg_attr(not(feature = "test-hooks"), allow(unused_mut))]
    let mut local = Local::new(capacity);
    #[cfg(feature = "test-hooks")]
    {
        local.invalidate_hook = builder.invalidate_hook.take();
    }
    local
}

/// Connects to Redis, if configured, under the identity of the database (so that two
/// databases sharing one Redis never share entries), waiting for it at most its timeout.
#[cfg_attr(not(feature = "redis"), allow(clippy::unused_async))]
async fn connect_redis(
    settings: Option<&RedisSettings>,
    identity: &str,
    capacity: u64,
) -> Result<Option<Arc<Remote>>, Error> {
    #[cfg(feature = "redis")]
    if let Some(settings) = settings {
        let remote = match &settings.tier {
            Some(tier) if settings.url.is_empty() => Remote::new(tier.clone(), settings, capacity > 0),
            Some(_) => {
                return Err(Error::Redis(Cause::new("both a Redis URL and a shared tier were given".to_owned())))
            }
            None if settings.url.is_empty() => {
                return Err(Error::Redis(Cause::new("a Redis timeout was set without a Redis URL".to_owned())));
            }
            None => Remote::connect(settings, identity, capacity > 0)
                .map_err(|e| Error::Redis(Cause::from_source("the Redis URL cannot be used", e)))?,
        };
        remote.wait_connected(settings.timeout).await;
        return Ok(Some(Arc::new(remote)));
    }
    #[cfg(not(feature = "redis"))]
    let _ = (settings, identity, capacity);
    Ok(None)
}
