//! The shared tier: cached values in Redis, fresh by django-cacheops' "insideout" rule, so that
//! eviction and restarts only ever cost misses.
//!
//! The in-process rule ("fresh while every tag's last invalidation is older than the entry") reads
//! a missing tag as "never invalidated"; in Redis, tags are evicted and lost on restart, so that
//! rule would serve stale values. Here instead:
//!
//! - each tag is a key holding a random **epoch**;
//! - a fill reads its tags' epochs **before** it queries the database, creating the missing ones
//!   ([`RedisStore::epochs`], one round trip), and stores them with the value
//!   ([`RedisStore::put`]);
//! - a read serves the value only while every stored epoch still equals its tag's
//!   ([`RedisStore::get`], one round trip);
//! - an invalidation deletes the tag keys ([`RedisStore::invalidate`]).
//!
//! A missing or changed tag means stale: a fill that straddles an invalidation stored epochs that
//! no longer exist, and an evicted or restarted Redis has lost the tags its values need.
//!
//! Every key lives under `<prefix>:<format>:<scope>:`: the prefix separates applications, the
//! format version separates releases whose stored bytes differ, and the scope separates
//! databases. Nothing scans or flushes: [`RedisStore::invalidate_all`] deletes one key, the
//! global tag that every value depends on.
//!
//! On one server, each call is one round trip (Lua scripts). On a Redis Cluster, where a
//! value and its tags live in different slots, the same rule runs from the client: epochs are
//! read and created with one pipeline of single-key commands, and a read fetches the value and
//! then its tags. Freshness needs only equality of each tag with its stored epoch, not
//! atomicity across keys, so the rule holds across slots.
//!
//! Each call has a command timeout. An error or a timeout leaves the outcome of the command
//! unknown (the client resends commands that were in flight when a connection broke), so a
//! caller must treat a failed [`RedisStore::invalidate`] as possibly not applied, and a failed
//! [`RedisStore::get`] as a miss.

use crate::Tag;
use fred::interfaces::KeysInterface;
use fred::prelude::{Builder, ClientLike, Config, Error as FredError, ReconnectPolicy, Value};
use fred::types::scripts::Script;
use fred::types::{Expiration, ExpireOptions, SetOptions};
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The version of the stored form; part of every key.
pub const FORMAT: u32 = 1;

/// Why a Redis call did not complete (its outcome is unknown), or why a URL was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisError {
    /// The command failed or timed out.
    #[error("redis: {0}")]
    Command(#[from] FredError),
    /// The URL is not one this store connects to.
    #[error("invalid Redis URL `{0}`: {1}")]
    Url(String, &'static str),
}

/// Schemes of plain TCP connections to one server or a cluster.
const SCHEMES: &[&str] = &["redis", "redis-cluster", "valkey", "valkey-cluster"];

/// Creates the missing tags and returns every tag's epoch. KEYS: the tags; ARGV[1]: a TTL in
/// milliseconds; ARGV[2..]: a fresh epoch for each tag. A tag key lives at least as long as the
/// longest value filled against it (past that, losing it only costs misses).
const EPOCHS: &str = r#"
local epochs = {}
for i, tag in ipairs(KEYS) do
  local old = redis.call('SET', tag, ARGV[i + 1], 'NX', 'GET', 'PX', ARGV[1])
  if old then
    redis.call('PEXPIRE', tag, ARGV[1], 'GT')
    epochs[i] = old
  else
    epochs[i] = ARGV[i + 1]
  end
end
return epochs
"#;

/// Returns the value of KEYS[1] if every epoch stored in its header still holds, else nil. The
/// header is text, `<tag> <epoch>` lines ended by an empty line; the payload follows.
const GET: &str = r#"
local stored = redis.call('GET', KEYS[1])
if not stored then return false end
local stop = string.find(stored, '\n\n', 1, true)
if not stop then return false end
for tag, epoch in string.gmatch(string.sub(stored, 1, stop), '(%S+) (%S+)\n') do
  if redis.call('GET', tag) ~= epoch then return false end
end
return string.sub(stored, stop + 2)
"#;

/// Values and tag epochs in Redis. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct RedisStore {
    client: fred::prelude::Client,
    /// `<prefix>:<format>:<scope>:`.
    namespace: String,
    epochs: Script,
    get: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("namespace", &self.namespace).finish_non_exhaustive()
    }
}

/// Fresh epochs: unique per process and call, so no two fills create the same one.
fn fresh_epoch() -> u64 {
    static SEED: std::sync::OnceLock<RandomState> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = SEED.get_or_init(RandomState::new);
    seed.hash_one((std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)))
}

impl RedisStore {
    /// A store on the Redis at `url` (`redis://` or `redis-cluster://`, with `user:password@`
    /// and a database number as Redis URLs allow), its keys under `prefix` and `scope`. Fails only on an invalid URL: an unreachable Redis is connected to in the
    /// background, and calls fail within `timeout` until it answers.
    pub fn connect(url: &str, prefix: &str, scope: &str, timeout: Duration) -> Result<RedisStore, RedisError> {
        match url.split_once("://") {
            Some((scheme, _)) if SCHEMES.contains(&scheme) => {}
            Some((scheme, _)) if scheme.starts_with("rediss") || scheme.starts_with("valkeys") => {
                return Err(RedisError::Url(url.to_owned(), "TLS connections are not supported yet"));
            }
            _ => return Err(RedisError::Url(url.to_owned(), "expected redis://host:port[/db] or redis-cluster://")),
        }
        let config = Config::from_url(url)?;
        let client = Builder::from_config(config)
            .with_performance_config(|performance| performance.default_command_timeout = timeout)
            .with_connection_config(|connection| {
                connection.connection_timeout = timeout.max(Duration::from_millis(100));
                connection.internal_command_timeout = timeout.max(Duration::from_millis(100));
            })
            // Keep trying, at most every two seconds: without a policy the client never reconnects.
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
            .build()?;
        // Drives the connection (and reconnections) in the background.
        drop(client.connect());
        Ok(RedisStore {
            client,
            namespace: format!("{prefix}:{FORMAT}:{scope}:"),
            epochs: Script::from_lua(EPOCHS),
            get: Script::from_lua(GET),
        })
    }

    /// The key of a tag.
    fn tag_key(&self, tag: &Tag) -> String {
        match tag {
            Tag::All => format!("{}all", self.namespace),
            Tag::Table(oid) => format!("{}t:{oid}", self.namespace),
            Tag::Rows(oid) => format!("{}r:{oid}", self.namespace),
            Tag::Row(id) => format!("{}w:{id:032x}", self.namespace),
        }
    }

    /// The key of a value.
    fn value_key(&self, key: crate::key::Key) -> String {
        format!("{}v:{:032x}", self.namespace, key.0)
    }

    /// Reads (creating the missing ones) the epochs of `tags` and of the global tag, to be taken
    /// before the database is read and passed to [`RedisStore::put`]. `ttl` is the longest the
    /// value will live.
    pub async fn epochs(&self, tags: &[Tag], ttl: Duration) -> Result<Epochs, RedisError> {
        let mut keys: Vec<String> = vec![self.tag_key(&Tag::All)];
        keys.extend(tags.iter().filter(|t| **t != Tag::All).map(|t| self.tag_key(t)));
        let fresh: Vec<String> = keys.iter().map(|_| fresh_epoch().to_string()).collect();
        let millis = ttl.as_millis().clamp(1, i64::MAX as u128) as i64;
        let epochs: Vec<String> = if self.client.is_clustered() {
            // SET NX GET and PEXPIRE GT for each tag, in one pipeline across the nodes.
            let pipeline = self.client.pipeline();
            for (key, epoch) in keys.iter().zip(&fresh) {
                let () = pipeline
                    .set(key.as_str(), epoch.as_str(), Some(Expiration::PX(millis)), Some(SetOptions::NX), true)
                    .await?;
                let () = pipeline.pexpire(key.as_str(), millis, Some(ExpireOptions::GT)).await?;
            }
            let replies: Vec<Value> = pipeline.all().await?;
            let old = replies.into_iter().step_by(2).map(|reply| reply.into_string());
            old.zip(&fresh).map(|(old, fresh)| old.unwrap_or_else(|| fresh.clone())).collect()
        } else {
            let mut args = vec![millis.to_string()];
            args.extend(fresh);
            self.epochs.evalsha_with_reload(&self.client, keys.clone(), args).await?
        };
        Ok(Epochs(keys.into_iter().zip(epochs).collect()))
    }

    /// Stores `bytes` for `key` with the epochs read before the database was.
    pub async fn put(
        &self,
        key: crate::key::Key,
        epochs: &Epochs,
        ttl: Duration,
        bytes: &[u8],
    ) -> Result<(), RedisError> {
        let mut stored = Vec::with_capacity(bytes.len() + 64 * epochs.0.len() + 1);
        for (tag, epoch) in &epochs.0 {
            stored.extend_from_slice(tag.as_bytes());
            stored.push(b' ');
            stored.extend_from_slice(epoch.as_bytes());
            stored.push(b'\n');
        }
        stored.push(b'\n');
        stored.extend_from_slice(bytes);
        let expire = Expiration::PX(ttl.as_millis().clamp(1, i64::MAX as u128) as i64);
        let _: Value = self.client.set(self.value_key(key), stored, Some(expire), None, false).await?;
        Ok(())
    }

    /// The value of `key`, if it is stored and every tag it depends on still holds its epoch.
    pub async fn get(&self, key: crate::key::Key) -> Result<Option<Vec<u8>>, RedisError> {
        if !self.client.is_clustered() {
            return Ok(self.get.evalsha_with_reload(&self.client, vec![self.value_key(key)], ()).await?);
        }
        let stored: Option<Vec<u8>> = self.client.get(self.value_key(key)).await?;
        let Some((deps, payload)) = stored.as_deref().and_then(split_stored) else { return Ok(None) };
        let pipeline = self.client.pipeline();
        for (tag, _) in &deps {
            let () = pipeline.get(*tag).await?;
        }
        let current: Vec<Value> = pipeline.all().await?;
        let fresh = deps.len() == current.len()
            && deps.iter().zip(current).all(|((_, epoch), now)| now.as_bytes() == Some(epoch.as_bytes()));
        Ok(fresh.then(|| payload.to_vec()))
    }

    /// Makes every value that depends on one of `tags` stale, by deleting the tags.
    pub async fn invalidate(&self, tags: &[Tag]) -> Result<(), RedisError> {
        if tags.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = tags.iter().map(|t| self.tag_key(t)).collect();
        if self.client.is_clustered() {
            // One DEL per key: a multi-key DEL must stay in one slot.
            let pipeline = self.client.pipeline();
            for key in keys {
                let () = pipeline.del(key).await?;
            }
            let _: Vec<Value> = pipeline.all().await?;
        } else {
            let _: i64 = self.client.del(keys).await?;
        }
        Ok(())
    }

    /// Makes every value under this store's prefix and scope stale (one key; nothing else of
    /// Redis is touched).
    pub async fn invalidate_all(&self) -> Result<(), RedisError> {
        self.invalidate(&[Tag::All]).await
    }

    /// Waits until the client is connected, or `timeout` passes.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.client.wait_for_connect()).await.is_ok_and(|r| r.is_ok())
    }
}

/// `(tag key, epoch)` pairs, as stored in front of a value.
type Deps<'a> = Vec<(&'a str, &'a str)>;

/// The `(tag key, epoch)` lines of a stored value, and its payload; `None` if malformed.
fn split_stored(stored: &[u8]) -> Option<(Deps<'_>, &[u8])> {
    let stop = stored.windows(2).position(|w| w == b"\n\n")?;
    let header = std::str::from_utf8(&stored[..stop]).ok()?;
    let deps = header.lines().map(|line| line.split_once(' ')).collect::<Option<Vec<_>>>()?;
    Some((deps, &stored[stop + 2..]))
}

/// The epochs a fill read before it queried the database: `(tag key, epoch)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Epochs(Vec<(String, String)>);
