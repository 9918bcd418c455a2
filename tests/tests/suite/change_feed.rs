//! The change feed: writes made outside the pool (a raw pool, `psql`, `cache.inner()`, a
//! function called from a SELECT, a rolled-back transaction, TRUNCATE, a bulk update, schema
//! changes) reach the cache through PostgreSQL's triggers and LISTEN/NOTIFY, and a listener that
//! lost its connection or went silent stops cached reads until it is heard again.

use sqlacache_sqlx::testing::Probe as _;
use sqlacache_sqlx::{CachedPool, Error, Ops, Uncached};
use sqlacache_tests::{database_url, Counter, TestDb, COUNTERS};
use sqlx::postgres::PgListener;
use sqlx::AssertSqlSafe;
use std::time::{Duration, Instant};

/// The lease of most tests: long, so that a loaded machine does not end it (which would only
/// cost misses, but the tests count hits).
const LEASE: Duration = Duration::from_secs(3);

/// The lease of the test of a silent listener.
const SHORT_LEASE: Duration = Duration::from_millis(300);

async fn fed(db: &TestDb) -> CachedPool {
    fed_with(db, LEASE).await
}

async fn fed_with(db: &TestDb, lease: Duration) -> CachedPool {
    fed_on(&db.pool, lease).await
}

/// A pool with the change feed over `pool` (for tests that hold its connections).
async fn fed_on(pool: &sqlx::PgPool, lease: Duration) -> CachedPool {
    sqlacache_tests::builder(pool.clone())
        .model::<Counter>()
        .default_ttl(Duration::from_secs(60))
        .lease(lease)
        .change_feed()
        .build()
        .await
        .expect("build a pool with the change feed")
}

/// A pool of one connection with the change feed, warm, and that connection taken by the
/// application (in a transaction it holds until the last item is dropped).
async fn busy_fed_pool(lease: Duration) -> (TestDb, CachedPool, sqlx::Transaction<'static, sqlx::Postgres>) {
    let db = TestDb::in_own_database(COUNTERS).await;
    let one = db.pool_with(1, db.options()).await;
    let cache = fed_on(&one, lease).await;
    warm(&cache).await;
    let busy = one.begin().await.unwrap();
    (db, cache, busy)
}

async fn value(cache: &CachedPool, id: i32) -> i64 {
    cache.get::<Counter>(id).await.unwrap().expect("the row exists").v
}

async fn total(cache: &CachedPool) -> i64 {
    sqlacache_sqlx::query_scalar::<i64>("SELECT coalesce(sum(v), 0)::bigint FROM counters")
        .fetch_one(cache)
        .await
        .unwrap()
}

/// Hits served so far.
fn hits(cache: &CachedPool) -> u64 {
    cache.stats().hits
}

/// Polls `read` until it returns `expected`; how long that took after `since`.
async fn seen_within<F, Fut>(since: Instant, expected: i64, what: &str, mut read: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = i64>,
{
    loop {
        let got = read().await;
        if got == expected {
            return since.elapsed();
        }
        assert!(since.elapsed() < Duration::from_secs(10), "{what}: still {got}, expected {expected}");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// Caches row 1 and the total, and checks that both are hits now (once every message of
/// earlier writes has been applied: one may still be on its way after its write was seen).
async fn warm(cache: &CachedPool) {
    // On a loaded machine a heartbeat may come back after the lease (most of all the short
    // one): the cache is then not trusted for a moment. Read until both are hits.
    let start = Instant::now();
    loop {
        cache.feed_sync_for_tests().await.unwrap();
        let _ = (value(cache, 1).await, total(cache).await);
        let before = hits(cache);
        let _ = (value(cache, 1).await, total(cache).await);
        if hits(cache) == before + 2 {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "row 1 and the total are never cached: {:?}", cache.stats());
    }
}

fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * q).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_writes_of_every_kind_are_seen() {
    let db = TestDb::in_own_database(COUNTERS).await;
    sqlx::raw_sql(
        "CREATE FUNCTION bump_counter(i int) RETURNS bigint LANGUAGE sql AS \
         'UPDATE counters SET v = v + 1 WHERE id = i RETURNING v'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let cache = fed(&db).await;
    let raw = &db.pool;
    let mut latencies = Vec::new();
    let mut expected = 0;
    for round in 0..8 {
        warm(&cache).await;
        expected += 1;
        let kind = round % 8;
        match kind {
            0 => {
                sqlx::query("UPDATE counters SET v = v + 1 WHERE id = 1").execute(raw).await.unwrap();
            }
            1 => {
                sqlx::query("UPDATE counters SET v = v + 1 WHERE id = 1").execute(cache.inner()).await.unwrap();
            }
            // A function called from a SELECT writes.
            2 => {
                sqlx::query("SELECT bump_counter(1)").execute(raw).await.unwrap();
            }
            3 => {
                let mut tx = raw.begin().await.unwrap();
                sqlx::query("UPDATE counters SET v = v + 1 WHERE id = 1").execute(&mut *tx).await.unwrap();
                sqlx::query("UPDATE counters SET v = v WHERE id = 2").execute(&mut *tx).await.unwrap();
                tx.commit().await.unwrap();
            }
            // Delete and insert the row again, one more.
            4 => {
                let mut tx = raw.begin().await.unwrap();
                let v: i64 = sqlx::query_scalar("DELETE FROM counters WHERE id = 1 RETURNING v")
                    .fetch_one(&mut *tx)
                    .await
                    .unwrap();
                sqlx::query("INSERT INTO counters VALUES (1, $1 + 1)").bind(v).execute(&mut *tx).await.unwrap();
                tx.commit().await.unwrap();
            }
            // Another process: psql.
            5 => {
                let status = std::process::Command::new("psql")
                    .args([db.url(), "-qc"])
                    .arg(format!("UPDATE {}.counters SET v = v + 1 WHERE id = 1", db.schema))
                    .status()
                    .expect("run psql");
                assert!(status.success());
            }
            // Every row at once.
            6 => {
                {
                    sqlx::query("UPDATE counters SET v = v + 1").execute(raw).await.unwrap();
                };
                expected = value_raw(raw, 1).await;
            }
            _ => {
                sqlx::query("INSERT INTO counters VALUES (100, 1)").execute(raw).await.unwrap();
            }
        }
        let returned = Instant::now();
        let (expected_total, expected_one) = (total_raw(raw).await, value_raw(raw, 1).await);
        if kind != 7 {
            assert_eq!(expected_one, expected, "round {round}");
        }
        latencies.push(
            seen_within(returned, expected_one, &format!("row 1 after write kind {kind}"), || value(&cache, 1)).await,
        );
        seen_within(returned, expected_total, &format!("the total after write kind {kind}"), || total(&cache)).await;
        expected = expected_one;
    }
    // TRUNCATE.
    warm(&cache).await;
    sqlx::query("TRUNCATE counters").execute(raw).await.unwrap();
    seen_within(Instant::now(), 0, "the total after TRUNCATE", || total(&cache)).await;
    assert_eq!(cache.get::<Counter>(1).await.unwrap(), None, "row 1 after TRUNCATE");
    let p50 = quantile(&mut latencies, 0.5);
    eprintln!("outside write to a fresh cached read: p50 {p50:?}, max {:?}", latencies.last().unwrap());
}

async fn value_raw(raw: &sqlx::PgPool, id: i32) -> i64 {
    sqlx::query_scalar("SELECT v FROM counters WHERE id = $1").bind(id).fetch_one(raw).await.unwrap()
}

async fn total_raw(raw: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT coalesce(sum(v), 0)::bigint FROM counters").fetch_one(raw).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_name_the_rows_so_other_rows_stay_cached() {
    let db = TestDb::in_own_database(COUNTERS).await;
    let cache = fed(&db).await;
    warm(&cache).await;
    sqlx::query("UPDATE counters SET v = 7 WHERE id = 2").execute(&db.pool).await.unwrap();
    cache.feed_sync_for_tests().await.unwrap();
    assert_eq!(value(&cache, 2).await, 7);
    let misses = cache.stats().misses;
    assert_eq!(total(&cache).await, 7, "the total was invalidated");
    assert_eq!(cache.stats().misses, misses + 1);
    let before = hits(&cache);
    assert_eq!(value(&cache, 1).await, 0);
    assert_eq!(hits(&cache), before + 1, "a write to row 2 elsewhere left row 1 cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_write_sends_nothing() {
    let db = TestDb::in_own_database(COUNTERS).await;
    let cache = fed(&db).await;
    warm(&cache).await;
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("UPDATE counters SET v = 50 WHERE id = 1").execute(&mut *tx).await.unwrap();
    tx.rollback().await.unwrap();
    // Anything the rollback could have sent has been applied.
    cache.feed_sync_for_tests().await.unwrap();
    let before = hits(&cache);
    assert_eq!(value(&cache, 1).await, 0);
    assert_eq!(hits(&cache), before + 1, "the rolled-back write invalidated row 1: {:?}", cache.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_update_too_large_for_one_message_invalidates_the_table() {
    let db = TestDb::in_own_database(
        "CREATE TABLE counters (id int PRIMARY KEY, v bigint NOT NULL);
         INSERT INTO counters SELECT g, 0 FROM generate_series(1, 10000) g;",
    )
    .await;
    let cache = fed(&db).await;
    let mut listener = PgListener::connect_with(&db.pool).await.unwrap();
    listener.listen("sqlacache_feed").await.unwrap();
    warm(&cache).await;
    assert_eq!(value(&cache, 9999).await, 0);
    sqlx::query("UPDATE counters SET v = v + 1").execute(&db.pool).await.unwrap();
    let oid: i64 = sqlx::query_scalar("SELECT 'counters'::regclass::oid::int8").fetch_one(&db.pool).await.unwrap();
    // The message names the table alone.
    let expected = format!("t {oid} u");
    let start = Instant::now();
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), listener.recv()).await.expect("a message").unwrap();
        if n.payload() == expected {
            break;
        }
        assert!(
            !n.payload().starts_with(&format!("r {oid} ")),
            "a message with 10,000 keys: {} bytes",
            n.payload().len()
        );
        assert!(start.elapsed() < Duration::from_secs(5), "no table-wide message");
    }
    seen_within(Instant::now(), 10_000, "the total", || total(&cache)).await;
    seen_within(Instant::now(), 1, "row 1", || value(&cache, 1)).await;
    seen_within(Instant::now(), 1, "row 9999", || value(&cache, 9999)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_listener_drops_the_cache_before_serving_it_again() {
    let db = TestDb::in_own_database(COUNTERS).await;
    let cache = fed(&db).await;
    for round in 1..=3 {
        warm(&cache).await;
        let drops = cache.stats().tier_drops;
        let pid = cache.feed_listener_pid_for_tests();
        assert_ne!(pid, 0, "the listener is connected");
        // The listener is gone (the call waits for it) before the write commits, so the write's
        // message is sent while nobody of this pool listens.
        let mut tx = db.pool.begin().await.unwrap();
        let gone: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)")
            .bind(i32::try_from(pid).unwrap())
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert!(gone);
        sqlx::query("UPDATE counters SET v = v + 1 WHERE id = 1").execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
        seen_within(Instant::now(), round, "row 1 after the listener was terminated", || value(&cache, 1)).await;
        let start = Instant::now();
        while cache.stats().tier_drops == drops || !cache.feed_trusted_for_tests() {
            assert!(start.elapsed() < Duration::from_secs(10), "the feed did not recover");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(value(&cache, 1).await, round, "after the feed recovered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_silent_without_an_error_stops_cached_reads_within_the_lease() {
    let db = TestDb::in_own_database(COUNTERS).await;
    let cache = fed_with(&db, SHORT_LEASE).await;
    warm(&cache).await;
    let pid = cache.feed_listener_pid_for_tests();
    // The listener's server process stops: its connection is open and says nothing.
    signal(pid, "STOP");
    let resume = Resume(pid);
    let returned = {
        sqlx::query("UPDATE counters SET v = 5 WHERE id = 1").execute(&db.pool).await.unwrap();
        Instant::now()
    };
    let seen = seen_within(returned, 5, "row 1 while the listener is frozen", || value(&cache, 1)).await;
    assert!(!cache.feed_trusted_for_tests(), "the feed is not trusted while it is silent");
    let degraded = cache.stats().degraded;
    assert_eq!(value(&cache, 1).await, 5);
    assert!(cache.stats().degraded > degraded, "reads skip the cache while the feed is silent");
    drop(resume);
    let start = Instant::now();
    while !cache.feed_trusted_for_tests() {
        assert!(start.elapsed() < Duration::from_secs(10), "the feed did not recover");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sqlx::query("UPDATE counters SET v = 6 WHERE id = 1").execute(&db.pool).await.unwrap();
    seen_within(Instant::now(), 6, "row 1 after the listener came back", || value(&cache, 1)).await;
    eprintln!("a write was served stale for {seen:?} while the listener was frozen (lease {SHORT_LEASE:?})");
}

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Resumes a stopped process when dropped (also when the test fails).
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_dropped_and_created_again_elsewhere_is_noticed() {
    let db = TestDb::in_own_database(COUNTERS).await;
    let cache = fed(&db).await;
    warm(&cache).await;
    sqlx::raw_sql(
        "DROP TABLE counters; CREATE TABLE counters (id int PRIMARY KEY, v bigint NOT NULL); \
         INSERT INTO counters VALUES (1, 42);",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    seen_within(Instant::now(), 42, "row 1 of the new table", || value(&cache, 1)).await;
    seen_within(Instant::now(), 42, "the total of the new table", || total(&cache)).await;
    // The feed is installed on the new table again, and its writes are seen.
    let start = Instant::now();
    loop {
        let before = hits(&cache);
        let _ = value(&cache, 1).await;
        if hits(&cache) > before {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the new table is not cached again");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sqlx::query("UPDATE counters SET v = 43 WHERE id = 1").execute(&db.pool).await.unwrap();
    seen_within(Instant::now(), 43, "row 1 after a write to the new table", || value(&cache, 1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_tables_the_feed_does_not_cover_are_not_cached() {
    let db = TestDb::in_own_database(&format!("{COUNTERS} CREATE TABLE other (id int PRIMARY KEY);")).await;
    let cache = fed(&db).await;
    for _ in 0..2 {
        sqlacache_sqlx::query_scalar::<i64>("SELECT count(*) FROM other").fetch_one(&cache).await.unwrap();
    }
    assert_eq!(cache.stats().uncached(Uncached::NotInFeed), 2);
    assert_eq!(cache.stats().hits, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_may_not_install_gets_a_clear_error_and_can_use_a_feed_installed_by_migration() {
    let db = TestDb::in_own_database(COUNTERS).await;
    let (role, options) = db.role("feed").await;
    sqlx::raw_sql(AssertSqlSafe(format!("GRANT SELECT, UPDATE ON counters TO {role}")))
        .execute(&db.pool)
        .await
        .unwrap();
    let as_role = db.pool_with(4, options).await;
    let builder = || sqlacache_tests::builder(as_role.clone()).model::<Counter>().lease(LEASE);
    let error = builder().change_feed().build().await.expect_err("the role may not create triggers");
    assert!(matches!(error, Error::Feed(_)), "{error:?}");
    assert!(error.to_string().contains("cannot install the change feed"), "{error}");
    let error = builder().change_feed_installed().build().await.expect_err("nothing is installed");
    assert!(error.to_string().contains(&format!("{}.counters", db.schema)), "{error}");
    // The owner runs the SQL, as a migration would.
    let sql = builder().change_feed_sql().await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(sql.install)).execute(&db.pool).await.unwrap();
    let cache = builder().change_feed_installed().build().await.expect("the feed is installed");
    warm(&cache).await;
    sqlx::query("UPDATE counters SET v = 3 WHERE id = 1").execute(&db.pool).await.unwrap();
    seen_within(Instant::now(), 3, "row 1", || value(&cache, 1)).await;
    // The role's own writes through the triggers work (the functions are usable by everyone).
    sqlx::query("UPDATE counters SET v = 4 WHERE id = 1").execute(&as_role).await.unwrap();
    seen_within(Instant::now(), 4, "row 1", || value(&cache, 1)).await;
    // And removed.
    sqlx::raw_sql(AssertSqlSafe(sql.remove)).execute(&db.pool).await.unwrap();
    let error = builder().change_feed_installed().build().await.expect_err("removed");
    assert!(matches!(error, Error::Feed(_)), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_without_redis_stay_fresh_for_each_other_through_the_feed() {
    let db = TestDb::with_schema(COUNTERS).await;
    let here = fed(&db).await;
    let mut there = super::tiers::Peer::with_feed(&db, LEASE);
    assert_eq!(there.ask("ready"), "ready");
    let mut windows = Vec::new();
    for _ in 0..20 {
        // The other process caches row 1 in its own memory; this one writes it.
        let before = there.get(1);
        assert_eq!(there.get(1), before);
        let written: i64 = sqlx::query_scalar("UPDATE counters SET v = v + 1 WHERE id = 1 RETURNING v")
            .fetch_one(&here)
            .await
            .unwrap();
        let returned = Instant::now();
        windows.push(seen_within(returned, written, "the other process", || std::future::ready(there.get(1))).await);
        // The other way round.
        let _ = (value(&here, 2).await, value(&here, 2).await);
        let written: i64 = there.ask("bump 2").parse().unwrap();
        seen_within(Instant::now(), written, "this process", || value(&here, 2)).await;
        // And a writer that is neither.
        let written: i64 = sqlx::query_scalar("UPDATE counters SET v = v + 1 WHERE id = 3 RETURNING v")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        let returned = Instant::now();
        seen_within(returned, written, "this process, outside write", || value(&here, 3)).await;
        seen_within(returned, written, "the other process, outside write", || std::future::ready(there.get(3))).await;
    }
    windows.sort();
    eprintln!("two processes over the feed: p50 {:?}, max {:?}", windows[windows.len() / 2], windows.last().unwrap());
}

/// A model whose key is text and an integer: outside writes name its rows in hex.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize, serde::Deserialize, sqlacache_sqlx::Cacheable)]
#[cache(table = "labels")]
struct Label {
    #[cache(pk)]
    name: String,
    #[cache(pk)]
    n: i32,
    v: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_with_text_and_composite_keys_are_named_exactly() {
    let db = TestDb::in_own_database(
        "CREATE TABLE labels (name text, n int, v bigint NOT NULL, PRIMARY KEY (name, n));
         INSERT INTO labels VALUES ('plain', 1, 0), ('a b,c', 2, 0), ('x41', -3, 0), ('ünï 😀', 4, 0), ('', 5, 0), ('12', 6, 0);",
    )
    .await;
    let cache =
        sqlacache_tests::builder(db.pool.clone()).model::<Label>().lease(LEASE).change_feed().build().await.unwrap();
    let keys: Vec<(String, i32)> =
        sqlx::query_as("SELECT name, n FROM labels ORDER BY n").fetch_all(&db.pool).await.unwrap();
    let read = |key: (String, i32)| {
        let cache = cache.clone();
        async move { cache.get::<Label>(key).await.unwrap().expect("the row exists").v }
    };
    for key in &keys {
        read(key.clone()).await;
    }
    for (round, key) in keys.iter().enumerate() {
        let v = round as i64 + 10;
        sqlx::query("UPDATE labels SET v = $1 WHERE name = $2 AND n = $3")
            .bind(v)
            .bind(&key.0)
            .bind(key.1)
            .execute(&db.pool)
            .await
            .unwrap();
        seen_within(Instant::now(), v, &format!("label {key:?}"), || read(key.clone())).await;
    }
    // The messages named rows: the first row, written and read again before the others were
    // written, is still cached.
    let before = hits(&cache);
    read(keys[0].clone()).await;
    assert_eq!(hits(&cache), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_an_outside_write_invalidates_the_shared_tier_too() {
    sqlacache_tests::redis::require_shared_redis();
    let db = TestDb::with_schema(COUNTERS).await;
    let prefix = sqlacache_tests::redis::unique_prefix("feed");
    let build = || {
        sqlacache_tests::builder(db.pool.clone())
            .model::<Counter>()
            .default_ttl(Duration::from_secs(60))
            .redis(&sqlacache_tests::redis::redis_url())
            .key_prefix(&prefix)
            .lease(LEASE)
            // Room to spare on a loaded machine: this test is not about slow commands.
            .redis_timeout(Duration::from_secs(2))
            .change_feed()
    };
    // Values in Redis only: a read finds them there, so only an invalidation in Redis helps.
    let (a, b) = (build().memory_capacity(0).build().await.unwrap(), build().memory_capacity(0).build().await.unwrap());
    let start = Instant::now();
    while !(a.tiers_ready_for_tests() && b.tiers_ready_for_tests()) {
        assert!(start.elapsed() < Duration::from_secs(20), "the pools did not connect to Redis");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for v in 1..=5 {
        assert_eq!(value(&a, 1).await, v - 1);
        // The value is in Redis (stored off the reader's path, so B may first miss).
        let (redis_hits, start) = (b.stats().redis_hits, Instant::now());
        while b.stats().redis_hits == redis_hits {
            assert_eq!(value(&b, 1).await, v - 1);
            // Only against hanging: reads are served only while the feed is heard within its
            // lease, which the schema changes of the tests running alongside can keep lapsing
            // on a loaded machine (each one costs the listener a catalog read).
            assert!(start.elapsed() < Duration::from_secs(60), "B never found the value in Redis");
        }
        sqlx::query("UPDATE counters SET v = $1 WHERE id = 1").bind(v).execute(&db.pool).await.unwrap();
        let returned = Instant::now();
        seen_within(returned, v, "A, through Redis", || value(&a, 1)).await;
        seen_within(returned, v, "B, through Redis", || value(&b, 1)).await;
    }
    a.invalidate_all().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_all_leaves_nothing_of_the_feed_in_the_database() {
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    use std::str::FromStr;
    // A database of its own: the event triggers and the schema are per database, and the other
    // tests' feeds live in the shared one.
    let name = format!("sqlacache_feed_{}", std::process::id());
    let admin = PgPoolOptions::new().max_connections(1).connect(&database_url()).await.unwrap();
    let dropped = DropDatabase(name.clone());
    sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).execute(&admin).await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await.unwrap();
    let options = PgConnectOptions::from_str(&database_url()).unwrap().database(&name);
    let pool = PgPoolOptions::new().max_connections(4).connect_with(options).await.unwrap();
    sqlx::raw_sql(COUNTERS).execute(&pool).await.unwrap();
    let builder = || sqlacache_tests::builder(pool.clone()).model::<Counter>().lease(LEASE);
    let cache = builder().change_feed().build().await.unwrap();
    let sql = builder().change_feed_sql().await.unwrap();
    let leftovers = || async {
        let count = |q: &'static str| sqlx::query_scalar::<_, i64>(q).fetch_one(&pool);
        (
            count("SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'sqlacache%'").await.unwrap(),
            count("SELECT count(*) FROM pg_namespace WHERE nspname = 'sqlacache'").await.unwrap(),
            count("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'sqlacache%'").await.unwrap(),
        )
    };
    assert_eq!(leftovers().await, (2, 1, 4), "installed: two event triggers, the schema, four triggers");
    drop(cache);
    sqlx::raw_sql(AssertSqlSafe(sql.remove_all)).execute(&pool).await.unwrap();
    assert_eq!(leftovers().await, (0, 0, 0));
    // Writes work as before.
    sqlx::query("UPDATE counters SET v = 1").execute(&pool).await.unwrap();
    pool.close().await;
    drop(dropped);
}

/// Drops a database when dropped (also when the test fails).
struct DropDatabase(String);

impl Drop for DropDatabase {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .args([database_url().as_str(), "-qc"])
            .arg(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0))
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_a_partition_or_its_parent_are_seen() {
    let db = TestDb::in_own_database(
        "CREATE TABLE counters (id int PRIMARY KEY, v bigint NOT NULL) PARTITION BY RANGE (id);
         CREATE TABLE counters_low PARTITION OF counters FOR VALUES FROM (1) TO (3);
         CREATE TABLE counters_high PARTITION OF counters FOR VALUES FROM (3) TO (100);
         INSERT INTO counters SELECT g, 0 FROM generate_series(1, 5) g;",
    )
    .await;
    let cache = fed(&db).await;
    for sql in [
        "UPDATE counters_high SET v = v + 1 WHERE id = 4",
        "UPDATE counters SET v = v + 1 WHERE id = 4",
        "UPDATE counters_low SET v = v + 1 WHERE id = 1",
        "DELETE FROM counters_high WHERE id = 5",
    ] {
        // The previous write's message has been applied (a read of an unchanged row does not
        // wait for it).
        cache.feed_sync_for_tests().await.unwrap();
        let _ = (value(&cache, 4).await, value(&cache, 1).await, total(&cache).await);
        let before = hits(&cache);
        let _ = (value(&cache, 4).await, value(&cache, 1).await, total(&cache).await);
        assert_eq!(hits(&cache), before + 3, "the partitioned table is cached (and fed)");
        sqlx::query(AssertSqlSafe(sql)).execute(&db.pool).await.unwrap();
        let returned = Instant::now();
        let (four, one) = (value_raw(&db.pool, 4).await, value_raw(&db.pool, 1).await);
        seen_within(returned, four, &format!("row 4 after {sql}"), || value(&cache, 4)).await;
        seen_within(returned, one, &format!("row 1 after {sql}"), || value(&cache, 1)).await;
        seen_within(returned, total_raw(&db.pool).await, &format!("the total after {sql}"), || total(&cache)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_added_elsewhere_is_noticed() {
    let db = TestDb::in_own_database(COUNTERS).await;
    let cache = fed(&db).await;
    let sql = "SELECT c::text FROM counters c WHERE id = 1";
    let read = || async { sqlacache_sqlx::query_scalar::<String>(sql).fetch_one(&cache).await.unwrap() };
    assert_eq!(read().await, "(1,0)");
    let before = hits(&cache);
    assert_eq!(read().await, "(1,0)");
    assert_eq!(hits(&cache), before + 1, "the row's text is cached");
    sqlx::query("ALTER TABLE counters ADD COLUMN w int NOT NULL DEFAULT 7").execute(&db.pool).await.unwrap();
    let start = Instant::now();
    while read().await != "(1,0,7)" {
        assert!(start.elapsed() < Duration::from_secs(10), "the new column never showed");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_in_schemas_that_do_not_matter_leave_the_cache_alone() {
    let db = TestDb::in_own_database(COUNTERS).await;
    let cache = fed(&db).await;
    warm(&cache).await;
    let drops = cache.stats().full_invalidations;
    // Another schema of the same database, not on the pool's search path.
    let elsewhere = format!("{}_elsewhere", db.schema);
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE SCHEMA {elsewhere}; CREATE TABLE {elsewhere}.counters (id int PRIMARY KEY, v bigint); \
         ALTER TABLE {elsewhere}.counters ADD COLUMN w int; CREATE TABLE {elsewhere}.more (id int); \
         DROP TABLE {elsewhere}.more; \
         CREATE FUNCTION {elsewhere}.f() RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 1'"
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    // Everything the feed carried up to now has been applied.
    cache.feed_sync_for_tests().await.unwrap();
    assert_eq!(cache.stats().full_invalidations, drops, "another schema's changes emptied the cache");
    let before = hits(&cache);
    let _ = (value(&cache, 1).await, total(&cache).await);
    assert_eq!(hits(&cache), before + 2, "row 1 and the total are still cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_whose_connections_are_all_busy_still_hears_the_feed() {
    // The application holds the pool's only connection for several leases.
    let (_db, cache, busy) = busy_fed_pool(SHORT_LEASE).await;
    let start = Instant::now();
    while start.elapsed() < SHORT_LEASE * 4 {
        let before = hits(&cache);
        assert_eq!(value(&cache, 1).await, 0);
        assert_eq!(hits(&cache), before + 1, "a hit, {:?} after the pool's only connection was taken", start.elapsed());
        assert!(cache.feed_trusted_for_tests(), "the feed's lease ran out while the pool was busy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(busy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_is_installed_again_on_its_own_connection_while_the_pool_is_busy() {
    // The application holds the pool's only connection while the table is made anew elsewhere.
    let (db, _cache, busy) = busy_fed_pool(LEASE).await;
    sqlx::raw_sql("DROP TABLE counters; CREATE TABLE counters (id int PRIMARY KEY, v bigint NOT NULL)")
        .execute(&db.pool)
        .await
        .unwrap();
    let triggers = "SELECT count(*) FROM pg_catalog.pg_trigger WHERE tgrelid = 'counters'::regclass \
                    AND tgname LIKE 'sqlacache_feed_%'";
    let start = Instant::now();
    while sqlx::query_scalar::<_, i64>(triggers).fetch_one(&db.pool).await.unwrap() < 4 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the feed was not installed again while the application held the pool's connection"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(busy);
}

/// Schema changes made elsewhere are judged by what they touch, not by the schema a message
/// names: the feed's triggers disabled, a partition of a cached table created in another schema
/// and written directly, the schema of the cached tables renamed, the feed removed while the
/// pool listens. After each, no read is stale past the feed's window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_elsewhere_that_reach_the_cached_tables_are_noticed() {
    // The feed's triggers disabled on a cached table, then a write around the pool.
    let db = TestDb::in_own_database(COUNTERS).await;
    let cache = fed(&db).await;
    warm(&cache).await;
    sqlx::raw_sql("ALTER TABLE counters DISABLE TRIGGER USER").execute(&db.pool).await.unwrap();
    // Once the pool no longer serves from the cache (it heard of the change, or its heartbeats
    // stopped), reads that would cache again were the table still counted as fed, then the
    // write around the pool.
    let start = Instant::now();
    loop {
        let before = hits(&cache);
        let _ = (value(&cache, 1).await, total(&cache).await);
        if hits(&cache) == before {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "the table is still served from the cache");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = (value(&cache, 1).await, total(&cache).await, value(&cache, 1).await, total(&cache).await);
    sqlx::query("UPDATE counters SET v = 7 WHERE id = 1").execute(&db.pool).await.unwrap();
    seen_within(Instant::now(), 7, "row 1 with the feed's triggers disabled", || value(&cache, 1)).await;
    seen_within(Instant::now(), 7, "the total with the feed's triggers disabled", || total(&cache)).await;
    drop(cache);

    // A partition of a cached table, created in an unrelated schema and written directly.
    let db = TestDb::in_own_database(
        "CREATE TABLE parts (id int, k int, v bigint NOT NULL, PRIMARY KEY (id, k)) PARTITION BY LIST (k);
         CREATE TABLE parts_1 PARTITION OF parts FOR VALUES IN (1);
         INSERT INTO parts VALUES (1, 1, 10);
         CREATE SCHEMA elsewhere;",
    )
    .await;
    let cache = sqlacache_tests::builder(db.pool.clone())
        .table("parts", Ops::ALL, Duration::from_secs(60))
        .lease(LEASE)
        .change_feed()
        .build()
        .await
        .unwrap();
    let sum = || async {
        sqlacache_sqlx::query_scalar::<i64>("SELECT sum(v)::int8 FROM parts").fetch_one(&cache).await.unwrap()
    };
    cache.feed_sync_for_tests().await.unwrap();
    assert_eq!((sum().await, sum().await), (10, 10));
    assert!(hits(&cache) >= 1, "the parent is cached: {:?}", cache.stats());
    let parent = format!("{}.parts", db.schema);
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE TABLE elsewhere.parts_2 PARTITION OF {parent} FOR VALUES IN (2)")))
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO elsewhere.parts_2 VALUES (2, 2, 5)").execute(&db.pool).await.unwrap();
    seen_within(Instant::now(), 15, "the parent after a write into a partition made elsewhere", sum).await;
    sqlx::query("INSERT INTO elsewhere.parts_2 VALUES (3, 2, 5)").execute(&db.pool).await.unwrap();
    seen_within(Instant::now(), 20, "the parent after a second write into it", sum).await;
    drop(cache);

    // The schema of the cached tables renamed: the raw pool no longer finds them.
    let db = TestDb::in_own_database(COUNTERS).await;
    let cache = fed(&db).await;
    warm(&cache).await;
    let rename = format!("ALTER SCHEMA {0} RENAME TO {0}_moved", db.schema);
    sqlx::raw_sql(AssertSqlSafe(rename)).execute(&db.pool).await.unwrap();
    let start = Instant::now();
    loop {
        let raw = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM counters").fetch_one(&db.pool).await;
        assert!(raw.is_err(), "the raw pool no longer finds the table");
        if sqlacache_sqlx::query_scalar::<i64>("SELECT count(*) FROM counters").fetch_one(&cache).await.is_err() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the cache still answers for a table that is gone");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let back = format!("ALTER SCHEMA {0}_moved RENAME TO {0}", db.schema);
    sqlx::raw_sql(AssertSqlSafe(back)).execute(&db.pool).await.unwrap();
    drop(cache);

    // The whole feed removed while the pool listens: its heartbeats stop being trusted.
    let db = TestDb::in_own_database(COUNTERS).await;
    let cache = fed(&db).await;
    warm(&cache).await;
    let sql = sqlacache_tests::builder(db.pool.clone()).model::<Counter>().change_feed_sql().await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(sql.remove_all)).execute(&db.pool).await.unwrap();
    sqlx::query("UPDATE counters SET v = 9 WHERE id = 1").execute(&db.pool).await.unwrap();
    seen_within(Instant::now(), 9, "row 1 after the feed was removed", || value(&cache, 1)).await;
    // And stays fresh: nothing is cached while no feed covers the table.
    for v in 10..13 {
        sqlx::query("UPDATE counters SET v = $1 WHERE id = 1").bind(v).execute(&db.pool).await.unwrap();
        assert_eq!(value(&cache, 1).await, v);
    }
}

/// A model used without `.model::<T>()` by a pool that installs the feed: its first use covers
/// its table, whatever another pool did, so its reads are cached and outside writes are seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_first_used_without_registration_gets_the_feed_on_its_table() {
    let db = TestDb::in_own_database(&format!(
        "{COUNTERS} CREATE TABLE labels (name text, n int, v bigint NOT NULL, PRIMARY KEY (name, n));
         INSERT INTO labels VALUES ('a', 1, 0);"
    ))
    .await;
    let cache = fed(&db).await;
    let key = ("a".to_owned(), 1);
    assert_eq!(cache.get::<Label>(key.clone()).await.unwrap().unwrap().v, 0);
    let start = Instant::now();
    loop {
        // Once the feed is heard (its lease), reads are served from the cache.
        let hits = cache.stats().hits;
        assert_eq!(cache.get::<Label>(key.clone()).await.unwrap().unwrap().v, 0);
        if cache.stats().hits > hits {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "never cached: {:?}", cache.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cache.stats().uncached(Uncached::NotInFeed), 0, "{:?}", cache.stats());
    sqlx::query("UPDATE labels SET v = 7").execute(&db.pool).await.unwrap();
    seen_within(Instant::now(), 7, "an outside write to the model's table", || {
        let (cache, key) = (cache.clone(), key.clone());
        async move { cache.get::<Label>(key).await.unwrap().unwrap().v }
    })
    .await;
}

/// A pool's own write comes back to it on the feed: the triggers name the pool (its write path
/// marks the statement), and it does not invalidate again what it already invalidated, so the
/// value it read after the write stays a hit. Another pool applies it. (The listener's server
/// process is stopped while the pool writes and reads again, so the message comes after.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pools_own_write_heard_back_on_the_feed_costs_it_nothing() {
    let db = TestDb::in_own_database(COUNTERS).await;
    let (cache, other) = (fed(&db).await, fed(&db).await);
    warm(&cache).await;
    warm(&other).await;
    for round in 1..=3 {
        let pid = cache.feed_listener_pid_for_tests();
        signal(pid, "STOP");
        let resume = Resume(pid);
        sqlx::query("UPDATE counters SET v = v + 1 WHERE id = 1").execute(&cache).await.unwrap();
        assert_eq!(value(&cache, 1).await, round);
        let before = cache.stats();
        drop(resume);
        // Every commit before this heartbeat, the write's included, has been applied.
        cache.feed_sync_for_tests().await.unwrap();
        other.feed_sync_for_tests().await.unwrap();
        assert_eq!(value(&cache, 1).await, round);
        let now = cache.stats();
        assert!(
            now.hits > before.hits && now.misses == before.misses && now.invalidations == before.invalidations,
            "round {round}: its own write, heard back, invalidated again: {now:?}"
        );
        assert_eq!(value(&other, 1).await, round, "round {round}: the other pool missed the write");
    }
}

/// What another trigger writes while a pool's statement runs (a nested statement) is not the
/// pool's own write, even on the same table: its message is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_made_by_a_trigger_of_the_pools_statement_is_applied() {
    let db = TestDb::in_own_database(&format!(
        "{COUNTERS}
         CREATE FUNCTION mirror() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.id = 1 THEN UPDATE counters SET v = NEW.v * 10 WHERE id = 2; END IF;
           RETURN NULL;
         END $$;
         CREATE TRIGGER mirror AFTER UPDATE ON counters FOR EACH ROW EXECUTE FUNCTION mirror();"
    ))
    .await;
    // The trigger sets row 2 to ten times row 1's new value.
    row_two_follows_the_pools_write(&db, "UPDATE counters SET v = v + 1 WHERE id = 1", "the trigger", |round| {
        round * 10
    })
    .await;
}

/// Writes `sql` (which also changes row 2) through a fed pool three times, with row 2 cached
/// before each, and checks that row 2 reads `expected(round)` once the feed has caught up: its
/// change, made by `by`, was not taken for the pool's own.
async fn row_two_follows_the_pools_write(db: &TestDb, sql: &'static str, by: &str, expected: impl Fn(i64) -> i64) {
    let cache = fed(db).await;
    warm(&cache).await;
    for round in 1..=3 {
        value(&cache, 2).await;
        sqlx::query(sql).execute(&cache).await.unwrap();
        cache.feed_sync_for_tests().await.unwrap();
        assert_eq!(value(&cache, 2).await, expected(round), "round {round}: row 2, written by {by}, was served stale");
    }
}

/// What a function called by the pool's statement writes to the same table is not the pool's
/// own write either: its message is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_made_by_a_function_the_pools_statement_calls_is_applied() {
    let db = TestDb::in_own_database(&format!(
        "{COUNTERS}
         CREATE FUNCTION bump_two() RETURNS bigint LANGUAGE plpgsql AS $$
         BEGIN
           UPDATE counters SET v = v + 1 WHERE id = 2;
           RETURN 1;
         END $$;"
    ))
    .await;
    row_two_follows_the_pools_write(&db, "UPDATE counters SET v = v + bump_two() WHERE id = 1", "the function", |r| r)
        .await;
}

/// A write ending with a semicolon, a line comment or a block comment runs as it would on the
/// raw pool when the pool marks it for the feed, and is seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marked_writes_with_any_ending_run_as_written() {
    let db = TestDb::in_own_database(COUNTERS).await;
    let cache = fed(&db).await;
    warm(&cache).await;
    let endings = ["", ";", " ; ", " -- a comment", "\n-- a comment\n", " /* a comment */", "; -- a comment"];
    for (round, ending) in (1..).zip(endings) {
        let sql = format!("UPDATE counters SET v = v + 1 WHERE id = 1{ending}");
        let done = sqlx::query(AssertSqlSafe(sql)).execute(&cache).await.unwrap();
        assert_eq!(done.rows_affected(), 1, "{ending:?}");
        assert_eq!(value(&cache, 1).await, round, "{ending:?}");
    }
}
