//! A leased channel: a pool publishes heartbeats on a channel it also listens to, and trusts
//! what it has not heard only for a lease after the send time of its last own heartbeat heard
//! back. The change feed (PostgreSQL `NOTIFY`) and the Redis bus are both such channels; this
//! is what they share: the heartbeat loop and its rate, the silence after which a connection
//! is made again, and when a loss of trust and its end are logged.

use sqlacache_core::bus::Lease;
use std::future::Future;
use std::time::Duration;

/// A channel's lease, its identity on the channel, and its words for the log.
#[derive(Debug)]
pub(crate) struct Channel {
    lease: Lease,
    publisher: u64,
    /// Logged (INFO) when an own heartbeat ends a logged loss of trust.
    back: &'static str,
}

impl Channel {
    /// A channel with a lease of `lease`, not yet trusted; `back` is its log line for the end
    /// of a logged loss.
    pub fn new(lease: Duration, back: &'static str) -> Channel {
        Channel { lease: Lease::new(lease), publisher: fresh_publisher(), back }
    }

    /// This pool on the channel.
    pub fn publisher(&self) -> u64 {
        self.publisher
    }

    /// Now, on the lease's clock (a heartbeat's send time).
    pub fn now(&self) -> u64 {
        self.lease.now()
    }

    /// The lease.
    pub fn lease(&self) -> Duration {
        self.lease.duration()
    }

    /// Whether what was not heard may be trusted now.
    pub fn trusted(&self) -> bool {
        self.lease.trusted()
    }

    /// How often heartbeats are sent: often enough that trust comes back soon after a loss (and
    /// at start), whatever the lease.
    pub fn every(&self) -> Duration {
        (self.lease.duration() / 5).clamp(Duration::from_millis(5), Duration::from_millis(100))
    }

    /// How long the channel may be silent (while its heartbeats are sent) before its connection
    /// counts as dead without an error and is made again.
    pub fn silence(&self) -> Duration {
        self.lease.duration() * 4
    }

    /// Messages may have been missed: trust ends until an own heartbeat comes back. When the
    /// channel had been trusted, `line` is logged (INFO, with `why`), once until trust is back,
    /// and so is the end of the loss.
    pub fn lose(&self, line: &'static str, why: &str) {
        if self.lease.ever_trusted() && !self.lease.lost_announced() {
            tracing::info!(target: "sqlacache", why, "{line}");
            self.lease.lose_announced();
        } else {
            self.lease.lose();
        }
    }

    /// As [`Channel::lose`], for a loss its caller has logged itself: the end is logged.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub fn lose_logged(&self) {
        self.lease.lose_announced();
    }

    /// As [`Channel::lose`], for a loss not worth a log line (a failure already logged, a gap
    /// seen in a publisher's numbers).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub fn lose_quietly(&self) {
        self.lease.lose();
    }

    /// An own heartbeat sent at `sent` was heard back. Returns `Some(first)` when the caller
    /// must first drop what the channel keeps fresh (it was not trusted: messages may have been
    /// missed); `first` is true before it was ever trusted, when nothing was served yet.
    pub fn must_drop(&self) -> Option<bool> {
        (!self.lease.trusted()).then(|| !self.lease.ever_trusted())
    }

    /// Renews the lease with an own heartbeat sent at `sent` (after [`Channel::must_drop`]'s
    /// drop), and logs the end of a logged loss.
    pub fn renew(&self, sent: u64) {
        if self.lease.renew(sent) {
            tracing::info!(target: "sqlacache", "{}", self.back);
        }
    }
}

/// Sends a heartbeat every `every` until `beat` returns `None` (its owner is gone). Each one runs
/// to its end before the next is due (a late one delays the next, it is not made twice); a
/// channel whose heartbeat may hang bounds it itself, where cutting it short is safe.
pub(crate) async fn heartbeats<F, Fut>(every: Duration, mut beat: F)
where
    F: FnMut() -> Option<Fut>,
    Fut: Future<Output = ()>,
{
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(one) = beat() else { return };
        one.await;
    }
}

/// A random id for a pool on a channel.
fn fresh_publisher() -> u64 {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    std::collections::hash_map::RandomState::new()
        .hash_one((std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)))
}
