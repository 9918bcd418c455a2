//! Bad input gets PostgreSQL's own error and loses nothing.

use serde::{Deserialize, Serialize};
use sqlacache_sqlx::testing::Probe as _;
use sqlacache_sqlx::Cacheable;
use sqlacache_tests::{TestDb, User};

fn describe(error: &sqlx::Error) -> (Option<String>, String, Option<usize>) {
    let db = error.as_database_error().expect("a database error");
    let pg = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().expect("a PostgreSQL error");
    let position = match pg.position() {
        Some(sqlx::postgres::PgErrorPosition::Original(p)) => Some(p),
        _ => None,
    };
    (db.code().map(|c| c.into_owned()), db.message().to_owned(), position)
}

#[tokio::test]
async fn malformed_sql_returns_the_raw_error_and_keeps_the_cache() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    cache.get::<User>(1_i64).await.unwrap();

    for sql in [
        "SELEC * FROM users",
        "UPDATE users SET nosuch = 1 WHERE id = 1",
        "UPDATE users SET name = 'x' WHERE nosuch = 1",
        "INSERT INTO users (id, name) VALUES (1, 'dup')",
        "DELETE FROM nosuch_table WHERE id = 1",
        "UPDATE users SET name = 'x' WHERE id = 1; SELEC broken",
    ] {
        let raw = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&db.pool).await.unwrap_err();
        let cached = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&cache).await.unwrap_err();
        assert_eq!(describe(&cached), describe(&raw), "{sql}");
        let raw = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&db.pool).await;
        let cached = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&cache).await;
        if let (Err(raw), Err(cached)) = (raw, cached) {
            assert_eq!(describe(&cached), describe(&raw), "{sql} (prepared)");
        }
    }
    let hits = cache.stats().hits;
    assert_eq!(cache.get::<User>(1_i64).await.unwrap().unwrap().name, "ada");
    assert_eq!(cache.stats().hits, hits + 1, "failed statements changed nothing, so nothing was invalidated");
    assert_eq!(cache.stats().full_invalidations, 0);

    let err = sqlacache_sqlx::query_as::<User>("SELECT * FORM users").fetch_all(&cache).await.unwrap_err();
    let raw = sqlx::query_as::<_, User>("SELECT * FORM users").fetch_all(&db.pool).await.unwrap_err();
    assert_eq!(describe(&err), describe(&raw), "typed reads too");
}

#[tokio::test]
async fn corrupt_entries_are_misses_and_are_replaced() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    let list = "SELECT * FROM users ORDER BY id";
    let user = cache.get::<User>(1_i64).await.unwrap();
    let users = sqlacache_sqlx::query_as::<User>(list).fetch_all(&cache).await.unwrap();
    let count: i64 = sqlacache_sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&cache).await.unwrap();

    cache.scramble_entries_for_tests();
    assert_eq!(cache.get::<User>(1_i64).await.unwrap(), user);
    assert_eq!(sqlacache_sqlx::query_as::<User>(list).fetch_all(&cache).await.unwrap(), users);
    assert_eq!(
        sqlacache_sqlx::query_scalar::<i64>("SELECT count(*) FROM users").fetch_one(&cache).await.unwrap(),
        count
    );
    let stats = cache.stats();
    assert_eq!(stats.corrupt_entries, 3);
    assert_eq!(cache.get::<User>(1_i64).await.unwrap(), user);
    assert_eq!(cache.stats().hits, stats.hits + 1, "the corrupt entry was replaced by a good one");
}

/// Same table and SQL as `User`, different shape (and the same settings, as models of one table
/// must have).
#[derive(Debug, PartialEq, sqlx::FromRow, Serialize, Deserialize, Cacheable)]
#[cache(table = "users", ops(get, fetch, count, exists), ttl = 900)]
struct UserName {
    #[cache(pk)]
    id: i64,
    name: String,
}

#[tokio::test]
async fn row_types_never_read_each_others_bytes() {
    let db = TestDb::new().await;
    let cache = db.builder().model::<UserName>().build().await.unwrap();
    let sql = "SELECT * FROM users WHERE id = $1";
    for _ in 0..2 {
        let full = sqlacache_sqlx::query_as::<User>(sql).bind(1_i64).fetch_one(&cache).await.unwrap();
        let short = sqlacache_sqlx::query_as::<UserName>(sql).bind(1_i64).fetch_one(&cache).await.unwrap();
        assert_eq!((full.name.as_str(), short.name.as_str()), ("ada", "ada"));
        assert_eq!(cache.get::<UserName>(1_i64).await.unwrap().unwrap().name, "ada");
        assert!(cache.get::<User>(1_i64).await.unwrap().unwrap().active);
    }
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.corrupt_entries), (4, 4, 0));
}
