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

/// Live counters. Cheap to update from many threads: each thread adds to one of several
/// stripes on cache lines of their own, so hits on different cores do not contend for one
/// counter; a snapshot sums the stripes.
#[derive(Debug, Default)]
pub struct Stats {
    stripes: [Stripe; STRIPES],
}

const STRIPES: usize = 16;
const COUNTERS: usize = 8;

/// One thread's share of the counters, alone on its cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe([AtomicU64; COUNTERS]);

fn stripe_index() -> usize {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Relaxed) % STRIPES;
    }
    INDEX.with(|i| *i)
}

impl Stats {
    fn add(&self, counter: usize) {
        self.stripes[stripe_index()].0[counter].fetch_add(1, Relaxed);
    }

    fn sum(&self, counter: usize) -> u64 {
        self.stripes.iter().map(|s| s.0[counter].load(Relaxed)).sum()
    }
}

macro_rules! counters {
    ($($index:literal: $method:ident => $field:ident),* $(,)?) => {
        impl Stats {
            $(
                #[doc = concat!("Adds one to `", stringify!($field), "`.")]
                pub fn $method(&self) {
                    self.add($index);
                }
            )*

            /// Reads every counter.
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($field: self.sum($index)),* }
            }
        }
    };
}

counters! {
    0: hit => hits,
    1: miss => misses,
    2: bypass => bypassed,
    3: fill_rejected => fills_rejected,
    4: invalidation => invalidations,
    5: full_invalidation => full_invalidations,
    6: corrupt_entry => corrupt_entries,
    7: statement_analyzed => statements_analyzed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads_add_up() {
        let stats = Stats::default();
        std::thread::scope(|s| {
            for _ in 0..(STRIPES + 3) {
                s.spawn(|| {
                    for _ in 0..1000 {
                        stats.hit();
                        stats.miss();
                    }
                });
            }
        });
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.hits, 1000 * (STRIPES as u64 + 3));
        assert_eq!(snapshot.misses, snapshot.hits);
        assert_eq!(snapshot.bypassed, 0);
    }
}
