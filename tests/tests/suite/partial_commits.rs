//! Statements that commit part of their work and then fail: "nothing ran" is assumed only
//! where PostgreSQL guarantees it.

use sqlacache_sqlx::CachedPool;
use sqlacache_tests::{TestDb, User};
use sqlx::AssertSqlSafe;

async fn name_of(cache: &CachedPool, id: i64) -> String {
    cache.get::<User>(id).await.unwrap().unwrap().name
}

const PROCEDURES: &str = "
CREATE PROCEDURE commit_then_fail(i bigint, n text) LANGUAGE plpgsql AS $$
BEGIN
  UPDATE users SET name = n WHERE id = i;
  COMMIT;
  RAISE EXCEPTION 'after the commit';
END $$;
CREATE PROCEDURE commit_then_bad_sql(i bigint, n text) LANGUAGE plpgsql AS $$
BEGIN
  UPDATE users SET name = n WHERE id = i;
  COMMIT;
  EXECUTE 'SELEC oops';
END $$;
";

#[tokio::test]
async fn statements_that_commit_then_fail_still_invalidate() {
    let cases = [
        "CALL commit_then_fail(1, 'changed')",
        "CALL commit_then_bad_sql(1, 'changed')",
        "DO $$ BEGIN UPDATE users SET name = 'changed' WHERE id = 1; COMMIT; RAISE EXCEPTION 'x'; END $$",
        "UPDATE users SET name = 'changed' WHERE id = 1; COMMIT; SELECT 1/0",
        "BEGIN; UPDATE users SET name = 'changed' WHERE id = 1; COMMIT; SELECT * FROM no_such_table",
        "UPDATE users SET name = 'changed' WHERE id = 1; COMMIT; SELECT 1/0; SELECT 2",
        // A syntax error that PostgreSQL raises when it analyzes a statement, after the ones
        // before it ran: not "nothing ran".
        "UPDATE users SET name = 'changed' WHERE id = 1; COMMIT; INSERT INTO users VALUES (9, 'x', true), (10)",
        "UPDATE users SET name = 'changed' WHERE id = 1; COMMIT; SELECT 1 UNION SELECT 1, 2",
    ];
    for sql in cases {
        let db = TestDb::with_schema(&format!("{}{PROCEDURES}", sqlacache_tests::SCHEMA)).await;
        let cache = db.cache().await;
        assert_eq!(name_of(&cache, 1).await, "ada");
        let result = sqlx::raw_sql(AssertSqlSafe(sql)).execute(&cache).await;
        assert!(result.is_err(), "{sql} fails");
        assert_eq!(name_of(&cache, 1).await, "changed", "{sql}: the committed part is seen");
    }
}

#[tokio::test]
async fn a_bound_call_that_commits_then_fails_still_invalidates() {
    let db = TestDb::with_schema(&format!("{}{PROCEDURES}", sqlacache_tests::SCHEMA)).await;
    let cache = db.cache().await;
    assert_eq!(name_of(&cache, 2).await, "bob");
    let result = sqlx::query("CALL commit_then_fail($1, $2)").bind(2_i64).bind("robert").execute(&cache).await;
    assert!(result.is_err());
    assert_eq!(name_of(&cache, 2).await, "robert");
}

#[tokio::test]
async fn failures_that_ran_nothing_invalidate_nothing() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    assert_eq!(name_of(&cache, 1).await, "ada");
    for sql in [
        "UPDATE users SET name = 'x' WHERE id = 1; SELECT 1/0",
        "UPDATE users SET name = 'x' WHERE id = 1 AND 1/0 = 1",
        "UPDATE users SET nme = 'x' WHERE id = 1",
        "UPDATE users SET name = 'x' WHERE id = 1; SELEC oops",
    ] {
        assert!(sqlx::raw_sql(AssertSqlSafe(sql)).execute(&cache).await.is_err(), "{sql}");
    }
    assert_eq!(cache.stats().invalidations, 0);
    assert_eq!(name_of(&cache, 1).await, "ada");
    assert_eq!(cache.stats().hits, 1);
}

#[tokio::test]
async fn a_hand_written_commit_in_a_transaction_applies_at_once() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    assert_eq!(name_of(&cache, 1).await, "ada");
    assert_eq!(name_of(&cache, 2).await, "bob");
    let mut tx = cache.begin().await.unwrap();
    sqlx::raw_sql("UPDATE users SET name = 'one' WHERE id = 1; COMMIT").execute(&mut *tx).await.unwrap();
    assert_eq!(name_of(&cache, 1).await, "one", "committed by the caller's COMMIT");
    // The connection now runs statements on their own: each is visible when it returns.
    sqlx::query("UPDATE users SET name = 'two' WHERE id = 2").execute(&mut *tx).await.unwrap();
    assert_eq!(name_of(&cache, 2).await, "two");
    let _ = tx.rollback().await;
    assert_eq!(name_of(&cache, 2).await, "two");
}
