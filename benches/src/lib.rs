//! Fixtures shared by the benchmarks: the `bench_users` and `bench_orders` tables and their row
//! type, and a small interleaved timer.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use sqlacache_sqlx::Cacheable;
use sqlx::PgPool;
use std::time::{Duration, Instant};

/// A row of `bench_users`.
#[derive(Debug, Clone, sqlx::FromRow, Serialize, Deserialize, Cacheable)]
#[cache(table = "bench_users")]
pub struct BenchUser {
    /// Primary key.
    #[cache(pk)]
    pub id: i64,
    /// Name.
    pub name: String,
    /// Email.
    pub email: String,
    /// Active flag.
    pub active: bool,
    /// Score, bumped by the write benchmark.
    pub score: i32,
    // `created_at` is left out: `FromRow` ignores extra columns.
}

/// Number of rows in `bench_users`.
pub const USERS: i64 = 10_000;

/// Creates (or recreates) the benchmark tables with [`USERS`] users and one order each.
pub async fn create_fixture(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS bench_orders; DROP TABLE IF EXISTS bench_users;
         CREATE TABLE bench_users (id bigint PRIMARY KEY, name text NOT NULL, email text NOT NULL,
             active boolean NOT NULL, score int NOT NULL, created_at timestamptz NOT NULL);
         INSERT INTO bench_users SELECT g, 'user ' || g, 'user' || g || '@example.com', g % 3 <> 0, 0,
             '2026-01-01'::timestamptz + g * interval '1 minute' FROM generate_series(1, 10000) g;
         CREATE TABLE bench_orders (id bigint PRIMARY KEY, user_id bigint NOT NULL REFERENCES bench_users(id) ON DELETE CASCADE,
             total int NOT NULL);
         INSERT INTO bench_orders SELECT g, g, g % 100 FROM generate_series(1, 10000) g;
         ANALYZE bench_users; ANALYZE bench_orders;",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Latency samples of one benchmarked operation.
#[derive(Debug, Default)]
pub struct Samples(Vec<Duration>);

impl Samples {
    /// Times one run of `f`.
    pub async fn time<F: std::future::Future<Output = ()>>(&mut self, f: F) {
        let start = Instant::now();
        f.await;
        self.0.push(start.elapsed());
    }

    /// The `q` quantile (0.5 for the median).
    pub fn quantile(&mut self, q: f64) -> Duration {
        self.0.sort_unstable();
        let index = ((self.0.len() as f64 - 1.0) * q).round() as usize;
        self.0.get(index).copied().unwrap_or_default()
    }
}
