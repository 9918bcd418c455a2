//! The strict rows: a write in strict mode against a default write and a raw write, with 1, 2
//! and 4 other processes keeping in-process tiers (members), all healthy, and then with one of
//! four frozen (`SIGSTOP`).
//!
//! The members are this binary run again (`ratios member ..`): each builds two two-tier pools,
//! one under the default writer's key prefix and one under the strict writer's, so each writer
//! has exactly the members counted, and idles until its standard input closes.
//!
//! The floor, in the same run: the same number of processes (`ratios raw-member ..`) that
//! answer each message on a channel with a publish of their own, through raw fred, and a raw
//! writer that publishes and waits for every answer, against a bare publish.

use super::{print_header, print_pair, rounds, us, Row};
use sqlacache_benches::{BenchUser, Samples, USERS, WRITE};
use sqlacache_sqlx::{CachedPool, Consistency};
use sqlx::PgPool;
use std::hint::black_box;
use std::io::{BufRead as _, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// The lease of every pool here: short, so that the frozen rows take seconds, not minutes.
const LEASE: Duration = Duration::from_millis(200);

/// Freezes and resumes of one member in the frozen rows.
const FREEZES: usize = 16;

async fn pool(
    pg: &PgPool,
    url: &str,
    prefix: &str,
    consistency: Consistency,
) -> Result<CachedPool, sqlacache_sqlx::Error> {
    CachedPool::builder(pg.clone())
        .model::<BenchUser>()
        .default_ttl(Duration::from_secs(120))
        .redis(url)
        .key_prefix(prefix)
        .memory_capacity(16 << 20)
        .lease(LEASE)
        .consistency(consistency)
        .build()
        .await
}

/// Run as a member: `ratios member <redis url> <prefix> <prefix>`.
pub async fn member(pg: &PgPool, args: &[String]) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let [url, prefixes @ ..] = args else { return Err("member <redis url> <prefix>..".into()) };
    let mut pools = Vec::new();
    for prefix in prefixes {
        let cache = pool(pg, url, prefix, Consistency::Lease).await?;
        cache.get::<BenchUser>(1).await?;
        pools.push(cache);
    }
    println!("ready");
    // Until the parent closes standard input (or dies).
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
            line.clear();
        }
    })
    .await?;
    drop(pools);
    Ok(())
}

/// Run as a raw member: `ratios raw-member <redis url> <channel>`. Answers each message
/// (`<reply channel> <number>`) by publishing the number on the reply channel.
pub async fn raw_member(args: &[String]) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use fred::interfaces::{ClientLike as _, EventInterface as _, PubsubInterface as _};
    let [url, channel] = args else { return Err("raw-member <redis url> <channel>".into()) };
    let config = fred::prelude::Config::from_url(url)?;
    let (commands, subscriber) = (fred_client(&config)?, fred_client(&config)?);
    commands.init().await?;
    let mut messages = subscriber.message_rx();
    subscriber.init().await?;
    subscriber.subscribe(channel.as_str()).await?;
    println!("ready");
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
            line.clear();
        }
        std::process::exit(0);
    });
    while let Ok(message) = messages.recv().await {
        let text: String = message.value.convert()?;
        let (reply, number) = text.split_once(' ').ok_or("a message without a reply channel")?;
        let () = commands.publish(reply, number).await.map(|_: i64| ())?;
    }
    Ok(())
}

/// A fred client that connects as the cache's store does (TCP_NODELAY).
fn fred_client(config: &fred::prelude::Config) -> Result<fred::prelude::Client, fred::error::Error> {
    fred::prelude::Builder::from_config(config.clone())
        .with_connection_config(|c| {
            c.tcp = fred::types::config::TcpConfig { nodelay: Some(true), ..Default::default() }
        })
        .build()
}

/// The floor of acknowledgements: `raw` publishes to no subscriber, `acked` publishes to the
/// raw members and waits for `members` answers, interleaved.
async fn raw_acks(
    url: &str,
    channel: &str,
    members: usize,
    raw: &mut Samples,
    acked: &mut Samples,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use fred::interfaces::{ClientLike as _, EventInterface as _, PubsubInterface as _};
    let config = fred::prelude::Config::from_url(url)?;
    let (commands, subscriber) = (fred_client(&config)?, fred_client(&config)?);
    commands.init().await?;
    let mut answers = subscriber.message_rx();
    subscriber.init().await?;
    let (reply, nobody) = (format!("{channel}:reply"), format!("{channel}:nobody"));
    subscriber.subscribe(reply.as_str()).await?;
    for round in 0..rounds() {
        let bare = async {
            let _: i64 = commands.publish(nobody.as_str(), "0").await.unwrap();
        };
        let answered = async {
            let _: i64 = commands.publish(channel, format!("{reply} {round}")).await.unwrap();
            let mut heard = 0;
            while heard < members {
                let message = answers.recv().await.unwrap();
                if message.value.convert::<String>().unwrap() == round.to_string() {
                    heard += 1;
                }
            }
        };
        super::pair(round, (&mut *raw, bare), (&mut *acked, answered)).await;
    }
    Ok(())
}

/// A line of a table of [`print_pair`] rows that is no row.
fn note(text: &str) {
    println!("|   {text:<97}|");
}

/// A member process; killed when dropped.
struct Member {
    child: Child,
    _stdin: ChildStdin,
}

impl Member {
    /// Runs this binary as `kind` (`member` or `raw-member`) with `args`.
    fn spawn(kind: &str, args: &[&str]) -> Result<Member, Box<dyn std::error::Error + Send + Sync>> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg(kind)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let mut out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        if line.trim() != "ready" {
            return Err(format!("a member did not start: {line:?}").into());
        }
        Ok(Member { child, _stdin: stdin })
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{signal} a member");
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.signal("CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Times the raw, default and strict write once each, in an order that turns with the round;
/// the three sides update rows of their own.
async fn round_of_writes(
    pg: &PgPool,
    default: &CachedPool,
    strict: &CachedPool,
    round: i64,
    samples: &mut [Samples; 3],
) {
    let row = |side: i64| USERS - 2_000 - side * 500 - round % 500;
    for turn in 0..3 {
        let side = (round + turn) % 3;
        let sample = &mut samples[side as usize];
        match side {
            0 => {
                sample
                    .time(async {
                        black_box(sqlx::query(WRITE).bind(row(0)).execute(pg).await.unwrap());
                    })
                    .await
            }
            1 => {
                sample
                    .time(async {
                        black_box(sqlx::query(WRITE).bind(row(1)).execute(default).await.unwrap());
                    })
                    .await
            }
            _ => {
                sample
                    .time(async {
                        black_box(sqlx::query(WRITE).bind(row(2)).execute(strict).await.unwrap());
                    })
                    .await
            }
        }
    }
}

pub async fn rows(pg: &PgPool) -> Result<Vec<Row>, Box<dyn std::error::Error + Send + Sync>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let id = std::process::id();
    let (lease_prefix, strict_prefix) = (format!("sqlacache_bench_l_{id}"), format!("sqlacache_bench_s_{id}"));
    let default = pool(pg, &url, &lease_prefix, Consistency::Lease).await?;
    let strict = pool(pg, &url, &strict_prefix, Consistency::Strict).await?;
    let mut members: Vec<Member> = Vec::new();
    println!("\nStrict writes (lease {LEASE:?}), {} rounds; microseconds; members are other processes\n", rounds());
    print_header("cache");
    let mut rows = Vec::new();
    let mut healthy_strict = Duration::ZERO;
    for n in [1, 2, 4] {
        while members.len() < n {
            members.push(Member::spawn("member", &[&url, &lease_prefix, &strict_prefix])?);
        }
        // Registered: each member's heartbeat has come back and joined it.
        tokio::time::sleep(LEASE * 3).await;
        let mut samples: [Samples; 3] = Default::default();
        for round in 0..rounds() {
            round_of_writes(pg, &default, &strict, round, &mut samples).await;
        }
        let [raw, lease, strict_samples] = &mut samples;
        let name = |what: &str| format!("{what}, {n} member{}", if n == 1 { "" } else { "s" });
        print_pair(&name("default write"), raw, lease, "", &|_, _| true);
        let (lease_p50, strict_p50) = (lease.quantile(0.5), strict_samples.quantile(0.5));
        let extra = us(strict_p50) - us(lease_p50);
        print_pair(&name("strict write"), raw, strict_samples, "", &|_, _| true);
        note(&format!("strict - default: {extra:.1} us"));
        // The floor: raw members answering through raw fred.
        let raw_channel = format!("sqlacache_bench_raw_{id}");
        let raw_members =
            (0..n).map(|_| Member::spawn("raw-member", &[&url, &raw_channel])).collect::<Result<Vec<_>, _>>()?;
        let (mut bare, mut answered) = (Samples::default(), Samples::default());
        raw_acks(&url, &raw_channel, n, &mut bare, &mut answered).await?;
        drop(raw_members);
        let floor = us(answered.quantile(0.5)) - us(bare.quantile(0.5));
        note(&format!("floor, raw fred: {floor:.1} us (a publish answered by {n} processes, less a bare one)"));
        if n == 4 {
            healthy_strict = strict_p50;
            rows.push(Row {
                name: "strict write, 4 healthy".into(),
                target: "strict <= default + 150 us (median)",
                met: extra <= 150.0,
            });
        }
    }
    // One of four frozen: a strict write waits for it until the lease has passed, until its
    // registration (two leases after its last heartbeat) lapses. Each freeze times the writes
    // of that window, then the member is resumed and registers again.
    let [mut raw, mut lease, mut frozen] = std::array::from_fn(|_| Samples::default());
    let mut round = 0;
    for _ in 0..FREEZES {
        members[0].signal("STOP");
        let stopped = Instant::now();
        while stopped.elapsed() < LEASE * 2 {
            let mut samples = [std::mem::take(&mut raw), std::mem::take(&mut lease), std::mem::take(&mut frozen)];
            round_of_writes(pg, &default, &strict, round, &mut samples).await;
            [raw, lease, frozen] = samples;
            round += 1;
        }
        members[0].signal("CONT");
        tokio::time::sleep(LEASE * 3).await;
    }
    let default_frozen = lease.quantile(0.5);
    print_pair("default, 1 of 4 frozen", &mut raw, &mut lease, "", &|_, _| true);
    let frozen_p50 = frozen.quantile(0.5);
    print_pair("strict, 1 of 4 frozen", &mut raw, &mut frozen, "", &|_, _| true);
    // The deadline a strict write waits out for a member that does not acknowledge: the lease,
    // 1% for clock rates and 1 ms (see `strict::deadline`).
    let deadline = LEASE + LEASE / 100 + Duration::from_millis(1);
    let beyond = frozen_p50.saturating_sub(deadline);
    println!(
        "\nwith one of four members frozen, a strict write takes {:.1} ms: the deadline ({:.0} ms for a lease of {LEASE:?}) and {:.0} us more (a default write took {:.0} us then; a healthy strict write {:.0} us)",
        us(frozen_p50) / 1e3,
        us(deadline) / 1e3,
        us(beyond),
        us(default_frozen),
        us(healthy_strict)
    );
    rows.push(Row {
        name: "strict write, 1 frozen".into(),
        target: "<= deadline + a default write + 2 ms (timer)",
        // (The timer's tick is a millisecond, and the writer is woken after it.)
        met: frozen_p50 <= deadline + default_frozen + Duration::from_millis(2),
    });
    drop(members);
    for cache in [&default, &strict] {
        cache.invalidate_all().await?;
    }
    Ok(rows)
}
