//! Reads that must never be cached, and writes the analyzer cannot read.

use sqlacache_tests::{TestDb, User};

async fn twice_bypassed(cache: &sqlacache_sqlx::CachedPool, sql: &'static str) {
    let before = cache.stats();
    for _ in 0..2 {
        sqlacache_sqlx::query_as::<User>(sql).fetch_all(cache).await.unwrap();
    }
    let after = cache.stats();
    assert_eq!(after.hits, before.hits, "{sql} was served from the cache");
    assert_eq!(after.bypassed, before.bypassed + 2, "{sql} should bypass the cache");
}

#[tokio::test]
async fn locking_volatile_and_unreadable_reads_bypass() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    twice_bypassed(&cache, "SELECT * FROM users FOR UPDATE").await;
    twice_bypassed(&cache, "SELECT * FROM users ORDER BY id FOR SHARE").await;
    twice_bypassed(&cache, "SELECT * FROM users WHERE random() < 2").await;
    twice_bypassed(&cache, "SELECT * FROM users WHERE now() > '2000-01-01'").await;
    twice_bypassed(&cache, "SELECT * FROM users WHERE id < nextval('audit_log_id_seq')").await;
    // PostgreSQL accepts these; the analyzer cannot read them, so they are not cached.
    twice_bypassed(&cache, "SELECT * FROM users WHERE id = 1 FOR NO KEY UPDATE").await;
    twice_bypassed(&cache, "SELECT * FROM users GROUP BY DISTINCT id").await;
}

/// A temporary relation in any spelling never shadows a cached name on a pool connection: the
/// connection that made it is closed when its transaction (or statement) ends.
#[tokio::test]
async fn temporary_relations_never_shadow_a_cached_name() {
    let db = TestDb::new().await;
    let pool = db.pool_with(2, db.options()).await;
    let cache = sqlacache_tests::builder(pool.clone()).model::<User>().build().await.unwrap();
    for create in [
        "CREATE TEMP TABLE users (id bigint PRIMARY KEY, name text NOT NULL, active boolean NOT NULL)",
        "CREATE TABLE pg_temp.users (id bigint PRIMARY KEY, name text NOT NULL, active boolean NOT NULL)",
        "CREATE VIEW pg_temp.users AS SELECT 1::bigint AS id, 'temp'::text AS name, true AS active",
        "SET LOCAL search_path = pg_temp; CREATE TABLE users (id bigint, name text, active boolean)",
        "SELECT * INTO TEMP users FROM users WHERE false",
    ] {
        let mut tx = cache.begin().await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(create)).execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(create)).execute(&cache).await.unwrap();
        for _ in 0..3 {
            let cached =
                sqlacache_sqlx::query_as::<User>("SELECT * FROM users ORDER BY id").fetch_all(&cache).await.unwrap();
            let raw = sqlx::query_as::<_, User>("SELECT * FROM users ORDER BY id").fetch_all(&pool).await.unwrap();
            assert_eq!(cached, raw, "{create}");
            assert_eq!(cached.len(), 3, "{create}: the real table");
        }
    }
    assert!(cache.stats().hits >= 10, "{:?}", cache.stats());
}

#[tokio::test]
async fn unreadable_write_invalidates_everything() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    assert_eq!(cache.get::<User>(1_i64).await.unwrap().unwrap().name, "ada");
    sqlx::raw_sql("DO $$ BEGIN UPDATE users SET name = 'from do' WHERE id = 1; END $$").execute(&cache).await.unwrap();
    assert_eq!(cache.stats().full_invalidations, 1, "counted in stats");
    assert_eq!(cache.get::<User>(1_i64).await.unwrap().unwrap().name, "from do");
}

#[tokio::test]
async fn procedures_invalidate_everything() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    sqlx::raw_sql(
        "CREATE PROCEDURE rename_user(i bigint, n text) LANGUAGE sql AS $$ UPDATE users SET name = n WHERE id = i $$",
    )
    .execute(&cache)
    .await
    .unwrap();
    assert_eq!(cache.get::<User>(2_i64).await.unwrap().unwrap().name, "bob");
    sqlx::query("CALL rename_user($1, $2)").bind(2_i64).bind("robert").execute(&cache).await.unwrap();
    assert_eq!(cache.get::<User>(2_i64).await.unwrap().unwrap().name, "robert");
}

#[tokio::test]
async fn function_volatility_comes_from_the_catalog() {
    let db = TestDb::new().await;
    let helpers = format!("{}_fn", db.schema);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        r#"CREATE SCHEMA {helpers};
           -- Reads a table the statement does not name: volatile by default.
           CREATE FUNCTION {helpers}.lower(t text) RETURNS text LANGUAGE sql AS $$ SELECT name FROM users WHERE id = 2 $$;
           CREATE FUNCTION "LOWER"(t text) RETURNS text LANGUAGE sql STABLE AS $$ SELECT name FROM users WHERE id = 3 $$;
           CREATE FUNCTION twice(i bigint) RETURNS bigint LANGUAGE sql IMMUTABLE AS $$ SELECT i * 2 $$;"#
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    let cache = db.cache().await;
    let qualified = format!("SELECT {helpers}.lower(name) FROM users WHERE id = 1");
    let read = |sql: String| {
        let cache = cache.clone();
        async move { sqlacache_sqlx::query_scalar::<String>(sqlx::AssertSqlSafe(sql)).fetch_one(&cache).await.unwrap() }
    };
    assert_eq!(read(qualified.clone()).await, "bob");
    assert_eq!(read(r#"SELECT "LOWER"(name) FROM users WHERE id = 1"#.into()).await, "cy");
    sqlx::raw_sql("UPDATE users SET name = 'bo' WHERE id = 2; UPDATE users SET name = 'c' WHERE id = 3")
        .execute(cache.inner())
        .await
        .unwrap();
    assert_eq!(read(qualified).await, "bo");
    assert_eq!(read(r#"SELECT "LOWER"(name) FROM users WHERE id = 1"#.into()).await, "c");
    assert_eq!(cache.stats().uncached(sqlacache_sqlx::Uncached::Volatile), 4);

    // Immutable functions, built-in or not, and grammar such as COALESCE keep caching.
    for sql in ["SELECT twice(id) FROM users WHERE id = 1", "SELECT lower(coalesce(name, 'x')) FROM users WHERE id = 1"]
    {
        for _ in 0..2 {
            let _: Vec<String> = sqlacache_sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT ({sql})::text")))
                .fetch_all(&cache)
                .await
                .unwrap();
        }
    }
    assert_eq!(cache.stats().hits, 2);
}

#[tokio::test]
async fn clock_dependent_reads_are_not_cached() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    for sql in [
        "SELECT count(*) FROM users WHERE $$now$$::timestamptz > '2000-01-01'",
        "SELECT count(*) FROM users WHERE E'now'::timestamptz > '2000-01-01'",
        "SELECT count(*) FROM users WHERE ('no' || 'w')::timestamptz > '2000-01-01'",
        "SELECT count(*) FROM users WHERE date 'today' > '2000-01-01'",
        "SELECT count(*) FROM users WHERE now() > '2000-01-01'",
        "SELECT count(*) FROM users TABLESAMPLE SYSTEM (100)",
    ] {
        for _ in 0..2 {
            sqlacache_sqlx::query_scalar::<i64>(sqlx::AssertSqlSafe(sql)).fetch_one(&cache).await.unwrap();
        }
    }
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses), (0, 0));
    assert_eq!(stats.uncached(sqlacache_sqlx::Uncached::Clock), 8);
    assert_eq!(stats.uncached(sqlacache_sqlx::Uncached::Volatile), 2);
    assert_eq!(stats.uncached(sqlacache_sqlx::Uncached::Sample), 2);
}

#[tokio::test]
async fn valid_locking_reads_do_not_flush_the_cache() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    cache.get::<User>(1_i64).await.unwrap();
    for sql in
        ["SELECT * FROM users WHERE id = 1 FOR NO KEY UPDATE", "SELECT * FROM users FOR KEY SHARE", "TABLE users"]
    {
        sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&cache).await.unwrap();
    }
    cache.get::<User>(1_i64).await.unwrap();
    assert_eq!(cache.stats().full_invalidations, 0);
    assert_eq!(cache.stats().hits, 1);
}

/// Proven or not cached (rule 1): an aggregate is as volatile as the functions it runs, whatever
/// its own entry in `pg_proc` says.
#[tokio::test]
async fn aggregates_over_volatile_functions_are_not_cached() {
    let db = TestDb::new().await;
    sqlx::raw_sql(
        "CREATE FUNCTION jitter_add(bigint, bigint) RETURNS bigint VOLATILE LANGUAGE sql \
           AS $$ SELECT coalesce($1, 0) + $2 + (random() * 1000)::bigint $$; \
         CREATE AGGREGATE jitter_sum(bigint) (SFUNC = jitter_add, STYPE = bigint); \
         CREATE FUNCTION plain_add(bigint, bigint) RETURNS bigint IMMUTABLE LANGUAGE sql \
           AS $$ SELECT coalesce($1, 0) + $2 $$; \
         CREATE AGGREGATE plain_sum(bigint) (SFUNC = plain_add, STYPE = bigint);",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let cache = db.cache().await;
    for _ in 0..2 {
        sqlacache_sqlx::query_scalar::<i64>("SELECT jitter_sum(id) FROM users").fetch_one(&cache).await.unwrap();
        sqlacache_sqlx::query_scalar::<i64>("SELECT plain_sum(id) FROM users").fetch_one(&cache).await.unwrap();
    }
    let stats = cache.stats();
    assert_eq!(stats.uncached(sqlacache_sqlx::Uncached::Volatile), 2, "the volatile aggregate: {stats:?}");
    assert_eq!(stats.hits, 1, "the immutable aggregate is cached: {stats:?}");
}

/// A read through sqlx's own API with the pool as executor is not cached (sqlx does not say
/// what the rows become), and is counted as such; a cached read's own query is not.
#[tokio::test]
async fn plain_sqlx_reads_through_the_pool_are_counted() {
    use sqlacache_sqlx::Uncached;
    let db = TestDb::new().await;
    let cache = db.cache().await;
    let before = cache.stats();
    for _ in 0..2 {
        let rows: Vec<(i64,)> = sqlx::query_as("SELECT id FROM users ORDER BY id").fetch_all(&cache).await.unwrap();
        assert!(!rows.is_empty());
    }
    let after = cache.stats();
    assert_eq!(after.uncached(Uncached::PlainSqlx), before.uncached(Uncached::PlainSqlx) + 2, "{after:?}");
    assert_eq!(after.bypassed, before.bypassed + 2);
    // A miss and a hit of the cache's own API: neither is a plain read.
    for _ in 0..2 {
        sqlacache_sqlx::query_as::<User>("SELECT * FROM users ORDER BY id").fetch_all(&cache).await.unwrap();
    }
    // A write through sqlx's API is not a read.
    sqlx::query("UPDATE users SET name = name WHERE id = 1").execute(&cache).await.unwrap();
    let last = cache.stats();
    assert_eq!(last.uncached(Uncached::PlainSqlx), after.uncached(Uncached::PlainSqlx), "{last:?}");
    assert_eq!((last.misses, last.hits), (after.misses + 1, after.hits + 1));
    assert!(format!("{last:?}").contains("PlainSqlx: 2"), "Debug names the reason: {last:?}");
}
