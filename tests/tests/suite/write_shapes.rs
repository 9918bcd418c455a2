//! Writes of every shape invalidate what they change, and precise ones only that.

use sqlacache_sqlx::CachedPool;
use sqlacache_tests::{Order, TestDb, User};
use sqlx::PgPool;

/// Reads everything the tests look at through the cache, so it is all cached.
async fn read_all(cache: &CachedPool) {
    for id in 1..=4_i64 {
        cache.get::<User>(id).await.unwrap();
    }
    sqlacache_sqlx::query_as::<User>("SELECT * FROM users WHERE active ORDER BY id").fetch_all(cache).await.unwrap();
    sqlacache_sqlx::query_scalar::<i64>("SELECT count(*) FROM users").fetch_one(cache).await.unwrap();
    sqlacache_sqlx::query_as::<Order>("SELECT * FROM orders ORDER BY id").fetch_all(cache).await.unwrap();
}

/// Every cached read equals the same read on the raw pool.
async fn assert_fresh(cache: &CachedPool, pool: &PgPool, case: &str) {
    for id in 1..=4_i64 {
        let truth: Option<User> =
            sqlx::query_as("SELECT * FROM users WHERE id = $1").bind(id).fetch_optional(pool).await.unwrap();
        assert_eq!(cache.get::<User>(id).await.unwrap(), truth, "{case}: get({id}) is stale");
    }
    let sql = "SELECT * FROM users WHERE active ORDER BY id";
    let truth: Vec<User> = sqlx::query_as(sql).fetch_all(pool).await.unwrap();
    assert_eq!(sqlacache_sqlx::query_as::<User>(sql).fetch_all(cache).await.unwrap(), truth, "{case}: list is stale");
    let truth: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(pool).await.unwrap();
    let cached = sqlacache_sqlx::query_scalar::<i64>("SELECT count(*) FROM users").fetch_one(cache).await.unwrap();
    assert_eq!(cached, truth, "{case}: count is stale");
    let sql = "SELECT * FROM orders ORDER BY id";
    let truth: Vec<Order> = sqlx::query_as(sql).fetch_all(pool).await.unwrap();
    assert_eq!(
        sqlacache_sqlx::query_as::<Order>(sql).fetch_all(cache).await.unwrap(),
        truth,
        "{case}: orders are stale"
    );
}

async fn assert_hit(cache: &CachedPool, id: i64, case: &str) {
    let before = cache.stats().hits;
    cache.get::<User>(id).await.unwrap();
    assert_eq!(cache.stats().hits, before + 1, "{case}: get({id}) was not touched and should still be a hit");
}

/// Runs `write` on a fresh, fully cached schema; then checks freshness and, when given, that a
/// point read of an untouched row is still a hit.
/// Runs one write statement through the cache.
async fn exec(cache: &CachedPool, sql: &'static str) {
    sqlx::query(sql).execute(cache).await.unwrap();
}

async fn case<F, Fut>(name: &str, untouched: Option<i64>, write: F)
where
    F: FnOnce(CachedPool) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let db = TestDb::new().await;
    let cache = db.cache().await;
    read_all(&cache).await;
    read_all(&cache).await;
    write(cache.clone()).await;
    if let Some(id) = untouched {
        assert_hit(&cache, id, name).await;
    }
    assert_fresh(&cache, &db.pool, name).await;
}

#[tokio::test]
async fn pk_in_list() {
    case("IN", Some(3), |c| async move {
        exec(&c, "UPDATE users SET name = 'x' WHERE id IN (1, 2)").await;
    })
    .await;
}

#[tokio::test]
async fn pk_any_array() {
    case("ANY", Some(2), |c| async move {
        sqlx::query("UPDATE users SET name = 'x' WHERE id = ANY($1)").bind(vec![1_i64, 3]).execute(&c).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn bulk_update_by_other_column() {
    case("bulk", Some(3), |c| async move {
        let done = sqlx::query("UPDATE users SET name = name || '!' WHERE active").execute(&c).await.unwrap();
        assert_eq!(done.rows_affected(), 2, "rows_affected is unchanged by the cache");
    })
    .await;
}

#[tokio::test]
async fn bulk_delete_by_other_column() {
    case("bulk delete", Some(1), |c| async move {
        exec(&c, "DELETE FROM users WHERE NOT active").await;
    })
    .await;
}

#[tokio::test]
async fn upsert_do_update() {
    case("upsert", Some(2), |c| async move {
        sqlx::query("INSERT INTO users (id, name) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET name = excluded.name")
            .bind(1_i64)
            .bind("upserted")
            .execute(&c)
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn upsert_inserting_a_cached_absent_row() {
    case("upsert insert", Some(1), |c| async move {
        exec(&c, "INSERT INTO users (id, name) VALUES (4, 'four') ON CONFLICT (id) DO NOTHING").await;
    })
    .await;
}

#[tokio::test]
async fn insert_select() {
    case("insert select", Some(1), |c| async move {
        exec(&c, "INSERT INTO users (id, name, active) SELECT id + 1, name, false FROM users WHERE id = 3").await;
    })
    .await;
}

#[tokio::test]
async fn cte_write() {
    case("cte", None, |c| async move {
        let n: i64 =
            sqlx::query_scalar("WITH d AS (DELETE FROM users WHERE id = $1 RETURNING id) SELECT count(*) FROM d")
                .bind(2_i64)
                .fetch_one(&c)
                .await
                .unwrap();
        assert_eq!(n, 1);
    })
    .await;
}

#[tokio::test]
async fn multi_statement_raw_sql() {
    case("raw multi", None, |c| async move {
        sqlx::raw_sql("UPDATE users SET name = 'm' WHERE id = 1; DELETE FROM users WHERE id = 3; INSERT INTO users VALUES (4, 'd', true)")
            .execute(&c)
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn single_statement_raw_sql_is_precise() {
    case("raw single", Some(2), |c| async move {
        sqlx::raw_sql("UPDATE users SET active = NOT active WHERE id = 3; -- flip").execute(&c).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn truncate_cascade() {
    case("truncate", None, |c| async move {
        exec(&c, "TRUNCATE users CASCADE").await;
    })
    .await;
}

#[tokio::test]
async fn returning_through_fetch() {
    case("returning *", Some(2), |c| async move {
        let rows: Vec<User> = sqlx::query_as("UPDATE users SET name = 'r' WHERE id = $1 RETURNING *")
            .bind(1_i64)
            .fetch_all(&c)
            .await
            .unwrap();
        assert_eq!(rows, [User { id: 1, name: "r".into(), active: true }], "RETURNING rows reach the caller unchanged");
    })
    .await;
    case("returning list", Some(1), |c| async move {
        let (id, name): (i64, String) = sqlx::query_as("DELETE FROM users WHERE id = $1 RETURNING id, name")
            .bind(2_i64)
            .fetch_one(&c)
            .await
            .unwrap();
        assert_eq!((id, name.as_str()), (2, "bob"));
    })
    .await;
    case("returning without key", None, |c| async move {
        let name: String =
            sqlx::query_scalar("UPDATE users SET name = 'n' WHERE id = 1 RETURNING name").fetch_one(&c).await.unwrap();
        assert_eq!(name, "n");
    })
    .await;
}

#[tokio::test]
async fn fetch_on_a_write_without_returning_yields_no_rows() {
    case("fetch no returning", Some(2), |c| async move {
        let rows = sqlx::query("UPDATE users SET name = 'q' WHERE id = 1").fetch_all(&c).await.unwrap();
        assert!(rows.is_empty(), "the library's own RETURNING never reaches the caller");
        let row = sqlx::query("DELETE FROM users WHERE id = 3").fetch_optional(&c).await.unwrap();
        assert!(row.is_none());
    })
    .await;
}

#[tokio::test]
async fn update_from_with_alias() {
    case("update from", Some(1), |c| async move {
        exec(&c, "UPDATE users AS u SET name = 'from' FROM orders o WHERE o.user_id = u.id AND o.total = 70").await;
    })
    .await;
}

#[tokio::test]
async fn update_changing_the_primary_key() {
    case("pk change", None, |c| async move {
        exec(&c, "UPDATE users SET id = 4 WHERE id = 3").await;
    })
    .await;
}

#[tokio::test]
async fn merge() {
    case("merge", None, |c| async move {
        sqlx::query(
            "MERGE INTO users u USING (VALUES (1::bigint, 'mm')) AS s(id, name) ON u.id = s.id \
             WHEN MATCHED THEN UPDATE SET name = s.name WHEN NOT MATCHED THEN INSERT (id, name) VALUES (s.id, s.name)",
        )
        .execute(&c)
        .await
        .unwrap();
    })
    .await;
}

#[tokio::test]
async fn child_writes_only_touch_the_child() {
    case("child", Some(1), |c| async move {
        exec(&c, "UPDATE orders SET total = total + 1 WHERE user_id = 1").await;
    })
    .await;
}
