//! The shadow check: a sampled fraction of hits is read again from PostgreSQL off the caller's
//! path and compared with what was served, so a deployment can prove the cache's answers on its
//! own traffic.
//!
//! A difference alone proves nothing: a write through the pool may have committed after the
//! hit and not yet invalidated (it does so before it returns). So a difference is counted only
//! when it lasts: after [`SETTLE`], the entry must still be served, and a second read must still
//! differ from it. Then it is counted, logged with the SQL and the key, and what the entry
//! depends on is invalidated in every tier and process (wider than the one entry, never
//! narrower).

use crate::engine::Engine;
use crate::local::Origin;
use crate::row::Stored;
use sqlacache_core::key::Key;
use sqlacache_core::Tag;
use std::sync::Arc;
use std::time::Duration;

/// How long a difference must last to be counted: far longer than a write through the pool
/// takes from its commit to its invalidation.
const SETTLE: Duration = Duration::from_secs(1);

/// Where the checked hit came from, to ask whether it is still served.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Tier {
    Local,
    #[cfg(feature = "redis")]
    Redis,
}

/// One sampled hit to check.
pub(crate) struct Check<F> {
    pub served: Vec<u8>,
    pub tier: Tier,
    pub key: Key,
    pub deps: Vec<Tag>,
    pub ttl: Duration,
    pub sql: String,
    /// Two reads of the same statement with the same arguments.
    pub reads: (F, F),
}

impl<R, F> Check<F>
where
    R: Stored + Send + 'static,
    F: std::future::Future<Output = Result<R, sqlx::Error>> + Send + 'static,
{
    /// Runs the check on a task of its own.
    pub fn spawn(self, engine: &Arc<Engine>) {
        let engine = engine.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(self.run(engine));
        }
    }

    async fn run(self, engine: Arc<Engine>) {
        let Check { served, tier, key, deps, ttl, sql, reads: (first, second) } = self;
        let stats = engine.stats();
        let differs = |read: Result<R, sqlx::Error>| match read {
            // An error or a value that cannot be stored proves nothing either way.
            Ok(value) => value.encode().map(|bytes| bytes != served),
            Err(_) => None,
        };
        match differs(first.await) {
            Some(false) => return stats.verify_equal(),
            None => return,
            Some(true) => {}
        }
        tokio::time::sleep(SETTLE).await;
        if !still_served(&engine, tier, key, &deps, ttl, &served).await || differs(second.await) != Some(true) {
            // Invalidated meanwhile, or equal now: a write that was on its way.
            return;
        }
        stats.verify_mismatch();
        tracing::warn!(
            target: "sqlacache",
            statement = sql,
            key = format_args!("{:032x}", key.0).to_string(),
            "a cached value differs from PostgreSQL (a write the cache did not see?); what it depends on is invalidated"
        );
        engine.tiers.apply_now(&deps, Origin::Write).await;
    }
}

/// Whether the tier that served `served` for `key` would still serve it.
async fn still_served(engine: &Engine, tier: Tier, key: Key, deps: &[Tag], ttl: Duration, served: &[u8]) -> bool {
    match tier {
        Tier::Local => {
            let _ = (deps, ttl);
            engine.store().get(key).is_some_and(|entry| entry.bytes() == served)
        }
        #[cfg(feature = "redis")]
        Tier::Redis => {
            let Some(remote) = &engine.tiers.remote else { return false };
            matches!(
                remote.lookup(key, deps, ttl, engine.stats()).await,
                Some(sqlacache_core::redis::Lookup::Hit(bytes)) if bytes == served
            )
        }
    }
}
