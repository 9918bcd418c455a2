//! Plans of SQL strings, memoized: once per pool in a shared memo, and per thread in front of
//! it, so a repeated statement is neither parsed again nor shares a reference count between
//! threads.

use crate::catalog::TableInfo;
use crate::plan::{self, Context, Plan};
use crate::schema::Schema;
use crate::statements::StatementStats;
use sqlacache_core::analyze::{analyze, TableName};
use sqlacache_core::{Stats, Uncached};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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

    /// Slots of [`get_static`], per thread.
    const STATIC_SLOTS: usize = 64;

    type StaticSlot = Option<(u64, usize, usize, Arc<Plan>)>;

    thread_local! {
        static STATIC: RefCell<[StaticSlot; STATIC_SLOTS]> = const { RefCell::new([const { None }; STATIC_SLOTS]) };
    }

    /// [`get`] for a statement that lives as long as the program (a model's `get_sql`): found
    /// by its address, without hashing its text. Text at a `'static` address never changes,
    /// so the address names it.
    pub fn get_static(pool: u64, sql: &'static str, generation: u64) -> Option<Arc<Plan>> {
        let (addr, len) = (sql.as_ptr() as usize, sql.len());
        STATIC.with(|slots| {
            let slots = slots.try_borrow().ok()?;
            match &slots[(addr >> 3) % STATIC_SLOTS] {
                Some((p, a, l, plan)) if (*p, *a, *l) == (pool, addr, len) && plan.generation == generation => {
                    Some(plan.clone())
                }
                _ => None,
            }
        })
    }

    /// Remembers the plan of a `'static` statement for [`get_static`].
    pub fn put_static(pool: u64, sql: &'static str, plan: Arc<Plan>) {
        let (addr, len) = (sql.as_ptr() as usize, sql.len());
        STATIC.with(|slots| {
            if let Ok(mut slots) = slots.try_borrow_mut() {
                slots[(addr >> 3) % STATIC_SLOTS] = Some((pool, addr, len, plan));
            }
        });
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

/// Numbers planners for the per-thread plan copies.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The planner of one pool: turns SQL into plans against its [`Schema`].
pub(crate) struct Planner {
    /// Tells this pool's per-thread plan copies from other pools'.
    id: u64,
    plans: quick_cache::sync::Cache<String, Arc<Plan>>,
    /// Whether the pool listens to a change feed (reads of tables it does not cover are not
    /// cached).
    feed: bool,
    /// Whether reads may depend on values of tracked columns (see [`crate::predicate`]).
    predicates: bool,
}

impl Planner {
    /// The statistics of the memoized statements that were read through the cache, busiest
    /// first.
    pub fn statements(&self) -> Vec<StatementStats> {
        let mut all: Vec<StatementStats> =
            self.plans.iter().filter_map(|(sql, plan)| plan.counters.snapshot(&sql)).collect();
        all.sort_by(|a, b| b.calls().cmp(&a.calls()).then_with(|| a.sql.cmp(&b.sql)));
        all
    }

    pub fn new(feed: bool, predicates: bool) -> Planner {
        Planner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            plans: quick_cache::sync::Cache::new(4096),
            feed,
            predicates,
        }
    }

    /// The memoized plan of `sql`, if it is current: what almost every call finds. Otherwise
    /// [`Planner::plan_slow`] makes it.
    #[inline]
    pub fn memoized(&self, schema: &Schema, sql: &str) -> Option<Arc<Plan>> {
        if !schema.current() {
            return None;
        }
        let generation = schema.generation();
        if let Some(plan) = local_plans::get(self.id, sql).filter(|p| p.generation == generation) {
            return Some(plan);
        }
        let plan = self.plans.get(sql).filter(|p| p.generation == generation)?;
        local_plans::put(self.id, sql, Arc::new(Plan::clone(&plan)));
        Some(plan)
    }

    /// [`Planner::memoized`] for a statement that lives as long as the program, found without
    /// hashing its text.
    #[inline]
    pub fn memoized_static(&self, schema: &Schema, sql: &'static str) -> Option<Arc<Plan>> {
        if !schema.current() {
            return None;
        }
        if let Some(plan) = local_plans::get_static(self.id, sql, schema.generation()) {
            return Some(plan);
        }
        let shared = self.memoized(schema, sql)?;
        // This thread's copy, now made: its reference count is this thread's alone.
        let plan = local_plans::get(self.id, sql).filter(|p| p.generation == shared.generation).unwrap_or(shared);
        local_plans::put_static(self.id, sql, plan.clone());
        Some(plan)
    }

    /// Plans `sql` anew (reading the catalog again first if it must), and memoizes the plan.
    ///
    /// With `may_reload` false (inside a transaction, whose connection may be the pool's only
    /// one) the catalog is never read again: the plan is made from the catalog at hand, and
    /// names it does not know make writes invalidate everything.
    pub async fn plan_slow(
        &self,
        schema: &Schema,
        stats: &Stats,
        sql: &str,
        may_reload: bool,
    ) -> Result<Arc<Plan>, sqlx::Error> {
        if may_reload && !schema.current() {
            schema.reload(schema.generation()).await?;
        }
        let analysis = analyze(sql);
        stats.statement_analyzed();
        let mut reloaded = false;
        loop {
            let catalog = schema.catalog();
            let (plan, fresh_names) = {
                let config = schema.config();
                let policy = |info: &TableInfo| config.policy(&catalog, info);
                let cx = Context { catalog: &catalog, policy: &policy, feed: self.feed, predicates: self.predicates };
                let (plan, unresolved) = plan::plan(sql, &analysis, &cx);
                let missing = catalog.missing.lock().unwrap_or_else(|e| e.into_inner());
                let fresh: Vec<TableName> = unresolved.0.into_iter().filter(|n| !missing.contains(n)).collect();
                (plan, fresh)
            };
            if !fresh_names.is_empty() && !reloaded && may_reload {
                // A table created after the catalog was read: read it again, once.
                schema.reload(catalog.generation).await?;
                reloaded = true;
                continue;
            }
            // Once the pool's connections may differ (one may be inside a hand-written
            // transaction), no read is cached, and none is probed on them.
            let unprovable = !may_reload || schema.sessions_differ();
            if unprovable && (!fresh_names.is_empty() || !schema.current() || plan.read.is_ok()) {
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
                if let Err(reason) = crate::proof::prove(schema.pool(), sql, &read.tables).await {
                    plan.read = Err(reason);
                }
            }
            schema.note_missing(&catalog, fresh_names, stats);
            if let Some(before) = self.plans.peek(sql) {
                plan.counters = before.counters.clone();
            }
            let plan = Arc::new(plan);
            self.plans.insert(sql.to_owned(), plan.clone());
            return Ok(plan);
        }
    }
}
