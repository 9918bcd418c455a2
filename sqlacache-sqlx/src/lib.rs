//! Query caching with automatic, fine-grained invalidation for sqlx + PostgreSQL.
//!
//! Swap [`sqlx::PgPool`] for [`CachedPool`]: every write through it invalidates exactly the
//! cached reads it may change, before the write returns; the typed reads
//! ([`CachedPool::get`], [`query_as()`], [`query_scalar()`], [`query_as!`])
//! are served from an in-process cache when it holds a fresh copy.
//!
//! Row types: [`Cacheable`] (`#[derive(Cacheable)]`) for a table's rows, read by primary key
//! with `get`; [`CachedRow`] (`#[derive(CachedRow)]`) for any other row, such as a join
//! result; tuples and scalars as they are.
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
//! With the `redis` feature (`redis-tls` for `rediss://`), `CachedPoolBuilder::redis` shares
//! cached values through Redis and keeps the in-process tiers of several processes fresh for
//! each other.
//!
//! See the README for the consistency guarantees and their limits.
#![forbid(unsafe_code)]

mod admission;
mod builder;
mod cacheable;
mod catalog;
mod channel;
mod config;
mod engine;
mod error;
mod executor;
mod explain;
mod feed;
mod flight;
mod handle;
mod local;
mod macros;
mod model;
mod neighbours;
mod outcome;
mod plan;
mod planner;
mod predicate;
mod proof;
mod query;
mod read;
mod registry;
mod remote;
mod row;
mod rowkey;
mod sampler;
mod schema;
mod shadow;
mod statements;
mod strict;
mod tasks;
#[cfg(feature = "metrics")]
mod telemetry;
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub mod testing;
mod tiers;
mod transaction;
#[cfg(feature = "redis")]
mod undelivered;
mod witness;
mod write;

pub use builder::CachedPoolBuilder;
pub use cacheable::Cacheable;
pub use error::{Cause, Error};
pub use explain::Explain;
pub use feed::FeedSql;
pub use handle::CachedPool;
pub use model::Model;
pub use outcome::{outcome_of, Outcome};
pub use query::{query_as, query_scalar, CachedMap, CachedQueryAs, CachedQueryScalar};
pub use row::{CachedRow, Storable};
pub use sqlacache_core::{Ops, StatsSnapshot, Uncached};
pub use sqlacache_derive::{Cacheable, CachedRow};
pub use statements::StatementStats;
pub use strict::Consistency;
pub use transaction::{CachedConnection, CachedTransaction};

/// The README's Rust examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

#[doc(hidden)]
pub mod __private {
    pub use crate::query::{add_arg, ReadKey};

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

    /// Asks whether `T` implements `Clone` where `T` is known (see the derive's `__cloner`).
    pub struct Probe<T>(pub core::marker::PhantomData<T>);

    /// Found first, by value, when `T: Clone`.
    pub trait ViaClone<T> {
        fn cloner(&self) -> Option<fn(&T) -> T>;
    }

    impl<T: Clone> ViaClone<T> for Probe<T> {
        fn cloner(&self) -> Option<fn(&T) -> T> {
            Some(T::clone)
        }
    }

    /// Found through a reference otherwise.
    pub trait NotClone<T> {
        fn cloner(&self) -> Option<fn(&T) -> T>;
    }

    impl<T> NotClone<T> for &Probe<T> {
        fn cloner(&self) -> Option<fn(&T) -> T> {
            None
        }
    }
    pub use sqlx::postgres::PgArguments;
    pub use sqlx::Arguments;
}
