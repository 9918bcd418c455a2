//! Rows never cross roles, tenants or sessions: a statement that may change the session of a
//! pool connection runs on a connection that is closed afterwards (or, when it leaves a
//! transaction open, stops the pool's caching), and row-level security is never cached.

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
    let cache = sqlacache_tests::builder(pool).model::<User>().build().await.unwrap();
    assert_eq!(name_of(&cache, 1).await, "ada");

    sqlx::raw_sql("BEGIN").execute(&cache).await.unwrap();
    sqlx::query("UPDATE users SET name = 'uncommitted' WHERE id = 1").execute(&cache).await.unwrap();
    assert_eq!(name_of(&cache, 1).await, "uncommitted", "inside the transaction, as the raw pool reads it");
    sqlx::raw_sql("ROLLBACK").execute(&cache).await.unwrap();

    assert_eq!(name_of(&cache, 1).await, "ada", "the rolled-back value was never cached");
    assert!(cache.stats().uncached(Uncached::Session) >= 2);
}

/// What shapes a session's answers, read on every connection of `pool` at once (`size` of them).
async fn every_session(pool: &sqlx::PgPool, size: u32) -> Vec<String> {
    const SESSION: &str = "SELECT concat_ws('/', current_user, current_setting('TimeZone'), \
        current_setting('search_path'), current_setting('statement_timeout'), current_setting('xmloption'), \
        current_setting('app.tenant', true), pg_my_temp_schema() <> 0 AND EXISTS (SELECT 1 FROM pg_class \
        WHERE relnamespace = pg_my_temp_schema()), now() <> statement_timestamp())";
    let mut conns = Vec::new();
    for _ in 0..size {
        conns.push(pool.acquire().await.unwrap());
    }
    let mut sessions = Vec::new();
    for conn in &mut conns {
        sessions.push(
            sqlx::raw_sql(SESSION)
                .fetch_one(&mut **conn)
                .await
                .map(|row| {
                    use sqlx::Row;
                    row.get::<String, _>(0)
                })
                .unwrap(),
        );
    }
    sessions
}

/// The connection rule: a statement through the pool that may change its session, in any
/// spelling, runs on a connection of its own that is then closed. The pool's connections stay
/// as they were, and the cache keeps serving them.
#[tokio::test]
async fn session_changes_through_the_pool_never_reach_its_other_connections() {
    let db = TestDb::with_schema(&format!(
        "{}
         CREATE FUNCTION tenant_is(t text) RETURNS text VOLATILE LANGUAGE sql
           AS $$ SELECT set_config('app.tenant', t, false) $$;",
        sqlacache_tests::SCHEMA
    ))
    .await;
    for statement in [
        "SET TIME ZONE 'Asia/Tokyo'",
        "SET timezone = 'Asia/Tokyo'",
        "SET SESSION statement_timeout = '31s'",
        "SET SCHEMA 'pg_catalog'",
        "SET XML OPTION DOCUMENT",
        "RESET ALL",
        "DISCARD ALL",
        "SELECT set_config('app.tenant', '2', false)",
        "SELECT * FROM set_config('app.tenant', '2', false)",
        "SELECT * FROM users, LATERAL set_config('app.tenant', '2', false)",
        "SELECT * FROM ROWS FROM (set_config('app.tenant', '2', false))",
        "SELECT tenant_is('2')",
        "UPDATE pg_settings SET setting = 'Asia/Tokyo' WHERE name = 'TimeZone'",
        "DO $$ BEGIN PERFORM set_config('app.tenant', '2', false); END $$",
        "CREATE TEMP TABLE users (id bigint PRIMARY KEY, name text NOT NULL, active boolean NOT NULL)",
        "CREATE TABLE pg_temp.users (id bigint PRIMARY KEY, name text NOT NULL, active boolean NOT NULL)",
        "CREATE VIEW pg_temp.users AS SELECT 1::bigint AS id, 'temp'::text AS name, true AS active",
        "BEGIN; SET TIME ZONE 'Asia/Tokyo'; COMMIT",
    ] {
        let pool = db.pool_with(2, db.options()).await;
        let cache = sqlacache_tests::builder(pool.clone()).model::<User>().build().await.unwrap();
        let before = every_session(&pool, 2).await;
        assert_eq!(name_of(&cache, 1).await, "ada");

        sqlx::raw_sql(AssertSqlSafe(statement)).execute(&cache).await.unwrap();
        assert_eq!(every_session(&pool, 2).await, before, "{statement}: a pool connection changed");
        // (A statement the library cannot read may have written anything: the first read may
        // miss.)
        let count = || sqlacache_sqlx::query_scalar::<i64>("SELECT count(*) FROM users").fetch_one(&cache);
        assert_eq!((name_of(&cache, 1).await, count().await.unwrap()), ("ada".to_owned(), 3), "{statement}");
        let hits = cache.stats().hits;
        assert_eq!((name_of(&cache, 1).await, count().await.unwrap()), ("ada".to_owned(), 3), "{statement}");
        assert_eq!(cache.stats().hits, hits + 2, "{statement}: the cache keeps serving");
        assert_eq!(cache.stats().uncached(Uncached::Session), 0, "{statement}");
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
    let cache = sqlacache_tests::builder(pool.clone()).build().await.unwrap();
    let read = || sqlacache_sqlx::query_scalar::<String>("SELECT at::text FROM events WHERE id = 1").fetch_one(&cache);
    assert_eq!(read().await.unwrap(), "2024-01-01 00:00:00+00");

    sqlx::raw_sql("SET TIME ZONE 'Asia/Tokyo'").execute(&cache).await.unwrap();
    // Whichever connection each read lands on, it reads what that connection says.
    for _ in 0..20 {
        let text: String =
            sqlx::query_scalar("SELECT at::text FROM events WHERE id = 1").fetch_one(&pool).await.unwrap();
        assert_eq!(text, "2024-01-01 00:00:00+00", "the SET stayed on a pool connection");
        assert_eq!(read().await.unwrap(), text);
    }
    assert_eq!(cache.stats().hits, 20);
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
    let cache = sqlacache_tests::builder(pool).model::<User>().build().await.unwrap();
    let mut tx = cache.begin().await.unwrap();
    sqlx::raw_sql("SET LOCAL search_path TO pg_catalog").execute(&mut *tx).await.unwrap();
    sqlx::raw_sql("SET LOCAL ROLE postgres").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    name_of(&cache, 1).await;
    name_of(&cache, 1).await;
    assert_eq!(cache.stats().hits, 1);
    assert_eq!(cache.stats().uncached(Uncached::Session), 0);
}

/// A transaction whose statements may change its session closes its connection when it ends,
/// whichever way it ends.
#[tokio::test]
async fn session_changes_inside_a_transaction_close_its_connection() {
    let db = TestDb::new().await;
    let pool = db.pool_with(2, db.options()).await;
    let cache = sqlacache_tests::builder(pool.clone()).model::<User>().build().await.unwrap();
    let before = every_session(&pool, 2).await;
    for (statement, end) in [
        ("SET TIME ZONE 'Asia/Tokyo'", "commit"),
        ("SELECT set_config('app.tenant', '2', false)", "rollback"),
        ("CREATE TEMP TABLE users (id bigint PRIMARY KEY, name text NOT NULL, active boolean NOT NULL)", "drop"),
        ("DO $$ BEGIN PERFORM set_config('app.tenant', '2', false); END $$", "commit"),
    ] {
        let mut tx = cache.begin().await.unwrap();
        sqlx::raw_sql(AssertSqlSafe(statement)).execute(&mut *tx).await.unwrap();
        match end {
            "commit" => tx.commit().await.unwrap(),
            "rollback" => tx.rollback().await.unwrap(),
            _ => drop(tx),
        }
        assert_eq!(every_session(&pool, 2).await, before, "{statement} then {end}");
        name_of(&cache, 1).await;
        let hits = cache.stats().hits;
        assert_eq!(name_of(&cache, 1).await, "ada");
        assert_eq!(cache.stats().hits, hits + 1, "{statement}: the cache keeps serving");
    }
    // So does one whose connection was used directly.
    let mut tx = cache.begin().await.unwrap();
    sqlx::raw_sql("SET TIME ZONE 'Asia/Tokyo'").execute(tx.inner()).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(every_session(&pool, 2).await, before, "through inner()");
}

/// A hand-written `BEGIN` the parser cannot read, through a one-connection pool: the raw pool
/// would keep that connection inside the transaction, so the cache does too (and stops
/// caching), and what the transaction rolls back is never served.
#[tokio::test]
async fn an_unreadable_begin_through_the_pool_is_never_cached_past_its_rollback() {
    let db = TestDb::new().await;
    let pool = db.pool_with(1, db.options()).await;
    let cache = sqlacache_tests::builder(pool).model::<User>().build().await.unwrap();
    assert_eq!(name_of(&cache, 1).await, "ada");
    sqlx::raw_sql("BEGIN ISOLATION LEVEL SERIALIZABLE, READ WRITE, NOT DEFERRABLE").execute(&cache).await.unwrap();
    sqlx::query("UPDATE users SET name = 'uncommitted' WHERE id = 1").execute(&cache).await.unwrap();
    assert_eq!(name_of(&cache, 1).await, "uncommitted", "inside the transaction, as the raw pool reads it");
    sqlx::raw_sql("ROLLBACK").execute(&cache).await.unwrap();
    assert_eq!(name_of(&cache, 1).await, "ada", "the rolled-back value is never served");
    assert!(cache.stats().uncached(Uncached::Session) >= 2);
}

#[tokio::test]
async fn a_failed_string_with_begin_stops_caching() {
    let db = TestDb::new().await;
    let pool = db.pool_with(1, db.options()).await;
    let cache = sqlacache_tests::builder(pool).model::<User>().build().await.unwrap();
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
    let cache = sqlacache_tests::builder(pool.clone()).build().await.unwrap();
    let bodies = || sqlacache_sqlx::query_scalar::<String>("SELECT body FROM docs ORDER BY id").fetch_all(&cache);
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
    let cache = sqlacache_tests::builder(db.pool.clone()).build().await.unwrap();
    for sql in [
        "SELECT count(*) FROM docs",
        "SELECT count(*) FROM parts",
        // A partition's own reads skip the parent's policy, but the family shares one rule.
        "SELECT count(*) FROM parts_1",
    ] {
        for _ in 0..2 {
            sqlacache_sqlx::query_scalar::<i64>(sql).fetch_one(&cache).await.unwrap();
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
    let cache = sqlacache_tests::builder(pool.clone()).build().await.unwrap();
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
    let cache = sqlacache_tests::builder(pool.clone()).build().await.unwrap();
    sqlx::raw_sql("CREATE TABLE mine (id bigint PRIMARY KEY); INSERT INTO mine VALUES (1)")
        .execute(&cache)
        .await
        .unwrap();
    let count = || sqlacache_sqlx::query_scalar::<i64>("SELECT count(*) FROM mine").fetch_one(&cache);
    assert_eq!(count().await.unwrap(), 1);
    assert_eq!(count().await.unwrap(), 1);
    let revoke = format!("REVOKE SELECT ON mine FROM {role}");
    sqlx::raw_sql(AssertSqlSafe(revoke)).execute(&cache).await.unwrap();
    let raw = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM mine").fetch_one(&pool).await;
    assert!(raw.is_err(), "the owner revoked its own right to read");
    assert!(count().await.is_err(), "served from the cache what the raw pool refuses");
}

/// Never refuse what the raw pool accepts, under any role the session takes: after `SET LOCAL
/// ROLE` (in any spelling) to a role that may write a table but not read it, no `RETURNING` is
/// appended to the transaction's writes, and they still invalidate at the commit.
#[tokio::test]
async fn writes_after_a_role_change_in_a_transaction_are_not_refused() {
    let db = TestDb::new().await;
    let (role, _) = db.role("blind").await;
    let grant = format!("GRANT INSERT, UPDATE, DELETE ON users TO {role}; GRANT {role} TO CURRENT_USER");
    sqlx::raw_sql(AssertSqlSafe(grant)).execute(&db.pool).await.unwrap();
    let cache = db.cache().await;
    for (n, switch) in [
        format!("SET LOCAL ROLE {role}"),
        format!("SELECT set_config('role', '{role}', true)"),
        format!("SET ROLE {role}"),
    ]
    .into_iter()
    .enumerate()
    {
        assert!(name_of(&cache, 3).await.starts_with("c"));
        let mut tx = cache.begin().await.unwrap();
        sqlx::raw_sql(AssertSqlSafe(switch.clone())).execute(&mut *tx).await.unwrap();
        let name = format!("c{n}");
        // No WHERE: the role may not read a column, so it may not filter by one either.
        sqlx::query("UPDATE users SET name = $1")
            .bind(&name)
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("{switch}: refused: {e}"));
        sqlx::query(AssertSqlSafe(format!("INSERT INTO users VALUES ({}, 'new', true)", 10 + n)))
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("{switch}: refused: {e}"));
        tx.commit().await.unwrap();
        assert_eq!(name_of(&cache, 3).await, name, "{switch}: invalidated at the commit");
    }
}

/// The connection rule closes only connections it cannot vouch for: functions of extensions
/// and built-in ones keep their connection in the pool, a volatile function of the user's own
/// does not.
#[tokio::test]
async fn only_statements_that_may_change_the_session_cost_a_connection() {
    let db = TestDb::in_own_database(&format!(
        "{} CREATE EXTENSION IF NOT EXISTS pgcrypto;
         CREATE FUNCTION noisy() RETURNS int VOLATILE LANGUAGE sql AS $$ SELECT 1 $$;",
        sqlacache_tests::SCHEMA
    ))
    .await;
    let pool = db.pool_with(1, db.options()).await;
    let cache = sqlacache_tests::builder(pool.clone()).model::<User>().build().await.unwrap();
    let pid = || async { sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()").fetch_one(&pool).await.unwrap() };
    let first = pid().await;
    for kept in [
        "SELECT gen_random_bytes(4)",
        "UPDATE users SET name = md5(random()::text) WHERE id = 3",
        "SELECT nextval('audit_log_id_seq')",
    ] {
        sqlx::raw_sql(AssertSqlSafe(kept)).execute(&cache).await.unwrap();
        assert_eq!(pid().await, first, "{kept} cost a connection");
    }
    sqlx::raw_sql("SELECT noisy()").execute(&cache).await.unwrap();
    assert_ne!(pid().await, first, "a volatile function of the user's own may change the session");
}
