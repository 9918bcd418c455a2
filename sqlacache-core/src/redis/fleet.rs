//! Membership and acknowledgements of strict writes, on Redis.
//!
//! Every process that keeps an in-process tier registers itself with each heartbeat in a
//! sorted set whose scores are expiry times on Redis's clock ([`RedisStore::join_and_publish`]).
//! A strict write deletes its tags, publishes its message and reads the members still
//! registered, in one script ([`RedisStore::invalidate_and_publish_to_members`]): a member that
//! can have trusted its tier when the message was published is among them, since its trust
//! came from a heartbeat published with its registration, which outlives that trust. Each
//! member acknowledges on the writer's own channel, in the bus channel's slot.

use super::RedisError;
use super::RedisStore;
use crate::store::Tag;
use fred::interfaces::PubsubInterface;
use fred::prelude::{ClientLike, Value};
use std::time::Duration;

/// Registers ARGV[3] in the members set KEYS[1] until ARGV[4] milliseconds from now (Redis's
/// clock), forgets the expired ones, then publishes ARGV[2] on channel ARGV[1] with command
/// ARGV[5] (`PUBLISH`, or `SPUBLISH` on a cluster).
pub(super) const JOIN: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call(ARGV[5], ARGV[1], ARGV[2])
return 1
"#;

/// Deletes the tags in KEYS[1..n-1], publishes ARGV[2] on channel ARGV[1] with command ARGV[3],
/// and returns the members of the set KEYS[n] whose registration has not expired.
pub(super) const STRICT: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local n = #KEYS - 1
if n > 0 then redis.call('DEL', unpack(KEYS, 1, n)) end
redis.call(ARGV[3], ARGV[1], ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[n + 1], '(' .. now, '+inf')
"#;

impl RedisStore {
    /// The set of members, in the bus channel's slot.
    fn members_key(&self) -> String {
        format!("{}members", self.channel())
    }

    /// The channel on which `member` hears acknowledgements, in the bus channel's slot.
    pub(super) fn ack_channel(&self, member: u64) -> String {
        format!("{}k:{member:x}", self.channel())
    }

    fn publish_command(&self) -> &'static str {
        if self.client.is_clustered() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// Registers `member` for `lease` on Redis's clock, then publishes `message` on this
    /// store's channel, in one round trip.
    pub async fn join_and_publish(&self, member: u64, lease: Duration, message: &str) -> Result<(), RedisError> {
        let args = vec![
            self.channel(),
            message.to_owned(),
            format!("{member:x}"),
            super::ttl_millis(lease).to_string(),
            self.publish_command().to_owned(),
        ];
        let _: Value = self.join.evalsha_with_reload(&self.client, vec![self.members_key()], args).await?;
        Ok(())
    }

    /// Deletes the tags, publishes `message`, and returns the members whose registration had
    /// not expired then (one round trip on one server; on a cluster the tags are deleted first,
    /// one by one).
    pub async fn invalidate_and_publish_to_members(&self, tags: &[Tag], message: &str) -> Result<Vec<u64>, RedisError> {
        let mut keys: Vec<String> = Vec::with_capacity(tags.len() + 1);
        if self.client.is_clustered() {
            self.invalidate_and_publish(tags, "").await?;
        } else {
            keys.extend(tags.iter().map(|t| self.tag_key(t)));
        }
        keys.push(self.members_key());
        let args = vec![self.channel(), message.to_owned(), self.publish_command().to_owned()];
        let members: Vec<String> = self.strict.evalsha_with_reload(&self.client, keys, args).await?;
        // An id that does not read is no member of this library's: ignored.
        Ok(members.iter().filter_map(|m| u64::from_str_radix(m, 16).ok()).collect())
    }

    /// The server's `run_id` (which changes when it restarts, or another takes its place);
    /// `None` on a cluster, whose nodes each have their own.
    pub async fn instance(&self) -> Result<Option<String>, RedisError> {
        if self.client.is_clustered() {
            return Ok(None);
        }
        let command = fred::types::CustomCommand::new_static("INFO", None, false);
        let info: String = self.client.custom(command, vec!["server"]).await?;
        Ok(info.lines().find_map(|line| line.strip_prefix("run_id:")).map(|id| id.trim().to_owned()))
    }

    /// Sends `message` on `member`'s acknowledgement channel.
    pub async fn acknowledge(&self, member: u64, message: &str) -> Result<(), RedisError> {
        let channel = self.ack_channel(member);
        if self.client.is_clustered() {
            let _: Value = self.client.spublish(channel, message).await?;
        } else {
            let _: Value = self.client.publish(channel, message).await?;
        }
        Ok(())
    }
}
