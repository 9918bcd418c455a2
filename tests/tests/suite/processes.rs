//! Fleets of OS processes sharing one Redis and one database (see `sqlacache_tests::fleet`):
//! every read of every member is checked against every write that returned before it, in any
//! process, while members are frozen, killed and restarted, cut off from Redis, and lose their
//! change-feed listener.
//!
//! `SQLACACHE_FLEET_OPS` sets the operations per task of each worker (each runs until it has
//! done them, and the outside writer until they all have); unset, members run for the length
//! of the fault schedule.

use sqlacache_tests::fleet::{Check, Fleet, Mode, Role, Settings};
use sqlacache_tests::redis::RedisServer;
use sqlacache_tests::TestDb;
use std::time::{Duration, Instant};

const LEASE: Duration = Duration::from_millis(300);
const ROWS: i32 = 12;

/// `counters` with the rows the members write and the observer's quiet row; `grp`, which
/// leads an index, pins the members' filtered lists, and some writes move rows between groups.
fn schema() -> String {
    format!(
        "CREATE TABLE counters (id int PRIMARY KEY, v bigint NOT NULL, grp int NOT NULL DEFAULT 0);
         CREATE INDEX ON counters (grp);
         INSERT INTO counters SELECT g, 0, g % 3 FROM generate_series(1, {}) g;",
        ROWS + 1
    )
}

fn settings(mode: Mode, feed: bool, redis_timeout: Duration) -> Settings {
    let ops = std::env::var("SQLACACHE_FLEET_OPS").ok().and_then(|n| n.parse().ok());
    Settings {
        binary: env!("CARGO_BIN_EXE_member").into(),
        mode,
        feed,
        lease: LEASE,
        redis_timeout,
        rows: ROWS,
        write_percent: 10,
        tasks: 2,
        ops: ops.unwrap_or(u64::MAX),
    }
}

fn assert_fresh(check: &Check, what: &str) {
    eprintln!("{what}: {} reads and {} writes checked, {} stale", check.reads, check.writes, check.stale);
    assert!(check.reads > 0 && check.writes > 0, "{what}: nothing was checked");
    assert_eq!(check.stale, 0, "{what}: stale reads: {:#?}", check.examples);
}

async fn terminate_backend(db: &TestDb, pid: i32) {
    sqlx::query("SELECT pg_terminate_backend($1)").bind(pid).execute(&db.pool).await.expect("terminate a backend");
}

/// Four members with two tiers and the change feed, under load; one is frozen for 2 s (as a
/// `SIGSTOP`, a long GC pause or a paging storm would). The other three drop nothing and Redis
/// is not emptied (a Redis-only observer keeps hitting the row nothing writes), and no read
/// anywhere misses a write it had to see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_frozen_for_two_seconds_costs_the_other_three_nothing() {
    let server = RedisServer::start(&[]);
    let db = TestDb::in_own_database(&schema()).await;
    // A timeout that a loaded machine does not outlast: this is about a stall, not an outage.
    let mut fleet = Fleet::new(&db, server.port(), settings(Mode::Lease, true, Duration::from_secs(1))).await;
    for seed in 0..4 {
        fleet.spawn(Role::Worker, seed);
    }
    let observer = fleet.spawn(Role::Observer, 9);
    for member in 0..fleet.members.len() {
        fleet.go(member);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    fleet.members[3].freeze();
    tokio::time::sleep(Duration::from_secs(2)).await;
    fleet.members[3].resume();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let check = fleet.stop();
    assert_fresh(&check, "four members, one frozen");
    for (i, member) in fleet.members.iter().enumerate().take(3) {
        let counts = member.counts();
        eprintln!("member {i}: {counts:?}");
        assert_eq!(counts.tier_drops, 0, "member {i} dropped its in-process tier: {counts:?}");
        assert_eq!(counts.full_invalidations, 0, "member {i} was told to drop everything: {counts:?}");
        // A read made while this member's own lease lapsed (a loaded machine's heartbeat round
        // trip outlasting it) is counted as degraded and, when PostgreSQL answers it, as a
        // miss too: those are the machine's doing, not the frozen member's.
        let trusted_misses = counts.misses.saturating_sub(counts.degraded);
        assert!(counts.hits > trusted_misses, "member {i} lost its hits: {counts:?}");
    }
    let quiet = fleet.members[observer].counts();
    assert!(quiet.ops > 0, "the observer read nothing");
    assert_eq!(quiet.quiet_misses, 0, "Redis was emptied: {quiet:?}");
}

/// The faults of a checker run, one after another, while every member works (and an outside
/// writer too, with the feed): member 1 frozen and resumed; member 0 cut off from Redis for
/// less, then (with the feed) for more, than the settling time; member 1's feed listener
/// terminated; the last member killed and a new one started in its place.
async fn faults(fleet: &mut Fleet, db: &TestDb, settle: Duration) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    fleet.members[1].freeze();
    tokio::time::sleep(Duration::from_secs(1)).await;
    fleet.members[1].resume();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Without the feed, the writes of a member cut off for longer than the settling time reach
    // the others only when it reconnects: the limit the README states.
    let cuts: &[Duration] = if fleet.settings.feed { &[settle / 3, settle * 2] } else { &[settle / 3] };
    for &cut in cuts {
        fleet.members[0].proxy.block();
        tokio::time::sleep(cut).await;
        fleet.members[0].proxy.unblock();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if fleet.settings.feed {
        let pid = fleet.members[1].listener();
        terminate_backend(db, pid).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let last = fleet.members.iter().rposition(|m| m.role == Role::Worker).expect("a worker");
    fleet.kill(last);
    let new = fleet.spawn(Role::Worker, 100 + last as u64);
    fleet.go(new);
    tokio::time::sleep(Duration::from_millis(800)).await;
}

/// Runs `members` workers (and an outside writer with the feed) in `mode` through the fault
/// schedule, and checks every read.
async fn checker(mode: Mode, feed: bool, members: u64) {
    let server = RedisServer::start(&[]);
    let db = if feed { TestDb::in_own_database(&schema()).await } else { TestDb::with_schema(&schema()).await };
    // Short enough that a cut-off outlasts the settling time within the run.
    let timeout = Duration::from_millis(200);
    let settle = Duration::from_millis(250) + LEASE / 5 + timeout * 2;
    let mut fleet = Fleet::new(&db, server.port(), settings(mode, feed, timeout)).await;
    for seed in 0..members {
        fleet.spawn(Role::Worker, seed);
    }
    if feed {
        fleet.spawn(Role::Outside, 50);
    }
    for member in 0..fleet.members.len() {
        fleet.go(member);
    }
    let start = Instant::now();
    faults(&mut fleet, &db, settle).await;
    if fleet.settings.ops != u64::MAX {
        // The workers' operations; the outside writer (which paces itself) writes until then.
        for member in 0..fleet.members.len() {
            if !fleet.members[member].killed && fleet.members[member].role == Role::Worker {
                fleet.finished(member);
            }
        }
    }
    let check = fleet.stop();
    let ops: u64 = fleet.members.iter().filter(|m| !m.killed).map(|m| m.counts().ops).sum();
    let what = format!("{mode:?}, {members} members, feed {feed}, {ops} operations in {:?}", start.elapsed());
    assert_fresh(&check, &what);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_with_two_tiers_and_the_feed_never_lag_beyond_the_lease() {
    checker(Mode::Lease, true, 2).await;
    checker(Mode::Lease, true, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_processes_never_serve_a_write_that_returned() {
    checker(Mode::Strict, true, 2).await;
    checker(Mode::Strict, true, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_only_processes_never_serve_a_write_that_returned() {
    checker(Mode::RedisOnly, false, 2).await;
    checker(Mode::RedisOnly, false, 4).await;
}

/// The checker itself catches a stale read: a log in which a read missed a write that had
/// returned before it started.
#[test]
fn the_fleet_check_finds_a_stale_read() {
    let dir = std::env::temp_dir().join(sqlacache_tests::redis::unique_prefix("fleet-check"));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("member-0");
    std::fs::write(log.with_extension("0"), "w 1 5 100 200\nr 1 4 150 260\nr 1 4 300 310\nr 1 5 301 320\n").unwrap();
    std::fs::write(log.with_extension("1"), "o 2 3 100 200\nr 2 2 250 260\nr 2 2 700 710\n").unwrap();
    let strict = sqlacache_tests::fleet::check(std::slice::from_ref(&log), Duration::ZERO, Duration::from_nanos(400));
    // Row 1's read at 300 after the write returned at 200; row 2's at 700, past 200 + 400.
    assert_eq!((strict.reads, strict.writes, strict.stale), (5, 2, 2), "{:?}", strict.examples);
    let lease = sqlacache_tests::fleet::check(&[log], Duration::from_nanos(150), Duration::from_nanos(600));
    assert_eq!(lease.stale, 0, "{:?}", lease.examples);
    std::fs::remove_dir_all(&dir).unwrap();
}
