//! `sqlacache_sqlx::query_as!` caches compile-time checked queries; sqlx's own macros write
//! through the cache and invalidate.

use sqlacache_tests::{TestDb, User};

#[tokio::test]
async fn query_as_macro_is_cached_and_invalidated() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    let mut evaluated = 0;
    let mut id = || {
        evaluated += 1;
        1_i64
    };
    let user = sqlacache_sqlx::query_as!(User, "SELECT id, name, active FROM users WHERE id = $1", id())
        .fetch_optional(&cache)
        .await
        .unwrap();
    assert_eq!(user.map(|u| u.name).as_deref(), Some("ada"));
    let again = sqlacache_sqlx::query_as!(User, "SELECT id, name, active FROM users WHERE id = $1", id())
        .fetch_one(&cache)
        .await
        .unwrap();
    assert_eq!(again.name, "ada");
    assert_eq!(evaluated, 2, "each argument is evaluated once per call");
    assert_eq!(cache.stats().hits, 1);

    let done = sqlx::query!("UPDATE users SET name = $1 WHERE id = $2", "macro", 1_i64).execute(&cache).await.unwrap();
    assert_eq!(done.rows_affected(), 1);
    let fresh = sqlacache_sqlx::query_as!(User, "SELECT id, name, active FROM users WHERE id = $1", 1_i64)
        .fetch_one(&cache)
        .await
        .unwrap();
    assert_eq!(fresh.name, "macro");

    let all = || sqlacache_sqlx::query_as!(User, "SELECT id, name, active FROM users WHERE active ORDER BY id");
    assert_eq!(all().fetch_all(&cache).await.unwrap().len(), 2);
    let flipped =
        sqlx::query_as!(User, "UPDATE users SET active = false WHERE id = $1 RETURNING id, name, active", 2_i64)
            .fetch_one(&cache)
            .await
            .unwrap();
    assert!(!flipped.active);
    assert_eq!(
        all().fetch_all(&cache).await.unwrap().len(),
        1,
        "a query_as! write with RETURNING invalidated the list"
    );
}
