//! Per-statement statistics: what each memoized read statement did (hits, misses, bypasses by
//! reason, time spent filling), so the hot query that is never cached can be found.
//!
//! The counters live with the statement's plan (one set per SQL text, carried over when the
//! statement is planned again after a schema change) and are read by walking the planner's
//! memo, so their memory is bounded by the memo's capacity (4,096 statements, about 1.2 KiB of
//! counters each besides the SQL text: hits are striped across cache lines, so hits of one hot
//! statement on many cores do not contend). A statement the memo evicts loses its counts.

use sqlacache_core::{Tally, Uncached};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// The live counters of one statement.
#[derive(Default, Debug)]
pub(crate) struct Counters {
    hits: Tally,
    redis_hits: AtomicU64,
    stale_hits: AtomicU64,
    misses: AtomicU64,
    degraded: AtomicU64,
    fill_nanos: AtomicU64,
    bypassed: [AtomicU64; Uncached::COUNT],
}

impl Counters {
    #[inline]
    pub fn hit(&self) {
        self.hits.add();
    }

    #[cfg(feature = "redis")]
    pub fn redis_hit(&self) {
        self.redis_hits.fetch_add(1, Relaxed);
    }

    pub fn stale_hit(&self) {
        self.stale_hits.fetch_add(1, Relaxed);
    }

    /// A fill that read the database for `took`.
    pub fn miss(&self, took: Duration) {
        self.misses.fetch_add(1, Relaxed);
        self.fill_nanos.fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    pub fn degrade(&self) {
        self.degraded.fetch_add(1, Relaxed);
    }

    pub fn bypass(&self, reason: Uncached) {
        self.bypassed[reason.index()].fetch_add(1, Relaxed);
    }

    /// A snapshot, or `None` when the statement was never read through the cache.
    pub fn snapshot(&self, sql: &str) -> Option<StatementStats> {
        let bypassed_by_reason = std::array::from_fn(|i| self.bypassed[i].load(Relaxed));
        let stats = StatementStats {
            sql: sql.to_owned(),
            hits: self.hits.get(),
            redis_hits: self.redis_hits.load(Relaxed),
            stale_hits: self.stale_hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            bypassed: bypassed_by_reason.iter().sum(),
            bypassed_by_reason,
            degraded: self.degraded.load(Relaxed),
            fill_time: Duration::from_nanos(self.fill_nanos.load(Relaxed)),
        };
        (stats.calls() > 0).then_some(stats)
    }
}

/// What one read statement did, from [`CachedPool::statements`](crate::CachedPool::statements).
///
/// ```no_run
/// # fn demo(cache: &sqlacache_sqlx::CachedPool) {
/// // The busiest statement that is never served from the cache, and why.
/// if let Some(s) = cache.statements().into_iter().filter(|s| s.hits == 0).max_by_key(|s| s.bypassed) {
///     println!("{} bypassed {} times: {:?}", s.sql, s.bypassed, s.reasons());
/// }
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatementStats {
    /// The SQL text, as the caller gave it.
    pub sql: String,
    /// Reads answered from the cache (either tier, stale answers included).
    pub hits: u64,
    /// Of `hits`, those answered by Redis.
    pub redis_hits: u64,
    /// Of `hits`, those answered with an entry past its TTL (stale-while-revalidate or
    /// stale-if-error).
    pub stale_hits: u64,
    /// Cacheable reads that went to the database.
    pub misses: u64,
    /// Reads that were not cacheable and went to the database.
    pub bypassed: u64,
    /// `bypassed`, by reason; index with [`Uncached::index`] or read with
    /// [`StatementStats::uncached`].
    pub bypassed_by_reason: [u64; Uncached::COUNT],
    /// Cacheable reads that skipped the cache because a tier could not be trusted.
    pub degraded: u64,
    /// The time the misses spent reading the database.
    pub fill_time: Duration,
}

impl StatementStats {
    /// Every read of the statement through the cache's typed calls.
    pub fn calls(&self) -> u64 {
        self.hits + self.misses + self.bypassed + self.degraded
    }

    /// Reads that bypassed the cache for `reason`.
    pub fn uncached(&self, reason: Uncached) -> u64 {
        self.bypassed_by_reason[reason.index()]
    }

    /// The reasons counted, with their counts.
    pub fn reasons(&self) -> Vec<(Uncached, u64)> {
        Uncached::ALL.into_iter().map(|r| (r, self.uncached(r))).filter(|&(_, n)| n > 0).collect()
    }

    /// The database time the hits saved, estimated as the hits times the mean time of a miss
    /// (zero before the first miss).
    pub fn time_saved(&self) -> Duration {
        match self.misses {
            0 => Duration::ZERO,
            misses => self.fill_time.mul_f64(self.hits as f64 / misses as f64),
        }
    }
}
