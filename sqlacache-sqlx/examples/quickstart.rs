//! A miss, a hit, a write that invalidates, a fresh read, and a cached join.
//!
//! ```sh
//! cargo run --example quickstart   # uses DATABASE_URL, default postgres://postgres@127.0.0.1:5432/test
//! ```

use sqlacache_sqlx::{Cacheable, CachedPool, CachedRow};
use std::time::Duration;

#[derive(Debug, sqlx::FromRow, serde::Serialize, serde::Deserialize, Cacheable)]
#[cache(table = "sqlacache_quickstart_users", ops(get, fetch, count, exists), ttl = 900)]
struct User {
    #[cache(pk)]
    id: i64,
    name: String,
    active: bool,
}

/// A join result: no table or key of its own.
#[derive(Debug, sqlx::FromRow, serde::Serialize, serde::Deserialize, CachedRow)]
struct Spend {
    name: String,
    total: i64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let pool = sqlx::PgPool::connect(&url)
        .await
        .map_err(|e| format!("cannot reach PostgreSQL at {url}: {e} (set DATABASE_URL, or start the server)"))?;
    sqlx::raw_sql(
        // One run at a time: the lock lasts until the implicit transaction of this string ends.
        "SELECT pg_advisory_xact_lock(hashtext('sqlacache_quickstart'));
         DROP TABLE IF EXISTS sqlacache_quickstart_orders, sqlacache_quickstart_users;
         CREATE TABLE sqlacache_quickstart_users (id bigint PRIMARY KEY, name text NOT NULL, active boolean NOT NULL);
         CREATE TABLE sqlacache_quickstart_orders (id bigint PRIMARY KEY,
             user_id bigint NOT NULL REFERENCES sqlacache_quickstart_users(id), total bigint NOT NULL);
         INSERT INTO sqlacache_quickstart_users VALUES (1, 'Ada', true), (2, 'Grace', true), (3, 'Linus', false);
         INSERT INTO sqlacache_quickstart_orders VALUES (10, 1, 30), (11, 1, 12), (12, 2, 25);",
    )
    .execute(&pool)
    .await?;

    let cache =
        CachedPool::builder(pool.clone()).model::<User>().default_ttl(Duration::from_secs(3600)).build().await?;

    let user = cache.get::<User>(1_i64).await?;
    println!("1. get(1)      -> {user:?}   (miss: read from PostgreSQL)");
    let user = cache.get::<User>(1_i64).await?;
    println!("2. get(1)      -> {user:?}   (hit: served from memory)");
    let count = "SELECT count(*) FROM sqlacache_quickstart_users WHERE active";
    let active: i64 = sqlacache_sqlx::query_scalar(count).fetch_one(&cache).await?;
    println!("3. count       -> {active} active users   (miss)");
    let active: i64 = sqlacache_sqlx::query_scalar(count).fetch_one(&cache).await?;
    println!("   count       -> {active} active users   (hit)");

    sqlx::query("UPDATE sqlacache_quickstart_users SET name = $1 WHERE id = $2")
        .bind("Ada Lovelace")
        .bind(1_i64)
        .execute(&cache)
        .await?;
    println!("4. UPDATE users SET name = 'Ada Lovelace' WHERE id = 1   (through the cache: invalidates row 1)");

    let user = cache.get::<User>(1_i64).await?;
    println!("5. get(1)      -> {user:?}   (fresh)");
    let untouched = cache.get::<User>(2_i64).await?;
    println!("6. get(2)      -> {untouched:?}");
    let again = cache.get::<User>(2_i64).await?;
    println!("   get(2)      -> {again:?}   (row 2 was not written: still a hit)");

    let spend_sql = "SELECT u.name, sum(o.total)::int8 AS total FROM sqlacache_quickstart_users u \
                     JOIN sqlacache_quickstart_orders o ON o.user_id = u.id GROUP BY u.name ORDER BY u.name";
    let spend = sqlacache_sqlx::query_as::<Spend>(spend_sql).fetch_all(&cache).await?;
    println!("7. join        -> {spend:?}   (miss)");
    sqlx::query("INSERT INTO sqlacache_quickstart_orders VALUES (13, 2, 5)").execute(&cache).await?;
    println!("8. INSERT INTO orders ..   (invalidates the join)");
    let spend = sqlacache_sqlx::query_as::<Spend>(spend_sql).fetch_all(&cache).await?;
    println!("9. join        -> {spend:?}   (fresh)");

    let s = cache.stats();
    println!(
        "\nstats: {} hits, {} misses, {} invalidations, {} fills rejected",
        s.hits, s.misses, s.invalidations, s.fills_rejected
    );
    sqlx::query("DROP TABLE sqlacache_quickstart_orders, sqlacache_quickstart_users").execute(&pool).await?;
    Ok(())
}
