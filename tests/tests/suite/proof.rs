//! A read is cached only when what it depends on is proven; anything not proven is not cached.

use sqlacache_sqlx::{CachedPool, Uncached};
use sqlacache_tests::TestDb;
use sqlx::AssertSqlSafe;

async fn count(cache: &CachedPool, sql: &str) -> i64 {
    sqlacache_sqlx::query_scalar::<i64>(AssertSqlSafe(sql.to_owned())).fetch_one(cache).await.unwrap()
}

/// PostgreSQL folds only ASCII letters: unquoted `Ät` is the table `"Ät"`, not `ät`.
#[tokio::test]
async fn non_ascii_names_resolve_as_postgres_folds_them() {
    let db = TestDb::with_schema(
        r#"CREATE TABLE "Ät" (id int PRIMARY KEY); CREATE TABLE "ät" (id int PRIMARY KEY);
           INSERT INTO "Ät" VALUES (1); INSERT INTO "ät" VALUES (1), (2);"#,
    )
    .await;
    let cache = sqlacache_tests::builder(db.pool.clone()).build().await.unwrap();
    for round in 0..3_i64 {
        assert_eq!(count(&cache, "SELECT count(*) FROM Ät").await, 1 + round);
        assert_eq!(count(&cache, "SELECT count(*) FROM ÄT").await, 1 + round);
        assert_eq!(count(&cache, "SELECT count(*) FROM ät").await, 2);
        let insert = format!(r#"INSERT INTO "Ät" VALUES ({})"#, 10 + round);
        sqlx::raw_sql(AssertSqlSafe(insert)).execute(&cache).await.unwrap();
    }
    assert!(cache.stats().hits >= 2, "{:?}", cache.stats());
}

/// A clock word bound as an argument makes a read depend on the clock, whatever surrounds it
/// in the argument's text and whatever its length.
#[tokio::test]
async fn clock_words_in_arguments_of_any_length_are_not_cached() {
    let db = TestDb::new().await;
    let cache = sqlacache_tests::builder(db.pool.clone()).build().await.unwrap();
    let sql = "SELECT count(*) FROM users WHERE $1::timestamptz > '2000-01-01'";
    for word in ["now", " Today", "tomorrow  ", "YESTERDAY"] {
        for pad in [0, 1, 44, 48, 60, 92, 96, 200] {
            let arg = format!("{word}{}", " ".repeat(pad));
            sqlacache_sqlx::query_scalar::<i64>(sql).bind(&arg).fetch_one(&cache).await.unwrap();
            let arg = format!("{}{word}", " ".repeat(pad));
            sqlacache_sqlx::query_scalar::<i64>(sql).bind(&arg).fetch_one(&cache).await.unwrap();
        }
    }
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses), (0, 0), "{stats:?}");
    assert_eq!(stats.uncached(Uncached::Clock), 64);
    // Other text is cached.
    for _ in 0..2 {
        sqlacache_sqlx::query_scalar::<i64>(sql)
            .bind("2020-01-01 now-ish".replace("now-ish", "12:00"))
            .fetch_one(&cache)
            .await
            .unwrap();
    }
    assert_eq!(cache.stats().hits, 1);
}

const PROVEN: &str = r#"
CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL, day text NOT NULL);
INSERT INTO notes VALUES (1, 'one', 'today'), (2, 'two', '2020-01-01');
CREATE FUNCTION jitter(notes) RETURNS float8 VOLATILE LANGUAGE sql AS $$ SELECT random() $$;
CREATE FUNCTION stamp(notes) RETURNS text STABLE LANGUAGE sql AS $$ SELECT now()::text $$;
CREATE FUNCTION shout(notes) RETURNS text IMMUTABLE LANGUAGE sql AS $$ SELECT upper($1.body) $$;
CREATE FUNCTION roll(text, text) RETURNS boolean VOLATILE LANGUAGE sql AS $$ SELECT random() < 2 $$;
CREATE OPERATOR ==~ (LEFTARG = text, RIGHTARG = text, FUNCTION = roll);
CREATE FUNCTION same(text, text) RETURNS boolean IMMUTABLE LANGUAGE sql AS $$ SELECT $1 = $2 $$;
CREATE OPERATOR === (LEFTARG = text, RIGHTARG = text, FUNCTION = same);
CREATE DOMAIN day_d AS date;
"#;

/// Every function, operator and cast a read uses is resolved by PostgreSQL; a read is cached
/// only when each is immutable, in whatever spelling it hides.
#[tokio::test]
async fn functions_operators_and_casts_in_every_spelling_are_judged_by_postgres() {
    let db = TestDb::with_schema(PROVEN).await;
    let cache = sqlacache_tests::builder(db.pool.clone()).build().await.unwrap();
    let refused = [
        // Attribute notation is a function call.
        ("SELECT count(*) FROM notes n WHERE n.jitter < 2", Uncached::Volatile),
        ("SELECT count(*) FROM notes n WHERE (n).jitter < 2", Uncached::Volatile),
        ("SELECT count(*) FROM notes WHERE notes.stamp <> ''", Uncached::Volatile),
        // A user operator over a volatile function.
        ("SELECT count(*) FROM notes WHERE body ==~ 'one'", Uncached::Volatile),
        ("SELECT count(*) FROM notes WHERE body OPERATOR(public.==~) 'one'", Uncached::Unparsable),
        // Casts through text read 'today' from the data at run time.
        ("SELECT count(*) FROM notes WHERE day::date > '2000-01-01'", Uncached::Volatile),
        ("SELECT count(*) FROM notes WHERE CAST(day AS day_d) > '2000-01-01'", Uncached::Volatile),
        ("SELECT count(*) FROM notes WHERE day::timestamptz > '2000-01-01'", Uncached::Volatile),
        // SQL value functions in any case and place.
        ("SELECT count(*) FROM notes WHERE body <> Current_User", Uncached::Clock),
    ];
    for (sql, reason) in refused {
        let sql = sql.replace("public.", &format!("{}.", db.schema));
        let before = cache.stats();
        for _ in 0..2 {
            count(&cache, &sql).await;
        }
        let after = cache.stats();
        assert_eq!(after.hits + after.misses, before.hits + before.misses, "{sql} was cached");
        assert!(after.uncached(reason) >= before.uncached(reason) + 2, "{sql}: not counted as {reason:?}: {after:?}");
    }
    for sql in [
        "SELECT count(*) FROM notes n WHERE n.shout = 'ONE'",
        "SELECT count(*) FROM notes WHERE day::int4 IS NULL AND false",
        "SELECT count(*) FROM notes WHERE body::varchar(10) = $1",
    ] {
        let hits = cache.stats().hits;
        for _ in 0..2 {
            sqlacache_sqlx::query_scalar::<i64>(AssertSqlSafe(sql)).bind("one").fetch_one(&cache).await.unwrap();
        }
        assert_eq!(cache.stats().hits, hits + 1, "{sql} is proven and cached: {:?}", cache.stats());
    }
}

/// When PostgreSQL cannot be asked (the role may not make temporary objects), nothing is
/// cached, and the reason says so.
#[tokio::test]
async fn a_read_postgres_cannot_vouch_for_is_not_cached() {
    // In a database of its own: the privilege is the database's, for every test's roles.
    let db = TestDb::in_own_database(PROVEN).await;
    let (role, options) = db.role("notemp").await;
    let database: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&db.pool).await.unwrap();
    let setup = format!(
        "GRANT SELECT ON notes TO {role}; REVOKE TEMP ON DATABASE {database} FROM PUBLIC; \
         GRANT TEMP ON DATABASE {database} TO CURRENT_USER"
    );
    sqlx::raw_sql(AssertSqlSafe(setup)).execute(&db.pool).await.unwrap();
    let pool = db.pool_with(1, options).await;
    let cache = sqlacache_tests::builder(pool).build().await.unwrap();
    for _ in 0..2 {
        assert_eq!(count(&cache, "SELECT count(*) FROM notes").await, 2);
    }
    let stats = cache.stats();
    assert_eq!(stats.uncached(Uncached::Unproven), 2, "{stats:?}");
    assert_eq!(stats.hits, 0);
}
