//! The read protocol: answer from a tier or fill, in one place, and `get` by primary key.

use crate::admission::{decide, not_cached, warn_once_per_type};
use crate::cacheable::Cacheable;
use crate::config::Stale;
use crate::engine::Engine;
use crate::flight::{Lead, Role};
use crate::outcome::{report, Outcome};
use crate::plan::Plan;
use crate::registry::ModelOf;
use crate::row::CachedRow;
use crate::row::{share_one, Share, Stored};
use crate::rowkey::row_of;
use crate::shadow::{Check, Tier};
use crate::statements::Counters;
use sqlacache_core::key::{Key, KeyBuilder, KeyMaterial};
use sqlacache_core::near::Near;
use sqlacache_core::{Entry, Ops, Tag, Uncached};
use sqlx::postgres::PgArguments;
use std::future::Future;
use std::pin::Pin;
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
pub(crate) async fn get<T: Cacheable>(engine: &Arc<Engine>, key: T::Key) -> Result<Option<T>, sqlx::Error> {
    let model = &T::MODEL;
    // Before planning: a model used for the first time changes its table's settings.
    // (Both looked up in place: on a hit, neither needs a future of its own.)
    let admitted = match engine.models.known(ModelOf::of::<T>()) {
        Ok(verdict) => verdict,
        Err(unknown) => engine.register(unknown).await,
    };
    let plan = match engine.planner.memoized_static(&engine.schema, model.get_sql) {
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
    match cached {
        Ok((read, single)) => {
            let id = key_hash.complete(&read.sql, kind::GET);
            let fill = || (deps(single, &key), fetch::<T>(engine.clone(), key.clone()));
            let again = || Some(Box::pin(fetch::<T>(engine.clone(), key.clone())) as Again<Option<T>>);
            let read =
                Read { counters: &plan.counters, sql: model.get_sql, key: &id, ttl: read.ttl, stale: read.stale };
            cached_read(engine, read, share_one::<T>(), fill, again).await
        }
        Err(reason) => {
            not_cached(engine.stats(), &plan.counters, reason, model.get_sql, std::any::type_name::<T>());
            Box::pin(fetch::<T>(engine.clone(), key)).await
        }
    }
}

/// Reads the row of `T` with primary key `key` from PostgreSQL. (`get_sql` only reads, so it
/// runs on the pool itself.)
async fn fetch<T: Cacheable>(engine: Arc<Engine>, key: T::Key) -> Result<Option<T>, sqlx::Error> {
    let mut args = PgArguments::default();
    T::bind_key(key, &mut args).map_err(sqlx::Error::Encode)?;
    sqlx::query_as_with::<_, T, _>(T::MODEL.get_sql, args).fetch_optional(&engine.pool).await
}

/// A read run again off the caller's path, owning what it needs: the shadow check's reads and
/// the refresh of an entry served stale.
pub(crate) type Again<R> = Pin<Box<dyn Future<Output = Result<R, sqlx::Error>> + Send>>;

/// What [`cached_read`] needs to know of a read besides how to fill it.
pub(crate) struct Read<'a> {
    /// The statement's counters.
    pub counters: &'a Counters,
    /// The statement, for the shadow check's log.
    pub sql: &'a str,
    /// What the key is made of: compared whole with a thread's copies, hashed past them.
    pub key: &'a KeyMaterial,
    pub ttl: Duration,
    pub stale: Stale,
}

/// Answers a read from the cache or fills it: the freshness protocol in one place.
///
/// A thread that hit an entry keeps a copy of it (see [`sqlacache_core::near`]), decoded when
/// `share` can copy the result out of it: its later hits of the same key take that copy, with
/// the store's own test of freshness, and neither hash the key nor decode.
///
/// A value is stored only if its stored form reads back as itself (see [`Stored`]);
/// otherwise the read counts as [`Uncached::Unstorable`].
///
/// `fill` names the tags the value depends on and makes the future that reads the database
/// (computed there, so a hit never pays for them). It is called only on a miss of the
/// in-process tier, after the stamp is read, so a write that commits while it reads the
/// database makes the store refuse the result. Its future is boxed: database futures are
/// large, and a hit should not carry one. `again` makes the same read as a future of its own
/// (`None` when the read cannot own its arguments): called only to refresh an entry served
/// stale and for the shadow check.
///
/// With Redis, a miss here looks there next (one round trip that also reads the epochs a
/// fill needs, two when one of them must be made); a value found there is kept here too,
/// stamped before the lookup. A filled
/// value is stored in Redis off the caller's path.
///
/// Concurrent misses of one key run one fill (see [`crate::flight`]): the others wait for it
/// and then look in the stores, where they find its value only if it was accepted.
///
/// An entry past its TTL is served only in the in-process tier, only while the store still
/// finds every tag it depends on uninvalidated (the same check as a fresh hit's), and only
/// within the windows of its tables: stale-while-revalidate (one refresh per key, on a task of
/// its own, led like a fill) and stale-if-error (when the fill fails to reach PostgreSQL).
pub(crate) async fn cached_read<R, D, F, Fut, A>(
    engine: &Arc<Engine>,
    read: Read<'_>,
    share: Share<R>,
    fill: F,
    again: A,
) -> Result<R, sqlx::Error>
where
    R: Stored + Send + 'static,
    D: AsRef<[Tag]>,
    F: FnOnce() -> (D, Fut),
    Fut: Future<Output = Result<R, sqlx::Error>>,
    A: Fn() -> Option<Again<R>>,
{
    let trusted = engine.feed_trusted() && engine.tiers.local_trusted();
    if trusted {
        if let Some(value) = near_hit(engine, &read, share) {
            count_local_hit(engine, &read, false, &value, Served::Copy, fill, &again);
            return Ok(value);
        }
    }
    let key = read.key.key();
    if trusted {
        if let Some((value, served)) = store_hit(engine, &read, key, share) {
            count_local_hit(engine, &read, false, &value, served, fill, &again);
            return Ok(value);
        }
    }
    // The rest (a wait, the shared tier, a fill) is a future of its own, boxed: a hit's
    // future, which callers move around, stays small.
    Box::pin(miss(engine, read, key, share, fill, again)).await
}

/// Where an in-process hit came from.
enum Served {
    /// This thread's copy.
    Copy,
    /// The store's entry.
    Entry(Entry),
}

/// This thread's copy of the entry, if it has a fresh one.
fn near_hit<R: Stored + 'static>(engine: &Engine, read: &Read<'_>, share: Share<R>) -> Option<R> {
    engine.store().near(read.key.exact()?, |copy: Near<'_, R>| match copy {
        Near::Value(value) => share.and_then(|share| share(value)),
        Near::Bytes(bytes) => R::decode(bytes),
    })
}

/// The store's entry under `key`, decoded (and then copied for this thread), if it has a
/// fresh one. A corrupt entry is counted and removed.
fn store_hit<R: Stored + 'static>(engine: &Engine, read: &Read<'_>, key: Key, share: Share<R>) -> Option<(R, Served)> {
    let store = engine.store();
    let entry = store.get(key)?;
    match R::decode(entry.bytes()) {
        Some(value) => {
            if let Some(exact) = read.key.exact() {
                store.keep_near(exact, &entry, share.and_then(|share| share(&value)));
            }
            Some((value, Served::Entry(entry)))
        }
        None => {
            tracing::warn!("a cached value did not decode; treating it as a miss");
            engine.stats().corrupt_entry();
            store.remove(key);
            None
        }
    }
}

/// Counts and reports an in-process hit, and starts its shadow check when it is sampled.
fn count_local_hit<R, D, X>(
    engine: &Arc<Engine>,
    read: &Read<'_>,
    waited: bool,
    value: &R,
    served: Served,
    fill: impl FnOnce() -> (D, X),
    again: &dyn Fn() -> Option<Again<R>>,
) where
    R: Stored + Send + 'static,
    D: AsRef<[Tag]>,
{
    let stats = engine.stats();
    stats.hit();
    read.counters.hit();
    if waited {
        stats.coalesce();
    }
    report(Outcome::Hit);
    if let Some(sampler) = &engine.shadow {
        if sampler.sampled() {
            let served = match served {
                Served::Entry(entry) => Some(entry.bytes().to_vec()),
                Served::Copy => value.encode(),
            };
            if let Some(bytes) = served {
                shadow(engine, read, read.key.key(), Tier::Local, &bytes, fill, again);
            }
        }
    }
}

/// [`cached_read`] past a miss of this thread's copies and of the store at its first look.
async fn miss<R, D, F, Fut, A>(
    engine: &Arc<Engine>,
    read: Read<'_>,
    key: Key,
    share: Share<R>,
    fill: F,
    again: A,
) -> Result<R, sqlx::Error>
where
    R: Stored + Send + 'static,
    D: AsRef<[Tag]>,
    F: FnOnce() -> (D, Fut),
    Fut: Future<Output = Result<R, sqlx::Error>>,
    A: Fn() -> Option<Again<R>>,
{
    let Read { counters, ttl, stale, .. } = read;
    let (store, stats) = (engine.store(), engine.stats());
    if !engine.feed_trusted() {
        // Writes made elsewhere may not have been heard: neither tier can be trusted.
        stats.degrade();
        counters.degrade();
        report(Outcome::Degraded);
        return Box::pin(fill().1).await;
    }
    let local = engine.tiers.local_trusted();
    let mut waited = false;
    let lead = loop {
        // The first time round, the same look as the one that just missed, unless the
        // tier was not trusted then; afterwards, after a wait for another read's fill.
        if local {
            if let Some((value, served)) = store_hit(engine, &read, key, share) {
                count_local_hit(engine, &read, waited, &value, served, fill, &again);
                return Ok(value);
            }
        }
        if waited {
            // The fill waited for was not stored, or no longer holds: read for ourselves,
            // without waiting again, so no read waits for more than one other.
            break None;
        }
        if local && stale.revalidate > Duration::ZERO {
            if let Some((value, refresh)) = serve_stale(engine, &read, key, &again) {
                if let Some((lead, reread)) = refresh {
                    refresh_in_background(engine, &read, key, fill().0.as_ref().to_vec(), lead, reread);
                }
                return Ok(value);
            }
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
    let keep = stale.keep();
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
                        report(Outcome::RedisHit);
                        if let Some(sampler) = &engine.shadow {
                            if sampler.sampled() {
                                let deps = deps.as_ref().to_vec();
                                shadow(engine, &read, key, Tier::Redis, &bytes, || (deps, ()), &again);
                            }
                        }
                        if local {
                            store.put_keeping(key, deps.as_ref(), stamp, ttl, keep, bytes);
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
    let span = tracing::debug_span!(
        target: "sqlacache",
        "sqlacache.fill",
        db.system.name = "postgresql",
        db.operation.name = "SELECT",
        db.query.text = tracing::field::Empty,
    );
    if engine.trace_text {
        span.record("db.query.text", read.sql);
    }
    let value = match Box::pin(tracing::Instrument::instrument(fill, span)).await {
        Ok(value) => value,
        Err(error) => {
            if local && stale.if_error > Duration::ZERO && unavailable(&error) {
                if let Some(value) = stale_if_error::<R>(engine, &read, key) {
                    return Ok(value);
                }
            }
            return Err(error);
        }
    };
    let took = started.elapsed();
    #[cfg(feature = "test-hooks")]
    if let Some(hook) = &engine.fill_hook {
        hook(crate::engine::FillPoint::Read).await;
    }
    match value.encode() {
        Some(bytes) => {
            stats.miss();
            counters.miss(took);
            report(Outcome::Miss);
            #[cfg(feature = "redis")]
            if let (Some(remote), Some(epochs)) = (&engine.tiers.remote, epochs) {
                // Waiters look once it is stored there.
                remote.put(Arc::downgrade(&engine.tiers.local), key, epochs, ttl, bytes.clone(), lead);
                if local && !store.put_keeping(key, deps.as_ref(), stamp, ttl, keep, bytes) {
                    stats.fill_rejected();
                }
                return Ok(value);
            }
            if local && !store.put_keeping(key, deps.as_ref(), stamp, ttl, keep, bytes) {
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

/// Starts the shadow check of a hit that served `bytes` (see [`crate::shadow`]), when the read
/// can be made again.
fn shadow<R, D, X>(
    engine: &Arc<Engine>,
    read: &Read<'_>,
    key: Key,
    tier: Tier,
    bytes: &[u8],
    deps: impl FnOnce() -> (D, X),
    again: &dyn Fn() -> Option<Again<R>>,
) where
    R: Stored + Send + 'static,
    D: AsRef<[Tag]>,
{
    let (Some(first), Some(second)) = (again(), again()) else { return };
    Check {
        served: bytes.to_vec(),
        tier,
        key,
        deps: deps().0.as_ref().to_vec(),
        ttl: read.ttl,
        sql: read.sql.to_owned(),
        reads: (first, second),
    }
    .spawn(engine);
}

/// A stale value served, with the lead of its refresh and the read that refreshes it when no
/// refresh runs yet.
type ServedStale<R> = (R, Option<(Lead, Again<R>)>);

/// An entry of the in-process tier past its TTL, within the stale-while-revalidate window and
/// never once invalidated, counted as served; with the lead of its refresh and the read that
/// refreshes it when no refresh runs yet.
fn serve_stale<R: Stored>(
    engine: &Engine,
    read: &Read<'_>,
    key: Key,
    again: &dyn Fn() -> Option<Again<R>>,
) -> Option<ServedStale<R>> {
    let entry = engine.store().get_expired(key)?;
    if entry.expired_for(Instant::now()) > read.stale.revalidate {
        return None;
    }
    let value = R::decode(entry.bytes())?;
    // The refresh leads the key's flight: a miss of the same key meanwhile waits for it, and
    // the other stale readers find it running and start none.
    let refresh = match engine.flights.join(key) {
        Role::Leader(lead) => Some((lead, again()?)),
        Role::Waiter(_) => None,
    };
    count_stale(engine, read, Outcome::StaleHit);
    Some((value, refresh))
}

/// Counts an answer from an entry past its TTL, and reports it.
fn count_stale(engine: &Engine, read: &Read<'_>, outcome: Outcome) {
    let stats = engine.stats();
    stats.hit();
    if outcome == Outcome::StaleIfError {
        stats.stale_on_error();
    } else {
        stats.stale_hit();
    }
    read.counters.hit();
    read.counters.stale_hit();
    report(outcome);
}

/// Fills the entry again on a task of its own, under the fill protocol (stamp first, refused if
/// a write invalidated what it read since), holding the key's flight until it is stored.
fn refresh_in_background<R: Stored + Send + 'static>(
    engine: &Arc<Engine>,
    read: &Read<'_>,
    key: Key,
    deps: Vec<Tag>,
    lead: Lead,
    reread: Again<R>,
) {
    let (engine, ttl, keep) = (engine.clone(), read.ttl, read.stale.keep());
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    runtime.spawn(async move {
        let store = engine.store();
        let stamp = store.stamp();
        #[cfg(feature = "test-hooks")]
        if let Some(hook) = &engine.fill_hook {
            hook(crate::engine::FillPoint::Refreshing).await;
        }
        if let Ok(value) = reread.await {
            // Refused, as any fill, if a write invalidated what it read since the stamp.
            if let Some(bytes) = value.encode() {
                if !store.put_keeping(key, &deps, stamp, ttl, keep, bytes) {
                    engine.stats().fill_rejected();
                }
            }
        }
        drop(lead);
    });
}

/// After a fill failed to reach PostgreSQL: the in-process entry past its TTL, within the
/// stale-if-error window and not invalidated (checked now, after the failure).
fn stale_if_error<R: Stored>(engine: &Engine, read: &Read<'_>, key: Key) -> Option<R> {
    let entry = engine.store().get_expired(key)?;
    if entry.expired_for(Instant::now()) > read.stale.if_error {
        return None;
    }
    let value = R::decode(entry.bytes())?;
    count_stale(engine, read, Outcome::StaleIfError);
    tracing::debug!(target: "sqlacache", statement = read.sql, "PostgreSQL failed; an expired entry was served");
    Some(value)
}

/// Whether an error says PostgreSQL could not be reached or could not serve at all (not that
/// it refused this read): only then may an expired entry stand in for it.
fn unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // Connection exceptions, shutdowns, "cannot connect now", too many connections.
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::unavailable;

    #[test]
    fn only_errors_of_reaching_postgres_let_an_expired_entry_stand_in() {
        let io = sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset"));
        assert!(unavailable(&io) && unavailable(&sqlx::Error::PoolTimedOut) && unavailable(&sqlx::Error::PoolClosed));
        for refused in
            [sqlx::Error::RowNotFound, sqlx::Error::ColumnNotFound("x".into()), sqlx::Error::Protocol("?".into())]
        {
            assert!(!unavailable(&refused), "{refused:?}");
        }
    }
}
