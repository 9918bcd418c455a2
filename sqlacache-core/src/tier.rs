//! The contract every cache tier keeps, and the bus that carries invalidations between
//! processes.
//!
//! # The freshness contract ([`Store`])
//!
//! A fill takes a **ticket** from the store *before* it queries the database, and stores its
//! value with that ticket. The store serves the value only while no tag the value depends on has
//! been invalidated since the ticket was taken. So a fill that read the database before a write
//! committed, and stores its result after that write's invalidation, is never served, whatever
//! the order in which the two reach the store.
//!
//! Each store decides what a ticket is:
//!
//! - the in-process [`MemoryStore`] uses its version clock: a ticket is a sequence number, and a
//!   tag remembers the number of its last invalidation;
//! - the Redis store ([`crate::redis::RedisStore`], feature `redis`) uses random **epochs**: a
//!   tag is a key holding one, an invalidation deletes it, and a value is served only while every
//!   epoch read for its ticket still holds. A tag lost to eviction or a restart reads as
//!   invalidated, so a lost key only ever costs a miss.
//!
//! A store may fail: an error leaves the outcome of the call unknown (an invalidation may or may
//! not have been applied). Callers treat a failed lookup as a miss and a failed invalidation as
//! one that other processes may not have seen (see [`Bus`]).
//!
//! The pool reads its in-process store through the store's own methods (synchronous, and
//! without allocating on a hit); this trait is the contract both tiers keep, and the seam
//! through which the pool drives its shared tier, so that the rules built on it can be tested
//! against a backend that fails on purpose.
//!
//! # The bus ([`Bus`])
//!
//! Processes that each keep an in-process tier tell each other of their writes: a write
//! invalidates the shared store and publishes its tags in that order, so a process that hears
//! the message finds the shared store already fresh. A subscriber that may have missed a
//! message hears [`Event::Lost`].

use crate::key::Key;
use crate::store::{MemoryStore, Tag};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A boxed future, as the methods of [`Store`] and [`Bus`] return (so the traits can be used
/// as trait objects).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A call to a tier that did not complete: its outcome is unknown.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TierError(pub Box<dyn std::error::Error + Send + Sync>);

impl TierError {
    /// An error with this message.
    pub fn msg(message: impl Into<String>) -> TierError {
        TierError(message.into().into())
    }
}

/// What [`Store::lookup`] found.
#[derive(Debug)]
pub enum Lookup<T> {
    /// A fresh value.
    Hit(Vec<u8>),
    /// No fresh value; the ticket to fill it against.
    Miss(T),
}

/// A cache tier that keeps the freshness contract of this module.
///
/// ```
/// use sqlacache_core::tier::{Lookup, Store};
/// use sqlacache_core::{key::Key, MemoryStore, Tag};
/// use std::time::Duration;
///
/// /// A fill that straddles a write, against any store.
/// async fn straddle<S: Store>(store: &S) -> bool {
///     let (key, tags, ttl) = (Key(1), [Tag::Table(7)], Duration::from_secs(60));
///     let Ok(Lookup::Miss(ticket)) = store.lookup(key, &tags, ttl).await else { panic!() };
///     // ... the database is read here, and a write to table 7 commits meanwhile:
///     store.invalidate(&tags).await.unwrap();
///     store.put(key, &ticket, ttl, b"old").await.unwrap();
///     matches!(store.lookup(key, &tags, ttl).await, Ok(Lookup::Miss(_)))
/// }
/// # let waker = std::task::Waker::noop();
/// # let mut cx = std::task::Context::from_waker(&waker);
/// # let store = MemoryStore::new(1 << 20);
/// # let mut done = std::pin::pin!(straddle(&store));
/// # let std::task::Poll::Ready(never_served) = std::future::Future::poll(done.as_mut(), &mut cx) else { panic!() };
/// assert!(never_served, "the old value is never served");
/// ```
pub trait Store: Send + Sync {
    /// What a fill takes before it reads the database, and stores its value with.
    type Ticket: Send + Sync + 'static;

    /// The value of `key` if it is fresh; otherwise a ticket to fill it against, for a value
    /// that depends on `tags` and lives at most `ttl`.
    fn lookup<'a>(
        &'a self,
        key: Key,
        tags: &'a [Tag],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Lookup<Self::Ticket>, TierError>>;

    /// A ticket for a fill of a value that depends on `tags` (without looking for a value).
    fn ticket<'a>(&'a self, tags: &'a [Tag], ttl: Duration) -> BoxFuture<'a, Result<Self::Ticket, TierError>>;

    /// Stores `bytes` for `key`, filled after `ticket` was taken. A value that a later
    /// invalidation already made stale may be dropped, or stored and never served.
    fn put<'a>(
        &'a self,
        key: Key,
        ticket: &'a Self::Ticket,
        ttl: Duration,
        bytes: &'a [u8],
    ) -> BoxFuture<'a, Result<(), TierError>>;

    /// Makes every value that depends on one of `tags` stale (all of them for [`Tag::All`]).
    fn invalidate<'a>(&'a self, tags: &'a [Tag]) -> BoxFuture<'a, Result<(), TierError>>;
}

/// The epochs a fill read from a shared store before it queried the database: `(tag key,
/// epoch)` pairs, the ticket of [`crate::redis::RedisStore`] and of any [`SharedTier`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Epochs(Vec<(String, String)>);

impl Epochs {
    /// Epochs from `(tag key, epoch)` pairs.
    pub fn new(pairs: Vec<(String, String)>) -> Epochs {
        Epochs(pairs)
    }

    /// The `(tag key, epoch)` pairs.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }
}

/// What a [`Subscription`] heard.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A message on the channel.
    Message(String),
    /// Messages may have been missed: the connection was made again, or this listener fell
    /// behind.
    Lost,
}

/// A subscription to a bus; see [`Bus::subscribe`].
pub trait Subscription: Send {
    /// The next message, or [`Event::Lost`] when some may have been missed.
    fn next(&mut self) -> BoxFuture<'_, Event>;

    /// Drops the connection and makes it again (for one that went silent without an error).
    fn reconnect(&mut self) -> BoxFuture<'_, ()>;
}

/// The channel on which processes sharing a store tell each other of their writes.
pub trait Bus: Send + Sync {
    /// Invalidates `tags` in the shared store, then publishes `message` (unless it is empty):
    /// a process that hears it finds the store already fresh.
    fn invalidate_and_publish<'a>(&'a self, tags: &'a [Tag], message: &'a str) -> BoxFuture<'a, Result<(), TierError>>;

    /// Publishes `message`.
    fn publish<'a>(&'a self, message: &'a str) -> BoxFuture<'a, Result<(), TierError>>;

    /// Listens on the channel, on a connection of its own.
    fn subscribe(&self) -> Result<Box<dyn Subscription>, TierError>;

    /// Waits until the bus is connected, or `timeout` passes; whether it is.
    fn wait_connected(&self, timeout: Duration) -> BoxFuture<'_, bool>;

    /// Registers `member` as one that keeps an in-process tier, for `lease` from now on the
    /// bus's clock, then publishes `message` (its heartbeat): a strict write published after
    /// the heartbeat waits for this member. A bus without membership only publishes (its
    /// strict writers then wait out the lease).
    fn join_and_publish<'a>(
        &'a self,
        member: u64,
        lease: Duration,
        message: &'a str,
    ) -> BoxFuture<'a, Result<(), TierError>> {
        let _ = (member, lease);
        self.publish(message)
    }

    /// As [`Bus::invalidate_and_publish`], and returns the members registered (by
    /// [`Bus::join_and_publish`]) whose registration had not expired when the message was
    /// published, in the same step: `None` when the bus does not know its members.
    fn invalidate_and_publish_to_members<'a>(
        &'a self,
        tags: &'a [Tag],
        message: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u64>>, TierError>> {
        Box::pin(async move { self.invalidate_and_publish(tags, message).await.map(|()| None) })
    }

    /// Sends `message` (an acknowledgement) to `member`'s own channel, which its
    /// [`Bus::subscribe_as`] subscription hears. A bus without acknowledgements drops it.
    fn acknowledge<'a>(&'a self, member: u64, message: &'a str) -> BoxFuture<'a, Result<(), TierError>> {
        let _ = (member, message);
        Box::pin(std::future::ready(Ok(())))
    }

    /// The identity of the server this bus reaches (Redis's `run_id`), or `None` when it has
    /// none to give: a process that sees a different one after a failure (a restart, a
    /// failover) invalidates everything, since the server may have come back without
    /// invalidations it had applied; `None` always counts as different.
    fn instance(&self) -> BoxFuture<'_, Result<Option<String>, TierError>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    /// As [`Bus::subscribe`], also hearing what is sent to `member`'s own channel.
    fn subscribe_as(&self, member: u64) -> Result<Box<dyn Subscription>, TierError> {
        let _ = member;
        self.subscribe()
    }
}

/// A shared tier: a store whose tickets are [`Epochs`], with the bus of the processes that
/// share it. Implemented by [`crate::redis::RedisStore`]; a pool can be given another (see
/// the pool's documentation).
pub trait SharedTier: Store<Ticket = Epochs> + Bus {}

impl<T: Store<Ticket = Epochs> + Bus + ?Sized> SharedTier for T {}

/// The ticket of a [`MemoryStore`]: its sequence when the ticket was taken, and the tags.
#[derive(Clone, Debug)]
pub struct Stamp {
    seq: u64,
    tags: Vec<Tag>,
}

impl Store for MemoryStore {
    type Ticket = Stamp;

    fn lookup<'a>(&'a self, key: Key, tags: &'a [Tag], _: Duration) -> BoxFuture<'a, Result<Lookup<Stamp>, TierError>> {
        // The stamp is read before the database is (the caller reads it after this returns).
        let found = match self.get(key) {
            Some(entry) => Lookup::Hit(entry.bytes().to_vec()),
            None => Lookup::Miss(Stamp { seq: self.stamp(), tags: tags.to_vec() }),
        };
        Box::pin(std::future::ready(Ok(found)))
    }

    fn ticket<'a>(&'a self, tags: &'a [Tag], _: Duration) -> BoxFuture<'a, Result<Stamp, TierError>> {
        Box::pin(std::future::ready(Ok(Stamp { seq: self.stamp(), tags: tags.to_vec() })))
    }

    fn put<'a>(
        &'a self,
        key: Key,
        ticket: &'a Stamp,
        ttl: Duration,
        bytes: &'a [u8],
    ) -> BoxFuture<'a, Result<(), TierError>> {
        // A refused fill is not an error: it is stale, and stays unserved.
        MemoryStore::put(self, key, &ticket.tags, ticket.seq, ttl, bytes.to_vec());
        Box::pin(std::future::ready(Ok(())))
    }

    fn invalidate<'a>(&'a self, tags: &'a [Tag]) -> BoxFuture<'a, Result<(), TierError>> {
        MemoryStore::invalidate(self, tags);
        Box::pin(std::future::ready(Ok(())))
    }
}
