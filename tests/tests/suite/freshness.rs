//! A bounded run of the freshness checker: concurrent random reads and writes, and no cached
//! read may differ from the database when no write overlapped it.

use sqlacache_tests::checker::{run, Config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_workloads_never_read_stale_data() {
    for seed in [1, 2, 3] {
        let report = run(Config { seed, ops: 7_000, clients: 8 }).await;
        assert!(report.stale.is_empty(), "{} stale reads; first:\n{}", report.stale.len(), report.stale[0]);
        assert!(report.reads_checked > 500, "seed {seed}: only {} reads were compared", report.reads_checked);
        assert!(report.cache_hits > 500, "seed {seed}: only {} cache hits", report.cache_hits);
    }
}
