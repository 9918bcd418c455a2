//! Criterion benchmarks of the cache against raw sqlx on the same PostgreSQL.
//!
//! ```sh
//! cargo bench -p sqlacache-benches --bench cache            # everything
//! cargo bench -p sqlacache-benches --bench cache -- point   # one group
//! ```
//!
//! Each group puts the raw sqlx call and the cached call side by side. The one-run ratio report
//! is the `ratios` binary; these give criterion's confidence intervals.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sqlacache_benches::{
    connect, create_fixture, drop_fixture, entry_bytes, filled_store, one_row_write_tags, BenchUser, COUNT, LIST,
    POINT, USERS, WRITE,
};
use sqlacache_sqlx::CachedPool;
use std::hint::black_box;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

struct Fixture {
    rt: tokio::runtime::Runtime,
    pool: sqlx::PgPool,
    cache: CachedPool,
}

fn fixture() -> Fixture {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (pool, cache) = rt.block_on(async {
        let pool = connect().await.unwrap_or_else(|error| panic!("{error}"));
        create_fixture(&pool).await.expect("create the bench tables");
        let cache = CachedPool::builder(pool.clone()).model::<BenchUser>().build().await.expect("build the cache");
        for id in 1..=100 {
            cache.get::<BenchUser>(id).await.unwrap();
        }
        (pool, cache)
    });
    Fixture { rt, pool, cache }
}

/// 1: a point read by primary key: raw, a cache hit, a cache miss.
fn point_read(c: &mut Criterion, f: &Fixture) {
    let mut group = c.benchmark_group("point_read");
    let hot = AtomicI64::new(0);
    let next_hot = || 1 + hot.fetch_add(1, Ordering::Relaxed) % 100;
    group.bench_function("raw", |b| {
        b.to_async(&f.rt).iter(|| async {
            black_box(sqlx::query_as::<_, BenchUser>(POINT).bind(next_hot()).fetch_one(&f.pool).await.unwrap())
        })
    });
    group.bench_function("hit", |b| {
        b.to_async(&f.rt).iter(|| async { black_box(f.cache.get::<BenchUser>(next_hot()).await.unwrap()) })
    });
    // Distinct keys that are not cached yet: ids past the table (absent rows are cached too),
    // never repeated within a run.
    let cold = AtomicI64::new(USERS + 1_000_000);
    group.bench_function("miss", |b| {
        b.to_async(&f.rt)
            .iter(|| async { black_box(f.cache.get::<BenchUser>(cold.fetch_add(1, Ordering::Relaxed)).await.unwrap()) })
    });
    group.finish();
}

/// 2 and 3: the 50-row list and the count, raw and as cache hits.
fn list_and_count(c: &mut Criterion, f: &Fixture) {
    let mut group = c.benchmark_group("list_of_50");
    group.bench_function("raw", |b| {
        b.to_async(&f.rt).iter(|| async { black_box(sqlx::query_as::<_, BenchUser>(LIST).fetch_all(&f.pool).await) })
    });
    group.bench_function("hit", |b| {
        b.to_async(&f.rt)
            .iter(|| async { black_box(sqlacache_sqlx::query_as::<BenchUser>(LIST).fetch_all(&f.cache).await) })
    });
    group.finish();

    let mut group = c.benchmark_group("count");
    group.bench_function("raw", |b| {
        b.to_async(&f.rt).iter(|| async { black_box(sqlx::query_scalar::<_, i64>(COUNT).fetch_one(&f.pool).await) })
    });
    group.bench_function("hit", |b| {
        b.to_async(&f.rt)
            .iter(|| async { black_box(sqlacache_sqlx::query_scalar::<i64>(COUNT).fetch_one(&f.cache).await) })
    });
    group.finish();
}

/// 4: a one-row update through the raw pool and through the cache (which appends `RETURNING`
/// and invalidates).
fn write_by_pk(c: &mut Criterion, f: &Fixture) {
    let mut group = c.benchmark_group("write_by_pk");
    let target = AtomicI64::new(0);
    let next = || USERS - target.fetch_add(1, Ordering::Relaxed) % 1000;
    group.bench_function("raw", |b| {
        b.to_async(&f.rt).iter(|| async { black_box(sqlx::query(WRITE).bind(next()).execute(&f.pool).await.unwrap()) })
    });
    group.bench_function("cached", |b| {
        b.to_async(&f.rt).iter(|| async { black_box(sqlx::query(WRITE).bind(next()).execute(&f.cache).await.unwrap()) })
    });
    group.finish();
}

/// 5: gets per second from 2 and 8 tasks on the 2-worker runtime, all hits.
fn hit_throughput(c: &mut Criterion, f: &Fixture) {
    let mut group = c.benchmark_group("hit_throughput");
    group.throughput(Throughput::Elements(1));
    for tasks in [2_u64, 8] {
        group.bench_with_input(BenchmarkId::new("tasks", tasks), &tasks, |b, &tasks| {
            b.iter_custom(|iters| {
                f.rt.block_on(async {
                    let per_task = iters.div_ceil(tasks);
                    let start = Instant::now();
                    let handles: Vec<_> = (0..tasks)
                        .map(|t| {
                            let cache = f.cache.clone();
                            tokio::spawn(async move {
                                for i in 0..per_task {
                                    let id = 1 + (t as i64 * 13 + i as i64) % 100;
                                    black_box(cache.get::<BenchUser>(id).await.unwrap());
                                }
                            })
                        })
                        .collect();
                    for handle in handles {
                        handle.await.unwrap();
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
}

/// 6: the store a `CachedPool` uses, filled with entries shaped like `get` entries. An
/// invalidation bumps version counters and never visits entries, so its cost should not depend
/// on how many there are.
fn invalidation(c: &mut Criterion) {
    let bytes = entry_bytes();
    let mut group = c.benchmark_group("invalidate_one_row");
    for entries in [10_000_u64, 1_000_000] {
        let store = filled_store(entries, &bytes);
        let row = AtomicI64::new(0);
        group.bench_function(BenchmarkId::new("entries", entries), |b| {
            b.iter(|| store.invalidate(&one_row_write_tags(row.fetch_add(1, Ordering::Relaxed) % USERS)))
        });
    }
    group.finish();
}

/// 7: not a timing. Printed with the results: the store's weight per single-row entry, filled
/// through the cache's own `get`.
fn memory_per_entry(f: &Fixture) {
    let (weight, entries) = f.rt.block_on(async {
        let cache = CachedPool::builder(f.pool.clone()).model::<BenchUser>().build().await.unwrap();
        for id in 1..=1000 {
            cache.get::<BenchUser>(id).await.unwrap();
        }
        cache.memory_usage()
    });
    println!(
        "memory: {} bytes per cached single-row entry ({weight} bytes / {entries} entries)",
        weight / entries as u64
    );
}

fn benches(c: &mut Criterion) {
    let f = fixture();
    point_read(c, &f);
    list_and_count(c, &f);
    write_by_pk(c, &f);
    hit_throughput(c, &f);
    invalidation(c);
    memory_per_entry(&f);
    f.rt.block_on(drop_fixture(&f.pool)).unwrap();
}

criterion_group! {
    name = cache;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(cache);
