//! A read that starts after a write returned sees that write: point reads and lists.

use sqlacache_sqlx::Uncached;
use sqlacache_tests::{TestDb, User};

async fn active_list(cache: &sqlacache_sqlx::CachedPool) -> Vec<i64> {
    let users: Vec<User> = sqlacache_sqlx::query_as::<User>("SELECT * FROM users WHERE active = $1 ORDER BY id")
        .bind(true)
        .fetch_all(cache)
        .await
        .unwrap();
    users.into_iter().map(|u| u.id).collect()
}

#[tokio::test]
async fn get_sees_update_delete_and_insert() {
    let db = TestDb::new().await;
    let cache = db.cache().await;

    let first = cache.get::<User>(1_i64).await.unwrap().unwrap();
    assert_eq!(first.name, "ada");
    assert_eq!(cache.get::<User>(1_i64).await.unwrap().unwrap(), first);
    assert_eq!(cache.stats().hits, 1, "second get is a hit");

    sqlx::query("UPDATE users SET name = $1 WHERE id = $2").bind("ada2").bind(1_i64).execute(&cache).await.unwrap();
    assert_eq!(cache.get::<User>(1_i64).await.unwrap().unwrap().name, "ada2");

    sqlx::query("DELETE FROM users WHERE id = $1").bind(3_i64).execute(&cache).await.unwrap();
    assert_eq!(cache.get::<User>(3_i64).await.unwrap(), None);

    assert_eq!(cache.get::<User>(99_i64).await.unwrap(), None);
    let hits = cache.stats().hits;
    assert_eq!(cache.get::<User>(99_i64).await.unwrap(), None);
    assert_eq!(cache.stats().hits, hits + 1, "an absent row is cached too");
    sqlx::query("INSERT INTO users (id, name) VALUES ($1, $2)").bind(99_i64).bind("new").execute(&cache).await.unwrap();
    assert_eq!(cache.get::<User>(99_i64).await.unwrap().unwrap().name, "new");
}

#[tokio::test]
async fn lists_gain_and_lose_rows() {
    let db = TestDb::new().await;
    let cache = db.cache().await;

    assert_eq!(active_list(&cache).await, [1, 2]);
    assert_eq!(active_list(&cache).await, [1, 2]);
    assert_eq!(cache.stats().hits, 1);

    sqlx::query("INSERT INTO users (id, name, active) VALUES (4, 'dee', true)").execute(&cache).await.unwrap();
    assert_eq!(active_list(&cache).await, [1, 2, 4], "an inserted row joins the list");

    sqlx::query("UPDATE users SET active = true WHERE id = $1").bind(3_i64).execute(&cache).await.unwrap();
    assert_eq!(active_list(&cache).await, [1, 2, 3, 4], "an update moves a row into the list");

    sqlx::query("UPDATE users SET active = false WHERE id = $1").bind(1_i64).execute(&cache).await.unwrap();
    assert_eq!(active_list(&cache).await, [2, 3, 4], "an update moves a row out of the list");
}

#[tokio::test]
async fn count_and_exists_follow_writes() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    let count = || async {
        sqlacache_sqlx::query_scalar::<i64>("SELECT count(*) FROM users WHERE active").fetch_one(&cache).await.unwrap()
    };
    let exists = || async {
        sqlacache_sqlx::query_scalar::<bool>("SELECT EXISTS (SELECT 1 FROM users WHERE name = $1)")
            .bind("zed")
            .fetch_one(&cache)
            .await
            .unwrap()
    };

    assert_eq!((count().await, exists().await), (2, false));
    assert_eq!((count().await, exists().await), (2, false));
    assert_eq!(cache.stats().hits, 2);

    sqlx::query("INSERT INTO users (id, name) VALUES (5, 'zed')").execute(&cache).await.unwrap();
    assert_eq!((count().await, exists().await), (3, true));

    sqlx::query("UPDATE users SET active = false, name = 'zoe' WHERE id = 5").execute(&cache).await.unwrap();
    assert_eq!((count().await, exists().await), (2, false));
}

#[tokio::test]
async fn fetch_one_and_optional() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    let one: User = sqlacache_sqlx::query_as::<User>("SELECT * FROM users WHERE id = $1")
        .bind(1_i64)
        .fetch_one(&cache)
        .await
        .unwrap();
    assert_eq!(one.name, "ada");
    let none = sqlacache_sqlx::query_as::<User>("SELECT * FROM users WHERE id = $1")
        .bind(42_i64)
        .fetch_optional(&cache)
        .await
        .unwrap();
    assert_eq!(none, None);
    let err = sqlacache_sqlx::query_as::<User>("SELECT * FROM users WHERE id = $1")
        .bind(42_i64)
        .fetch_one(&cache)
        .await
        .unwrap_err();
    assert!(matches!(err, sqlx::Error::RowNotFound), "{err:?}");
    sqlx::query("UPDATE users SET name = 'ada3' WHERE id = 1").execute(&cache).await.unwrap();
    let one: User = sqlacache_sqlx::query_as::<User>("SELECT * FROM users WHERE id = $1")
        .bind(1_i64)
        .fetch_one(&cache)
        .await
        .unwrap();
    assert_eq!(one.name, "ada3");
}

#[tokio::test]
async fn composite_keys() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    use sqlacache_tests::Membership;
    assert_eq!(cache.get::<Membership>((1_i64, 2_i64)).await.unwrap().unwrap().role, "member");
    assert_eq!(cache.get::<Membership>((1_i64, 1_i64)).await.unwrap().unwrap().role, "owner");
    sqlx::query("UPDATE memberships SET role = 'admin' WHERE org_id = $1 AND user_id = $2")
        .bind(1_i64)
        .bind(2_i64)
        .execute(&cache)
        .await
        .unwrap();
    let hits = cache.stats().hits;
    assert_eq!(cache.get::<Membership>((1_i64, 2_i64)).await.unwrap().unwrap().role, "admin");
    assert_eq!(cache.get::<Membership>((1_i64, 1_i64)).await.unwrap().unwrap().role, "owner");
    assert_eq!(cache.stats().hits, hits + 1, "the other composite key stayed cached");
}

#[tokio::test]
async fn repeated_statements_are_analyzed_once() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    let round = || async {
        cache.get::<User>(1_i64).await.unwrap();
        sqlacache_sqlx::query_as::<User>("SELECT * FROM users WHERE active = $1")
            .bind(true)
            .fetch_all(&cache)
            .await
            .unwrap();
        sqlx::query("UPDATE users SET name = name WHERE id = $1").bind(2_i64).execute(&cache).await.unwrap();
    };
    round().await;
    let analyzed = cache.stats().statements_analyzed;
    assert_eq!(analyzed, 3);
    for _ in 0..50 {
        round().await;
    }
    let stats = cache.stats();
    assert_eq!(stats.statements_analyzed, analyzed, "hits and repeated writes do not parse SQL again");
    assert!(stats.hits >= 50);
}

/// A typed read plans its SQL once: its own query runs with the plan the read made, even when
/// no plan may be kept (once a hand-written transaction went through the pool, a new statement
/// is planned anew at each use).
#[tokio::test]
async fn a_read_plans_its_statement_once_even_when_no_plan_is_kept() {
    let db = TestDb::new().await;
    let cache = sqlacache_tests::builder(db.pool_with(1, db.options()).await).model::<User>().build().await.unwrap();
    sqlx::raw_sql("BEGIN").execute(&cache).await.unwrap();
    sqlx::raw_sql("ROLLBACK").execute(&cache).await.unwrap();
    let before = cache.stats().statements_analyzed;
    for n in 1..=3 {
        let users: Vec<User> =
            sqlacache_sqlx::query_as("SELECT * FROM users WHERE id = $1").bind(1_i64).fetch_all(&cache).await.unwrap();
        assert_eq!(users.len(), 1);
        assert_eq!(cache.stats().statements_analyzed, before + n, "read {n} planned its statement once");
    }
    assert_eq!(cache.stats().uncached(Uncached::Session), 3, "and counted why it was not cached");
}
