//! What `#[derive(Cacheable)]` records about a row type: its table, key, settings and the
//! statement `get` runs.

use sqlacache_core::Ops;

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
    /// `#[cache(swr = ..)]`: seconds an entry past its TTL may still be served while one read
    /// refreshes it in the background (never once invalidated).
    pub swr_secs: Option<u32>,
    /// `#[cache(stale_if_error = ..)]`: seconds an entry past its TTL may still be served while
    /// PostgreSQL fails (never once invalidated).
    pub stale_if_error_secs: Option<u32>,
    /// A digest of the type's name and fields; part of every cache key for this type.
    pub fingerprint: u64,
    /// The statement `get` runs: `SELECT * FROM <table> WHERE <pk> = $1 ..`.
    pub get_sql: &'static str,
}
