//! The in-process tier of a pool: its store, its counters, and the one place where an
//! invalidation is applied to it, whatever its origin.

use sqlacache_core::{MemoryStore, Stats, Tag};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where an invalidation comes from; see [`crate::tiers::Tiers::apply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A write through this pool that has committed: applied here, then in the shared tier and
    /// the other processes before the write returns.
    Write,
    /// A write through this pool that may be visible before its transaction ends (a
    /// hand-written `COMMIT` in it): applied here now; the transaction's end publishes it.
    Early,
    /// A write of another process, heard on the bus: applied here only.
    Peer,
    /// A write made outside every pool, heard on the change feed: applied here and in the
    /// shared tier; every process hears the feed itself, so nothing is published.
    Outside,
}

/// Runs just before each invalidation applies (test support).
#[cfg(feature = "test-hooks")]
pub(crate) type InvalidateHook = std::sync::Arc<dyn Fn() + Send + Sync>;

/// How often one cause of a dropped in-process tier is logged at most.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

/// The in-process tier and the counters of one pool.
pub(crate) struct Local {
    pub store: MemoryStore,
    pub stats: Stats,
    /// When each cause of a dropped tier was last logged, and the drops since.
    drops_logged: Mutex<Vec<(&'static str, Option<Instant>, u64)>>,
    #[cfg(feature = "test-hooks")]
    pub invalidate_hook: Option<InvalidateHook>,
}

impl Local {
    /// An empty tier holding at most `capacity` bytes.
    pub fn new(capacity: u64) -> Local {
        Local {
            store: MemoryStore::new(capacity),
            stats: Stats::default(),
            drops_logged: Mutex::default(),
            #[cfg(feature = "test-hooks")]
            invalidate_hook: None,
        }
    }

    /// Applies an invalidation here: every origin passes through this, with the same counters
    /// and hook.
    pub fn invalidate(&self, tags: &[Tag], origin: Origin) {
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
        match origin {
            Origin::Peer => self.stats.receive(),
            Origin::Outside => self.stats.feed_invalidation(),
            Origin::Write | Origin::Early => {}
        }
        tracing::trace!(tags = tags.len(), ?origin, "invalidated");
    }

    /// Drops the tier before a channel is trusted (again): as [`Local::drop_all`], but quietly
    /// the `first` time, when nothing was served yet.
    pub fn drop_before_trust(&self, first: bool, why: &'static str) {
        if first {
            self.store.invalidate(&[Tag::All]);
        } else {
            self.drop_all(why);
        }
    }

    /// Drops the tier: invalidations may have been missed. `why` names the cause; each cause is
    /// logged at most once every ten seconds (with how many drops it caused meanwhile), since
    /// an outage drops the tier at every heartbeat.
    pub fn drop_all(&self, why: &'static str) {
        self.store.invalidate(&[Tag::All]);
        self.stats.tier_drop();
        let now = Instant::now();
        let mut logged = self.drops_logged.lock().unwrap_or_else(|e| e.into_inner());
        let entry = match logged.iter().position(|(cause, ..)| *cause == why) {
            Some(at) => &mut logged[at],
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
}
