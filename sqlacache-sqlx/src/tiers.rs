//! The tiers of a pool (in-process, and shared when it has Redis) and the one surface through
//! which every invalidation passes: [`Tiers::apply`].

use crate::local::{Local, Origin};
use crate::neighbours::Neighbours;
use crate::remote::{Remote, Vouchee};
use futures_core::future::BoxFuture;
use sqlacache_core::Tag;
use std::sync::Arc;

/// The rest of an invalidation, still to be delivered beyond this process; the write that
/// caused it returns once it is done. Dropped unfinished, it counts as not delivered.
pub(crate) type Delivery = BoxFuture<'static, ()>;

/// The in-process tier and, with Redis, the shared tier with its bus; and the other pools of
/// this process that share the in-process bus.
pub(crate) struct Tiers {
    pub local: Arc<Local>,
    pub remote: Option<Arc<Remote>>,
    pub neighbours: Arc<Neighbours>,
}

impl Tiers {
    /// Applies an invalidation here at once and returns what is left to deliver for its
    /// `origin` (see [`Origin`]); `None` when nothing is.
    pub fn apply(&self, tags: &[Tag], origin: Origin) -> Option<Delivery> {
        if tags.is_empty() {
            return None;
        }
        self.local.invalidate(tags, origin);
        if matches!(origin, Origin::Write | Origin::Early) {
            self.neighbours.invalidate(tags);
        }
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.remote {
            match origin {
                Origin::Write => return Some(publish(remote, &self.local, &self.neighbours, tags.to_vec())),
                Origin::Outside => {
                    let (remote, local, tags) = (remote.clone(), self.local.clone(), tags.to_vec());
                    return Some(Box::pin(async move { remote.invalidate_shared(&tags, &local.stats).await }));
                }
                Origin::Early | Origin::Peer => {}
            }
        }
        None
    }

    /// Publishes an invalidation already applied here (by [`Origin::Early`]): to the shared
    /// tier and the other processes.
    pub fn publish(&self, tags: Vec<Tag>) -> Option<Delivery> {
        #[cfg(feature = "redis")]
        if let (Some(remote), false) = (&self.remote, tags.is_empty()) {
            return Some(publish(remote, &self.local, &self.neighbours, tags));
        }
        let _ = tags;
        None
    }

    /// [`Tiers::apply`], delivered before it returns.
    pub async fn apply_now(&self, tags: &[Tag], origin: Origin) {
        if let Some(delivery) = self.apply(tags, origin) {
            delivery.await;
        }
    }

    /// Drops the in-process tier before the change feed is trusted (again): writes made
    /// elsewhere may have been missed. Quietly the `first` time, when nothing was served yet.
    pub fn drop_here(&self, first: bool) {
        self.local.drop_before_trust(first, "the change feed is heard again after it was not trusted");
    }

    /// Empties the shared tier, for writes made elsewhere that the change feed may have missed
    /// and no other pool vouched for.
    pub async fn empty_shared(&self) {
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.remote {
            remote.invalidate_shared(&[Tag::All], &self.local.stats).await;
        }
    }

    /// Whether this pool hears a vouch sent to it.
    pub fn vouchee(&self) -> Vouchee {
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.remote {
            return remote.hears();
        }
        Vouchee::Deaf
    }

    /// Waits up to `within` for a vouch for this pool's change-feed heartbeat sent at `sent`.
    pub async fn vouched(&self, sent: u64, within: std::time::Duration) -> bool {
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.remote {
            return remote.until_vouched(sent, within).await;
        }
        let _ = (sent, within);
        false
    }

    /// Vouches for `member`'s change-feed heartbeat sent at `sent`, if every invalidation
    /// applied to the shared tier is known to be there; whether it did.
    pub fn vouch(&self, member: u64, sent: u64) -> bool {
        #[cfg(feature = "redis")]
        if let Some(remote) = self.remote.as_ref().filter(|r| r.delivered()) {
            remote.vouch(member, sent);
            return true;
        }
        let _ = (member, sent);
        false
    }

    /// Whether the in-process tier may be served now (with two tiers, the bus decides).
    #[inline]
    pub fn local_trusted(&self) -> bool {
        self.remote.as_ref().is_none_or(|r| r.local_trusted())
    }
}

/// Deletes `tags` in Redis and tells the other processes, then invalidates here again.
#[cfg(feature = "redis")]
fn publish(remote: &Arc<Remote>, local: &Arc<Local>, neighbours: &Arc<Neighbours>, tags: Vec<Tag>) -> Delivery {
    // Taken now: dropped unfinished (no runtime left to finish it), it counts as not delivered.
    let pending = remote.pending(tags.clone());
    let (local, neighbours) = (local.clone(), neighbours.clone());
    let span = tracing::debug_span!(target: "sqlacache", "sqlacache.invalidate", sqlacache.tags = tags.len());
    Box::pin(tracing::Instrument::instrument(
        async move {
            pending.publish(&local.stats).await;
            // Between the invalidation here and the one in Redis, a read of this process may have
            // taken the old value from Redis and kept it here, stamped after the first; its own bus
            // message does not come back to it. Invalidating here again, once Redis is done, makes
            // any such copy stale: its stamp was taken before its Redis read, which Redis answered
            // before it applied the invalidation.
            local.store.invalidate(&tags);
            // The same holds for the other pools of this process.
            neighbours.invalidate_again(&tags);
        },
        span,
    ))
}
