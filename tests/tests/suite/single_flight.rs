//! Concurrent misses of one read run one database query; a waiter takes the result only from the
//! cache, so only if the fill was accepted.

use sqlacache_sqlx::testing::FillPoint;
use sqlacache_sqlx::testing::Hooks as _;
use sqlacache_sqlx::CachedPool;
use sqlacache_tests::{TestDb, User};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Barrier, Notify};

const LIST: &str = "SELECT * FROM users WHERE active ORDER BY id";

/// A cache whose first fill stops at `at` until `release` is notified; `stamps` counts the fills
/// that took a stamp, that is the database reads the cache made.
async fn held_cache(
    db: &TestDb,
    at: FillPoint,
    reached: Arc<Barrier>,
    release: Arc<Notify>,
) -> (CachedPool, Arc<AtomicUsize>) {
    let stamps = Arc::new(AtomicUsize::new(0));
    let armed = Arc::new(AtomicBool::new(true));
    let counted = stamps.clone();
    let cache = db
        .builder()
        .fill_hook(move |point| {
            let (armed, reached, release) = (armed.clone(), reached.clone(), release.clone());
            if point == FillPoint::Stamped {
                counted.fetch_add(1, Ordering::SeqCst);
            }
            Box::pin(async move {
                if point == at && armed.swap(false, Ordering::SeqCst) {
                    reached.wait().await;
                    release.notified().await;
                }
            })
        })
        .build()
        .await
        .unwrap();
    (cache, stamps)
}

fn spawn_readers(cache: &CachedPool, n: usize) -> Vec<tokio::task::JoinHandle<Vec<User>>> {
    (0..n)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { sqlacache_sqlx::query_as::<User>(LIST).fetch_all(&cache).await.unwrap() })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_misses_run_one_query() {
    let db = TestDb::new().await;
    let reached = Arc::new(Barrier::new(2));
    let release = Arc::new(Notify::new());
    let (cache, stamps) = held_cache(&db, FillPoint::Stamped, reached.clone(), release.clone()).await;
    let readers = spawn_readers(&cache, 100);
    reached.wait().await; // one reader leads, and is held before its query
    tokio::time::sleep(Duration::from_millis(200)).await; // the others find its fill in progress
    release.notify_one();
    let expected = sqlx::query_as::<_, User>(LIST).fetch_all(&db.pool).await.unwrap();
    for reader in readers {
        assert_eq!(reader.await.unwrap(), expected);
    }
    let stats = cache.stats();
    assert_eq!(stamps.load(Ordering::SeqCst), 1, "one database read for a hundred misses");
    assert_eq!((stats.misses, stats.hits), (1, 99));
    assert!(stats.coalesced > 0, "some readers waited for the fill: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_never_take_a_refused_fill() {
    let db = TestDb::new().await;
    let reached = Arc::new(Barrier::new(2));
    let release = Arc::new(Notify::new());
    let (cache, _) = held_cache(&db, FillPoint::Read, reached.clone(), release.clone()).await;
    let readers = spawn_readers(&cache, 20);
    reached.wait().await; // the leader has read the old rows
    tokio::time::sleep(Duration::from_millis(200)).await;
    sqlx::query("UPDATE users SET name = 'new' WHERE id = 1").execute(&cache).await.unwrap();
    release.notify_one(); // the leader's fill straddled the write: refused
    let mut names = Vec::new();
    for reader in readers {
        names.push(reader.await.unwrap()[0].name.clone());
    }
    names.sort();
    assert_eq!(names.iter().filter(|n| *n == "ada").count(), 1, "only the leader returns what it read: {names:?}");
    assert_eq!(names.iter().filter(|n| *n == "new").count(), 19, "the waiters read again: {names:?}");
    assert_eq!(cache.stats().fills_rejected, 1);
    assert_eq!(sqlacache_sqlx::query_as::<User>(LIST).fetch_all(&cache).await.unwrap()[0].name, "new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_read_for_themselves_when_the_leader_is_cancelled() {
    let db = TestDb::new().await;
    let reached = Arc::new(Barrier::new(2));
    let release = Arc::new(Notify::new());
    let (cache, stamps) = held_cache(&db, FillPoint::Stamped, reached.clone(), release.clone()).await;
    let leader = spawn_readers(&cache, 1).pop().unwrap();
    reached.wait().await;
    let waiters = spawn_readers(&cache, 10);
    tokio::time::sleep(Duration::from_millis(200)).await;
    leader.abort(); // dropped mid-fill: its waiters are released
    assert!(leader.await.unwrap_err().is_cancelled());
    let expected = sqlx::query_as::<_, User>(LIST).fetch_all(&db.pool).await.unwrap();
    for waiter in waiters {
        assert_eq!(waiter.await.unwrap(), expected);
    }
    assert!(stamps.load(Ordering::SeqCst) >= 2, "the waiters read the database themselves");
}
