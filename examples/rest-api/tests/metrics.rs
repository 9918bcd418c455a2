//! The example's `/metrics` route: a scrape finds the cache's counters in Prometheus text
//! format, and they move with the requests served.

use rest_api::{create_table, install_metrics, router, App, User};
use sqlacache_sqlx::CachedPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::str::FromStr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET path` on the server at `port`; the body.
async fn get(port: u16, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("the example listens");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{path}: {reply}");
    reply.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()
}

/// The value of the sample of `name` whose labels include every one of `labels`.
fn sample(scrape: &str, name: &str, labels: &[&str]) -> f64 {
    scrape
        .lines()
        .filter(|line| line.starts_with(name) && !line.starts_with('#'))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .next()
        .unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{scrape}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_finds_the_counters_moving() {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let admin = PgPoolOptions::new().max_connections(1).connect(&url).await.unwrap_or_else(|e| {
        panic!("cannot reach PostgreSQL at {url}: {e}; start it (see the README's test section) or set DATABASE_URL")
    });
    // A schema of the test's own, so it never touches the example's table elsewhere.
    let schema = format!("sqlacache_t_rest_{}", std::process::id());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .unwrap();
    let options = PgConnectOptions::from_str(&url).unwrap().options([("search_path", schema.as_str())]);
    let pool = PgPoolOptions::new().max_connections(4).connect_with(options).await.unwrap();
    create_table(&pool).await.unwrap();
    let cache = CachedPool::builder(pool)
        .model::<User>()
        .key_prefix(&schema)
        .metrics_every(std::time::Duration::from_millis(50))
        .build()
        .await
        .unwrap();
    let handle = install_metrics().unwrap();
    let app = router(App { cache, metrics: handle.clone() });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let pool_label = format!("pool=\"{schema}\"");
    let hits = |scrape: &str| sample(scrape, "sqlacache_reads", &[&pool_label, "result=\"hit\"", "tier=\"memory\""]);
    let misses = |scrape: &str| sample(scrape, "sqlacache_reads", &[&pool_label, "result=\"miss\""]);
    get(port, "/users/1").await;
    let before = get(port, "/metrics").await;
    assert_eq!((misses(&before), hits(&before)), (1.0, 0.0), "{before}");
    for _ in 0..3 {
        get(port, "/users/1").await;
    }
    get(port, "/users/2").await;
    let after = get(port, "/metrics").await;
    assert_eq!((misses(&after), hits(&after)), (2.0, 3.0), "{after}");
    assert!(after.contains("# TYPE sqlacache_reads counter"), "{after}");
    assert!(after.contains("sqlacache_memory_entries"), "{after}");

    // Without a scrape, the pool copies its totals by itself.
    for _ in 0..2 {
        get(port, "/users/2").await;
    }
    let start = std::time::Instant::now();
    while hits(&handle.render()) != 5.0 {
        assert!(start.elapsed() < std::time::Duration::from_secs(30), "not copied: {}", handle.render());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    server.abort();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE"))).execute(&admin).await.unwrap();
}
