//! What a pool knows of the schema: the configuration, the catalog it was checked against,
//! and the state that says when that knowledge is out of date (schema changes seen or in
//! flight, and sessions that no longer match one another).

use crate::catalog::{Catalog, TableInfo};
use crate::config::Config;
use crate::error::Error;
use crate::feed::sql::{fed_tables, install, outdated};
use sqlacache_core::analyze::TableName;
use sqlacache_core::Stats;
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

/// Past this many remembered names (missing tables), the set starts over.
const MAX_NAMES: usize = 1024;

/// The schema knowledge of one pool.
pub(crate) struct Schema {
    /// Where the catalog is read.
    pool: PgPool,
    /// Behind a lock: a model first used without `.model::<T>()` adds its settings.
    config: RwLock<Config>,
    catalog: RwLock<Arc<Catalog>>,
    generation: AtomicU64,
    /// Counts schema changes seen through the pool (and `refresh_catalog` calls).
    epoch: AtomicU64,
    /// The `epoch` that the current catalog was read after: the catalog is out of date while
    /// the two differ. Only a load that completes advances it, so an abandoned reload leaves
    /// the change pending.
    loaded_epoch: AtomicU64,
    /// Statements that change the schema and have not finished (or, in a transaction, not
    /// committed): a write that overlaps one may cascade where its plan does not know.
    ddl_in_flight: AtomicUsize,
    /// Set once a statement through the pool changed its sessions (see
    /// [`sqlacache_core::Uncached::Session`]).
    sessions_differ: AtomicBool,
    reload: tokio::sync::Mutex<()>,
}

impl Schema {
    /// `config`, checked against `catalog` (read through `pool`).
    pub fn new(pool: PgPool, config: Config, catalog: Catalog) -> Schema {
        let generation = catalog.generation;
        Schema {
            pool,
            config: RwLock::new(config),
            catalog: RwLock::new(Arc::new(catalog)),
            generation: AtomicU64::new(generation),
            epoch: AtomicU64::new(0),
            loaded_epoch: AtomicU64::new(0),
            ddl_in_flight: AtomicUsize::new(0),
            sessions_differ: AtomicBool::new(false),
            reload: tokio::sync::Mutex::new(()),
        }
    }

    /// The catalog as it is now.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The configuration as it is now.
    pub fn config(&self) -> RwLockReadGuard<'_, Config> {
        self.config.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a table's settings (a model registered at its first use).
    pub fn add_model(&self, table: crate::config::TableConfig) {
        self.config.write().unwrap_or_else(|e| e.into_inner()).add_model(table);
    }

    /// The generation of the catalog now in use.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether the catalog was read after every schema change seen so far.
    pub fn current(&self) -> bool {
        self.loaded_epoch.load(Ordering::Acquire) == self.epoch.load(Ordering::Acquire)
    }

    /// The number of schema changes seen so far; a write compares it before and after it runs.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The schema changed (or may have): plans are made again from a new catalog.
    pub fn changed(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// How many schema changes are running now (in transactions: not yet ended).
    pub fn ddl_running(&self) -> usize {
        self.ddl_in_flight.load(Ordering::Acquire)
    }

    /// A schema change starts; pair with [`Schema::ddl_done`].
    pub fn ddl_started(&self) {
        self.ddl_in_flight.fetch_add(1, Ordering::AcqRel);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// A schema change finished (or committed, or rolled back): plan again with a fresh
    /// catalog. (Temporary relations need nothing here: a statement that makes one runs on a
    /// connection that is closed afterwards, so none ever shadows a name on the pool's others.)
    pub fn ddl_done(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.ddl_in_flight.fetch_sub(1, Ordering::AcqRel);
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

    /// Reads the catalog again unless someone already did since `seen` was current.
    pub async fn reload(&self, seen: u64) -> Result<(), sqlx::Error> {
        let _guard = self.reload.lock().await;
        if self.generation() != seen && self.current() {
            return Ok(());
        }
        // Changes after this point are not guaranteed to be in the catalog read below.
        let epoch = self.epoch.load(Ordering::Acquire);
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
    pub fn note_missing(&self, catalog: &Catalog, names: Vec<TableName>, stats: &Stats) {
        if names.is_empty() {
            return;
        }
        let mut missing = catalog.missing.lock().unwrap_or_else(|e| e.into_inner());
        if missing.len() + names.len() > MAX_NAMES {
            missing.clear();
            stats.widen();
        }
        missing.extend(names);
    }

    /// What decides, beyond the catalog that every pool of a database reads alike, which
    /// invalidations a change-feed message makes here: the configured tables, and the schemas
    /// names are looked up in. Pools with the same fingerprint make the same invalidations for
    /// the same messages, so one may vouch for another (see [`crate::feed`]).
    pub fn fingerprint(&self) -> u64 {
        let catalog = self.catalog();
        let config = self.config();
        let mut words: Vec<String> = config.tables.iter().map(|t| format!("t{}", t.written)).collect();
        words.extend(catalog.searched_schemas().map(|s| format!("s{s}")));
        words.sort_unstable();
        words.dedup();
        let hash = blake3::hash(words.join("\n").as_bytes());
        let mut first = [0; 8];
        first.copy_from_slice(&hash.as_bytes()[..8]);
        u64::from_le_bytes(first)
    }

    /// The schemas of the configured tables and their families: a schema change elsewhere
    /// matters to this pool if it touches one of them (or the search path).
    pub fn cached_schemas(&self) -> Vec<String> {
        let catalog = self.catalog();
        let oids = configured(&self.config(), &catalog);
        let mut schemas: Vec<String> = fed_tables(&catalog, &oids).iter().map(|t| t.schema.clone()).collect();
        schemas.sort();
        schemas.dedup();
        schemas
    }

    /// The oids of the tables the feed must cover for this pool (the configured tables and
    /// their families): each heartbeat checks that every one still has the feed's triggers.
    pub fn fed_oids(&self) -> Vec<i64> {
        let catalog = self.catalog();
        let oids = configured(&self.config(), &catalog);
        fed_tables(&catalog, &oids).iter().map(|t| i64::from(t.oid)).collect()
    }

    /// Whether a schema change made elsewhere changed anything the configured tables depend
    /// on: what their names resolve to, their schemas and names, their families (a partition
    /// created in another schema), their keys, tracked columns, `BEFORE UPDATE` triggers and
    /// foreign keys, and whether the feed covers them. Judged by reading the catalog again (through `pool`), whatever schema the change
    /// named. A catalog that cannot be read counts as a change.
    pub async fn cached_tables_changed(&self, pool: &PgPool) -> bool {
        let Ok(fresh) = Catalog::load_tables(pool).await else { return true };
        let old = self.catalog();
        let config = self.config();
        let signature = |catalog: &Catalog| {
            let resolved: Vec<Option<u32>> =
                config.tables.iter().map(|t| catalog.resolve(&t.name).map(|i| i.oid)).collect();
            let sorted = |v: &[u32]| {
                let mut v = v.to_vec();
                v.sort_unstable();
                v
            };
            let mut tables: Vec<String> = fed_tables(catalog, &configured(&config, catalog))
                .iter()
                .map(|t| {
                    format!(
                        "{} {:?}.{:?} {} {:?} {:?} {} {:?} {:?} {:?} {:?}",
                        t.oid,
                        t.schema,
                        t.name,
                        t.fed,
                        t.key,
                        t.tracked,
                        t.before_update,
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

    /// Installs the change feed, through `pool`, on the configured tables that lack it (created
    /// anew since) or whose triggers are older than the catalog (a column tracked since).
    pub async fn reinstall_feed(&self, pool: &PgPool) {
        let result = async {
            let catalog = Catalog::load_tables(pool).await?;
            let oids = configured(&self.config(), &catalog);
            let tables = fed_tables(&catalog, &oids);
            let lacking = outdated(pool, &tables).await?;
            let lacking: Vec<&TableInfo> = tables.into_iter().filter(|t| lacking.contains(&t.qualified())).collect();
            if !lacking.is_empty() {
                install(pool, &lacking).await?;
                self.changed();
            }
            Ok::<(), Error>(())
        };
        if let Err(error) = result.await {
            tracing::warn!(target: "sqlacache", %error, "the change feed could not be installed on a table it must cover; its reads are not cached");
        }
    }

    /// The pool the catalog is read through (the application's).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// The tables the configuration names (by `.table(..)` or a model), that exist.
pub(crate) fn configured(config: &Config, catalog: &Catalog) -> Vec<u32> {
    config.tables.iter().filter_map(|t| catalog.resolve(&t.name)).map(|t| t.oid).collect()
}
