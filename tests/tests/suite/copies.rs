//! Each worker thread keeps copies of the entries it hit (decoded when the row type clones):
//! a write that returned reaches every thread's copies, whichever thread wrote.

use serde::{Deserialize, Serialize};
use sqlacache_sqlx::{CachedPool, CachedRow};
use sqlacache_tests::{TestDb, User};
use std::sync::Arc;
use tokio::sync::Barrier;

/// The same rows as [`User`], read into a type that does not implement `Clone`: its hits decode
/// the thread's copy of the stored form.
#[derive(Debug, PartialEq, sqlx::FromRow, Serialize, Deserialize, CachedRow)]
struct Unclonable {
    id: i64,
    name: String,
    active: bool,
}

async fn names(cache: &CachedPool) -> (String, String, Vec<String>) {
    let user = cache.get::<User>(1_i64).await.unwrap().unwrap();
    let plain = sqlacache_sqlx::query_as::<Unclonable>("SELECT id, name, active FROM users WHERE id = $1")
        .bind(1_i64)
        .fetch_one(cache)
        .await
        .unwrap();
    let list: Vec<User> =
        sqlacache_sqlx::query_as::<User>("SELECT * FROM users ORDER BY id").fetch_all(cache).await.unwrap();
    (user.name, plain.name, list.into_iter().map(|u| u.name).collect())
}

#[test]
fn the_derive_tells_which_rows_clone() {
    assert!(<User as CachedRow>::__cloner().is_some());
    assert!(<Unclonable as CachedRow>::__cloner().is_none());
    assert!(<(i64, String) as CachedRow>::__cloner().is_none(), "tuples decode");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_returned_reaches_every_threads_copies() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    const READERS: usize = 6;
    for round in 0..150 {
        let name = format!("name {round}");
        // Readers on both worker threads: before the write (filling and copying), then after it.
        let barrier = Arc::new(Barrier::new(READERS + 1));
        let after = Arc::new(Barrier::new(READERS + 1));
        let readers: Vec<_> = (0..READERS)
            .map(|_| {
                let (cache, barrier, after, name) = (cache.clone(), barrier.clone(), after.clone(), name.clone());
                tokio::spawn(async move {
                    for _ in 0..3 {
                        names(&cache).await;
                    }
                    barrier.wait().await;
                    after.wait().await;
                    let (user, plain, list) = names(&cache).await;
                    assert_eq!((user.as_str(), plain.as_str()), (name.as_str(), name.as_str()), "round {round}");
                    assert_eq!(list[0], name, "round {round}");
                })
            })
            .collect();
        barrier.wait().await;
        sqlx::query("UPDATE users SET name = $1 WHERE id = 1").bind(&name).execute(&cache).await.unwrap();
        after.wait().await;
        for reader in readers {
            reader.await.unwrap();
        }
    }
    let stats = cache.stats();
    assert!(stats.hits > 150 * READERS as u64 * 3, "the copies were exercised: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_follow_an_invalidation_by_hand() {
    let db = TestDb::new().await;
    let cache = db.cache().await;
    assert_eq!(names(&cache).await.0, "ada");
    assert_eq!(names(&cache).await.0, "ada");
    // Changed where the pool cannot see it (and no change feed): the copies hold until told.
    // (That copies expire with their entry is a unit test of `sqlacache_core::near`.)
    sqlx::query("UPDATE users SET name = 'outside' WHERE id = 1").execute(&db.pool).await.unwrap();
    let hits = cache.stats().hits;
    assert_eq!(names(&cache).await, ("ada".into(), "ada".into(), vec!["ada".into(), "bob".into(), "cy".into()]));
    assert_eq!(cache.stats().hits, hits + 3, "cached, as documented for writes the pool cannot see");
    cache.invalidate_rows::<User>(&[1]).await.unwrap();
    let (user, plain, list) = names(&cache).await;
    assert_eq!((user.as_str(), plain.as_str(), list[0].as_str()), ("outside", "outside", "outside"));
}
