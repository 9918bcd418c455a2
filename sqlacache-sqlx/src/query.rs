//! The typed cached reads: [`CachedQueryAs`], [`CachedQueryScalar`] and the `query_as!` wrapper.

use crate::pool::{kind, ModelOf};
use crate::row::Stored;
use crate::{CachedPool, CachedRow, Storable};
use serde::Serialize;
use sqlacache_core::analyze::ReadOp;
use sqlacache_core::key::KeyBuilder;
use sqlacache_core::{Ops, Uncached};
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{Arguments, Encode, Postgres, SqlStr, Type};
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;

fn op_of(op: ReadOp) -> Ops {
    match op {
        ReadOp::Fetch => Ops::FETCH,
        ReadOp::Count => Ops::COUNT,
        ReadOp::Exists => Ops::EXISTS,
    }
}

/// Looks up `sql`'s plan and either answers from the cache or runs `fill` (through the
/// `CachedPool` executor, so a statement that turns out to write still invalidates). `key` is
/// `Err` when an argument rules caching out; `model` is the row type's model, if it has one.
async fn read<R, F, Fut>(
    pool: &CachedPool,
    sql: &str,
    key: Result<KeyBuilder, Uncached>,
    model: Option<ModelOf>,
    kind: u8,
    fill: F,
) -> Result<R, sqlx::Error>
where
    R: Stored,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<R, sqlx::Error>>,
{
    let shared = &pool.shared;
    // Before planning: a model used for the first time changes its table's settings.
    let admitted = shared.admit_model(model).await;
    let plan = shared.plan(sql, true).await?;
    // A model whose checks failed says so, whatever else its read runs into.
    let cached = admitted.and_then(|()| shared.refusal(&plan)).and_then(|read| {
        if !read.allowed.contains(op_of(read.op)) {
            return Err(Uncached::Disabled);
        }
        Ok((read, key?))
    });
    match cached {
        Ok((read, key)) => {
            let fill = || (&read.deps, crate::executor::FILLING.scope((), fill()));
            shared.cached_read(key.finish(&read.sql, kind), read.ttl, fill).await
        }
        Err(reason) => {
            crate::pool::not_cached(&shared.stats, reason, sql, std::any::type_name::<R>());
            Box::pin(crate::executor::FILLING.scope((), fill())).await
        }
    }
}

/// SQL, arguments and the cache key built from them, bound together.
struct Bound<'p> {
    pool: &'p CachedPool,
    sql: SqlStr,
    args: PgArguments,
    /// Why not, when an argument cannot be part of a key: the read then bypasses the cache.
    key: Result<KeyBuilder, Uncached>,
    /// The row type's model, if it has one.
    model: Option<ModelOf>,
    error: Option<BoxDynError>,
    persistent: bool,
}

impl<'p> Bound<'p> {
    fn new(pool: &'p CachedPool, sql: SqlStr, fingerprint: u64, model: Option<ModelOf>) -> Bound<'p> {
        let key = Ok(KeyBuilder::new(fingerprint));
        Bound { pool, sql, args: PgArguments::default(), key, model, error: None, persistent: true }
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
    fn checked(mut self) -> Result<Bound<'p>, sqlx::Error> {
        match self.error.take() {
            Some(error) => Err(sqlx::Error::Encode(error)),
            None => Ok(self),
        }
    }
}

impl fmt::Debug for Bound<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bound").field("sql", &self.sql.as_str()).field("args", &self.args.len()).finish()
    }
}

/// Adds an argument to a key under construction; the first argument that cannot be keyed
/// decides why the read is not cached.
#[doc(hidden)]
pub fn add_arg<V: Serialize + ?Sized>(key: &mut Result<KeyBuilder, Uncached>, value: &V) {
    if let Err(reason) = key.as_mut().map_or(Ok(()), |k| k.arg(value)) {
        *key = Err(reason);
    }
}

/// A cached query mapping rows to `T`, from [`CachedPool::query_as`].
///
/// Arguments are bound with [`bind`](Self::bind), which also serializes them into the cache
/// key, so they must implement `serde::Serialize` besides sqlx's `Encode`.
#[must_use = "a query does nothing until fetched"]
pub struct CachedQueryAs<'p, T> {
    bound: Bound<'p>,
    row: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for CachedQueryAs<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.bound.fmt(f)
    }
}

/// `bind`, `persistent` and the `fetch_*` methods, shared by the two builders; `$query` is
/// the sqlx constructor that maps rows to `$out`.
macro_rules! builder_methods {
    ($out:ty, $query:path, $all:literal, $optional:literal, $one:literal) => {
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
        pub async fn fetch_all(self) -> Result<Vec<$out>, sqlx::Error> {
            let Bound { pool, sql, args, key, model, persistent, .. } = self.bound.checked()?;
            let fill = || $query(sql.clone(), args).persistent(persistent).fetch_all(pool);
            read(pool, sql.as_str(), key, model, kind::ALL, fill).await
        }

        #[doc = $optional]
        pub async fn fetch_optional(self) -> Result<Option<$out>, sqlx::Error> {
            let Bound { pool, sql, args, key, model, persistent, .. } = self.bound.checked()?;
            let fill = || $query(sql.clone(), args).persistent(persistent).fetch_optional(pool);
            read(pool, sql.as_str(), key, model, kind::OPTIONAL, fill).await
        }

        #[doc = $one]
        pub async fn fetch_one(self) -> Result<$out, sqlx::Error> {
            self.fetch_optional().await?.ok_or(sqlx::Error::RowNotFound)
        }
    };
}

impl<'p, T> CachedQueryAs<'p, T>
where
    T: CachedRow + for<'r> sqlx::FromRow<'r, PgRow>,
{
    pub(crate) fn new(pool: &'p CachedPool, sql: SqlStr) -> Self {
        CachedQueryAs { bound: Bound::new(pool, sql, T::fingerprint(), ModelOf::of::<T>()), row: PhantomData }
    }

    builder_methods!(
        T,
        sqlx::query_as_with::<_, T, _>,
        "All rows.",
        "The first row, if any.",
        "The first row; [`sqlx::Error::RowNotFound`] when there is none."
    );
}

/// A cached query returning one column, from [`CachedPool::query_scalar`].
#[must_use = "a query does nothing until fetched"]
pub struct CachedQueryScalar<'p, O> {
    bound: Bound<'p>,
    output: PhantomData<fn() -> O>,
}

impl<O> fmt::Debug for CachedQueryScalar<'_, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.bound.fmt(f)
    }
}

impl<'p, O> CachedQueryScalar<'p, O>
where
    O: Storable + Send + Unpin + for<'r> sqlx::Decode<'r, Postgres> + Type<Postgres>,
{
    pub(crate) fn new(pool: &'p CachedPool, sql: SqlStr) -> Self {
        // Scalars have no derive: their type's name tells them apart.
        CachedQueryScalar {
            bound: Bound::new(pool, sql, sqlacache_core::key::type_digest::<O>(), None),
            output: PhantomData,
        }
    }

    builder_methods!(
        O,
        sqlx::query_scalar_with::<_, O, _>,
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
    key: Result<KeyBuilder, Uncached>,
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
        key: Result<KeyBuilder, Uncached>,
    ) -> Self {
        CachedMap { sql, map, key, row: PhantomData }
    }

    /// All rows.
    pub async fn fetch_all(self, cache: &CachedPool) -> Result<Vec<T>, sqlx::Error> {
        read(cache, self.sql, self.key, ModelOf::of::<T>(), kind::ALL, || self.map.fetch_all(cache)).await
    }

    /// The first row, if any.
    pub async fn fetch_optional(self, cache: &CachedPool) -> Result<Option<T>, sqlx::Error> {
        read(cache, self.sql, self.key, ModelOf::of::<T>(), kind::OPTIONAL, || self.map.fetch_optional(cache)).await
    }

    /// The first row; [`sqlx::Error::RowNotFound`] when there is none.
    pub async fn fetch_one(self, cache: &CachedPool) -> Result<T, sqlx::Error> {
        self.fetch_optional(cache).await?.ok_or(sqlx::Error::RowNotFound)
    }
}
