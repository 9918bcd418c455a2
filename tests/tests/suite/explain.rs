//! "Why is this not cached?": `explain` says, without running a read, what the cache does with
//! it, with the same reason `stats()` counts when it runs; `statements()` says what each
//! statement did, in bounded memory.

use sqlacache_sqlx::{Ops, Uncached};
use sqlacache_tests::{TestDb, User};
use std::time::Duration;

/// Reads of every kind, cached or not, each run as `query_as::<User>` would run it.
const READS: &[&str] = &[
    "SELECT * FROM users ORDER BY id",
    "SELECT * FROM users WHERE id = $1",
    "SELECT u.* FROM users u JOIN orders o ON o.user_id = u.id WHERE o.user_id = $1",
    "SELECT * FROM users FOR UPDATE",
    "SELECT * FROM users WHERE random() < 2",
    "SELECT * FROM users WHERE now() > '2000-01-01'",
    "SELECT * FROM users WHERE CURRENT_DATE > '2000-01-01'",
    "SELECT * FROM users TABLESAMPLE SYSTEM (100)",
    "SELECT * FROM user_view",
    "SELECT * FROM no_such_table",
    "SELECT * FROM users WHERE id = 1 FOR NO KEY UPDATE",
    "SELECT * FROM audit_log_users",
    "UPDATE users SET name = name WHERE id = $1 RETURNING *",
    "SELECT * FROM users; SELECT * FROM users",
];

#[tokio::test]
async fn explain_gives_the_reason_a_read_counts_without_running_it() {
    let db = TestDb::with_schema(&format!(
        "{} CREATE VIEW user_view AS SELECT * FROM users; \
         CREATE TABLE audit_log_users (id bigint PRIMARY KEY, name text NOT NULL, active boolean NOT NULL);",
        sqlacache_tests::SCHEMA
    ))
    .await;
    let cache = db.builder().table("audit_log_users", Ops::NONE, Duration::from_secs(60)).build().await.unwrap();
    for &sql in READS {
        let explained = cache.explain(sql).await.unwrap();
        assert_eq!(explained.sql, sql);
        let before = cache.stats();
        let read = sqlacache_sqlx::query_as::<User>(sql);
        let read = if sql.contains("$1") { read.bind(1_i64) } else { read };
        // Some are refused by PostgreSQL or the row type: the cache decides before that.
        let _ = read.fetch_all(&cache).await;
        let after = cache.stats();
        let counted = sqlacache_sqlx::Uncached::ALL.into_iter().find(|&r| after.uncached(r) > before.uncached(r));
        assert_eq!(explained.uncached, counted, "{sql}: {explained}");
        assert_eq!(explained.is_cached(), after.misses > before.misses, "{sql}: {explained}");
    }
}

#[tokio::test]
async fn explain_names_the_operation_tables_dependencies_and_ttl() {
    let db = TestDb::with_schema(&format!("{} CREATE INDEX ON orders (user_id);", sqlacache_tests::SCHEMA)).await;
    let cache = db.builder().table("orders", Ops::ALL, Duration::from_secs(42)).build().await.unwrap();
    let schema = &db.schema;

    let pinned = cache.explain("SELECT * FROM orders WHERE user_id = $1 AND total > 3").await.unwrap();
    assert_eq!(pinned.uncached, None);
    assert_eq!(pinned.operation, Some(Ops::FETCH));
    assert_eq!(pinned.tables, [format!("{schema}.orders")]);
    assert_eq!(pinned.ttl, Some(Duration::from_secs(42)));
    assert_eq!(pinned.depends_on.len(), 1, "{pinned}");
    let expected = format!("{schema}.orders.user_id in ($1): ");
    assert!(pinned.depends_on[0].starts_with(&expected), "{pinned}");

    let joined = cache
        .explain(
            "SELECT count(*) FROM users u JOIN orders o ON o.user_id = u.id WHERE u.name = 'ada' OR o.total IN (1, 2)",
        )
        .await
        .unwrap();
    assert_eq!(joined.operation, Some(Ops::COUNT));
    assert_eq!(joined.ttl, Some(Duration::from_secs(42)), "the shortest TTL of its tables");
    assert_eq!(joined.tables.len(), 2);
    assert!(joined.depends_on.iter().all(|d| d.ends_with(": any write")), "an OR pins nothing: {joined}");

    let literal = cache.explain("SELECT count(*) FROM orders WHERE user_id IN (1, 2)").await.unwrap();
    assert_eq!(literal.operation, Some(Ops::COUNT));
    assert!(literal.depends_on[0].contains("orders.user_id in (1, 2): "), "{literal}");
    let null = cache.explain("SELECT * FROM orders WHERE user_id IS NULL").await.unwrap();
    assert!(null.depends_on[0].contains("orders.user_id in (NULL): "), "{null}");
    let text = cache.explain("SELECT * FROM users WHERE name = 'o''hara'").await.unwrap();
    assert!(text.depends_on.iter().all(|d| d.ends_with(": any write")), "name is not tracked: {text}");
    let exists = cache.explain("SELECT EXISTS (SELECT 1 FROM orders WHERE user_id = 1)").await.unwrap();
    assert_eq!(exists.operation, Some(Ops::EXISTS));
    let shown = exists.to_string();
    assert!(shown.starts_with("cached as {exists} for 42s; reads"), "{shown}");
    assert!(shown.ends_with("orders: any write"), "a condition inside EXISTS pins nothing: {shown}");

    let volatile = cache.explain("SELECT * FROM orders WHERE random() < 2").await.unwrap();
    assert_eq!((volatile.uncached, volatile.ttl), (Some(Uncached::Volatile), None));
    assert!(volatile.to_string().starts_with("not cached: Volatile"), "{volatile}");
}

#[tokio::test]
async fn explain_never_runs_the_read() {
    let db = TestDb::with_schema(&format!(
        "{} CREATE TABLE calls (n int); \
         CREATE FUNCTION noted() RETURNS int LANGUAGE sql AS 'INSERT INTO calls VALUES (1) RETURNING 1';",
        sqlacache_tests::SCHEMA
    ))
    .await;
    let cache = db.cache().await;
    let explained = cache.explain("SELECT * FROM users WHERE id = noted()").await.unwrap();
    assert_eq!(explained.uncached, Some(Uncached::Volatile));
    let calls: i64 = sqlx::query_scalar("SELECT count(*) FROM calls").fetch_one(&db.pool).await.unwrap();
    assert_eq!(calls, 0);
    assert_eq!(cache.stats().bypassed, 0, "not counted as a read");
    // PostgreSQL's own error for a statement it refuses.
    let error = cache.explain("SELECT * FROM users WHERE").await.unwrap();
    assert_eq!(error.uncached, Some(Uncached::Unparsable));
}

#[tokio::test]
async fn statements_say_what_each_read_did_and_survive_a_schema_change() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    let list = "SELECT * FROM users ORDER BY id";
    let volatile = "SELECT * FROM users WHERE random() < 2";
    for _ in 0..3 {
        sqlacache_sqlx::query_as::<User>(list).fetch_all(&cache).await.unwrap();
    }
    for _ in 0..5 {
        sqlacache_sqlx::query_as::<User>(volatile).fetch_all(&cache).await.unwrap();
    }
    let plain = "SELECT * FROM users WHERE id = 2";
    sqlx::query_as::<_, User>(plain).fetch_all(&cache).await.unwrap();
    cache.get::<User>(1).await.unwrap();
    cache.get::<User>(1).await.unwrap();

    let stats = cache.statements();
    let find = |sql: &str| stats.iter().find(|s| s.sql == sql).unwrap_or_else(|| panic!("{sql} in {stats:?}")).clone();
    assert_eq!(stats[0].sql, volatile, "busiest first");
    let v = find(volatile);
    assert_eq!((v.hits, v.misses, v.bypassed, v.uncached(Uncached::Volatile)), (0, 0, 5, 5));
    assert_eq!(v.reasons(), [(Uncached::Volatile, 5)]);
    let l = find(list);
    assert_eq!((l.hits, l.misses, l.bypassed), (2, 1, 0));
    assert!(l.fill_time > Duration::ZERO && l.time_saved() == l.fill_time * 2, "{l:?}");
    assert_eq!(find(plain).uncached(Uncached::PlainSqlx), 1);
    let get =
        stats.iter().find(|s| s.sql.starts_with("SELECT * FROM users WHERE \"id\" = $1")).expect("get's statement");
    assert_eq!((get.hits, get.misses), (1, 1));
    assert!(stats.iter().all(|s| !s.sql.starts_with("UPDATE")), "writes are left out");

    // A schema change plans every statement again; the counts carry over.
    // (An index changes no data: the entry stays.)
    sqlx::query("CREATE INDEX ON users (name)").execute(&cache).await.unwrap();
    let analyzed = cache.stats().statements_analyzed;
    sqlacache_sqlx::query_as::<User>(list).fetch_all(&cache).await.unwrap();
    sqlacache_sqlx::query_as::<User>(list).fetch_all(&cache).await.unwrap();
    assert_eq!(cache.stats().statements_analyzed, analyzed + 1, "planned again once");
    let l = cache.statements().into_iter().find(|s| s.sql == list).unwrap();
    assert_eq!((l.hits, l.misses), (4, 1), "{l:?}");
}

#[tokio::test]
async fn statement_statistics_are_bounded() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    // Not cached (volatile), so not probed: thousands of distinct statements stay cheap.
    for i in 0..4_500 {
        let sql = format!("SELECT * FROM users WHERE random() < {i}");
        sqlacache_sqlx::query_as::<User>(sqlx::AssertSqlSafe(sql)).fetch_all(&cache).await.unwrap();
    }
    let stats = cache.statements();
    assert!((3_000..=4_096).contains(&stats.len()), "{} statements kept", stats.len());
    assert_eq!(cache.stats().bypassed, 4_500);
}
