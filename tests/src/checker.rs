//! The freshness checker: a seeded random workload run through a `CachedPool` by concurrent
//! clients, in which every read is done twice — raw, then cached — and compared whenever no
//! write to the read's tables overlapped the pair.
//!
//! Each table has an in-flight counter and a completion epoch. A write raises the counters of
//! every table it may change before it starts and, once it has returned (or its transaction
//! ended), bumps their epochs and lowers the counters. A read whose tables had nothing in flight
//! and the same epochs before and after it saw a quiet database: its cached answer must equal the
//! raw one. A stale entry left behind by any earlier race is caught by the first quiet read of it.

use crate::TestDb;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlacache_sqlx::testing::Probe as _;
use sqlacache_sqlx::{Cacheable, CachedPool, CachedRow};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, PgPool};
use std::collections::VecDeque;
use std::fmt::Debug;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The checker's schema: a composite key, a cascading foreign key, nullable, text, json and
/// timestamp columns, and two tables whose names differ only in a non-ASCII letter's case
/// (PostgreSQL folds only ASCII letters, so unquoted `Ünits` is `"Ünits"`).
pub const SCHEMA: &str = r#"
CREATE TABLE accounts (id bigint PRIMARY KEY, owner text NOT NULL, balance int NOT NULL, note text,
    meta jsonb NOT NULL DEFAULT '{"level": 0}', updated_at timestamptz);
CREATE TABLE ledger (id bigint PRIMARY KEY, account_id bigint NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    amount int NOT NULL, memo text);
CREATE TABLE members (org bigint, uid bigint, role text NOT NULL,
    since timestamptz NOT NULL DEFAULT '2026-01-01T00:00:00Z', PRIMARY KEY (org, uid));
INSERT INTO accounts (id, owner, balance, note) SELECT g, 'owner' || (g % 7), g * 10, CASE WHEN g % 3 = 0 THEN NULL ELSE 'n' END
    FROM generate_series(1, 30) g;
INSERT INTO ledger SELECT g, 1 + g % 30, g % 50, NULL FROM generate_series(1, 120) g;
INSERT INTO members (org, uid, role) SELECT o, u, 'member' FROM generate_series(1, 3) o, generate_series(1, 10) u;
CREATE TABLE "Ünits" (id bigint PRIMARY KEY, n int NOT NULL);
CREATE TABLE "ünits" (id bigint PRIMARY KEY, n int NOT NULL);
INSERT INTO "Ünits" SELECT g, g FROM generate_series(1, 10) g;
INSERT INTO "ünits" SELECT g, 100 + g FROM generate_series(1, 10) g;
CREATE INDEX ON accounts (owner);
CREATE INDEX ON accounts (note);
CREATE INDEX ON ledger (account_id);
"#;

/// The json column's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// A number that writes change.
    pub level: i32,
}

/// A row of `accounts`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, Deserialize, Cacheable)]
#[cache(table = "accounts")]
pub struct Account {
    /// Primary key.
    #[cache(pk)]
    pub id: i64,
    /// Owner name.
    pub owner: String,
    /// Balance.
    pub balance: i32,
    /// Nullable text.
    pub note: Option<String>,
    /// Json.
    pub meta: Json<Meta>,
    /// Nullable timestamp.
    pub updated_at: Option<DateTime<Utc>>,
}

/// A row of `ledger` (references `accounts`, `ON DELETE CASCADE`).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, Deserialize, Cacheable)]
#[cache(table = "ledger")]
pub struct Entry {
    /// Primary key.
    #[cache(pk)]
    pub id: i64,
    /// Owning account.
    pub account_id: i64,
    /// Amount.
    pub amount: i32,
    /// Nullable text.
    pub memo: Option<String>,
}

/// A row of `members` (composite primary key).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, Deserialize, Cacheable)]
#[cache(table = "members")]
pub struct Member {
    /// First key column.
    #[cache(pk)]
    pub org: i64,
    /// Second key column.
    #[cache(pk)]
    pub uid: i64,
    /// Role.
    pub role: String,
    /// Timestamp.
    pub since: DateTime<Utc>,
}

/// A join result: no table or key of its own.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, Serialize, Deserialize, CachedRow)]
pub struct OwnerTotal {
    /// Account owner.
    pub owner: String,
    /// Sum of the owner's ledger amounts.
    pub total: i64,
}

const ACCOUNTS: usize = 0;
const LEDGER: usize = 1;
const MEMBERS: usize = 2;
const UNITS: usize = 3;
const UNITS_LOWER: usize = 4;
/// Tables an account write may change (deletes cascade to the ledger).
const ACCOUNT_WRITE: &[usize] = &[ACCOUNTS, LEDGER];

/// How a run is set up.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Seed of the whole run; each client derives its own.
    pub seed: u64,
    /// Operations in total, shared among the clients.
    pub ops: u64,
    /// Concurrent clients.
    pub clients: u64,
    /// With `Some((url, memory capacity))`, two pools share the Redis at `url` (each with an
    /// in-process tier of that many bytes; 0 for Redis only), and the clients take turns: a
    /// write through one pool is followed, before its tables count as quiet again, by the
    /// delivery of its invalidation to the other.
    pub redis: Option<(&'static str, u64)>,
    /// With the change feed: the pools listen to it, and a third of the writes go straight to
    /// PostgreSQL, around the pools; such a write counts as done once the feed has delivered it.
    pub feed: bool,
    /// With stale windows: every table's entries expire after 5 ms and may then be served for a
    /// minute while they are refreshed or while PostgreSQL fails, so most hits are of expired
    /// entries; none may be of an invalidated one.
    pub stale: bool,
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Report {
    /// Operations run.
    pub ops: u64,
    /// Reads compared (no write overlapped them).
    pub reads_checked: u64,
    /// Reads answered from the cache.
    pub cache_hits: u64,
    /// Of `cache_hits`, those answered with an entry past its TTL (with stale windows).
    pub stale_hits: u64,
    /// Stale reads, each with the seed, operation and recent history.
    pub stale: Vec<String>,
    /// Wall time.
    pub elapsed: Duration,
    /// With Redis: hits from Redis, Redis errors, tier drops, invalidations published and
    /// received, summed over the pools.
    pub redis_stats: Option<String>,
}

#[derive(Default)]
struct Tables {
    in_flight: [AtomicI64; 5],
    epoch: [AtomicU64; 5],
}

impl Tables {
    fn quiet(&self, tables: &[usize]) -> Option<Vec<u64>> {
        let mut epochs = Vec::with_capacity(tables.len());
        for &t in tables {
            if self.in_flight[t].load(SeqCst) != 0 {
                return None;
            }
            epochs.push(self.epoch[t].load(SeqCst));
        }
        Some(epochs)
    }

    fn begin(&self, tables: &[usize]) {
        for &t in tables {
            self.in_flight[t].fetch_add(1, SeqCst);
        }
    }

    fn end(&self, tables: &[usize]) {
        for &t in tables {
            self.epoch[t].fetch_add(1, SeqCst);
            self.in_flight[t].fetch_sub(1, SeqCst);
        }
    }
}

/// A small, seedable generator (xorshift64*), so runs repeat exactly per client.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> i64 {
        (self.next() % n) as i64
    }
}

struct Shared {
    /// One pool, or two sharing Redis; client `c` uses `caches[c % len]`.
    caches: Vec<CachedPool>,
    /// Two pools with in-process tiers: a write counts as done once the other pool heard it.
    deliver: bool,
    /// The pools listen to the change feed, and some writes go around them.
    feed: bool,
    raw: PgPool,
    tables: Tables,
    history: Mutex<VecDeque<String>>,
    stale: Mutex<Vec<String>>,
    checked: AtomicU64,
    seed: u64,
}

impl Shared {
    fn cache(&self, client: u64) -> &CachedPool {
        &self.caches[client as usize % self.caches.len()]
    }

    /// A write through `client`'s pool returned: once the other pool has applied its
    /// invalidation (two tiers deliver it over Redis pub/sub), its tables are quiet again.
    /// (Counting messages would not do: a recovery after a Redis timeout publishes one more.)
    async fn end(&self, client: u64, tables: &[usize]) {
        if self.feed {
            // Every pool has applied what the feed carried up to now (writes around the pools
            // reach them that way only).
            for cache in &self.caches {
                cache.feed_sync_for_tests().await.expect("a heartbeat through the feed");
            }
        }
        if self.deliver {
            let (mine, other) = (self.cache(client), self.cache(client + 1));
            // The other pool has heard this pool's messages up to the write's (or a later one:
            // a publisher's messages arrive in order, or the gap drops the other's tier).
            let (publisher, sent) = mine.bus_position_for_tests().expect("a pool with Redis");
            let start = Instant::now();
            while other.heard_from_for_tests(publisher) < sent {
                assert!(start.elapsed() < Duration::from_secs(10), "an invalidation was not delivered");
                tokio::task::yield_now().await;
            }
        }
        self.tables.end(tables);
    }

    fn log(&self, line: String) {
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        if history.len() == 40 {
            history.pop_front();
        }
        history.push_back(line);
    }

    fn stale(&self, what: String) {
        let history: Vec<String> = self.history.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect();
        let report = format!("seed {}: stale read: {what}\nlast operations:\n  {}", self.seed, history.join("\n  "));
        self.stale.lock().unwrap_or_else(|e| e.into_inner()).push(report);
    }
}

/// Runs the workload and returns what it found. Panics if PostgreSQL is unreachable.
pub async fn run(config: Config) -> Report {
    let db = TestDb::with_schema(SCHEMA).await;
    let prefix = crate::redis::unique_prefix("checker");
    let mut caches = Vec::new();
    for _ in 0..if config.redis.is_some() { 2 } else { 1 } {
        let builder = crate::builder(db.pool.clone())
            .model::<Account>()
            .model::<Entry>()
            // `Member` is registered at its first use, while the other clients run (with the
            // feed, at build: a table the feed does not cover is not cached).
            .memory_capacity(4 * 1024 * 1024);
        let builder = if config.feed { builder.model::<Member>().change_feed() } else { builder };
        let builder = if config.stale {
            ["accounts", "ledger", "members", "\"Ünits\"", "\"ünits\""].into_iter().fold(
                builder.default_ttl(Duration::from_millis(5)),
                |builder, table| {
                    builder
                        .stale_while_revalidate(table, Duration::from_secs(60))
                        .stale_if_error(table, Duration::from_secs(60))
                },
            )
        } else {
            builder
        };
        let builder = match config.redis {
            // In the shared Redis, its keys expire within a minute.
            Some((url, memory)) => {
                builder.redis(url).key_prefix(&prefix).memory_capacity(memory).default_ttl(Duration::from_secs(60))
            }
            None => builder,
        };
        caches.push(builder.build().await.expect("build the cache"));
    }
    let start = Instant::now();
    while !caches.iter().all(|c| c.tiers_ready_for_tests() && c.feed_trusted_for_tests()) {
        assert!(start.elapsed() < Duration::from_secs(90), "the pools did not connect to Redis");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let shared = Arc::new(Shared {
        caches,
        deliver: config.redis.is_some_and(|(_, memory)| memory > 0),
        feed: config.feed,
        raw: db.pool.clone(),
        tables: Tables::default(),
        history: Mutex::new(VecDeque::new()),
        stale: Mutex::new(Vec::new()),
        checked: AtomicU64::new(0),
        seed: config.seed,
    });
    let start = Instant::now();
    let per_client = config.ops / config.clients.max(1);
    let mut clients = Vec::new();
    for c in 0..config.clients {
        let shared = shared.clone();
        clients.push(tokio::spawn(async move {
            let mut rng = Rng::new(config.seed ^ (c + 1).wrapping_mul(0xA24B_AED4_963E_E407));
            for i in 0..per_client {
                if rng.below(100) < 85 {
                    read(&shared, &mut rng, c, i).await;
                } else {
                    write(&shared, &mut rng, c, i).await;
                }
            }
        }));
    }
    for client in clients {
        client.await.expect("a client panicked");
    }
    let stale = std::mem::take(&mut *shared.stale.lock().unwrap_or_else(|e| e.into_inner()));
    Report {
        ops: per_client * config.clients,
        reads_checked: shared.checked.load(SeqCst),
        cache_hits: shared.caches.iter().map(|c| c.stats().hits).sum(),
        stale_hits: shared.caches.iter().map(|c| c.stats().stale_hits).sum(),
        redis_stats: config.redis.map(|_| {
            let sum =
                |f: fn(&sqlacache_sqlx::StatsSnapshot) -> u64| shared.caches.iter().map(|c| f(&c.stats())).sum::<u64>();
            format!(
                "{} hits from Redis, {} errors, {} degraded reads, {} tier drops, {} published, {} received",
                sum(|s| s.redis_hits),
                sum(|s| s.redis_errors),
                sum(|s| s.degraded),
                sum(|s| s.tier_drops),
                sum(|s| s.published),
                sum(|s| s.received)
            )
        }),
        stale,
        elapsed: start.elapsed(),
    }
}

/// Reads raw then cached, and compares when nothing overlapped.
async fn check<T, R, C>(shared: &Shared, tables: &[usize], what: String, raw: R, cached: C)
where
    T: PartialEq + Debug,
    R: std::future::Future<Output = Result<T, sqlx::Error>>,
    C: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let before = shared.tables.quiet(tables);
    let raw = raw.await.unwrap_or_else(|e| panic!("raw read {what}: {e}"));
    let cached = cached.await.unwrap_or_else(|e| panic!("cached read {what}: {e}"));
    let after = shared.tables.quiet(tables);
    if before.is_some() && before == after {
        shared.checked.fetch_add(1, SeqCst);
        if raw != cached {
            shared.stale(format!("{what}\n  database: {raw:?}\n  cache:    {cached:?}"));
        }
    }
}

async fn read(shared: &Shared, rng: &mut Rng, client: u64, i: u64) {
    let (cache, raw) = (shared.cache(client), &shared.raw);
    let id = 1 + rng.below(34);
    let what = |sql: &str| format!("client {client} op {i}: {sql} [{id}]");
    match rng.below(21) {
        18 => {
            // A list pinned to a value that rows move into and out of.
            let owner = format!("owner{}", rng.below(8));
            let sql = "SELECT * FROM accounts WHERE owner = $1 ORDER BY id";
            let r = sqlx::query_as::<_, Account>(sql).bind(&owner).fetch_all(raw);
            let c = sqlacache_sqlx::query_as::<Account>(sql).bind(&owner).fetch_all(cache);
            check(shared, &[ACCOUNTS], what(sql), r, c).await
        }
        19 => {
            // Pinned through a join equality: the ledger by `account_id`.
            let sql = "SELECT l.id, l.amount FROM accounts a JOIN ledger l ON l.account_id = a.id \
                       WHERE a.id = $1 ORDER BY l.id";
            let r = sqlx::query_as::<_, (i64, i32)>(sql).bind(id).fetch_all(raw);
            let c = sqlacache_sqlx::query_as::<(i64, i32)>(sql).bind(id).fetch_all(cache);
            check(shared, &[ACCOUNTS, LEDGER], what(sql), r, c).await
        }
        20 => {
            let sql = "SELECT count(*) FROM ledger WHERE account_id IN ($1, $2)";
            let other = 1 + rng.below(34);
            let r = sqlx::query_scalar::<_, i64>(sql).bind(id).bind(other).fetch_one(raw);
            let c = sqlacache_sqlx::query_scalar::<i64>(sql).bind(id).bind(other).fetch_one(cache);
            check(shared, &[LEDGER], what(sql), r, c).await
        }
        15 => {
            let floor = rng.below(12) as i32;
            let sql = "SELECT count(*), coalesce(sum(n), 0)::int8 FROM Ünits WHERE n > $1";
            let r = sqlx::query_as::<_, (i64, i64)>(sql).bind(floor).fetch_one(raw);
            let c = sqlacache_sqlx::query_as::<(i64, i64)>(sql).bind(floor).fetch_one(cache);
            check(shared, &[UNITS], what(sql), r, c).await
        }
        16 => {
            let sql = "SELECT id, n FROM ünits WHERE id <= $1 ORDER BY id";
            let r = sqlx::query_as::<_, (i64, i32)>(sql).bind(id).fetch_all(raw);
            let c = sqlacache_sqlx::query_as::<(i64, i32)>(sql).bind(id).fetch_all(cache);
            check(shared, &[UNITS_LOWER], what(sql), r, c).await
        }
        17 => {
            // Its text depends on the session's TimeZone and DateStyle: a session change that
            // reached a pool connection would show here.
            let sql = "SELECT id, updated_at::text FROM accounts WHERE id <= $1 ORDER BY id";
            let r = sqlx::query_as::<_, (i64, Option<String>)>(sql).bind(id).fetch_all(raw);
            let c = sqlacache_sqlx::query_as::<(i64, Option<String>)>(sql).bind(id).fetch_all(cache);
            check(shared, &[ACCOUNTS], what(sql), r, c).await
        }
        13 => {
            let sql = "SELECT a.owner, coalesce(sum(l.amount), 0)::int8 AS total FROM accounts a \
                       LEFT JOIN ledger l ON l.account_id = a.id WHERE a.id <= $1 GROUP BY a.owner ORDER BY a.owner";
            let r = sqlx::query_as::<_, OwnerTotal>(sql).bind(id).fetch_all(raw);
            let c = sqlacache_sqlx::query_as::<OwnerTotal>(sql).bind(id).fetch_all(cache);
            check(shared, &[ACCOUNTS, LEDGER], what(sql), r, c).await
        }
        14 => {
            let below = rng.below(300) as i32;
            let sql = "SELECT id, balance FROM accounts WHERE balance < $1 ORDER BY id";
            let r = sqlx::query_as::<_, (i64, i32)>(sql).bind(below).fetch_all(raw);
            let c = sqlacache_sqlx::query_as::<(i64, i32)>(sql).bind(below).fetch_all(cache);
            check(shared, &[ACCOUNTS], what(sql), r, c).await
        }
        12 => {
            // One SQL text, bound through different Rust types: NULL and '' must never share
            // an entry.
            let sql = "SELECT * FROM accounts WHERE note IS NOT DISTINCT FROM $1 ORDER BY id";
            match rng.below(3) {
                0 => {
                    let r = sqlx::query_as::<_, Account>(sql).bind(None::<String>).fetch_all(raw);
                    let c = sqlacache_sqlx::query_as::<Account>(sql).bind(None::<String>).fetch_all(cache);
                    check(shared, &[ACCOUNTS], what("note IS NOT DISTINCT FROM NULL"), r, c).await
                }
                1 => {
                    let r = sqlx::query_as::<_, Account>(sql).bind("").fetch_all(raw);
                    let c = sqlacache_sqlx::query_as::<Account>(sql).bind("").fetch_all(cache);
                    check(shared, &[ACCOUNTS], what("note IS NOT DISTINCT FROM ''"), r, c).await
                }
                _ => {
                    let r = sqlx::query_as::<_, Account>(sql).bind(Some("")).fetch_all(raw);
                    let c = sqlacache_sqlx::query_as::<Account>(sql).bind(Some("")).fetch_all(cache);
                    check(shared, &[ACCOUNTS], what("note IS NOT DISTINCT FROM Some('')"), r, c).await
                }
            }
        }
        0 => {
            let sql = "SELECT * FROM accounts WHERE id = $1";
            let r = sqlx::query_as::<_, Account>(sql).bind(id).fetch_optional(raw);
            check(shared, &[ACCOUNTS], what("get account"), r, cache.get::<Account>(id)).await
        }
        1 => {
            let key = (1 + rng.below(3), 1 + rng.below(12));
            let sql = "SELECT * FROM members WHERE org = $1 AND uid = $2";
            let r = sqlx::query_as::<_, Member>(sql).bind(key.0).bind(key.1).fetch_optional(raw);
            check(shared, &[MEMBERS], what("get member"), r, cache.get::<Member>(key)).await
        }
        2 => {
            let entry = 1 + rng.below(130);
            let sql = "SELECT * FROM ledger WHERE id = $1";
            let r = sqlx::query_as::<_, Entry>(sql).bind(entry).fetch_optional(raw);
            check(shared, &[LEDGER], what("get entry"), r, cache.get::<Entry>(entry)).await
        }
        3 => {
            let (lo, hi) = (rng.below(200) as i32, rng.below(400) as i32);
            let sql = "SELECT * FROM accounts WHERE balance BETWEEN $1 AND $2 ORDER BY id";
            let r = sqlx::query_as::<_, Account>(sql).bind(lo).bind(hi).fetch_all(raw);
            let c = sqlacache_sqlx::query_as::<Account>(sql).bind(lo).bind(hi).fetch_all(cache);
            check(shared, &[ACCOUNTS], what(sql), r, c).await
        }
        4 => {
            let pattern = format!("owner{}%", rng.below(7));
            let sql = "SELECT * FROM accounts WHERE owner LIKE $1 ORDER BY id LIMIT 5";
            let r = sqlx::query_as::<_, Account>(sql).bind(&pattern).fetch_all(raw);
            let c = sqlacache_sqlx::query_as::<Account>(sql).bind(&pattern).fetch_all(cache);
            check(shared, &[ACCOUNTS], what(sql), r, c).await
        }
        5 => {
            let ids = [id, 1 + rng.below(34), 1 + rng.below(34)];
            let sql = "SELECT * FROM accounts WHERE id IN ($1, $2, $3) ORDER BY id";
            let r = sqlx::query_as::<_, Account>(sql).bind(ids[0]).bind(ids[1]).bind(ids[2]).fetch_all(raw);
            let c = sqlacache_sqlx::query_as::<Account>(sql).bind(ids[0]).bind(ids[1]).bind(ids[2]).fetch_all(cache);
            check(shared, &[ACCOUNTS], what(sql), r, c).await
        }
        6 => {
            let floor = rng.below(300) as i32;
            let sql = "SELECT count(*) FROM accounts WHERE balance > $1";
            let r = sqlx::query_scalar::<_, i64>(sql).bind(floor).fetch_one(raw);
            let c = sqlacache_sqlx::query_scalar::<i64>(sql).bind(floor).fetch_one(cache);
            check(shared, &[ACCOUNTS], what(sql), r, c).await
        }
        7 => {
            let sql = "SELECT EXISTS (SELECT 1 FROM ledger WHERE account_id = $1)";
            let r = sqlx::query_scalar::<_, bool>(sql).bind(id).fetch_one(raw);
            let c = sqlacache_sqlx::query_scalar::<bool>(sql).bind(id).fetch_one(cache);
            check(shared, &[LEDGER], what(sql), r, c).await
        }
        8 => {
            let amount = rng.below(50) as i32;
            let sql = "SELECT a.* FROM accounts a JOIN ledger l ON l.account_id = a.id WHERE l.amount > $1 ORDER BY a.id, l.id";
            let r = sqlx::query_as::<_, Account>(sql).bind(amount).fetch_all(raw);
            let c = sqlacache_sqlx::query_as::<Account>(sql).bind(amount).fetch_all(cache);
            check(shared, &[ACCOUNTS, LEDGER], what(sql), r, c).await
        }
        9 => {
            let org = 1 + rng.below(3);
            let sql = "SELECT * FROM members WHERE org = $1 ORDER BY uid";
            let r = sqlx::query_as::<_, Member>(sql).bind(org).fetch_all(raw);
            let c = sqlacache_sqlx::query_as::<Member>(sql).bind(org).fetch_all(cache);
            check(shared, &[MEMBERS], what(sql), r, c).await
        }
        10 => {
            let sql = "SELECT coalesce(sum(amount), 0)::int8 FROM ledger WHERE account_id = $1";
            let r = sqlx::query_scalar::<_, i64>(sql).bind(id).fetch_one(raw);
            let c = sqlacache_sqlx::query_scalar::<i64>(sql).bind(id).fetch_one(cache);
            check(shared, &[LEDGER], what(sql), r, c).await
        }
        _ => {
            let sql = "SELECT * FROM accounts WHERE note IS NULL ORDER BY id";
            let r = sqlx::query_as::<_, Account>(sql).fetch_all(raw);
            let c = sqlacache_sqlx::query_as::<Account>(sql).fetch_all(cache);
            check(shared, &[ACCOUNTS], what(sql), r, c).await
        }
    }
}

/// One random write statement: its SQL (literals inlined, so it runs the same on a pool or a
/// transaction) and the tables it may change.
fn write_statement(rng: &mut Rng) -> (String, &'static [usize]) {
    let id = 1 + rng.below(34);
    let n = rng.below(500);
    match rng.below(18) {
        16 => (
            // Rows moving between the lists pinned to `account_id`, with their new value reported.
            format!("UPDATE ledger SET account_id = {id} WHERE id = {} AND EXISTS (SELECT 1 FROM accounts WHERE id = {id})", 1 + rng.below(130)),
            &[LEDGER],
        ),
        17 => (
            // Rows moving between the lists pinned to `owner`, one statement for several rows.
            format!("UPDATE accounts SET owner = 'owner{}' WHERE id % 5 = {}", n % 8, n % 5),
            ACCOUNT_WRITE,
        ),
        14 => {
            // The same table, spelled quoted and unquoted.
            let table = if n % 2 == 0 { "\"Ünits\"" } else { "Ünits" };
            (format!("UPDATE {table} SET n = {} WHERE id = {}", n % 20, 1 + n % 12), &[UNITS])
        }
        15 => (
            format!("INSERT INTO ünits VALUES ({}, {n}) ON CONFLICT (id) DO UPDATE SET n = excluded.n", 1 + n % 12),
            &[UNITS_LOWER],
        ),
        0 if n % 2 == 0 => (format!("UPDATE accounts SET note = '' WHERE id = {id}"), ACCOUNT_WRITE),
        0 | 1 => (format!("UPDATE accounts SET balance = {n} WHERE id = {id}"), ACCOUNT_WRITE),
        2 => (
            format!(
                "INSERT INTO accounts (id, owner, balance) VALUES ({id}, 'owner{}', {n}) \
                 ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, balance = excluded.balance",
                n % 7
            ),
            ACCOUNT_WRITE,
        ),
        3 => (format!("INSERT INTO accounts (id, owner, balance) VALUES ({id}, 'new', {n}) ON CONFLICT DO NOTHING"), ACCOUNT_WRITE),
        4 => (format!("DELETE FROM accounts WHERE id = {id}"), ACCOUNT_WRITE),
        5 => (format!("UPDATE accounts SET balance = balance + 1, note = NULL WHERE balance < {n}"), ACCOUNT_WRITE),
        6 => (format!("DELETE FROM ledger WHERE amount < {}", n % 5), &[LEDGER]),
        7 => (
            format!(
                "INSERT INTO ledger SELECT {}, {id}, {}, 'm' WHERE EXISTS (SELECT 1 FROM accounts WHERE id = {id}) \
                 ON CONFLICT (id) DO UPDATE SET amount = excluded.amount",
                1 + rng.below(130),
                n % 50
            ),
            &[LEDGER],
        ),
        8 => (
            format!("WITH moved AS (UPDATE ledger SET amount = amount + 1 WHERE account_id = {id} RETURNING id) SELECT count(*) FROM moved"),
            &[LEDGER],
        ),
        9 => (
            format!(
                "UPDATE accounts SET note = 'n{n}' WHERE id = {id}; UPDATE members SET role = 'r{n}' WHERE org = {}",
                1 + n % 3
            ),
            &[ACCOUNTS, LEDGER, MEMBERS],
        ),
        10 => (
            format!(
                "INSERT INTO members (org, uid, role) VALUES ({}, {}, 'role{n}') ON CONFLICT (org, uid) DO UPDATE SET role = excluded.role",
                1 + n % 3,
                1 + rng.below(12)
            ),
            &[MEMBERS],
        ),
        11 => (format!("DELETE FROM members WHERE org = {} AND uid = {}", 1 + n % 3, 1 + rng.below(12)), &[MEMBERS]),
        12 => (
            format!("UPDATE accounts SET meta = jsonb_build_object('level', {n}), updated_at = now() WHERE id = {id}"),
            ACCOUNT_WRITE,
        ),
        _ if n < 10 => ("TRUNCATE ledger".to_owned(), &[LEDGER]),
        _ if n < 200 => (
            format!(
                "INSERT INTO members (org, uid, role) VALUES ({o}, {a}, 'bulk'), ({o}, {b}, 'bulk'), ({o}, {c}, 'bulk') \
                 ON CONFLICT DO NOTHING",
                o = 1 + n % 3,
                a = 1 + rng.below(12),
                b = 1 + rng.below(12),
                c = 1 + rng.below(12)
            ),
            &[MEMBERS],
        ),
        _ => (format!("UPDATE members SET since = now() WHERE uid = {}", 1 + rng.below(12)), &[MEMBERS]),
    }
}

/// Session changes sent through the pool.
const SESSION_CHANGES: &[&str] = &[
    "SET TIME ZONE 'Asia/Tokyo'",
    "SELECT set_config('TimeZone', 'America/New_York', false)",
    "SET datestyle = 'SQL, DMY'",
    "SELECT * FROM set_config('DateStyle', 'German', false)",
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "DO $$ BEGIN PERFORM set_config('TimeZone', 'Asia/Kolkata', false); END $$",
];

fn union(sets: &[&[usize]]) -> Vec<usize> {
    let mut all: Vec<usize> = sets.iter().flat_map(|s| s.iter().copied()).collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// Database errors (constraint violations, conflicts) are part of the workload; anything else
/// is a failure.
fn expected(result: Result<(), sqlx::Error>, sql: &str) {
    if let Err(error) = result {
        assert!(error.as_database_error().is_some(), "{sql}: {error}");
    }
}

/// A write around the pools, straight to PostgreSQL: one statement, or several in one implicit
/// transaction (a simple query).
async fn write_around(shared: &Shared, rng: &mut Rng, client: u64, i: u64) {
    let statements: Vec<(String, &'static [usize])> = (0..1 + rng.below(3)).map(|_| write_statement(rng)).collect();
    let tables = union(&statements.iter().map(|(_, t)| *t).collect::<Vec<_>>());
    let sql = statements.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>().join("; ");
    shared.log(format!("client {client} op {i}: around the pool: {sql}"));
    shared.tables.begin(&tables);
    let result = sqlx::raw_sql(AssertSqlSafe(sql.clone())).execute(&shared.raw).await.map(drop);
    shared.end(client, &tables).await;
    expected(result, &sql);
}

async fn write(shared: &Shared, rng: &mut Rng, client: u64, i: u64) {
    let cache = shared.cache(client);
    if shared.feed && rng.below(3) == 0 {
        return write_around(shared, rng, client, i).await;
    }
    match rng.below(10) {
        // Schema changes, only outside transactions: inside them their locks would wait on
        // the readers of this very workload.
        0 if rng.below(50) == 0 => {
            let (sql, tables): (&str, &[usize]) = match rng.below(4) {
                0 => ("ALTER TABLE accounts ALTER COLUMN note SET DEFAULT 'd'", ACCOUNT_WRITE),
                1 => ("ALTER TABLE accounts ALTER COLUMN note DROP DEFAULT", ACCOUNT_WRITE),
                2 => ("CREATE INDEX IF NOT EXISTS members_role ON members (role)", &[MEMBERS]),
                _ => ("DROP INDEX IF EXISTS members_role", &[MEMBERS]),
            };
            shared.log(format!("client {client} op {i}: {sql}"));
            shared.tables.begin(tables);
            let result = sqlx::raw_sql(AssertSqlSafe(sql)).execute(cache).await.map(drop);
            shared.end(client, tables).await;
            expected(result, sql);
        }
        // A session change through the pool, in one of its spellings: it must never reach the
        // connections the pool's reads run on (the connection rule).
        1 if rng.below(10) == 0 => {
            let sql = SESSION_CHANGES[rng.below(SESSION_CHANGES.len() as u64) as usize];
            shared.log(format!("client {client} op {i}: {sql}"));
            let result = sqlx::raw_sql(AssertSqlSafe(sql)).execute(cache).await.map(drop);
            expected(result, sql);
        }
        0..=6 => {
            let (sql, tables) = write_statement(rng);
            shared.log(format!("client {client} op {i}: {sql}"));
            shared.tables.begin(tables);
            let result = if sql.contains(';') || rng.below(2) == 0 {
                sqlx::raw_sql(AssertSqlSafe(sql.clone())).execute(cache).await.map(drop)
            } else {
                sqlx::query(AssertSqlSafe(sql.clone())).execute(cache).await.map(drop)
            };
            shared.end(client, tables).await;
            expected(result, &sql);
        }
        _ => {
            let statements: Vec<(String, &'static [usize])> =
                (0..1 + rng.below(3)).map(|_| write_statement(rng)).collect();
            let tables = union(&statements.iter().map(|(_, t)| *t).collect::<Vec<_>>());
            let ending = rng.below(10);
            let savepoint = rng.below(3) == 0;
            // `COMMIT AND CHAIN` after the first statement: that part commits there, the rest at
            // the end (or never).
            let chain = statements.len() > 1 && rng.below(4) == 0;
            let session = rng.below(8) == 0;
            shared.log(format!(
                "client {client} op {i}: BEGIN; {}{}{}{}; {}",
                if session { "SET TIME ZONE 'Asia/Tokyo'; " } else { "" },
                statements.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>().join("; "),
                if chain { " (COMMIT AND CHAIN after the first)" } else { "" },
                if savepoint { " (last one inside a rolled-back savepoint)" } else { "" },
                match ending {
                    0..=5 => "COMMIT",
                    6..=7 => "ROLLBACK",
                    _ => "drop",
                }
            ));
            shared.tables.begin(&tables);
            let mut tx = cache.begin().await.expect("begin");
            if session {
                sqlx::raw_sql("SET TIME ZONE 'Asia/Tokyo'").execute(&mut *tx).await.expect("set");
            }
            let last = statements.len() - 1;
            let mut failed = false;
            for (n, (sql, _)) in statements.iter().enumerate() {
                if chain && n == 1 {
                    sqlx::raw_sql("COMMIT AND CHAIN").execute(&mut *tx).await.expect("commit and chain");
                }
                if savepoint && n == last {
                    sqlx::raw_sql("SAVEPOINT sp").execute(&mut *tx).await.expect("savepoint");
                }
                let result = sqlx::raw_sql(AssertSqlSafe(sql.clone())).execute(&mut *tx).await.map(drop);
                if savepoint && n == last {
                    sqlx::raw_sql("ROLLBACK TO SAVEPOINT sp").execute(&mut *tx).await.expect("rollback to savepoint");
                } else if result.is_err() {
                    failed = true;
                }
                expected(result, sql);
                if failed {
                    break;
                }
            }
            match ending {
                0..=5 if !failed => expected(tx.commit().await, "COMMIT"),
                0..=7 => expected(tx.rollback().await, "ROLLBACK"),
                _ => drop(tx),
            }
            shared.end(client, &tables).await;
        }
    }
}
