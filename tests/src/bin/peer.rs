//! Another process for the multi-process tests: a `CachedPool` with Redis (unless its URL is
//! `-`) and, with a last argument `feed`, the change feed, over a test's schema,
//! driven by commands on standard input, one per line, each answered by one line:
//!
//! - `get <id>`: the counter's value, read through the cache;
//! - `bump <id>`: adds one to the counter through the cache, and prints the new value;
//! - `ready`: waits until Redis answers and the bus (and the feed) is heard, then prints `ready`;
//! - `received`: how many invalidations this process received from others.
//!
//! ```sh
//! peer <database url> <schema> <redis url|-> <key prefix> <memory capacity> <lease ms> [feed]
//! ```

use sqlacache_sqlx::testing::Probe as _;
use sqlacache_sqlx::CachedPool;
use sqlacache_tests::Counter;
use sqlx::postgres::PgConnectOptions;
use std::io::{BufRead, Write};
use std::time::Duration;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (feed, args) = match args.split_last() {
        Some((last, rest)) if last == "feed" => (true, rest),
        _ => (false, args.as_slice()),
    };
    let [_, database, schema, redis, prefix, memory, lease] = args else {
        panic!("usage: peer <database url> <schema> <redis url|-> <key prefix> <memory capacity> <lease ms> [feed]");
    };
    let options: PgConnectOptions = database.parse().expect("a PostgreSQL URL");
    let pool = sqlx::PgPool::connect_with(options.options([("search_path", schema.as_str())]))
        .await
        .expect("connect to PostgreSQL");
    let mut builder = CachedPool::builder(pool)
        .model::<Counter>()
        .default_ttl(Duration::from_secs(60))
        .memory_capacity(memory.parse().expect("a capacity"))
        .lease(Duration::from_millis(lease.parse().expect("a lease in ms")));
    if redis != "-" {
        builder = builder.redis(redis).key_prefix(prefix);
    }
    if feed {
        builder = builder.change_feed();
    }
    let cache = builder.build().await.expect("build the pool");
    let (commands, mut replies) = (std::io::stdin().lock().lines(), std::io::stdout().lock());
    for line in commands {
        let line = line.expect("read a command");
        let reply = match line.split_once(' ') {
            Some(("get", id)) => {
                let id: i32 = id.parse().expect("an id");
                cache.get::<Counter>(id).await.expect("read").map_or(-1, |c| c.v).to_string()
            }
            Some(("bump", id)) => {
                let id: i32 = id.parse().expect("an id");
                let v: i64 = sqlx::query_scalar("UPDATE counters SET v = v + 1 WHERE id = $1 RETURNING v")
                    .bind(id)
                    .fetch_one(&cache)
                    .await
                    .expect("write");
                v.to_string()
            }
            None if line == "ready" => {
                while !cache.tiers_ready_for_tests() || !cache.feed_trusted_for_tests() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                "ready".to_owned()
            }
            None if line == "received" => cache.stats().received.to_string(),
            _ => panic!("unknown command {line:?}"),
        };
        writeln!(replies, "{reply}").expect("answer");
        replies.flush().expect("answer");
    }
}
