//! Schema changes through the pool are always seen: a name that now means another relation
//! never answers with the old one's entries.

use sqlacache_sqlx::{Cacheable, CachedPool, Uncached};
use sqlacache_tests::TestDb;
use sqlx::AssertSqlSafe;
use std::time::Duration;

/// A pool whose search path is `<schema>_first, <schema>`: a relation made in the first
/// schema shadows the test's own tables.
async fn shadowing(db: &TestDb) -> (CachedPool, String) {
    let first = format!("{}_first", db.schema);
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE SCHEMA {first}"))).execute(&db.pool).await.unwrap();
    let options = db.options().options([("search_path", format!("{first}, {}", db.schema).as_str())]);
    let pool = db.pool_with(4, options).await;
    (sqlacache_tests::builder(pool).build().await.unwrap(), first)
}

async fn names(cache: &CachedPool) -> Vec<String> {
    sqlacache_sqlx::query_scalar("SELECT name FROM users ORDER BY id").persistent(false).fetch_all(cache).await.unwrap()
}

#[tokio::test]
async fn a_relation_that_shadows_a_name_never_answers_with_the_old_entries() {
    let shapes = [
        "CREATE TABLE {first}.users AS SELECT 1::bigint AS id, 'shadow'::text AS name",
        "SELECT 1::bigint AS id, 'shadow'::text AS name INTO {first}.users",
        "CREATE VIEW {first}.users AS SELECT 1::bigint AS id, 'shadow'::text AS name",
        "CREATE TABLE {first}.people (id bigint, name text); INSERT INTO {first}.people VALUES (1, 'shadow'); \
         ALTER TABLE {first}.people RENAME TO users",
    ];
    for shape in shapes {
        let db = TestDb::new().await;
        let (cache, first) = shadowing(&db).await;
        assert_eq!(names(&cache).await, ["ada", "bob", "cy"]);
        assert_eq!(names(&cache).await, ["ada", "bob", "cy"]);
        let sql = shape.replace("{first}", &first);
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(&cache).await.unwrap();
        assert_eq!(names(&cache).await, ["shadow"], "{shape}");
        sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA {first} CASCADE"))).execute(&db.pool).await.unwrap();
    }
}

#[tokio::test]
async fn ddl_in_a_transaction_is_seen_after_commit() {
    let db = TestDb::new().await;
    let (cache, first) = shadowing(&db).await;
    assert_eq!(names(&cache).await, ["ada", "bob", "cy"]);
    let mut tx = cache.begin().await.unwrap();
    let create = format!(
        "CREATE TABLE {first}.users (id bigint PRIMARY KEY, name text); INSERT INTO {first}.users VALUES (1, 'new')"
    );
    sqlx::raw_sql(AssertSqlSafe(create)).execute(&mut *tx).await.unwrap();
    assert_eq!(names(&cache).await, ["ada", "bob", "cy"], "not committed yet");
    tx.commit().await.unwrap();
    assert_eq!(names(&cache).await, ["new"]);
    assert_eq!(names(&cache).await, ["new"]);
    sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA {first} CASCADE"))).execute(&db.pool).await.unwrap();
}

#[tokio::test]
async fn a_pool_of_one_in_a_transaction_never_waits_for_the_catalog() {
    let db = TestDb::new().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(120))
        .connect_with(db.options())
        .await
        .unwrap();
    let cache = sqlacache_tests::builder(pool).build().await.unwrap();
    let work = async {
        let mut tx = cache.begin().await.unwrap();
        sqlx::raw_sql("CREATE TABLE fresh (id bigint PRIMARY KEY)").execute(&mut *tx).await.unwrap();
        sqlx::query("INSERT INTO fresh VALUES (1)").execute(&mut *tx).await.unwrap();
        sqlx::query("INSERT INTO not_known_yet_either VALUES (1)").execute(&mut *tx).await.unwrap_err();
        tx.rollback().await.unwrap();
    };
    // A hang here means a statement waited for a second connection that cannot come.
    tokio::time::timeout(Duration::from_secs(60), work).await.expect("the transaction finished");
}

#[tokio::test]
async fn refresh_then_invalidate_table_after_a_drop_and_create_elsewhere() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    assert_eq!(names(&cache).await, ["ada", "bob", "cy"]);
    sqlx::raw_sql(
        "DROP TABLE users CASCADE; CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL, active boolean NOT NULL); \
         INSERT INTO users VALUES (5, 'eve', true)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    cache.refresh_catalog().await.unwrap();
    cache.invalidate_table("users").await.unwrap();
    assert_eq!(names(&cache).await, ["eve"]);
}

#[derive(Debug, PartialEq, sqlx::FromRow, serde::Serialize, serde::Deserialize, Cacheable)]
#[cache(table = "codes")]
struct Code {
    #[cache(pk)]
    id: i64,
    base: i64,
}

#[tokio::test]
async fn a_generated_key_changes_with_its_base_column() {
    let db = TestDb::with_schema(
        "CREATE TABLE codes (base bigint NOT NULL, id bigint GENERATED ALWAYS AS (base * 10) STORED PRIMARY KEY); \
         INSERT INTO codes VALUES (1);",
    )
    .await;
    let cache = sqlacache_tests::builder(db.pool.clone()).model::<Code>().build().await.unwrap();
    assert!(cache.get::<Code>(10_i64).await.unwrap().is_some());
    assert!(cache.get::<Code>(20_i64).await.unwrap().is_none());
    sqlx::query("UPDATE codes SET base = 2 WHERE base = 1").execute(&cache).await.unwrap();
    assert!(cache.get::<Code>(10_i64).await.unwrap().is_none(), "the old key is gone");
    assert!(cache.get::<Code>(20_i64).await.unwrap().is_some());
}

#[tokio::test]
async fn cascades_into_partitions_and_children_invalidate_the_family() {
    let db = TestDb::with_schema(
        "CREATE TABLE owners (id bigint PRIMARY KEY);
         CREATE TABLE items (id bigint, owner bigint NOT NULL, PRIMARY KEY (id, owner)) PARTITION BY LIST (owner);
         CREATE TABLE items_1 PARTITION OF items FOR VALUES IN (1);
         ALTER TABLE items_1 ADD FOREIGN KEY (owner) REFERENCES owners (id) ON DELETE CASCADE;
         CREATE TABLE base (id bigint PRIMARY KEY, owner bigint);
         CREATE TABLE child (owner bigint REFERENCES owners (id) ON DELETE CASCADE) INHERITS (base);
         INSERT INTO owners VALUES (1), (2);
         INSERT INTO items VALUES (10, 1);
         INSERT INTO child VALUES (20, 1);",
    )
    .await;
    let cache = sqlacache_tests::builder(db.pool.clone()).build().await.unwrap();
    let count = |sql: &'static str| sqlacache_sqlx::query_scalar::<i64>(sql).fetch_one(&cache);
    assert_eq!(count("SELECT count(*) FROM items").await.unwrap(), 1);
    assert_eq!(count("SELECT count(*) FROM base").await.unwrap(), 1);
    sqlx::query("DELETE FROM owners WHERE id = 1").execute(&cache).await.unwrap();
    assert_eq!(count("SELECT count(*) FROM items").await.unwrap(), 0, "the partition's parent");
    assert_eq!(count("SELECT count(*) FROM base").await.unwrap(), 0, "the child's ancestor");
    assert_eq!(cache.stats().uncached(Uncached::UnknownTable), 0);
}

#[tokio::test]
async fn joining_or_leaving_a_family_invalidates_the_family() {
    let db = TestDb::with_schema(
        "CREATE TABLE base (id bigint PRIMARY KEY);
         CREATE TABLE extra (id bigint PRIMARY KEY);
         CREATE TABLE parts (id bigint PRIMARY KEY) PARTITION BY RANGE (id);
         CREATE TABLE parts_low PARTITION OF parts FOR VALUES FROM (0) TO (100);
         CREATE TABLE parts_high (id bigint PRIMARY KEY);
         INSERT INTO base VALUES (1); INSERT INTO extra VALUES (2), (3);
         INSERT INTO parts VALUES (1); INSERT INTO parts_high VALUES (100), (101);",
    )
    .await;
    let cache = sqlacache_tests::builder(db.pool.clone()).build().await.unwrap();
    let count = |sql: &'static str| sqlacache_sqlx::query_scalar::<i64>(sql).fetch_one(&cache);
    for (ddl, read, expected) in [
        ("ALTER TABLE extra INHERIT base", "SELECT count(*) FROM base", 3),
        ("ALTER TABLE extra NO INHERIT base", "SELECT count(*) FROM base", 1),
        (
            "ALTER TABLE parts ATTACH PARTITION parts_high FOR VALUES FROM (100) TO (200)",
            "SELECT count(*) FROM parts",
            3,
        ),
        ("ALTER TABLE parts DETACH PARTITION parts_high", "SELECT count(*) FROM parts", 1),
    ] {
        count(read).await.unwrap();
        sqlx::raw_sql(AssertSqlSafe(ddl)).execute(&cache).await.unwrap();
        assert_eq!(count(read).await.unwrap(), expected, "{ddl}");
    }
}

/// A write planned before a schema change, and finished after it, may change what its plan
/// does not know (here: a table that joined a family): it must invalidate everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_overlapping_a_schema_change_trusts_no_plan() {
    let db = TestDb::with_schema(
        "CREATE TABLE base (id bigint PRIMARY KEY);
         CREATE TABLE extra (id bigint PRIMARY KEY);
         INSERT INTO base VALUES (1);
         -- Lets the test hold an insert between its start and its commit.
         CREATE FUNCTION hold() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN PERFORM pg_advisory_xact_lock(4242); RETURN NEW; END $$;
         CREATE TRIGGER hold BEFORE INSERT ON extra FOR EACH ROW EXECUTE FUNCTION hold();",
    )
    .await;
    let cache = sqlacache_tests::builder(db.pool.clone()).build().await.unwrap();
    let base = || sqlacache_sqlx::query_scalar::<i64>("SELECT count(*) FROM base").fetch_one(&cache);
    let mut holder = db.pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(4242)").execute(&mut *holder).await.unwrap();

    let mut tx = cache.begin().await.unwrap();
    sqlx::raw_sql("ALTER TABLE extra INHERIT base").execute(&mut *tx).await.unwrap();
    let insert = {
        let cache = cache.clone();
        // Planned while the change is uncommitted: its plan cannot know `extra` joined `base`.
        tokio::spawn(async move { sqlx::query("INSERT INTO extra VALUES (2)").execute(&cache).await.unwrap() })
    };
    let waiting = |event: &'static str| {
        let (pool, schema) = (db.pool.clone(), db.schema.clone());
        async move {
            let sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event = $2";
            while sqlx::query_scalar::<_, i64>(sql).bind(&schema).bind(event).fetch_one(&pool).await.unwrap() == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    waiting("relation").await; // the insert waits for the schema change
    tx.commit().await.unwrap();
    waiting("advisory").await; // and now inside its trigger, not yet committed
    assert_eq!(base().await.unwrap(), 1, "filled while the insert is uncommitted");
    sqlx::query("SELECT pg_advisory_unlock(4242)").execute(&mut *holder).await.unwrap();
    insert.await.unwrap();
    let raw: i64 = sqlx::query_scalar("SELECT count(*) FROM base").fetch_one(&db.pool).await.unwrap();
    assert_eq!(raw, 2);
    assert_eq!(base().await.unwrap(), raw, "the insert reached a family its plan did not know");
}

/// A catalog reload abandoned midway (its caller gave up) leaves the schema change pending: the
/// next statement reads the catalog again.
#[tokio::test]
async fn an_abandoned_reload_keeps_the_schema_change_pending() {
    let db = TestDb::new().await;
    let first = format!("{}_first", db.schema);
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE SCHEMA {first}"))).execute(&db.pool).await.unwrap();
    let options = db.options().options([("search_path", format!("{first}, {}", db.schema).as_str())]);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(120))
        .connect_with(options)
        .await
        .unwrap();
    let cache = sqlacache_tests::builder(pool.clone()).build().await.unwrap();
    assert_eq!(names(&cache).await, ["ada", "bob", "cy"]);
    let create = format!("CREATE TABLE {first}.users AS SELECT 1::bigint AS id, 'shadow'::text AS name");
    sqlx::raw_sql(AssertSqlSafe(create)).execute(&cache).await.unwrap();

    // The next read must reload the catalog, but the pool's only connection is taken: give up.
    let held = pool.acquire().await.unwrap();
    let gave_up = tokio::time::timeout(Duration::from_millis(200), names(&cache)).await;
    assert!(gave_up.is_err(), "the read waited for the connection");
    drop(held);
    assert_eq!(names(&cache).await, ["shadow"], "the reload was still due");
    sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA {first} CASCADE"))).execute(&db.pool).await.unwrap();
}
