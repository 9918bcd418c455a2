//! Long runs of the freshness checker.
//!
//! ```sh
//! cargo run --release -p sqlacache-tests --bin freshness -- --ops 1000000 --seed 7 [--clients 8] \
//!     [--redis [--memory-capacity 0]] [--feed] [--stale]
//! ```
//!
//! `--redis` runs two pools sharing the Redis at `REDIS_URL` (two tiers each, or Redis only with
//! `--memory-capacity 0`), the clients taking turns between them. `--feed` turns the change feed
//! on and sends a third of the writes straight to PostgreSQL, around the pools. `--stale` gives
//! every table a 5 ms TTL and stale windows of a minute, so most hits are of expired entries.
//!
//! Prints operations per second, reads served from the cache, reads compared, and stale reads
//! found; exits non-zero if any read was stale.

use sqlacache_tests::checker::{run, Config};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        Some(i) => args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{name} takes a number")),
        None => default,
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let redis = std::env::args().any(|a| a == "--redis").then(|| {
        let url: &'static str = Box::leak(sqlacache_tests::redis::redis_url().into_boxed_str());
        sqlacache_tests::redis::require_shared_redis();
        (url, arg("--memory-capacity", 4 * 1024 * 1024))
    });
    let feed = std::env::args().any(|a| a == "--feed");
    let stale = std::env::args().any(|a| a == "--stale");
    let config =
        Config { seed: arg("--seed", 1), ops: arg("--ops", 100_000), clients: arg("--clients", 8), redis, feed, stale };
    let report = run(config).await;
    let secs = report.elapsed.as_secs_f64();
    println!("seed:            {}", config.seed);
    if let Some((url, memory)) = config.redis {
        println!("redis:           two pools on {url}, in-process tier {memory} bytes each");
    }
    if config.stale {
        println!("stale windows:   entries expire after 5 ms and are served stale for up to a minute");
    }
    if config.feed {
        println!("feed:            on; a third of the writes go around the pools");
    }
    println!("operations:      {} in {secs:.1}s ({:.0} ops/s)", report.ops, report.ops as f64 / secs);
    println!("cache hits:      {}", report.cache_hits);
    if config.stale {
        println!("of which stale:  {} (past their TTL)", report.stale_hits);
    }
    println!("reads compared:  {}", report.reads_checked);
    println!("stale reads:     {}", report.stale.len());
    if let Some(stats) = &report.redis_stats {
        println!("redis:           {stats}");
    }
    for stale in report.stale.iter().take(3) {
        println!("\n{stale}");
    }
    if !report.stale.is_empty() {
        std::process::exit(1);
    }
}
