//! Every ordering of one cache fill against one write, driven step by step with hooks, and
//! transactions whose callers give up midway.
//!
//! A fill has three events: S (stamp taken), R (database read), T (result stored); a write has
//! two: C (committed) and I (invalidation applied). Each of the ten interleavings must leave the
//! cache fresh, and a fill is refused exactly when an invalidation came between its S and its T.

use sqlacache_sqlx::testing::FillPoint;
use sqlacache_sqlx::testing::Hooks as _;
use sqlacache_sqlx::CachedPool;
use sqlacache_tests::{TestDb, User};
use sqlx::AssertSqlSafe;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// A point where a hooked task stops until the test lets it go.
struct Pause {
    armed: AtomicBool,
    reached: Semaphore,
    go: Semaphore,
}

impl Pause {
    fn new() -> Arc<Pause> {
        Arc::new(Pause { armed: AtomicBool::new(true), reached: Semaphore::new(0), go: Semaphore::new(0) })
    }

    async fn wait_reached(&self) {
        self.reached.acquire().await.expect("open").forget();
    }
}

/// The invalidation hook runs on a runtime thread and may not await: it blocks on a channel.
struct BlockingPause {
    armed: AtomicBool,
    reached: Semaphore,
    go: Mutex<mpsc::Receiver<()>>,
    release: mpsc::Sender<()>,
}

struct Harness {
    db: TestDb,
    cache: CachedPool,
    stamped: Arc<Pause>,
    read: Arc<Pause>,
    invalidate: Arc<BlockingPause>,
}

impl Harness {
    /// Lets fills run without stopping (for tests that only pause the invalidation).
    fn disarm_fills(&self) {
        self.stamped.armed.store(false, SeqCst);
        self.read.armed.store(false, SeqCst);
    }
}

async fn harness() -> Harness {
    let db = TestDb::new().await;
    let (stamped, read) = (Pause::new(), Pause::new());
    let (release, go) = mpsc::channel();
    let invalidate = Arc::new(BlockingPause {
        armed: AtomicBool::new(true),
        reached: Semaphore::new(0),
        go: Mutex::new(go),
        release,
    });
    let cache = {
        let (stamped, read, invalidate) = (stamped.clone(), read.clone(), invalidate.clone());
        db.builder()
            .fill_hook(move |point| {
                let pause = if point == FillPoint::Stamped { stamped.clone() } else { read.clone() };
                Box::pin(async move {
                    if pause.armed.swap(false, SeqCst) {
                        pause.reached.add_permits(1);
                        pause.go.acquire().await.expect("open").forget();
                    }
                })
            })
            .invalidate_hook(move || {
                if invalidate.armed.swap(false, SeqCst) {
                    invalidate.reached.add_permits(1);
                    invalidate.go.lock().unwrap().recv().expect("released");
                }
            })
            .build()
            .await
            .unwrap()
    };
    Harness { db, cache, stamped, read, invalidate }
}

async fn name(cache: &CachedPool) -> String {
    cache.get::<User>(1_i64).await.unwrap().unwrap().name
}

/// Runs one interleaving, given as a string of the events S, R, T, C, I.
async fn interleaving(order: &str) {
    let h = harness().await;
    let mut fill = None;
    let mut write = None;
    for event in order.chars() {
        match event {
            'S' => {
                let cache = h.cache.clone();
                fill = Some(tokio::spawn(async move { name(&cache).await }));
                h.stamped.wait_reached().await;
            }
            'R' => {
                h.stamped.go.add_permits(1);
                h.read.wait_reached().await;
            }
            'T' => {
                h.read.go.add_permits(1);
                fill.take().expect("fill started").await.unwrap();
            }
            'C' => {
                let cache = h.cache.clone();
                write = Some(tokio::spawn(async move {
                    sqlx::query("UPDATE users SET name = 'new' WHERE id = 1").execute(&cache).await.unwrap();
                }));
                h.invalidate.reached.acquire().await.unwrap().forget();
            }
            'I' => {
                h.invalidate.release.send(()).unwrap();
                write.take().expect("write started").await.unwrap();
            }
            other => panic!("unknown event {other}"),
        }
    }
    let (s, i, t) = (order.find('S').unwrap(), order.find('I').unwrap(), order.find('T').unwrap());
    let refused = s < i && i < t;
    assert_eq!(h.cache.stats().fills_rejected, u64::from(refused), "{order}: fill refused?");
    assert_eq!(name(&h.cache).await, "new", "{order}: the next read must see the write");
    drop(h.db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_interleaving_of_a_fill_and_a_write_ends_fresh() {
    let mut orders = Vec::new();
    for c in 0..5 {
        for i in c + 1..5 {
            let mut fill = "SRT".chars();
            let order: String = (0..5)
                .map(|p| match p {
                    p if p == c => 'C',
                    p if p == i => 'I',
                    _ => fill.next().unwrap(),
                })
                .collect();
            orders.push(order);
        }
    }
    assert_eq!(orders.len(), 10);
    for order in orders {
        interleaving(&order).await;
    }
}

/// Gives up on a write (a pool statement or a commit) while PostgreSQL is still running it: the
/// write must still land and invalidate, and only after it landed. A trigger that sleeps makes
/// the statement, or the COMMIT (a deferred trigger), take long enough to give up in the middle.
async fn abandon_in_flight(commit: bool) {
    let h = harness().await;
    h.disarm_fills();
    h.invalidate.armed.store(false, SeqCst);
    let timing = if commit { "DEFERRABLE INITIALLY DEFERRED" } else { "" };
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE FUNCTION slow_write() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.4); RETURN NULL; END $$;
         CREATE CONSTRAINT TRIGGER slow_write AFTER UPDATE ON users {timing} FOR EACH ROW EXECUTE FUNCTION slow_write();"
    )))
    .execute(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(name(&h.cache).await, "ada");
    let caller = if commit {
        let mut tx = h.cache.begin().await.unwrap();
        sqlx::query("UPDATE users SET name = 'written' WHERE id = 1").execute(&mut *tx).await.unwrap();
        tokio::spawn(async move { tx.commit().await })
    } else {
        let cache = h.cache.clone();
        tokio::spawn(async move {
            sqlx::query("UPDATE users SET name = 'written' WHERE id = 1").execute(&cache).await.map(drop)
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await; // in flight, in the trigger
    caller.abort(); // the caller gives up
    assert!(caller.await.unwrap_err().is_cancelled());
    assert_eq!(h.cache.stats().invalidations, 0, "invalidated before the write landed");
    // A read while the write is still running sees, and caches, the old row...
    assert_eq!(name(&h.cache).await, "ada");
    for _ in 0..500 {
        if h.cache.stats().invalidations == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // ...which the write's invalidation, once it landed, replaces.
    assert_eq!(h.cache.stats().invalidations, 1, "the abandoned write never invalidated");
    assert_eq!(name(&h.cache).await, "written", "stale after an abandoned write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_write_abandoned_in_flight_invalidates_after_it_lands() {
    abandon_in_flight(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_abandoned_in_flight_invalidates_after_it_lands() {
    abandon_in_flight(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollback_and_a_dropped_transaction_never_invalidate() {
    let h = harness().await;
    h.disarm_fills();
    name(&h.cache).await;
    let mut tx = h.cache.begin().await.unwrap();
    sqlx::query("UPDATE users SET name = 'rolled back' WHERE id = 1").execute(&mut *tx).await.unwrap();
    tx.rollback().await.unwrap();
    let mut tx = h.cache.begin().await.unwrap();
    sqlx::query("UPDATE users SET name = 'dropped' WHERE id = 1").execute(&mut *tx).await.unwrap();
    let caller = tokio::spawn(async move {
        let _held = tx;
        std::future::pending::<()>().await;
    });
    caller.abort();
    let _ = caller.await;
    assert_eq!(h.invalidate.reached.available_permits(), 0, "nothing was invalidated");
    let hits = h.cache.stats().hits;
    assert_eq!(name(&h.cache).await, "ada");
    assert_eq!(h.cache.stats().hits, hits + 1);
}
