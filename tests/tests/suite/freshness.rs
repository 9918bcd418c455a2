//! A bounded run of the freshness checker: concurrent random reads and writes, and no cached
//! read may differ from the database when no write overlapped it.

use sqlacache_tests::checker::{run, Config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_workloads_never_read_stale_data() {
    for seed in [1, 2, 3] {
        let report = run(Config { seed, ops: 7_000, clients: 8, redis: None, feed: false, stale: false }).await;
        assert!(report.stale.is_empty(), "{} stale reads; first:\n{}", report.stale.len(), report.stale[0]);
        assert!(report.reads_checked > 500, "seed {seed}: only {} reads were compared", report.reads_checked);
        // Only that the cache took part: how many reads it answers depends on how writes, schema
        // changes and reads interleave on the machine, between about 500 and 900 per seed here.
        assert!(report.cache_hits > 200, "seed {seed}: only {} cache hits", report.cache_hits);
    }
}

/// The same workload on two pools sharing Redis, with in-process tiers and with Redis only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_workloads_on_two_pools_sharing_redis_never_read_stale_data() {
    sqlacache_tests::redis::require_shared_redis();
    let url: &'static str = Box::leak(sqlacache_tests::redis::redis_url().into_boxed_str());
    for (seed, memory) in [(4, 4 << 20), (5, 0)] {
        let report =
            run(Config { seed, ops: 5_000, clients: 8, redis: Some((url, memory)), feed: false, stale: false }).await;
        assert!(report.stale.is_empty(), "{} stale reads; first:\n{}", report.stale.len(), report.stale[0]);
        assert!(report.reads_checked > 300, "seed {seed}: only {} reads were compared", report.reads_checked);
        assert!(report.cache_hits > 100, "seed {seed}: only {} cache hits", report.cache_hits);
    }
}

/// The same workload with the change feed on, a third of the writes going straight to
/// PostgreSQL around the pool: once the feed has delivered them, no cached read is stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_workloads_with_writes_around_the_pool_never_read_stale_data_through_the_feed() {
    let report = run(Config { seed: 6, ops: 5_000, clients: 8, redis: None, feed: true, stale: false }).await;
    assert!(report.stale.is_empty(), "{} stale reads; first:\n{}", report.stale.len(), report.stale[0]);
    assert!(report.reads_checked > 300, "only {} reads were compared", report.reads_checked);
    assert!(report.cache_hits > 100, "only {} cache hits", report.cache_hits);
}

/// The same workload with stale windows on every table and entries that expire after 5 ms: most
/// hits are of expired entries, served while they are refreshed, and none is of an entry a write
/// invalidated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_workloads_with_stale_windows_never_read_invalidated_entries() {
    let report = run(Config { seed: 8, ops: 7_000, clients: 8, redis: None, feed: false, stale: true }).await;
    assert!(report.stale.is_empty(), "{} stale reads; first:\n{}", report.stale.len(), report.stale[0]);
    assert!(report.reads_checked > 500, "only {} reads were compared", report.reads_checked);
    assert!(report.cache_hits > 200, "only {} cache hits", report.cache_hits);
    assert!(report.stale_hits > 50, "only {} hits of expired entries", report.stale_hits);
}
