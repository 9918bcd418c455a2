//! The library's own state is bounded: past each bound it invalidates or refuses more, never
//! less, and counts it in `stats().widened`.

use sqlacache_tests::{TestDb, User};
use sqlx::AssertSqlSafe;

#[tokio::test]
async fn a_transaction_with_too_many_rows_to_list_invalidates_everything() {
    let db = TestDb::with_schema(&format!(
        "{}
         CREATE TABLE big (id bigint PRIMARY KEY, v int NOT NULL);
         INSERT INTO big SELECT g, 0 FROM generate_series(1, 20000) g;",
        sqlacache_tests::SCHEMA
    ))
    .await;
    let cache = db.cache().await;
    cache.get::<User>(1_i64).await.unwrap();
    let mut tx = cache.begin().await.unwrap();
    // Two statements of 9,000 rows each: every row is known, but together they pass the cap.
    for range in ["id <= 9000", "id > 9000 AND id <= 18000"] {
        let sql = format!("UPDATE big SET v = v + 1 WHERE {range}");
        sqlx::query(AssertSqlSafe(sql)).execute(&mut *tx).await.unwrap();
    }
    assert_eq!(cache.stats().full_invalidations, 0, "nothing is applied before the commit");
    tx.commit().await.unwrap();
    let stats = cache.stats();
    assert_eq!(stats.widened, 1);
    assert_eq!(stats.full_invalidations, 1, "the commit invalidated everything");
    cache.get::<User>(1_i64).await.unwrap();
    assert_eq!(cache.stats().hits, 0, "an unrelated entry went too");
}

#[tokio::test]
async fn too_many_missing_names_start_the_set_over() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    // One statement naming 1,100 tables that do not exist: one catalog reload, then past the cap
    // of remembered missing names.
    let tables: Vec<String> = (0..1100).map(|i| format!("missing_{i}")).collect();
    let sql = format!("SELECT count(*) FROM {}", tables.join(", "));
    let raw = sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql.clone())).fetch_one(&db.pool).await.unwrap_err();
    let cached = sqlacache_sqlx::query_scalar::<i64>(AssertSqlSafe(sql)).fetch_one(&cache).await.unwrap_err();
    assert_eq!(cached.to_string(), raw.to_string(), "PostgreSQL's own error, unchanged");
    assert_eq!(cache.stats().widened, 1, "the set of missing names started over");
    // Caching goes on.
    for _ in 0..2 {
        cache.get::<User>(1_i64).await.unwrap();
    }
    assert_eq!(cache.stats().hits, 1);
    // A table created under one of the names is found and read fresh.
    sqlx::raw_sql("CREATE TABLE missing_7 (id int); INSERT INTO missing_7 VALUES (1)").execute(&cache).await.unwrap();
    for _ in 0..2 {
        let n = sqlacache_sqlx::query_scalar::<i64>("SELECT count(*) FROM missing_7").fetch_one(&cache).await.unwrap();
        assert_eq!(n, 1);
    }
}
