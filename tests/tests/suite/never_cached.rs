//! Reads that must never be cached, and writes the analyzer cannot read.

use sqlacache_tests::{TestDb, User};

async fn twice_bypassed(cache: &sqlacache_sqlx::CachedPool, sql: &'static str) {
    let before = cache.stats();
    for _ in 0..2 {
        cache.query_as::<User>(sql).fetch_all().await.unwrap();
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

#[tokio::test]
async fn temporary_tables_are_not_cached() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    let mut tx = cache.begin().await.unwrap();
    sqlx::raw_sql("CREATE TEMP TABLE users (id bigint PRIMARY KEY, name text NOT NULL, active boolean NOT NULL)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // Some pool connections now have a temporary `users` shadowing the real one.
    twice_bypassed(&cache, "SELECT * FROM users").await;
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
