//! Several pools in one process over one database: with the same key prefix they share an
//! in-process bus, so each sees the others' writes as soon as they return, with or without
//! Redis, whatever Redis does.

use sqlacache_sqlx::testing::{FillPoint, Hooks as _};
use sqlacache_sqlx::{CachedPool, CachedPoolBuilder};
use sqlacache_tests::redis::{tiers_ready, unique_prefix, Proxy, RedisServer};
use sqlacache_tests::{bump, value, Counter, TestDb, COUNTERS};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

/// A pool of this process (it joins the in-process bus of `prefix`).
fn pool(db: &TestDb, prefix: &str) -> CachedPoolBuilder {
    CachedPool::builder(db.pool.clone()).model::<Counter>().key_prefix(prefix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_of_one_process_see_each_others_writes_at_once_without_redis() {
    let db = TestDb::with_schema(COUNTERS).await;
    let prefix = unique_prefix("local");
    let (a, b) = (pool(&db, &prefix).build().await.unwrap(), pool(&db, &prefix).build().await.unwrap());
    // A pool with a prefix of its own is kept apart.
    let apart = pool(&db, &unique_prefix("apart")).build().await.unwrap();
    for round in 1..=20 {
        let (writer, reader) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        for cache in [&a, &b, &apart] {
            value(cache, 1).await;
        }
        let hits = reader.stats().hits;
        assert_eq!(value(reader, 1).await, round - 1);
        assert!(reader.stats().hits > hits, "round {round}: cached before the write");
        let written = bump(writer, 1).await;
        assert_eq!(value(reader, 1).await, written, "round {round}: the other pool served its old copy");
        // And the cache keeps working: the next read is a hit again.
        let hits = reader.stats().hits;
        assert_eq!(value(reader, 1).await, written);
        assert!(reader.stats().hits > hits, "round {round}: not cached again");
    }
    assert_eq!(apart.stats().received, 0, "a pool of another prefix heard the others");
    assert!(a.stats().received >= 10 && b.stats().received >= 10);
}

/// With two tiers, the other pool is fresh when the write returns even while it hears nothing
/// from Redis (its subscription silenced, within a long lease, so it keeps serving its
/// in-process tier): the in-process bus does not wait for Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_of_one_process_see_each_others_writes_at_once_with_redis() {
    let server = RedisServer::start(&[]);
    let proxy = Proxy::start(server.port());
    let db = TestDb::with_schema(COUNTERS).await;
    let prefix = unique_prefix("local_redis");
    let timeout = Duration::from_secs(2);
    let lease = Duration::from_secs(30);
    let a = pool(&db, &prefix).redis(&server.url()).redis_timeout(timeout).lease(lease).build().await.unwrap();
    let b = pool(&db, &prefix).redis(&proxy.url()).redis_timeout(timeout).lease(lease).build().await.unwrap();
    tiers_ready(&[&a, &b]).await;
    proxy.silence_subscribers();
    for round in 0..10 {
        let before = value(&b, 2).await;
        let seen = b.stats();
        assert_eq!(value(&b, 2).await, before);
        let now = b.stats();
        assert!(now.hits > seen.hits && now.redis_hits == seen.redis_hits, "round {round}: not served in process");
        let written = bump(&a, 2).await;
        assert_eq!(value(&b, 2).await, written, "round {round}: B served its old copy");
    }
    proxy.unsilence_subscribers();
}

/// A fill of pool B that read the database before pool A's write committed, and stores its
/// result after A's write returned, is never served by B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_that_straddles_the_other_pools_write_is_not_served() {
    let db = TestDb::with_schema(COUNTERS).await;
    let prefix = unique_prefix("straddle");
    let (reached, go) = (Arc::new(Notify::new()), Arc::new(Semaphore::new(0)));
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let b = {
        let (reached, go, armed) = (reached.clone(), go.clone(), armed.clone());
        pool(&db, &prefix)
            .fill_hook(move |point| {
                let (reached, go, armed) = (reached.clone(), go.clone(), armed.clone());
                Box::pin(async move {
                    if point == FillPoint::Read && armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
                        reached.notify_one();
                        go.acquire().await.expect("open").forget();
                    }
                })
            })
            .build()
            .await
            .unwrap()
    };
    let a = pool(&db, &prefix).build().await.unwrap();
    // One row per round: B's first read of each is a miss, so it fills.
    for id in 1..=5 {
        armed.store(true, std::sync::atomic::Ordering::SeqCst);
        let fill = {
            let b = b.clone();
            tokio::spawn(async move { value(&b, id).await })
        };
        reached.notified().await;
        let written = bump(&a, id).await;
        go.add_permits(1);
        assert_eq!(fill.await.unwrap(), written - 1, "row {id}: the fill read before the write");
        assert_eq!(value(&b, id).await, written, "row {id}: B served the fill that straddled A's write");
        assert_eq!(value(&a, id).await, written);
    }
}

/// A pool's own write comes back to it on the Redis bus after it has read the new value again:
/// it recognises its own message and does not apply it again, so the value it cached after the
/// write stays a hit. (Its subscription is held back by a proxy meanwhile, within a long lease;
/// a message of another pool, sent after, tells when everything before it was heard.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pools_own_write_heard_back_on_the_bus_costs_it_nothing() {
    use sqlacache_sqlx::testing::Probe as _;
    let server = RedisServer::start(&[]);
    let proxy = Proxy::start(server.port());
    let db = TestDb::with_schema(COUNTERS).await;
    let prefix = unique_prefix("own");
    let lease = Duration::from_secs(30);
    let build = |url: String| pool(&db, &prefix).redis(&url).redis_timeout(Duration::from_secs(2)).lease(lease).build();
    let a = build(proxy.url()).await.unwrap();
    let b = build(server.url()).await.unwrap();
    tiers_ready(&[&a, &b]).await;
    for round in 0..5 {
        proxy.silence_subscribers();
        let written = bump(&a, 1).await;
        assert_eq!(value(&a, 1).await, written, "round {round}");
        let before = a.stats();
        proxy.unsilence_subscribers();
        // (Naming its row, so that it invalidates no other.)
        sqlx::query("UPDATE counters SET v = v + 1 WHERE id = 2 RETURNING id, v").execute(&b).await.unwrap();
        let (publisher, seq) = b.bus_position_for_tests().expect("a bus");
        let start = std::time::Instant::now();
        while a.heard_from_for_tests(publisher) < seq {
            assert!(start.elapsed() < Duration::from_secs(30), "round {round}: A never heard B");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(value(&a, 1).await, written);
        let now = a.stats();
        assert!(
            now.hits > before.hits && now.redis_hits == before.redis_hits && now.misses == before.misses,
            "round {round}: not an in-process hit: its own write, heard back, invalidated again: {now:?}"
        );
    }
}
