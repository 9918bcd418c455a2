//! Counters that describe what the cache did.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A snapshot of the cache counters, from `CachedPool::stats`.
///
/// ```no_run
/// # fn demo(cache: &sqlacache_sqlx::CachedPool) {
/// let stats = cache.stats();
/// println!("{} hits, {} misses, {} bypassed", stats.hits, stats.misses, stats.bypassed);
/// # }
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq)]
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
    /// `bypassed`, split by reason; index with [`Uncached::index`] or read with
    /// [`StatsSnapshot::uncached`].
    pub bypassed_by_reason: [u64; Uncached::COUNT],
    /// Times the library chose a wider invalidation than a write needed, because a bound on its
    /// own state was reached (too many rows, tables or names to track one by one).
    pub widened: u64,
    /// Misses that waited for a concurrent fill of the same read instead of querying the database,
    /// and were then served from the cache (also counted in `hits`).
    pub coalesced: u64,
    /// Hits served by the shared tier (Redis); `hits - redis_hits` were served in-process.
    pub redis_hits: u64,
    /// Redis commands that failed or timed out (their outcome is unknown).
    pub redis_errors: u64,
    /// Cacheable reads that skipped a tier they could not trust: Redis while its circuit
    /// breaker was open, or the in-process tier while the bus was not heard within the lease.
    pub degraded: u64,
    /// Invalidations published to Redis and the other processes.
    pub published: u64,
    /// Invalidations received from other processes and applied here.
    pub received: u64,
    /// Times the in-process tier was dropped because invalidations may have been missed (a
    /// reconnect, a gap in a publisher's messages, a lease that ran out).
    pub tier_drops: u64,
    /// Strict writes that returned at their deadline: a member did not acknowledge in time (it
    /// was frozen, slow, partitioned or gone), or the bus does not know its members.
    pub strict_deadlines: u64,
    /// Hits answered with an entry past its TTL but within its table's stale-while-revalidate
    /// window, while one refresh ran in the background (also counted in `hits`).
    pub stale_hits: u64,
    /// Reads answered with an entry past its TTL because PostgreSQL failed and the table allows
    /// stale-if-error (also counted in `hits`).
    pub stale_if_error: u64,
    /// Sampled hits that the shadow check read again from PostgreSQL and found equal.
    pub verified: u64,
    /// Sampled hits that the shadow check found different from PostgreSQL while still served
    /// (each logged with its SQL and key at `warn` level, and its entry invalidated).
    pub verify_mismatches: u64,
    /// Invalidations heard on the change feed (writes made outside every pool) and applied
    /// here (also counted in `invalidations`).
    pub feed_invalidations: u64,
}

/// Every counter by name, and the reads not cached by reason (those with a count).
impl std::fmt::Debug for StatsSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        struct Reasons<'a>(&'a StatsSnapshot);
        impl std::fmt::Debug for Reasons<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let counted = Uncached::ALL.into_iter().filter(|&r| self.0.uncached(r) > 0);
                f.debug_map().entries(counted.map(|r| (r, self.0.uncached(r)))).finish()
            }
        }
        f.debug_struct("StatsSnapshot")
            .field("hits", &self.hits)
            .field("misses", &self.misses)
            .field("bypassed", &self.bypassed)
            .field("bypassed_by_reason", &Reasons(self))
            .field("fills_rejected", &self.fills_rejected)
            .field("invalidations", &self.invalidations)
            .field("full_invalidations", &self.full_invalidations)
            .field("corrupt_entries", &self.corrupt_entries)
            .field("statements_analyzed", &self.statements_analyzed)
            .field("widened", &self.widened)
            .field("coalesced", &self.coalesced)
            .field("redis_hits", &self.redis_hits)
            .field("redis_errors", &self.redis_errors)
            .field("degraded", &self.degraded)
            .field("published", &self.published)
            .field("received", &self.received)
            .field("tier_drops", &self.tier_drops)
            .field("strict_deadlines", &self.strict_deadlines)
            .field("stale_hits", &self.stale_hits)
            .field("stale_if_error", &self.stale_if_error)
            .field("verified", &self.verified)
            .field("verify_mismatches", &self.verify_mismatches)
            .field("feed_invalidations", &self.feed_invalidations)
            .finish()
    }
}

impl StatsSnapshot {
    /// Reads that bypassed the cache for `reason`.
    ///
    /// ```no_run
    /// use sqlacache_sqlx::Uncached;
    /// # fn demo(cache: &sqlacache_sqlx::CachedPool) {
    /// let stats = cache.stats();
    /// let locking = stats.uncached(Uncached::Locking);
    /// let total: u64 = Uncached::ALL.iter().map(|&reason| stats.uncached(reason)).sum();
    /// assert_eq!(total, stats.bypassed);
    /// # }
    /// ```
    pub fn uncached(&self, reason: Uncached) -> u64 {
        self.bypassed_by_reason[reason.index()]
    }
}

/// Why a typed read went to the database instead of the cache.
///
/// The rule behind every reason: a read is served from the cache only when the cached answer
/// equals what the same read on the raw pool would return on the connection that would run it.
/// When the library cannot be sure of that, the read is not cached, and it is counted here
/// (see [`StatsSnapshot::uncached`]) and reported as a `tracing` event at debug level on the
/// `sqlacache` target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Uncached {
    /// The statement is not one read: it writes, has several statements, or reads no table.
    NotARead,
    /// The analyzer could not read the statement (PostgreSQL may still accept it).
    Unparsable,
    /// `FOR UPDATE`, `FOR SHARE` and the other locking clauses.
    Locking,
    /// A function that is not immutable by `pg_proc.provolatile` (or not known to the catalog):
    /// `random()`, `nextval()`, a user function reading other tables.
    Volatile,
    /// The result depends on the clock, through no function call: `CURRENT_DATE` and the other
    /// SQL value functions, `'now'` or `'today'` in any spelling, a bound `'now'`. (A function
    /// such as `now()` is not immutable: [`Uncached::Volatile`].)
    Clock,
    /// `TABLESAMPLE`: a different sample on every run.
    Sample,
    /// A relation that is not a plain table (view, materialized view, foreign table).
    NotATable,
    /// A table with row-level security (or one in a partition or inheritance family that has
    /// it): rows depend on the role and settings of the session.
    RowSecurity,
    /// The configuration disables the table, or the operation for one of its tables.
    Disabled,
    /// A table name that the catalog does not know.
    UnknownTable,
    /// A statement sent through the pool left its connection inside a transaction (a
    /// hand-written `BEGIN`), or changed the settings of the sessions opened from now on
    /// (`ALTER ROLE .. SET`): the pool's connections may now differ, so the pool stops caching.
    /// (Other session changes never reach the pool's connections: see the connection rule.)
    Session,
    /// An argument could not be serialized into the cache key.
    Arguments,
    /// The row type's stored form did not read back to the same value.
    Unstorable,
    /// A read into a model (a `Cacheable` type) whose settings could not be applied when it was
    /// first used without `.model::<T>()`: its table is missing, its key is not the table's
    /// primary key, or another model of the table declares other settings. One `warn` event
    /// says which.
    BadModel,
    /// The pool has a change feed, and a table the read depends on (or a member of its
    /// family) does not have the feed's triggers: writes to it made elsewhere would not be seen.
    NotInFeed,
    /// PostgreSQL could not confirm what the read depends on: the probe that asks it failed (the
    /// role lacks the `TEMP` privilege on the database, say; one debug event says why), or it
    /// named a relation the analyzer did not find. A statement planned inside a transaction is
    /// not probed (reads there are never cached anyway).
    Unproven,
    /// A read run through sqlx's own API with the pool as its executor
    /// (`sqlx::query_as(..).fetch_all(&cache)`): sqlx does not say what type the rows become,
    /// so it is never cached. Use `cache.query_as` to cache it.
    PlainSqlx,
}

impl Uncached {
    /// How many reasons there are.
    pub const COUNT: usize = 17;

    /// Every reason, in index order.
    pub const ALL: [Uncached; Uncached::COUNT] = [
        Uncached::NotARead,
        Uncached::Unparsable,
        Uncached::Locking,
        Uncached::Volatile,
        Uncached::Clock,
        Uncached::Sample,
        Uncached::NotATable,
        Uncached::RowSecurity,
        Uncached::Disabled,
        Uncached::UnknownTable,
        Uncached::Session,
        Uncached::Arguments,
        Uncached::Unstorable,
        Uncached::BadModel,
        Uncached::NotInFeed,
        Uncached::Unproven,
        Uncached::PlainSqlx,
    ];

    /// The position of this reason in [`StatsSnapshot::bypassed_by_reason`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Live counters. Cheap to update from many threads: each thread adds to one of several
/// stripes on cache lines of their own, so hits on different cores do not contend for one
/// counter; a snapshot sums the stripes.
#[derive(Debug, Default)]
pub struct Stats {
    stripes: [Stripe; STRIPES],
}

const STRIPES: usize = 16;
/// The named counters, then one per [`Uncached`] reason.
const NAMED: usize = 21;
const COUNTERS: usize = NAMED + Uncached::COUNT;

/// One thread's share of the counters, alone on its cache lines.
#[derive(Debug)]
#[repr(align(128))]
struct Stripe([AtomicU64; COUNTERS]);

impl Default for Stripe {
    fn default() -> Stripe {
        Stripe(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

fn stripe_index() -> usize {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Relaxed) % STRIPES;
    }
    INDEX.with(|i| *i)
}

/// One counter that many threads add to without contending for a cache line: each thread adds
/// to one of `TALLY_STRIPES` cells of its own line; reading it sums them (128 bytes a stripe).
///
/// ```
/// let hits = sqlacache_core::Tally::default();
/// std::thread::scope(|s| for _ in 0..4 { s.spawn(|| for _ in 0..1000 { hits.add() }); });
/// assert_eq!(hits.get(), 4000);
/// ```
#[derive(Debug, Default)]
pub struct Tally([TallyCell; TALLY_STRIPES]);

const TALLY_STRIPES: usize = 8;

#[derive(Debug, Default)]
#[repr(align(128))]
struct TallyCell(AtomicU64);

impl Tally {
    /// Adds one.
    #[inline]
    pub fn add(&self) {
        self.0[stripe_index() % TALLY_STRIPES].0.fetch_add(1, Relaxed);
    }

    /// The sum.
    pub fn get(&self) -> u64 {
        self.0.iter().map(|cell| cell.0.load(Relaxed)).sum()
    }
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
                let bypassed_by_reason: [u64; Uncached::COUNT] =
                    std::array::from_fn(|i| self.sum(NAMED + i));
                StatsSnapshot {
                    $($field: self.sum($index),)*
                    bypassed: bypassed_by_reason.iter().sum(),
                    bypassed_by_reason,
                }
            }
        }
    };
}

counters! {
    0: hit => hits,
    1: miss => misses,
    2: strict_deadline => strict_deadlines,
    3: fill_rejected => fills_rejected,
    4: invalidation => invalidations,
    5: full_invalidation => full_invalidations,
    6: corrupt_entry => corrupt_entries,
    7: statement_analyzed => statements_analyzed,
    8: widen => widened,
    9: coalesce => coalesced,
    10: redis_hit => redis_hits,
    11: redis_error => redis_errors,
    12: degrade => degraded,
    13: publish => published,
    14: receive => received,
    15: tier_drop => tier_drops,
    16: stale_hit => stale_hits,
    17: stale_on_error => stale_if_error,
    18: verify_equal => verified,
    19: verify_mismatch => verify_mismatches,
    20: feed_invalidation => feed_invalidations,
}

impl Stats {
    /// Counts a read that went to the database for `reason` (the caller reports it, with the
    /// statement and the row type).
    pub fn bypass(&self, reason: Uncached) {
        self.add(NAMED + reason.index());
    }
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

    #[test]
    fn debug_names_the_reasons_counted() {
        let stats = Stats::default();
        stats.bypass(Uncached::Volatile);
        stats.bypass(Uncached::Volatile);
        stats.bypass(Uncached::PlainSqlx);
        stats.hit();
        let text = format!("{:?}", stats.snapshot());
        assert!(text.contains("bypassed_by_reason: {Volatile: 2, PlainSqlx: 1}"), "{text}");
        assert!(text.contains("hits: 1"), "{text}");
        assert!(!text.contains("Locking"), "reasons not counted are left out: {text}");
    }

    #[test]
    fn every_reason_has_its_own_counter() {
        let stats = Stats::default();
        for (i, reason) in Uncached::ALL.into_iter().enumerate() {
            assert_eq!(reason.index(), i);
            for _ in 0..=i {
                stats.bypass(reason);
            }
        }
        let snapshot = stats.snapshot();
        for (i, reason) in Uncached::ALL.into_iter().enumerate() {
            assert_eq!(snapshot.uncached(reason), i as u64 + 1, "{reason:?}");
        }
        assert_eq!(snapshot.bypassed, (1..=Uncached::COUNT as u64).sum::<u64>());
        assert_eq!(snapshot.hits + snapshot.widened, 0);
    }
}
