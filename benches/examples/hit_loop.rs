//! A loop of cache hits (or misses, raw reads, writes through the pool and raw, and clones of
//! rows held: the floor of a hit that returns owned rows) for profilers. It counts nothing itself: run it under
//! `valgrind --tool=callgrind` twice with different counts and subtract, so the set-up drops out.
//!
//! ```sh
//! cargo build --release -p sqlacache-benches --example hit_loop
//! valgrind --tool=callgrind target/release/examples/hit_loop get 100000
//! ```

use sqlacache_benches::{connect, create_fixture, drop_fixture, BenchUser, COUNT, LIST, POINT, WRITE_TRACKED};
use sqlacache_sqlx::CachedPool;
use std::hint::black_box;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_else(|| "get".into());
    let count: i64 = args.next().map_or(Ok(100_000), |n| n.parse())?;
    let pool = connect().await?;
    create_fixture(&pool).await?;
    let cache = CachedPool::builder(pool.clone()).model::<BenchUser>().build().await?;
    for id in 1..=100 {
        cache.get::<BenchUser>(id).await?;
    }
    sqlacache_sqlx::query_as::<BenchUser>(LIST).fetch_all(&cache).await?;
    sqlacache_sqlx::query_scalar::<i64>(COUNT).fetch_one(&cache).await?;
    // The floor of a hit that returns owned rows: a clone of the rows, held here.
    let (one, fifty) = (
        cache.get::<BenchUser>(1).await?.ok_or("row 1")?,
        sqlacache_sqlx::query_as::<BenchUser>(LIST).fetch_all(&cache).await?,
    );
    let hits_before = cache.stats().hits;
    for i in 0..count {
        match what.as_str() {
            "clone" => drop(black_box(black_box(&one).clone())),
            "clone_list" => drop(black_box(black_box(&fifty).clone())),
            "get" => drop(black_box(cache.get::<BenchUser>(1 + i % 100).await?)),
            "list" => drop(black_box(sqlacache_sqlx::query_as::<BenchUser>(LIST).fetch_all(&cache).await?)),
            "count" => drop(black_box(sqlacache_sqlx::query_scalar::<i64>(COUNT).fetch_one(&cache).await?)),
            // For comparison: misses (distinct absent keys) and the raw read they replace.
            "miss" => drop(black_box(cache.get::<BenchUser>(1_000_000 + i).await?)),
            "raw" => {
                drop(black_box(sqlx::query_as::<_, BenchUser>(POINT).bind(1_000_000 + i).fetch_optional(&pool).await?))
            }
            // A write by key to a table with a second tracked column, through the pool and raw.
            "write" => drop(black_box(sqlx::query(WRITE_TRACKED).bind(1 + i % 100).execute(&cache).await?)),
            "raw_write" => drop(black_box(sqlx::query(WRITE_TRACKED).bind(1 + i % 100).execute(&pool).await?)),
            other => {
                return Err(format!(
                    "unknown loop `{other}`: get, list, count, miss, raw, write, raw_write, clone or clone_list"
                )
                .into())
            }
        }
    }
    let hits = cache.stats().hits - hits_before;
    let expected = if matches!(what.as_str(), "get" | "list" | "count") { count } else { 0 };
    assert_eq!(hits as i64, expected, "every iteration of a hit loop is a hit");
    drop_fixture(&pool).await?;
    Ok(())
}
