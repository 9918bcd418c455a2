//! One member of a fleet (see `sqlacache_tests::fleet`): a process that reads and writes the
//! `counters` table through a pool of its own and logs what it saw and when.
//!
//! Configured by `MEMBER_*` variables. It prints `ready` once its tiers are trusted, begins on
//! `go` (a line on its standard input), prints `finished` after its operations, and on `stop`
//! prints its counters (`stats go ...` was printed at `go`, `stats end ...` now) and `done`.
#![forbid(unsafe_code)]

use sqlacache_core::bus::clock;
use sqlacache_sqlx::testing::{Hooks as _, Probe as _};
use sqlacache_sqlx::{CachedPool, Consistency};
use sqlacache_tests::fleet::{Counts, Mode, Role};
use sqlacache_tests::Counter;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::io::{BufRead, BufWriter, Write};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn var(name: &str) -> String {
    std::env::var(format!("MEMBER_{name}")).unwrap_or_else(|_| panic!("MEMBER_{name} is not set"))
}

fn number<T: FromStr>(name: &str) -> T {
    var(name).parse().unwrap_or_else(|_| panic!("MEMBER_{name} is not a number"))
}

fn main() {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    runtime.block_on(run());
}

async fn run() {
    sqlacache_tests::logs::to_stderr(&format!("member {} ({}): ", std::process::id(), var("ROLE")));
    let (mode, role) =
        (Mode::parse(&var("MODE")).expect("MEMBER_MODE"), Role::parse(&var("ROLE")).expect("MEMBER_ROLE"));
    let schema = var("SCHEMA");
    let options = PgConnectOptions::from_str(&var("DATABASE_URL"))
        .expect("MEMBER_DATABASE_URL")
        .options([("search_path", schema.as_str())])
        .application_name(&schema);
    let pool = PgPoolOptions::new().max_connections(6).connect_with(options).await.expect("reach PostgreSQL");
    let lease = Duration::from_millis(number("LEASE_MS"));
    let feed = var("FEED") == "1";
    let mut builder = CachedPool::builder(pool.clone())
        .separate_process()
        .model::<Counter>()
        .default_ttl(Duration::from_secs(300))
        .redis(&var("REDIS_URL"))
        .key_prefix(&var("PREFIX"))
        .lease(lease)
        .redis_timeout(Duration::from_millis(number("REDIS_TIMEOUT_MS")));
    if mode == Mode::RedisOnly || role == Role::Observer {
        builder = builder.memory_capacity(0);
    }
    if mode == Mode::Strict {
        builder = builder.consistency(Consistency::Strict);
    }
    if feed {
        builder = builder.change_feed_installed();
    }
    let cache = builder.build().await.expect("build the pool");
    let start = std::time::Instant::now();
    while !(cache.tiers_ready_for_tests() && (!feed || cache.feed_trusted_for_tests())) {
        assert!(start.elapsed() < Duration::from_secs(60), "the pool's tiers were never trusted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Standard input, read on a thread of its own: `go`, then `stop`.
    let (go, stop) = (Arc::new(tokio::sync::Notify::new()), Arc::new(AtomicBool::new(false)));
    let stopped = Arc::new(tokio::sync::Notify::new());
    {
        let (go, stop, stopped) = (go.clone(), stop.clone(), stopped.clone());
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                match line.as_deref() {
                    Ok("go") => go.notify_one(),
                    Ok("stop") | Err(_) => break,
                    _ => {}
                }
            }
            stop.store(true, Ordering::SeqCst);
            stopped.notify_one();
        });
    }
    if feed {
        say(&format!("listener {}", cache.feed_listener_pid_for_tests()));
    }
    say("ready");
    go.notified().await;
    let ops = Arc::new(AtomicU64::new(0));
    let quiet_misses = Arc::new(AtomicU64::new(0));
    say(&format!("stats go {}", counts(&cache, 0, 0).line()));

    let (rows, tasks, per_task) = (number::<i32>("ROWS"), number::<u32>("TASKS"), number::<u64>("OPS"));
    let (write_percent, seed) = (number::<u64>("WRITE_PERCENT"), number::<u64>("SEED"));
    let log = std::path::PathBuf::from(var("LOG"));
    let mut workers = Vec::new();
    for task in 0..tasks {
        let work = Work {
            cache: cache.clone(),
            raw: pool.clone(),
            role,
            rows,
            write_percent,
            rng: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(task + 1),
            stop: stop.clone(),
            ops: ops.clone(),
            quiet_misses: quiet_misses.clone(),
            log: BufWriter::new(std::fs::File::create(log.with_extension(task.to_string())).expect("create the log")),
        };
        workers.push(tokio::spawn(work.run(per_task)));
    }
    for worker in workers {
        worker.await.expect("a task of the member failed");
    }
    if !stop.load(Ordering::SeqCst) {
        say("finished");
        stopped.notified().await;
    }
    let end = counts(&cache, ops.load(Ordering::SeqCst), quiet_misses.load(Ordering::SeqCst));
    say(&format!("stats end {}", end.line()));
    say("done");
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn counts(cache: &CachedPool, ops: u64, quiet_misses: u64) -> Counts {
    let stats = cache.stats();
    Counts {
        hits: stats.hits,
        redis_hits: stats.redis_hits,
        misses: stats.misses,
        degraded: stats.degraded,
        tier_drops: stats.tier_drops,
        full_invalidations: stats.full_invalidations,
        strict_deadlines: stats.strict_deadlines,
        quiet_misses,
        ops,
    }
}

/// One task's workload.
struct Work {
    cache: CachedPool,
    raw: PgPool,
    role: Role,
    rows: i32,
    write_percent: u64,
    rng: u64,
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    quiet_misses: Arc<AtomicU64>,
    log: BufWriter<std::fs::File>,
}

/// Returns the key and the group too, so that the write names its row and its group's value
/// (a `RETURNING` without them costs a pool the table's reads, or every group's list).
const BUMP: &str = "UPDATE counters SET v = v + 1 WHERE id = $1 RETURNING id, v, grp";

/// Moves a row to another group (`$2`): every list pinned to `grp` is invalidated (the old value
/// is not returned), through the pool; through the feed, the old and new groups only.
const MOVE: &str = "UPDATE counters SET v = v + 1, grp = $2 WHERE id = $1 RETURNING id, v, grp";

impl Work {
    fn next(&mut self) -> u64 {
        // xorshift64*: seeded, deterministic per task.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A write: one in four moves its row to a group drawn at random (its `$2`); the others
    /// bump it in place (their `$2` unused, bound for one shape of call).
    fn write_kind(&mut self) -> (&'static str, i32, String) {
        let group = i32::try_from(self.next() % 3).unwrap_or(0);
        if self.next().is_multiple_of(4) {
            (MOVE, group, format!("move{group}"))
        } else {
            (BUMP, group, "bump".to_owned())
        }
    }

    /// Reads the whole list, or the list pinned to one group; every row it shows must be as new
    /// as the writes that returned before it began.
    async fn list(&mut self, group: Option<i32>) {
        let start = clock();
        let list: Vec<Counter> = match group {
            None => sqlacache_sqlx::query_as("SELECT id, v FROM counters ORDER BY id").fetch_all(&self.cache).await,
            Some(group) => {
                sqlacache_sqlx::query_as("SELECT id, v FROM counters WHERE grp = $1 ORDER BY id")
                    .bind(group)
                    .fetch_all(&self.cache)
                    .await
            }
        }
        .expect("a list read");
        let end = clock();
        let what = group.map_or_else(|| "list".to_owned(), |g| format!("list{g}"));
        for counter in list {
            self.record('r', counter.id, counter.v, start, end, &what);
        }
    }

    /// Logs one operation; `what` names it (for the checker's account of a stale read).
    fn record(&mut self, kind: char, row: i32, value: i64, start: u64, end: u64, what: &str) {
        writeln!(self.log, "{kind} {row} {value} {start} {end} {what}").expect("write the log");
    }

    async fn run(mut self, ops: u64) {
        for done in 0..ops {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            self.one(done).await;
            self.ops.fetch_add(1, Ordering::Relaxed);
        }
        self.log.flush().expect("write the log");
    }

    async fn one(&mut self, done: u64) {
        let row = i32::try_from(self.next() % u64::try_from(self.rows).unwrap_or(1)).unwrap_or(0) + 1;
        let dice = self.next() % 100;
        match self.role {
            Role::Observer => {
                let misses = self.cache.stats().misses;
                self.cache.get::<Counter>(self.rows + 1).await.expect("read").expect("the quiet row exists");
                if done > 0 && self.cache.stats().misses > misses {
                    self.quiet_misses.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Role::Outside => {
                let start = clock();
                let (sql, group, what) = self.write_kind();
                let (_, v, _): (i32, i64, i32) =
                    sqlx::query_as(sql).bind(row).bind(group).fetch_one(&self.raw).await.expect("an outside write");
                let end = clock();
                self.record('o', row, v, start, end, &what);
                self.log.flush().expect("write the log");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Role::Worker if dice < self.write_percent => {
                let start = clock();
                let (sql, group, what) = self.write_kind();
                let (_, v, _): (i32, i64, i32) =
                    sqlx::query_as(sql).bind(row).bind(group).fetch_one(&self.cache).await.expect("a write");
                let end = clock();
                self.record('w', row, v, start, end, &what);
                // Kept even if the process is killed next.
                self.log.flush().expect("write the log");
            }
            Role::Worker if dice.is_multiple_of(10) => self.list(None).await,
            Role::Worker if dice % 10 == 5 => {
                let group = i32::try_from(self.next() % 3).unwrap_or(0);
                self.list(Some(group)).await;
            }
            Role::Worker => {
                let start = clock();
                let counter = self.cache.get::<Counter>(row).await.expect("a read").expect("the row exists");
                let end = clock();
                self.record('r', row, counter.v, start, end, "get");
            }
        }
    }
}
