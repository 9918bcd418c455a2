//! Per-table ops and TTLs, the wildcard, disabled tables and the memory bound.

use sqlacache_sqlx::{CachedPool, Ops};
use sqlacache_tests::{Order, TestDb, User};
use std::time::Duration;

#[tokio::test]
async fn ops_decide_what_is_cached() {
    let db = TestDb::new().await;
    let cache = db.builder().table("orders", Ops::GET, Duration::from_secs(60)).build().await.unwrap();
    for _ in 0..2 {
        cache.query_as::<Order>("SELECT * FROM orders").fetch_all().await.unwrap();
        cache.query_scalar::<i64>("SELECT count(*) FROM orders").fetch_one().await.unwrap();
    }
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.bypassed), (0, 4), "fetch and count pass straight to the database");
    cache.get::<Order>(10_i64).await.unwrap();
    cache.get::<Order>(10_i64).await.unwrap();
    assert_eq!(cache.stats().hits, 1, "get is cached");

    let joined = "SELECT u.* FROM users u JOIN orders o ON o.user_id = u.id";
    cache.query_as::<User>(joined).fetch_all().await.unwrap();
    cache.query_as::<User>(joined).fetch_all().await.unwrap();
    assert_eq!(cache.stats().hits, 1, "a join is cached only if every table allows it");
}

#[tokio::test]
async fn wildcard_and_disabled_tables() {
    let db = TestDb::new().await;
    let cache = db.builder().disable_table("notes").build().await.unwrap();
    for _ in 0..2 {
        cache.query_scalar::<i64>("SELECT count(*) FROM audit_log").fetch_one().await.unwrap();
        cache.query_scalar::<i64>("SELECT count(*) FROM notes").fetch_one().await.unwrap();
    }
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.bypassed), (1, 2), "audit_log falls under *, notes is disabled");

    let only_configured = db.builder().wildcard(Ops::NONE).build().await.unwrap();
    for _ in 0..2 {
        only_configured.query_scalar::<i64>("SELECT count(*) FROM audit_log").fetch_one().await.unwrap();
    }
    assert_eq!(only_configured.stats().hits, 0);
}

#[tokio::test]
async fn entries_expire_after_their_ttl() {
    let db = TestDb::new().await;
    let cache = db.builder().table("users", Ops::ALL, Duration::from_millis(200)).build().await.unwrap();
    cache.get::<User>(1_i64).await.unwrap();
    cache.get::<User>(1_i64).await.unwrap();
    assert_eq!(cache.stats().hits, 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    cache.get::<User>(1_i64).await.unwrap();
    assert_eq!(cache.stats().misses, 2, "expired");
}

#[tokio::test]
async fn invalid_configuration_is_an_error() {
    let db = TestDb::new().await;
    let err = db.builder().default_ttl(Duration::ZERO).build().await.unwrap_err();
    assert!(matches!(err, sqlacache_sqlx::Error::Config(_)), "{err}");
    let cache = db.cache().await;
    let err = cache.invalidate_table("no_such_table").await.unwrap_err();
    assert!(err.to_string().contains("no_such_table"), "{err}");
}

#[tokio::test]
async fn manual_invalidation() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    let warm = |c: CachedPool| async move {
        for id in 1..=3_i64 {
            c.get::<User>(id).await.unwrap();
        }
        c.query_scalar::<i64>("SELECT count(*) FROM users").fetch_one().await.unwrap();
    };
    warm(cache.clone()).await;
    // Changed behind the cache's back.
    sqlx::query("UPDATE users SET name = 'side' WHERE id IN (1, 3)").execute(cache.inner()).await.unwrap();
    assert_eq!(cache.get::<User>(1_i64).await.unwrap().unwrap().name, "ada", "inner() bypasses invalidation");

    cache.invalidate_rows::<User>(&[1_i64, 3]).await.unwrap();
    let hits = cache.stats().hits;
    assert_eq!(cache.get::<User>(1_i64).await.unwrap().unwrap().name, "side");
    assert_eq!(cache.get::<User>(3_i64).await.unwrap().unwrap().name, "side");
    cache.get::<User>(2_i64).await.unwrap();
    assert_eq!(cache.stats().hits, hits + 1, "row 2 stayed cached");

    warm(cache.clone()).await;
    cache.invalidate_table("users").await.unwrap();
    let misses = cache.stats().misses;
    warm(cache.clone()).await;
    assert_eq!(cache.stats().misses, misses + 4);

    cache.invalidate_all().await.unwrap();
    warm(cache.clone()).await;
    assert_eq!(cache.stats().misses, misses + 8);
}

#[tokio::test]
async fn memory_stays_under_capacity() {
    let db = TestDb::with_schema(
        "CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL, active boolean NOT NULL); \
         INSERT INTO users SELECT g, repeat('x', 200), true FROM generate_series(1, 200) g;",
    )
    .await;
    let capacity = 256 * 1024;
    let cache = CachedPool::builder(db.pool.clone()).memory_capacity(capacity).build().await.unwrap();
    for start in 0..1500_i64 {
        cache
            .query_as::<User>("SELECT * FROM users WHERE id > $1 ORDER BY id")
            .bind(start % 200)
            .fetch_all()
            .await
            .unwrap();
        cache.get::<User>(start).await.unwrap();
        let (bytes, _) = cache.memory_usage();
        assert!(bytes <= capacity, "{bytes} bytes held, capacity {capacity}");
    }
    let (bytes, entries) = cache.memory_usage();
    assert!(bytes > capacity / 4 && entries > 10, "the cache is in use: {bytes} bytes, {entries} entries");
}

#[tokio::test]
async fn the_op_is_read_from_the_parsed_statement() {
    let db = TestDb::new().await;
    let cache =
        CachedPool::builder(db.pool.clone()).table("users", Ops::FETCH, Duration::from_secs(60)).build().await.unwrap();
    for _ in 0..2 {
        // A string that merely contains `count(` is a fetch, and cached.
        cache.query_as::<User>("SELECT * FROM users WHERE name <> 'count(*)'").fetch_all().await.unwrap();
        // A real count is not: the table does not allow `count`.
        cache.query_scalar::<i64>("SELECT count(*) FROM users").fetch_one().await.unwrap();
        cache.query_scalar::<bool>("SELECT EXISTS (SELECT 1 FROM users WHERE id = 1)").fetch_one().await.unwrap();
    }
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.bypassed), (1, 4));
}

#[tokio::test(flavor = "current_thread")]
async fn pools_on_one_thread_keep_their_own_plans() {
    // Plans are memoized per thread in front of each pool's memo: on one thread, the same SQL
    // through two differently configured pools must still follow each pool's configuration.
    let db = TestDb::new().await;
    let caching = db.cache().await;
    let disabled = db.builder().disable_table("users").build().await.unwrap();
    for cache in [&caching, &disabled, &caching, &disabled] {
        cache.get::<User>(1_i64).await.unwrap();
        cache.query_scalar::<i64>("SELECT count(*) FROM users").fetch_one().await.unwrap();
    }
    let (on, off) = (caching.stats(), disabled.stats());
    assert_eq!((on.hits, on.bypassed), (2, 0));
    assert_eq!((off.hits, off.bypassed), (0, 4), "the disabled pool used the other pool's plans");
}
