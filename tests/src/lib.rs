//! Shared fixtures for the sqlacache integration tests: an isolated schema per test on the
//! database named by `DATABASE_URL`, and the row types the tests use.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use sqlacache_sqlx::{Cacheable, CachedPool, CachedPoolBuilder};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

pub mod checker;
pub mod fleet;
pub mod logs;
pub mod mock_tier;
pub mod redis;

/// The database the tests use.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

const HOW_TO_START: &str = "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start \
     (or set DATABASE_URL to a reachable PostgreSQL)";

/// A user row, configured through its derive.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, Deserialize, Cacheable)]
#[cache(table = "users", ops(get, fetch, count, exists), ttl = 900)]
pub struct User {
    /// Primary key.
    #[cache(pk)]
    pub id: i64,
    /// Name.
    pub name: String,
    /// Whether the user is active.
    pub active: bool,
}

/// A counter row, for tests that write one value over and over and check every read against
/// the writes that returned before it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, Deserialize, Cacheable)]
#[cache(table = "counters")]
pub struct Counter {
    /// Primary key.
    #[cache(pk)]
    pub id: i32,
    /// The value, bumped by each write.
    pub v: i64,
}

/// The `counters` table with five rows at zero.
pub const COUNTERS: &str = "CREATE TABLE counters (id int PRIMARY KEY, v bigint NOT NULL);
    INSERT INTO counters SELECT g, 0 FROM generate_series(1, 5) g;";

/// Waits until `done` holds; fails after 30 s (only against hanging) naming `what` was awaited.
pub async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < std::time::Duration::from_secs(30), "timed out waiting until {what}");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

/// Adds one to counter `id` through `cache`; returns its new value.
pub async fn bump(cache: &CachedPool, id: i32) -> i64 {
    sqlx::query_scalar("UPDATE counters SET v = v + 1 WHERE id = $1 RETURNING v")
        .bind(id)
        .fetch_one(cache)
        .await
        .unwrap()
}

/// Counter `id`, read with `get` through `cache`.
pub async fn value(cache: &CachedPool, id: i32) -> i64 {
    cache.get::<Counter>(id).await.unwrap().expect("the row exists").v
}

/// An order row (references `users` with `ON DELETE CASCADE`).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, Deserialize, Cacheable)]
#[cache(table = "orders")]
pub struct Order {
    /// Primary key.
    #[cache(pk)]
    pub id: i64,
    /// Owner; nullable so `ON DELETE SET NULL` tables can reuse the type.
    pub user_id: Option<i64>,
    /// Amount.
    pub total: i32,
}

/// A row of a table with a composite primary key.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, Deserialize, Cacheable)]
#[cache(table = "memberships")]
pub struct Membership {
    /// First key column.
    #[cache(pk)]
    pub org_id: i64,
    /// Second key column.
    #[cache(pk)]
    pub user_id: i64,
    /// Role.
    pub role: String,
}

/// The schema every test starts from.
pub const SCHEMA: &str = r#"
CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL, active boolean NOT NULL DEFAULT true);
CREATE TABLE orders (id bigint PRIMARY KEY, user_id bigint REFERENCES users(id) ON DELETE CASCADE, total int NOT NULL);
CREATE TABLE notes (id bigint PRIMARY KEY, user_id bigint REFERENCES users(id) ON DELETE SET NULL, total int NOT NULL);
CREATE TABLE memberships (org_id bigint, user_id bigint, role text NOT NULL, PRIMARY KEY (org_id, user_id));
CREATE TABLE audit_log (id bigserial PRIMARY KEY, message text NOT NULL);
INSERT INTO users VALUES (1, 'ada', true), (2, 'bob', true), (3, 'cy', false);
INSERT INTO orders VALUES (10, 1, 100), (11, 1, 50), (12, 2, 70);
INSERT INTO notes VALUES (20, 1, 5), (21, 2, 6);
INSERT INTO memberships VALUES (1, 1, 'owner'), (1, 2, 'member');
"#;

/// An isolated schema, set as the search path of its pool, dropped when the value is dropped.
pub struct TestDb {
    /// A pool whose connections see only this test's schema.
    pub pool: PgPool,
    /// The schema's name.
    pub schema: String,
    /// Roles made with [`TestDb::role`], dropped with the schema.
    roles: std::sync::Mutex<Vec<String>>,
    /// The URL of the database the schema is in.
    url: String,
    /// A database made for this value alone (see [`TestDb::in_own_database`]), dropped with it.
    own_database: Option<String>,
}

/// `CachedPool::builder(pool)` for a pool that stands for a process of its own: the pools of
/// one test, and of the tests running beside it, hear of each other's writes only as separate
/// processes would (the in-process bus has tests of its own).
pub fn builder(pool: PgPool) -> CachedPoolBuilder {
    use sqlacache_sqlx::testing::Hooks as _;
    CachedPool::builder(pool).separate_process()
}

impl TestDb {
    /// Creates a fresh schema holding [`SCHEMA`].
    pub async fn new() -> TestDb {
        TestDb::with_schema(SCHEMA).await
    }

    /// Creates a fresh schema holding the given DDL.
    pub async fn with_schema(ddl: &str) -> TestDb {
        TestDb::create(ddl, None).await
    }

    /// Creates a fresh schema holding the given DDL, in a database made for it alone: for tests
    /// that must not hear of the other tests' schema changes (through the change feed's event
    /// triggers, which are per database).
    pub async fn in_own_database(ddl: &str) -> TestDb {
        let name = format!("sqlacache_d_{}", &fnv_hex(&unique_seed())[..12]);
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&database_url())
            .await
            .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {}: {e}\n{HOW_TO_START}", database_url()));
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await.expect("create database");
        admin.close().await;
        TestDb::create(ddl, Some(name)).await
    }

    async fn create(ddl: &str, own_database: Option<String>) -> TestDb {
        let schema = format!("sqlacache_t_{}", &fnv_hex(&unique_seed())[..12]);
        let url = match &own_database {
            Some(name) => with_database(&database_url(), name),
            None => database_url(),
        };
        let options = PgConnectOptions::from_str(&url)
            .unwrap_or_else(|e| panic!("DATABASE_URL {url:?} is not a PostgreSQL URL: {e}"));
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {url}: {e}\n{HOW_TO_START}"));
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).execute(&admin).await.expect("create schema");
        admin.close().await;

        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(options.options([("search_path", schema.as_str())]).application_name(&schema))
            .await
            .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {url}: {e}\n{HOW_TO_START}"));
        sqlx::raw_sql(AssertSqlSafe(ddl.to_owned())).execute(&pool).await.expect("create test tables");
        TestDb { pool, schema, roles: Default::default(), url, own_database }
    }

    /// The URL of this value's database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Options for a pool like this test's own: its schema on the search path, tagged with its
    /// name so its connections are closed when it is dropped.
    pub fn options(&self) -> PgConnectOptions {
        let url = &self.url;
        PgConnectOptions::from_str(url)
            .unwrap_or_else(|e| panic!("DATABASE_URL {url:?} is not a PostgreSQL URL: {e}"))
            .options([("search_path", self.schema.as_str())])
            .application_name(&self.schema)
    }

    /// A pool of `size` connections with these options.
    pub async fn pool_with(&self, size: u32, options: PgConnectOptions) -> PgPool {
        PgPoolOptions::new()
            .max_connections(size)
            .connect_with(options)
            .await
            .unwrap_or_else(|e| panic!("cannot reach PostgreSQL: {e}\n{HOW_TO_START}"))
    }

    /// Creates a login role (not a superuser) that may use this schema, and returns its name
    /// and options for connecting as it.
    pub async fn role(&self, suffix: &str) -> (String, PgConnectOptions) {
        let role = format!("{}_{suffix}", self.schema);
        let setup = format!("CREATE ROLE {role} LOGIN; GRANT USAGE ON SCHEMA {} TO {role};", self.schema);
        sqlx::raw_sql(AssertSqlSafe(setup)).execute(&self.pool).await.expect("create role");
        self.roles.lock().unwrap_or_else(|e| e.into_inner()).push(role.clone());
        (role.clone(), self.options().username(&role))
    }

    /// A builder over this schema's pool with the test row types configured.
    pub fn builder(&self) -> CachedPoolBuilder {
        builder(self.pool.clone()).model::<User>().model::<Order>().model::<Membership>()
    }

    /// A cache with the default configuration.
    pub async fn cache(&self) -> CachedPool {
        self.builder().build().await.expect("build the cache")
    }
}

/// `url` with its database replaced by `name` (`scheme://authority/name?query`).
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, ""), |(b, q)| (b, q));
    let authority = base.find("://").map_or(0, |i| i + 3);
    let path = base[authority..].find('/').map_or(base.len(), |i| authority + i);
    let query = if query.is_empty() { String::new() } else { format!("?{query}") };
    format!("{}/{name}{query}", &base[..path])
}

/// A seed no other call (in this process or another) returns.
fn unique_seed() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{nanos}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn fnv_hex(text: &str) -> String {
    // Only a short unique suffix; FNV-1a is enough.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    format!("{h:016x}")
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let schema = self.schema.clone();
        let roles = std::mem::take(&mut *self.roles.lock().unwrap_or_else(|e| e.into_inner()));
        let (url, own_database) = (self.url.clone(), self.own_database.clone());
        // Runs even when the test panicked; a fresh runtime because Drop cannot await.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let options = PgConnectOptions::from_str(&url).ok()?;
                let pool = PgPoolOptions::new().max_connections(1).connect_with(options).await.ok()?;
                // The test's own connections may still hold locks (a dropped transaction's
                // rollback runs lazily); they are tagged with the schema's name.
                let kill = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1";
                sqlx::query(kill).bind(&schema).execute(&pool).await.ok()?;
                // The test's schema, and any other it made named after it (`<schema>_…`).
                let own = "SELECT nspname::text FROM pg_catalog.pg_namespace \
                           WHERE nspname = $1 OR starts_with(nspname, $1 || '_')";
                let schemas: Vec<String> = sqlx::query_scalar(own).bind(&schema).fetch_all(&pool).await.ok()?;
                for name in schemas {
                    let drop = format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE");
                    sqlx::raw_sql(AssertSqlSafe(drop)).execute(&pool).await.ok()?;
                }
                for role in roles {
                    let drop = format!("DROP OWNED BY {role}; DROP ROLE IF EXISTS {role}");
                    sqlx::raw_sql(AssertSqlSafe(drop)).execute(&pool).await.ok()?;
                }
                pool.close().await;
                if let Some(name) = own_database {
                    let options = PgConnectOptions::from_str(&database_url()).ok()?;
                    let admin = PgPoolOptions::new().max_connections(1).connect_with(options).await.ok()?;
                    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    sqlx::raw_sql(AssertSqlSafe(drop)).execute(&admin).await.ok()?;
                    admin.close().await;
                }
                Some(())
            })
        })
        .join();
    }
}
