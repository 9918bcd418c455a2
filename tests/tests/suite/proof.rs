//! A read is cached only when what it depends on is proven; anything not proven is not cached.

use sqlacache_sqlx::{CachedPool, Uncached};
use sqlacache_tests::TestDb;
use sqlx::AssertSqlSafe;

async fn count(cache: &CachedPool, sql: &str) -> i64 {
    cache.query_scalar::<i64>(AssertSqlSafe(sql.to_owned())).fetch_one().await.unwrap()
}

/// PostgreSQL folds only ASCII letters: unquoted `Ät` is the table `"Ät"`, not `ät`.
#[tokio::test]
async fn non_ascii_names_resolve_as_postgres_folds_them() {
    let db = TestDb::with_schema(
        r#"CREATE TABLE "Ät" (id int PRIMARY KEY); CREATE TABLE "ät" (id int PRIMARY KEY);
           INSERT INTO "Ät" VALUES (1); INSERT INTO "ät" VALUES (1), (2);"#,
    )
    .await;
    let cache = CachedPool::builder(db.pool.clone()).build().await.unwrap();
    for round in 0..3_i64 {
        assert_eq!(count(&cache, "SELECT count(*) FROM Ät").await, 1 + round);
        assert_eq!(count(&cache, "SELECT count(*) FROM ÄT").await, 1 + round);
        assert_eq!(count(&cache, "SELECT count(*) FROM ät").await, 2);
        let insert = format!(r#"INSERT INTO "Ät" VALUES ({})"#, 10 + round);
        sqlx::raw_sql(AssertSqlSafe(insert)).execute(&cache).await.unwrap();
    }
    assert!(cache.stats().hits >= 2, "{:?}", cache.stats());
}

/// A clock word bound as an argument makes a read depend on the clock, whatever surrounds it
/// in the argument's text and whatever its length.
#[tokio::test]
async fn clock_words_in_arguments_of_any_length_are_not_cached() {
    let db = TestDb::new().await;
    let cache = CachedPool::builder(db.pool.clone()).build().await.unwrap();
    let sql = "SELECT count(*) FROM users WHERE $1::timestamptz > '2000-01-01'";
    for word in ["now", " Today", "tomorrow  ", "YESTERDAY"] {
        for pad in [0, 1, 44, 48, 60, 92, 96, 200] {
            let arg = format!("{word}{}", " ".repeat(pad));
            cache.query_scalar::<i64>(sql).bind(&arg).fetch_one().await.unwrap();
            let arg = format!("{}{word}", " ".repeat(pad));
            cache.query_scalar::<i64>(sql).bind(&arg).fetch_one().await.unwrap();
        }
    }
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses), (0, 0), "{stats:?}");
    assert_eq!(stats.uncached(Uncached::Clock), 64);
    // Other text is cached.
    for _ in 0..2 {
        cache
            .query_scalar::<i64>(sql)
            .bind("2020-01-01 now-ish".replace("now-ish", "12:00"))
            .fetch_one()
            .await
            .unwrap();
    }
    assert_eq!(cache.stats().hits, 1);
}
