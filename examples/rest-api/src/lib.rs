//! The example's application: its routes over a `CachedPool`, the table it serves, and the
//! `/metrics` route (see `main.rs` for how to run it).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sqlacache_sqlx::{Cacheable, CachedPool};

/// A row of the example's table.
#[derive(Debug, sqlx::FromRow, serde::Serialize, serde::Deserialize, Cacheable)]
#[cache(table = "sqlacache_example_users", ops(all), ttl = 600)]
pub struct User {
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

/// What the routes share.
#[derive(Clone)]
pub struct App {
    /// The cached pool.
    pub cache: CachedPool,
    /// The Prometheus recorder's handle, which renders `/metrics`.
    pub metrics: PrometheusHandle,
}

async fn get_user(State(App { cache, .. }): State<App>, Path(id): Path<i64>) -> Reply<User> {
    match cache.get::<User>(id).await.map_err(server_error)? {
        Some(user) => Ok(Json(user)),
        None => Err((StatusCode::NOT_FOUND, format!("no user {id}"))),
    }
}

async fn rename_user(
    State(App { cache, .. }): State<App>,
    Path(id): Path<i64>,
    Json(body): Json<Rename>,
) -> Reply<User> {
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

async fn list_users(State(App { cache, .. }): State<App>, Query(filter): Query<Filter>) -> Reply<Vec<User>> {
    let users = sqlacache_sqlx::query_as::<User>("SELECT * FROM sqlacache_example_users WHERE active = $1 ORDER BY id")
        .bind(filter.active.unwrap_or(true))
        .fetch_all(&cache)
        .await
        .map_err(server_error)?;
    Ok(Json(users))
}

async fn stats(State(App { cache, .. }): State<App>) -> String {
    let s = cache.stats();
    format!(
        "hits {} (from Redis {}), misses {}, invalidations received from other instances {}, \
         strict writes that waited out their deadline {}\n",
        s.hits, s.redis_hits, s.misses, s.received, s.strict_deadlines
    )
}

/// The cache's counters in Prometheus text format: copied into the facade now, so a scrape sees
/// exact totals.
async fn metrics(State(App { cache, metrics }): State<App>) -> String {
    cache.record_metrics();
    metrics.render()
}

/// Installs the process's Prometheus recorder (once per process).
pub fn install_metrics() -> Result<PrometheusHandle, Box<dyn std::error::Error>> {
    Ok(PrometheusBuilder::new().install_recorder()?)
}

/// Creates the example's table with three users, unless it is there.
pub async fn create_table(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(
        // One instance at a time (instances may start together): the lock lasts until the
        // implicit transaction of this string ends.
        "SELECT pg_advisory_xact_lock(hashtext('sqlacache_example'));
         CREATE TABLE IF NOT EXISTS sqlacache_example_users (id bigint PRIMARY KEY, name text NOT NULL, active boolean NOT NULL);
         INSERT INTO sqlacache_example_users VALUES (1, 'Ada', true), (2, 'Alan', true), (3, 'Edsger', false)
         ON CONFLICT DO NOTHING;",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The routes.
pub fn router(app: App) -> Router {
    Router::new()
        .route("/users", get(list_users))
        .route("/users/{id}", get(get_user).put(rename_user))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics))
        .with_state(app)
}
