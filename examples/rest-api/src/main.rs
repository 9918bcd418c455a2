//! A small REST API served from a `CachedPool` that shares Redis with every other instance.
//!
//! ```sh
//! cargo run -p rest-api -- 3000 --strict &                   # uses DATABASE_URL and REDIS_URL
//! cargo run -p rest-api -- 3001 --strict &
//! curl localhost:3000/users/1                                # cached in the instance on 3000
//! curl -X PUT localhost:3001/users/1 -H 'content-type: application/json' -d '{"name":"Grace"}'
//! curl localhost:3000/users/1                                # fresh: {"id":1,"name":"Grace",..}
//! curl localhost:3000/stats                                  # hits, Redis hits, invalidations received
//! ```
//!
//! With `--strict` (`Consistency::Strict`) the `PUT` returns only once the other instance has
//! dropped its in-process copy, so the `GET` after it is fresh however soon it follows; without
//! it, the other instance may serve its copy until the invalidation arrives (within the lease).
//!
//! Routes: `GET /users/{id}`, `PUT /users/{id}` (JSON `{"name": ..}`), `GET /users?active=true`,
//! `GET /stats`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use sqlacache_sqlx::{Cacheable, CachedPool, Consistency};

#[derive(Debug, sqlx::FromRow, serde::Serialize, serde::Deserialize, Cacheable)]
#[cache(table = "sqlacache_example_users", ops(all), ttl = 600)]
struct User {
    #[cache(pk)]
    id: i64,
    name: String,
    active: bool,
}

#[derive(serde::Deserialize)]
struct Rename {
    name: String,
}

#[derive(serde::Deserialize)]
struct Filter {
    active: Option<bool>,
}

type Reply<T> = Result<Json<T>, (StatusCode, String)>;

fn server_error(error: sqlx::Error) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
}

async fn get_user(State(cache): State<CachedPool>, Path(id): Path<i64>) -> Reply<User> {
    match cache.get::<User>(id).await.map_err(server_error)? {
        Some(user) => Ok(Json(user)),
        None => Err((StatusCode::NOT_FOUND, format!("no user {id}"))),
    }
}

async fn rename_user(State(cache): State<CachedPool>, Path(id): Path<i64>, Json(body): Json<Rename>) -> Reply<User> {
    // A plain sqlx write through the pool: it invalidates this row here, in Redis, and in every
    // other instance before it returns.
    let user = sqlx::query_as::<_, User>("UPDATE sqlacache_example_users SET name = $1 WHERE id = $2 RETURNING *")
        .bind(&body.name)
        .bind(id)
        .fetch_optional(&cache)
        .await
        .map_err(server_error)?;
    user.map(Json).ok_or((StatusCode::NOT_FOUND, format!("no user {id}")))
}

async fn list_users(State(cache): State<CachedPool>, Query(filter): Query<Filter>) -> Reply<Vec<User>> {
    let users = sqlacache_sqlx::query_as::<User>("SELECT * FROM sqlacache_example_users WHERE active = $1 ORDER BY id")
        .bind(filter.active.unwrap_or(true))
        .fetch_all(&cache)
        .await
        .map_err(server_error)?;
    Ok(Json(users))
}

async fn stats(State(cache): State<CachedPool>) -> String {
    let s = cache.stats();
    format!(
        "hits {} (from Redis {}), misses {}, invalidations received from other instances {}, \
         strict writes that waited out their deadline {}\n",
        s.hits, s.redis_hits, s.misses, s.received, s.strict_deadlines
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut port = 3000;
    let mut consistency = Consistency::Lease;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--strict" => consistency = Consistency::Strict,
            _ => port = arg.parse().map_err(|_| format!("usage: rest-api [PORT] [--strict], not {arg:?}"))?,
        }
    }
    let database = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let pool = sqlx::PgPool::connect(&database).await?;
    sqlx::raw_sql(
        // One instance at a time (instances may start together): the lock lasts until the
        // implicit transaction of this string ends.
        "SELECT pg_advisory_xact_lock(hashtext('sqlacache_example'));
         CREATE TABLE IF NOT EXISTS sqlacache_example_users (id bigint PRIMARY KEY, name text NOT NULL, active boolean NOT NULL);
         INSERT INTO sqlacache_example_users VALUES (1, 'Ada', true), (2, 'Alan', true), (3, 'Edsger', false)
         ON CONFLICT DO NOTHING;",
    )
    .execute(&pool)
    .await?;
    let cache = CachedPool::builder(pool)
        .model::<User>()
        .redis(&redis)
        .key_prefix("sqlacache_example")
        .consistency(consistency)
        .build()
        .await?;
    let app = Router::new()
        .route("/users", get(list_users))
        .route("/users/{id}", get(get_user).put(rename_user))
        .route("/stats", get(stats))
        .with_state(cache);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on http://127.0.0.1:{port} ({consistency:?})");
    axum::serve(listener, app).await?;
    Ok(())
}
