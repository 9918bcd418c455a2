//! Strict consistency across processes: a write returns only once every other process that
//! keeps an in-process tier has dropped what it invalidates, or can no longer serve it.
//!
//! A writer publishes its invalidation and learns, in the same round trip, which members were
//! registered then (see `sqlacache_core::redis`). Each member acknowledges once it has applied
//! the message; the writer returns when every member acknowledged, or at its **deadline**: a
//! lease (with a margin for clock rates) after Redis answered. A member that has not heard the
//! message by then has stopped serving its in-process tier, because the bus is ordered: every
//! own heartbeat it has heard back was published before the write's message, so sent before
//! the writer got its answer, and it trusts its tier only for a lease after that send time.
//! Acknowledgements only make the healthy case fast; a crashed, frozen or partitioned member
//! costs write latency (the deadline), never freshness.

#[cfg(feature = "redis")]
pub(crate) use acks::{deadline, Acks};

/// What a write through a pool with Redis guarantees to reads in other processes.
///
/// Within one process, and with Redis alone (no in-process tier), every read that starts after
/// a write returned sees it, in either mode. The modes differ for the in-process tiers of other
/// processes:
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), sqlacache_sqlx::Error> {
/// use sqlacache_sqlx::{CachedPool, Consistency};
/// let cache = CachedPool::builder(pool)
///     .redis("redis://127.0.0.1:6379")
///     .consistency(Consistency::Strict)
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Consistency {
    /// A write returns once Redis is invalidated and the other processes are told; they drop
    /// their in-process copies when the message arrives (usually within a millisecond), and
    /// one that cannot hear it stops serving its in-process tier within the lease.
    #[default]
    Lease,
    /// A write returns only once every other process that keeps an in-process tier has
    /// dropped its copies and acknowledged, or a lease has passed (then one that did not
    /// acknowledge can no longer serve them). A read that starts after a write returned, in
    /// any process, sees the write. See the README's "Several processes" for the limits.
    Strict,
}

/// A writer's side: acknowledgements awaited, and the deadline.
#[cfg(feature = "redis")]
mod acks {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tokio::sync::Notify;
    use tokio::time::Instant;

    /// The writes of this pool waiting for acknowledgements, by message number.
    #[derive(Default)]
    pub(crate) struct Acks {
        waiting: Mutex<HashMap<u64, Waiting>>,
    }

    #[derive(Default)]
    struct Waiting {
        heard: Vec<u64>,
        /// The members still to acknowledge, once the publisher's answer named them: only the
        /// last one wakes the writer (each wake-up is a thread woken on another core).
        missing: Option<Vec<u64>>,
        notify: Arc<Notify>,
    }

    impl Acks {
        fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiting>> {
            self.waiting.lock().unwrap_or_else(|e| e.into_inner())
        }

        /// Starts collecting the acknowledgements of message `seq`, before it is sent (one may
        /// arrive before the publisher's answer).
        pub fn expect(&self, seq: u64) -> Expected<'_> {
            self.waiting().entry(seq).or_default();
            Expected { acks: self, seq }
        }

        /// `member` acknowledged message `seq`.
        pub fn heard(&self, member: u64, seq: u64) {
            if let Some(waiting) = self.waiting().get_mut(&seq) {
                match &mut waiting.missing {
                    Some(missing) => {
                        missing.retain(|m| *m != member);
                        if missing.is_empty() {
                            waiting.notify.notify_one();
                        }
                    }
                    None => waiting.heard.push(member),
                }
            }
        }
    }

    /// The acknowledgements of one message; see [`Acks::expect`].
    pub(crate) struct Expected<'a> {
        acks: &'a Acks,
        seq: u64,
    }

    impl Expected<'_> {
        /// Waits until each of `members` acknowledged, or `deadline`; whether all did.
        pub async fn all(&self, members: &[u64], deadline: Instant) -> bool {
            let notify = {
                let mut waiting = self.acks.waiting();
                let Some(waiting) = waiting.get_mut(&self.seq) else { return false };
                let missing: Vec<u64> = members.iter().copied().filter(|m| !waiting.heard.contains(m)).collect();
                if missing.is_empty() {
                    return true;
                }
                waiting.missing = Some(missing);
                waiting.notify.clone()
            };
            // `notify_one` stores a permit: the last acknowledgement, heard after the lock was
            // released, still wakes it.
            tokio::time::timeout_at(deadline, notify.notified()).await.is_ok()
        }
    }

    impl Drop for Expected<'_> {
        fn drop(&mut self) {
            self.acks.waiting().remove(&self.seq);
        }
    }

    /// The deadline of a strict write whose message was answered (or committed) at `now`: a lease,
    /// one percent for the rates of the clocks, and a millisecond.
    pub(crate) fn deadline(now: Instant, lease: Duration) -> Instant {
        now + lease + lease / 100 + Duration::from_millis(1)
    }
}
