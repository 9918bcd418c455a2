//! Query caching with automatic, fine-grained invalidation for sqlx + PostgreSQL.
//!
//! Swap [`sqlx::PgPool`] for [`CachedPool`]: every write through it invalidates exactly the
//! cached reads it may change, before the write returns; the typed reads
//! ([`CachedPool::get`], [`CachedPool::query_as`], [`CachedPool::query_scalar`], [`query_as!`])
//! are served from an in-process cache when it holds a fresh copy.
//!
//! ```no_run
//! use sqlacache_sqlx::{Cacheable, CachedPool};
//!
//! #[derive(sqlx::FromRow, serde::Serialize, serde::Deserialize, Cacheable)]
//! #[cache(table = "users", ops(get, fetch, count), ttl = 900)]
//! struct User {
//!     #[cache(pk)]
//!     id: i64,
//!     name: String,
//! }
//!
//! # async fn demo(pool: sqlx::PgPool) -> Result<(), sqlacache_sqlx::Error> {
//! let cache = CachedPool::builder(pool).model::<User>().build().await?;
//! let before = cache.get::<User>(1).await?;            // miss: read and cached
//! sqlx::query("UPDATE users SET name = $1 WHERE id = $2")
//!     .bind("Ada")
//!     .bind(1_i64)
//!     .execute(&cache)                                  // invalidates users row 1
//!     .await?;
//! let after = cache.get::<User>(1).await?;             // fresh
//! # Ok(()) }
//! ```
//!
//! See the README for the consistency guarantees and their limits.
#![forbid(unsafe_code)]

mod catalog;
mod error;
mod executor;
mod macros;
mod plan;
mod pool;
mod query;
mod transaction;

pub use error::Error;
#[cfg(feature = "test-hooks")]
pub use pool::FillPoint;
pub use pool::{CachedPool, CachedPoolBuilder};
pub use query::{CachedMap, CachedQueryAs, CachedQueryScalar};
pub use sqlacache_core::{Ops, StatsSnapshot, Uncached};
pub use sqlacache_derive::Cacheable;
pub use transaction::{CachedConnection, CachedTransaction};

/// What `#[derive(Cacheable)]` records about a row type.
#[derive(Debug, Clone, Copy)]
pub struct Model {
    /// The table, as SQL (`users`, `app.users`).
    pub table: &'static str,
    /// Primary-key columns, in key order.
    pub primary_key: &'static [&'static str],
    /// Operations cached for the table when configured with `.model::<T>()`.
    pub ops: Ops,
    /// TTL in seconds, or `None` for the pool's default.
    pub ttl_secs: Option<u64>,
    /// A digest of the type's name and fields; part of every cache key for this type.
    pub fingerprint: u64,
    /// The statement `get` runs: `SELECT * FROM <table> WHERE <pk> = $1 ..`.
    pub get_sql: &'static str,
}

/// A row type whose reads can be cached. Implement it with `#[derive(Cacheable)]`.
///
/// ```
/// use sqlacache_sqlx::{Cacheable, Ops};
///
/// #[derive(sqlx::FromRow, serde::Serialize, serde::Deserialize, Cacheable)]
/// #[cache(table = "memberships", ops(get, fetch), ttl = 60)]
/// struct Membership {
///     #[cache(pk)]
///     org_id: i64,
///     #[cache(pk)]
///     user_id: i64,
///     role: String,
/// }
///
/// assert_eq!(Membership::MODEL.primary_key, ["org_id", "user_id"]);
/// assert_eq!(Membership::MODEL.ops, Ops::GET | Ops::FETCH);
/// assert_eq!(Membership::MODEL.ttl_secs, Some(60));
/// assert_eq!(Membership::MODEL.get_sql, r#"SELECT * FROM memberships WHERE "org_id" = $1 AND "user_id" = $2"#);
/// let key: <Membership as Cacheable>::Key = (1, 2);
/// ```
pub trait Cacheable:
    for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
    + serde::Serialize
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + Unpin
    + 'static
{
    /// The primary key: the key field's type, or a tuple of them for a composite key.
    type Key: serde::Serialize + Send + Sync + 'static;

    /// The table, key, ops, TTL and fingerprint.
    const MODEL: Model;

    /// Binds a key as the arguments of [`Model::get_sql`].
    fn bind_key(key: Self::Key, args: &mut sqlx::postgres::PgArguments) -> Result<(), sqlx::error::BoxDynError>;

    /// The fingerprint that keeps this type's cached bytes apart from every other type's: the
    /// derive's [`Model::fingerprint`] (field names, types as written, `serde` and `sqlx`
    /// attributes) combined with the full path of the type and of each field's type as the
    /// compiler resolved it (so aliases and same-named types in other modules differ).
    /// Computed once.
    fn fingerprint() -> u64;
}

#[doc(hidden)]
pub mod __private {
    pub use crate::query::add_arg;
    pub use sqlacache_core::key::KeyBuilder;

    /// Combines a compile-time fingerprint with the resolved names of a type and its fields.
    pub fn fingerprint(base: u64, names: &[&str]) -> u64 {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&base.to_le_bytes());
        for name in names {
            hasher.update(&(name.len() as u64).to_le_bytes());
            hasher.update(name.as_bytes());
        }
        let mut first = [0u8; 8];
        first.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
        u64::from_le_bytes(first)
    }
    pub use sqlx::error::BoxDynError;
    pub use sqlx::postgres::PgArguments;
    pub use sqlx::Arguments;
}
