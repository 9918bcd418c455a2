//! Any row type can be cached: projections, join results, aggregates and tuples, with a write to
//! any table they read invalidating them; models follow their own settings only once registered.

use serde::{Deserialize, Serialize};
use sqlacache_sqlx::{Cacheable, CachedPool, CachedRow, Ops, Uncached};
use sqlacache_tests::{TestDb, User};
use std::time::Duration;

const BLOG: &str = r#"
CREATE TABLE authors (id bigint PRIMARY KEY, name text NOT NULL);
CREATE TABLE posts (id bigint PRIMARY KEY, author_id bigint NOT NULL REFERENCES authors(id), title text NOT NULL);
INSERT INTO authors VALUES (1, 'ada'), (2, 'bob');
INSERT INTO posts VALUES (10, 1, 'engines'), (11, 2, 'gears'), (12, 1, 'notes');
"#;

#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, Deserialize, CachedRow)]
struct PostWithAuthor {
    title: String,
    author: String,
}

const JOIN: &str = "SELECT p.title, a.name AS author FROM posts p JOIN authors a ON a.id = p.author_id ORDER BY p.id";

async fn joined(cache: &CachedPool) -> Vec<PostWithAuthor> {
    sqlacache_sqlx::query_as::<PostWithAuthor>(JOIN).fetch_all(cache).await.unwrap()
}

async fn raw_joined(db: &TestDb) -> Vec<PostWithAuthor> {
    sqlx::query_as::<_, PostWithAuthor>(JOIN).fetch_all(&db.pool).await.unwrap()
}

#[tokio::test]
async fn a_join_result_is_cached_and_a_write_to_either_table_invalidates_it() {
    let db = TestDb::with_schema(BLOG).await;
    let cache = sqlacache_tests::builder(db.pool.clone()).build().await.unwrap();
    assert_eq!(joined(&cache).await, raw_joined(&db).await);
    assert_eq!(joined(&cache).await, raw_joined(&db).await);
    assert_eq!(cache.stats().hits, 1, "the join result is served from the cache");

    sqlx::query("UPDATE authors SET name = 'ada l.' WHERE id = 1").execute(&cache).await.unwrap();
    let after_author = joined(&cache).await;
    assert_eq!(after_author, raw_joined(&db).await, "a write to authors invalidated the join");
    assert_eq!(after_author[0].author, "ada l.");

    sqlx::query("UPDATE posts SET title = 'looms' WHERE id = 11").execute(&cache).await.unwrap();
    let after_post = joined(&cache).await;
    assert_eq!(after_post, raw_joined(&db).await, "a write to posts invalidated the join");
    assert_eq!(after_post[1].title, "looms");
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, Deserialize, CachedRow)]
struct PostCount {
    author_id: i64,
    posts: i64,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, Deserialize, CachedRow)]
struct TitleOnly(String);

#[tokio::test]
async fn aggregates_tuples_and_tuple_structs_are_cached_and_fresh() {
    let db = TestDb::with_schema(BLOG).await;
    let cache = sqlacache_tests::builder(db.pool.clone()).build().await.unwrap();
    let counts_sql = "SELECT author_id, count(*) AS posts FROM posts GROUP BY author_id ORDER BY author_id";
    let tuples_sql = "SELECT id, title FROM posts ORDER BY id";
    let titles_sql = "SELECT title FROM posts ORDER BY id";
    for _ in 0..2 {
        let counts = sqlacache_sqlx::query_as::<PostCount>(counts_sql).fetch_all(&cache).await.unwrap();
        assert_eq!(counts, vec![PostCount { author_id: 1, posts: 2 }, PostCount { author_id: 2, posts: 1 }]);
        let pairs = sqlacache_sqlx::query_as::<(i64, String)>(tuples_sql).fetch_all(&cache).await.unwrap();
        assert_eq!(pairs[0], (10, "engines".to_owned()));
        let titles = sqlacache_sqlx::query_as::<TitleOnly>(titles_sql).fetch_optional(&cache).await.unwrap();
        assert_eq!(titles, Some(TitleOnly("engines".into())));
    }
    assert_eq!(cache.stats().hits, 3);

    sqlx::query("INSERT INTO posts VALUES (13, 2, 'axles')").execute(&cache).await.unwrap();
    let counts = sqlacache_sqlx::query_as::<PostCount>(counts_sql).fetch_all(&cache).await.unwrap();
    assert_eq!(counts[1], PostCount { author_id: 2, posts: 2 }, "the insert invalidated the aggregate");
    let pairs = sqlacache_sqlx::query_as::<(i64, String)>(tuples_sql).fetch_all(&cache).await.unwrap();
    assert_eq!(pairs.last(), Some(&(13, "axles".to_owned())));
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, Deserialize, CachedRow)]
struct Titled {
    id: i64,
    title: String,
}

#[tokio::test]
async fn row_types_reading_the_same_sql_keep_their_own_entries() {
    let db = TestDb::with_schema(BLOG).await;
    let cache = sqlacache_tests::builder(db.pool.clone()).build().await.unwrap();
    let sql = "SELECT id, title FROM posts ORDER BY id";
    for _ in 0..2 {
        let structs = sqlacache_sqlx::query_as::<Titled>(sql).fetch_all(&cache).await.unwrap();
        let tuples = sqlacache_sqlx::query_as::<(i64, String)>(sql).fetch_all(&cache).await.unwrap();
        let swapped = sqlacache_sqlx::query_as::<(i64, Option<String>)>(sql).fetch_all(&cache).await.unwrap();
        assert_eq!(structs.len(), tuples.len());
        assert!(structs.iter().zip(&tuples).all(|(s, t)| s.id == t.0 && s.title == t.1));
        assert_eq!(swapped[0].1.as_deref(), Some("engines"));
    }
    assert_eq!(cache.stats().hits, 3, "each type hit its own entry");
}

/// A model whose settings cache `get` only, for one second.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, Deserialize, Cacheable)]
#[cache(table = "authors", ops(get), ttl = 1)]
struct Author {
    #[cache(pk)]
    id: i64,
    name: String,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, Deserialize, CachedRow)]
struct AuthorName {
    name: String,
}

#[tokio::test]
async fn a_model_takes_its_own_settings_at_first_use_without_registration() {
    let db = TestDb::with_schema(BLOG).await;
    let cache = sqlacache_tests::builder(db.pool.clone()).build().await.unwrap();
    let list = "SELECT * FROM authors ORDER BY id";
    let names = "SELECT name FROM authors ORDER BY id";
    // Before `Author` is used, the table follows the wildcard.
    for _ in 0..2 {
        sqlacache_sqlx::query_as::<AuthorName>(names).fetch_all(&cache).await.unwrap();
    }
    assert_eq!(cache.stats().hits, 1);

    // First use: `ops(get)` caches `get` and not lists, whichever row type reads the table.
    for _ in 0..2 {
        assert_eq!(cache.get::<Author>(1).await.unwrap().unwrap().name, "ada");
        assert_eq!(sqlacache_sqlx::query_as::<Author>(list).fetch_all(&cache).await.unwrap().len(), 2);
        assert_eq!(sqlacache_sqlx::query_as::<AuthorName>(names).fetch_all(&cache).await.unwrap().len(), 2);
    }
    let stats = cache.stats();
    assert_eq!(stats.hits, 2, "one more hit: the second get");
    assert_eq!(stats.uncached(Uncached::Disabled), 4, "lists are no longer cached, in either row type");
    // `ttl = 1`: the entry expires after a second.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    cache.get::<Author>(1).await.unwrap();
    assert_eq!(cache.stats().misses - stats.misses, 1, "the model's one-second TTL applies");

    // Registered up front, the same.
    let registered = sqlacache_tests::builder(db.pool.clone()).model::<Author>().build().await.unwrap();
    for _ in 0..2 {
        registered.get::<Author>(1).await.unwrap();
        sqlacache_sqlx::query_as::<AuthorName>(names).fetch_all(&registered).await.unwrap();
    }
    assert_eq!((registered.stats().hits, registered.stats().uncached(Uncached::Disabled)), (1, 2));
}

/// Settings that differ from the wildcard's.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, Deserialize, Cacheable)]
#[cache(table = "posts", ops(get, fetch), ttl = 60)]
struct Post {
    #[cache(pk)]
    id: i64,
    author_id: i64,
    title: String,
}

#[tokio::test]
async fn what_was_cached_under_other_settings_is_dropped_at_first_use() {
    let db = TestDb::with_schema(BLOG).await;
    let cache = sqlacache_tests::builder(db.pool.clone()).build().await.unwrap();
    let titles = "SELECT title FROM posts ORDER BY id";
    let before = sqlacache_sqlx::query_as::<TitleOnly>(titles).fetch_all(&cache).await.unwrap();
    // A write the cache does not see: the TTL would be the only backstop.
    sqlx::query("UPDATE posts SET title = 'unseen' WHERE id = 10").execute(cache.inner()).await.unwrap();
    assert_eq!(
        sqlacache_sqlx::query_as::<TitleOnly>(titles).fetch_all(&cache).await.unwrap(),
        before,
        "served from the cache"
    );
    cache.get::<Post>(11).await.unwrap();
    let after = sqlacache_sqlx::query_as::<TitleOnly>(titles).fetch_all(&cache).await.unwrap();
    assert_eq!(after[0], TitleOnly("unseen".into()), "the first use of `Post` dropped the table's entries");
}

/// A key that is not the table's primary key.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, Deserialize, Cacheable)]
#[cache(table = "posts")]
struct PostByTitle {
    id: i64,
    author_id: i64,
    #[cache(pk)]
    title: String,
}

#[tokio::test]
async fn a_model_that_does_not_check_out_at_first_use_is_never_cached() {
    let db = TestDb::with_schema(BLOG).await;
    sqlx::query("INSERT INTO posts VALUES (13, 2, 'engines')").execute(&db.pool).await.unwrap();
    let cache = sqlacache_tests::builder(db.pool.clone()).build().await.unwrap();
    for _ in 0..3 {
        let post = cache.get::<PostByTitle>("engines".to_owned()).await.unwrap().unwrap();
        assert_eq!(post.title, "engines");
        let all =
            sqlacache_sqlx::query_as::<PostByTitle>("SELECT * FROM posts ORDER BY id").fetch_all(&cache).await.unwrap();
        assert_eq!(all.len(), 4);
    }
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses), (0, 0));
    assert_eq!(stats.uncached(Uncached::BadModel), 6);
    // Other row types of the table still follow the wildcard.
    for _ in 0..2 {
        sqlacache_sqlx::query_as::<TitleOnly>("SELECT title FROM posts ORDER BY id").fetch_all(&cache).await.unwrap();
    }
    assert_eq!(cache.stats().hits, 1);
}

#[tokio::test]
async fn an_explicit_table_setting_overrides_a_model() {
    let db = TestDb::new().await;
    let cache = db.builder().table("users", Ops::COUNT, Duration::from_secs(60)).build().await.unwrap();
    for _ in 0..2 {
        cache.get::<User>(1).await.unwrap();
        sqlacache_sqlx::query_scalar::<i64>("SELECT count(*) FROM users").fetch_one(&cache).await.unwrap();
    }
    assert_eq!(cache.stats().hits, 1, "only the count: `.table` replaced the model's ops");
}

#[tokio::test]
async fn query_as_macro_caches_a_row_type_without_from_row() {
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, CachedRow)]
    struct UserView {
        id: i64,
        name: String,
        active: bool,
    }
    let db = TestDb::new().await;
    let cache = sqlacache_tests::builder(db.pool.clone()).build().await.unwrap();
    let read = || sqlacache_sqlx::query_as!(UserView, "SELECT id, name, active FROM users WHERE id = $1", 1_i64);
    let first = read().fetch_one(&cache).await.unwrap();
    assert_eq!(read().fetch_one(&cache).await.unwrap(), first);
    assert_eq!(cache.stats().hits, 1);
    sqlx::query("UPDATE users SET name = 'ada l.' WHERE id = 1").execute(&cache).await.unwrap();
    assert_eq!(read().fetch_one(&cache).await.unwrap().name, "ada l.");
}

/// A model of a table that does not exist (a misspelt name).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, Deserialize, Cacheable)]
#[cache(table = "postz")]
struct Misspelt {
    #[cache(pk)]
    id: i64,
}

#[tokio::test]
async fn a_model_of_a_misspelt_table_is_counted_as_a_bad_model() {
    let db = TestDb::with_schema(BLOG).await;
    let cache = sqlacache_tests::builder(db.pool.clone()).build().await.unwrap();
    // PostgreSQL's own error, unchanged.
    let error = cache.get::<Misspelt>(1).await.unwrap_err();
    assert!(error.to_string().contains("postz"), "{error}");
    assert!(sqlacache_sqlx::query_as::<Misspelt>("SELECT id FROM posts").fetch_all(&cache).await.is_ok());
    let stats = cache.stats();
    assert_eq!(stats.uncached(Uncached::BadModel), 2, "{stats:?}");
    assert_eq!(stats.uncached(Uncached::UnknownTable), 0, "{stats:?}");
}
