//! Stale-while-revalidate and stale-if-error: an entry past its TTL may be served within its
//! table's windows, with one refresh per key, or while PostgreSQL fails; an entry a write
//! invalidated is never served, in any of them.

use sqlacache_sqlx::testing::{FillPoint, Hooks as _};
use sqlacache_sqlx::{outcome_of, CachedPool, CachedPoolBuilder, Ops, Outcome};
use sqlacache_tests::redis::Proxy;
use sqlacache_tests::{bump, Counter, TestDb, COUNTERS};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Barrier, Notify};

const TTL: Duration = Duration::from_millis(200);

fn builder(pool: sqlx::PgPool) -> CachedPoolBuilder {
    sqlacache_tests::builder(pool).model::<Counter>().table("counters", Ops::ALL, TTL)
}

/// Counter `id` through `cache`, with how it was answered.
async fn read(cache: &CachedPool, id: i32) -> (i64, Outcome) {
    let (row, outcome) = outcome_of(cache.get::<Counter>(id)).await;
    (row.unwrap().unwrap().v, outcome.expect("a cached read"))
}

/// Waits until the entries filled now are past their TTL.
async fn expire() {
    tokio::time::sleep(TTL + Duration::from_millis(50)).await;
}

/// Sets counter `id` to `v` where the cache cannot see it.
async fn write_outside(db: &TestDb, id: i32, v: i64) {
    sqlx::query("UPDATE counters SET v = $2 WHERE id = $1").bind(id).bind(v).execute(&db.pool).await.unwrap();
}

#[tokio::test]
async fn an_expired_entry_is_served_while_it_is_refreshed() {
    let db = TestDb::with_schema(COUNTERS).await;
    let cache =
        builder(db.pool.clone()).stale_while_revalidate("counters", Duration::from_secs(60)).build().await.unwrap();
    assert_eq!(read(&cache, 1).await, (0, Outcome::Miss));
    assert_eq!(read(&cache, 1).await, (0, Outcome::Hit));
    write_outside(&db, 1, 5).await;
    expire().await;
    assert_eq!(read(&cache, 1).await, (0, Outcome::StaleHit), "past its TTL, served while it is refreshed");
    // The refresh stores the row as it is now.
    let start = std::time::Instant::now();
    loop {
        match read(&cache, 1).await {
            (5, Outcome::Hit) => break,
            (0, Outcome::StaleHit) => assert!(start.elapsed() < Duration::from_secs(30), "never refreshed"),
            other => panic!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stats = cache.stats();
    assert!(stats.stale_hits >= 1 && stats.hits >= stats.stale_hits, "{stats:?}");
    let statement = cache.statements().into_iter().find(|s| s.sql.contains("counters")).unwrap();
    assert_eq!(statement.stale_hits, stats.stale_hits);

    // Past the window, an expired entry is a miss like any other.
    let short =
        builder(db.pool.clone()).stale_while_revalidate("counters", Duration::from_millis(1)).build().await.unwrap();
    assert_eq!(read(&short, 2).await, (0, Outcome::Miss));
    expire().await;
    assert_eq!(read(&short, 2).await, (0, Outcome::Miss));
    assert_eq!(short.stats().stale_hits, 0);
}

#[tokio::test]
async fn an_invalidated_entry_is_never_served_stale() {
    let db = TestDb::with_schema(COUNTERS).await;
    let cache = builder(db.pool.clone())
        .stale_while_revalidate("counters", Duration::from_secs(60))
        .stale_if_error("counters", Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    for round in 1..=20_i64 {
        let _ = read(&cache, 1).await;
        expire().await;
        // Within both windows; a write through the pool invalidates it.
        assert_eq!(bump(&cache, 1).await, round);
        assert_eq!(read(&cache, 1).await, (round, Outcome::Miss), "round {round}");
    }
    // Invalidated while inside the window and not yet expired, too.
    let _ = read(&cache, 2).await;
    assert_eq!(bump(&cache, 2).await, 1);
    expire().await;
    assert_eq!(read(&cache, 2).await, (1, Outcome::Miss));
    assert_eq!(cache.stats().stale_hits, 0);
}

/// Writers and readers at once, entries expiring all the time: a read that starts after a
/// write returned never sees a value older than that write's, stale hits included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_during_stale_windows_are_never_missed() {
    let db = TestDb::with_schema(COUNTERS).await;
    let cache = sqlacache_tests::builder(db.pool.clone())
        .model::<Counter>()
        .table("counters", Ops::ALL, Duration::from_millis(3))
        .stale_while_revalidate("counters", Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    let written = Arc::new([(); 5].map(|_| std::sync::atomic::AtomicI64::new(0)));
    let writer = {
        let (cache, written) = (cache.clone(), written.clone());
        tokio::spawn(async move {
            for i in 0..300 {
                let id = 1 + i % 5;
                let v = bump(&cache, id).await;
                written[id as usize - 1].fetch_max(v, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let readers: Vec<_> = (0..4)
        .map(|r| {
            let (cache, written) = (cache.clone(), written.clone());
            tokio::spawn(async move {
                let mut stale = 0;
                for i in 0..1_500 {
                    let id = 1 + (i + r) % 5;
                    let floor = written[id as usize - 1].load(Ordering::SeqCst);
                    let (v, outcome) = read(&cache, id).await;
                    assert!(v >= floor, "read {v} of counter {id} after a write of {floor} returned ({outcome:?})");
                    stale += usize::from(outcome == Outcome::StaleHit);
                }
                stale
            })
        })
        .collect();
    writer.await.unwrap();
    let mut stale = 0;
    for reader in readers {
        stale += reader.await.unwrap();
    }
    assert!(stale > 0, "the test served no stale hits, so it tested nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_readers_of_an_expired_entry_start_one_refresh() {
    let db = TestDb::with_schema(COUNTERS).await;
    let refreshes = Arc::new(AtomicUsize::new(0));
    let (reached, release) = (Arc::new(Barrier::new(2)), Arc::new(Notify::new()));
    let cache = {
        let (refreshes, reached, release) = (refreshes.clone(), reached.clone(), release.clone());
        builder(db.pool.clone())
            .stale_while_revalidate("counters", Duration::from_secs(60))
            .fill_hook(move |point| {
                let (reached, release) = (reached.clone(), release.clone());
                let first = point == FillPoint::Refreshing && refreshes.fetch_add(1, Ordering::SeqCst) == 0;
                Box::pin(async move {
                    if first {
                        // Held until every reader has been answered.
                        reached.wait().await;
                        release.notified().await;
                    }
                })
            })
            .build()
            .await
            .unwrap()
    };
    assert_eq!(read(&cache, 1).await.0, 0);
    write_outside(&db, 1, 7).await;
    expire().await;
    let start = Arc::new(Barrier::new(100));
    let readers: Vec<_> = (0..100)
        .map(|_| {
            let (cache, start) = (cache.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                read(&cache, 1).await
            })
        })
        .collect();
    for reader in readers {
        assert_eq!(reader.await.unwrap(), (0, Outcome::StaleHit), "answered at once, without waiting");
    }
    reached.wait().await;
    assert_eq!(refreshes.load(Ordering::SeqCst), 1, "one refresh for a hundred readers");
    release.notify_one();
    let start = std::time::Instant::now();
    while read(&cache, 1).await != (7, Outcome::Hit) {
        assert!(start.elapsed() < Duration::from_secs(30), "the refresh was never stored");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(refreshes.load(Ordering::SeqCst), 1);
}

/// A pool whose connections go through `proxy`, failing fast while it is blocked.
async fn pool_through(db: &TestDb, proxy: &Proxy) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_millis(500))
        .connect_with(db.options().host("127.0.0.1").port(proxy.port()))
        .await
        .expect("connect through the proxy")
}

#[tokio::test]
async fn postgres_down_serves_expired_entries_then_recovers() {
    let db = TestDb::with_schema(COUNTERS).await;
    let proxy = Proxy::start(db.options().get_port());
    let pool = pool_through(&db, &proxy).await;
    let cache = builder(pool).stale_if_error("counters", Duration::from_secs(60)).build().await.unwrap();
    assert_eq!(read(&cache, 1).await, (0, Outcome::Miss));
    assert_eq!(read(&cache, 2).await, (0, Outcome::Miss));
    // (`execute`: the pool learns the row, so only counter 2's entries are invalidated.)
    sqlx::query("UPDATE counters SET v = 1 WHERE id = 2").execute(&cache).await.unwrap();
    expire().await;

    proxy.block();
    assert_eq!(read(&cache, 1).await, (0, Outcome::StaleIfError), "expired, not invalidated: served");
    let (error, _) = outcome_of(cache.get::<Counter>(2)).await;
    assert!(error.is_err(), "an invalidated entry is never served: {error:?}");
    let (error, _) = outcome_of(cache.get::<Counter>(3)).await;
    assert!(error.is_err(), "nothing cached: PostgreSQL's error");
    assert_eq!(cache.stats().stale_if_error, 1);

    proxy.unblock();
    write_outside(&db, 1, 9).await;
    let start = std::time::Instant::now();
    loop {
        match outcome_of(cache.get::<Counter>(1)).await {
            (Ok(Some(row)), Some(Outcome::Miss)) => break assert_eq!(row.v, 9),
            (Err(_), _) | (_, Some(Outcome::StaleIfError)) => {
                assert!(start.elapsed() < Duration::from_secs(30), "never recovered");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(read(&cache, 2).await, (1, Outcome::Miss));
}

#[tokio::test]
async fn stale_windows_come_from_the_model_and_a_read_of_several_tables_takes_the_smallest() {
    let db =
        TestDb::with_schema(&format!("{COUNTERS} CREATE TABLE labels (id int PRIMARY KEY, name text NOT NULL);")).await;
    let cache = sqlacache_tests::builder(db.pool.clone())
        .model::<Windowed>()
        .table("labels", Ops::ALL, Duration::from_secs(1))
        .build()
        .await
        .unwrap();
    let one = cache.explain("SELECT * FROM counters").await.unwrap();
    assert_eq!(one.ttl, Some(Duration::from_secs(1)));
    let list = "SELECT * FROM counters ORDER BY id";
    let both = "SELECT c.* FROM counters c JOIN labels l ON l.id = c.id ORDER BY c.id";
    for sql in [list, both] {
        let (_, outcome) = outcome_of(sqlacache_sqlx::query_as::<Windowed>(sql).fetch_all(&cache)).await;
        assert_eq!(outcome, Some(Outcome::Miss));
    }
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (_, outcome) = outcome_of(sqlacache_sqlx::query_as::<Windowed>(list).fetch_all(&cache)).await;
    assert_eq!(outcome, Some(Outcome::StaleHit), "the model's window");
    let (_, outcome) = outcome_of(sqlacache_sqlx::query_as::<Windowed>(both).fetch_all(&cache)).await;
    assert_eq!(outcome, Some(Outcome::Miss), "labels has no window");
}

#[derive(Debug, sqlx::FromRow, serde::Serialize, serde::Deserialize, sqlacache_sqlx::Cacheable)]
#[cache(table = "counters", ttl = 1, swr = 60, stale_if_error = 600)]
struct Windowed {
    #[cache(pk)]
    id: i32,
    v: i64,
}
