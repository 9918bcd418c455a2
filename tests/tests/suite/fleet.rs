//! A fleet, not a pair: one member's outage or stall costs that member its own in-process
//! tier at most, never the others' tiers or what they share in Redis.

use sqlacache_sqlx::testing::{Hooks as _, Probe as _};
use sqlacache_sqlx::{CachedPool, CachedPoolBuilder};
use sqlacache_tests::redis::{tiers_ready, unique_prefix, Proxy, RedisServer};
use sqlacache_tests::{bump, value, Counter, TestDb, COUNTERS};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
        // Watched from a thread of its own: the lapse lasts two leases, and on a loaded machine
        // a task of the test's runtime (one of whose workers the stall blocks) may not be polled
        // within them, though the lapse happened.
        let (lapsed, watching) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(true)));
        let watcher = {
            let (a, lapsed, watching) = (a.clone(), lapsed.clone(), watching.clone());
            std::thread::spawn(move || {
                while watching.load(Ordering::SeqCst) {
                    if !a.feed_trusted_for_tests() {
                        lapsed.store(true, Ordering::SeqCst);
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        stall.store(u64::try_from((LEASE * 3).as_millis()).unwrap(), Ordering::SeqCst);
        // An outside write to another row: A's listener stalls applying it.
        let written: i64 = sqlx::query_scalar("UPDATE counters SET v = v + 1 WHERE id = 2 RETURNING v")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        let start = Instant::now();
        while !lapsed.load(Ordering::SeqCst) || stall.load(Ordering::SeqCst) != 0 {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "round {round}: A's listener never stalled (stall left {} ms, feed trusted {}): {:?}",
                stall.load(Ordering::SeqCst),
                a.feed_trusted_for_tests(),
                a.stats()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        watching.store(false, Ordering::SeqCst);
        watcher.join().unwrap();
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

/// Two pools with the change feed sharing Redis: A with both tiers, C with Redis only (its hits
/// are what Redis still holds).
async fn fed_pair(db: &TestDb, url: &str, prefix: &str) -> (CachedPool, CachedPool) {
    let a =
        builder(db, url, prefix, 1 << 20).redis_timeout(Duration::from_secs(1)).change_feed().build().await.unwrap();
    let c = builder(db, url, prefix, 0).redis_timeout(Duration::from_secs(1)).change_feed().build().await.unwrap();
    (a, c)
}

/// Waits until every pool's feed is trusted.
async fn feeds_trusted(pools: &[&CachedPool]) {
    let start = Instant::now();
    while !pools.iter().all(|p| p.feed_trusted_for_tests()) {
        assert!(start.elapsed() < Duration::from_secs(30), "a change feed was never trusted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reads row `id` through `cache` (Redis only) until it is a Redis hit.
async fn until_redis_hit(cache: &CachedPool, id: i32) {
    let start = Instant::now();
    loop {
        let hits = cache.stats().redis_hits;
        value(cache, id).await;
        if cache.stats().redis_hits > hits {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "never a Redis hit: {:?}", cache.stats());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Whether a read of row `id` through `cache` was a Redis hit.
async fn redis_hit(cache: &CachedPool, id: i32) -> bool {
    let (hits, misses) = (cache.stats().redis_hits, cache.stats().misses);
    value(cache, id).await;
    cache.stats().redis_hits > hits && cache.stats().misses == misses
}

/// Terminates the listeners of `pools` and bumps row 2 outside the pools while they cannot
/// listen again (the database takes no new connection meanwhile): its change is sent while none
/// of them listens. Returns the new value and the listeners' old backend pids.
async fn cut_listeners_and_write(db: &TestDb, pools: &[&CachedPool]) -> (i64, Vec<u32>) {
    use sqlx::Connection as _;
    let mut conn = db.pool.acquire().await.unwrap();
    let name: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&mut *conn).await.unwrap();
    // (A database cannot refuse connections to itself from within.)
    let options = db.pool.connect_options().as_ref().clone().database("postgres");
    let mut admin = sqlx::PgConnection::connect_with(&options).await.unwrap();
    let allow = |yes: bool| format!("ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS {yes}");
    sqlx::query(sqlx::AssertSqlSafe(allow(false))).execute(&mut admin).await.unwrap();
    let mut pids = Vec::new();
    for pool in pools {
        let pid = pool.feed_listener_pid_for_tests();
        assert_ne!(pid, 0, "the listener is connected");
        let gone: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)")
            .bind(i32::try_from(pid).unwrap())
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert!(gone, "listener {pid} terminated");
        pids.push(pid);
    }
    let written = sqlx::query_scalar("UPDATE counters SET v = v + 1 WHERE id = 2 RETURNING v")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    // The listeners have tried, and failed, to connect again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    sqlx::query(sqlx::AssertSqlSafe(allow(true))).execute(&mut admin).await.unwrap();
    (written, pids)
}

/// Waits until `cache` listens on a new connection (not `old`), has dropped its in-process
/// tier (more than `drops` drops) and trusts its change feed again.
async fn recovered(cache: &CachedPool, drops: u64, old: u32) {
    let start = Instant::now();
    loop {
        let pid = cache.feed_listener_pid_for_tests();
        if pid != 0 && pid != old && cache.stats().tier_drops > drops && cache.feed_trusted_for_tests() {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the feed did not recover: {:?}", cache.stats());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until A and C trust Redis and the feed, with rows 1 and 2 cached in A's in-process tier
/// and in Redis for C.
async fn warm_pair(a: &CachedPool, c: &CachedPool) {
    tiers_ready(&[a, c]).await;
    feeds_trusted(&[a, c]).await;
    until_local_hit(a, 1).await;
    until_local_hit(a, 2).await;
    until_redis_hit(c, 1).await;
    until_redis_hit(c, 2).await;
}

/// A's feed listener loses its connection while a write is made outside the pools: A drops
/// its own in-process tier, but C, whose listener heard the write and applied it to Redis,
/// vouches for the interval, so Redis is not emptied: C keeps hitting it, and A reads it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_feed_listener_costs_its_pool_its_own_tier_only() {
    let server = RedisServer::start(&[]);
    let db = TestDb::in_own_database(COUNTERS).await;
    let prefix = unique_prefix("vouch");
    let (a, c) = fed_pair(&db, &server.url(), &prefix).await;
    for round in 0..3 {
        warm_pair(&a, &c).await;
        let (drops_a, drops_c) = (a.stats().tier_drops, c.stats().tier_drops);
        let (written, old) = cut_listeners_and_write(&db, &[&a]).await;
        recovered(&a, drops_a, old[0]).await;
        assert_eq!(value(&a, 2).await, written, "round {round}: A missed the outside write");
        assert_eq!(value(&c, 2).await, written, "round {round}: C missed the outside write");
        assert!(redis_hit(&c, 1).await, "round {round}: Redis was emptied under C: {:?}", c.stats());
        assert!(redis_hit(&a, 1).await, "round {round}: A found Redis emptied: {:?}", a.stats());
        assert_eq!(c.stats().tier_drops, drops_c, "round {round}: C dropped its tier");
    }
}

/// When every listener lost the feed at once (as when PostgreSQL restarts), nobody can vouch
/// for the interval: Redis is emptied, and nobody serves the value the lost write changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_every_listener_lost_the_feed_redis_is_emptied() {
    let server = RedisServer::start(&[]);
    let db = TestDb::in_own_database(COUNTERS).await;
    let prefix = unique_prefix("novouch");
    let (a, c) = fed_pair(&db, &server.url(), &prefix).await;
    for round in 0..2 {
        warm_pair(&a, &c).await;
        let (drops_a, drops_c) = (a.stats().tier_drops, c.stats().tier_drops);
        let (written, old) = cut_listeners_and_write(&db, &[&a, &c]).await;
        recovered(&a, drops_a, old[0]).await;
        recovered(&c, drops_c, old[1]).await;
        assert_eq!(value(&c, 2).await, written, "round {round}: C served the lost write's old value from Redis");
        assert_eq!(value(&a, 2).await, written, "round {round}: A served the lost write's old value");
        assert!(!redis_hit(&c, 1).await, "round {round}: Redis was not emptied: {:?}", c.stats());
    }
}

/// A pool configured differently (another table cached) does not vouch: what a change
/// invalidates for it may differ, so Redis is emptied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_a_pool_configured_alike_vouches() {
    let server = RedisServer::start(&[]);
    let db = TestDb::in_own_database(&format!("{COUNTERS} CREATE TABLE other_counters (id int PRIMARY KEY);")).await;
    let prefix = unique_prefix("unlike");
    let a = builder(&db, &server.url(), &prefix, 1 << 20)
        .redis_timeout(Duration::from_secs(1))
        .change_feed()
        .build()
        .await
        .unwrap();
    let c = builder(&db, &server.url(), &prefix, 0)
        .redis_timeout(Duration::from_secs(1))
        .table("other_counters", sqlacache_sqlx::Ops::ALL, Duration::from_secs(60))
        .change_feed()
        .build()
        .await
        .unwrap();
    warm_pair(&a, &c).await;
    let drops = a.stats().tier_drops;
    let (written, old) = cut_listeners_and_write(&db, &[&a]).await;
    recovered(&a, drops, old[0]).await;
    assert_eq!(value(&a, 2).await, written);
    assert!(!redis_hit(&c, 1).await, "Redis was kept on a vouch from a pool configured otherwise: {:?}", c.stats());
}
