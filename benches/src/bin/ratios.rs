//! One run of the main comparisons, interleaved (A B A B ..) so both sides see the same machine
//! state, printed as medians, p99s and ratios against raw sqlx.
//!
//! ```sh
//! cargo run --release -p sqlacache-benches --bin ratios
//! ```

use sqlacache_benches::{create_fixture, BenchUser, Samples, USERS};
use sqlacache_sqlx::CachedPool;
use std::hint::black_box;
use std::time::Duration;

const ROUNDS: i64 = 2_000;
const POINT: &str = "SELECT * FROM bench_users WHERE id = $1";
const LIST: &str = "SELECT * FROM bench_users WHERE active ORDER BY id LIMIT 50";
const COUNT: &str = "SELECT count(*) FROM bench_users WHERE active";
const WRITE: &str = "UPDATE bench_users SET score = score + 1 WHERE id = $1";

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn report(name: &str, raw: &mut Samples, cached: &mut Samples) {
    let (r, c) = (raw.quantile(0.5), cached.quantile(0.5));
    println!(
        "| {name:<24} | {:>9.2} | {:>9.2} | {:>9.2} | {:>9.2} | {:>8.3}x |",
        us(r),
        us(raw.quantile(0.99)),
        us(c),
        us(cached.quantile(0.99)),
        c.as_secs_f64() / r.as_secs_f64()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&url).await?;
    create_fixture(&pool).await?;
    let cache = CachedPool::builder(pool.clone()).model::<BenchUser>().build().await?;
    let raw_point = |id: i64| sqlx::query_as::<_, BenchUser>(POINT).bind(id).fetch_one(&pool);

    let [mut raw_hit, mut hit, mut raw_miss, mut miss, mut raw_list, mut list, mut raw_count, mut count, mut raw_write, mut write] =
        std::array::from_fn(|_| Samples::default());
    for id in 1..=100 {
        cache.get::<BenchUser>(id).await?;
    }
    for i in 0..ROUNDS {
        let (hot, cold) = (1 + i % 100, 1 + (USERS / 2 + i) % USERS);
        raw_hit
            .time(async {
                black_box(raw_point(hot).await.unwrap());
            })
            .await;
        hit.time(async {
            black_box(cache.get::<BenchUser>(hot).await.unwrap());
        })
        .await;
        raw_miss
            .time(async {
                black_box(raw_point(cold).await.unwrap());
            })
            .await;
        miss.time(async {
            black_box(cache.get::<BenchUser>(cold).await.unwrap());
        })
        .await;
        raw_list
            .time(async {
                black_box(sqlx::query_as::<_, BenchUser>(LIST).fetch_all(&pool).await.unwrap());
            })
            .await;
        list.time(async {
            black_box(cache.query_as::<BenchUser>(LIST).fetch_all().await.unwrap());
        })
        .await;
        raw_count
            .time(async {
                black_box(sqlx::query_scalar::<_, i64>(COUNT).fetch_one(&pool).await.unwrap());
            })
            .await;
        count
            .time(async {
                black_box(cache.query_scalar::<i64>(COUNT).fetch_one().await.unwrap());
            })
            .await;
    }
    // Writes run after the reads: each one invalidates the table's lists and counts.
    for i in 0..ROUNDS {
        let target = USERS - i % 1000;
        raw_write
            .time(async {
                black_box(sqlx::query(WRITE).bind(target).execute(&pool).await.unwrap());
            })
            .await;
        write
            .time(async {
                black_box(sqlx::query(WRITE).bind(target).execute(&cache).await.unwrap());
            })
            .await;
    }

    println!("{ROUNDS} rounds each, interleaved; microseconds; ratio = cached median / raw median\n");
    println!(
        "| {:<24} | {:>9} | {:>9} | {:>9} | {:>9} | {:>9} |",
        "operation", "raw p50", "raw p99", "cache p50", "cache p99", "ratio"
    );
    println!("|{:-<26}|{:->11}|{:->11}|{:->11}|{:->11}|{:->11}|", "", "", "", "", "", "");
    report("point read, hit", &mut raw_hit, &mut hit);
    report("point read, miss", &mut raw_miss, &mut miss);
    report("list of 50, hit", &mut raw_list, &mut list);
    report("count, hit", &mut raw_count, &mut count);
    report("write by pk", &mut raw_write, &mut write);
    let stats = cache.stats();
    println!("\ncache: {} hits, {} misses, {} invalidations", stats.hits, stats.misses, stats.invalidations);
    sqlx::raw_sql("DROP TABLE bench_orders; DROP TABLE bench_users").execute(&pool).await?;
    Ok(())
}
