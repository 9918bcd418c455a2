//! A fleet, not a pair: one member's outage or stall costs that member its own in-process
//! tier at most, never the others' tiers or what they share in Redis.

use sqlacache_sqlx::testing::{Hooks as _, Probe as _};
use sqlacache_sqlx::{CachedPool, CachedPoolBuilder};
use sqlacache_tests::redis::{tiers_ready, unique_prefix, Proxy, RedisServer};
use sqlacache_tests::{bump, value, Counter, TestDb, COUNTERS};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LEASE: Duration = Duration::from_millis(300);

fn builder(db: &TestDb, url: &str, prefix: &str, memory: u64) -> CachedPoolBuilder {
    sqlacache_tests::builder(db.pool.clone())
        .model::<Counter>()
        .default_ttl(Duration::from_secs(60))
        .redis(url)
        .key_prefix(prefix)
        .memory_capacity(memory)
        .lease(LEASE)
        .redis_timeout(Duration::from_millis(50))
}

/// Reads row `id` through `cache` until it is served from the in-process tier.
async fn until_local_hit(cache: &CachedPool, id: i32) {
    let start = Instant::now();
    loop {
        let (hits, redis_hits) = (cache.stats().hits, cache.stats().redis_hits);
        value(cache, id).await;
        let now = cache.stats();
        if now.hits > hits && now.redis_hits == redis_hits {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "never an in-process hit: {now:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// B loses Redis for a while (its commands fail and its breaker opens) and writes meanwhile:
/// the same Redis server answers again, so B delivers what it could not, and A and C keep their
/// in-process tiers and every other entry (no tier drop, nothing invalidated wholesale).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_members_outage_costs_the_others_nothing() {
    let server = RedisServer::start(&[]);
    let proxy = Proxy::start(server.port());
    let db = TestDb::with_schema(COUNTERS).await;
    let prefix = unique_prefix("outage");
    let a = builder(&db, &server.url(), &prefix, 1 << 20).build().await.unwrap();
    let c = builder(&db, &server.url(), &prefix, 1 << 20).build().await.unwrap();
    let b = builder(&db, &proxy.url(), &prefix, 1 << 20).build().await.unwrap();
    for round in 0..3 {
        tiers_ready(&[&a, &b, &c]).await;
        for cache in [&a, &c] {
            until_local_hit(cache, 1).await;
            until_local_hit(cache, 2).await;
        }
        let (sa, sc) = (a.stats(), c.stats());
        proxy.block();
        let writer = {
            let b = b.clone();
            tokio::spawn(async move { bump(&b, 2).await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        proxy.unblock();
        let written = writer.await.unwrap();
        tiers_ready(&[&b]).await;
        for (name, cache, before) in [("A", &a, sa), ("C", &c, sc)] {
            let start = Instant::now();
            while value(cache, 2).await != written {
                assert!(start.elapsed() < LEASE * 2, "round {round}: {name} missed B's write");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            until_local_hit(cache, 1).await;
            let after = cache.stats();
            assert_eq!(after.tier_drops, before.tier_drops, "round {round}: {name} dropped its tier: {after:?}");
            assert_eq!(
                after.full_invalidations, before.full_invalidations,
                "round {round}: {name} was told to drop everything: {after:?}"
            );
        }
    }
}

/// A's change-feed listener stalls for longer than the lease (as a paused process would) but
/// loses nothing: once it catches up it trusts its tiers again without dropping them, and it
/// does not empty Redis under C, which keeps its values there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_feed_listener_empties_neither_its_tier_nor_redis() {
    let server = RedisServer::start(&[]);
    let db = TestDb::in_own_database(COUNTERS).await;
    let prefix = unique_prefix("stall");
    let stall = Arc::new(AtomicU64::new(0));
    let hook = stall.clone();
    // (A timeout long enough that a loaded machine does not fail Redis commands: this is about
    // a stall, not an outage.)
    let a = builder(&db, &server.url(), &prefix, 1 << 20)
        .redis_timeout(Duration::from_secs(1))
        .change_feed()
        .invalidate_hook(move || {
            let ms = hook.swap(0, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(ms));
        })
        .build()
        .await
        .unwrap();
    // Redis only: its hits are what Redis still holds.
    let c = builder(&db, &server.url(), &prefix, 0)
        .redis_timeout(Duration::from_secs(1))
        .change_feed()
        .build()
        .await
        .unwrap();
    for round in 0..3 {
        tiers_ready(&[&a, &c]).await;
        while !(a.feed_trusted_for_tests() && c.feed_trusted_for_tests()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        until_local_hit(&a, 1).await;
        let start = Instant::now();
        loop {
            let hits = c.stats().redis_hits;
            value(&c, 1).await;
            if c.stats().redis_hits > hits {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "C never hit Redis");
        }
        let (sa, sc) = (a.stats(), c.stats());
        stall.store(u64::try_from((LEASE * 3).as_millis()).unwrap(), Ordering::SeqCst);
        // An outside write to another row: A's listener stalls applying it.
        let written: i64 = sqlx::query_scalar("UPDATE counters SET v = v + 1 WHERE id = 2 RETURNING v")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        let start = Instant::now();
        while a.feed_trusted_for_tests() || stall.load(Ordering::SeqCst) != 0 {
            assert!(start.elapsed() < Duration::from_secs(30), "A's listener never stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        while !a.feed_trusted_for_tests() {
            assert!(start.elapsed() < Duration::from_secs(30), "A's feed was never trusted again");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(value(&a, 2).await, written, "round {round}: A missed the outside write");
        until_local_hit(&a, 1).await;
        assert_eq!(a.stats().tier_drops, sa.tier_drops, "round {round}: A dropped its tier: {:?}", a.stats());
        let (hits, misses) = (c.stats().redis_hits, c.stats().misses);
        value(&c, 1).await;
        assert!(
            c.stats().redis_hits > hits && c.stats().misses == misses,
            "round {round}: Redis was emptied under C: before {sc:?}, now {:?}",
            c.stats()
        );
    }
}
