//! The state every handle of a pool shares: the parts it owns, each with its own job.
//!
//! - [`Schema`]: the configuration, the catalog and when they are out of date;
//! - [`Planner`]: SQL to plans, memoized;
//! - [`Registry`]: which models' settings apply;
//! - [`Tiers`]: the in-process tier, the shared tier and the one invalidation surface;
//! - [`Flights`]: the fills in progress;
//! - [`Feed`]: the change feed's listener, when the pool has one.
//!
//! Workers hold the part they need: the Redis listener the in-process tier, the feed's listener
//! the schema and the tiers; none holds the engine.

use crate::feed::listener::Feed;
use crate::flight::Flights;
use crate::local::Origin;
use crate::plan::Plan;
use crate::planner::Planner;
use crate::registry::{ModelOf, Parts, Registry};
use crate::sampler::Sampler;
use crate::schema::Schema;
use crate::tiers::{Delivery, Tiers};
use sqlacache_core::{MemoryStore, Stats, Tag, Uncached};
use sqlx::PgPool;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Runs at each point of a fill (test support).
#[cfg(feature = "test-hooks")]
pub(crate) type FillHook = Arc<dyn Fn(FillPoint) -> futures_core::future::BoxFuture<'static, ()> + Send + Sync>;

/// Test support: the points of a cache fill where a fill hook runs.
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillPoint {
    /// The stamp was taken; the database has not been read yet.
    Stamped,
    /// The database was read; the result is not stored yet.
    Read,
    /// A background refresh of an entry served stale took its stamp and is about to read.
    Refreshing,
}

/// The shared state of one pool.
pub(crate) struct Engine {
    pub pool: PgPool,
    pub schema: Arc<Schema>,
    pub planner: Planner,
    pub models: Registry,
    pub tiers: Arc<Tiers>,
    pub flights: Flights,
    pub feed: Option<Arc<Feed>>,
    /// Which hits the shadow check reads again, if any (see [`crate::shadow`]).
    pub shadow: Option<Sampler>,
    /// Whether spans carry the SQL text (`db.query.text`).
    pub trace_text: bool,
    /// The pool's name in metrics: its key prefix.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub name: String,
    /// The task that copies the counters into the `metrics` facade.
    #[cfg(feature = "metrics")]
    pub exporter: crate::tasks::Tasks,
    /// Abandoned writes and commits still running on tasks of their own.
    background: Arc<AtomicUsize>,
    #[cfg(feature = "test-hooks")]
    pub fill_hook: Option<FillHook>,
}

impl Engine {
    /// Puts the parts together; [`Engine::start`] starts their workers.
    pub fn new(
        pool: PgPool,
        schema: Schema,
        models: Registry,
        tiers: Tiers,
        feed: Option<Feed>,
        predicates: bool,
    ) -> Engine {
        Engine {
            pool,
            planner: Planner::new(feed.is_some(), predicates),
            schema: Arc::new(schema),
            models,
            tiers: Arc::new(tiers),
            flights: Flights::default(),
            feed: feed.map(Arc::new),
            shadow: None,
            trace_text: false,
            name: String::new(),
            #[cfg(feature = "metrics")]
            exporter: crate::tasks::Tasks::default(),
            background: Arc::default(),
            #[cfg(feature = "test-hooks")]
            fill_hook: None,
        }
    }

    /// Starts the workers: the Redis heartbeat and listener, the change feed's listener,
    /// heartbeat and installer. They end when the engine is dropped.
    pub fn start(&self) -> Result<(), sqlacache_core::tier::TierError> {
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.tiers.remote {
            remote.start(&self.tiers.local)?;
        }
        if let Some(feed) = &self.feed {
            feed.start(&self.schema, &self.tiers, &self.pool);
        }
        Ok(())
    }

    /// The pool's counters.
    pub fn stats(&self) -> &Stats {
        &self.tiers.local.stats
    }

    /// The in-process tier's store.
    pub fn store(&self) -> &MemoryStore {
        &self.tiers.local.store
    }

    /// The plan of `sql`: memoized ([`Planner::memoized`]) or made ([`Engine::plan_slow`]).
    pub async fn plan(&self, sql: &str, may_reload: bool) -> Result<Arc<Plan>, sqlx::Error> {
        match self.planner.memoized(&self.schema, sql) {
            Some(plan) => Ok(plan),
            None => self.plan_slow(sql, may_reload).await,
        }
    }

    /// Makes the plan of `sql` (see [`Planner::plan_slow`]); boxed, so the planner's large
    /// future is no part of a read's.
    pub async fn plan_slow(&self, sql: &str, may_reload: bool) -> Result<Arc<Plan>, sqlx::Error> {
        Box::pin(self.planner.plan_slow(&self.schema, self.stats(), sql, may_reload)).await
    }

    /// Whether reads into a row type with this model may be cached as far as its model goes:
    /// known ([`Registry::known`]), or decided by registering it ([`Engine::register`]).
    pub async fn admit(&self, model: Option<ModelOf>) -> Result<(), Uncached> {
        match self.models.known(model) {
            Ok(verdict) => verdict,
            Err(unknown) => self.register(unknown).await,
        }
    }

    /// Registers a model first used without `.model::<T>()` (see [`Registry::register`]);
    /// boxed, as [`Engine::plan_slow`].
    pub async fn register(&self, model: ModelOf) -> Result<(), Uncached> {
        let installs_feed = self.feed.as_ref().is_some_and(|feed| feed.installs());
        Box::pin(self.models.register(model, Parts { schema: &self.schema, tiers: &self.tiers, installs_feed })).await
    }

    /// Applies an invalidation (see [`Tiers::apply`]).
    pub fn apply(&self, tags: &[Tag], origin: Origin) -> Option<Delivery> {
        self.tiers.apply(tags, origin)
    }

    /// Whether cached reads may be served at all: without a change feed, or with one heard
    /// within the lease.
    #[inline]
    pub fn feed_trusted(&self) -> bool {
        self.feed.as_ref().is_none_or(|feed| feed.trusted())
    }

    /// Counts an abandoned write as running until the returned guard is dropped.
    pub fn background_write(&self) -> BackgroundWrite {
        self.background.fetch_add(1, Ordering::AcqRel);
        BackgroundWrite(self.background.clone())
    }

    /// Abandoned writes and commits that have not finished yet.
    #[cfg(feature = "test-hooks")]
    pub fn background_writes(&self) -> usize {
        self.background.load(Ordering::Acquire)
    }

    /// Runs the unfinished rest of an abandoned write (a statement or a commit) on a task of
    /// its own. Without a runtime (sqlx needs one too, so one is shutting down) `rest` is
    /// dropped here instead, and the write's own drop invalidates at once, as for any abandoned
    /// write. Counted until it has invalidated.
    pub fn finish_in_background(&self, rest: impl Future<Output = ()> + Send + 'static) {
        let running = self.background_write();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                rest.await;
                drop(running);
            });
        }
    }
}

/// Marks an abandoned write as finished when dropped.
pub(crate) struct BackgroundWrite(Arc<AtomicUsize>);

impl Drop for BackgroundWrite {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
