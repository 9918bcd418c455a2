//! The typed cached reads: [`CachedQueryAs`], [`CachedQueryScalar`] and the `query_as!` wrapper.

use crate::admission::{decide, not_cached};
use crate::handle::CachedPool;
use crate::predicate::{capture, ArgValue};
use crate::read::{cached_read, kind, Again, Read, FILLING};
use crate::registry::ModelOf;
use crate::row::CachedRow;
use crate::row::Storable;
use crate::row::{share_all, share_one, Share, Stored};
use serde::Serialize;
use sqlacache_core::key::KeyBuilder;
use sqlacache_core::Uncached;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{Arguments, Encode, Postgres, SqlSafeStr, SqlStr, Type};
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;

/// A cached query mapping rows to `T`: as [`sqlx::query_as()`], with the cache given at fetch
/// time. `T` is any [`CachedRow`] (a `#[derive(CachedRow)]` projection or join result, a
/// [`Cacheable`](crate::Cacheable) model, a tuple), whose fingerprint keeps the cached bytes
/// of different row types apart. A write to any table the query reads invalidates the result.
///
/// ```no_run
/// # #[derive(sqlx::FromRow, serde::Serialize, serde::Deserialize, sqlacache_sqlx::Cacheable)]
/// # #[cache(table = "users")]
/// # struct User { #[cache(pk)] id: i64 }
/// # async fn demo(cache: &sqlacache_sqlx::CachedPool) -> Result<(), sqlx::Error> {
/// let active: Vec<User> = sqlacache_sqlx::query_as::<User>("SELECT * FROM users WHERE active = $1")
///     .bind(true)
///     .fetch_all(cache)
///     .await?;
/// # Ok(()) }
/// ```
pub fn query_as<T>(sql: impl SqlSafeStr) -> CachedQueryAs<T>
where
    T: CachedRow + for<'r> sqlx::FromRow<'r, PgRow>,
{
    CachedQueryAs { bound: Bound::new(sql.into_sql_str(), T::fingerprint(), ModelOf::of::<T>()), row: PhantomData }
}

/// A cached query returning one column of type `O` (counts, existence checks, ids): as
/// [`sqlx::query_scalar()`], with the cache given at fetch time.
///
/// ```no_run
/// # async fn demo(cache: &sqlacache_sqlx::CachedPool) -> Result<(), sqlx::Error> {
/// let n: i64 = sqlacache_sqlx::query_scalar("SELECT count(*) FROM users WHERE active").fetch_one(cache).await?;
/// # Ok(()) }
/// ```
pub fn query_scalar<O>(sql: impl SqlSafeStr) -> CachedQueryScalar<O>
where
    O: Storable + Send + Unpin + 'static + for<'r> sqlx::Decode<'r, Postgres> + Type<Postgres>,
{
    // Scalars have no derive: their type's name tells them apart.
    let fingerprint = sqlacache_core::key::type_digest::<O>();
    CachedQueryScalar { bound: Bound::new(sql.into_sql_str(), fingerprint, None), output: PhantomData }
}

/// Plans `sql` and either answers from the cache or runs `fill` (through the `CachedPool`
/// executor, with the plan made here, so a statement that turns out to write still
/// invalidates). `key` is `Err` when an argument rules caching out; `model` is the row type's
/// model, if it has one. `again` makes the same read as a future that owns what it needs, when
/// the call can (see [`cached_read`]).
#[allow(clippy::too_many_arguments)]
async fn read<R, F, Fut, A>(
    cache: &CachedPool,
    sql: &str,
    key: Result<ReadKey, Uncached>,
    model: Option<ModelOf>,
    kind: u8,
    share: Share<R>,
    fill: F,
    again: A,
) -> Result<R, sqlx::Error>
where
    R: Stored + Send + 'static,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<R, sqlx::Error>>,
    A: Fn() -> Option<Again<R>>,
{
    let engine = &cache.engine;
    // Before planning: a model used for the first time changes its table's settings.
    let admitted = engine.admit(model).await;
    let plan = engine.plan(sql, true).await?;
    let keyed = key.as_ref().map(|_| ()).map_err(|reason| *reason);
    match decide(&engine.schema, admitted, &plan, None, keyed) {
        Ok(read) => {
            let ReadKey { key, args } = key.expect("decided");
            // The tags are worked out from the arguments only when the read is filled.
            let fill = || (read.deps.tags(&args), FILLING.scope(plan.clone(), fill()));
            let again = || again().map(|future| Box::pin(FILLING.scope(plan.clone(), future)) as Again<R>);
            let key = key.complete(&read.sql, kind);
            let read = Read { counters: &plan.counters, sql, key: &key, ttl: read.ttl, stale: read.stale };
            cached_read(engine, read, share, fill, again).await
        }
        Err(reason) => {
            not_cached(engine.stats(), &plan.counters, reason, sql, std::any::type_name::<R>());
            Box::pin(FILLING.scope(plan.clone(), fill())).await
        }
    }
}

/// SQL, arguments and the cache key built from them, bound together.
struct Bound {
    sql: SqlStr,
    args: PgArguments,
    /// Why not, when an argument cannot be part of a key: the read then bypasses the cache.
    key: Result<ReadKey, Uncached>,
    /// The row type's model, if it has one.
    model: Option<ModelOf>,
    error: Option<BoxDynError>,
    persistent: bool,
}

impl Bound {
    fn new(sql: SqlStr, fingerprint: u64, model: Option<ModelOf>) -> Bound {
        let key = Ok(ReadKey::new(fingerprint));
        Bound { sql, args: PgArguments::default(), key, model, error: None, persistent: true }
    }

    fn bind<'t, V: Encode<'t, Postgres> + Type<Postgres> + Serialize>(&mut self, value: V) {
        if self.error.is_some() {
            return;
        }
        add_arg(&mut self.key, &value);
        let position = self.args.len() + 1;
        if let Err(error) = self.args.add(value) {
            self.error = Some(format!("Encoding argument ${position} failed: {error}").into());
        }
    }

    /// The bound query, or the error of the first argument that failed to encode.
    fn checked(mut self) -> Result<Bound, sqlx::Error> {
        match self.error.take() {
            Some(error) => Err(sqlx::Error::Encode(error)),
            None => Ok(self),
        }
    }
}

impl fmt::Debug for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bound").field("sql", &self.sql.as_str()).field("args", &self.args.len()).finish()
    }
}

/// A read's cache key under construction, with what each argument says of its PostgreSQL
/// value (for the tags of a read whose conditions pin a tracked column to an argument).
#[doc(hidden)]
pub struct ReadKey {
    key: KeyBuilder,
    args: Vec<ArgValue>,
}

impl ReadKey {
    /// Starts the key of a read into a row type with this fingerprint.
    pub fn new(fingerprint: u64) -> ReadKey {
        ReadKey { key: KeyBuilder::new(fingerprint), args: Vec::new() }
    }
}

/// Adds an argument to a key under construction; the first argument that cannot be keyed
/// decides why the read is not cached.
#[doc(hidden)]
pub fn add_arg<V: Serialize + ?Sized>(key: &mut Result<ReadKey, Uncached>, value: &V) {
    if let Ok(read) = key {
        match read.key.arg(value) {
            Ok(()) => read.args.push(capture(value)),
            Err(reason) => *key = Err(reason),
        }
    }
}

/// A cached query mapping rows to `T`, from [`query_as()`].
///
/// Arguments are bound with [`bind`](Self::bind), which also serializes them into the cache
/// key, so they must implement `serde::Serialize` besides sqlx's `Encode`.
#[must_use = "a query does nothing until fetched"]
pub struct CachedQueryAs<T> {
    bound: Bound,
    row: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for CachedQueryAs<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.bound.fmt(f)
    }
}

/// The body of a builder's `fetch_all` or `fetch_optional`: the read through the cache, filled
/// by sqlx's `$fetch`, and the same read owning its SQL and arguments, for a refresh or a shadow
/// check.
macro_rules! fetch {
    ($self:ident, $cache:ident, $query:path, $fetch:ident, $result:ty, $kind:expr, $share:expr) => {{
        let Bound { sql, args, key, model, persistent, .. } = $self.bound.checked()?;
        let fill = || $query(sql.clone(), args.clone()).persistent(persistent).$fetch($cache);
        let again = || {
            let (sql, args, cache) = (sql.clone(), args.clone(), $cache.clone());
            let again = async move { $query(sql, args).persistent(persistent).$fetch(&cache).await };
            Some(Box::pin(again) as Again<$result>)
        };
        read($cache, sql.as_str(), key, model, $kind, $share, fill, again).await
    }};
}

/// `bind`, `persistent` and the `fetch_*` methods, shared by the two builders; `$query` is
/// the sqlx constructor that maps rows to `$out`.
macro_rules! builder_methods {
    ($out:ty, $query:path, $share_all:expr, $share_one:expr, $all:literal, $optional:literal, $one:literal) => {
        /// Binds the next `$n` argument (also serialized into the cache key).
        pub fn bind<'t, V: Encode<'t, Postgres> + Type<Postgres> + Serialize>(mut self, value: V) -> Self {
            self.bound.bind(value);
            self
        }

        /// Whether the prepared statement is kept on the connection (as sqlx's `persistent`).
        pub fn persistent(mut self, value: bool) -> Self {
            self.bound.persistent = value;
            self
        }

        #[doc = $all]
        pub async fn fetch_all(self, cache: &CachedPool) -> Result<Vec<$out>, sqlx::Error> {
            fetch!(self, cache, $query, fetch_all, Vec<$out>, kind::ALL, $share_all)
        }

        #[doc = $optional]
        pub async fn fetch_optional(self, cache: &CachedPool) -> Result<Option<$out>, sqlx::Error> {
            fetch!(self, cache, $query, fetch_optional, Option<$out>, kind::OPTIONAL, $share_one)
        }

        #[doc = $one]
        pub async fn fetch_one(self, cache: &CachedPool) -> Result<$out, sqlx::Error> {
            // Not through `fetch_optional`: one future less to move on each call.
            let row = fetch!(self, cache, $query, fetch_optional, Option<$out>, kind::OPTIONAL, $share_one)?;
            row.ok_or(sqlx::Error::RowNotFound)
        }
    };
}

impl<T> CachedQueryAs<T>
where
    T: CachedRow + for<'r> sqlx::FromRow<'r, PgRow>,
{
    builder_methods!(
        T,
        sqlx::query_as_with::<_, T, _>,
        share_all::<T>(),
        share_one::<T>(),
        "All rows.",
        "The first row, if any.",
        "The first row; [`sqlx::Error::RowNotFound`] when there is none."
    );
}

/// A cached query returning one column, from [`query_scalar()`].
#[must_use = "a query does nothing until fetched"]
pub struct CachedQueryScalar<O> {
    bound: Bound,
    output: PhantomData<fn() -> O>,
}

impl<O> fmt::Debug for CachedQueryScalar<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.bound.fmt(f)
    }
}

impl<O> CachedQueryScalar<O>
where
    O: Storable + Send + Unpin + 'static + for<'r> sqlx::Decode<'r, Postgres> + Type<Postgres>,
{
    builder_methods!(
        O,
        sqlx::query_scalar_with::<_, O, _>,
        // A column's type has no derive to say whether it clones: its hits decode.
        None,
        None,
        "The value of every row.",
        "The value of the first row, if any.",
        "The value of the first row; [`sqlx::Error::RowNotFound`] when there is none."
    );
}

/// The cached form of a `sqlx::query_as!` query, made by [`query_as!`](crate::query_as!).
#[must_use = "a query does nothing until fetched"]
pub struct CachedMap<'q, T, F> {
    sql: &'static str,
    map: sqlx::query::Map<'q, Postgres, F, PgArguments>,
    key: Result<ReadKey, Uncached>,
    row: PhantomData<fn() -> T>,
}

impl<T, F> fmt::Debug for CachedMap<'_, T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedMap").field("sql", &self.sql).finish_non_exhaustive()
    }
}

impl<'q, T, F> CachedMap<'q, T, F>
where
    T: CachedRow,
    F: FnMut(PgRow) -> Result<T, sqlx::Error> + Send,
{
    #[doc(hidden)]
    pub fn new(
        sql: &'static str,
        map: sqlx::query::Map<'q, Postgres, F, PgArguments>,
        key: Result<ReadKey, Uncached>,
    ) -> Self {
        CachedMap { sql, map, key, row: PhantomData }
    }

    /// All rows.
    pub async fn fetch_all(self, cache: &CachedPool) -> Result<Vec<T>, sqlx::Error> {
        let fill = || self.map.fetch_all(cache);
        read(cache, self.sql, self.key, ModelOf::of::<T>(), kind::ALL, share_all::<T>(), fill, || None).await
    }

    /// The first row, if any.
    pub async fn fetch_optional(self, cache: &CachedPool) -> Result<Option<T>, sqlx::Error> {
        let fill = || self.map.fetch_optional(cache);
        let share = share_one::<T>();
        read(cache, self.sql, self.key, ModelOf::of::<T>(), kind::OPTIONAL, share, fill, || None).await
    }

    /// The first row; [`sqlx::Error::RowNotFound`] when there is none.
    pub async fn fetch_one(self, cache: &CachedPool) -> Result<T, sqlx::Error> {
        self.fetch_optional(cache).await?.ok_or(sqlx::Error::RowNotFound)
    }
}
