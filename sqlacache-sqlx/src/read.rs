//! The read protocol: answer from a tier or fill, in one place, and `get` by primary key.

use crate::admission::{decide, not_cached, warn_once_per_type};
use crate::cacheable::Cacheable;
use crate::engine::Engine;
use crate::flight::Role;
use crate::plan::Plan;
use crate::registry::ModelOf;
use crate::row::CachedRow;
use crate::row::Stored;
use crate::rowkey::row_of;
use crate::statements::Counters;
use sqlacache_core::key::{Key, KeyBuilder};
use sqlacache_core::{Ops, Tag, Uncached};
use sqlx::postgres::PgArguments;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Distinguishes the kinds of cached call in a key, since they store different shapes.
pub(crate) mod kind {
    pub const GET: u8 = 1;
    pub const ALL: u8 = 2;
    pub const OPTIONAL: u8 = 3;
}

tokio::task_local! {
    /// Set while a typed read's own query runs through the executor, with the plan the read
    /// already made: the statement is not planned again, and it is counted as the read's hit,
    /// miss or reason, not as a plain sqlx read.
    pub(crate) static FILLING: Arc<Plan>;
}

/// Reads the row of `T` with primary key `key`, from the cache when it holds a fresh copy.
pub(crate) async fn get<T: Cacheable>(engine: &Engine, key: T::Key) -> Result<Option<T>, sqlx::Error> {
    let model = &T::MODEL;
    // Before planning: a model used for the first time changes its table's settings.
    // (Both looked up in place: on a hit, neither needs a future of its own.)
    let admitted = match engine.models.known(ModelOf::of::<T>()) {
        Ok(verdict) => verdict,
        Err(unknown) => engine.register(unknown).await,
    };
    let plan = match engine.planner.memoized(&engine.schema, model.get_sql) {
        Some(plan) => plan,
        None => engine.plan_slow(model.get_sql, true).await?,
    };
    // Built in place: a key builder is large, and a hit should not copy it around.
    let mut key_hash = KeyBuilder::new(T::fingerprint());
    let keyed = key_hash.arg(&key);
    let cached = decide(&engine.schema, admitted, &plan, Some(Ops::GET), keyed)
        .and_then(|read| Ok((read, read.single.as_ref().ok_or(Uncached::NotARead)?)));
    // The row identity is hashed only when a fill stores an entry; a hit does not need it.
    let deps = |single: &(u32, Option<Vec<String>>), key: &T::Key| match row_of::<T>(single, key) {
        Some(row) => [Tag::Row(row), Tag::Rows(single.0)],
        // Any write to the table may change this row. (`All` is implicit in every entry; it
        // only fills the array.)
        None => [Tag::Table(single.0), Tag::All],
    };
    let fetch = |key: T::Key| async move {
        let mut args = PgArguments::default();
        T::bind_key(key, &mut args).map_err(sqlx::Error::Encode)?;
        // `get_sql` only reads, so it can run on the pool itself.
        sqlx::query_as_with::<_, T, _>(model.get_sql, args).fetch_optional(&engine.pool).await
    };
    match cached {
        Ok((read, single)) => {
            let id = key_hash.finish(&read.sql, kind::GET);
            let fill = || (deps(single, &key), fetch(key));
            cached_read(engine, &plan.counters, id, read.ttl, fill).await
        }
        Err(reason) => {
            not_cached(engine.stats(), &plan.counters, reason, model.get_sql, std::any::type_name::<T>());
            Box::pin(fetch(key)).await
        }
    }
}

/// Answers a read from the cache or fills it: the freshness protocol in one place.
///
/// A value is stored only if its stored form reads back as itself (see [`Stored`]);
/// otherwise the read counts as [`Uncached::Unstorable`].
///
/// `fill` names the tags the value depends on and makes the future that reads the database
/// (computed there, so a hit never pays for them). It is called only on a miss of the
/// in-process tier, after the stamp is read, so a write that commits while it reads the
/// database makes the store refuse the result. Its future is boxed: database futures are
/// large, and a hit should not carry one.
///
/// With Redis, a miss here looks there next (one round trip that also reads the epochs a
/// fill needs); a value found there is kept here too, stamped before the lookup. A filled
/// value is stored in Redis off the caller's path.
///
/// Concurrent misses of one key run one fill (see [`crate::flight`]): the others wait for it
/// and then look in the stores, where they find its value only if it was accepted.
pub(crate) async fn cached_read<R, D, F, Fut>(
    engine: &Engine,
    counters: &Counters,
    key: Key,
    ttl: Duration,
    fill: F,
) -> Result<R, sqlx::Error>
where
    R: Stored,
    D: AsRef<[Tag]>,
    F: FnOnce() -> (D, Fut),
    Fut: Future<Output = Result<R, sqlx::Error>>,
{
    let (store, stats) = (engine.store(), engine.stats());
    if !engine.feed_trusted() {
        // Writes made elsewhere may not have been heard: neither tier can be trusted.
        stats.degrade();
        counters.degrade();
        return Box::pin(fill().1).await;
    }
    let local = engine.tiers.local_trusted();
    let mut waited = false;
    let lead = loop {
        if let Some(entry) = store.get(key).filter(|_| local) {
            match R::decode(entry.bytes()) {
                Some(value) => {
                    stats.hit();
                    counters.hit();
                    if waited {
                        stats.coalesce();
                    }
                    return Ok(value);
                }
                None => {
                    tracing::warn!("a cached value did not decode; treating it as a miss");
                    stats.corrupt_entry();
                    store.remove(key);
                }
            }
        }
        if waited {
            // The fill waited for was not stored, or no longer holds: read for ourselves,
            // without waiting again, so no read waits for more than one other.
            break None;
        }
        match engine.flights.join(key) {
            Role::Leader(lead) => break Some(lead),
            Role::Waiter(wait) => {
                wait.finished().await;
                waited = true;
            }
        }
    };
    let stamp = store.stamp();
    #[cfg(feature = "test-hooks")]
    if let Some(hook) = &engine.fill_hook {
        hook(crate::engine::FillPoint::Stamped).await;
    }
    let (deps, fill) = fill();
    #[cfg(feature = "redis")]
    let mut epochs = None;
    #[cfg(feature = "redis")]
    if let Some(remote) = &engine.tiers.remote {
        use sqlacache_core::redis::Lookup;
        if !local || !remote.readable() {
            stats.degrade();
        }
        if remote.readable() {
            match remote.lookup(key, deps.as_ref(), ttl, stats).await {
                Some(Lookup::Hit(bytes)) => match R::decode(&bytes) {
                    Some(value) => {
                        stats.hit();
                        stats.redis_hit();
                        counters.hit();
                        counters.redis_hit();
                        if waited {
                            stats.coalesce();
                        }
                        if local {
                            store.put(key, deps.as_ref(), stamp, ttl, bytes);
                        }
                        return Ok(value);
                    }
                    None => {
                        tracing::warn!("a value cached in Redis did not decode; treating it as a miss");
                        stats.corrupt_entry();
                        // Fill against fresh epochs, so the value read now replaces it.
                        epochs = remote.epochs(deps.as_ref(), ttl, stats).await;
                    }
                },
                Some(Lookup::Miss(found)) => epochs = Some(found),
                None => {}
            }
        }
    }
    let started = Instant::now();
    let value = Box::pin(fill).await?;
    let took = started.elapsed();
    #[cfg(feature = "test-hooks")]
    if let Some(hook) = &engine.fill_hook {
        hook(crate::engine::FillPoint::Read).await;
    }
    match value.encode() {
        Some(bytes) => {
            stats.miss();
            counters.miss(took);
            #[cfg(feature = "redis")]
            if let (Some(remote), Some(epochs)) = (&engine.tiers.remote, epochs) {
                // Waiters look once it is stored there.
                remote.put(Arc::downgrade(&engine.tiers.local), key, epochs, ttl, bytes.clone(), lead);
                if local && !store.put(key, deps.as_ref(), stamp, ttl, bytes) {
                    stats.fill_rejected();
                }
                return Ok(value);
            }
            if local && !store.put(key, deps.as_ref(), stamp, ttl, bytes) {
                stats.fill_rejected();
            }
        }
        None => {
            not_cached(stats, counters, Uncached::Unstorable, "", std::any::type_name::<R>());
            warn_once_per_type(
                std::any::type_name::<R>(),
                "values of this type do not read back as themselves from postcard or JSON (a float that is NaN \
                 or infinite in a self-describing field, say); such reads are not cached",
            );
        }
    }
    // Only now may the waiters look in the store.
    drop(lead);
    Ok(value)
}
