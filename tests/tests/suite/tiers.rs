//! Redis as a shared tier of the pool: what one pool writes, another pool (standing for another
//! process: its own in-process tier, its own Redis connections) reads fresh. With Redis only,
//! at once; with two tiers, once the invalidation is delivered, and never later than the lease
//! after the write returned, whatever happens to Redis.

use sqlacache_sqlx::testing::Probe as _;
use sqlacache_sqlx::{CachedPool, Error};
use sqlacache_tests::redis::{
    free_port, redis_url, require_shared_redis, tiers_ready, unique_prefix, Proxy, RedisCluster, RedisServer, TlsFiles,
};
use sqlacache_tests::{bump, until, value, Counter, TestDb, COUNTERS};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LEASE: Duration = Duration::from_millis(300);
const TIMEOUT: Duration = Duration::from_millis(50);
/// The command timeout of the tests that are not about faults.
const ROOMY: Duration = Duration::from_secs(2);

/// A pool on `url` under `prefix`; `memory` 0 keeps values in Redis only.
async fn pool(db: &TestDb, url: &str, prefix: &str, memory: u64) -> CachedPool {
    pool_on(db.pool.clone(), url, prefix, memory).await
}

/// [`pool`] whose commands have room to spare, for the tests of what pools share (not of
/// faults): on a loaded machine a command can outlast the 50 ms timeout, and reads then skip
/// Redis for a while, which those tests would take for values not shared.
async fn roomy_pool(db: &TestDb, url: &str, prefix: &str, memory: u64) -> CachedPool {
    pool_timed(db.pool.clone(), url, prefix, memory, ROOMY).await
}

/// [`pool`] over a PostgreSQL pool of the caller's.
async fn pool_on(pg: sqlx::PgPool, url: &str, prefix: &str, memory: u64) -> CachedPool {
    pool_timed(pg, url, prefix, memory, TIMEOUT).await
}

/// [`pool_on`] whose Redis commands may take up to `timeout`.
async fn pool_timed(pg: sqlx::PgPool, url: &str, prefix: &str, memory: u64, timeout: Duration) -> CachedPool {
    sqlacache_tests::builder(pg)
        .model::<Counter>()
        // Its keys in the shared Redis expire within a minute.
        .default_ttl(Duration::from_secs(60))
        .redis(url)
        .key_prefix(prefix)
        .memory_capacity(memory)
        .lease(LEASE)
        .redis_timeout(timeout)
        .build()
        .await
        .expect("build a pool with Redis")
}

async fn total(cache: &CachedPool) -> i64 {
    sqlacache_sqlx::query_scalar::<i64>("SELECT sum(v)::bigint FROM counters").fetch_one(cache).await.unwrap()
}

async fn redis_only_is_fresh_across_processes(url: &str) {
    let db = TestDb::with_schema(COUNTERS).await;
    let prefix = unique_prefix("strict");
    let (a, b) = (roomy_pool(&db, url, &prefix, 0).await, roomy_pool(&db, url, &prefix, 0).await);
    tiers_ready(&[&a, &b]).await;
    for i in 1..=60 {
        // Both read (and fill Redis), then a write through A returns: B's next read is fresh.
        let _ = (value(&b, 1).await, total(&b).await, value(&a, 1).await);
        if i % 3 == 0 {
            // A transaction invalidates when its commit returns.
            let mut tx = a.begin().await.unwrap();
            sqlx::query("UPDATE counters SET v = v + 1 WHERE id = 1").execute(&mut *tx).await.unwrap();
            assert_eq!(value(&b, 1).await, i - 1, "not committed yet");
            tx.commit().await.unwrap();
        } else {
            assert_eq!(bump(&a, 1).await, i);
        }
        assert_eq!(value(&b, 1).await, i, "point read after write {i}");
        assert_eq!(total(&b).await, i, "aggregate after write {i}");
        assert_eq!(value(&b, 1).await, i, "a hit after write {i}");
    }
    let (sa, sb) = (a.stats(), b.stats());
    assert!(sb.redis_hits > 0 && sa.redis_hits > 0, "values are shared: {sa:?} {sb:?}");
    assert!(sa.published >= 60, "every write is published: {sa:?}");
    // A loaded machine may make a command outlast the 50 ms timeout: then reads skip Redis for
    // a while, which costs hits, never freshness (asserted above).
    if sa.redis_errors + sb.redis_errors > 0 {
        eprintln!("Redis commands that timed out or failed: {} and {}", sa.redis_errors, sb.redis_errors);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_only_a_write_in_one_process_is_seen_at_once_by_another() {
    require_shared_redis();
    redis_only_is_fresh_across_processes(&redis_url()).await;
}

async fn two_tiers_deliver_writes_to_other_processes(url: &str) -> Vec<Duration> {
    let db = TestDb::with_schema(COUNTERS).await;
    let prefix = unique_prefix("tiers");
    let (a, b) = (roomy_pool(&db, url, &prefix, 1 << 20).await, roomy_pool(&db, url, &prefix, 1 << 20).await);
    tiers_ready(&[&a, &b]).await;
    let mut windows = Vec::new();
    for i in 1..=60 {
        let _ = (value(&b, 2).await, value(&b, 2).await, total(&b).await);
        let received = b.stats().received;
        assert_eq!(bump(&a, 2).await, i);
        let returned = Instant::now();
        // Delivered: B's copy is gone.
        while b.stats().received == received {
            assert!(returned.elapsed() < Duration::from_secs(10), "the invalidation of write {i} never arrived");
            tokio::task::yield_now().await;
        }
        windows.push(returned.elapsed());
        assert_eq!(value(&b, 2).await, i, "point read after delivery of write {i}");
        assert_eq!(total(&b).await, i, "aggregate after delivery of write {i}");
    }
    let sb = b.stats();
    assert!(sb.hits > sb.redis_hits, "B serves from its in-process tier: {sb:?}");
    windows.sort();
    windows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tiers_a_write_reaches_the_other_processes_in_process_tier() {
    require_shared_redis();
    let windows = two_tiers_deliver_writes_to_other_processes(&redis_url()).await;
    eprintln!(
        "delivery window: p50 {:?}, p99 {:?}, max {:?}",
        windows[windows.len() / 2],
        windows[windows.len() * 99 / 100],
        windows[windows.len() - 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_shares_values_and_invalidations() {
    let cluster = RedisCluster::start();
    redis_only_is_fresh_across_processes(&cluster.url()).await;
    two_tiers_deliver_writes_to_other_processes(&cluster.url()).await;
}

/// Writes through one pool and reads through both, checking every read against the writes
/// that returned before it started: a read may miss a write only within the lease after it
/// returned, and with Redis only, not at all once both pools are back. Runs `fault` meanwhile;
/// returns the number of stale reads.
async fn under_load(
    url: &str,
    memory: u64,
    fault: impl std::future::Future<Output = ()>,
) -> (u64, CachedPool, CachedPool) {
    let db = TestDb::with_schema(COUNTERS).await;
    let prefix = unique_prefix("fault");
    let (a, b) = (pool(&db, url, &prefix, memory).await, pool(&db, url, &prefix, memory).await);
    tiers_ready(&[&a, &b]).await;
    // (returned at, value) of every write, in order.
    let written: Arc<Mutex<Vec<(Instant, i64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let stale = Arc::new(AtomicU64::new(0));
    // Set once every pool has Redis again.
    let back = Arc::new(AtomicBool::new(false));
    // The slowest read and write, in microseconds.
    let slowest: Arc<[AtomicU64; 2]> = Arc::default();
    let writer = {
        let (a, written, stop, slowest) = (a.clone(), written.clone(), stop.clone(), slowest.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let began = Instant::now();
                let v = bump(&a, 3).await;
                slowest[1].fetch_max(began.elapsed().as_micros() as u64, Ordering::Relaxed);
                written.lock().unwrap().push((Instant::now(), v));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let began = Instant::now();
    let readers: Vec<_> = [a.clone(), b.clone(), b.clone()]
        .into_iter()
        .enumerate()
        .map(|(reader, cache)| {
            let (written, stop, stale, back) = (written.clone(), stop.clone(), stale.clone(), back.clone());
            let slowest = slowest.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let margin = if memory == 0 && back.load(Ordering::SeqCst) { Duration::ZERO } else { LEASE };
                    let start = Instant::now();
                    let seen = value(&cache, 3).await;
                    slowest[0].fetch_max(start.elapsed().as_micros() as u64, Ordering::Relaxed);
                    let must = written
                        .lock()
                        .unwrap()
                        .iter()
                        .rev()
                        .find(|(at, _)| *at + margin <= start)
                        .map_or(0, |(_, v)| *v);
                    if seen < must {
                        stale.fetch_add(1, Ordering::Relaxed);
                        eprintln!(
                            "stale: reader {reader} at {:?} saw {seen}, a write of {must} returned over a lease before the read; {:?}",
                            began.elapsed(),
                            cache.stats()
                        );
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    fault.await;
    tiers_ready(&[&a, &b]).await;
    back.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("no write failed");
    for reader in readers {
        reader.await.expect("no read failed");
    }
    assert!(written.lock().unwrap().len() > 50, "the writer made progress");
    // How long a call waited at most, for the record (the bound is the command timeout plus
    // PostgreSQL's own time; not asserted, since a loaded machine stretches both).
    eprintln!(
        "slowest read {} us, slowest write {} us",
        slowest[0].load(Ordering::Relaxed),
        slowest[1].load(Ordering::Relaxed)
    );
    (stale.load(Ordering::Relaxed), a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_load_then_restarted_empty() {
    let mut server = RedisServer::start(&[]);
    let url = server.url();
    let (stale, a, b) = under_load(&url, 1 << 20, async {
        for _ in 0..3 {
            server.kill();
            tokio::time::sleep(Duration::from_millis(500)).await;
            server.restart();
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
    })
    .await;
    assert_eq!(stale, 0);
    assert!(a.stats().redis_errors + b.stats().redis_errors > 0, "the outage was seen");
    assert!(b.stats().degraded > 0, "reads went around Redis while it was down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_during_writes_then_resumed() {
    let server = RedisServer::start(&[]);
    let (stale, a, b) = under_load(&server.url(), 1 << 20, async {
        server.freeze();
        tokio::time::sleep(Duration::from_secs(2)).await;
        server.resume();
    })
    .await;
    assert_eq!(stale, 0);
    assert!(a.stats().redis_errors > 0, "writes timed out against the frozen server");
    until("the in-process tier is dropped before it is trusted again", || b.stats().tier_drops > 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_with_values_in_redis_only() {
    let server = RedisServer::start(&[]);
    let (stale, a, _b) = under_load(&server.url(), 0, async {
        server.freeze();
        tokio::time::sleep(Duration::from_secs(2)).await;
        server.resume();
    })
    .await;
    assert_eq!(stale, 0);
    assert!(a.stats().redis_errors > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_connections_killed() {
    let server = RedisServer::start(&[]);
    let (stale, _a, b) = under_load(&server.url(), 1 << 20, async {
        for _ in 0..3 {
            server.kill_subscribers();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await;
    assert_eq!(stale, 0);
    until("a reconnected subscriber drops the in-process tier", || b.stats().tier_drops > 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_never_makes_a_value_look_fresh() {
    // Tags and values are evicted at random; a missing tag is a miss, never a hit.
    let server = RedisServer::start(&["--maxmemory", "2mb", "--maxmemory-policy", "allkeys-random"]);
    let (stale, ..) = under_load(&server.url(), 0, async {
        let filler = redis_filler(&server);
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(filler);
    })
    .await;
    assert_eq!(stale, 0);
}

/// Fills the server's memory with unrelated keys from a thread, until dropped.
fn redis_filler(server: &RedisServer) -> impl Drop {
    struct Filler(Arc<AtomicBool>);
    impl Drop for Filler {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (port, done) = (server.port(), stop.clone());
    std::thread::spawn(move || {
        let mut i = 0u64;
        while !done.load(Ordering::Relaxed) {
            let _ = std::process::Command::new("redis-cli")
                .args(["-p", &port.to_string(), "SET", &format!("filler{i}"), &"x".repeat(20_000)])
                .stdout(std::process::Stdio::null())
                .status();
            i += 1;
        }
    });
    Filler(stop)
}

#[tokio::test]
async fn an_invalid_url_fails_build_and_an_unreachable_redis_does_not() {
    let db = TestDb::with_schema(COUNTERS).await;
    for url in ["http://127.0.0.1:6379", "127.0.0.1:6379", "redis://[::1"] {
        let error = sqlacache_tests::builder(db.pool.clone()).redis(url).build().await.unwrap_err();
        assert!(matches!(error, Error::Redis(_)), "{url}: {error}");
        assert!(error.to_string().contains("Redis"), "{error}");
    }
    // Nothing listens on this port: the pool builds, and works on PostgreSQL alone.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cache = pool(&db, &format!("redis://127.0.0.1:{port}"), &unique_prefix("down"), 1 << 20).await;
    for i in 1..=3 {
        assert_eq!(bump(&cache, 4).await, i);
        assert_eq!(value(&cache, 4).await, i);
    }
    assert!(!cache.tiers_ready_for_tests());
    assert!(cache.stats().degraded > 0);
}

#[tokio::test]
async fn invalidate_all_touches_only_its_own_prefix() {
    require_shared_redis();
    let db = TestDb::with_schema(COUNTERS).await;
    let (one, two) = (unique_prefix("one"), unique_prefix("two"));
    let (a, b) = (roomy_pool(&db, &redis_url(), &one, 0).await, roomy_pool(&db, &redis_url(), &two, 0).await);
    // Both values in Redis: a fill stores there off the reader's path, so read until served
    // from there.
    for cache in [&a, &b] {
        until_redis_hit(cache, 5).await;
    }
    a.invalidate_all().await.unwrap();
    // A read that found Redis usable was a hit. (On a loaded machine a command may outlast the
    // timeout; the breaker then sends a read to PostgreSQL, which says nothing: read again.)
    let start = Instant::now();
    loop {
        tiers_ready(&[&b]).await;
        let (hits, errors) = (b.stats().redis_hits, b.stats().redis_errors);
        value(&b, 5).await;
        if b.stats().redis_hits == hits + 1 {
            break;
        }
        assert!(b.stats().redis_errors > errors, "another prefix lost its values: {:?}", b.stats());
        assert!(start.elapsed() < Duration::from_secs(20), "Redis kept failing");
    }
    let misses = a.stats().misses;
    value(&a, 5).await;
    assert_eq!(a.stats().misses, misses + 1, "its own prefix lost them");
}

/// Reads `id` through `cache` until one is served from Redis.
async fn until_redis_hit(cache: &CachedPool, id: i32) {
    let start = Instant::now();
    loop {
        tiers_ready(&[cache]).await;
        let hits = cache.stats().redis_hits;
        value(cache, id).await;
        if cache.stats().redis_hits > hits {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "never served from Redis: {:?}", cache.stats());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// B caches row `id`, `cut` keeps B from hearing the bus, and A writes the row: whatever B reads
/// from a lease after the write returned on is fresh.
async fn unheard_write_is_not_served_past_the_lease(a: &CachedPool, b: &CachedPool, id: i32, cut: impl FnOnce()) {
    tiers_ready(&[a, b]).await;
    let before = value(b, id).await;
    assert_eq!(value(b, id).await, before, "cached in B");
    cut();
    let written = bump(a, id).await;
    let returned = Instant::now();
    tokio::time::sleep_until((returned + LEASE).into()).await;
    for _ in 0..20 {
        assert_eq!(value(b, id).await, written, "round {id}: B served its copy past the lease");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_published_while_the_subscriber_was_away_is_not_missed() {
    let server = RedisServer::start(&[]);
    let db = TestDb::with_schema(COUNTERS).await;
    let prefix = unique_prefix("away");
    let (a, b) = (pool(&db, &server.url(), &prefix, 1 << 20).await, pool(&db, &server.url(), &prefix, 1 << 20).await);
    for id in 1..=5 {
        // B's subscription is gone: the message of this write reaches nobody. B drops its tier
        // when it subscribes again, before trusting it.
        unheard_write_is_not_served_past_the_lease(&a, &b, id, || server.kill_subscribers()).await;
    }
    until("B drops its tier once per subscription lost", || b.stats().tier_drops >= 5).await;
}

#[tokio::test]
async fn two_databases_sharing_one_redis_and_prefix_never_share_entries() {
    require_shared_redis();
    // The same schema and table name in two databases, holding different values.
    let here = TestDb::with_schema(COUNTERS).await;
    let url = sqlacache_tests::database_url();
    let other_url = match url.rsplit_once('/') {
        Some((server, _)) => format!("{server}/postgres"),
        None => panic!("DATABASE_URL {url:?} names no database"),
    };
    let admin = sqlx::PgPool::connect(&other_url).await.expect("the postgres database");
    let schema = here.schema.clone();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA {schema}; CREATE TABLE {schema}.counters (id int PRIMARY KEY, v bigint NOT NULL);
         INSERT INTO {schema}.counters VALUES (1, 1000);"
    )))
    .execute(&admin)
    .await
    .unwrap();
    let options: sqlx::postgres::PgConnectOptions = other_url.parse().unwrap();
    let there_pool = sqlx::PgPool::connect_with(options.options([("search_path", schema.as_str())])).await.unwrap();
    let prefix = unique_prefix("dbs");
    let a = roomy_pool(&here, &redis_url(), &prefix, 0).await;
    let b = pool_timed(there_pool.clone(), &redis_url(), &prefix, 0, ROOMY).await;
    tiers_ready(&[&a, &b]).await;
    for _ in 0..3 {
        assert_eq!(value(&a, 1).await, 0);
        assert_eq!(value(&b, 1).await, 1000);
    }
    assert!(a.stats().redis_hits > 0 && b.stats().redis_hits > 0);
    there_pool.close().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE"))).execute(&admin).await.unwrap();
}

/// Another process, running `peer` (a pool with Redis over this test's schema).
pub(crate) struct Peer {
    child: std::process::Child,
    input: std::process::ChildStdin,
    output: std::io::BufReader<std::process::ChildStdout>,
}

impl Peer {
    fn start(db: &TestDb, redis: &str, prefix: &str, memory: u64) -> Peer {
        Peer::start_with(db, redis, prefix, memory, &[])
    }

    fn start_with(db: &TestDb, redis: &str, prefix: &str, memory: u64, env: &[(&str, &std::path::Path)]) -> Peer {
        Peer::spawn(db, redis, prefix, memory, LEASE, env, &[])
    }

    /// A peer with the change feed and no Redis.
    pub(crate) fn with_feed(db: &TestDb, lease: Duration) -> Peer {
        Peer::spawn(db, "-", "-", 1 << 20, lease, &[], &["feed"])
    }

    fn spawn(
        db: &TestDb,
        redis: &str,
        prefix: &str,
        memory: u64,
        lease: Duration,
        env: &[(&str, &std::path::Path)],
        extra: &[&str],
    ) -> Peer {
        use std::process::{Command, Stdio};
        let mut child = Command::new(env!("CARGO_BIN_EXE_peer"))
            .envs(env.iter().copied())
            .args([&sqlacache_tests::database_url(), &db.schema, redis, prefix, &memory.to_string()])
            .arg(lease.as_millis().to_string())
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the peer process");
        let input = child.stdin.take().expect("piped");
        let output = std::io::BufReader::new(child.stdout.take().expect("piped"));
        Peer { child, input, output }
    }

    /// Sends one command and returns its answer (blocking: the peer answers at once).
    pub(crate) fn ask(&mut self, command: &str) -> String {
        use std::io::{BufRead, Write};
        writeln!(self.input, "{command}").expect("the peer is running");
        let mut answer = String::new();
        self.output.read_line(&mut answer).expect("the peer answers");
        assert!(!answer.is_empty(), "the peer exited on {command:?}");
        answer.trim().to_owned()
    }

    pub(crate) fn get(&mut self, id: i32) -> i64 {
        self.ask(&format!("get {id}")).parse().expect("a number")
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_redis_and_stay_fresh_for_each_other() {
    require_shared_redis();
    let db = TestDb::with_schema(COUNTERS).await;
    for memory in [0, 1 << 20] {
        let prefix = unique_prefix("processes");
        let here = roomy_pool(&db, &redis_url(), &prefix, memory).await;
        let mut there = Peer::start(&db, &redis_url(), &prefix, memory);
        assert_eq!(there.ask("ready"), "ready");
        tiers_ready(&[&here]).await;
        let mut windows = Vec::new();
        for _ in 0..30 {
            // The other process caches the row; this one writes it.
            let before = there.get(1);
            assert_eq!(there.get(1), before);
            let received: u64 = there.ask("received").parse().unwrap();
            let written = bump(&here, 1).await;
            let returned = Instant::now();
            if memory == 0 {
                assert_eq!(there.get(1), written, "Redis only: fresh as soon as the write returned");
            } else {
                while there.ask("received").parse::<u64>().unwrap() == received {
                    assert!(returned.elapsed() < Duration::from_secs(10), "the invalidation never arrived");
                }
                windows.push(returned.elapsed());
                assert_eq!(there.get(1), written, "two tiers: fresh once delivered");
            }
            // And the other way round: the other process writes, this one reads.
            let _ = value(&here, 2).await;
            let received = here.stats().received;
            let written: i64 = there.ask("bump 2").parse().unwrap();
            if memory != 0 {
                let asked = Instant::now();
                while here.stats().received == received {
                    assert!(asked.elapsed() < Duration::from_secs(10), "the invalidation never arrived");
                    tokio::task::yield_now().await;
                }
            }
            assert_eq!(value(&here, 2).await, written);
        }
        if !windows.is_empty() {
            windows.sort();
            eprintln!(
                "two processes: delivery p50 {:?}, p99 {:?}",
                windows[windows.len() / 2],
                windows[windows.len() * 99 / 100]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_a_late_reconnecting_process_could_not_deliver_is_not_missed() {
    // Redis restarts; B is back at once, A reconnects a little later (its connections go
    // through a proxy that the test holds closed), and writes meanwhile: its invalidation
    // cannot be delivered. B must not serve, from Redis, a value older than that write.
    let mut server = RedisServer::start(&[]);
    let proxy = Proxy::start(server.port());
    let db = TestDb::with_schema(COUNTERS).await;
    let prefix = unique_prefix("late");
    let a = pool(&db, &proxy.url(), &prefix, 0).await;
    let b = pool(&db, &server.url(), &prefix, 0).await;
    tiers_ready(&[&a, &b]).await;
    for _ in 0..3 {
        value(&b, 1).await;
    }
    proxy.block();
    server.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart();
    let start = Instant::now();
    while !b.redis_answering_for_tests() {
        assert!(start.elapsed() < Duration::from_secs(10), "B did not reconnect");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // B reads (filling Redis, if it trusted it already), then A writes and cannot deliver.
    let before = value(&b, 1).await;
    let written = bump(&a, 1).await;
    assert_eq!(written, before + 1);
    let returned = Instant::now();
    // A stays cut off a little longer (its client would retry within `RECONNECT_MAX`).
    let mut unblocked = false;
    while returned.elapsed() < Duration::from_secs(2) {
        if !unblocked && returned.elapsed() > Duration::from_millis(100) {
            proxy.unblock();
            unblocked = true;
        }
        assert_eq!(value(&b, 1).await, written, "B served a value older than A's write");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tiers_ready(&[&a, &b]).await;
    assert_eq!(value(&b, 1).await, written);
    assert!(b.stats().redis_hits > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_share_values_and_invalidations() {
    // A server that also listens with TLS, its certificate signed by a CA of the test's own,
    // which the two processes trust through SSL_CERT_FILE.
    let tls = TlsFiles::create();
    let tls_port = free_port();
    let args = tls.server_args(tls_port);
    let server = RedisServer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let url = format!("rediss://localhost:{tls_port}");
    let db = TestDb::with_schema(COUNTERS).await;
    for memory in [0, 1 << 20] {
        let prefix = unique_prefix("tls");
        let ca = tls.ca();
        let env = [("SSL_CERT_FILE", ca.as_path())];
        let mut one = Peer::start_with(&db, &url, &prefix, memory, &env);
        let mut two = Peer::start_with(&db, &url, &prefix, memory, &env);
        assert_eq!(one.ask("ready"), "ready", "the first process connected over TLS");
        assert_eq!(two.ask("ready"), "ready");
        for _ in 0..10 {
            let before = two.get(1);
            assert_eq!(two.get(1), before);
            let received: u64 = two.ask("received").parse().unwrap();
            let written: i64 = one.ask("bump 1").parse().unwrap();
            let asked = Instant::now();
            while memory > 0 && two.ask("received").parse::<u64>().unwrap() == received {
                assert!(asked.elapsed() < Duration::from_secs(10), "the invalidation never arrived");
            }
            assert_eq!(two.get(1), written);
        }
    }
    // Without the CA, the certificate is not trusted: the pool works on PostgreSQL alone.
    let untrusted = pool(&db, &url, &unique_prefix("tls"), 0).await;
    assert_eq!(value(&untrusted, 2).await, 0);
    assert!(!untrusted.tiers_ready_for_tests());
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_frozen_under_load() {
    // One node, then every node (the one holding the channel among them), frozen for 2 s.
    let mut cluster = RedisCluster::start();
    let url = cluster.url();
    for (memory, nodes) in [(1 << 20, 1..2), (1 << 20, 0..3), (0, 0..3)] {
        let (stale, a, b) = under_load(&url, memory, async {
            for i in nodes.clone() {
                cluster.node(i).freeze();
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            for i in nodes.clone() {
                cluster.node(i).resume();
            }
        })
        .await;
        assert_eq!(stale, 0, "memory {memory}, nodes {nodes:?}");
        // One node may hold none of the keys or the channel this load touches; all of them do.
        if nodes.len() == 3 {
            assert!(a.stats().redis_errors + b.stats().redis_errors > 0, "the frozen nodes were seen");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_and_password_in_the_url_are_used() {
    let server = RedisServer::start(&["--user", "alice", "on", ">secret", "~*", "&*", "+@all"]);
    let port = server.port();
    let db = TestDb::with_schema(COUNTERS).await;
    let prefix = unique_prefix("acl");
    let url = format!("redis://alice:secret@127.0.0.1:{port}");
    // Commands with room to spare (even on a loaded machine): any error is then the password's.
    let slow = ROOMY;
    let a = pool_timed(db.pool.clone(), &url, &prefix, 0, slow).await;
    let b = pool_timed(db.pool.clone(), &url, &prefix, 0, slow).await;
    tiers_ready(&[&a, &b]).await;
    for _ in 0..3 {
        value(&b, 1).await;
        let written = bump(&a, 1).await;
        assert_eq!(value(&b, 1).await, written);
    }
    // B stores the row (on a task of its own); A then reads it from Redis.
    value(&b, 1).await;
    let start = Instant::now();
    while a.stats().redis_hits == 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "A never read what B stored: {:?}", a.stats());
        value(&a, 1).await;
    }
    assert!(a.stats().published >= 3, "A's writes reached Redis: {:?}", a.stats());
    assert_eq!(a.stats().redis_errors + b.stats().redis_errors, 0);
    // A wrong password: the pool builds and works on PostgreSQL alone.
    let wrong = pool(&db, &format!("redis://alice:wrong@127.0.0.1:{port}"), &prefix, 0).await;
    let written = bump(&wrong, 2).await;
    assert_eq!(value(&wrong, 2).await, written);
    assert!(!wrong.tiers_ready_for_tests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_subscription_stops_the_in_process_tier_within_the_lease() {
    // B's connections go through a proxy that stops delivering to its subscription without an
    // error (a half-open connection): B's commands still work, so only the lease can tell.
    let server = RedisServer::start(&[]);
    let proxy = Proxy::start(server.port());
    let db = TestDb::with_schema(COUNTERS).await;
    let prefix = unique_prefix("silent");
    // Commands with room to spare (even on a loaded machine), so that only the lease can tell.
    let slow = ROOMY;
    let a = pool_timed(db.pool.clone(), &server.url(), &prefix, 1 << 20, slow).await;
    let b = pool_timed(db.pool.clone(), &proxy.url(), &prefix, 1 << 20, slow).await;
    for id in 1..=3 {
        unheard_write_is_not_served_past_the_lease(&a, &b, id, || proxy.silence_subscribers()).await;
        assert_eq!(b.stats().redis_errors, 0, "B's commands kept working");
        proxy.unsilence_subscribers();
    }
    tiers_ready(&[&a, &b]).await;
    assert!(b.stats().degraded > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_in_redis_that_does_not_decode_is_a_miss_and_is_replaced() {
    use fred::interfaces::{ClientLike, KeysInterface};
    require_shared_redis();
    let db = TestDb::with_schema(COUNTERS).await;
    let prefix = unique_prefix("corrupt");
    let (a, b) = (roomy_pool(&db, &redis_url(), &prefix, 0).await, roomy_pool(&db, &redis_url(), &prefix, 0).await);
    tiers_ready(&[&a, &b]).await;
    let written = bump(&a, 1).await;
    assert_eq!(value(&a, 1).await, written);
    // Damage the stored value's payload, keeping its header (so its epochs still hold).
    let raw =
        fred::prelude::Builder::from_config(fred::prelude::Config::from_url(&redis_url()).unwrap()).build().unwrap();
    raw.init().await.unwrap();
    let start = Instant::now();
    let key = loop {
        let (_, keys): (String, Vec<String>) = raw
            .custom(
                fred::cmd!("SCAN"),
                vec!["0".to_owned(), "MATCH".into(), format!("{prefix}:*:b:*"), "COUNT".into(), "1000000".into()],
            )
            .await
            .unwrap();
        if let Some(key) = keys.into_iter().next() {
            break key;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the value was never stored");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let stored: Vec<u8> = raw.get(&key).await.unwrap();
    let header_end = stored.windows(2).position(|w| w == b"\n\n").expect("a header") + 2;
    let mut damaged = stored[..header_end].to_vec();
    damaged.extend_from_slice(&[0xff; 3]);
    let () = raw.set(&key, damaged, Some(fred::types::Expiration::KEEPTTL), None, false).await.unwrap();

    assert_eq!(value(&b, 1).await, written, "read from PostgreSQL");
    assert_eq!(b.stats().corrupt_entries, 1);
    let start = Instant::now();
    while b.stats().redis_hits == 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "the damaged value was never replaced");
        assert_eq!(value(&b, 1).await, written);
    }
    assert_eq!(b.stats().corrupt_entries, 1, "replaced, not read again");
    let _: i64 = raw.del(&key).await.unwrap();
}

/// Two tiers, one process: after a write returns, the process's next read is fresh, while
/// other tasks of the process read the same row through both tiers the whole time and Redis
/// loses its scripts between writes (a restart or failover does the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tiers_one_process_reads_its_own_writes_with_scripts_flushed() {
    let server = RedisServer::start(&[]);
    let db = TestDb::with_schema(COUNTERS).await;
    let a = roomy_pool(&db, &server.url(), &unique_prefix("own-writes"), 1 << 20).await;
    tiers_ready(&[&a]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (a, stop) = (a.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    value(&a, 1).await;
                    // A hit awaits nothing: without this, three readers on two threads starve
                    // the pool's heartbeats.
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for i in 1..=150 {
        if i % 5 == 0 {
            let status = std::process::Command::new("redis-cli")
                .args(["-p", &server.port().to_string(), "SCRIPT", "FLUSH"])
                .stdout(std::process::Stdio::null())
                .status()
                .expect("run redis-cli");
            assert!(status.success());
        }
        assert_eq!(bump(&a, 1).await, i);
        assert_eq!(value(&a, 1).await, i, "write {i}: the writing process read an older value");
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.await.unwrap();
    }
    assert!(a.stats().hits > 0, "the readers were served from the cache: {:?}", a.stats());
}

/// Pools that share Redis and a key prefix share entries only when their reads would answer
/// alike: a role that may not read a table gets PostgreSQL's error, never the rows another
/// role's read left in Redis, and settings that change a result's text keep entries apart.
#[tokio::test]
async fn roles_and_settings_sharing_a_prefix_never_share_entries() {
    require_shared_redis();
    let db = TestDb::with_schema(COUNTERS).await;
    let prefix = unique_prefix("roles");
    let url = redis_url();
    let build = |pg: sqlx::PgPool| pool_timed(pg, &url, &prefix, 0, ROOMY);
    let owner = build(db.pool.clone()).await;
    let (_, options) = db.role("nosel").await;
    let stranger = build(db.pool_with(2, options).await).await;
    tiers_ready(&[&owner, &stranger]).await;
    async fn read(cache: &CachedPool) -> Result<i64, sqlx::Error> {
        sqlacache_sqlx::query_scalar::<i64>("SELECT v FROM counters WHERE id = 1").fetch_one(cache).await
    }
    for _ in 0..3 {
        assert_eq!(read(&owner).await.unwrap(), 0);
        let error = read(&stranger).await.expect_err("a role without SELECT reads nothing");
        let code = error.as_database_error().and_then(|e| e.code()).map(|c| c.into_owned());
        assert_eq!(code.as_deref(), Some("42501"), "PostgreSQL's own error: {error}");
    }
    assert!(owner.stats().redis_hits >= 2, "the owner's reads are served from Redis");

    // The same read under two interval styles: each pool reads its own text.
    let style = |name: &'static str| db.options().options([("IntervalStyle", name)]);
    let iso = build(db.pool_with(2, style("iso_8601")).await).await;
    let plain = build(db.pool_with(2, style("postgres")).await).await;
    tiers_ready(&[&iso, &plain]).await;
    let sql = "SELECT (interval '1 day' * (v + 1))::text FROM counters WHERE id = 1";
    for _ in 0..3 {
        assert_eq!(sqlacache_sqlx::query_scalar::<String>(sql).fetch_one(&iso).await.unwrap(), "P1D");
        assert_eq!(sqlacache_sqlx::query_scalar::<String>(sql).fetch_one(&plain).await.unwrap(), "1 day");
    }
    assert!(iso.stats().redis_hits >= 2 && plain.stats().redis_hits >= 2);
}

/// A writer cut off from Redis for less than the settling time, while the other processes
/// reach it: the write returns only once its invalidation is delivered, so another process
/// never reads the old value after it returned (at once with Redis only, within the lease with
/// two tiers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_briefly_cut_off_from_redis_returns_once_its_write_is_delivered() {
    let server = RedisServer::start(&[]);
    let db = TestDb::with_schema(COUNTERS).await;
    for memory in [0, 1 << 20] {
        let proxy = Proxy::start(server.port());
        let prefix = unique_prefix("cutoff");
        let a = pool(&db, &proxy.url(), &prefix, memory).await;
        let b = pool(&db, &server.url(), &prefix, memory).await;
        for _ in 0..3 {
            tiers_ready(&[&a, &b]).await;
            let before = value(&b, 1).await;
            assert_eq!(value(&b, 1).await, before);
            proxy.block();
            let writer = {
                let a = a.clone();
                tokio::spawn(async move { bump(&a, 1).await })
            };
            tokio::time::sleep(Duration::from_millis(150)).await;
            proxy.unblock();
            let written = writer.await.unwrap();
            assert_eq!(written, before + 1);
            let returned = Instant::now();
            loop {
                let seen = value(&b, 1).await;
                if seen == written {
                    break;
                }
                assert!(memory > 0, "Redis only: B read {seen} after A's write of {written} returned");
                assert!(returned.elapsed() < LEASE * 2, "two tiers: B still reads {seen} past the lease");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }
}

/// A writer cut off again while its breaker still settles after a first cut-off (Redis answered
/// it in between): its tries run from the failure that began the second cut-off, not from when
/// the breaker opened, so this write too returns only once it is delivered, and another process
/// never reads the old value from Redis after it returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_cut_off_again_while_it_settles_returns_once_its_write_is_delivered() {
    let server = RedisServer::start(&[]);
    let db = TestDb::with_schema(COUNTERS).await;
    let proxy = Proxy::start(server.port());
    let prefix = unique_prefix("recut");
    // Redis only: a stale value in Redis is read at once. The settling time here is 510 ms.
    let a = pool(&db, &proxy.url(), &prefix, 0).await;
    let b = pool(&db, &server.url(), &prefix, 0).await;
    tiers_ready(&[&a, &b]).await;
    let cut = |length: Duration| {
        let (a, proxy) = (a.clone(), &proxy);
        async move {
            proxy.block();
            let writer = tokio::spawn(async move { bump(&a, 1).await });
            tokio::time::sleep(length).await;
            proxy.unblock();
            writer.await.unwrap()
        }
    };
    let first = cut(Duration::from_millis(150)).await;
    // B holds the first write's value in Redis.
    let redis_hits = b.stats().redis_hits;
    while b.stats().redis_hits == redis_hits {
        assert_eq!(value(&b, 1).await, first);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // A's breaker opened more than 400 ms ago and still settles (for 510 ms after Redis
    // answered): the second cut-off outlasts what is left of a settling time counted from when
    // it opened, not one counted from the failure that begins it.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let second = cut(Duration::from_millis(250)).await;
    assert_eq!(second, first + 1);
    assert_eq!(value(&b, 1).await, second, "B read an old value after A's write returned");
}
