//! Fixtures shared by the benchmarks: the `bench_users` and `bench_orders` tables and their row
//! type, and a small interleaved timer.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use sqlacache_core::key::{row_id_of, Key};
use sqlacache_core::{MemoryStore, Tag};
use sqlacache_sqlx::Cacheable;
use sqlx::PgPool;
use std::time::{Duration, Instant};

/// The point read by primary key, as raw sqlx runs it (the cache runs the same text).
pub const POINT: &str = "SELECT * FROM bench_users WHERE id = $1";
/// The 50-row list.
pub const LIST: &str = "SELECT * FROM bench_users WHERE active ORDER BY id LIMIT 50";
/// The count.
pub const COUNT: &str = "SELECT count(*) FROM bench_users WHERE active";
/// The 50-row list with each user as one `jsonb` document, read into [`BenchDoc`]: what the
/// self-describing stored form costs on a hit, beside [`LIST`].
pub const LIST_JSON: &str = "SELECT id, doc FROM bench_docs WHERE active ORDER BY id LIMIT 50";
/// The write by primary key.
pub const WRITE: &str = "UPDATE bench_users SET score = score + 1 WHERE id = $1";
/// A write by primary key to a table with a second tracked column (`user_id` leads an index),
/// whose value the write returns for predicate tags.
pub const WRITE_TRACKED: &str = "UPDATE bench_orders SET total = total + 1 WHERE id = $1";

/// Connects to `DATABASE_URL` (default: the loopback `test` database); the error says how to
/// start PostgreSQL.
pub async fn connect() -> Result<PgPool, Box<dyn std::error::Error + Send + Sync>> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&url).await.map_err(|error| {
        format!(
            "cannot reach PostgreSQL at {url}: {error}\nstart it with: pg_ctlcluster --skip-systemctl-redirect \
             $(ls /etc/postgresql) main start (or set DATABASE_URL to a reachable PostgreSQL)"
        )
        .into()
    })
}

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

/// A row of [`LIST_JSON`]: a `jsonb` column, which is stored as JSON (postcard cannot read a
/// `serde_json::Value` back).
#[derive(Debug, Clone, sqlx::FromRow, Serialize, Deserialize, sqlacache_sqlx::CachedRow)]
pub struct BenchDoc {
    /// Primary key.
    pub id: i64,
    /// The user's columns as one document.
    pub doc: sqlx::types::JsonValue,
}

/// Number of rows in `bench_users`.
pub const USERS: i64 = 10_000;

/// Creates (or recreates) the benchmark tables with [`USERS`] users and one order each.
pub async fn create_fixture(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS bench_docs; DROP TABLE IF EXISTS bench_orders; DROP TABLE IF EXISTS bench_users;
         CREATE TABLE bench_users (id bigint PRIMARY KEY, name text NOT NULL, email text NOT NULL,
             active boolean NOT NULL, score int NOT NULL, created_at timestamptz NOT NULL);
         INSERT INTO bench_users SELECT g, 'user ' || g, 'user' || g || '@example.com', g % 3 <> 0, 0,
             '2026-01-01'::timestamptz + g * interval '1 minute' FROM generate_series(1, 10000) g;
         CREATE TABLE bench_orders (id bigint PRIMARY KEY, user_id bigint NOT NULL REFERENCES bench_users(id) ON DELETE CASCADE,
             total int NOT NULL);
         INSERT INTO bench_orders SELECT g, g, g % 100 FROM generate_series(1, 10000) g;
         CREATE INDEX ON bench_orders (user_id);
         CREATE TABLE bench_docs (id bigint PRIMARY KEY, active boolean NOT NULL, doc jsonb NOT NULL);
         INSERT INTO bench_docs SELECT id, active,
             jsonb_build_object('name', name, 'email', email, 'active', active, 'score', score) FROM bench_users;
         ANALYZE bench_users; ANALYZE bench_orders; ANALYZE bench_docs;",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Drops the benchmark tables.
pub async fn drop_fixture(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS bench_docs; DROP TABLE IF EXISTS bench_orders; DROP TABLE IF EXISTS bench_users",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The bytes the cache stores for one `get` of a fixture row (`Option<BenchUser>`, postcard).
pub fn entry_bytes() -> Vec<u8> {
    let user = BenchUser {
        id: USERS / 2,
        name: format!("user {}", USERS / 2),
        email: format!("user{}@example.com", USERS / 2),
        active: true,
        score: 0,
    };
    postcard::to_allocvec(&Some(user)).expect("a fixture row serializes")
}

/// Table oid used by the store-level benchmarks (any number works: the store only compares).
const TABLE: u32 = 16_384;

/// A store holding `entries` entries shaped like `get` entries: `bytes` each, depending on one
/// row tag and the table's row-set tag, as [`sqlacache_sqlx::CachedPool::get`] stores them.
pub fn filled_store(entries: u64, bytes: &[u8]) -> MemoryStore {
    let store = MemoryStore::new(4 << 30);
    let ttl = Duration::from_secs(3600);
    for id in 0..entries {
        let row = row_id_of(TABLE, &(id as i64)).expect("integer keys have a row identity");
        let stored =
            store.put(Key(u128::from(id)), &[Tag::Row(row), Tag::Rows(TABLE)], store.stamp(), ttl, bytes.to_vec());
        assert!(stored, "nothing invalidates during the fill");
    }
    assert_eq!(store.len() as u64, entries, "the store keeps every entry");
    store
}

/// The tags a one-row `UPDATE` by primary key invalidates: the table (lists, counts) and the row.
pub fn one_row_write_tags(id: i64) -> [Tag; 2] {
    [Tag::Table(TABLE), Tag::Row(row_id_of(TABLE, &id).expect("integer keys have a row identity"))]
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

    /// Records one duration measured elsewhere.
    pub fn push(&mut self, duration: Duration) {
        self.0.push(duration);
    }

    /// The mean.
    pub fn mean(&self) -> Duration {
        self.0.iter().sum::<Duration>() / u32::try_from(self.0.len().max(1)).unwrap_or(u32::MAX)
    }

    /// The `q` quantile (0.5 for the median).
    pub fn quantile(&mut self, q: f64) -> Duration {
        self.0.sort_unstable();
        let index = ((self.0.len() as f64 - 1.0) * q).round() as usize;
        self.0.get(index).copied().unwrap_or_default()
    }
}
