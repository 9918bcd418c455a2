//! Keys and row types: arguments are keyed with their type, fingerprints tell types apart, a
//! cached value reads back exactly or is not cached, and key columns are identities only when
//! equal text means the same row.

use serde::{Deserialize, Serialize};
use sqlacache_sqlx::{Cacheable, CachedRow, Uncached};
use sqlacache_tests::TestDb;

#[tokio::test]
async fn arguments_are_keyed_with_their_type_and_nullness() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    let is_null = |sql: &'static str| sqlacache_sqlx::query_scalar::<bool>(sql);
    for _ in 0..2 {
        assert!(is_null("SELECT $1::text IS NULL FROM users WHERE id = 1")
            .bind(None::<String>)
            .fetch_one(&cache)
            .await
            .unwrap());
        assert!(!is_null("SELECT $1::text IS NULL FROM users WHERE id = 1").bind("").fetch_one(&cache).await.unwrap());
        assert!(is_null("SELECT $1::int8 IS NULL FROM users WHERE id = 1")
            .bind(None::<i64>)
            .fetch_one(&cache)
            .await
            .unwrap());
        assert!(!is_null("SELECT $1::int8 IS NULL FROM users WHERE id = 1")
            .bind(0_i64)
            .fetch_one(&cache)
            .await
            .unwrap());
    }
    assert_eq!(cache.stats().hits, 4, "each argument has its own entry");
}

#[tokio::test]
async fn a_bound_clock_word_is_not_cached() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    for word in ["now", "today", " Tomorrow "] {
        let sql = "SELECT count(*) FROM users WHERE $1::timestamptz > '2000-01-01'";
        for _ in 0..2 {
            sqlacache_sqlx::query_scalar::<i64>(sql).bind(word).fetch_one(&cache).await.unwrap();
        }
    }
    assert_eq!(cache.stats().hits, 0);
    assert_eq!(cache.stats().uncached(Uncached::Clock), 6);
}

const PEOPLE: &str =
    "CREATE TABLE people (id bigint PRIMARY KEY, n bigint NOT NULL); INSERT INTO people VALUES (1, 5);";

mod a {
    pub type Num = Option<i64>;
    #[derive(Debug, PartialEq, sqlx::FromRow, serde::Serialize, serde::Deserialize, sqlacache_sqlx::Cacheable)]
    #[cache(table = "people")]
    pub struct Person {
        #[cache(pk)]
        pub id: i64,
        pub n: Num,
    }
}

mod b {
    pub type Num = i64;
    #[derive(Debug, PartialEq, sqlx::FromRow, serde::Serialize, serde::Deserialize, sqlacache_sqlx::Cacheable)]
    #[cache(table = "people")]
    pub struct Person {
        #[cache(pk)]
        pub id: i64,
        pub n: Num,
    }
}

#[tokio::test]
async fn same_named_types_never_decode_each_others_bytes() {
    let db = TestDb::with_schema(PEOPLE).await;
    let cache =
        sqlacache_tests::builder(db.pool.clone()).model::<a::Person>().model::<b::Person>().build().await.unwrap();
    assert_ne!(a::Person::fingerprint(), b::Person::fingerprint(), "aliases resolve to other types");
    assert_eq!(a::Person::MODEL.fingerprint, b::Person::MODEL.fingerprint, "the tokens alone are alike");
    for _ in 0..2 {
        assert_eq!(cache.get::<a::Person>(1_i64).await.unwrap(), Some(a::Person { id: 1, n: Some(5) }));
        assert_eq!(cache.get::<b::Person>(1_i64).await.unwrap(), Some(b::Person { id: 1, n: 5 }));
        let all: Vec<b::Person> = sqlacache_sqlx::query_as("SELECT * FROM people").fetch_all(&cache).await.unwrap();
        assert_eq!(all, [b::Person { id: 1, n: 5 }]);
        let all: Vec<a::Person> = sqlacache_sqlx::query_as("SELECT * FROM people").fetch_all(&cache).await.unwrap();
        assert_eq!(all, [a::Person { id: 1, n: Some(5) }]);
    }
    assert_eq!(cache.stats().corrupt_entries, 0);
    assert_eq!(cache.stats().hits, 4);
}

#[derive(Debug, PartialEq, sqlx::FromRow, Serialize, Deserialize, Cacheable)]
#[cache(table = "settings")]
struct Setting {
    #[cache(pk)]
    id: i64,
    value: sqlx::types::JsonValue,
    extra: Option<sqlx::types::Json<Extra>>,
}

/// A shape only a self-describing format reads back: untagged, and one variant flattened.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Extra {
    Flag(bool),
    Named {
        name: String,
        #[serde(flatten)]
        rest: std::collections::BTreeMap<String, serde_json::Value>,
    },
}

const SETTINGS: &str = "CREATE TABLE settings (id bigint PRIMARY KEY, value jsonb NOT NULL, extra jsonb); \
     INSERT INTO settings VALUES (1, '{\"a\": [1, 2.5, null, \"x\"], \"b\": {\"c\": true}}', \
                                  '{\"name\": \"n\", \"k\": [1]}'), \
                                 (2, '[]', 'true'), (3, '\"text\"', NULL);";

async fn settings(cache: &sqlacache_sqlx::CachedPool) -> Vec<Setting> {
    sqlacache_sqlx::query_as("SELECT * FROM settings ORDER BY id").fetch_all(cache).await.unwrap()
}

#[tokio::test]
async fn jsonb_rows_are_cached_exactly_and_invalidated() {
    let db = TestDb::with_schema(SETTINGS).await;
    let cache = sqlacache_tests::builder(db.pool.clone()).model::<Setting>().build().await.unwrap();
    let raw: Vec<Setting> = sqlx::query_as("SELECT * FROM settings ORDER BY id").fetch_all(&db.pool).await.unwrap();
    assert!(matches!(raw[0].extra.as_deref(), Some(Extra::Named { .. })), "{raw:?}");
    for _ in 0..3 {
        assert_eq!(settings(&cache).await, raw);
        for row in &raw {
            assert_eq!(cache.get::<Setting>(row.id).await.unwrap().as_ref(), Some(row));
        }
    }
    let stats = cache.stats();
    assert_eq!((stats.misses, stats.hits, stats.corrupt_entries), (4, 8, 0), "{stats:?}");
    assert_eq!(stats.uncached(Uncached::Unstorable), 0);

    sqlx::query("UPDATE settings SET value = value || '{\"d\": 1}', extra = 'false' WHERE id = 1")
        .execute(&cache)
        .await
        .unwrap();
    let raw: Vec<Setting> = sqlx::query_as("SELECT * FROM settings ORDER BY id").fetch_all(&db.pool).await.unwrap();
    assert_eq!(raw[0].extra.as_deref(), Some(&Extra::Flag(false)));
    assert_eq!(settings(&cache).await, raw, "the write invalidated the list");
    assert_eq!(cache.get::<Setting>(1).await.unwrap().as_ref(), Some(&raw[0]), "and the row");
}

#[tokio::test]
async fn jsonb_rows_are_shared_through_redis() {
    sqlacache_tests::redis::require_shared_redis();
    let db = TestDb::with_schema(SETTINGS).await;
    let prefix = sqlacache_tests::redis::unique_prefix("jsonb");
    let build = || {
        sqlacache_tests::builder(db.pool.clone())
            .model::<Setting>()
            .redis(&sqlacache_tests::redis::redis_url())
            .key_prefix(&prefix)
            .memory_capacity(0)
            .redis_timeout(std::time::Duration::from_secs(5))
            .build()
    };
    let (a, b) = (build().await.unwrap(), build().await.unwrap());
    sqlacache_tests::redis::tiers_ready(&[&a, &b]).await;
    let raw: Vec<Setting> = sqlx::query_as("SELECT * FROM settings ORDER BY id").fetch_all(&db.pool).await.unwrap();
    assert_eq!(settings(&a).await, raw);
    // The other pool's value reaches Redis off its caller's path.
    let start = std::time::Instant::now();
    while b.stats().redis_hits == 0 {
        assert_eq!(settings(&b).await, raw);
        assert!(start.elapsed() < std::time::Duration::from_secs(30), "never a Redis hit: {:?}", b.stats());
    }
    assert_eq!(b.stats().corrupt_entries, 0);
    let statement = b.statements().into_iter().find(|s| s.sql == "SELECT * FROM settings ORDER BY id").unwrap();
    assert_eq!(statement.redis_hits, b.stats().redis_hits, "{statement:?}");
}
#[derive(Debug, PartialEq, sqlx::FromRow, Serialize, Deserialize, Cacheable)]
#[sqlx(rename_all = "camelCase")]
#[cache(table = "accounts")]
struct Account {
    #[cache(pk)]
    account_id: i64,
    display_name: String,
}

#[tokio::test]
async fn get_honours_rename_all() {
    let db = TestDb::with_schema(
        r#"CREATE TABLE accounts ("accountId" bigint PRIMARY KEY, "displayName" text NOT NULL);
           INSERT INTO accounts VALUES (7, 'seven');"#,
    )
    .await;
    let cache = sqlacache_tests::builder(db.pool.clone()).model::<Account>().build().await.unwrap();
    assert_eq!(Account::MODEL.primary_key, ["accountId"]);
    for _ in 0..2 {
        let account = cache.get::<Account>(7_i64).await.unwrap().unwrap();
        assert_eq!(account.display_name, "seven");
    }
    sqlx::query(r#"UPDATE accounts SET "displayName" = 'SEVEN' WHERE "accountId" = 7"#).execute(&cache).await.unwrap();
    assert_eq!(cache.get::<Account>(7_i64).await.unwrap().unwrap().display_name, "SEVEN");
}

#[derive(Debug, PartialEq, sqlx::FromRow, Serialize, Deserialize, Cacheable)]
#[cache(table = "logins")]
struct Login {
    #[cache(pk)]
    name: String,
    seen: i64,
}

#[tokio::test]
async fn keys_that_compare_equal_in_other_spellings_are_not_row_identities() {
    // (A `citext` key cannot be a `get` key: sqlx decodes it only as `PgCiText`, which has no
    // serde form. Its type is not a trusted key type either.)
    let db = TestDb::with_schema(
        "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
         CREATE TABLE logins (name text COLLATE ci PRIMARY KEY, seen bigint NOT NULL);
         INSERT INTO logins VALUES ('Alice', 1);",
    )
    .await;
    equal_spellings_are_one_row(&db).await;
}

async fn equal_spellings_are_one_row(db: &TestDb) {
    let cache = sqlacache_tests::builder(db.pool.clone()).model::<Login>().build().await.unwrap();
    let seen = |key: &'static str| {
        let cache = cache.clone();
        async move { cache.get::<Login>(key.to_owned()).await.unwrap().map(|l| l.seen) }
    };
    // What `get` runs, on the raw pool.
    let raw = |key: &'static str| {
        sqlx::query_scalar::<_, i64>(r#"SELECT seen FROM logins WHERE "name" = $1"#).bind(key).fetch_optional(&db.pool)
    };
    assert_eq!(seen("alice").await, raw("alice").await.unwrap());
    assert_eq!(seen("alice").await, raw("alice").await.unwrap());
    sqlx::query("UPDATE logins SET seen = 2 WHERE name = 'ALICE'").execute(&cache).await.unwrap();
    assert_eq!(seen("alice").await, raw("alice").await.unwrap(), "a write to another spelling of the key");
    assert_eq!(seen("Alice").await, raw("Alice").await.unwrap());
}
