//! Reads depend on every table they read, and writes reach tables changed by foreign-key actions.

use sqlacache_tests::{Order, TestDb, User};

#[tokio::test]
async fn joins_depend_on_both_tables() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    let sql = "SELECT DISTINCT u.* FROM users u JOIN orders o ON o.user_id = u.id WHERE o.total >= $1 ORDER BY u.id";
    let read = || async { sqlacache_sqlx::query_as::<User>(sql).bind(70_i32).fetch_all(&cache).await.unwrap() };
    assert_eq!(read().await.iter().map(|u| u.id).collect::<Vec<_>>(), [1, 2]);
    read().await;
    assert_eq!(cache.stats().hits, 1);

    sqlx::query("UPDATE orders SET total = 1 WHERE id = 12").execute(&cache).await.unwrap();
    assert_eq!(read().await.iter().map(|u| u.id).collect::<Vec<_>>(), [1], "a write to the joined table");
    sqlx::query("UPDATE users SET name = 'joined' WHERE id = 1").execute(&cache).await.unwrap();
    assert_eq!(read().await[0].name, "joined", "a write to the selected table");
}

#[tokio::test]
async fn subqueries_and_ctes_depend_on_their_tables() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    let sub = "SELECT * FROM users WHERE id IN (SELECT user_id FROM orders WHERE total > 60) ORDER BY id";
    let cte = "WITH big AS (SELECT user_id FROM orders WHERE total > 60) SELECT count(*) FROM users WHERE id IN (SELECT user_id FROM big)";
    assert_eq!(sqlacache_sqlx::query_as::<User>(sub).fetch_all(&cache).await.unwrap().len(), 2);
    assert_eq!(sqlacache_sqlx::query_scalar::<i64>(cte).fetch_one(&cache).await.unwrap(), 2);
    sqlx::query("INSERT INTO orders VALUES (13, 3, 500)").execute(&cache).await.unwrap();
    assert_eq!(sqlacache_sqlx::query_as::<User>(sub).fetch_all(&cache).await.unwrap().len(), 3);
    assert_eq!(sqlacache_sqlx::query_scalar::<i64>(cte).fetch_one(&cache).await.unwrap(), 3);
}

#[tokio::test]
async fn on_delete_cascade_and_set_null_reach_children() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    let orders = "SELECT * FROM orders ORDER BY id";
    let notes = "SELECT user_id FROM notes ORDER BY id";
    assert_eq!(sqlacache_sqlx::query_as::<Order>(orders).fetch_all(&cache).await.unwrap().len(), 3);
    assert_eq!(cache.get::<Order>(10_i64).await.unwrap().map(|o| o.total), Some(100));
    let before: Vec<Option<i64>> = sqlacache_sqlx::query_scalar(notes).fetch_all(&cache).await.unwrap();
    assert_eq!(before, [Some(1), Some(2)]);

    sqlx::query("DELETE FROM users WHERE id = $1").bind(1_i64).execute(&cache).await.unwrap();

    assert_eq!(sqlacache_sqlx::query_as::<Order>(orders).fetch_all(&cache).await.unwrap().len(), 1, "cascaded delete");
    assert_eq!(cache.get::<Order>(10_i64).await.unwrap(), None, "point read of a cascaded row");
    let after: Vec<Option<i64>> = sqlacache_sqlx::query_scalar(notes).fetch_all(&cache).await.unwrap();
    assert_eq!(after, [None, Some(2)], "ON DELETE SET NULL");
}

#[tokio::test]
async fn cascades_are_transitive_and_found_for_tables_created_later() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    // Created after the cache was built, through the cache: the catalog is read again.
    sqlx::raw_sql(
        "CREATE TABLE line_items (id bigint PRIMARY KEY, order_id bigint REFERENCES orders(id) ON DELETE CASCADE); \
         INSERT INTO line_items VALUES (100, 10), (101, 12);",
    )
    .execute(&cache)
    .await
    .unwrap();
    let count = || async {
        sqlacache_sqlx::query_scalar::<i64>("SELECT count(*) FROM line_items").fetch_one(&cache).await.unwrap()
    };
    assert_eq!(count().await, 2);
    sqlx::query("DELETE FROM users WHERE id = 1").execute(&cache).await.unwrap();
    assert_eq!(count().await, 1, "users -> orders -> line_items");
}

#[tokio::test]
async fn schema_qualified_and_unqualified_names_are_one_table() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    let qualified = format!("SELECT count(*) FROM {}.users", db.schema);
    let read = || async {
        sqlacache_sqlx::query_scalar::<i64>(sqlx::AssertSqlSafe(qualified.clone())).fetch_one(&cache).await.unwrap()
    };
    assert_eq!(read().await, 3);
    sqlx::query("DELETE FROM users WHERE id = 3").execute(&cache).await.unwrap();
    assert_eq!(read().await, 2);
    sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {}.users WHERE id = 2", db.schema)))
        .execute(&cache)
        .await
        .unwrap();
    assert_eq!(sqlacache_sqlx::query_scalar::<i64>("SELECT count(*) FROM users").fetch_one(&cache).await.unwrap(), 1);
}
