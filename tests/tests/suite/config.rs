//! Per-table ops and TTLs, the wildcard, disabled tables and the memory bound.

use sqlacache_sqlx::{CachedPool, Ops};
use sqlacache_tests::{Order, TestDb, User};
use std::time::Duration;

#[tokio::test]
async fn ops_decide_what_is_cached() {
    let db = TestDb::new().await;
    let cache = db.builder().table("orders", Ops::GET, Duration::from_secs(60)).build().await.unwrap();
    for _ in 0..2 {
        sqlacache_sqlx::query_as::<Order>("SELECT * FROM orders").fetch_all(&cache).await.unwrap();
        sqlacache_sqlx::query_scalar::<i64>("SELECT count(*) FROM orders").fetch_one(&cache).await.unwrap();
    }
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.bypassed), (0, 4), "fetch and count pass straight to the database");
    cache.get::<Order>(10_i64).await.unwrap();
    cache.get::<Order>(10_i64).await.unwrap();
    assert_eq!(cache.stats().hits, 1, "get is cached");

    let joined = "SELECT u.* FROM users u JOIN orders o ON o.user_id = u.id";
    sqlacache_sqlx::query_as::<User>(joined).fetch_all(&cache).await.unwrap();
    sqlacache_sqlx::query_as::<User>(joined).fetch_all(&cache).await.unwrap();
    assert_eq!(cache.stats().hits, 1, "a join is cached only if every table allows it");
}

#[tokio::test]
async fn wildcard_and_disabled_tables() {
    let db = TestDb::new().await;
    let cache = db.builder().disable_table("notes").build().await.unwrap();
    for _ in 0..2 {
        sqlacache_sqlx::query_scalar::<i64>("SELECT count(*) FROM audit_log").fetch_one(&cache).await.unwrap();
        sqlacache_sqlx::query_scalar::<i64>("SELECT count(*) FROM notes").fetch_one(&cache).await.unwrap();
    }
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.bypassed), (1, 2), "audit_log falls under *, notes is disabled");

    let only_configured = db.builder().wildcard(Ops::NONE).build().await.unwrap();
    for _ in 0..2 {
        sqlacache_sqlx::query_scalar::<i64>("SELECT count(*) FROM audit_log")
            .fetch_one(&only_configured)
            .await
            .unwrap();
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
        sqlacache_sqlx::query_scalar::<i64>("SELECT count(*) FROM users").fetch_one(&c).await.unwrap();
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
    let cache =
        sqlacache_tests::builder(db.pool.clone()).model::<User>().memory_capacity(capacity).build().await.unwrap();
    for start in 0..1500_i64 {
        sqlacache_sqlx::query_as::<User>("SELECT * FROM users WHERE id > $1 ORDER BY id")
            .bind(start % 200)
            .fetch_all(&cache)
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
    let cache = db.builder().table("users", Ops::FETCH, Duration::from_secs(60)).build().await.unwrap();
    for _ in 0..2 {
        // A string that merely contains `count(` is a fetch, and cached.
        sqlacache_sqlx::query_as::<User>("SELECT * FROM users WHERE name <> 'count(*)'")
            .fetch_all(&cache)
            .await
            .unwrap();
        // A real count is not: the table does not allow `count`.
        sqlacache_sqlx::query_scalar::<i64>("SELECT count(*) FROM users").fetch_one(&cache).await.unwrap();
        sqlacache_sqlx::query_scalar::<bool>("SELECT EXISTS (SELECT 1 FROM users WHERE id = 1)")
            .fetch_one(&cache)
            .await
            .unwrap();
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
        sqlacache_sqlx::query_scalar::<i64>("SELECT count(*) FROM users").fetch_one(cache).await.unwrap();
    }
    let (on, off) = (caching.stats(), disabled.stats());
    assert_eq!((on.hits, on.bypassed), (2, 0));
    assert_eq!((off.hits, off.bypassed), (0, 4), "the disabled pool used the other pool's plans");
}

/// The error `build()` returns for a builder, as text.
async fn build_error(builder: sqlacache_sqlx::CachedPoolBuilder) -> String {
    match builder.build().await {
        Ok(_) => panic!("build() accepted a mistaken configuration"),
        Err(error) => {
            assert!(matches!(error, sqlacache_sqlx::Error::Config(_)), "{error:?}");
            error.to_string()
        }
    }
}

#[derive(Debug, sqlx::FromRow, serde::Serialize, serde::Deserialize, sqlacache_sqlx::Cacheable)]
#[cache(table = "userz")]
struct Misspelt {
    #[cache(pk)]
    id: i64,
}

#[tokio::test]
async fn unknown_tables_fail_the_build_by_name() {
    let db = TestDb::new().await;
    let pool = || sqlacache_tests::builder(db.pool.clone());
    let error = build_error(pool().table("ordrs", Ops::ALL, Duration::from_secs(60))).await;
    assert!(error.contains("`ordrs`") && error.contains(".table("), "{error}");
    let error = build_error(pool().disable_table("audti_log")).await;
    assert!(error.contains("`audti_log`") && error.contains(".disable_table("), "{error}");
    let error = build_error(pool().model::<Misspelt>()).await;
    assert!(error.contains("Misspelt") && error.contains("`userz`"), "{error}");
    assert!(error.contains(&db.schema), "the message shows the search path: {error}");

    // A table outside the search path is found only by its qualified name.
    let other = format!("{}_other", db.schema);
    let setup = format!("CREATE SCHEMA {other}; CREATE TABLE {other}.ledger (id bigint PRIMARY KEY)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(setup)).execute(&db.pool).await.unwrap();
    let error = build_error(pool().disable_table("ledger")).await;
    assert!(error.contains("`ledger`"), "{error}");
    let qualified = format!("{other}.ledger");
    let cache = pool().disable_table(&qualified).build().await.unwrap();
    for _ in 0..2 {
        sqlacache_sqlx::query_scalar::<i64>(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {qualified}")))
            .fetch_one(&cache)
            .await
            .unwrap();
    }
    assert_eq!(cache.stats().uncached(sqlacache_sqlx::Uncached::Disabled), 2, "the qualified name disabled it");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {other} CASCADE"))).execute(&db.pool).await.unwrap();
}

#[tokio::test]
async fn a_disabled_table_is_never_cached_whatever_else_configures_it() {
    let db = TestDb::new().await;
    let cache = db.builder().disable_table("USERS").build().await.unwrap();
    for _ in 0..2 {
        cache.get::<User>(1).await.unwrap();
    }
    assert_eq!(cache.stats().uncached(sqlacache_sqlx::Uncached::Disabled), 2, "folded like SQL: USERS is users");
}

mod keys {
    use serde::{Deserialize, Serialize};
    use sqlacache_sqlx::Cacheable;

    /// The key columns of `memberships` in the wrong order.
    #[derive(Debug, sqlx::FromRow, Serialize, Deserialize, Cacheable)]
    #[cache(table = "memberships")]
    pub struct Swapped {
        #[cache(pk)]
        pub user_id: i64,
        #[cache(pk)]
        pub org_id: i64,
        pub role: String,
    }

    /// One column of a two-column key.
    #[derive(Debug, sqlx::FromRow, Serialize, Deserialize, Cacheable)]
    #[cache(table = "memberships")]
    pub struct Partial {
        #[cache(pk)]
        pub user_id: i64,
        pub org_id: i64,
        pub role: String,
    }

    /// A key on a table without a primary key.
    #[derive(Debug, sqlx::FromRow, Serialize, Deserialize, Cacheable)]
    #[cache(table = "tags")]
    pub struct Tag {
        #[cache(pk)]
        pub name: String,
    }

    /// A key on a view.
    #[derive(Debug, sqlx::FromRow, Serialize, Deserialize, Cacheable)]
    #[cache(table = "active_users")]
    pub struct ActiveUser {
        #[cache(pk)]
        pub id: i64,
    }

    /// The `users` table with other settings than `sqlacache_tests::User`'s.
    #[derive(Debug, sqlx::FromRow, Serialize, Deserialize, Cacheable)]
    #[cache(table = "users", ops(get), ttl = 5)]
    pub struct UserName {
        #[cache(pk)]
        pub id: i64,
        pub name: String,
    }
}

#[tokio::test]
async fn a_model_key_that_is_not_the_primary_key_fails_the_build() {
    let db = TestDb::new().await;
    let pool = || sqlacache_tests::builder(db.pool.clone());
    let error = build_error(pool().model::<keys::Swapped>()).await;
    let table = format!("{}.memberships", db.schema);
    assert!(error.contains(&table), "{error}");
    assert!(error.contains("(user_id, org_id)") && error.contains("(org_id, user_id)"), "{error}");
    assert!(error.contains("order"), "{error}");
    let error = build_error(pool().model::<keys::Partial>()).await;
    assert!(error.contains("(user_id)") && error.contains("(org_id, user_id)"), "{error}");

    sqlx::raw_sql("CREATE TABLE tags (name text NOT NULL, weight int); CREATE VIEW active_users AS SELECT * FROM users WHERE active")
        .execute(&db.pool)
        .await
        .unwrap();
    let error = build_error(pool().model::<keys::Tag>()).await;
    assert!(error.contains("tags") && error.contains("no primary key"), "{error}");
    sqlx::raw_sql("INSERT INTO tags VALUES ('a', 1), ('a', 2)").execute(&db.pool).await.unwrap();
    let error = build_error(pool().model::<keys::ActiveUser>()).await;
    assert!(error.contains("active_users") && error.contains("view"), "{error}");

    // A unique index on the key columns names one row, as a primary key does.
    sqlx::raw_sql("DELETE FROM tags; CREATE UNIQUE INDEX ON tags (name)").execute(&db.pool).await.unwrap();
    pool().model::<keys::Tag>().build().await.expect("a unique key is accepted");
}

#[tokio::test]
async fn two_models_of_a_table_must_agree_and_ttl_errors_name_the_qualified_table() {
    let db = TestDb::new().await;
    let error = build_error(db.builder().model::<keys::UserName>()).await;
    assert!(error.contains("User") && error.contains("UserName") && error.contains("users"), "{error}");
    db.builder()
        .model::<keys::UserName>()
        .table("users", Ops::ALL, Duration::from_secs(60))
        .build()
        .await
        .expect("a `.table(..)` setting decides for both models");
    let error = build_error(db.builder().table("orders", Ops::ALL, Duration::ZERO)).await;
    assert!(error.contains(&format!("`{}.orders`", db.schema)), "{error}");
}
