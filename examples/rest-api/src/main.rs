//! A small REST API served from a `CachedPool` that shares Redis with every other instance.
//!
//! ```sh
//! cargo run -p rest-api -- 3000 --strict &                   # uses DATABASE_URL and REDIS_URL
//! cargo run -p rest-api -- 3001 --strict &
//! curl localhost:3000/users/1                                # cached in the instance on 3000
//! curl -X PUT localhost:3001/users/1 -H 'content-type: application/json' -d '{"name":"Grace"}'
//! curl localhost:3000/users/1                                # fresh: {"id":1,"name":"Grace",..}
//! curl localhost:3000/stats                                  # hits, Redis hits, invalidations received
//! curl localhost:3000/metrics                                # the same, in Prometheus text format
//! ```
//!
//! With `--strict` (`Consistency::Strict`) the `PUT` returns only once the other instance has
//! dropped its in-process copy, so the `GET` after it is fresh however soon it follows; without
//! it, the other instance may serve its copy until the invalidation arrives (within the lease).
//!
//! Routes: `GET /users/{id}`, `PUT /users/{id}` (JSON `{"name": ..}`), `GET /users?active=true`,
//! `GET /stats`, `GET /metrics` (the cache's metrics through the `metrics` facade, rendered by
//! `metrics-exporter-prometheus`).

use rest_api::{create_table, install_metrics, router, App, User};
use sqlacache_sqlx::{CachedPool, Consistency};

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
    create_table(&pool).await?;
    let metrics = install_metrics()?;
    let cache = CachedPool::builder(pool)
        .model::<User>()
        .redis(&redis)
        .key_prefix("sqlacache_example")
        .consistency(consistency)
        .build()
        .await?;
    let app = router(App { cache, metrics });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on http://127.0.0.1:{port} ({consistency:?})");
    axum::serve(listener, app).await?;
    Ok(())
}
