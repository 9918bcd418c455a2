//! Rows never cross roles, tenants or sessions: a statement that changes the session of a pool
//! connection stops the pool's caching, and row-level security is never cached.

use sqlacache_sqlx::{CachedPool, Uncached};
use sqlacache_tests::{TestDb, User};
use sqlx::AssertSqlSafe;

async fn name_of(cache: &CachedPool, id: i64) -> String {
    cache.get::<User>(id).await.unwrap().unwrap().name
}

#[tokio::test]
async fn hand_written_transactions_through_the_pool_are_never_cached() {
    let db = TestDb::new().await;
    // One connection: the hand-written transaction is the connection every read runs on.
    let pool = db.pool_with(1, db.options()).await;
    let cache = CachedPool::builder(pool).model::<User>().build().await.unwrap();
    assert_eq!(name_of(&cache, 1).await, "ada");

    sqlx::raw_sql("BEGIN").execute(&cache).await.unwrap();
    sqlx::query("UPDATE users SET name = 'uncommitted' WHERE id = 1").execute(&cache).await.unwrap();
    assert_eq!(name_of(&cache, 1).await, "uncommitted", "inside the transaction, as the raw pool reads it");
    sqlx::raw_sql("ROLLBACK").execute(&cache).await.unwrap();

    assert_eq!(name_of(&cache, 1).await, "ada", "the rolled-back value was never cached");
    assert!(cache.stats().uncached(Uncached::Session) >= 2);
}

#[tokio::test]
async fn session_settings_through_the_pool_stop_caching() {
    for statement in [
        "SET TIME ZONE 'Asia/Tokyo'",
        "SET timezone = 'Asia/Tokyo'",
        "SET SESSION statement_timeout = '31s'",
        "RESET ALL",
        "DISCARD ALL",
        "SELECT set_config('app.tenant', '2', false)",
        "BEGIN; SELECT 1",
    ] {
        let db = TestDb::new().await;
        let cache = db.cache().await;
        assert_eq!(name_of(&cache, 1).await, "ada");
        assert_eq!(name_of(&cache, 1).await, "ada");
        assert_eq!(cache.stats().hits, 1, "{statement}: cached before");

        sqlx::raw_sql(AssertSqlSafe(statement)).execute(&cache).await.unwrap();
        let before = cache.stats();
        let n: i64 = cache.query_scalar("SELECT count(*) FROM users").fetch_one().await.unwrap();
        assert_eq!(n, 3);
        name_of(&cache, 1).await;
        let after = cache.stats();
        assert_eq!(after.hits, before.hits, "{statement}: nothing served from the cache afterwards");
        assert_eq!(after.misses, before.misses, "{statement}: nothing filled afterwards");
        assert_eq!(after.uncached(Uncached::Session), before.uncached(Uncached::Session) + 2, "{statement}");
    }
}

#[tokio::test]
async fn a_setting_on_one_connection_never_answers_for_another() {
    let db = TestDb::with_schema(
        "CREATE TABLE events (id bigint PRIMARY KEY, at timestamptz NOT NULL); \
         INSERT INTO events VALUES (1, '2024-01-01 00:00:00+00');",
    )
    .await;
    let pool = db.pool_with(2, db.options().options([("timezone", "UTC")])).await;
    let cache = CachedPool::builder(pool.clone()).build().await.unwrap();
    let read = || cache.query_scalar::<String>("SELECT at::text FROM events WHERE id = 1").fetch_one();
    assert_eq!(read().await.unwrap(), "2024-01-01 00:00:00+00");

    sqlx::raw_sql("SET TIME ZONE 'Asia/Tokyo'").execute(&cache).await.unwrap();
    // Whichever connection each read lands on, it must read what that connection says.
    for _ in 0..20 {
        let (text, zone): (String, String) =
            sqlx::query_as("SELECT at::text, current_setting('TimeZone') FROM events WHERE id = 1")
                .fetch_one(&pool)
                .await
                .unwrap();
        let expected = if zone == "UTC" { "2024-01-01 00:00:00+00" } else { "2024-01-01 09:00:00+09" };
        assert_eq!(text, expected);
        let cached = read().await.unwrap();
        assert!(cached == "2024-01-01 00:00:00+00" || cached == "2024-01-01 09:00:00+09");
    }
    assert_eq!(cache.stats().hits, 0, "after the SET, no read is served from the cache");
}

#[tokio::test]
async fn supported_session_configuration_keeps_caching() {
    let db = TestDb::new().await;
    let options = db.options().options([("timezone", "Asia/Tokyo")]);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::raw_sql("SET statement_timeout = '30s'").execute(conn).await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .unwrap();
    let cache = CachedPool::builder(pool).model::<User>().build().await.unwrap();
    let mut tx = cache.begin().await.unwrap();
    sqlx::raw_sql("SET LOCAL search_path TO pg_catalog").execute(&mut *tx).await.unwrap();
    sqlx::raw_sql("SET LOCAL ROLE postgres").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    name_of(&cache, 1).await;
    name_of(&cache, 1).await;
    assert_eq!(cache.stats().hits, 1);
    assert_eq!(cache.stats().uncached(Uncached::Session), 0);
}

#[tokio::test]
async fn session_settings_inside_a_transaction_stop_caching() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    let mut tx = cache.begin().await.unwrap();
    // Session-level: it outlives the transaction on its connection.
    sqlx::raw_sql("SET TIME ZONE 'Asia/Tokyo'").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    name_of(&cache, 1).await;
    name_of(&cache, 1).await;
    assert_eq!(cache.stats().hits, 0);
    assert_eq!(cache.stats().uncached(Uncached::Session), 2);
}

#[tokio::test]
async fn a_failed_string_with_begin_stops_caching() {
    let db = TestDb::new().await;
    let pool = db.pool_with(1, db.options()).await;
    let cache = CachedPool::builder(pool).model::<User>().build().await.unwrap();
    let error = sqlx::raw_sql("BEGIN; UPDATE users SET name = 'half' WHERE id = 1; SELECT 1/0; COMMIT")
        .execute(&cache)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("division by zero"), "{error}");
    // Whatever state the connection is left in, a read answers as the raw pool would.
    let raw = sqlx::query_scalar::<_, String>("SELECT name FROM users WHERE id = 1").fetch_one(cache.inner()).await;
    let cached = cache.get::<User>(1_i64).await;
    match raw {
        Err(_) => assert!(cached.is_err(), "served from the cache while the raw pool errs"),
        Ok(name) => assert_eq!(cached.unwrap().unwrap().name, name),
    }
    assert!(cache.stats().uncached(Uncached::Session) >= 1);
    sqlx::raw_sql("ROLLBACK").execute(&cache).await.unwrap();
    assert_eq!(name_of(&cache, 1).await, "ada");
}

const TENANTS: &str = "
CREATE TABLE docs (id bigint PRIMARY KEY, tenant int NOT NULL, body text NOT NULL);
INSERT INTO docs VALUES (1, 1, 'one'), (2, 1, 'uno'), (3, 2, 'two');
ALTER TABLE docs ENABLE ROW LEVEL SECURITY;
CREATE POLICY by_tenant ON docs USING (tenant = current_setting('app.tenant', true)::int);
CREATE TABLE parts (id bigint, tenant int NOT NULL, PRIMARY KEY (id, tenant)) PARTITION BY LIST (tenant);
CREATE TABLE parts_1 PARTITION OF parts FOR VALUES IN (1);
CREATE TABLE parts_2 PARTITION OF parts FOR VALUES IN (2);
INSERT INTO parts VALUES (1, 1), (2, 2);
ALTER TABLE parts ENABLE ROW LEVEL SECURITY;
CREATE POLICY by_tenant ON parts USING (tenant = current_setting('app.tenant', true)::int);
";

#[tokio::test]
async fn tenant_policies_never_leak_rows_between_tenants() {
    let db = TestDb::with_schema(TENANTS).await;
    let (role, options) = db.role("tenant").await;
    let grant = format!("GRANT SELECT, INSERT, UPDATE ON docs, parts, parts_1, parts_2 TO {role}");
    sqlx::raw_sql(AssertSqlSafe(grant)).execute(&db.pool).await.unwrap();
    let pool = db.pool_with(1, options).await;
    let cache = CachedPool::builder(pool.clone()).build().await.unwrap();
    let bodies = || cache.query_scalar::<String>("SELECT body FROM docs ORDER BY id").fetch_all();
    let raw = || sqlx::query_scalar::<_, String>("SELECT body FROM docs ORDER BY id").fetch_all(&pool);

    for (tenant, how) in [(1, "SET"), (2, "SET"), (1, "set_config"), (2, "set_config")] {
        let statement = match how {
            "SET" => format!("SET app.tenant = '{tenant}'"),
            _ => format!("SELECT set_config('app.tenant', '{tenant}', false)"),
        };
        sqlx::raw_sql(AssertSqlSafe(statement)).execute(&cache).await.unwrap();
        for _ in 0..2 {
            assert_eq!(bodies().await.unwrap(), raw().await.unwrap(), "tenant {tenant} by {how}");
        }
    }
    assert_eq!(cache.stats().hits, 0);
}

#[tokio::test]
async fn row_level_security_tables_are_not_cached() {
    let db = TestDb::with_schema(TENANTS).await;
    let cache = CachedPool::builder(db.pool.clone()).build().await.unwrap();
    for sql in [
        "SELECT count(*) FROM docs",
        "SELECT count(*) FROM parts",
        // A partition's own reads skip the parent's policy, but the family shares one rule.
        "SELECT count(*) FROM parts_1",
    ] {
        for _ in 0..2 {
            cache.query_scalar::<i64>(sql).fetch_one().await.unwrap();
        }
    }
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses), (0, 0));
    assert_eq!(stats.uncached(Uncached::RowSecurity), 6);
}

#[tokio::test]
async fn writes_the_raw_pool_accepts_are_never_refused() {
    let db = TestDb::with_schema(&format!(
        "{TENANTS}
         CREATE TABLE inbox (id bigint PRIMARY KEY, body text NOT NULL);
         CREATE TABLE ruled (id bigint PRIMARY KEY, body text NOT NULL);
         CREATE TABLE ruled_log (body text NOT NULL);
         CREATE RULE instead AS ON INSERT TO ruled DO INSTEAD INSERT INTO ruled_log VALUES (NEW.body);"
    ))
    .await;
    let (role, options) = db.role("writer").await;
    let grant = format!(
        "GRANT INSERT, UPDATE ON inbox TO {role}; GRANT SELECT, INSERT ON docs, ruled, ruled_log TO {role}; \
         CREATE POLICY reads_none ON docs FOR SELECT USING (false); CREATE POLICY writes_all ON docs FOR INSERT WITH CHECK (true);"
    );
    sqlx::raw_sql(AssertSqlSafe(grant)).execute(&db.pool).await.unwrap();
    let pool = db.pool_with(2, options).await;
    let cache = CachedPool::builder(pool.clone()).build().await.unwrap();
    for sql in [
        "INSERT INTO inbox VALUES (1, 'a role that may insert but not read')",
        "INSERT INTO ruled VALUES (1, 'rewritten by a rule')",
        "INSERT INTO docs VALUES (9, 1, 'under a policy that hides it')",
    ] {
        let raw_sql = sql.replace("VALUES (", "VALUES (10");
        sqlx::query(AssertSqlSafe(raw_sql)).execute(&pool).await.unwrap_or_else(|e| panic!("raw {sql}: {e}"));
        sqlx::query(AssertSqlSafe(sql)).execute(&cache).await.unwrap_or_else(|e| panic!("cached {sql}: {e}"));
    }
}

#[tokio::test]
async fn privileges_revoked_through_the_pool_are_seen() {
    let db = TestDb::new().await;
    let (role, options) = db.role("owner").await;
    let grant = format!("GRANT CREATE ON SCHEMA {} TO {role}", db.schema);
    sqlx::raw_sql(AssertSqlSafe(grant)).execute(&db.pool).await.unwrap();
    let pool = db.pool_with(2, options).await;
    let cache = CachedPool::builder(pool.clone()).build().await.unwrap();
    sqlx::raw_sql("CREATE TABLE mine (id bigint PRIMARY KEY); INSERT INTO mine VALUES (1)")
        .execute(&cache)
        .await
        .unwrap();
    let count = || cache.query_scalar::<i64>("SELECT count(*) FROM mine").fetch_one();
    assert_eq!(count().await.unwrap(), 1);
    assert_eq!(count().await.unwrap(), 1);
    let revoke = format!("REVOKE SELECT ON mine FROM {role}");
    sqlx::raw_sql(AssertSqlSafe(revoke)).execute(&cache).await.unwrap();
    let raw = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM mine").fetch_one(&pool).await;
    assert!(raw.is_err(), "the owner revoked its own right to read");
    assert!(count().await.is_err(), "served from the cache what the raw pool refuses");
}
