//! The contract every store keeps, and the rules a pool builds on its shared tier, each tested
//! against a tier that fails on purpose ([`MockServer`]): one fault at a time, exactly where it
//! matters, without a server.

use sqlacache_core::key::Key;
use sqlacache_core::redis::RedisStore;
use sqlacache_core::tier::{Lookup, SharedTier, Store};
use sqlacache_core::{MemoryStore, Tag};
use sqlacache_sqlx::testing::Probe as _;
use sqlacache_sqlx::CachedPool;
use sqlacache_tests::mock_tier::{MockClient, MockServer};
use sqlacache_tests::redis::{redis_url, require_shared_redis, unique_prefix};
use sqlacache_tests::{until, Counter, TestDb, COUNTERS};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TTL: Duration = Duration::from_secs(60);

async fn is_miss<S: Store>(store: &S, key: Key, tags: &[Tag]) -> bool {
    matches!(store.lookup(key, tags, TTL).await.expect("lookup"), Lookup::Miss(_))
}

async fn hit<S: Store>(store: &S, key: Key, tags: &[Tag]) -> Option<Vec<u8>> {
    match store.lookup(key, tags, TTL).await.expect("lookup") {
        Lookup::Hit(bytes) => Some(bytes),
        Lookup::Miss(_) => None,
    }
}

/// Fills `key` against a ticket taken now.
async fn fill<S: Store>(store: &S, key: Key, tags: &[Tag], bytes: &[u8]) {
    let ticket = store.ticket(tags, TTL).await.expect("ticket");
    store.put(key, &ticket, TTL, bytes).await.expect("put");
}

/// The freshness contract of `sqlacache_core::tier`, for one store.
async fn keeps_the_contract<S: Store>(store: &S, name: &str) {
    let (key, other) = (Key(1), Key(2));
    let tags = [Tag::Table(7), Tag::Row(42)];
    let Lookup::Miss(ticket) = store.lookup(key, &tags, TTL).await.expect("lookup") else {
        panic!("{name}: a hit in an empty store");
    };
    // A write commits (and invalidates) while the fill reads the database.
    store.invalidate(&[Tag::Row(42)]).await.unwrap();
    store.put(key, &ticket, TTL, b"old").await.unwrap();
    assert!(is_miss(store, key, &tags).await, "{name}: a fill older than an invalidation of its tags was served");

    // A ticket taken after the invalidation fills for good.
    fill(store, key, &tags, b"new").await;
    assert_eq!(hit(store, key, &tags).await.as_deref(), Some(&b"new"[..]), "{name}: a fresh fill");
    // A straddling fill of one key does not spoil another whose tags were not touched.
    let ticket = store.ticket(&[Tag::Table(9)], TTL).await.unwrap();
    store.invalidate(&[Tag::Row(43), Tag::Table(8), Tag::Rows(7)]).await.unwrap();
    store.put(other, &ticket, TTL, b"other").await.unwrap();
    assert_eq!(hit(store, key, &tags).await.as_deref(), Some(&b"new"[..]), "{name}: other tags leave it");
    assert_eq!(hit(store, other, &[Tag::Table(9)]).await.as_deref(), Some(&b"other"[..]), "{name}: other key");

    // Any of its tags ends it; so does invalidating everything.
    store.invalidate(&[Tag::Table(7)]).await.unwrap();
    assert!(is_miss(store, key, &tags).await, "{name}: served after its table was invalidated");
    fill(store, key, &tags, b"newer").await;
    assert_eq!(hit(store, key, &tags).await.as_deref(), Some(&b"newer"[..]), "{name}: refilled");
    store.invalidate(&[Tag::All]).await.unwrap();
    assert!(is_miss(store, key, &tags).await, "{name}: served after everything was invalidated");
    assert!(is_miss(store, other, &[Tag::Table(9)]).await, "{name}: the other key after everything");
}

#[tokio::test]
async fn every_store_keeps_the_freshness_contract() {
    keeps_the_contract(&MemoryStore::new(1 << 20), "in-process").await;
    keeps_the_contract(MockServer::new().client().as_ref(), "mock").await;
    require_shared_redis();
    let redis = RedisStore::connect(&redis_url(), &unique_prefix("contract"), "db", Duration::from_secs(2)).unwrap();
    assert!(redis.wait_connected(Duration::from_secs(5)).await, "connect to the shared Redis");
    keeps_the_contract(&redis, "redis").await;
    redis.invalidate_all().await.unwrap();
}

const LEASE: Duration = Duration::from_millis(300);

async fn pool(db: &TestDb, tier: &Arc<MockClient>) -> CachedPool {
    sqlacache_tests::builder(db.pool.clone())
        .model::<Counter>()
        .default_ttl(TTL)
        .shared_tier(tier.clone() as Arc<dyn SharedTier>)
        .lease(LEASE)
        .build()
        .await
        .expect("build a pool on the mock tier")
}

/// Two pools (two processes) on one mock tier, each trusting its in-process tier, with row 1
/// cached in B's.
async fn two_processes(db: &TestDb) -> (Arc<MockClient>, CachedPool, Arc<MockClient>, CachedPool) {
    let server = MockServer::new();
    let (ca, cb) = (server.client(), server.client());
    let (a, b) = (pool(db, &ca).await, pool(db, &cb).await);
    // On a loaded machine a heartbeat may come back late and B stop trusting its tier for a
    // while (its reads then go to the shared tier): read until one is served in-process.
    let start = Instant::now();
    loop {
        until("both pools trust their tiers", || a.tiers_ready_for_tests() && b.tiers_ready_for_tests()).await;
        assert_eq!(value(&b, 1).await, 0);
        let local = local_hits(&b);
        assert_eq!(value(&b, 1).await, 0);
        if local_hits(&b) == local + 1 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "row 1 is never served from B's in-process tier");
    }
    (ca, a, cb, b)
}

/// Hits served from the in-process tier.
fn local_hits(cache: &CachedPool) -> u64 {
    let stats = cache.stats();
    stats.hits - stats.redis_hits
}

async fn value(cache: &CachedPool, id: i32) -> i64 {
    cache.get::<Counter>(id).await.unwrap().expect("the row exists").v
}

async fn bump(cache: &CachedPool) -> i64 {
    sqlx::query_scalar("UPDATE counters SET v = v + 1 WHERE id = 1 RETURNING v").fetch_one(cache).await.unwrap()
}

/// Reads row 1 through `b` until it shows `expected`; every read on the way is counted.
async fn read_until(b: &CachedPool, expected: i64, what: &str) -> usize {
    let (start, mut stale) = (Instant::now(), 0);
    while value(b, 1).await != expected {
        stale += 1;
        assert!(start.elapsed() < Duration::from_secs(10), "{what}: B still serves a value older than {expected}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stale
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_invalidation_is_caught_by_the_gap_in_its_publishers_numbers() {
    let db = TestDb::with_schema(COUNTERS).await;
    let (_ca, a, cb, b) = two_processes(&db).await;
    // B's copy of A's next invalidation is lost without an error.
    cb.lose_invalidations(1);
    assert_eq!(bump(&a).await, 1);
    let (publisher, seq) = a.bus_position_for_tests().unwrap();
    // B hears A's next heartbeat, which carries the number of A's last invalidation, and sees
    // the gap.
    until("B hears A again", || b.heard_from_for_tests(publisher) >= seq).await;
    assert_eq!(value(&b, 1).await, 1, "the gap did not stop B serving its in-process copy");
    // B drops its tier when it next hears its own heartbeat, before it trusts the tier again.
    until("B drops its in-process tier", || b.stats().tier_drops >= 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_that_failed_is_widened_once_the_tier_answers() {
    let db = TestDb::with_schema(COUNTERS).await;
    let (ca, a, _cb, b) = two_processes(&db).await;
    // A's invalidation fails: neither applied to the shared tier nor published.
    ca.fail_invalidations(1);
    assert_eq!(bump(&a).await, 1, "the write itself succeeds");
    assert_eq!(a.stats().redis_errors, 1);
    // A reads PostgreSQL while its breaker is open.
    assert_eq!(value(&a, 1).await, 1);
    // When the tier answers, A invalidates everything and tells B: B is fresh again without
    // ever having heard of the write itself.
    read_until(&b, 1, "after A's widened invalidation").await;
    assert!(b.stats().received >= 1, "B heard A's widened invalidation");
    until("A closes its breaker", || a.tiers_ready_for_tests()).await;
    assert_eq!(value(&a, 1).await, 1);
    assert!(a.stats().degraded >= 1, "A read PostgreSQL while its breaker was open");
}

/// A read that fails on the shared tier (a slow reply on a busy machine, say) cannot make any
/// value stale and says nothing about lost invalidations: it costs shared-tier reads until the
/// next heartbeat, never the in-process tier, and nothing is widened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_read_keeps_the_in_process_tier_and_widens_nothing() {
    let db = TestDb::with_schema(COUNTERS).await;
    let (_ca, a, cb, b) = two_processes(&db).await;
    let (errors, heard, drops) = (b.stats().redis_errors, a.stats().received, b.stats().tier_drops);
    // Row 2 is in neither tier: B looks in the shared tier, and the lookup fails.
    cb.fail_reads(1);
    assert_eq!(value(&b, 2).await, 0, "the read itself succeeds");
    assert_eq!(cb.reads_to_fail(), 0, "the lookup ran");
    assert_eq!(b.stats().redis_errors, errors + 1);
    until("B reads the shared tier again", || b.tiers_ready_for_tests()).await;
    // Had the failure opened B's breaker, B would have invalidated everything on recovery and
    // told A so.
    assert_eq!(a.stats().received, heard, "a failed read was widened");
    if b.stats().tier_drops == drops {
        // (Unless a heartbeat came back late on a loaded machine, which drops the tier.)
        let local = local_hits(&b);
        assert_eq!(value(&b, 1).await, 0);
        assert_eq!(local_hits(&b), local + 1, "row 1 is still served from B's in-process tier");
    }
    // Writes still reach B.
    assert_eq!(bump(&a).await, 1);
    read_until(&b, 1, "a write after the failed read").await;
}

/// A writer whose invalidations keep failing while the bus works (a frozen cluster node holding
/// the tags, the channel on another) tells the others on the bus alone: they drop their copies
/// at once, instead of serving them until the writer can widen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_that_keeps_failing_still_reaches_the_others_by_the_bus() {
    let db = TestDb::with_schema(COUNTERS).await;
    let (ca, a, cb, b) = two_processes(&db).await;
    // Every invalidation of A fails from now on (the widening ones too), and B cannot read the
    // shared tier (the node holding the tags is frozen for it too); publishes still work.
    ca.fail_invalidations(usize::MAX);
    cb.fail_reads(usize::MAX);
    assert_eq!(bump(&a).await, 1, "the write itself succeeds");
    read_until(&b, 1, "A's tags cannot be invalidated").await;
    assert!(b.stats().received >= 1, "B heard A's invalidation on the bus: {:?}", b.stats());
    ca.fail_invalidations(0);
    cb.fail_reads(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_silent_without_an_error_stops_the_in_process_tier_within_the_lease() {
    let db = TestDb::with_schema(COUNTERS).await;
    let (_ca, a, cb, b) = two_processes(&db).await;
    cb.deafen(true);
    let returned = Instant::now();
    assert_eq!(bump(&a).await, 1);
    read_until(&b, 1, "B hears nothing").await;
    let seen_at = returned.elapsed();
    assert!(!b.tiers_ready_for_tests(), "B no longer trusts its in-process tier");
    // Every read of B is now a shared-tier read, and fresh.
    let local = local_hits(&b);
    for _ in 0..5 {
        assert_eq!(value(&b, 1).await, 1);
    }
    assert_eq!(local_hits(&b), local, "B served its in-process tier while deaf");
    cb.deafen(false);
    until("B trusts its tier again", || b.tiers_ready_for_tests()).await;
    assert_eq!(bump(&a).await, 2);
    read_until(&b, 2, "B hears again").await;
    eprintln!("a deaf process served the old value for {seen_at:?} (lease {LEASE:?})");
}

/// One process is strict in two tiers: a read of the writing process that runs while the
/// shared tier still holds the old value (the write invalidated here, and its invalidation is
/// on its way there) may take that value from the shared tier, but once the write has
/// returned, no read of the process serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_during_the_shared_invalidation_never_outlives_the_write() {
    let db = TestDb::with_schema(COUNTERS).await;
    let server = MockServer::new();
    let client = server.client();
    let a = pool(&db, &client).await;
    until("the pool trusts its tiers", || a.tiers_ready_for_tests()).await;
    for round in 1..=3_i64 {
        // Row 1 in both tiers.
        assert_eq!(value(&a, 1).await, round - 1);
        until("the value reached the shared tier", || server.values() > 0).await;
        client.hold_invalidations();
        let writer = {
            let a = a.clone();
            tokio::spawn(async move { bump(&a).await })
        };
        until("the write's shared invalidation is on its way", || client.held() > 0).await;
        // Here: gone, so this read looks in the shared tier, which still holds the old value.
        let redis_hits = a.stats().redis_hits;
        assert_eq!(value(&a, 1).await, round - 1, "the write has not returned: the old value may be read");
        assert_eq!(a.stats().redis_hits, redis_hits + 1, "round {round}: read from the shared tier");
        client.release();
        assert_eq!(writer.await.unwrap(), round);
        assert_eq!(value(&a, 1).await, round, "round {round}: a read after the write returned is fresh");
    }
}

#[tokio::test]
async fn a_url_and_a_shared_tier_together_fail_build() {
    let db = TestDb::with_schema(COUNTERS).await;
    let tier: Arc<dyn SharedTier> = MockServer::new().client();
    let error = sqlacache_tests::builder(db.pool.clone())
        .redis("redis://127.0.0.1:1")
        .shared_tier(tier)
        .build()
        .await
        .expect_err("two shared tiers");
    assert!(error.to_string().contains("both a Redis URL and a shared tier"), "{error}");
}

/// B's subscription falls behind for longer than the lease (a stalled process) but loses
/// nothing: B stops serving its in-process tier while it cannot vouch for it, hears A's write in
/// order before its own heartbeat renews the trust, and keeps the rest of the tier. Messages
/// that are lost instead (a gap in A's numbers) still cost B the whole tier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_that_falls_behind_keeps_the_tier_and_a_gap_drops_it() {
    let db = TestDb::with_schema(COUNTERS).await;
    let (_ca, a, cb, b) = two_processes(&db).await;
    // Row 2 in B's in-process tier too.
    let start = Instant::now();
    loop {
        let local = local_hits(&b);
        assert_eq!(value(&b, 2).await, 0);
        if local_hits(&b) > local {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "row 2 is never served from B's in-process tier");
    }
    let drops = b.stats().tier_drops;
    cb.stall(true);
    // (A write that names its row: row 2 stays cached.)
    sqlx::query("UPDATE counters SET v = v + 1 WHERE id = 1").execute(&a).await.unwrap();
    until("B stops trusting its tier", || !b.tiers_ready_for_tests()).await;
    // Untrusted: B reads past its tier and sees the write.
    assert_eq!(value(&b, 1).await, 1, "B served its old copy after its lease lapsed");
    cb.stall(false);
    until("B trusts its tier again", || b.tiers_ready_for_tests()).await;
    assert_eq!(value(&b, 1).await, 1, "B missed the write it heard late");
    let local = local_hits(&b);
    assert_eq!(value(&b, 2).await, 0);
    assert_eq!(b.stats().tier_drops, drops, "a subscription that only fell behind dropped the tier");
    assert_eq!(local_hits(&b), local + 1, "row 2 is still served from B's in-process tier: {:?}", b.stats());

    // Lost, not late: B cannot vouch for its tier and drops it.
    cb.deafen(true);
    assert_eq!(bump(&a).await, 2);
    until("B stops trusting its tier", || !b.tiers_ready_for_tests()).await;
    cb.deafen(false);
    until("B drops its in-process tier", || b.stats().tier_drops > drops).await;
    read_until(&b, 2, "after the lost write").await;
}
