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
//! On one server, each call is one round trip (Lua scripts, or for [`RedisStore::lookup`] one
//! `MGET`, with the script as a second only when a miss must create an epoch). On a Redis
//! Cluster, where a
//! value and its tags live in different slots, the same rule runs from the client: epochs are
//! read and created with one pipeline of single-key commands, and a read fetches the value and
//! then its tags. Freshness needs only equality of each tag with its stored epoch, not
//! atomicity across keys, so the rule holds across slots.
//!
//! Each call has a command timeout. An error or a timeout leaves the outcome of the command
//! unknown (the client resends commands that were in flight when a connection broke), so a
//! caller must treat a failed [`RedisStore::invalidate`] as possibly not applied, and a failed
//! [`RedisStore::get`] as a miss.

use crate::store::Tag;
use crate::tier::{BoxFuture, Bus, Store, TierError};
pub use crate::tier::{Epochs, Event};
use fred::interfaces::{EventInterface, KeysInterface, PubsubInterface};
use fred::prelude::{Builder, ClientLike, Config, Error as FredError, ReconnectPolicy, Value};
use fred::types::scripts::Script;
use fred::types::{Expiration, ExpireOptions, SetOptions};
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

mod fleet;

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
    /// A command failed while the client could not connect: the address, and why it could not.
    #[error("Redis at {0} is unreachable: {1}")]
    Unreachable(String, String),
}

/// The longest a client waits between two attempts to reconnect. A Redis that comes back is
/// used by every client within this (plus a connection timeout), which bounds how long a
/// process must wait, after Redis answers again, for the others to be back too.
pub const RECONNECT_MAX: Duration = Duration::from_millis(250);

/// Schemes of plain TCP connections to one server or a cluster.
const SCHEMES: &[&str] = &["redis", "redis-cluster", "valkey", "valkey-cluster"];
/// Schemes of TLS connections (feature `redis-tls`), which trust the system's root
/// certificates (and those named by `SSL_CERT_FILE` or `SSL_CERT_DIR`).
const TLS_SCHEMES: &[&str] = &["rediss", "rediss-cluster", "valkeys", "valkeys-cluster"];

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

/// Returns the value of KEYS[1] if every epoch stored in its header still holds (the header is
/// text, `<tag> <epoch>` lines ended by an empty line; the payload follows), and otherwise does
/// [`EPOCHS`]'s work for KEYS[2..], all in one round trip. ARGV as for `EPOCHS`. Returns
/// `{1, payload}` or `{0, epoch, ...}` (just `{0}` without tags).
const LOOKUP: &str = r#"
local stored = redis.call('GET', KEYS[1])
if stored then
  local stop = string.find(stored, '\n\n', 1, true)
  if stop then
    local fresh = true
    for tag, epoch in string.gmatch(string.sub(stored, 1, stop), '(%S+) (%S+)\n') do
      if redis.call('GET', tag) ~= epoch then fresh = false break end
    end
    if fresh then return {1, string.sub(stored, stop + 2)} end
  end
end
local epochs = {0}
for i = 2, #KEYS do
  local old = redis.call('SET', KEYS[i], ARGV[i], 'NX', 'GET', 'PX', ARGV[1])
  if old then
    redis.call('PEXPIRE', KEYS[i], ARGV[1], 'GT')
    epochs[i] = old
  else
    epochs[i] = ARGV[i]
  end
end
return epochs
"#;

/// Deletes the tags in KEYS and publishes ARGV[2] on channel ARGV[1] (if ARGV[2] is not empty),
/// so that the shared tier is invalidated before other processes hear of it.
const INVALIDATE: &str = r#"
if #KEYS > 0 then redis.call('DEL', unpack(KEYS)) end
if ARGV[2] ~= '' then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return 1
"#;

/// What [`RedisStore::lookup`] found.
pub type Lookup = crate::tier::Lookup<Epochs>;

/// Values and tag epochs in Redis. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct RedisStore {
    client: fred::prelude::Client,
    /// Where it connects (`host:port`, without credentials), for errors.
    address: String,
    /// The last connection error, which says why a command failed while disconnected better
    /// than the command's own timeout does.
    connection_error: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    /// `<prefix>:<format>:<scope>:`.
    namespace: String,
    epochs: Script,
    lookup: Script,
    invalidate: Script,
    join: Script,
    strict: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("namespace", &self.namespace).finish_non_exhaustive()
    }
}

/// `n` fresh epochs.
fn fresh_epochs(n: usize) -> Vec<String> {
    (0..n).map(|_| fresh_epoch().to_string()).collect()
}

/// A TTL in milliseconds, at least 1.
fn ttl_millis(ttl: Duration) -> i64 {
    ttl.as_millis().clamp(1, i64::MAX as u128) as i64
}

/// Fresh epochs: unique per process and call, so no two fills create the same one.
fn fresh_epoch() -> u64 {
    static SEED: std::sync::OnceLock<RandomState> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = SEED.get_or_init(RandomState::new);
    seed.hash_one((std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)))
}

impl RedisStore {
    /// A store on the Redis at `url` (`redis://` or `redis-cluster://`, `rediss://` and
    /// `rediss-cluster://` for TLS with the `redis-tls` feature, with `user:password@` and a
    /// database number as Redis URLs allow), its keys under `prefix` and `scope`. Fails only on an invalid URL: an unreachable Redis is connected to in the
    /// background, and calls fail within `timeout` until it answers.
    pub fn connect(url: &str, prefix: &str, scope: &str, timeout: Duration) -> Result<RedisStore, RedisError> {
        match url.split_once("://") {
            Some((scheme, _)) if SCHEMES.contains(&scheme) => {}
            Some((scheme, _)) if TLS_SCHEMES.contains(&scheme) => {
                if !cfg!(feature = "redis-tls") {
                    return Err(RedisError::Url(url.to_owned(), "TLS needs the `redis-tls` feature"));
                }
            }
            _ => {
                return Err(RedisError::Url(
                    url.to_owned(),
                    "expected redis://host:port[/db], rediss:// (TLS) or redis-cluster://",
                ))
            }
        }
        let mut config = Config::from_url(url)?;
        // A first connection that fails is retried by the reconnect policy, like any later one:
        // a process started while Redis is down uses it once it is up.
        config.fail_fast = false;
        let client = Builder::from_config(config)
            .with_performance_config(|performance| performance.default_command_timeout = timeout)
            .with_connection_config(|connection| {
                // Requests are small and answered one by one: do not hold them back (Nagle).
                connection.tcp = fred::types::config::TcpConfig { nodelay: Some(true), ..Default::default() };
                connection.connection_timeout = timeout.max(Duration::from_millis(100));
                connection.internal_command_timeout = timeout.max(Duration::from_millis(100));
            })
            // Keep trying, at least every `RECONNECT_MAX`: without a policy the client never
            // reconnects.
            .set_policy(ReconnectPolicy::new_exponential(0, 20, RECONNECT_MAX.as_millis() as u32, 2))
            .build()?;
        let connection_error = std::sync::Arc::new(std::sync::Mutex::new(None));
        let slot = connection_error.clone();
        // Ends when the client is dropped.
        drop(client.on_error(move |(error, _)| {
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(readable(error.details()));
            std::future::ready(Ok(()))
        }));
        // Drives the connection (and reconnections) in the background.
        drop(client.connect());
        Ok(RedisStore {
            client,
            address: address(url),
            connection_error,
            namespace: format!("{prefix}:{FORMAT}:{scope}:"),
            epochs: Script::from_lua(EPOCHS),
            lookup: Script::from_lua(LOOKUP),
            invalidate: Script::from_lua(INVALIDATE),
            join: Script::from_lua(fleet::JOIN),
            strict: Script::from_lua(fleet::STRICT),
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
        // `b:`, not the `v:` of stored forms without a format byte: processes of both kinds can
        // share the epochs and the bus while neither reads the other's values.
        format!("{}b:{:032x}", self.namespace, key.0)
    }

    /// Reads (creating the missing ones) the epochs of `tags` and of the global tag, to be taken
    /// before the database is read and passed to [`RedisStore::put`]. `ttl` is the longest the
    /// value will live.
    pub async fn epochs(&self, tags: &[Tag], ttl: Duration) -> Result<Epochs, RedisError> {
        let keys = self.tag_keys(tags);
        let (fresh, millis) = (fresh_epochs(keys.len()), ttl_millis(ttl));
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
        Ok(Epochs::new(keys.into_iter().zip(epochs).collect()))
    }

    /// The tag keys of a fill: the global tag first, then `tags`.
    fn tag_keys(&self, tags: &[Tag]) -> Vec<String> {
        let mut keys: Vec<String> = vec![self.tag_key(&Tag::All)];
        keys.extend(tags.iter().filter(|t| **t != Tag::All).map(|t| self.tag_key(t)));
        keys
    }

    /// The value of `key` if it is fresh; otherwise the epochs of `tags` to fill it against
    /// (as [`RedisStore::epochs`]).
    ///
    /// On one server: one `MGET` of the value and of the epochs of `tags`, compared here, so a
    /// hit costs about what a `GET` of the value does. A miss whose epochs all exist fills
    /// against those (read in the same `MGET`, so as one moment) and extends their lives to
    /// the value's off the caller's path: an epoch that expires anyway only makes its values
    /// stale. A second round trip (the `LOOKUP` script, atomic) only when an epoch must be made,
    /// or when the stored value names a tag this read did not ask for.
    pub async fn lookup(&self, key: crate::key::Key, tags: &[Tag], ttl: Duration) -> Result<Lookup, RedisError> {
        if self.client.is_clustered() {
            return Ok(match self.get(key).await? {
                Some(bytes) => Lookup::Hit(bytes),
                None => Lookup::Miss(self.epochs(tags, ttl).await?),
            });
        }
        let tag_keys = self.tag_keys(tags);
        let mut keys = Vec::with_capacity(tag_keys.len() + 1);
        keys.push(self.value_key(key));
        keys.extend(tag_keys.iter().cloned());
        let reply: Vec<Value> = self.client.mget(keys).await?;
        if reply.len() != tag_keys.len() + 1 {
            return Err(RedisError::Command(FredError::new(fred::error::ErrorKind::Parse, "unexpected MGET reply")));
        }
        let now = |tag: &str| tag_keys.iter().position(|k| k == tag).map(|i| reply[i + 1].as_bytes());
        if let Some((deps, payload)) = reply[0].as_bytes().and_then(split_stored) {
            if deps.iter().any(|(tag, _)| now(tag).is_none()) {
                // Stored with tags this read does not name: let the script judge it.
                return self.lookup_script(key, Some(tags), ttl).await;
            }
            if deps.iter().all(|(tag, epoch)| now(tag).flatten() == Some(epoch.as_bytes())) {
                return Ok(Lookup::Hit(payload.to_vec()));
            }
        }
        let epochs: Option<Vec<String>> = reply[1..].iter().map(|v| v.as_str().map(|s| s.into_owned())).collect();
        let Some(epochs) = epochs else { return self.lookup_script(key, Some(tags), ttl).await };
        self.extend_in_background(&tag_keys, ttl);
        Ok(Lookup::Miss(Epochs::new(tag_keys.into_iter().zip(epochs).collect())))
    }

    /// Extends the lives of these tags' epochs to at least `ttl` from now (`PEXPIRE .. GT`), on a
    /// task of its own. Best effort: an epoch that expires only makes its values stale.
    fn extend_in_background(&self, tag_keys: &[String], ttl: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (client, keys, millis) = (self.client.clone(), tag_keys.to_vec(), ttl_millis(ttl));
        runtime.spawn(async move {
            let pipeline = client.pipeline();
            for key in &keys {
                let queued: Result<(), FredError> =
                    pipeline.pexpire(key.as_str(), millis, Some(ExpireOptions::GT)).await;
                if queued.is_err() {
                    return;
                }
            }
            let _: Result<Vec<Value>, FredError> = pipeline.all().await;
        });
    }

    /// [`RedisStore::lookup`] on one server: the `LOOKUP` script. Without `tags` it only checks
    /// (and a miss carries no epochs).
    async fn lookup_script(
        &self,
        key: crate::key::Key,
        tags: Option<&[Tag]>,
        ttl: Duration,
    ) -> Result<Lookup, RedisError> {
        let tags_keys = tags.map(|tags| self.tag_keys(tags)).unwrap_or_default();
        let mut args = vec![ttl_millis(ttl).to_string()];
        args.extend(fresh_epochs(tags_keys.len()));
        let mut keys = Vec::with_capacity(tags_keys.len() + 1);
        keys.push(self.value_key(key));
        keys.extend(tags_keys);
        let reply: Vec<Value> = self.lookup.evalsha_with_reload(&self.client, keys, args).await?;
        let mut reply = reply.into_iter();
        if reply.next().and_then(|flag| flag.as_i64()) == Some(1) {
            return Ok(Lookup::Hit(reply.next().and_then(|v| v.into_bytes()).unwrap_or_default().to_vec()));
        }
        // A miss: name the tags again (cheaper than keeping a copy on every hit).
        let keys = tags.map(|tags| self.tag_keys(tags)).unwrap_or_default();
        let epochs: Option<Vec<String>> = reply.map(|v| v.into_string()).collect();
        let epochs = epochs.filter(|e| e.len() == keys.len()).ok_or_else(|| {
            RedisError::Command(FredError::new(fred::error::ErrorKind::Parse, "unexpected LOOKUP reply"))
        })?;
        Ok(Lookup::Miss(Epochs::new(keys.into_iter().zip(epochs).collect())))
    }

    /// Stores `bytes` for `key` with the epochs read before the database was.
    pub async fn put(
        &self,
        key: crate::key::Key,
        epochs: &Epochs,
        ttl: Duration,
        bytes: &[u8],
    ) -> Result<(), RedisError> {
        let mut stored = Vec::with_capacity(bytes.len() + 64 * epochs.pairs().len() + 1);
        for (tag, epoch) in epochs.pairs() {
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
            // The lookup script without tags: it only checks.
            return Ok(match self.lookup_script(key, None, Duration::from_millis(1)).await? {
                Lookup::Hit(bytes) => Some(bytes),
                Lookup::Miss(_) => None,
            });
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
        self.invalidate_and_publish(tags, "").await
    }

    /// Deletes the tags, then publishes `message` on this store's channel (unless it is empty),
    /// in one round trip on one server: other processes hear of a write only once the shared
    /// tier no longer serves what it changed.
    pub async fn invalidate_and_publish(&self, tags: &[Tag], message: &str) -> Result<(), RedisError> {
        let keys: Vec<String> = tags.iter().map(|t| self.tag_key(t)).collect();
        if self.client.is_clustered() {
            // One DEL per key (a multi-key DEL must stay in one slot), each answered before the
            // message is published.
            for key in keys {
                let _: i64 = self.client.del(key).await?;
            }
            if !message.is_empty() {
                self.publish(message).await?;
            }
        } else if !keys.is_empty() || !message.is_empty() {
            let args = vec![self.channel(), message.to_owned()];
            let _: Value = self.invalidate.evalsha_with_reload(&self.client, keys, args).await?;
        }
        Ok(())
    }

    /// Makes every value under this store's prefix and scope stale (one key; nothing else of
    /// Redis is touched).
    pub async fn invalidate_all(&self) -> Result<(), RedisError> {
        self.invalidate(&[Tag::All]).await
    }

    /// The channel of this store's prefix and scope. On a cluster it is a shard channel (one
    /// slot, so one order for every subscriber).
    fn channel(&self) -> String {
        format!("{{{}bus}}", self.namespace)
    }

    /// Publishes `message` on this store's channel.
    pub async fn publish(&self, message: &str) -> Result<(), RedisError> {
        if self.client.is_clustered() {
            let _: Value = self.client.spublish(self.channel(), message).await?;
        } else {
            let _: Value = self.client.publish(self.channel(), message).await?;
        }
        Ok(())
    }

    /// Listens on this store's channel, on a connection of its own; with `member`, also on
    /// that member's acknowledgement channel.
    pub fn subscribe(&self, member: Option<u64>) -> Result<Subscription, RedisError> {
        let client = self.client.clone_new();
        let messages = client.message_rx();
        let reconnects = client.reconnect_rx();
        drop(client.connect());
        let mut channels = vec![self.channel()];
        channels.extend(member.map(|member| self.ack_channel(member)));
        Ok(Subscription { client, channels, messages, reconnects, subscribed: false })
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

/// A subscription to a store's channel; see [`RedisStore::subscribe`].
pub struct Subscription {
    client: fred::prelude::Client,
    /// The bus channel, and the acknowledgement channel of the member listening, if any.
    channels: Vec<String>,
    messages: tokio::sync::broadcast::Receiver<fred::types::Message>,
    reconnects: tokio::sync::broadcast::Receiver<fred::types::config::Server>,
    subscribed: bool,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("channels", &self.channels).finish_non_exhaustive()
    }
}

impl Subscription {
    /// The next message, or [`Event::Lost`] when some may have been missed.
    pub async fn next(&mut self) -> Event {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            if !self.subscribed {
                let channels = self.channels.clone();
                let result = if self.client.is_clustered() {
                    self.client.ssubscribe(channels).await
                } else {
                    self.client.subscribe(channels).await
                };
                match result {
                    Ok(()) => self.subscribed = true,
                    Err(error) => {
                        tracing::debug!(%error, "could not subscribe to the invalidation channel");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
            }
            tokio::select! {
                biased;
                reconnect = self.reconnects.recv() => match reconnect {
                    Ok(_) | Err(RecvError::Lagged(_)) => {
                        self.subscribed = false;
                        return Event::Lost;
                    }
                    Err(RecvError::Closed) => std::future::pending::<()>().await,
                },
                message = self.messages.recv() => match message {
                    Ok(message) if self.channels.iter().any(|c| *message.channel == **c) => {
                        if let Some(text) = message.value.into_string() {
                            return Event::Message(text);
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => return Event::Lost,
                    Err(RecvError::Closed) => std::future::pending::<()>().await,
                },
            }
        }
    }

    /// Drops the connection and makes it again (for a connection that went silent).
    pub async fn reconnect(&mut self) {
        self.subscribed = false;
        let _ = self.client.force_reconnection().await;
    }
}

impl From<RedisError> for TierError {
    fn from(error: RedisError) -> TierError {
        TierError(Box::new(error))
    }
}

/// The message of an I/O error's details (fred gives its `Debug` form), or the details.
fn readable(details: &str) -> String {
    details
        .split_once("message: \"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map_or_else(|| details.to_owned(), |(message, _)| message.to_owned())
}

/// `host:port` of a URL, without its scheme, credentials or database.
fn address(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    rest.split(['/', '?']).next().unwrap_or(rest).to_owned()
}

impl RedisStore {
    /// A failed command as the tier reports it: while the client cannot connect, with the
    /// address and the connection's own error (a refused connection is not a timeout).
    fn explain(&self, error: RedisError) -> TierError {
        if matches!(error, RedisError::Command(_)) && !self.client.is_connected() {
            if let Some(cause) = self.connection_error.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                return RedisError::Unreachable(self.address.clone(), cause).into();
            }
        }
        error.into()
    }
}

impl Store for RedisStore {
    type Ticket = Epochs;

    fn lookup<'a>(
        &'a self,
        key: crate::key::Key,
        tags: &'a [Tag],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Lookup, TierError>> {
        Box::pin(async move { RedisStore::lookup(self, key, tags, ttl).await.map_err(|e| self.explain(e)) })
    }

    fn ticket<'a>(&'a self, tags: &'a [Tag], ttl: Duration) -> BoxFuture<'a, Result<Epochs, TierError>> {
        Box::pin(async move { self.epochs(tags, ttl).await.map_err(|e| self.explain(e)) })
    }

    fn put<'a>(
        &'a self,
        key: crate::key::Key,
        ticket: &'a Epochs,
        ttl: Duration,
        bytes: &'a [u8],
    ) -> BoxFuture<'a, Result<(), TierError>> {
        Box::pin(async move { RedisStore::put(self, key, ticket, ttl, bytes).await.map_err(|e| self.explain(e)) })
    }

    fn invalidate<'a>(&'a self, tags: &'a [Tag]) -> BoxFuture<'a, Result<(), TierError>> {
        Box::pin(async move { RedisStore::invalidate(self, tags).await.map_err(|e| self.explain(e)) })
    }
}

impl Bus for RedisStore {
    fn invalidate_and_publish<'a>(&'a self, tags: &'a [Tag], message: &'a str) -> BoxFuture<'a, Result<(), TierError>> {
        Box::pin(
            async move { RedisStore::invalidate_and_publish(self, tags, message).await.map_err(|e| self.explain(e)) },
        )
    }

    fn publish<'a>(&'a self, message: &'a str) -> BoxFuture<'a, Result<(), TierError>> {
        Box::pin(async move { RedisStore::publish(self, message).await.map_err(|e| self.explain(e)) })
    }

    fn subscribe(&self) -> Result<Box<dyn crate::tier::Subscription>, TierError> {
        Ok(Box::new(RedisStore::subscribe(self, None)?))
    }

    fn instance(&self) -> BoxFuture<'_, Result<Option<String>, TierError>> {
        Box::pin(async move { RedisStore::instance(self).await.map_err(|e| self.explain(e)) })
    }

    fn subscribe_as(&self, member: u64) -> Result<Box<dyn crate::tier::Subscription>, TierError> {
        Ok(Box::new(RedisStore::subscribe(self, Some(member))?))
    }

    fn join_and_publish<'a>(
        &'a self,
        member: u64,
        lease: Duration,
        message: &'a str,
    ) -> BoxFuture<'a, Result<(), TierError>> {
        Box::pin(async move {
            RedisStore::join_and_publish(self, member, lease, message).await.map_err(|e| self.explain(e))
        })
    }

    fn invalidate_and_publish_to_members<'a>(
        &'a self,
        tags: &'a [Tag],
        message: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u64>>, TierError>> {
        Box::pin(async move {
            RedisStore::invalidate_and_publish_to_members(self, tags, message)
                .await
                .map(Some)
                .map_err(|e| self.explain(e))
        })
    }

    fn acknowledge<'a>(&'a self, member: u64, message: &'a str) -> BoxFuture<'a, Result<(), TierError>> {
        Box::pin(async move { RedisStore::acknowledge(self, member, message).await.map_err(|e| self.explain(e)) })
    }

    fn wait_connected(&self, timeout: Duration) -> BoxFuture<'_, bool> {
        Box::pin(RedisStore::wait_connected(self, timeout))
    }
}

impl crate::tier::Subscription for Subscription {
    fn next(&mut self) -> BoxFuture<'_, Event> {
        Box::pin(Subscription::next(self))
    }

    fn reconnect(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(Subscription::reconnect(self))
    }
}
