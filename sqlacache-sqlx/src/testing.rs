//! Test support, with the `test-hooks` feature only: probes into a pool's state and hooks into
//! its fills and invalidations, for tests that drive interleavings on purpose. Not part of the
//! supported API.

use crate::builder::CachedPoolBuilder;
use crate::handle::CachedPool;
use std::sync::Arc;

pub use crate::engine::FillPoint;

/// Hooks a test sets on a pool before it is built.
pub trait Hooks: Sized {
    /// Runs `hook` at each [`FillPoint`] of every cache fill.
    fn fill_hook(
        self,
        hook: impl Fn(FillPoint) -> futures_core::future::BoxFuture<'static, ()> + Send + Sync + 'static,
    ) -> Self;

    /// Runs `hook` (blocking its thread) just before each invalidation applies.
    fn invalidate_hook(self, hook: impl Fn() + Send + Sync + 'static) -> Self;

    /// The pool stands for a process of its own: it joins no in-process bus, so the other
    /// pools of the test hear of its writes only as other processes would.
    fn separate_process(self) -> Self;
}

impl Hooks for CachedPoolBuilder {
    fn fill_hook(
        mut self,
        hook: impl Fn(FillPoint) -> futures_core::future::BoxFuture<'static, ()> + Send + Sync + 'static,
    ) -> Self {
        self.fill_hook = Some(Arc::new(hook));
        self
    }

    fn invalidate_hook(mut self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.invalidate_hook = Some(Arc::new(hook));
        self
    }

    fn separate_process(mut self) -> Self {
        self.separate = true;
        self
    }
}

/// What a test may ask a pool about its state.
#[allow(async_fn_in_trait)]
pub trait Probe {
    /// Abandoned writes and commits that have not yet finished and invalidated.
    fn background_writes_for_tests(&self) -> usize;
    /// The backend process id of the change feed's listener (0 while it has none or without a
    /// feed).
    fn feed_listener_pid_for_tests(&self) -> u32;
    /// Waits until every write committed before this call has come through the change feed and
    /// been applied (at once without a feed).
    async fn feed_sync_for_tests(&self) -> Result<(), sqlx::Error>;
    /// Whether the change feed has been heard within the lease (true without one).
    fn feed_trusted_for_tests(&self) -> bool;
    /// Whether Redis answers and, with two tiers, the in-process tier is trusted (the bus was
    /// heard within the lease). Always true without Redis.
    fn tiers_ready_for_tests(&self) -> bool;
    /// This pool on the bus (its publisher id and the number of the last message it tried to
    /// publish); `None` without Redis.
    fn bus_position_for_tests(&self) -> Option<(u64, u64)>;
    /// The number of the last message this pool heard from `publisher`.
    fn heard_from_for_tests(&self, publisher: u64) -> u64;
    /// Whether Redis answers this pool's heartbeats (its breaker may still be open while it
    /// settles). Always true without Redis.
    fn redis_answering_for_tests(&self) -> bool;
    /// Overwrites every cached value with bytes that do not decode.
    fn scramble_entries_for_tests(&self);
}

impl Probe for CachedPool {
    fn background_writes_for_tests(&self) -> usize {
        self.engine.background_writes()
    }

    fn feed_listener_pid_for_tests(&self) -> u32 {
        self.engine.feed.as_ref().map_or(0, |f| f.listener_pid())
    }

    async fn feed_sync_for_tests(&self) -> Result<(), sqlx::Error> {
        match &self.engine.feed {
            Some(feed) => feed.sync(&self.engine.pool, self.engine.schema.fed_oids()).await,
            None => Ok(()),
        }
    }

    fn feed_trusted_for_tests(&self) -> bool {
        self.engine.feed_trusted()
    }

    fn tiers_ready_for_tests(&self) -> bool {
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.engine.tiers.remote {
            return remote.ready();
        }
        true
    }

    fn bus_position_for_tests(&self) -> Option<(u64, u64)> {
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.engine.tiers.remote {
            return Some(remote.position());
        }
        None
    }

    fn heard_from_for_tests(&self, publisher: u64) -> u64 {
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.engine.tiers.remote {
            return remote.heard_from(publisher);
        }
        let _ = publisher;
        0
    }

    fn redis_answering_for_tests(&self) -> bool {
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.engine.tiers.remote {
            return remote.answering();
        }
        true
    }

    fn scramble_entries_for_tests(&self) {
        self.engine.store().scramble_for_tests();
    }
}
