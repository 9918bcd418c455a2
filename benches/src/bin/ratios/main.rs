//! One run of the main comparisons, interleaved so both sides see the same machine state,
//! printed as medians, p99s and ratios against raw sqlx, with the targets each must meet.
//!
//! ```sh
//! cargo run --release -p sqlacache-benches --bin ratios
//! cargo run --release -p sqlacache-benches --bin ratios -- feed   # the change feed's rows alone
//! cargo run --release -p sqlacache-benches --bin ratios -- strict # the strict rows alone
//! cargo run --release -p sqlacache-benches --bin ratios -- redis  # the Redis rows alone
//! ```
//!
//! `--rounds N` runs N rounds instead of 5,000 (fewer rounds only check that it runs: the p99s
//! need thousands).
//!
//! Each round runs the raw side and the cached side of every comparison once, alternating which
//! goes first. Writes go to different rows on the two sides so neither updates a row the other
//! just updated.
//!
//! The Redis rows need the Redis at `REDIS_URL` (default `redis://127.0.0.1:6379`); they compare
//! with raw fred and raw sqlx in the same way, under a key prefix of their own.

use sqlacache_benches::{
    connect, create_fixture, drop_fixture, entry_bytes, filled_store, one_row_write_tags, BenchDoc, BenchUser, Samples,
    COUNT, LIST, LIST_JSON, POINT, USERS, WRITE, WRITE_TRACKED,
};
use sqlacache_core::MemoryStore;
use sqlacache_sqlx::CachedPool;
use std::future::Future;
use std::hint::black_box;
use std::time::{Duration, Instant};

mod strict;

/// Rounds per comparison: 5,000 unless `--rounds N` says otherwise.
fn rounds() -> i64 {
    static ROUNDS: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *ROUNDS.get_or_init(|| {
        let args: Vec<String> = std::env::args().collect();
        match args.iter().position(|a| a == "--rounds") {
            Some(i) => args.get(i + 1).and_then(|n| n.parse().ok()).filter(|&n| n > 0).unwrap_or_else(|| {
                eprintln!("--rounds takes a positive number");
                std::process::exit(2)
            }),
            None => 5_000,
        }
    })
}
/// Invalidations timed together per sample (one is too short for the clock).
const BATCH: u32 = 100;
/// Hits timed together per sample of the shadow check's cost.
const HIT_BATCH: i64 = 200;

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Times `raw` and `cached` once each, in the order the round calls for.
async fn pair<A: Future<Output = ()>, B: Future<Output = ()>>(
    round: i64,
    raw: (&mut Samples, A),
    cached: (&mut Samples, B),
) {
    if round % 2 == 0 {
        raw.0.time(raw.1).await;
        cached.0.time(cached.1).await;
    } else {
        cached.0.time(cached.1).await;
        raw.0.time(raw.1).await;
    }
}

struct Row {
    name: String,
    target: &'static str,
    met: bool,
}

/// The header of a table of [`print_pair`] rows; `side` names the cached side's columns.
fn print_header(side: &str) {
    let (p50, p99) = (format!("{side} p50"), format!("{side} p99"));
    println!(
        "| {:<24} | {:>9} | {:>9} | {p50:>9} | {p99:>9} | {:>9} | {:>8} |",
        "operation", "raw p50", "raw p99", "ratio", "speed-up"
    );
    println!("|{:-<26}|{:->11}|{:->11}|{:->11}|{:->11}|{:->11}|{:->10}|", "", "", "", "", "", "", "");
}

fn print_pair(
    name: &str,
    raw: &mut Samples,
    cached: &mut Samples,
    target: &'static str,
    met: &dyn Fn(f64, f64) -> bool,
) -> Row {
    let (r, c) = (raw.quantile(0.5), cached.quantile(0.5));
    let ratio = c.as_secs_f64() / r.as_secs_f64();
    println!(
        "| {name:<24} | {:>9.2} | {:>9.2} | {:>9.2} | {:>9.2} | {:>8.3}x | {:>7.1}x |",
        us(r),
        us(raw.quantile(0.99)),
        us(c),
        us(cached.quantile(0.99)),
        ratio,
        1.0 / ratio,
    );
    Row { name: name.to_owned(), target, met: met(us(c), ratio) }
}

/// A table of targets and whether each was met.
fn print_targets(title: &str, rows: &[Row]) {
    println!("\n| {title:<24} | {:<44} | {:<4} |", "", "met");
    println!("|{:-<26}|{:-<46}|{:-<6}|", "", "", "");
    // (A row without a target is there for comparison only.)
    for row in rows.iter().filter(|row| !row.target.is_empty()) {
        println!("| {:<24} | {:<44} | {:<4} |", row.name, row.target, if row.met { "yes" } else { "NO" });
    }
}

/// Resident memory of this process, in bytes.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Gets per second from `tasks` tasks hitting the cache for about `duration`.
async fn hit_throughput(cache: &CachedPool, tasks: i64, duration: Duration) -> f64 {
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let cache = cache.clone();
            tokio::spawn(async move {
                let mut done = 0_u64;
                while start.elapsed() < duration {
                    for i in 0..1000 {
                        black_box(cache.get::<BenchUser>(1 + (t * 13 + i) % 100).await.unwrap());
                    }
                    done += 1000;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for handle in handles {
        total += handle.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let started = Instant::now();
    let pool = connect().await.unwrap_or_else(|error| {
        eprintln!("{error}");
        std::process::exit(2);
    });
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("member") => return strict::member(&pool, &args[2..]).await,
        Some("raw-member") => return strict::raw_member(&args[2..]).await,
        _ => {}
    }
    if args.iter().any(|a| a == "feed") {
        // Only the change feed's rows.
        print_targets("target (change feed)", &feed::rows(&pool).await?);
        return Ok(());
    }
    create_fixture(&pool).await?;
    if args.iter().any(|a| a == "redis") {
        // Only the Redis rows.
        print_targets("target (Redis)", &redis::rows(&pool).await?);
        drop_fixture(&pool).await?;
        return Ok(());
    }
    if args.iter().any(|a| a == "strict") {
        // Only the strict rows.
        print_targets("target (strict)", &strict::rows(&pool).await?);
        drop_fixture(&pool).await?;
        return Ok(());
    }
    let cache = CachedPool::builder(pool.clone()).model::<BenchUser>().build().await?;
    // The same with the shadow check on 1% of hits.
    let verified = CachedPool::builder(pool.clone()).model::<BenchUser>().verify_sample(0.01).build().await?;
    let (mut unverified_batch, mut verified_batch) = (Samples::default(), Samples::default());
    let raw_point = |id: i64| sqlx::query_as::<_, BenchUser>(POINT).bind(id).fetch_one(&pool);

    let [mut raw_hit, mut hit, mut raw_miss, mut miss, mut raw_list, mut list, mut raw_json, mut json, mut raw_count, mut count, mut raw_write, mut write, mut raw_tracked, mut tracked, mut inv_small, mut inv_large] =
        std::array::from_fn(|_| Samples::default());

    // 6: two stores of single-row entries, 10k and 1M, invalidated one row at a time.
    let bytes = entry_bytes();
    let rss_before = resident_bytes();
    let large = filled_store(1_000_000, &bytes);
    let rss_per_entry =
        rss_before.zip(resident_bytes()).map(|(before, after)| after.saturating_sub(before) / 1_000_000);
    let small = filled_store(10_000, &bytes);
    let invalidate_batch = |store: &MemoryStore, round: i64| {
        for i in 0..i64::from(BATCH) {
            store.invalidate(&one_row_write_tags((round * i64::from(BATCH) + i) % 1_000_000));
        }
    };

    for id in 1..=100 {
        cache.get::<BenchUser>(id).await?;
        verified.get::<BenchUser>(id).await?;
    }
    sqlacache_sqlx::query_as::<BenchUser>(LIST).fetch_all(&cache).await?;
    sqlacache_sqlx::query_as::<BenchDoc>(LIST_JSON).fetch_all(&cache).await?;
    sqlacache_sqlx::query_scalar::<i64>(COUNT).fetch_one(&cache).await?;
    for round in 0..rounds() {
        // 1: hot keys are cached; cold keys are existing rows read once each.
        let (hot, cold) = (1 + round % 100, USERS / 2 + round % (USERS / 2));
        let hit_once = async {
            black_box(cache.get::<BenchUser>(hot).await.unwrap());
        };
        let raw_once = async {
            black_box(raw_point(hot).await.unwrap());
        };
        pair(round, (&mut raw_hit, raw_once), (&mut hit, hit_once)).await;
        // A batch of hits on each (a sampled hit is one in a hundred): the mean per hit, with
        // the checks' own work running beside them on the runtime.
        let batch = |cache: &CachedPool| {
            let cache = cache.clone();
            async move {
                for i in 0..HIT_BATCH {
                    black_box(cache.get::<BenchUser>(1 + (round + i) % 100).await.unwrap());
                }
            }
        };
        pair(round, (&mut unverified_batch, batch(&cache)), (&mut verified_batch, batch(&verified))).await;
        let miss_once = async {
            black_box(cache.get::<BenchUser>(cold).await.unwrap());
        };
        let raw_once = async {
            black_box(raw_point(cold).await.unwrap());
        };
        pair(round, (&mut raw_miss, raw_once), (&mut miss, miss_once)).await;
        // 2 and 3.
        let raw_once = async {
            black_box(sqlx::query_as::<_, BenchUser>(LIST).fetch_all(&pool).await.unwrap());
        };
        let list_once = async {
            black_box(sqlacache_sqlx::query_as::<BenchUser>(LIST).fetch_all(&cache).await.unwrap());
        };
        pair(round, (&mut raw_list, raw_once), (&mut list, list_once)).await;
        let raw_once = async {
            black_box(sqlx::query_as::<_, BenchDoc>(LIST_JSON).fetch_all(&pool).await.unwrap());
        };
        let json_once = async {
            black_box(sqlacache_sqlx::query_as::<BenchDoc>(LIST_JSON).fetch_all(&cache).await.unwrap());
        };
        pair(round, (&mut raw_json, raw_once), (&mut json, json_once)).await;
        let raw_once = async {
            black_box(sqlx::query_scalar::<_, i64>(COUNT).fetch_one(&pool).await.unwrap());
        };
        let count_once = async {
            black_box(sqlacache_sqlx::query_scalar::<i64>(COUNT).fetch_one(&cache).await.unwrap());
        };
        pair(round, (&mut raw_count, raw_once), (&mut count, count_once)).await;
        // 6.
        let time_batch = |store: &MemoryStore, samples: &mut Samples| {
            let start = Instant::now();
            invalidate_batch(store, round);
            samples.push(start.elapsed() / BATCH);
        };
        if round % 2 == 0 {
            time_batch(&small, &mut inv_small);
            time_batch(&large, &mut inv_large);
        } else {
            time_batch(&large, &mut inv_large);
            time_batch(&small, &mut inv_small);
        }
    }
    // 1 again, with nothing else between the pairs (as the two-tier hit below is measured):
    // the same hit, run with the caches of the CPU still warm from the previous one.
    let (mut raw_alone, mut hit_alone) = (Samples::default(), Samples::default());
    for round in 0..rounds() {
        let hot = 1 + round % 100;
        let hit_once = async {
            black_box(cache.get::<BenchUser>(hot).await.unwrap());
        };
        let raw_once = async {
            black_box(raw_point(hot).await.unwrap());
        };
        pair(round, (&mut raw_alone, raw_once), (&mut hit_alone, hit_once)).await;
    }
    // 4: after the reads, since each write invalidates the table's lists and counts. The two
    // sides update different rows.
    for round in 0..rounds() {
        let raw_once = async {
            black_box(sqlx::query(WRITE).bind(USERS - round % 500).execute(&pool).await.unwrap());
        };
        let write_once = async {
            black_box(sqlx::query(WRITE).bind(USERS - 500 - round % 500).execute(&cache).await.unwrap());
        };
        pair(round, (&mut raw_write, raw_once), (&mut write, write_once)).await;
        // The same with a second tracked column, whose value the cached side also returns.
        let raw_once = async {
            black_box(sqlx::query(WRITE_TRACKED).bind(USERS - round % 500).execute(&pool).await.unwrap());
        };
        let write_once = async {
            black_box(sqlx::query(WRITE_TRACKED).bind(USERS - 500 - round % 500).execute(&cache).await.unwrap());
        };
        pair(round, (&mut raw_tracked, raw_once), (&mut tracked, write_once)).await;
    }

    // 5 and 7, after the interleaved part.
    let throughput_1 = hit_throughput(&cache, 1, Duration::from_secs(2)).await;
    let throughput_2 = hit_throughput(&cache, 2, Duration::from_secs(2)).await;
    let throughput_8 = hit_throughput(&cache, 8, Duration::from_secs(2)).await;
    let sizing = CachedPool::builder(pool.clone()).model::<BenchUser>().build().await?;
    for id in 1..=1000 {
        sizing.get::<BenchUser>(id).await?;
    }
    let (weight, entries) = sizing.memory_usage();

    println!("{} rounds, each side once per round, alternating which goes first; microseconds\n", rounds());
    print_header("cache");
    let mut rows = vec![
        print_pair("point read, hit", &mut raw_hit, &mut hit, "hit >= 150x faster than raw, median < 2 us", &|c, r| {
            r <= 1.0 / 150.0 && c < 2.0
        }),
        print_pair("  the same, pairs alone", &mut raw_alone, &mut hit_alone, "", &|_, _| true),
        print_pair("point read, miss", &mut raw_miss, &mut miss, "miss <= 1.10x raw", &|_, r| r <= 1.10),
        print_pair("list of 50, hit", &mut raw_list, &mut list, "list hit median < 20 us", &|c, _| c < 20.0),
        print_pair("list of 50 jsonb, hit", &mut raw_json, &mut json, "jsonb list hit faster than raw", &|_, r| {
            r < 1.0
        }),
        print_pair("count, hit", &mut raw_count, &mut count, "count hit faster than raw", &|_, r| r < 1.0),
        print_pair("write by pk", &mut raw_write, &mut write, "write <= 1.05x raw", &|_, r| r <= 1.05),
        print_pair("write, 2 tracked columns", &mut raw_tracked, &mut tracked, "write <= 1.05x raw", &|_, r| r <= 1.05),
    ];
    println!(
        "\nstored as JSON (a jsonb column): the 50-row list hit takes {:.2}x the postcard list's ({:.2} us against {:.2} us)",
        json.quantile(0.5).as_secs_f64() / list.quantile(0.5).as_secs_f64(),
        us(json.quantile(0.5)),
        us(list.quantile(0.5)),
    );
    let per_hit = |samples: &Samples| samples.mean().as_secs_f64() * 1e6 / HIT_BATCH as f64;
    let (plain_hit, checked_hit) = (per_hit(&unverified_batch), per_hit(&verified_batch));
    println!(
        "shadow check of 1% of hits (`verify_sample(0.01)`): a hit takes {:.3}x an unchecked one ({checked_hit:.2} us against {plain_hit:.2} us, mean over batches of {HIT_BATCH}); {} checks ran, {} found a difference",
        checked_hit / plain_hit,
        verified.stats().verified,
        verified.stats().verify_mismatches,
    );
    println!("\n| {:<24} | {:>14} | {:>14} | {:>9} |", "one-row invalidation", "10,000 entries", "1,000,000", "ratio");
    println!("|{:-<26}|{:->16}|{:->16}|{:->11}|", "", "", "", "");
    let (small_p50, large_p50) = (inv_small.quantile(0.5), inv_large.quantile(0.5));
    let inv_ratio = large_p50.as_secs_f64() / small_p50.as_secs_f64();
    println!(
        "| {:<24} | {:>11.0} ns | {:>11.0} ns | {:>8.3}x |",
        "median",
        small_p50.as_secs_f64() * 1e9,
        large_p50.as_secs_f64() * 1e9,
        inv_ratio
    );
    println!(
        "| {:<24} | {:>11.0} ns | {:>11.0} ns | {:>9} |",
        "p99",
        inv_small.quantile(0.99).as_secs_f64() * 1e9,
        inv_large.quantile(0.99).as_secs_f64() * 1e9,
        ""
    );
    rows.push(Row { name: "invalidation".into(), target: "1M entries <= 1.2x the cost at 10k", met: inv_ratio <= 1.2 });
    println!(
        "\nhit throughput: {:.2} M gets/s with 1 task, {:.2} M with 2 tasks ({:.2}x), {:.2} M with 8 tasks (2 worker threads)",
        throughput_1 / 1e6,
        throughput_2 / 1e6,
        throughput_2 / throughput_1,
        throughput_8 / 1e6
    );
    rows.push(Row { name: "hit throughput".into(), target: ">= 7.4M gets/s with 2 tasks", met: throughput_2 >= 7.4e6 });
    rows.push(Row {
        name: "hit scaling".into(),
        target: "2 tasks >= 1.8x one task",
        met: throughput_2 >= 1.8 * throughput_1,
    });
    println!(
        "memory: {} bytes per cached single-row entry (store weight {weight} / {entries} entries); {} bytes resident per entry in the 1M-entry store",
        weight / entries.max(1) as u64,
        rss_per_entry.map_or("?".to_owned(), |b| b.to_string()),
    );
    print_targets("target", &rows);
    print_targets("target (Redis)", &redis::rows(&pool).await?);
    print_targets("target (strict)", &strict::rows(&pool).await?);
    print_targets("target (change feed)", &feed::rows(&pool).await?);
    let stats = cache.stats();
    println!(
        "\ncache: {} hits, {} misses, {} invalidations; run took {:.0} s",
        stats.hits,
        stats.misses,
        stats.invalidations,
        started.elapsed().as_secs_f64()
    );
    drop_fixture(&pool).await?;
    Ok(())
}

/// The Redis rows: a Redis-only hit against a raw fred `GET` of the same stored bytes, a miss and
/// a write with Redis against raw sqlx, a hit of the in-process tier in front of Redis, and the
/// delivery of an invalidation from one pool to another's in-process tier.
mod redis {
    use super::{pair, print_header, print_pair, rounds, us, Row};
    use fred::interfaces::{ClientLike, KeysInterface};
    use sqlacache_benches::{BenchUser, Samples, POINT, USERS, WRITE};
    use sqlacache_sqlx::CachedPool;
    use sqlx::PgPool;
    use std::hint::black_box;
    use std::time::{Duration, Instant};

    async fn pool(pg: &PgPool, url: &str, prefix: &str, memory: u64) -> Result<CachedPool, sqlacache_sqlx::Error> {
        let cache = CachedPool::builder(pg.clone())
            .model::<BenchUser>()
            .default_ttl(Duration::from_secs(120))
            .redis(url)
            .key_prefix(prefix)
            .memory_capacity(memory)
            .build()
            .await?;
        // Let the heartbeat come back, so the in-process tier is trusted.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(cache)
    }

    pub async fn rows(pg: &PgPool) -> Result<Vec<Row>, Box<dyn std::error::Error + Send + Sync>> {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let prefix = format!("sqlacache_bench_{}", std::process::id());
        // The raw side connects as the cache's store does (TCP_NODELAY).
        let raw_redis = fred::prelude::Builder::from_config(fred::prelude::Config::from_url(&url)?)
            .with_connection_config(|c| {
                c.tcp = fred::types::config::TcpConfig { nodelay: Some(true), ..Default::default() }
            })
            .build()?;
        raw_redis.init().await.map_err(|e| format!("cannot reach Redis at {url}: {e}"))?;
        // Redis only first, with no other pool in this process: the two-tier pools' listeners
        // would otherwise share its two threads, as other processes' do not.
        let shared = pool(pg, &url, &prefix, 0).await?;
        let raw_point = |id: i64| sqlx::query_as::<_, BenchUser>(POINT).bind(id).fetch_one(pg);

        // The bytes Redis holds for one cached row, under a key of the raw side's own.
        shared.get::<BenchUser>(1).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        // (A scan, once, outside the timed part.)
        let (mut cursor, mut found) = ("0".to_owned(), None);
        loop {
            let args = vec![cursor, "MATCH".into(), format!("{prefix}:*:b:*"), "COUNT".into(), "10000".into()];
            let (next, keys): (String, Vec<String>) = raw_redis.custom(fred::cmd!("SCAN"), args).await?;
            found = found.or(keys.into_iter().next());
            if found.is_some() || next == "0" {
                break;
            }
            cursor = next;
        }
        let stored: Vec<u8> = raw_redis.get(found.ok_or("no value stored in Redis")?).await?;
        let raw_key = format!("{prefix}:raw");
        let () =
            raw_redis.set(&raw_key, stored.as_slice(), Some(fred::types::Expiration::EX(600)), None, false).await?;

        let [mut raw_get, mut redis_hit, mut raw_miss, mut redis_miss, mut raw_hot, mut local_hit, mut raw_write, mut redis_write] =
            std::array::from_fn(|_| Samples::default());
        for round in 0..rounds() {
            let raw_once = async {
                let bytes: Vec<u8> = raw_redis.get(&raw_key).await.unwrap();
                black_box(bytes);
            };
            let hit_once = async {
                black_box(shared.get::<BenchUser>(1).await.unwrap());
            };
            pair(round, (&mut raw_get, raw_once), (&mut redis_hit, hit_once)).await;
            let cold = USERS / 2 + round % (USERS / 2);
            let raw_once = async {
                black_box(raw_point(cold).await.unwrap());
            };
            let miss_once = async {
                black_box(shared.get::<BenchUser>(cold).await.unwrap());
            };
            pair(round, (&mut raw_miss, raw_once), (&mut redis_miss, miss_once)).await;
        }
        for round in 0..rounds() {
            let raw_once = async {
                black_box(sqlx::query(WRITE).bind(USERS - 1000 - round % 500).execute(pg).await.unwrap());
            };
            let write_once = async {
                black_box(sqlx::query(WRITE).bind(USERS - 1500 - round % 500).execute(&shared).await.unwrap());
            };
            pair(round, (&mut raw_write, raw_once), (&mut redis_write, write_once)).await;
        }
        // Two tiers: two pools, standing for two processes.
        let tiers = pool(pg, &url, &prefix, 64 << 20).await?;
        let other = pool(pg, &url, &prefix, 64 << 20).await?;
        for id in 1..=100 {
            tiers.get::<BenchUser>(id).await?;
        }
        for round in 0..rounds() {
            let hot = 1 + round % 100;
            let raw_once = async {
                black_box(raw_point(hot).await.unwrap());
            };
            let hit_once = async {
                black_box(tiers.get::<BenchUser>(hot).await.unwrap());
            };
            pair(round, (&mut raw_hot, raw_once), (&mut local_hit, hit_once)).await;
        }
        // Delivery: a write through one two-tier pool returns; the other pool has applied it.
        let mut delivery = Samples::default();
        for round in 0..1_000 {
            let id = 2 + round % 50;
            other.get::<BenchUser>(id).await?;
            let received = other.stats().received;
            sqlx::query(WRITE).bind(id).execute(&tiers).await?;
            let returned = Instant::now();
            while other.stats().received == received {
                if returned.elapsed() > Duration::from_secs(5) {
                    return Err("an invalidation was not delivered within 5 s".into());
                }
                tokio::task::yield_now().await;
            }
            delivery.push(returned.elapsed());
        }

        println!("\nWith Redis ({url}), {} rounds as above; microseconds\n", rounds());
        print_header("cache");
        let rows = vec![
            print_pair(
                "Redis-only hit (vs GET)",
                &mut raw_get,
                &mut redis_hit,
                "Redis hit <= 1.15x a raw fred GET",
                &|_, r| r <= 1.15,
            ),
            print_pair("miss with Redis", &mut raw_miss, &mut redis_miss, "miss <= 1.45x raw", &|_, r| r <= 1.45),
            print_pair(
                "two tiers, local hit",
                &mut raw_hot,
                &mut local_hit,
                "in-process hit median < 2 us",
                &|c, _| c < 2.0,
            ),
            print_pair("write with Redis", &mut raw_write, &mut redis_write, "write <= 1.25x raw", &|_, r| r <= 1.25),
        ];
        let (p50, p99) = (delivery.quantile(0.5), delivery.quantile(0.99));
        println!(
            "\ndelivery to another pool's in-process tier after a write returned: p50 {:.0} us, p99 {:.0} us",
            us(p50),
            us(p99)
        );
        let mut rows = rows;
        rows.push(Row {
            name: "cross-process delivery".into(),
            target: "p99 < 2 ms",
            met: p99 < Duration::from_millis(2),
        });
        let () = raw_redis.del(&raw_key).await?;
        shared.invalidate_all().await?;
        Ok(rows)
    }
}

/// The change feed's rows: a raw write to a table with the feed's triggers against the same
/// write to an identical table without them, and the delay from an outside write's commit to
/// the pool's invalidation.
mod feed {
    use super::{pair, print_header, print_pair, rounds, us, Row};
    use sqlacache_benches::Samples;
    use sqlacache_sqlx::{CachedPool, Ops};
    use sqlx::{AssertSqlSafe, PgPool};
    use std::hint::black_box;
    use std::time::{Duration, Instant};

    /// The same one-row update on the plain and the fed table, interleaved.
    async fn writes(pg: &PgPool, plain: &str, fed: &str, raw: &mut Samples, triggered: &mut Samples) {
        for round in 0..rounds() {
            let id = 1 + round % 10_000;
            let raw_once = async {
                black_box(sqlx::query(AssertSqlSafe(plain)).bind(id).execute(pg).await.unwrap());
            };
            let fed_once = async {
                black_box(sqlx::query(AssertSqlSafe(fed)).bind(id).execute(pg).await.unwrap());
            };
            pair(round, (&mut *raw, raw_once), (&mut *triggered, fed_once)).await;
        }
    }

    pub async fn rows(pg: &PgPool) -> Result<Vec<Row>, Box<dyn std::error::Error + Send + Sync>> {
        for table in ["bench_plain", "bench_fed"] {
            let ddl = format!(
                "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id bigint PRIMARY KEY, score int NOT NULL); \
                 INSERT INTO {table} SELECT g, 0 FROM generate_series(1, 10000) g; ANALYZE {table};"
            );
            sqlx::raw_sql(AssertSqlSafe(ddl)).execute(pg).await?;
        }
        let build = || {
            CachedPool::builder(pg.clone()).table("bench_fed", Ops::ALL, Duration::from_secs(120)).change_feed().build()
        };
        let write = |table: &str| format!("UPDATE {table} SET score = score + 1 WHERE id = $1");
        let (plain, fed) = (write("bench_plain"), write("bench_fed"));
        // The triggers alone (installed, nobody listening), then with a pool listening in this
        // process (whose listener every write wakes, on the same cores).
        drop(build().await?);
        let [mut raw, mut triggered, mut raw_heard, mut heard] = std::array::from_fn(|_| Samples::default());
        writes(pg, &plain, &fed, &mut raw, &mut triggered).await;
        let cache = build().await?;
        writes(pg, &plain, &fed, &mut raw_heard, &mut heard).await;
        // Delivery: an outside write returns; the pool has applied its message.
        let mut delivery = Samples::default();
        for round in 0..1_000_i64 {
            let before = cache.stats().invalidations;
            sqlx::query(AssertSqlSafe(fed.as_str())).bind(1 + round % 100).execute(pg).await?;
            let returned = Instant::now();
            while cache.stats().invalidations == before {
                if returned.elapsed() > Duration::from_secs(5) {
                    return Err("an outside write was not delivered within 5 s".into());
                }
                tokio::task::yield_now().await;
            }
            delivery.push(returned.elapsed());
        }
        println!("\nChange feed, {} rounds as above; microseconds\n", rounds());
        print_header("feed");
        let mut rows = vec![print_pair(
            "write with triggers",
            &mut raw,
            &mut triggered,
            "raw write with the triggers <= 1.15x without",
            &|_, r| r <= 1.15,
        )];
        print_pair("  and a pool listening", &mut raw_heard, &mut heard, "", &|_, _| true);
        let (p50, p99) = (delivery.quantile(0.5), delivery.quantile(0.99));
        println!("\noutside write returned -> the pool invalidated: p50 {:.0} us, p99 {:.0} us", us(p50), us(p99));
        rows.push(Row {
            name: "outside-write delivery".into(),
            target: "p99 < 10 ms",
            met: p99 < Duration::from_millis(10),
        });
        drop(cache);
        sqlx::raw_sql("DROP TABLE bench_plain; DROP TABLE bench_fed;").execute(pg).await?;
        Ok(rows)
    }
}
