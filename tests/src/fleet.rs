//! A fleet of OS processes for the multi-process tests: each member (the `member` binary of
//! this package) reads and writes the `counters` table through a `CachedPool` of its own, logs
//! every operation with its start and end on the machine's boot-time clock (one clock for every
//! process of the machine), and the test checks every read against every write that returned
//! before it, in any process.
//!
//! Counters only grow, one per write, so a read is stale when it shows less than the value of a
//! write that had returned (plus the mode's allowance) before the read started.

use crate::redis::Proxy;
use crate::TestDb;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

/// How a member's pool is configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Two tiers, `Consistency::Lease`: reads may lag a write by at most the lease.
    Lease,
    /// Two tiers, `Consistency::Strict`: a read that starts after a write returned sees it.
    Strict,
    /// Redis only (`memory_capacity(0)`): a read that starts after a write returned sees it.
    RedisOnly,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Lease => "lease",
            Mode::Strict => "strict",
            Mode::RedisOnly => "redis-only",
        }
    }

    /// Parses the name a member is given on its command line.
    pub fn parse(name: &str) -> Option<Mode> {
        [Mode::Lease, Mode::Strict, Mode::RedisOnly].into_iter().find(|m| m.name() == name)
    }

    /// How long after a write through a pool returned a read may still miss it.
    pub fn allowance(self, lease: Duration) -> Duration {
        match self {
            Mode::Lease => lease,
            Mode::Strict | Mode::RedisOnly => Duration::ZERO,
        }
    }
}

/// What a member does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Reads (by key and whole lists) and writes through its pool.
    Worker,
    /// Writes through a raw `PgPool`, outside every cache: seen only through the change feed.
    Outside,
    /// Reads one row that nothing writes, through a Redis-only pool, and counts its misses: a
    /// miss after the first means Redis was emptied.
    Observer,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Outside => "outside",
            Role::Observer => "observer",
        }
    }

    /// Parses the name a member is given on its command line.
    pub fn parse(name: &str) -> Option<Role> {
        [Role::Worker, Role::Outside, Role::Observer].into_iter().find(|r| r.name() == name)
    }
}

/// The settings every member of one fleet shares.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The path of the `member` binary (`env!("CARGO_BIN_EXE_member")`).
    pub binary: PathBuf,
    /// The pool mode of the workers.
    pub mode: Mode,
    /// Whether the pools listen to the change feed (installed by [`Fleet::new`]).
    pub feed: bool,
    /// The lease of every pool.
    pub lease: Duration,
    /// The Redis command timeout of every pool.
    pub redis_timeout: Duration,
    /// Rows written and read: ids `1..=rows` (row `rows + 1` is the observer's, never written).
    pub rows: i32,
    /// Percent of a worker's operations that write (the rest read; one in ten reads a list).
    pub write_percent: u32,
    /// Concurrent tasks per worker, each with its own log.
    pub tasks: u32,
    /// Operations per task before a member stops by itself (it stops earlier when told).
    pub ops: u64,
}

/// One running member.
pub struct Member {
    /// Its OS process.
    pub child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// The proxy it reaches Redis through.
    pub proxy: Proxy,
    /// Its role.
    pub role: Role,
    /// What it printed when it stopped: `stats <name> <value> ...` at `go` and at the end.
    pub report: Vec<String>,
    /// Whether the test killed it.
    pub killed: bool,
}

/// Counters a member reports, at `go` and at its end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Reads answered from a tier.
    pub hits: u64,
    /// Of which from Redis.
    pub redis_hits: u64,
    /// Reads answered by PostgreSQL.
    pub misses: u64,
    /// Reads that skipped a tier they could not trust (an unheard lease, an open breaker).
    pub degraded: u64,
    /// In-process tier drops.
    pub tier_drops: u64,
    /// Invalidations of everything applied to the in-process tier.
    pub full_invalidations: u64,
    /// Strict writes that waited out their deadline.
    pub strict_deadlines: u64,
    /// The observer's misses on its row after its first read.
    pub quiet_misses: u64,
    /// Operations done.
    pub ops: u64,
}

impl Counts {
    fn parse(line: &str) -> Option<Counts> {
        let mut counts = Counts::default();
        let mut words = line.split(' ');
        for pair in std::iter::from_fn(|| Some((words.next()?, words.next()?))) {
            let value = pair.1.parse().ok()?;
            match pair.0 {
                "hits" => counts.hits = value,
                "redis_hits" => counts.redis_hits = value,
                "misses" => counts.misses = value,
                "degraded" => counts.degraded = value,
                "tier_drops" => counts.tier_drops = value,
                "full_invalidations" => counts.full_invalidations = value,
                "strict_deadlines" => counts.strict_deadlines = value,
                "quiet_misses" => counts.quiet_misses = value,
                "ops" => counts.ops = value,
                _ => {}
            }
        }
        Some(counts)
    }

    /// `name value` pairs, as a member prints them.
    pub fn line(&self) -> String {
        format!(
            "hits {} redis_hits {} misses {} degraded {} tier_drops {} full_invalidations {} strict_deadlines {} quiet_misses {} ops {}",
            self.hits,
            self.redis_hits,
            self.misses,
            self.degraded,
            self.tier_drops,
            self.full_invalidations,
            self.strict_deadlines,
            self.quiet_misses,
            self.ops
        )
    }

    /// What changed from `before` to `self`.
    pub fn since(&self, before: &Counts) -> Counts {
        Counts {
            hits: self.hits - before.hits,
            redis_hits: self.redis_hits - before.redis_hits,
            misses: self.misses - before.misses,
            degraded: self.degraded - before.degraded,
            tier_drops: self.tier_drops - before.tier_drops,
            full_invalidations: self.full_invalidations - before.full_invalidations,
            strict_deadlines: self.strict_deadlines - before.strict_deadlines,
            quiet_misses: self.quiet_misses - before.quiet_misses,
            ops: self.ops - before.ops,
        }
    }
}

impl Member {
    /// What it did between `go` and its end.
    pub fn counts(&self) -> Counts {
        let find = |tag: &str| {
            self.report
                .iter()
                .find_map(|l| l.strip_prefix(tag))
                .and_then(Counts::parse)
                .unwrap_or_else(|| panic!("the member reported no `{tag}` line: {:?}", self.report))
        };
        find("stats end ").since(&find("stats go "))
    }

    fn send(&mut self, line: &str) {
        // A member that has exited (killed by the test) no longer reads.
        let _ = writeln!(self.stdin, "{line}");
        let _ = self.stdin.flush();
    }

    fn expect(&mut self, word: &str) {
        loop {
            let mut line = String::new();
            let n = self.stdout.read_line(&mut line).expect("read a member's output");
            assert!(n > 0, "a member exited before it said `{word}` (its errors are above)");
            let line = line.trim_end().to_owned();
            if line == word {
                return;
            }
            self.report.push(line);
        }
    }

    /// The backend process id of its change-feed listener when it became ready.
    pub fn listener(&self) -> i32 {
        self.report
            .iter()
            .find_map(|l| l.strip_prefix("listener ")?.parse().ok())
            .unwrap_or_else(|| panic!("the member reported no listener: {:?}", self.report))
    }

    /// Freezes the process (`SIGSTOP`).
    pub fn freeze(&self) {
        assert!(signal(&self.child, "STOP"), "kill -STOP {}", self.child.id());
    }

    /// Resumes a frozen process (`SIGCONT`).
    pub fn resume(&self) {
        assert!(signal(&self.child, "CONT"), "kill -CONT {}", self.child.id());
    }
}

/// Sends `SIG<name>` to `child`; whether it was delivered.
fn signal(child: &Child, name: &str) -> bool {
    let mut kill = Command::new("kill");
    kill.arg(format!("-{name}")).arg(child.id().to_string()).stderr(Stdio::null());
    kill.status().expect("run kill").success()
}

/// A fleet over one test database and one Redis server.
pub struct Fleet {
    /// The settings of every member.
    pub settings: Settings,
    /// The members, in the order they were started (a restarted member is added anew).
    pub members: Vec<Member>,
    db_url: String,
    schema: String,
    redis_port: u16,
    prefix: String,
    dir: PathBuf,
    logs: Vec<PathBuf>,
}

impl Fleet {
    /// A fleet on `db` (holding [`crate::COUNTERS`]-like `counters` with at least
    /// `settings.rows + 1` rows) and the Redis on `redis_port`; installs the change feed first
    /// if the settings ask for it.
    pub async fn new(db: &TestDb, redis_port: u16, settings: Settings) -> Fleet {
        if settings.feed {
            let installer = crate::builder(db.pool.clone())
                .model::<crate::Counter>()
                .change_feed()
                .build()
                .await
                .expect("install the change feed");
            drop(installer);
        }
        let dir = std::env::temp_dir().join(format!("sqlacache-fleet-{}", crate::redis::unique_prefix("f")));
        std::fs::create_dir_all(&dir).expect("a directory for the members' logs");
        Fleet {
            settings,
            members: Vec::new(),
            db_url: db.url().to_owned(),
            schema: db.schema.clone(),
            redis_port,
            prefix: crate::redis::unique_prefix("fleet"),
            dir,
            logs: Vec::new(),
        }
    }

    /// Starts a member and waits until it is ready (its tiers trusted); returns its index.
    pub fn spawn(&mut self, role: Role, seed: u64) -> usize {
        let s = &self.settings;
        let index = self.members.len();
        let log = self.dir.join(format!("member-{index}"));
        let proxy = Proxy::start(self.redis_port);
        let mut child = Command::new(&s.binary)
            .env("MEMBER_DATABASE_URL", &self.db_url)
            .env("MEMBER_SCHEMA", &self.schema)
            .env("MEMBER_REDIS_URL", proxy.url())
            .env("MEMBER_PREFIX", &self.prefix)
            .env("MEMBER_MODE", s.mode.name())
            .env("MEMBER_ROLE", role.name())
            .env("MEMBER_FEED", if s.feed { "1" } else { "0" })
            .env("MEMBER_LEASE_MS", s.lease.as_millis().to_string())
            .env("MEMBER_REDIS_TIMEOUT_MS", s.redis_timeout.as_millis().to_string())
            .env("MEMBER_ROWS", s.rows.to_string())
            .env("MEMBER_WRITE_PERCENT", s.write_percent.to_string())
            .env("MEMBER_TASKS", if role == Role::Worker { s.tasks } else { 1 }.to_string())
            .env("MEMBER_OPS", s.ops.to_string())
            .env("MEMBER_SEED", seed.to_string())
            .env("MEMBER_LOG", &log)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", s.binary.display()));
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut member = Member { child, stdin, stdout, proxy, role, report: Vec::new(), killed: false };
        member.expect("ready");
        self.logs.push(log);
        self.members.push(member);
        index
    }

    /// Waits until member `index` has done its operations.
    pub fn finished(&mut self, index: usize) {
        self.members[index].expect("finished");
    }

    /// Tells member `index` to begin its workload.
    pub fn go(&mut self, index: usize) {
        self.members[index].send("go");
    }

    /// Kills member `index` (`SIGKILL`); what it logged so far is kept.
    pub fn kill(&mut self, index: usize) {
        let member = &mut self.members[index];
        member.killed = true;
        let _ = member.child.kill();
        let _ = member.child.wait();
    }

    /// Tells every live member to stop, waits for their reports, and checks every read against
    /// every write. Returns the check.
    pub fn stop(&mut self) -> Check {
        for member in self.members.iter_mut().filter(|m| !m.killed) {
            member.resume();
            member.send("stop");
        }
        for member in self.members.iter_mut().filter(|m| !m.killed) {
            member.expect("done");
            let status = member.child.wait().expect("wait for a member");
            assert!(status.success(), "a member failed: {status}");
        }
        let lease = self.settings.lease;
        let allowance = self.settings.mode.allowance(lease);
        // An outside write is heard through the feed: within the lease of its commit.
        check(&self.logs, allowance, lease)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for member in &mut self.members {
            if !member.killed {
                signal(&member.child, "CONT");
            }
            let _ = member.child.kill();
            let _ = member.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The outcome of checking a fleet's logs.
#[derive(Debug, Default)]
pub struct Check {
    /// Reads checked.
    pub reads: u64,
    /// Writes (through pools and outside).
    pub writes: u64,
    /// Reads that missed a write they had to see.
    pub stale: u64,
    /// The first few stale reads, described.
    pub examples: Vec<String>,
}

/// One logged operation.
struct Op {
    kind: u8,
    row: i32,
    value: i64,
    start: u64,
    end: u64,
    /// What it was (`get`, `list1`, `move2`, ..) and the log it came from.
    what: String,
}

fn parse_log(path: &Path, ops: &mut Vec<Op>) {
    let Ok(text) = std::fs::read_to_string(path) else { return };
    for line in text.lines() {
        let mut words = line.split(' ');
        let mut next = || words.next().unwrap_or("");
        let kind = next().bytes().next().unwrap_or(b'?');
        let (row, value, start, end) = (next().parse(), next().parse(), next().parse(), next().parse());
        let what = format!("{} in {}", next(), path.file_name().unwrap_or_default().to_string_lossy());
        // The last line of a killed member may be cut short.
        if let (Ok(row), Ok(value), Ok(start), Ok(end)) = (row, value, start, end) {
            ops.push(Op { kind, row, value, start, end, what });
        }
    }
}

/// Checks every read in `logs` (and `<log>.<task>`): a read that started more than `allowance`
/// after a write through a pool returned (`outside` after an outside write returned) must show
/// at least its value.
pub fn check(logs: &[PathBuf], allowance: Duration, outside: Duration) -> Check {
    let mut ops = Vec::new();
    for log in logs {
        for task in 0..64 {
            parse_log(&log.with_extension(task.to_string()), &mut ops);
        }
    }
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    // Per row: (when a read must see it, value, the write), sorted, with the running maximum
    // of values.
    let mut due: std::collections::HashMap<i32, Vec<(u64, i64, usize)>> = Default::default();
    let mut check = Check::default();
    for (index, op) in ops.iter().enumerate() {
        let after = match op.kind {
            b'w' => nanos(allowance),
            b'o' => nanos(outside),
            _ => continue,
        };
        check.writes += 1;
        due.entry(op.row).or_default().push((op.end.saturating_add(after), op.value, index));
    }
    for list in due.values_mut() {
        list.sort_unstable();
        let mut max = i64::MIN;
        for entry in list.iter_mut() {
            max = max.max(entry.1);
            entry.1 = max;
        }
    }
    for op in ops.iter().filter(|op| op.kind == b'r') {
        check.reads += 1;
        let Some(list) = due.get(&op.row) else { continue };
        let before = list.partition_point(|(when, ..)| *when < op.start);
        if before == 0 {
            continue;
        }
        let needed = list[before - 1].1;
        if op.value < needed {
            check.stale += 1;
            if check.examples.len() < 5 {
                // The row's writes around the read, as each was logged.
                let writes: Vec<String> = list[before.saturating_sub(4)..(before + 2).min(list.len())]
                    .iter()
                    .map(|&(_, _, w)| {
                        let w = &ops[w];
                        format!("{} {} [{}, {}] {}", w.kind as char, w.value, w.start, w.end, w.what)
                    })
                    .collect();
                check.examples.push(format!(
                    "row {} read {} (started {}, ended {}, {}), but {} had to be seen; writes: {}",
                    op.row,
                    op.value,
                    op.start,
                    op.end,
                    op.what,
                    needed,
                    writes.join("; ")
                ));
            }
        }
    }
    check
}
