//! `CachedPool`, its builder, and the state every handle shares.

use crate::catalog::{Catalog, TableInfo};
use crate::config::{Config, TableConfig};
use crate::feed::{Feed, FeedSql};
use crate::flight::{Flights, Role};
use crate::plan::{self, Context, Plan};
use crate::remote::{RedisSettings, Remote};
use crate::row::Stored;
use crate::{Cacheable, CachedRow, Error, Model};
use sqlacache_core::analyze::{analyze, TableName};
use sqlacache_core::key::{row_id_of, Key, KeyBuilder};
use sqlacache_core::{MemoryStore, Ops, Stats, StatsSnapshot, Tag, Uncached};
use sqlx::postgres::PgArguments;
use sqlx::PgPool;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

/// Distinguishes the kinds of cached call in a key, since they store different shapes.
pub(crate) mod kind {
    pub const GET: u8 = 1;
    pub const ALL: u8 = 2;
    pub const OPTIONAL: u8 = 3;
}

#[cfg(feature = "test-hooks")]
type FillHook = Arc<dyn Fn(FillPoint) -> futures_core::future::BoxFuture<'static, ()> + Send + Sync>;
#[cfg(feature = "test-hooks")]
type InvalidateHook = Arc<dyn Fn() + Send + Sync>;

/// Test support: the points of a cache fill where a fill hook runs.
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillPoint {
    /// The stamp was taken; the database has not been read yet.
    Stamped,
    /// The database was read; the result is not stored yet.
    Read,
}

/// Per-thread copies of plans, by pool and SQL. Small and bounded: a thread that sees too many
/// statements or pools starts over (the shared memo still holds every plan).
mod local_plans {
    use super::Plan;
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::sync::Arc;

    const MAX_POOLS: usize = 8;
    const MAX_PLANS: usize = 512;

    /// quick_cache's hasher: std's SipHash cost more than the rest of a plan lookup.
    type Map<K, V> = HashMap<K, V, quick_cache::DefaultHashBuilder>;
    /// Plans by SQL, of one pool.
    type PoolPlans = Map<Box<str>, Arc<Plan>>;

    thread_local! {
        static PLANS: RefCell<Map<u64, PoolPlans>> = RefCell::default();
    }

    pub fn get(pool: u64, sql: &str) -> Option<Arc<Plan>> {
        PLANS.with(|plans| plans.borrow().get(&pool)?.get(sql).cloned())
    }

    pub fn put(pool: u64, sql: &str, plan: Arc<Plan>) {
        PLANS.with(|plans| {
            let mut plans = plans.borrow_mut();
            if plans.len() >= MAX_POOLS && !plans.contains_key(&pool) {
                plans.clear();
            }
            let mine = plans.entry(pool).or_default();
            if mine.len() >= MAX_PLANS {
                mine.clear();
            }
            mine.insert(sql.into(), plan);
        });
    }
}

/// Numbers pools for the per-thread plan copies.
static NEXT_POOL_ID: AtomicU64 = AtomicU64::new(1);

/// State shared by every clone of a [`CachedPool`] and its transactions.
pub(crate) struct Shared {
    /// Tells this pool's per-thread plan copies from other pools'.
    id: u64,
    pub pool: PgPool,
    pub store: MemoryStore,
    pub stats: Stats,
    /// When each cause of a dropped in-process tier was last logged.
    drops_logged: std::sync::Mutex<Vec<(&'static str, Option<std::time::Instant>, u64)>>,
    /// Behind a lock: a model first used without `.model::<T>()` adds its settings.
    config: RwLock<Config>,
    catalog: RwLock<Arc<Catalog>>,
    generation: AtomicU64,
    /// Counts schema changes seen through the pool (and `refresh_catalog` calls).
    schema_epoch: AtomicU64,
    /// The `schema_epoch` that the current catalog was read after: the catalog is out of date
    /// while the two differ. Only a load that completes advances it, so an abandoned reload
    /// leaves the change pending.
    loaded_epoch: AtomicU64,
    /// Statements that change the schema and have not finished (or, in a transaction, not
    /// committed): a write that overlaps one may cascade where its plan does not know.
    ddl_in_flight: AtomicUsize,
    /// Set once a statement through the pool changed its sessions (see [`Uncached::Session`]).
    sessions_differ: AtomicBool,
    /// Abandoned writes and commits still running on tasks of their own.
    background: Arc<AtomicUsize>,
    reload: tokio::sync::Mutex<()>,
    plans: quick_cache::sync::Cache<String, Arc<Plan>>,
    /// Models whose settings apply, and models whose settings did not check out.
    models: Models,
    /// Serializes the registration of models at first use.
    registering: tokio::sync::Mutex<()>,
    /// Fills in progress, so concurrent misses of one read run one query.
    flights: Flights,
    /// The shared tier and the bus, when the pool has Redis.
    pub remote: Option<Arc<Remote>>,
    /// The change feed, when the pool listens to one.
    pub feed: Option<Feed>,
    /// This state, for work that outlives a call (a Redis store finishing on its own task).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    this: Weak<Shared>,
    #[cfg(feature = "test-hooks")]
    fill_hook: Option<FillHook>,
    #[cfg(feature = "test-hooks")]
    invalidate_hook: Option<InvalidateHook>,
}

impl Shared {
    /// The catalog as it is now.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Applies a write made outside the pool (heard on the change feed): here, and in the
    /// shared tier. Every process hears the feed itself, so nothing is published.
    pub async fn apply_outside(&self, tags: &[Tag]) {
        self.invalidate(tags);
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.remote {
            remote.invalidate_shared(tags, &self.stats).await;
        }
    }

    /// Drops both tiers: writes made elsewhere may have been missed.
    /// `first`: the feed is heard for the first time (nothing was served yet: not worth a log
    /// line).
    pub async fn drop_everywhere(&self, first: bool) {
        self.drop_before_trust(first, "the change feed is heard again after it was not trusted");
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.remote {
            remote.invalidate_shared(&[Tag::All], &self.stats).await;
        }
    }

    /// The schemas of the configured tables and their families: a schema change elsewhere
    /// matters to this pool if it touches one of them (or the search path).
    pub fn cached_schemas(&self) -> Vec<String> {
        let catalog = self.catalog();
        let oids = configured(&self.config.read().unwrap_or_else(|e| e.into_inner()), &catalog);
        let mut schemas: Vec<String> =
            crate::feed::fed_tables(&catalog, &oids).iter().map(|t| t.schema.clone()).collect();
        schemas.sort();
        schemas.dedup();
        schemas
    }

    /// The oids of the tables the feed must cover for this pool (the configured tables and
    /// their families): each heartbeat checks that every one still has the feed's triggers.
    pub fn fed_oids(&self) -> Vec<i64> {
        let catalog = self.catalog();
        let oids = configured(&self.config.read().unwrap_or_else(|e| e.into_inner()), &catalog);
        crate::feed::fed_tables(&catalog, &oids).iter().map(|t| i64::from(t.oid)).collect()
    }

    /// Whether a schema change made elsewhere changed anything the configured tables depend
    /// on: what their names resolve to, their schemas and names, their families (a partition
    /// created in another schema), their keys and foreign keys, and whether the feed covers
    /// them. Judged by reading the catalog again (through `pool`), whatever schema the change named. A catalog
    /// that cannot be read counts as a change.
    pub async fn cached_tables_changed(&self, pool: &PgPool) -> bool {
        let Ok(fresh) = Catalog::load(pool, 0).await else { return true };
        let old = self.catalog();
        let config = self.config.read().unwrap_or_else(|e| e.into_inner());
        let signature = |catalog: &Catalog| {
            let resolved: Vec<Option<u32>> =
                config.tables.iter().map(|t| catalog.resolve(&t.name).map(|i| i.oid)).collect();
            let mut tables: Vec<String> = crate::feed::fed_tables(catalog, &configured(&config, catalog))
                .iter()
                .map(|t| {
                    let sorted = |v: &[u32]| {
                        let mut v = v.to_vec();
                        v.sort_unstable();
                        v
                    };
                    format!(
                        "{} {:?}.{:?} {} {:?} {:?} {:?} {:?} {:?}",
                        t.oid,
                        t.schema,
                        t.name,
                        t.fed,
                        t.key,
                        sorted(&t.family),
                        sorted(&t.on_delete),
                        sorted(&t.on_update),
                        sorted(&t.referenced_by)
                    )
                })
                .collect();
            tables.sort();
            (resolved, tables)
        };
        signature(&old) != signature(&fresh)
    }

    /// Installs the change feed, through `pool`, on the configured tables that lack it
    /// (created anew since).
    pub async fn reinstall_feed(&self, pool: &PgPool) {
        let result = async {
            let catalog = Catalog::load(pool, 0).await?;
            let oids = configured(&self.config.read().unwrap_or_else(|e| e.into_inner()), &catalog);
            let tables = crate::feed::fed_tables(&catalog, &oids);
            let missing = crate::feed::missing(pool, &tables).await?;
            let lacking: Vec<&TableInfo> = tables.into_iter().filter(|t| missing.contains(&t.qualified())).collect();
            if !lacking.is_empty() {
                crate::feed::install(pool, &lacking).await?;
                self.schema_epoch.fetch_add(1, Ordering::AcqRel);
            }
            Ok::<(), Error>(())
        };
        if let Err(error) = result.await {
            tracing::warn!(target: "sqlacache", %error, "the change feed could not be installed on a table it must cover; its reads are not cached");
        }
    }

    /// The schema was changed elsewhere: plans are made again from a new catalog, and nothing
    /// cached before is served.
    pub async fn schema_changed_elsewhere(&self) {
        self.schema_epoch.fetch_add(1, Ordering::AcqRel);
        self.apply_outside(&[Tag::All]).await;
    }

    fn schema_current(&self) -> bool {
        self.loaded_epoch.load(Ordering::Acquire) == self.schema_epoch.load(Ordering::Acquire)
    }

    /// The number of schema changes seen so far; a write compares it before and after it runs.
    pub fn schema_epoch(&self) -> u64 {
        self.schema_epoch.load(Ordering::Acquire)
    }

    /// How many schema changes are running now (in transactions: not yet ended).
    pub fn ddl_running(&self) -> usize {
        self.ddl_in_flight.load(Ordering::Acquire)
    }

    /// A schema change starts; pair with [`Shared::ddl_done`].
    pub fn ddl_started(&self) {
        self.ddl_in_flight.fetch_add(1, Ordering::AcqRel);
        self.schema_epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// A schema change finished (or committed, or rolled back): plan again with a fresh
    /// catalog. (Temporary relations need nothing here: a statement that makes one runs on a
    /// connection that is closed afterwards, so none ever shadows a name on the pool's others.)
    pub fn ddl_done(&self) {
        self.schema_epoch.fetch_add(1, Ordering::AcqRel);
        self.ddl_in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Counts an abandoned write as running until the returned guard is dropped.
    pub fn background_write(&self) -> BackgroundWrite {
        self.background.fetch_add(1, Ordering::AcqRel);
        BackgroundWrite(self.background.clone())
    }

    /// Whether the pool's sessions may differ from one another.
    pub fn sessions_differ(&self) -> bool {
        self.sessions_differ.load(Ordering::Relaxed)
    }

    /// A statement changed the session of the connection that ran it: from now on the pool's
    /// connections may answer differently, so cached reads are neither served nor filled.
    pub fn session_changed(&self, sql: &str) {
        if !self.sessions_differ.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                target: "sqlacache",
                statement = sql,
                "a statement changed the session of a pool connection; this pool no longer caches reads \
                 (configure sessions with PgConnectOptions or after_connect, or use SET LOCAL in a transaction)"
            );
        }
    }

    /// Whether reads into `T` may be cached as far as its model goes. A `Cacheable` type's
    /// settings apply from its first use: one that was not given to `.model::<T>()` is checked
    /// and registered then, as `build()` would have (see [`Shared::register`]).
    pub async fn admit<T: CachedRow>(&self) -> Result<(), Uncached> {
        self.admit_model(ModelOf::of::<T>()).await
    }

    /// [`Shared::admit`] for a model taken apart by [`ModelOf::of`].
    pub async fn admit_model(&self, model: Option<ModelOf>) -> Result<(), Uncached> {
        let Some(ModelOf { fingerprint, model, type_name }) = model else { return Ok(()) };
        match self.models.verdict(fingerprint) {
            Some(true) => Ok(()),
            Some(false) => Err(Uncached::BadModel),
            None => Box::pin(self.register(fingerprint, model, type_name)).await,
        }
    }

    /// Applies the settings of a model first used without `.model::<T>()`: checks them as
    /// `build()` does, adds them, drops what is cached of the table (it may have been cached
    /// under other settings), and plans again. A model that does not check out is never cached.
    async fn register(&self, fingerprint: u64, model: Model, type_name: &'static str) -> Result<(), Uncached> {
        let _one_at_a_time = self.registering.lock().await;
        if let Some(verdict) = self.models.verdict(fingerprint) {
            return if verdict { Ok(()) } else { Err(Uncached::BadModel) };
        }
        let table = TableConfig::model(&model, format!("the model `{type_name}` (table {:?})", model.table));
        let mut catalog = self.catalog();
        if catalog.resolve(&table.name).is_none() {
            // Created after the catalog was read?
            if self.reload(catalog.generation).await.is_ok() {
                catalog = self.catalog();
            }
        }
        let others = self.config.read().unwrap_or_else(|e| e.into_inner()).tables.clone();
        // The check reads the database only for a table without a primary key.
        let check = Config::check_table(&others, &table, &catalog, &self.pool).await;
        let oid = match check {
            Ok(oid) => oid,
            // The database failed, not the model: decide at a later use.
            Err(Error::Database(_)) => return Err(Uncached::BadModel),
            Err(error) => {
                tracing::warn!(target: "sqlacache", r#type = type_name, "reads into this model are not cached: {error}");
                self.models.refuse(fingerprint);
                return Err(Uncached::BadModel);
            }
        };
        self.config.write().unwrap_or_else(|e| e.into_inner()).add_model(table);
        if self.feed.as_ref().is_some_and(|feed| feed.installs()) {
            // One rule whatever other pools did: a pool that installs the feed covers a model's
            // table at its first use, as `.model::<T>()` would have at `build()`. (With
            // `change_feed_installed`, a table the migration did not cover stays `NotInFeed`.)
            self.reinstall_feed(&self.pool).await;
        }
        self.invalidate_everywhere(&catalog.family_tags(oid)).await;
        // Plans carry each table's ops and TTL: make them again (marked out of date first, so a
        // failed reload is retried by the next plan).
        self.schema_epoch.fetch_add(1, Ordering::AcqRel);
        let reloaded = self.reload(self.generation.load(Ordering::Acquire)).await;
        self.models.admit(fingerprint);
        tracing::debug!(target: "sqlacache", r#type = type_name, "model registered at first use");
        reloaded.map_err(|_| Uncached::BadModel)
    }

    /// Why a read with this plan is not served from the cache, if it is not.
    pub fn refusal<'p>(&self, plan: &'p Plan) -> Result<&'p crate::plan::ReadPlan, Uncached> {
        if self.sessions_differ() {
            return Err(Uncached::Session);
        }
        plan.read.as_ref().map_err(|r| *r)
    }

    /// The plan for a SQL string: memoized, so a repeated statement is not parsed again.
    ///
    /// Each thread keeps its own copies of the plans it uses in front of the shared memo, so
    /// threads reading through one plan (every `get` of a model) share no reference count.
    ///
    /// With `may_reload` false (inside a transaction, whose connection may be the pool's only
    /// one) the catalog is never read again: the plan is made from the catalog at hand, and
    /// names it does not know make writes invalidate everything.
    pub async fn plan(&self, sql: &str, may_reload: bool) -> Result<Arc<Plan>, sqlx::Error> {
        if self.schema_current() {
            let generation = self.generation.load(Ordering::Acquire);
            if let Some(plan) = local_plans::get(self.id, sql).filter(|p| p.generation == generation) {
                return Ok(plan);
            }
            if let Some(plan) = self.plans.get(sql).filter(|p| p.generation == generation) {
                local_plans::put(self.id, sql, Arc::new(Plan::clone(&plan)));
                return Ok(plan);
            }
        }
        // Boxed so the planner's (large) future is not part of every read's future.
        Box::pin(self.plan_slow(sql, may_reload)).await
    }

    async fn plan_slow(&self, sql: &str, may_reload: bool) -> Result<Arc<Plan>, sqlx::Error> {
        if may_reload && !self.schema_current() {
            self.reload(self.generation.load(Ordering::Acquire)).await?;
        }
        let analysis = analyze(sql);
        self.stats.statement_analyzed();
        let mut reloaded = false;
        loop {
            let catalog = self.catalog();
            let (plan, fresh_names) = {
                let config = self.config.read().unwrap_or_else(|e| e.into_inner());
                let policy = |info: &TableInfo| config.policy(&catalog, info);
                let cx = Context { catalog: &catalog, policy: &policy, feed: self.feed.is_some() };
                let (plan, unresolved) = plan::plan(sql, &analysis, &cx);
                let missing = catalog.missing.lock().unwrap_or_else(|e| e.into_inner());
                let fresh: Vec<TableName> = unresolved.0.into_iter().filter(|n| !missing.contains(n)).collect();
                (plan, fresh)
            };
            if !fresh_names.is_empty() && !reloaded && may_reload {
                // A table created after the catalog was read: read it again, once.
                self.reload(catalog.generation).await?;
                reloaded = true;
                continue;
            }
            // Once the pool's connections may differ (one may be inside a hand-written
            // transaction), no read is cached, and none is probed on them.
            let unprovable = !may_reload || self.sessions_differ();
            if unprovable && (!fresh_names.is_empty() || !self.schema_current() || plan.read.is_ok()) {
                // Made without the latest schema, or a read it cannot prove here (the
                // transaction's connection may be the pool's only one): used once, never
                // memoized. Reads in a transaction are not cached anyway.
                let mut plan = plan;
                if plan.read.is_ok() {
                    plan.read = Err(Uncached::Unproven);
                }
                return Ok(Arc::new(plan));
            }
            let mut plan = plan;
            if let Ok(read) = &plan.read {
                // Asked of PostgreSQL once, here; never on a hit.
                let tables: Vec<u32> =
                    read.deps.iter().filter_map(|t| if let Tag::Table(oid) = t { Some(*oid) } else { None }).collect();
                if let Err(reason) = crate::proof::prove(&self.pool, sql, &tables).await {
                    plan.read = Err(reason);
                }
            }
            self.note_missing(&catalog, fresh_names);
            let plan = Arc::new(plan);
            self.plans.insert(sql.to_owned(), plan.clone());
            return Ok(plan);
        }
    }

    /// Reads the catalog again unless someone already did since `seen` was current.
    async fn reload(&self, seen: u64) -> Result<(), sqlx::Error> {
        let _guard = self.reload.lock().await;
        if self.generation.load(Ordering::Acquire) != seen && self.schema_current() {
            return Ok(());
        }
        // Changes after this point are not guaranteed to be in the catalog read below.
        let epoch = self.schema_epoch.load(Ordering::Acquire);
        let old = self.catalog();
        let catalog = Catalog::load(&self.pool, old.generation + 1).await?;
        {
            let old_missing = old.missing.lock().unwrap_or_else(|e| e.into_inner());
            let still = old_missing.iter().filter(|n| catalog.resolve(n).is_none()).cloned();
            catalog.missing.lock().unwrap_or_else(|e| e.into_inner()).extend(still);
        }
        let generation = catalog.generation;
        *self.catalog.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(catalog);
        self.generation.store(generation, Ordering::Release);
        self.loaded_epoch.fetch_max(epoch, Ordering::AcqRel);
        Ok(())
    }

    /// Remembers names that resolve to nothing, so they do not trigger a reload each time.
    /// Bounded: past the cap the set starts over (costing reloads, never freshness).
    fn note_missing(&self, catalog: &Catalog, names: Vec<TableName>) {
        if names.is_empty() {
            return;
        }
        let mut missing = catalog.missing.lock().unwrap_or_else(|e| e.into_inner());
        if missing.len() + names.len() > MAX_NAMES {
            missing.clear();
            self.stats.widen();
        }
        missing.extend(names);
    }

    /// Applies an invalidation now.
    pub fn invalidate(&self, tags: &[Tag]) {
        if tags.is_empty() {
            return;
        }
        #[cfg(feature = "test-hooks")]
        if let Some(hook) = &self.invalidate_hook {
            hook();
        }
        self.store.invalidate(tags);
        self.stats.invalidation();
        if tags.contains(&Tag::All) {
            self.stats.full_invalidation();
        }
        tracing::trace!(tags = tags.len(), "invalidated");
    }

    /// Tells the shared tier and the other processes of an invalidation already applied here;
    /// `None` when there is nothing to tell. The write that caused it returns once this is done.
    pub fn publish(&self, tags: Vec<Tag>) -> Option<futures_core::future::BoxFuture<'static, ()>> {
        #[cfg(feature = "redis")]
        if let (Some(remote), false, Some(shared)) = (&self.remote, tags.is_empty(), self.this.upgrade()) {
            // Dropped unfinished (no runtime left to finish it), it counts as not delivered.
            let pending = remote.pending();
            return Some(Box::pin(async move {
                pending.publish(&tags, &shared.stats).await;
                // Between the invalidation here and the one in Redis, a read of this process
                // may have taken the old value from Redis and kept it here, stamped after the
                // first; its own bus message does not come back to it. Invalidating here again,
                // once Redis is done, makes any such copy stale: its stamp was taken before its
                // Redis read, which Redis answered before it applied the invalidation.
                shared.store.invalidate(&tags);
            }));
        }
        let _ = tags;
        None
    }

    /// Applies an invalidation here, then in the shared tier and the other processes.
    pub async fn invalidate_everywhere(&self, tags: &[Tag]) {
        self.invalidate(tags);
        if let Some(publish) = self.publish(tags.to_vec()) {
            publish.await;
        }
    }

    /// Drops the in-process tier before a channel is trusted (again): as [`Shared::drop_local`],
    /// but quietly the `first` time, when nothing was served yet.
    pub fn drop_before_trust(&self, first: bool, why: &'static str) {
        if first {
            self.store.invalidate(&[Tag::All]);
        } else {
            self.drop_local(why);
        }
    }

    /// Drops the in-process tier: invalidations may have been missed.
    /// `why` names the cause; each cause is logged at most once every ten seconds (with how
    /// many drops it caused meanwhile), since an outage drops the tier at every heartbeat.
    pub fn drop_local(&self, why: &'static str) {
        self.store.invalidate(&[Tag::All]);
        self.stats.tier_drop();
        let now = std::time::Instant::now();
        let mut logged = self.drops_logged.lock().unwrap_or_else(|e| e.into_inner());
        let entry = match logged.iter_mut().find(|(cause, ..)| *cause == why) {
            Some(entry) => entry,
            None => {
                logged.push((why, None, 0));
                logged.last_mut().expect("just pushed")
            }
        };
        entry.2 += 1;
        if entry.1.is_none_or(|last| now.duration_since(last) >= DROP_LOG_EVERY) {
            let drops = std::mem::take(&mut entry.2);
            entry.1 = Some(now);
            tracing::info!(target: "sqlacache", why, drops, "in-process tier dropped: invalidations from other processes may have been missed");
        }
    }

    /// Answers a read from the cache or fills it: the freshness protocol in one place.
    ///
    /// A value is stored only if its stored form reads back as itself (the same bytes once
    /// decoded and encoded again); otherwise the read counts as [`Uncached::Unstorable`].
    ///
    /// `fill` names the tags the value depends on and makes the future that reads the database
    /// (computed there, so a hit never pays for them). It is called only on a miss of the
    /// in-process tier, after the stamp is read, so a write that commits while it reads the
    /// database makes the store refuse the result. Its future is boxed: database futures are
    /// large, and a hit should not carry one.
    ///
    /// With Redis, a miss here looks there next (one round trip that also reads the epochs a
    /// fill needs); a value found there is kept here too, stamped before the lookup. A filled
    /// value is stored in Redis off the caller's path.
    ///
    /// Concurrent misses of one key run one fill (see [`crate::flight`]): the others wait for it
    /// and then look in the stores, where they find its value only if it was accepted.
    pub async fn cached_read<R, D, F, Fut>(&self, key: Key, ttl: Duration, fill: F) -> Result<R, sqlx::Error>
    where
        R: Stored,
        D: AsRef<[Tag]>,
        F: FnOnce() -> (D, Fut),
        Fut: Future<Output = Result<R, sqlx::Error>>,
    {
        if self.feed.as_ref().is_some_and(|feed| !feed.trusted()) {
            // Writes made elsewhere may not have been heard: neither tier can be trusted.
            self.stats.degrade();
            return Box::pin(fill().1).await;
        }
        let local = self.remote.as_ref().is_none_or(|r| r.local_trusted());
        let mut waited = false;
        let lead = loop {
            if let Some(entry) = self.store.get(key).filter(|_| local) {
                match R::decode(entry.bytes()) {
                    Some(value) => {
                        self.stats.hit();
                        if waited {
                            self.stats.coalesce();
                        }
                        return Ok(value);
                    }
                    None => {
                        tracing::warn!("a cached value did not decode; treating it as a miss");
                        self.stats.corrupt_entry();
                        self.store.remove(key);
                    }
                }
            }
            if waited {
                // The fill waited for was not stored, or no longer holds: read for ourselves,
                // without waiting again, so no read waits for more than one other.
                break None;
            }
            match self.flights.join(key) {
                Role::Leader(lead) => break Some(lead),
                Role::Waiter(wait) => {
                    wait.finished().await;
                    waited = true;
                }
            }
        };
        let stamp = self.store.stamp();
        #[cfg(feature = "test-hooks")]
        if let Some(hook) = &self.fill_hook {
            hook(FillPoint::Stamped).await;
        }
        let (deps, fill) = fill();
        #[cfg(feature = "redis")]
        let mut epochs = None;
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.remote {
            use sqlacache_core::redis::Lookup;
            if !local || !remote.readable() {
                self.stats.degrade();
            }
            if remote.readable() {
                match remote.lookup(key, deps.as_ref(), ttl, &self.stats).await {
                    Some(Lookup::Hit(bytes)) => match R::decode(&bytes) {
                        Some(value) => {
                            self.stats.hit();
                            self.stats.redis_hit();
                            if waited {
                                self.stats.coalesce();
                            }
                            if local {
                                self.store.put(key, deps.as_ref(), stamp, ttl, bytes);
                            }
                            return Ok(value);
                        }
                        None => {
                            tracing::warn!("a value cached in Redis did not decode; treating it as a miss");
                            self.stats.corrupt_entry();
                            // Fill against fresh epochs, so the value read now replaces it.
                            epochs = remote.epochs(deps.as_ref(), ttl, &self.stats).await;
                        }
                    },
                    Some(Lookup::Miss(found)) => epochs = Some(found),
                    None => {}
                }
            }
        }
        let value = Box::pin(fill).await?;
        #[cfg(feature = "test-hooks")]
        if let Some(hook) = &self.fill_hook {
            hook(FillPoint::Read).await;
        }
        match value.encode().filter(|bytes| round_trips::<R>(bytes)) {
            Some(bytes) => {
                self.stats.miss();
                #[cfg(feature = "redis")]
                if let (Some(remote), Some(epochs)) = (&self.remote, epochs) {
                    // Waiters look once it is stored there.
                    remote.put(self.this.clone(), key, epochs, ttl, bytes.clone(), lead);
                    if local && !self.store.put(key, deps.as_ref(), stamp, ttl, bytes) {
                        self.stats.fill_rejected();
                    }
                    return Ok(value);
                }
                if local && !self.store.put(key, deps.as_ref(), stamp, ttl, bytes) {
                    self.stats.fill_rejected();
                }
            }
            None => {
                not_cached(&self.stats, Uncached::Unstorable, "", std::any::type_name::<R>());
                warn_once_per_type(
                    std::any::type_name::<R>(),
                    "values of this type do not read back from their stored form (a field such as \
                     serde_json::Value or an untagged enum needs a self-describing format); its reads are not cached",
                );
            }
        }
        // Only now may the waiters look in the store.
        drop(lead);
        Ok(value)
    }
}

/// What a read needs to know of its row type's model, if it has one.
#[derive(Clone, Copy)]
pub(crate) struct ModelOf {
    fingerprint: u64,
    model: Model,
    type_name: &'static str,
}

impl ModelOf {
    pub fn of<T: CachedRow>() -> Option<ModelOf> {
        T::__MODEL.map(|model| ModelOf { fingerprint: T::fingerprint(), model, type_name: std::any::type_name::<T>() })
    }
}

/// Which models' settings apply, and which did not check out, by fingerprint.
///
/// Every cached read of a model asks, so the first models admitted sit in atomics that readers
/// only load: a lock's word, written by every reader, would be contended between threads.
/// Models are added one at a time (under `Shared::registering`, or before the pool is shared).
struct Models {
    fast: [AtomicU64; FAST_MODELS],
    fast_len: AtomicUsize,
    /// Admitted past the fast slots, and refused.
    slow: RwLock<(Vec<u64>, Vec<u64>)>,
}

const FAST_MODELS: usize = 64;

impl Models {
    fn new(admitted: &[u64]) -> Models {
        let models = Models {
            fast: std::array::from_fn(|_| AtomicU64::new(0)),
            fast_len: AtomicUsize::new(0),
            slow: RwLock::default(),
        };
        for &fingerprint in admitted {
            models.admit(fingerprint);
        }
        models
    }

    fn verdict(&self, fingerprint: u64) -> Option<bool> {
        let len = self.fast_len.load(Ordering::Acquire);
        if self.fast[..len].iter().any(|f| f.load(Ordering::Relaxed) == fingerprint) {
            return Some(true);
        }
        let slow = self.slow.read().unwrap_or_else(|e| e.into_inner());
        if slow.0.contains(&fingerprint) {
            Some(true)
        } else if slow.1.contains(&fingerprint) {
            Some(false)
        } else {
            None
        }
    }

    fn admit(&self, fingerprint: u64) {
        let len = self.fast_len.load(Ordering::Acquire);
        if len < FAST_MODELS {
            self.fast[len].store(fingerprint, Ordering::Relaxed);
            self.fast_len.store(len + 1, Ordering::Release);
        } else {
            self.slow.write().unwrap_or_else(|e| e.into_inner()).0.push(fingerprint);
        }
    }

    fn refuse(&self, fingerprint: u64) {
        self.slow.write().unwrap_or_else(|e| e.into_inner()).1.push(fingerprint);
    }
}

/// Marks an abandoned write as finished when dropped.
pub(crate) struct BackgroundWrite(Arc<AtomicUsize>);

impl Drop for BackgroundWrite {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether bytes decode to a value that encodes to the same bytes. Types that postcard cannot
/// read back (ones that ask the format what comes next, such as `serde_json::Value` or
/// untagged enums) fail here instead of being stored and never served.
fn round_trips<R: Stored>(bytes: &[u8]) -> bool {
    R::decode(bytes).and_then(|decoded| decoded.encode()).is_some_and(|again| again == bytes)
}

/// How often one cause of a dropped in-process tier is logged at most.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

/// Counts a read not cached for `reason` and says so at debug level, naming the statement
/// (shortened) and the row type, so "which query is never cached?" has an answer in the logs.
/// `type_name` is the type read (`Vec<Row>`, `Option<Row>` or `Row`): the event names `Row`.
pub(crate) fn not_cached(stats: &Stats, reason: Uncached, sql: &str, type_name: &str) {
    stats.bypass(reason);
    let row = ["alloc::vec::Vec<", "core::option::Option<"]
        .into_iter()
        .find_map(|wrapper| type_name.strip_prefix(wrapper)?.strip_suffix('>'))
        .unwrap_or(type_name);
    tracing::debug!(target: "sqlacache", ?reason, statement = shorten(sql), r#type = row, "read not cached");
}

/// At most 120 characters of `sql`, on one line.
fn shorten(sql: &str) -> String {
    let mut short: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some((cut, _)) = short.char_indices().nth(120) {
        short.truncate(cut);
        short.push('…');
    }
    short
}

/// Says once per type and message, at `warn` level, why reads into it are not cached.
fn warn_once_per_type(type_name: &'static str, message: &'static str) {
    static WARNED: std::sync::Mutex<Vec<(&'static str, &'static str)>> = std::sync::Mutex::new(Vec::new());
    let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if !warned.contains(&(type_name, message)) && warned.len() < 256 {
        warned.push((type_name, message));
        tracing::warn!(target: "sqlacache", r#type = type_name, "{message}");
    }
}

/// Past this many remembered names (missing tables, temporary relations), a set starts over.
const MAX_NAMES: usize = 1024;

/// The row identity of `T`'s row with `key`, given the table a plan reads and its primary-key
/// columns; `None` when `T`'s key is not that primary key or has no exact text form, so any
/// write to the table may be a write to this row.
fn row_of<T: Cacheable>((oid, columns): &(u32, Option<Vec<String>>), key: &T::Key) -> Option<u128> {
    let same_key =
        columns.as_ref().is_some_and(|c| c.iter().map(String::as_str).eq(T::MODEL.primary_key.iter().copied()));
    same_key.then(|| row_id_of(*oid, key)).flatten()
}

/// A [`PgPool`] with a query cache in front of it.
///
/// Every write made through it (with any sqlx API: `query`, `query_as`, `query!`, `raw_sql`)
/// invalidates the cached reads it may change before the write returns; reads made with the
/// typed calls ([`get`](CachedPool::get), [`query_as`](CachedPool::query_as),
/// [`query_scalar`](CachedPool::query_scalar), [`query_as!`](crate::query_as!)) are answered from
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
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for CachedPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedPool")
            .field("pool", &self.shared.pool)
            .field("store", &self.shared.store)
            .field("stats", &self.shared.stats.snapshot())
            .finish()
    }
}

impl CachedPool {
    /// Starts configuring a cache in front of `pool`.
    pub fn builder(pool: PgPool) -> CachedPoolBuilder {
        CachedPoolBuilder {
            pool,
            tables: Vec::new(),
            disabled: Vec::new(),
            models: Vec::new(),
            default_ttl: Duration::from_secs(3600),
            wildcard: Ops::ALL,
            capacity: 64 * 1024 * 1024,
            redis: None,
            lease: Duration::from_millis(500),
            feed: FeedMode::Off,
            #[cfg(feature = "test-hooks")]
            fill_hook: None,
            #[cfg(feature = "test-hooks")]
            invalidate_hook: None,
        }
    }

    /// The wrapped pool.
    ///
    /// Writes made through it **bypass invalidation**: use it for migrations, `PgListener`,
    /// `COPY` and other work that must reach the connection itself, and invalidate by hand
    /// afterwards if cached tables changed.
    pub fn inner(&self) -> &PgPool {
        &self.shared.pool
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
        let mut snapshot = self.shared.stats.snapshot();
        snapshot.widened += self.shared.store.tables_sharing_a_clock();
        snapshot
    }

    /// Bytes held by cached entries (by the store's weight formula) and the number of entries.
    pub fn memory_usage(&self) -> (u64, usize) {
        (self.shared.store.weight(), self.shared.store.len())
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
    pub async fn get<T: Cacheable>(&self, key: T::Key) -> Result<Option<T>, sqlx::Error> {
        let model = &T::MODEL;
        let shared = &self.shared;
        // Before planning: a model used for the first time changes its table's settings.
        let admitted = shared.admit::<T>().await;
        let plan = shared.plan(model.get_sql, true).await?;
        let mut key_hash = KeyBuilder::new(T::fingerprint());
        // A model whose checks failed says so, whatever else its read runs into.
        let cached = admitted.and_then(|()| shared.refusal(&plan)).and_then(|read| {
            key_hash.arg(&key)?;
            if !read.allowed.contains(Ops::GET) {
                return Err(Uncached::Disabled);
            }
            Ok((read, read.single.as_ref().ok_or(Uncached::NotARead)?))
        });
        // The row identity is hashed only when a fill stores an entry; a hit does not need it.
        let deps = |single: &(u32, Option<Vec<String>>), key: &T::Key| match row_of::<T>(single, key) {
            Some(row) => [Tag::Row(row), Tag::Rows(single.0)],
            // Any write to the table may change this row. (`All` is implicit in every entry; it
            // only fills the array.)
            None => [Tag::Table(single.0), Tag::All],
        };
        let fetch = |key: T::Key| async move {
            let mut args = PgArguments::default();
            T::bind_key(key, &mut args).map_err(sqlx::Error::Encode)?;
            // `get_sql` only reads, so it can run on the pool itself.
            sqlx::query_as_with::<_, T, _>(model.get_sql, args).fetch_optional(&shared.pool).await
        };
        match cached {
            Ok((read, single)) => {
                let id = key_hash.finish(&read.sql, kind::GET);
                let fill = || (deps(single, &key), fetch(key));
                shared.cached_read(id, read.ttl, fill).await
            }
            Err(reason) => {
                not_cached(&shared.stats, reason, model.get_sql, std::any::type_name::<T>());
                Box::pin(fetch(key)).await
            }
        }
    }

    /// Starts a cached query mapping rows to `T`: any [`CachedRow`] (a `#[derive(CachedRow)]`
    /// projection or join result, a [`Cacheable`] model, a tuple), whose fingerprint keeps the
    /// cached bytes of different row types apart. Bind arguments with
    /// [`bind`](crate::CachedQueryAs::bind). A write to any table the query reads invalidates
    /// the result.
    ///
    /// ```no_run
    /// # #[derive(sqlx::FromRow, serde::Serialize, serde::Deserialize, sqlacache_sqlx::Cacheable)]
    /// # #[cache(table = "users")]
    /// # struct User { #[cache(pk)] id: i64 }
    /// # async fn demo(cache: &sqlacache_sqlx::CachedPool) -> Result<(), sqlx::Error> {
    /// let active: Vec<User> = cache
    ///     .query_as::<User>("SELECT * FROM users WHERE active = $1")
    ///     .bind(true)
    ///     .fetch_all()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn query_as<T>(&self, sql: impl sqlx::SqlSafeStr) -> crate::CachedQueryAs<'_, T>
    where
        T: CachedRow + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
    {
        crate::query::CachedQueryAs::new(self, sql.into_sql_str())
    }

    /// Starts a cached query returning one column of type `O` (counts, existence checks, ids).
    ///
    /// ```no_run
    /// # async fn demo(cache: &sqlacache_sqlx::CachedPool) -> Result<(), sqlx::Error> {
    /// let n: i64 = cache.query_scalar::<i64>("SELECT count(*) FROM users WHERE active").fetch_one().await?;
    /// # Ok(()) }
    /// ```
    pub fn query_scalar<O>(&self, sql: impl sqlx::SqlSafeStr) -> crate::CachedQueryScalar<'_, O>
    where
        O: crate::Storable + Send + Unpin + for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    {
        crate::query::CachedQueryScalar::new(self, sql.into_sql_str())
    }

    /// Begins a transaction. Writes made in it invalidate the cache when
    /// [`commit`](crate::CachedTransaction::commit) returns; a rollback, or dropping the
    /// transaction, invalidates nothing.
    pub async fn begin(&self) -> Result<crate::CachedTransaction, sqlx::Error> {
        crate::transaction::CachedTransaction::begin(self.shared.clone()).await
    }

    /// Invalidates cached reads of the rows of `T` with these keys (and every multi-row read of
    /// its table), for changes made where the cache cannot see them.
    pub async fn invalidate_rows<T: Cacheable>(&self, keys: &[T::Key]) -> Result<(), Error> {
        let plan = self.shared.plan(T::MODEL.get_sql, true).await?;
        let Some(single) = plan.read.as_ref().ok().and_then(|r| r.single.as_ref()) else {
            return self.invalidate_table(T::MODEL.table).await;
        };
        let mut tags = vec![Tag::Table(single.0)];
        for key in keys {
            match row_of::<T>(single, key) {
                Some(row) => tags.push(Tag::Row(row)),
                None => {
                    tags.push(Tag::Rows(single.0));
                    break;
                }
            }
        }
        self.shared.invalidate_everywhere(&tags).await;
        Ok(())
    }

    /// Invalidates every cached read of a table (by SQL name, such as `users` or `app.users`).
    pub async fn invalidate_table(&self, table: &str) -> Result<(), Error> {
        let name = TableName::parse(table);
        let mut catalog = self.shared.catalog();
        if catalog.resolve(&name).is_none() {
            self.shared.reload(catalog.generation).await?;
            catalog = self.shared.catalog();
        }
        let info = catalog.resolve(&name).ok_or_else(|| Error::UnknownTable(table.to_owned()))?;
        self.shared.invalidate_everywhere(&catalog.family_tags(info.oid)).await;
        Ok(())
    }

    /// Drops every cached read (in Redis too, under this pool's key prefix and database, and in
    /// the other processes).
    pub async fn invalidate_all(&self) -> Result<(), Error> {
        self.shared.invalidate_everywhere(&[Tag::All]).await;
        Ok(())
    }

    /// Reads the schema again (tables, keys, foreign keys). Schema changes made through the
    /// pool are noticed by themselves; call this after changing the schema elsewhere.
    pub async fn refresh_catalog(&self) -> Result<(), Error> {
        self.shared.schema_epoch.fetch_add(1, Ordering::AcqRel);
        self.shared.reload(self.shared.generation.load(Ordering::Acquire)).await?;
        Ok(())
    }

    /// Test support: abandoned writes and commits that have not yet finished and invalidated.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn background_writes_for_tests(&self) -> usize {
        self.shared.background.load(Ordering::Acquire)
    }

    /// Test support: the backend process id of the change feed's listener (0 while it has none
    /// or without a feed).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn feed_listener_pid_for_tests(&self) -> u32 {
        self.shared.feed.as_ref().map_or(0, |f| f.listener_pid())
    }

    /// Test support: waits until every write committed before this call has come through the
    /// change feed and been applied (at once without a feed).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub async fn feed_sync_for_tests(&self) -> Result<(), sqlx::Error> {
        match &self.shared.feed {
            Some(feed) => feed.sync(&self.shared.pool, self.shared.fed_oids()).await,
            None => Ok(()),
        }
    }

    /// Test support: whether the change feed has been heard within the lease (true without one).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn feed_trusted_for_tests(&self) -> bool {
        self.shared.feed.as_ref().is_none_or(|f| f.trusted())
    }

    /// Test support: whether Redis answers and, with two tiers, the in-process tier is trusted
    /// (the bus was heard within the lease). Always true without Redis.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn tiers_ready_for_tests(&self) -> bool {
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.shared.remote {
            return remote.ready();
        }
        true
    }

    /// Test support: this pool on the bus (its publisher id and the number of the last message
    /// it tried to publish); `None` without Redis.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn bus_position_for_tests(&self) -> Option<(u64, u64)> {
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.shared.remote {
            return Some(remote.position());
        }
        None
    }

    /// Test support: the number of the last message this pool heard from `publisher`.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn heard_from_for_tests(&self, publisher: u64) -> u64 {
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.shared.remote {
            return remote.heard_from(publisher);
        }
        let _ = publisher;
        0
    }

    /// Test support: whether Redis answers this pool's heartbeats (its breaker may still be
    /// open while it settles). Always true without Redis.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn redis_answering_for_tests(&self) -> bool {
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.shared.remote {
            return remote.answering();
        }
        true
    }

    /// Test support: overwrites every cached value with bytes that do not decode.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn scramble_entries_for_tests(&self) {
        self.shared.store.scramble_for_tests();
    }
}

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
    disabled: Vec<(TableName, String)>,
    models: Vec<u64>,
    default_ttl: Duration,
    wildcard: Ops,
    capacity: u64,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    redis: Option<RedisSettings>,
    lease: Duration,
    feed: FeedMode,
    #[cfg(feature = "test-hooks")]
    fill_hook: Option<FillHook>,
    #[cfg(feature = "test-hooks")]
    invalidate_hook: Option<InvalidateHook>,
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
            .field("feed", &self.feed)
            .finish()
    }
}

impl CachedPoolBuilder {
    /// Registers the model `T`: its table takes the ops and TTL of its `#[cache(..)]`
    /// attribute, and reads into `T` may be cached. `build()` fails if the table does not exist
    /// or `T`'s `#[cache(pk)]` fields are not its primary key, in order. (A model used without
    /// this call is checked and registered at its first use; see [`Uncached::BadModel`].)
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
    #[cfg(feature = "redis")]
    pub fn key_prefix(mut self, prefix: &str) -> Self {
        self.redis_settings().prefix = prefix.to_owned();
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

    /// Listens to a change feed in PostgreSQL, so that writes made outside this pool (other
    /// services, `psql`, migrations, `cache.inner()`) invalidate what they change, and installs
    /// it on the configured tables (those of `.table(..)` and `.model::<T>()`, with their
    /// partitions) if it is not there. Idempotent; replicas starting together take turns.
    ///
    /// With the feed, reads of tables it does not cover are not cached
    /// ([`Uncached::NotInFeed`]), and cached reads are served only while the pool has heard
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
        let config = Config::new(self.tables.clone(), self.disabled.clone(), self.default_ttl, self.wildcard);
        let catalog = Catalog::load(&self.pool, 1).await?;
        config.check(&catalog, &self.pool).await?;
        Ok(crate::feed::sql(&crate::feed::fed_tables(&catalog, &configured(&config, &catalog))))
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
            prefix: "sqlacache".to_owned(),
            timeout: Duration::from_millis(100),
            lease,
        })
    }

    /// Test support: runs `hook` at each [`FillPoint`] of every cache fill.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn fill_hook(
        mut self,
        hook: impl Fn(FillPoint) -> futures_core::future::BoxFuture<'static, ()> + Send + Sync + 'static,
    ) -> Self {
        self.fill_hook = Some(Arc::new(hook));
        self
    }

    /// Test support: runs `hook` (blocking its thread) just before each invalidation applies.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn invalidate_hook(mut self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.invalidate_hook = Some(Arc::new(hook));
        self
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
        let config = Config::new(self.tables, self.disabled, self.default_ttl, self.wildcard);
        let mut catalog = Catalog::load(&self.pool, 1).await?;
        config.check(&catalog, &self.pool).await?;
        let feed = match self.feed {
            FeedMode::Off => None,
            mode => {
                let tables = crate::feed::fed_tables(&catalog, &configured(&config, &catalog));
                if mode == FeedMode::Install {
                    crate::feed::install(&self.pool, &tables).await?;
                } else {
                    let missing = crate::feed::missing(&self.pool, &tables).await?;
                    if !missing.is_empty() {
                        return Err(Error::Feed(format!(
                            "the change feed is not installed on {}: run the `install` SQL of \
                             `change_feed_sql()` (from a migration), or use `change_feed()`",
                            missing.join(", ")
                        )));
                    }
                }
                // Read again, with the triggers.
                catalog = Catalog::load(&self.pool, 1).await?;
                Some(Feed::new(self.lease, mode == FeedMode::Install))
            }
        };
        if let Some(redis) = self.redis.as_mut() {
            redis.lease = self.lease;
        }
        let remote = connect_redis(self.redis.as_ref(), &self.pool, self.capacity).await?;
        let shared = Arc::new_cyclic(|this| Shared {
            id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
            store: MemoryStore::new(self.capacity),
            stats: Stats::default(),
            drops_logged: std::sync::Mutex::default(),
            config: RwLock::new(config),
            catalog: RwLock::new(Arc::new(catalog)),
            generation: AtomicU64::new(1),
            schema_epoch: AtomicU64::new(0),
            loaded_epoch: AtomicU64::new(0),
            ddl_in_flight: AtomicUsize::new(0),
            sessions_differ: AtomicBool::new(false),
            background: Arc::default(),
            reload: tokio::sync::Mutex::new(()),
            plans: quick_cache::sync::Cache::new(4096),
            models: Models::new(&self.models),
            registering: tokio::sync::Mutex::new(()),
            flights: Flights::default(),
            pool: self.pool,
            remote,
            feed,
            this: this.clone(),
            #[cfg(feature = "test-hooks")]
            fill_hook: self.fill_hook,
            #[cfg(feature = "test-hooks")]
            invalidate_hook: self.invalidate_hook,
        });
        #[cfg(feature = "redis")]
        if let Some(remote) = &shared.remote {
            remote.start(Arc::downgrade(&shared)).map_err(|e| Error::Redis(e.to_string()))?;
        }
        if let Some(feed) = &shared.feed {
            feed.start(Arc::downgrade(&shared), &shared.pool);
            // Cached reads wait for the feed's first heartbeat; a lease at most.
            feed.until_heard(None, self.lease).await;
        }
        Ok(CachedPool { shared })
    }
}

/// Whether and how a pool uses the change feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FeedMode {
    Off,
    Install,
    Installed,
}

/// The tables the configuration names (by `.table(..)` or a model), that exist.
fn configured(config: &Config, catalog: &Catalog) -> Vec<u32> {
    config.tables.iter().filter_map(|t| catalog.resolve(&t.name)).map(|t| t.oid).collect()
}

/// Connects to Redis, if configured, under the identity of the database (so that two
/// databases sharing one Redis never share entries), waiting for it at most its timeout.
#[cfg_attr(not(feature = "redis"), allow(clippy::unused_async))]
async fn connect_redis(
    settings: Option<&RedisSettings>,
    pool: &PgPool,
    capacity: u64,
) -> Result<Option<Arc<Remote>>, Error> {
    #[cfg(feature = "redis")]
    if let Some(settings) = settings {
        let remote = match &settings.tier {
            Some(tier) if settings.url.is_empty() => Remote::new(tier.clone(), settings, capacity > 0),
            Some(_) => return Err(Error::Redis("both a Redis URL and a shared tier were given".to_owned())),
            None if settings.url.is_empty() => {
                return Err(Error::Redis("a key prefix or timeout was set without a Redis URL".to_owned()));
            }
            None => {
                let scope = crate::catalog::database_identity(pool).await?;
                Remote::connect(settings, &scope, capacity > 0).map_err(|e| Error::Redis(e.to_string()))?
            }
        };
        remote.wait_connected(settings.timeout).await;
        return Ok(Some(Arc::new(remote)));
    }
    #[cfg(not(feature = "redis"))]
    let _ = (settings, pool, capacity);
    Ok(None)
}
