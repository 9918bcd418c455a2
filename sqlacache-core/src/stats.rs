//! Counters that describe what the cache did.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A snapshot of the cache counters, from [`Stats::snapshot`].
///
/// ```
/// use sqlacache_core::Stats;
/// let stats = Stats::default();
/// stats.hit();
/// assert_eq!(stats.snapshot().hits, 1);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Reads answered from the cache.
    pub hits: u64,
    /// Cacheable reads that went to the database.
    pub misses: u64,
    /// Reads that were not cacheable (or not enabled) and went straight to the database.
    pub bypassed: u64,
    /// Fills not stored because a write invalidated their data while they read it.
    pub fills_rejected: u64,
    /// Invalidation events applied (one per write statement, commit or manual call).
    pub invalidations: u64,
    /// Invalidations that had to drop everything (a write the analyzer could not read).
    pub full_invalidations: u64,
    /// Cached values that could not be decoded; each was treated as a miss and removed.
    pub corrupt_entries: u64,
    /// SQL strings parsed and planned. Plans are memoized, so this grows with distinct
    /// statements (and catalog reloads), not with calls.
    pub statements_analyzed: u64,
}

/// Live counters. Cheap to update from many threads.
#[derive(Debug, Default)]
pub struct Stats {
    hits: AtomicU64,
    misses: AtomicU64,
    bypassed: AtomicU64,
    fills_rejected: AtomicU64,
    invalidations: AtomicU64,
    full_invalidations: AtomicU64,
    corrupt_entries: AtomicU64,
    statements_analyzed: AtomicU64,
}

macro_rules! counters {
    ($($method:ident => $field:ident),* $(,)?) => {
        impl Stats {
            $(
                #[doc = concat!("Adds one to `", stringify!($field), "`.")]
                pub fn $method(&self) {
                    self.$field.fetch_add(1, Relaxed);
                }
            )*

            /// Reads every counter.
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($field: self.$field.load(Relaxed)),* }
            }
        }
    };
}

counters! {
    hit => hits,
    miss => misses,
    bypass => bypassed,
    fill_rejected => fills_rejected,
    invalidation => invalidations,
    full_invalidation => full_invalidations,
    corrupt_entry => corrupt_entries,
    statement_analyzed => statements_analyzed,
}
