//! The shadow check: sampled hits read again from PostgreSQL off the caller's path. A write the
//! cache did not see is found, logged with its SQL and key, and its entry dropped; writes through
//! the pool that race with the check are never taken for mismatches.

use sqlacache_sqlx::{outcome_of, CachedPool, Outcome};
use sqlacache_tests::logs::capture;
use sqlacache_tests::redis::{redis_url, require_shared_redis, tiers_ready, unique_prefix};
use sqlacache_tests::{bump, value, Counter, TestDb, COUNTERS};
use std::time::Duration;

const LIST: &str = "SELECT * FROM counters ORDER BY id";

async fn list(cache: &CachedPool) -> (Vec<i64>, Option<Outcome>) {
    let (rows, outcome) = outcome_of(sqlacache_sqlx::query_as::<Counter>(LIST).fetch_all(cache)).await;
    (rows.unwrap().into_iter().map(|c| c.v).collect(), outcome)
}

/// Hits `cache` until the shadow check has found a mismatch.
async fn until_mismatch(cache: &CachedPool) {
    let start = std::time::Instant::now();
    while cache.stats().verify_mismatches == 0 {
        let _ = list(cache).await;
        let _ = cache.get::<Counter>(1).await.unwrap();
        assert!(start.elapsed() < Duration::from_secs(30), "no mismatch found: {:?}", cache.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn a_write_made_outside_the_pool_is_found_logged_and_dropped() {
    let lines = capture(|_| async {
        let db = TestDb::with_schema(COUNTERS).await;
        let cache =
            sqlacache_tests::builder(db.pool.clone()).model::<Counter>().verify_sample(1.0).build().await.unwrap();
        assert_eq!(list(&cache).await, (vec![0; 5], Some(Outcome::Miss)));
        assert_eq!(value(&cache, 1).await, 0);
        // Not through the pool, and no change feed: the cache cannot know.
        sqlx::query("UPDATE counters SET v = 42 WHERE id = 1").execute(&db.pool).await.unwrap();
        assert_eq!(list(&cache).await, (vec![0; 5], Some(Outcome::Hit)), "served as cached");
        until_mismatch(&cache).await;
        // Its entries are dropped: the next reads see the row.
        let start = std::time::Instant::now();
        while list(&cache).await.0[0] != 42 || value(&cache, 1).await != 42 {
            assert!(start.elapsed() < Duration::from_secs(30), "the stale entries were kept");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Hits of the fresh entries check out.
        let start = std::time::Instant::now();
        while cache.stats().verified == 0 {
            assert_eq!(list(&cache).await.0[0], 42);
            assert!(start.elapsed() < Duration::from_secs(30), "no hit checked out: {:?}", cache.stats());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let warned = lines.containing("differs from PostgreSQL");
    assert!(!warned.is_empty(), "{:?}", lines.all());
    assert!(warned.iter().any(|l| l.contains(LIST)), "the warning names the SQL: {warned:?}");
    assert!(warned.iter().all(|l| l.contains("key=")), "and the key: {warned:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_through_the_pool_racing_the_check_are_not_mismatches() {
    let db = TestDb::with_schema(COUNTERS).await;
    let cache = sqlacache_tests::builder(db.pool.clone()).model::<Counter>().verify_sample(1.0).build().await.unwrap();
    let writer = {
        let cache = cache.clone();
        tokio::spawn(async move {
            for i in 0..400 {
                bump(&cache, 1 + i % 5).await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let readers: Vec<_> = (0..3)
        .map(|r| {
            let cache = cache.clone();
            tokio::spawn(async move {
                for i in 0..2_000 {
                    if (i + r) % 2 == 0 {
                        let _ = list(&cache).await;
                    } else {
                        value(&cache, 1 + i % 5).await;
                    }
                }
            })
        })
        .collect();
    writer.await.unwrap();
    for reader in readers {
        reader.await.unwrap();
    }
    // The checks started last settle for a second.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let stats = cache.stats();
    assert_eq!(stats.verify_mismatches, 0, "{stats:?}");
    assert!(stats.verified > 100, "the checks ran: {stats:?}");
}

#[tokio::test]
async fn redis_hits_are_checked_too() {
    require_shared_redis();
    let db = TestDb::with_schema(COUNTERS).await;
    let cache = sqlacache_tests::builder(db.pool.clone())
        .model::<Counter>()
        .redis(&redis_url())
        .key_prefix(&unique_prefix("shadow"))
        .memory_capacity(0)
        .redis_timeout(Duration::from_secs(5))
        .verify_sample(1.0)
        .build()
        .await
        .unwrap();
    tiers_ready(&[&cache]).await;
    let start = std::time::Instant::now();
    while cache.stats().redis_hits == 0 {
        let _ = list(&cache).await;
        assert!(start.elapsed() < Duration::from_secs(30), "never a Redis hit");
    }
    sqlx::query("UPDATE counters SET v = 7 WHERE id = 3").execute(&db.pool).await.unwrap();
    until_mismatch(&cache).await;
    let start = std::time::Instant::now();
    while list(&cache).await.0[2] != 7 {
        assert!(start.elapsed() < Duration::from_secs(30), "the Redis entry was kept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn unsampled_hits_are_not_checked() {
    let db = TestDb::with_schema(COUNTERS).await;
    let cache = sqlacache_tests::builder(db.pool.clone()).model::<Counter>().build().await.unwrap();
    for _ in 0..50 {
        let _ = list(&cache).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(cache.stats().verified + cache.stats().verify_mismatches, 0);
}
