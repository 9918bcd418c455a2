//! What the library logs, read as a person running it would: each loss of trust says why (once
//! per cause, not at every heartbeat), and its end is logged too; the first connection is not a
//! reconnect; a read that is not cached names its statement and row type.

use sqlacache_sqlx::testing::Probe as _;
use sqlacache_sqlx::CachedPool;
use sqlacache_tests::logs::{capture, Lines};
use sqlacache_tests::redis::{free_port, unique_prefix, RedisServer};
use sqlacache_tests::{bump, until, value, Counter, TestDb, COUNTERS};
use std::time::{Duration, Instant};

/// A pool of two tiers on the Redis at `url` (which may be down), with a short lease and room to
/// spare for commands on a busy machine.
async fn two_tiers(db: &TestDb, url: &str) -> CachedPool {
    sqlacache_tests::builder(db.pool.clone())
        .model::<Counter>()
        .redis(url)
        .key_prefix(&unique_prefix("logs"))
        .lease(Duration::from_millis(200))
        .redis_timeout(Duration::from_secs(1))
        .build()
        .await
        .expect("build (Redis may be down)")
}

/// At most one line per cause of a dropped in-process tier for every ten seconds the test ran
/// (plus the first).
fn drops_rate_limited(lines: &Lines, ran: Duration) {
    let drops = lines.containing("INFO in-process tier dropped");
    let mut causes: Vec<&str> = drops.iter().filter_map(|l| l.split(" why=").nth(1)).collect();
    causes.sort_unstable();
    let allowed = 1 + ran.as_secs() as usize / 10;
    for cause in &causes {
        let times = causes.iter().filter(|c| *c == cause).count();
        assert!(times <= allowed, "{times} lines in {ran:?} for one cause:\n{}", drops.join("\n"));
    }
}

#[test]
fn redis_down_at_build_is_logged_with_its_address_and_cause_and_so_is_its_end() {
    let port = free_port();
    let started = Instant::now();
    let lines = capture(|lines| async move {
        let db = TestDb::with_schema(COUNTERS).await;
        let url = format!("redis://127.0.0.1:{port}");
        let cache = two_tiers(&db, &url).await;
        // A second of use while Redis is down: every heartbeat fails and drops the tier.
        for writes in 1..=10 {
            assert_eq!(bump(&cache, 1).await, writes);
            assert_eq!(value(&cache, 1).await, writes);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let redis = RedisServer::start_on(port, &[]);
        until("the pool uses Redis", || cache.tiers_ready_for_tests()).await;
        value(&cache, 1).await;
        // The bus connection is cut: a reconnect, then trust again.
        redis.kill_subscribers();
        until("a line says the bus is heard again", || {
            !lines.containing("INFO the invalidation channel is heard again").is_empty()
        })
        .await;
        drop(cache);
    });
    let all = lines.all().join("\n");
    let failed = lines.containing("WARN Redis failed; reads go to PostgreSQL");
    assert_eq!(failed.len(), 1, "one warning for the outage:\n{all}");
    assert!(failed[0].contains(&format!("127.0.0.1:{port}")), "the warning names the address:\n{all}");
    assert!(failed[0].contains("refused"), "the warning names the cause (connection refused):\n{all}");
    assert!(!failed[0].contains("Timeout"), "a refused connection is not a timeout:\n{all}");
    assert_eq!(lines.containing("INFO Redis answers again;").len(), 1, "the end of the outage is logged once:\n{all}");
    // The first connection of the bus is not a reconnect; the cut one is, once.
    assert_eq!(lines.containing("INFO the invalidation channel reconnected").len(), 1, "{all}");
    let reconnected = all.find("INFO the invalidation channel reconnected").expect("logged");
    let heard = all.find("INFO the invalidation channel is heard again").expect("logged");
    assert!(reconnected < heard, "the loss, then its end:\n{all}");
    drops_rate_limited(&lines, started.elapsed());
    for drop in lines.containing("INFO in-process tier dropped") {
        assert!(drop.contains(" why="), "each drop says why: {drop}");
    }
}

#[test]
fn a_pool_whose_redis_is_up_logs_no_reconnect_and_no_outage() {
    let redis = RedisServer::start(&[]);
    let lines = capture(|_| async move {
        let db = TestDb::with_schema(COUNTERS).await;
        let cache = two_tiers(&db, &redis.url()).await;
        until("the pool uses Redis", || cache.tiers_ready_for_tests()).await;
        assert_eq!(bump(&cache, 1).await, 1);
        assert_eq!(value(&cache, 1).await, 1);
        // A few leases of heartbeats.
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(cache);
    });
    let all = lines.all().join("\n");
    for quiet in ["reconnected", "heard again", "is silent", "Redis failed", "Redis answers again", "tier dropped"] {
        assert!(lines.containing(quiet).is_empty(), "nothing went wrong, yet `{quiet}`:\n{all}");
    }
}

#[test]
fn a_lost_change_feed_is_logged_and_so_is_its_return() {
    let lines = capture(|lines| async move {
        let db = TestDb::with_schema(COUNTERS).await;
        let cache = sqlacache_tests::builder(db.pool.clone())
            .model::<Counter>()
            .change_feed()
            .build()
            .await
            .expect("build with the change feed");
        until("the feed is heard", || cache.feed_trusted_for_tests()).await;
        assert_eq!(bump(&cache, 1).await, 1);
        let listener = cache.feed_listener_pid_for_tests();
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(i32::try_from(listener).expect("a pid"))
            .execute(&db.pool)
            .await
            .expect("end the listener's connection");
        until("a line says the feed is heard again", || {
            !lines.containing("INFO the change feed is heard again").is_empty()
        })
        .await;
        assert_eq!(value(&cache, 1).await, 1);
        drop(cache);
    });
    let all = lines.all().join("\n");
    let lost =
        all.find("INFO the change feed may have missed writes").unwrap_or_else(|| panic!("the loss is logged:\n{all}"));
    let back = all.find("INFO the change feed is heard again").expect("waited for");
    assert!(lost < back, "the loss, then its end:\n{all}");
    assert_eq!(lines.containing("INFO the change feed is heard again").len(), 1, "{all}");
}

#[test]
fn a_read_that_is_not_cached_names_its_statement_and_row_type() {
    let lines = capture(|_| async move {
        let db = TestDb::with_schema(COUNTERS).await;
        let cache = sqlacache_tests::builder(db.pool.clone()).model::<Counter>().build().await.expect("build");
        let rows =
            sqlacache_sqlx::query_as::<Counter>("SELECT id, v FROM counters WHERE v > extract(epoch FROM now())")
                .fetch_all(&cache)
                .await
                .expect("a read that depends on the clock");
        assert!(rows.is_empty());
        let stats = format!("{:?}", cache.stats());
        assert!(stats.contains("bypassed_by_reason: {Volatile: 1}"), "the stats name the reason: {stats}");
    });
    let all = lines.all().join("\n");
    let line = lines.containing("DEBUG read not cached");
    assert_eq!(line.len(), 1, "{all}");
    assert!(line[0].contains("Volatile"), "the reason: {all}");
    assert!(line[0].contains("extract(epoch FROM now())"), "the statement: {all}");
    assert!(line[0].contains(r#"type="sqlacache_tests::Counter""#), "the row type: {all}");
}

/// Misses, writes and the delivery of their invalidations have spans with OpenTelemetry's
/// attribute names; the SQL text only when the pool is told to.
#[test]
fn misses_writes_and_deliveries_have_spans_with_opentelemetry_attributes() {
    sqlacache_tests::redis::require_shared_redis();
    for text in [false, true] {
        let lines = capture(|_| async move {
            let db = TestDb::with_schema(COUNTERS).await;
            let cache = sqlacache_tests::builder(db.pool.clone())
                .model::<Counter>()
                .redis(&sqlacache_tests::redis::redis_url())
                .key_prefix(&unique_prefix("spans"))
                .redis_timeout(Duration::from_secs(5))
                .trace_query_text(text)
                .build()
                .await
                .unwrap();
            until("the pool uses Redis", || cache.tiers_ready_for_tests()).await;
            assert_eq!(value(&cache, 1).await, 0);
            assert_eq!(bump(&cache, 1).await, 1);
        });
        let all = lines.all().join("\n");
        let span = |name: &str| lines.containing(&format!("SPAN {name} ")).into_iter().next();
        let fill = span("sqlacache.fill").unwrap_or_else(|| panic!("no fill span:\n{all}"));
        assert!(
            fill.contains(r#"db.system.name="postgresql""#) && fill.contains(r#"db.operation.name="SELECT""#),
            "{fill}"
        );
        let write = span("sqlacache.write").unwrap_or_else(|| panic!("no write span:\n{all}"));
        assert!(
            write.contains(r#"db.system.name="postgresql""#) && write.contains(r#"db.operation.name="UPDATE""#),
            "{write}"
        );
        let delivery = span("sqlacache.invalidate").unwrap_or_else(|| panic!("no delivery span:\n{all}"));
        assert!(delivery.contains("sqlacache.tags="), "{delivery}");
        let texts = lines.containing("RECORD db.query.text=");
        if text {
            assert!(texts.iter().any(|l| l.contains("FROM counters")), "{all}");
            assert!(texts.iter().any(|l| l.contains("UPDATE counters SET v = v + 1")), "{all}");
        } else {
            assert!(texts.is_empty(), "the SQL text is opt-in:\n{all}");
        }
    }
}
