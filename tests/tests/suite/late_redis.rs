//! A process that starts while Redis is down: it works on PostgreSQL alone, then uses Redis
//! once Redis comes up, and no other process misses its writes on the way.

use sqlacache_sqlx::testing::Probe as _;
use sqlacache_sqlx::CachedPool;
use sqlacache_tests::redis::{free_port, unique_prefix, RedisServer};
use sqlacache_tests::{bump, value, Counter, TestDb, COUNTERS};
use std::time::{Duration, Instant};

/// A pool on `url`; `memory` 0 keeps values in Redis only; `feed` adds the change feed.
async fn pool(db: &TestDb, url: &str, prefix: &str, memory: u64, feed: bool) -> CachedPool {
    let builder = sqlacache_tests::builder(db.pool.clone())
        .model::<Counter>()
        .default_ttl(Duration::from_secs(60))
        .redis(url)
        .key_prefix(prefix)
        .memory_capacity(memory)
        // Room to spare on a loaded machine: this test is about a Redis that comes up late, not
        // about commands that outlast a short timeout.
        .redis_timeout(Duration::from_secs(1));
    let builder = if feed { builder.change_feed() } else { builder };
    builder.build().await.expect("build a pool while Redis is down")
}

/// Waits until `cache` uses Redis (and, with two tiers, trusts its in-process tier); returns how
/// long that took.
async fn until_ready(cache: &CachedPool, what: &str) -> Duration {
    let start = Instant::now();
    while !cache.tiers_ready_for_tests() {
        // Only against hanging.
        assert!(start.elapsed() < Duration::from_secs(60), "{what}: the pool never used Redis once it came up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

/// Reads `id` through `cache` until it shows `expected` (two tiers: once the invalidation is
/// delivered, within the lease).
async fn read_until(cache: &CachedPool, id: i32, expected: i64, what: &str) {
    let start = Instant::now();
    while value(cache, id).await != expected {
        assert!(start.elapsed() < Duration::from_secs(10), "{what}: still older than {expected}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// One case: A starts while Redis is down and writes; Redis comes up after `delay`; C starts
/// then, caches a row, and A's next write reaches C; A itself serves from Redis.
async fn late_redis(delay: Duration, memory: u64, feed: bool) -> Duration {
    let what = format!("Redis up after {delay:?}, memory {memory}, feed {feed}");
    let db = TestDb::with_schema(COUNTERS).await;
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let prefix = unique_prefix("late");
    let a = pool(&db, &url, &prefix, memory, feed).await;
    let started = Instant::now();
    let mut writes = 0;
    while started.elapsed() < delay {
        // On PostgreSQL alone, and fresh.
        writes += 1;
        assert_eq!(bump(&a, 1).await, writes, "{what}");
        assert_eq!(value(&a, 1).await, writes, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!a.tiers_ready_for_tests(), "{what}: ready before Redis is up");
    let _redis = RedisServer::start_on(port, &[]);
    let took = until_ready(&a, &what).await;
    let c = pool(&db, &url, &prefix, memory, feed).await;
    until_ready(&c, &what).await;
    // C caches rows 1 and 2 (from Redis or PostgreSQL); A's writes reach it.
    assert_eq!(value(&c, 1).await, writes, "{what}: a write made while Redis was down");
    assert_eq!(value(&c, 2).await, 0);
    assert_eq!(bump(&a, 2).await, 1);
    if memory == 0 {
        assert_eq!(value(&c, 2).await, 1, "{what}: Redis only is strict");
    } else {
        read_until(&c, 2, 1, &what).await;
    }
    assert!(a.stats().published > 0, "{what}: A's write after Redis came up was published");
    if !feed && memory == 0 {
        // A serves from Redis: what C stored there. (In two tiers A may have filled its own
        // in-process copy first, which then answers. With the feed, whether A's reads are served
        // at all also depends on the feed's lease, which the DDL of the other cases running
        // alongside in this database can keep lapsing on a loaded machine.)
        let hits = a.stats().redis_hits;
        let start = Instant::now();
        while a.stats().redis_hits == hits {
            assert_eq!(value(&a, 2).await, 1, "{what}");
            assert!(start.elapsed() < Duration::from_secs(30), "{what}: A never reads from Redis: {:?}", a.stats());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_built_while_redis_is_down_uses_it_once_it_is_up() {
    let mut cases = Vec::new();
    for delay in [500, 3_000, 15_000] {
        for memory in [1 << 20, 0] {
            for feed in [false, true] {
                cases.push(tokio::spawn(late_redis(Duration::from_millis(delay), memory, feed)));
            }
        }
    }
    for case in cases {
        let took = case.await.expect("a case failed");
        // The settling time with a 1 s timeout and the default lease is 2.35 s.
        eprintln!("used Redis {took:?} after it answered");
    }
}
