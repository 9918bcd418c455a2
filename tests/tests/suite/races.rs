//! The fill race and concurrent writers and readers.

use serde::{Deserialize, Serialize};
use sqlacache_sqlx::testing::FillPoint;
use sqlacache_sqlx::testing::{Hooks as _, Probe as _};
use sqlacache_sqlx::Cacheable;
use sqlacache_tests::{TestDb, User};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use tokio::sync::{Barrier, Notify};

/// A fill that read the database before a write committed, and stores after the write's
/// invalidation, must not be served.
#[tokio::test]
async fn fill_held_across_a_write_is_rejected() {
    for list in [false, true] {
        let db = TestDb::new().await;
        let armed = Arc::new(AtomicBool::new(true));
        let filled = Arc::new(Barrier::new(2));
        let release = Arc::new(Notify::new());
        let cache = {
            let (armed, filled, release) = (armed.clone(), filled.clone(), release.clone());
            db.builder()
                .fill_hook(move |point| {
                    let (armed, filled, release) = (armed.clone(), filled.clone(), release.clone());
                    Box::pin(async move {
                        if point == FillPoint::Read && armed.swap(false, Ordering::SeqCst) {
                            filled.wait().await; // the fill has read the old row
                            release.notified().await; // hold it until the write is done
                        }
                    })
                })
                .build()
                .await
                .unwrap()
        };

        let reader = {
            let cache = cache.clone();
            tokio::spawn(async move {
                if list {
                    let rows = sqlacache_sqlx::query_as::<User>("SELECT * FROM users WHERE active ORDER BY id")
                        .fetch_all(&cache)
                        .await
                        .unwrap();
                    rows[0].name.clone()
                } else {
                    cache.get::<User>(1_i64).await.unwrap().unwrap().name
                }
            })
        };
        filled.wait().await;
        sqlx::query("UPDATE users SET name = 'new' WHERE id = 1").execute(&cache).await.unwrap();
        release.notify_one();
        assert_eq!(reader.await.unwrap(), "ada", "the reader started before the write");

        assert_eq!(cache.stats().fills_rejected, 1, "list={list}: the straddling fill was refused");
        let now = if list {
            sqlacache_sqlx::query_as::<User>("SELECT * FROM users WHERE active ORDER BY id")
                .fetch_all(&cache)
                .await
                .unwrap()[0]
                .name
                .clone()
        } else {
            cache.get::<User>(1_i64).await.unwrap().unwrap().name
        };
        assert_eq!(now, "new", "list={list}: the next read is fresh");
    }
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, Deserialize, Cacheable)]
#[cache(table = "counters")]
struct Counter {
    #[cache(pk)]
    id: i64,
    n: i64,
}

const ROWS: usize = 4;

/// Writers bump counters; after each write returns, its value is published. Readers first read
/// the published floor, then read through the cache: they must never see less.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_started_after_a_write_see_it() {
    let db = TestDb::with_schema(
        "CREATE TABLE counters (id bigint PRIMARY KEY, n bigint NOT NULL); \
         INSERT INTO counters SELECT g, 0 FROM generate_series(0, 3) g;",
    )
    .await;
    let cache = sqlacache_tests::builder(db.pool.clone()).model::<Counter>().build().await.unwrap();
    let published: Arc<Vec<AtomicI64>> = Arc::new((0..ROWS).map(|_| AtomicI64::new(0)).collect());
    let done = Arc::new(AtomicBool::new(false));

    let mut writers = Vec::new();
    for w in 0..ROWS {
        let (cache, published) = (cache.clone(), published.clone());
        writers.push(tokio::spawn(async move {
            for n in 1..=150_i64 {
                let id = w as i64;
                match n % 3 {
                    0 => {
                        sqlx::query("UPDATE counters SET n = $1 WHERE id = $2")
                            .bind(n)
                            .bind(id)
                            .execute(&cache)
                            .await
                            .unwrap();
                    }
                    1 => {
                        let mut tx = cache.begin().await.unwrap();
                        sqlx::query("UPDATE counters SET n = $1 WHERE id = $2")
                            .bind(n)
                            .bind(id)
                            .execute(&mut *tx)
                            .await
                            .unwrap();
                        tx.commit().await.unwrap();
                    }
                    _ => {
                        // A bulk write that does not name the key.
                        sqlx::query("UPDATE counters SET n = $1 WHERE id::text = $2")
                            .bind(n)
                            .bind(id.to_string())
                            .execute(&cache)
                            .await
                            .unwrap();
                    }
                }
                published[w].store(n, Ordering::SeqCst);
            }
        }));
    }
    let mut readers = Vec::new();
    for r in 0..ROWS {
        let (cache, published, done) = (cache.clone(), published.clone(), done.clone());
        readers.push(tokio::spawn(async move {
            let mut reads = 0u64;
            while !done.load(Ordering::SeqCst) {
                let id = (reads as usize + r) % ROWS;
                let floor = published[id].load(Ordering::SeqCst);
                let got = cache.get::<Counter>(id as i64).await.unwrap().unwrap().n;
                assert!(got >= floor, "get({id}) returned {got}, older than the published write {floor}");

                let floors: Vec<i64> = published.iter().map(|p| p.load(Ordering::SeqCst)).collect();
                let list = sqlacache_sqlx::query_as::<Counter>("SELECT * FROM counters ORDER BY id")
                    .fetch_all(&cache)
                    .await
                    .unwrap();
                for (row, floor) in list.iter().zip(&floors) {
                    assert!(row.n >= *floor, "list row {} returned {}, older than {floor}", row.id, row.n);
                }
                let floor_sum: i64 = published.iter().map(|p| p.load(Ordering::SeqCst)).sum();
                let sum: i64 =
                    sqlacache_sqlx::query_scalar("SELECT sum(n)::int8 FROM counters").fetch_one(&cache).await.unwrap();
                assert!(sum >= floor_sum, "sum {sum} older than {floor_sum}");
                reads += 1;
                // Cache hits complete without waiting; let the writers run.
                tokio::task::yield_now().await;
            }
            reads
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let mut total = 0;
    for r in readers {
        total += r.await.unwrap();
    }
    assert!(total > 0);
    let stats = cache.stats();
    assert!(stats.hits > 0, "the cache served reads during the test: {stats:?}");
}

/// Gives up on a write (or a commit) at varying points while a reader keeps filling the cache.
/// Whether or not the write took effect, once things settle the cache must agree with the
/// database: an abandoned write's invalidation follows its completion, not the cancellation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_writes_and_commits_still_invalidate() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    for round in 0..40_u64 {
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (cache, stop) = (cache.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    cache.get::<User>(1_i64).await.unwrap();
                    tokio::task::yield_now().await;
                }
            })
        };
        let name = format!("round {round}");
        let wait = std::time::Duration::from_micros(round * 40);
        if round % 2 == 0 {
            let write = sqlx::query("UPDATE users SET name = $1 WHERE id = 1").bind(&name).execute(&cache);
            let _ = tokio::time::timeout(wait, write).await;
        } else {
            let mut tx = cache.begin().await.unwrap();
            sqlx::query("UPDATE users SET name = $1 WHERE id = 1").bind(&name).execute(&mut *tx).await.unwrap();
            let _ = tokio::time::timeout(wait, tx.commit()).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        // The abandoned write may still be running on its own task: compare only once it has
        // finished and invalidated (comparing earlier raced it, in either direction).
        while cache.background_writes_for_tests() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        stop.store(true, Ordering::SeqCst);
        reader.await.unwrap();
        let truth: String =
            sqlx::query_scalar("SELECT name FROM users WHERE id = 1").fetch_one(&db.pool).await.unwrap();
        let cached = cache.get::<User>(1_i64).await.unwrap().unwrap().name;
        assert_eq!(cached, truth, "round {round}: stale after an abandoned write");
    }
}
