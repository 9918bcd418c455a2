//! Writes in a transaction invalidate when COMMIT returns, and never otherwise.

use sqlacache_tests::{TestDb, User};
use sqlx::AssertSqlSafe;

async fn name_of(cache: &sqlacache_sqlx::CachedPool, id: i64) -> Option<String> {
    cache.get::<User>(id).await.unwrap().map(|u| u.name)
}

#[tokio::test]
async fn commit_invalidates_after_it_returns() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    assert_eq!(name_of(&cache, 1).await.as_deref(), Some("ada"));

    let mut tx = cache.begin().await.unwrap();
    sqlx::query("UPDATE users SET name = 'tx' WHERE id = $1").bind(1_i64).execute(&mut *tx).await.unwrap();
    sqlx::query("DELETE FROM users WHERE id = $1").bind(2_i64).execute(&mut *tx).await.unwrap();

    let hits = cache.stats().hits;
    assert_eq!(name_of(&cache, 1).await.as_deref(), Some("ada"), "uncommitted: others still see the old row");
    assert_eq!(cache.stats().hits, hits + 1, "and nothing was invalidated yet");

    tx.commit().await.unwrap();
    assert_eq!(name_of(&cache, 1).await.as_deref(), Some("tx"));
    assert_eq!(name_of(&cache, 2).await, None);
}

#[tokio::test]
async fn reads_inside_see_own_writes_and_never_fill() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    let mut tx = cache.begin().await.unwrap();
    sqlx::query("UPDATE users SET name = 'mine' WHERE id = 1").execute(&mut *tx).await.unwrap();
    let seen: User = sqlx::query_as("SELECT * FROM users WHERE id = $1").bind(1_i64).fetch_one(&mut *tx).await.unwrap();
    assert_eq!(seen.name, "mine");
    let before = cache.stats();
    tx.rollback().await.unwrap();
    assert_eq!((before.hits, before.misses), (0, 0), "reads in a transaction do not touch the cache");
    assert_eq!(name_of(&cache, 1).await.as_deref(), Some("ada"));
}

#[tokio::test]
async fn rollback_and_drop_invalidate_nothing() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    name_of(&cache, 1).await;

    let mut tx = cache.begin().await.unwrap();
    sqlx::query("UPDATE users SET name = 'rolled' WHERE id = 1").execute(&mut *tx).await.unwrap();
    tx.rollback().await.unwrap();
    let hits = cache.stats().hits;
    assert_eq!(name_of(&cache, 1).await.as_deref(), Some("ada"));
    assert_eq!(cache.stats().hits, hits + 1, "rollback left the entry cached");

    let mut tx = cache.begin().await.unwrap();
    sqlx::query("UPDATE users SET name = 'dropped' WHERE id = 1").execute(&mut *tx).await.unwrap();
    sqlx::raw_sql("SELECT 1").execute(&mut *tx).await.unwrap();
    drop(tx);
    let before = cache.stats();
    assert_eq!(name_of(&cache, 1).await.as_deref(), Some("ada"));
    assert_eq!(cache.stats().hits, before.hits + 1, "drop left the entry cached");
    assert_eq!(before.invalidations, 0);
}

#[tokio::test]
async fn unreadable_write_in_a_transaction_invalidates_everything_on_commit() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    name_of(&cache, 1).await;
    let mut tx = cache.begin().await.unwrap();
    sqlx::raw_sql("DO $$ BEGIN UPDATE users SET name = 'do' WHERE id = 1; END $$").execute(&mut *tx).await.unwrap();
    // The library cannot read it, so it may have ended the transaction: invalidated at once,
    // and again at the commit.
    assert_eq!(cache.stats().full_invalidations, 1);
    // A later write may now commit on its own, or only at the commit: both are invalidated.
    sqlx::query("UPDATE users SET name = 'later' WHERE id = 2").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(cache.stats().full_invalidations, 2);
    assert_eq!(name_of(&cache, 1).await.as_deref(), Some("do"));
    assert_eq!(name_of(&cache, 2).await.as_deref(), Some("later"));
}

/// `COMMIT AND CHAIN` commits and goes on in a new transaction: what was written before it is
/// invalidated at once, what is written after it only at the real end (a read in between must
/// not cache the old rows for good).
#[tokio::test]
async fn commit_and_chain_invalidates_each_part_when_it_commits() {
    for chain in ["COMMIT AND CHAIN", "COMMIT WORK AND CHAIN", "ROLLBACK AND CHAIN"] {
        let db = TestDb::new().await;
        let cache = db.cache().await;
        name_of(&cache, 1).await;
        name_of(&cache, 2).await;
        let mut tx = cache.begin().await.unwrap();
        sqlx::query("UPDATE users SET name = 'first' WHERE id = 1").execute(&mut *tx).await.unwrap();
        sqlx::raw_sql(AssertSqlSafe(chain)).execute(&mut *tx).await.unwrap();
        let first = if chain.starts_with("COMMIT") { "first" } else { "ada" };
        assert_eq!(name_of(&cache, 1).await.as_deref(), Some(first), "{chain}: the first part");
        sqlx::query("UPDATE users SET name = 'second' WHERE id = 2").execute(&mut *tx).await.unwrap();
        // Not committed yet: a read here sees (and may cache) the old row.
        assert_eq!(name_of(&cache, 2).await.as_deref(), Some("bob"), "{chain}: not committed yet");
        tx.commit().await.unwrap();
        assert_eq!(name_of(&cache, 2).await.as_deref(), Some("second"), "{chain}: stale after the real commit");
        assert_eq!(name_of(&cache, 1).await.as_deref(), Some(first), "{chain}");
    }
}

/// Statements that look like transaction control but do not end the transaction (savepoints,
/// a procedure call) must not apply its invalidations before `COMMIT`: a read in between would
/// cache the old row for good.
#[tokio::test]
async fn savepoints_and_calls_inside_a_transaction_wait_for_commit() {
    for statement in ["SAVEPOINT a; ROLLBACK TO SAVEPOINT a", "SAVEPOINT a; RELEASE SAVEPOINT a", "CALL nothing()"] {
        let db = TestDb::new().await;
        sqlx::raw_sql("CREATE PROCEDURE nothing() LANGUAGE sql AS $$ SELECT 1 $$").execute(&db.pool).await.unwrap();
        let cache = db.cache().await;
        let mut tx = cache.begin().await.unwrap();
        sqlx::query("UPDATE users SET name = 'new' WHERE id = 1").execute(&mut *tx).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(&mut *tx).await.unwrap();
        let before = cache.get::<User>(1_i64).await.unwrap().unwrap().name;
        assert_eq!(before, "ada", "{statement}: not committed yet");
        tx.commit().await.unwrap();
        let after = cache.get::<User>(1_i64).await.unwrap().unwrap().name;
        assert_eq!(after, "new", "{statement}: stale after the commit");
    }
}
