//! The shared tier (Redis) of a pool, and the bus that keeps the in-process tiers of several
//! processes fresh for each other.
//!
//! - **Reads** look in the in-process tier (if it is trusted), then in Redis, then in
//!   PostgreSQL. Redis values are fresh by the epoch rule of [`sqlacache_core::redis`].
//! - **Writes** invalidate here, then delete the tags in Redis and publish the invalidation in
//!   one round trip, before the write returns: a read that starts afterwards in any process
//!   finds no stale value in Redis, and the other processes drop their in-process copies when
//!   the message arrives.
//! - **The in-process tier is served only while the bus is heard** (see
//!   [`sqlacache_core::bus::Lease`]): each process publishes a heartbeat and trusts its tier
//!   for a lease after one that came back. A reconnect, a gap in a publisher's numbers or a
//!   failed Redis command ends the trust, and the tier is dropped before it is trusted again.
//!   A lapse of the lease alone (a stalled process, a slow listener) also ends the trust, but
//!   drops nothing: the subscription, unbroken, hears what it missed in order before the
//!   heartbeat that renews the trust.
//! - **A read that fails** (a lookup, a ticket or a store of a filled value, by an error or a
//!   timeout) only makes reads skip Redis until the next heartbeat comes back. Its outcome
//!   cannot make anything stale (a value is stored against the epochs taken before the read, so
//!   a late store is rejected or already invalid), and it says nothing about invalidations
//!   lost: the in-process tier keeps its trust, which only the bus decides. So a busy machine
//!   whose reads now and then outlast the timeout keeps its in-process hits.
//! - **A heartbeat or an invalidation that fails** (an error or a timeout) opens a circuit
//!   breaker: reads skip both tiers and go to PostgreSQL. An invalidation that could not be
//!   delivered is remembered.
//!   When Redis answers again, the heartbeat task invalidates everything in Redis (and tells the
//!   other processes to drop their in-process tiers), then keeps the breaker open for a
//!   **settling time**: long enough for every other process to reconnect (its client retries at
//!   least every [`RECONNECT_MAX`](sqlacache_core::redis::RECONNECT_MAX)) and deliver, the same
//!   way, what it could not. Then it drops its own in-process tier and closes the breaker. So
//!   once Redis is back, no process serves a value older than a write that another process could
//!   not deliver during the outage; only a process cut off from Redis for longer than that
//!   (while others reach it) can leave the others stale until it reconnects.

#[cfg(feature = "redis")]
pub(crate) use imp::Remote;

/// Without the `redis` feature there is no shared tier: this type has no values.
#[cfg(not(feature = "redis"))]
pub(crate) enum Remote {}

#[cfg(not(feature = "redis"))]
impl Remote {
    pub fn local_trusted(&self) -> bool {
        match *self {}
    }
}

/// Whether a pool hears a vouch for its change feed (see [`crate::feed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum Vouchee {
    /// It has no shared tier, no subscription, or a failing one.
    Deaf,
    /// Its subscription is being made: soon it will.
    Soon,
    /// It does, as this member of the bus.
    Listening(u64),
}

/// How a pool connects to Redis; see `CachedPoolBuilder::redis`.
#[derive(Clone)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct RedisSettings {
    pub url: String,
    /// A shared tier given instead of a URL.
    #[cfg(feature = "redis")]
    pub tier: Option<std::sync::Arc<dyn sqlacache_core::tier::SharedTier>>,
    pub prefix: String,
    pub timeout: std::time::Duration,
    pub lease: std::time::Duration,
    /// Whether writes wait for the other processes (see [`crate::strict`]).
    pub strict: bool,
    /// Whether the pool has the change feed, which carries a strict write's invalidation to
    /// every process when this one cannot reach Redis.
    pub fed: bool,
}

#[cfg(feature = "redis")]
mod imp {
    use super::{RedisSettings, Vouchee};
    use crate::channel::{heartbeats, Channel};
    use crate::local::{Local, Origin};
    use crate::strict::{deadline, Acks};
    use crate::undelivered::Undelivered;
    use sqlacache_core::bus::{Body, Message, Outgoing, Sequences};
    use sqlacache_core::key::Key;
    use sqlacache_core::redis::{Lookup, RedisError, RedisStore};
    use sqlacache_core::tier::{Epochs, Event, SharedTier, Subscription, TierError};
    use sqlacache_core::{Stats, Tag};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Weak};
    use std::time::Duration;

    /// The Redis tier of one pool.
    pub(crate) struct Remote {
        store: Arc<dyn SharedTier>,
        /// Numbers every invalidation this pool tries to publish, and knows which are still
        /// on their way. Heartbeats carry the number below which none is (a lost heartbeat
        /// loses nothing, so it takes no number of its own): a process that hears one without
        /// having heard those invalidations has missed one.
        numbers: std::sync::Mutex<Outgoing>,
        /// The bus, with this pool's lease on it.
        channel: Channel,
        /// Whether the pool has an in-process tier whose trust the bus decides.
        two_tiers: bool,
        /// The circuit breaker: while open, reads skip Redis and the in-process tier.
        open: AtomicBool,
        /// A read failed: reads skip Redis until the next heartbeat comes back.
        reads_off: AtomicBool,
        /// Invalidations that may not have reached Redis: delivered again before the breaker
        /// closes.
        undelivered: Undelivered,
        /// The number of a delivery of [`Remote::undelivered`] that failed: the next one is
        /// sent with it (a repeat, not a gap, for whoever heard the first).
        redelivery: std::sync::Mutex<Option<u64>>,
        /// The identity (run id) of the Redis server when it last answered: `None` until
        /// asked, `Some(None)` where it has none to give.
        instance: std::sync::Mutex<Option<Option<String>>>,
        /// When (on the lease's clock) Redis first answered again after a failure; 0 if it has
        /// not yet.
        answering_since: AtomicU64,
        /// How long the breaker stays open after Redis answers again.
        settle: Duration,
        /// When (on the lease's clock) the current run of failures began: the first heartbeat
        /// or invalidation that failed after Redis last answered one; 0 while Redis answers.
        /// (Not when the breaker opened: a breaker still settling after one cut-off must not
        /// shorten a write's tries in the next.)
        failing_since: AtomicU64,
        /// How long after the failures began a write keeps trying to deliver its invalidation
        /// before it returns, and how long any one write tries (see [`Pending::publish`]).
        retry_for: Duration,
        /// Pause between two tries.
        retry_every: Duration,
        tasks: crate::tasks::Tasks,
        /// The last message number heard from each publisher (written by the listener only).
        seen: std::sync::Mutex<Sequences>,
        /// Whether this pool's writes wait for the other processes' acknowledgements.
        strict: bool,
        /// Whether the change feed carries this pool's writes too (see [`Pending::publish`]).
        fed: bool,
        /// The writes of this pool waiting for acknowledgements.
        acks: Acks,
        /// Whether the subscription has heard an own heartbeat since it was (re)made: only then
        /// does a heartbeat register this pool as a member that acknowledges.
        listening: AtomicBool,
        /// The send time of the last heartbeat that did not register this pool: one heard back
        /// gives no trust (a strict writer might not have waited for this pool).
        unregistered: AtomicU64,
        /// Whether the subscription has heard everything since the tier was last trusted: no
        /// reconnect, no gap in a publisher's numbers, nothing unreadable, no failed heartbeat
        /// or invalidation. A lapse of the lease alone (a stalled process, a slow listener)
        /// then lost nothing, since one connection hears the messages in the order Redis sent
        /// them: the in-process tier is kept. Anything else drops it before trust comes back.
        /// Cleared before the trust it ends, so that a heartbeat heard in between cannot renew
        /// the trust without the drop.
        unbroken: AtomicBool,
        /// Whether the pool subscribes to the bus (and so hears vouches and acknowledgements).
        subscribed: bool,
        /// The change-feed heartbeats of this pool that another vouched for (see
        /// [`crate::feed`]).
        vouches: Vouches,
    }

    impl Remote {
        /// Connects (in the background: an unreachable Redis is not an error) under `scope`,
        /// the identity of the database.
        pub fn connect(settings: &RedisSettings, scope: &str, two_tiers: bool) -> Result<Remote, RedisError> {
            let store = RedisStore::connect(&settings.url, &settings.prefix, scope, settings.timeout)?;
            Ok(Remote::new(Arc::new(store), settings, two_tiers))
        }

        /// The tier `store` (Redis, or another [`SharedTier`]) with the timing of `settings`.
        pub fn new(store: Arc<dyn SharedTier>, settings: &RedisSettings, two_tiers: bool) -> Remote {
            Remote {
                store,
                numbers: std::sync::Mutex::default(),
                channel: Channel::new(
                    settings.lease,
                    "the invalidation channel is heard again; the in-process tier was dropped and serves again",
                ),
                two_tiers,
                open: AtomicBool::new(false),
                reads_off: AtomicBool::new(false),
                undelivered: Undelivered::default(),
                redelivery: std::sync::Mutex::new(None),
                instance: std::sync::Mutex::new(None),
                answering_since: AtomicU64::new(0),
                settle: settling_time(settings),
                failing_since: AtomicU64::new(0),
                retry_for: settling_time(settings),
                retry_every: settings.timeout.clamp(Duration::from_millis(5), Duration::from_millis(50)),
                tasks: crate::tasks::Tasks::default(),
                seen: std::sync::Mutex::default(),
                strict: settings.strict,
                fed: settings.fed,
                acks: Acks::default(),
                listening: AtomicBool::new(false),
                unregistered: AtomicU64::new(0),
                unbroken: AtomicBool::new(false),
                // A strict writer hears acknowledgements on its subscription, and a pool with the
                // change feed hears vouches for it.
                subscribed: two_tiers || settings.strict || settings.fed,
                vouches: Vouches::default(),
            }
        }

        /// Waits up to `timeout` for the first connection.
        pub async fn wait_connected(&self, timeout: Duration) -> bool {
            self.store.wait_connected(timeout).await
        }

        /// Starts the heartbeat (and, with two tiers, the subscriber) that keep `local`, the
        /// pool's in-process tier, fresh. The tasks end when this is dropped.
        pub fn start(self: &Arc<Self>, local: &Arc<Local>) -> Result<(), TierError> {
            let (remote, local) = (Arc::downgrade(self), Arc::downgrade(local));
            if self.subscribed {
                let subscription = self.store.subscribe_as(self.channel.publisher())?;
                self.tasks.spawn(listen(remote.clone(), local.clone(), subscription));
            }
            // The tier is held only between round trips: a pool dropped meanwhile is not kept
            // alive by one.
            let beats = heartbeats(self.channel.every(), move || {
                let (remote, local) = (remote.upgrade()?, local.clone());
                Some(async move { remote.beat(&local).await })
            });
            self.tasks.spawn(beats);
            Ok(())
        }

        /// Whether the in-process tier may be served (and filled) now: the bus was heard within
        /// the lease, and Redis is not failing (a failing Redis may hold invalidations that the
        /// other processes could not deliver).
        pub fn local_trusted(&self) -> bool {
            !self.two_tiers || (self.channel.trusted() && self.usable())
        }

        /// Whether Redis is trusted: its breaker is closed.
        fn usable(&self) -> bool {
            !self.open.load(Ordering::Acquire)
        }

        /// Whether reads may look in Redis now.
        pub fn readable(&self) -> bool {
            self.usable() && !self.reads_off.load(Ordering::Acquire)
        }

        /// Whether reads may use Redis and the bus has been heard within the lease (for tests
        /// and diagnostics).
        #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
        pub fn ready(&self) -> bool {
            self.readable() && self.local_trusted()
        }

        /// Whether Redis answers (the breaker may still be open while it settles).
        #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
        pub fn answering(&self) -> bool {
            self.usable() || self.answering_since.load(Ordering::Acquire) != 0
        }

        /// The value of `key` in Redis, or the epochs to fill it against; `None` when Redis
        /// failed (reads then skip it until the next heartbeat comes back).
        pub async fn lookup(&self, key: Key, deps: &[Tag], ttl: Duration, stats: &Stats) -> Option<Lookup> {
            match self.store.lookup(key, deps, ttl).await {
                Ok(found) => Some(found),
                Err(error) => {
                    self.read_failed(&error, stats);
                    None
                }
            }
        }

        /// The epochs of `tags` (created where missing), to fill against; `None` when Redis
        /// failed (reads then skip it until the next heartbeat comes back).
        pub async fn epochs(&self, tags: &[Tag], ttl: Duration, stats: &Stats) -> Option<Epochs> {
            match self.store.ticket(tags, ttl).await {
                Ok(epochs) => Some(epochs),
                Err(error) => {
                    self.read_failed(&error, stats);
                    None
                }
            }
        }

        /// Stores a filled value in Redis on a task of its own (off the caller's path); `done`
        /// is dropped once it is stored, or failed.
        pub fn put<G: Send + 'static>(
            self: &Arc<Self>,
            local: Weak<Local>,
            key: Key,
            epochs: Epochs,
            ttl: Duration,
            bytes: Vec<u8>,
            done: G,
        ) {
            let remote = self.clone();
            tokio::spawn(async move {
                if let Err(error) = remote.store.put(key, &epochs, ttl, &bytes).await {
                    if let Some(local) = local.upgrade() {
                        remote.read_failed(&error, &local.stats);
                    }
                }
                drop(done);
            });
        }

        /// Applies an invalidation to Redis alone (one every process hears by itself); one that
        /// failed is widened when Redis answers. While the breaker is open it is not even tried
        /// (it is widened all the same): a caller such as the change feed's listener must not
        /// wait a timeout for each.
        pub async fn invalidate_shared(&self, tags: &[Tag], stats: &Stats) {
            if !self.usable() {
                self.undelivered.add(tags);
                return;
            }
            if let Err(error) = self.store.invalidate(tags).await {
                self.undelivered.add(tags);
                self.failed(&error, stats);
            }
        }

        /// Whether this pool hears what is sent to it on the bus (a vouch), as whom.
        pub fn hears(&self) -> Vouchee {
            if !self.subscribed {
                Vouchee::Deaf
            } else if self.listening.load(Ordering::Acquire) {
                Vouchee::Listening(self.channel.publisher())
            } else if self.usable() {
                Vouchee::Soon
            } else {
                Vouchee::Deaf
            }
        }

        /// Whether every invalidation this pool applied to Redis is known to be there: none
        /// failed or was skipped since it was last delivered.
        pub fn delivered(&self) -> bool {
            self.usable() && self.undelivered.is_empty()
        }

        /// Tells `member` that this pool vouches for its change-feed heartbeat sent at `sent`,
        /// off the caller's path. A lost vouch costs the member its Redis, nothing else.
        pub fn vouch(&self, member: u64, sent: u64) {
            let vouch = Message { publisher: self.channel.publisher(), seq: 0, body: Body::Vouch(sent) }.encode();
            let store = self.store.clone();
            tokio::spawn(async move {
                if let Err(error) = store.acknowledge(member, &vouch).await {
                    tracing::debug!(target: "sqlacache", %error, "a vouch failed");
                }
            });
        }

        /// Waits up to `within` for a vouch for this pool's change-feed heartbeat sent at
        /// `sent`; whether one came.
        pub async fn until_vouched(&self, sent: u64, within: Duration) -> bool {
            self.vouches.until(sent, within).await
        }

        /// An invalidation to publish; if it is dropped before it is delivered, it counts as
        /// not delivered (and is widened when Redis answers).
        pub fn pending(self: &Arc<Self>, tags: Vec<Tag>) -> Pending {
            Pending { remote: self.clone(), tags, seq: None, done: false }
        }

        fn seen(&self) -> std::sync::MutexGuard<'_, Sequences> {
            self.seen.lock().unwrap_or_else(|e| e.into_inner())
        }

        fn numbers(&self) -> std::sync::MutexGuard<'_, Outgoing> {
            self.numbers.lock().unwrap_or_else(|e| e.into_inner())
        }

        /// This pool on the bus, and the number of the last message it tried to publish.
        #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
        pub fn position(&self) -> (u64, u64) {
            (self.channel.publisher(), self.numbers().last())
        }

        /// The number up to which every message from `publisher` was heard (0 if none since
        /// this pool last started its bookkeeping over).
        #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
        pub fn heard_from(&self, publisher: u64) -> u64 {
            self.seen().last(publisher).unwrap_or(0)
        }

        /// A message with `seq`, a number taken from [`Remote::numbers`].
        fn numbered(&self, seq: u64, body: Body) -> (u64, String) {
            (seq, Message { publisher: self.channel.publisher(), seq, body }.encode())
        }

        /// Deletes `tags` in Redis and publishes `message` (number `seq`); when strict, then
        /// waits until every other member acknowledged it, or its deadline.
        async fn deliver(&self, tags: &[Tag], (seq, message): &(u64, String), stats: &Stats) -> Result<(), TierError> {
            if !self.strict {
                return self.store.invalidate_and_publish(tags, message).await;
            }
            // Before it is sent: an acknowledgement may come before the answer.
            let expected = self.acks.expect(*seq);
            let members = self.store.invalidate_and_publish_to_members(tags, message).await?;
            let by = deadline(tokio::time::Instant::now(), self.channel.lease());
            let all = match members {
                Some(mut members) => {
                    members.retain(|member| *member != self.channel.publisher());
                    expected.all(&members, by).await
                }
                None => {
                    tokio::time::sleep_until(by).await;
                    false
                }
            };
            if !all {
                stats.strict_deadline();
            }
            Ok(())
        }

        /// A read failed: its outcome cannot make a value stale (see the module), so only skip
        /// Redis for reads until the next heartbeat comes back.
        fn read_failed(&self, error: &TierError, stats: &Stats) {
            stats.redis_error();
            if !self.reads_off.swap(true, Ordering::AcqRel) {
                tracing::debug!(target: "sqlacache", %error, "a Redis read failed; reads skip Redis until it answers a heartbeat");
            }
        }

        /// Redis answered a heartbeat or an invalidation: a failure after this begins a new
        /// run of failures. (Written only when it changes: this is on every write's path.)
        fn answered(&self) {
            if self.failing_since.load(Ordering::Relaxed) != 0 {
                self.failing_since.store(0, Ordering::Release);
            }
        }

        /// A heartbeat or an invalidation failed: its outcome is unknown. Skip Redis until it
        /// answers again and has settled, and trust the in-process tier only after the bus is
        /// heard again.
        fn failed(&self, error: &TierError, stats: &Stats) {
            stats.redis_error();
            self.unbroken.store(false, Ordering::Release);
            self.channel.lose_quietly();
            self.answering_since.store(0, Ordering::Release);
            let _ =
                self.failing_since.compare_exchange(0, self.channel.now().max(1), Ordering::AcqRel, Ordering::Acquire);
            if !self.open.swap(true, Ordering::AcqRel) {
                tracing::warn!(target: "sqlacache", %error, "Redis failed; reads go to PostgreSQL until it answers again");
            } else {
                tracing::debug!(target: "sqlacache", %error, "Redis failed");
            }
        }

        /// One heartbeat: recovers from a failure first, then publishes the heartbeat.
        async fn beat(&self, local: &Weak<Local>) {
            let failed = |error: &TierError| {
                if let Some(local) = local.upgrade() {
                    self.failed(error, &local.stats);
                }
            };
            let open = self.open.load(Ordering::Acquire);
            let first_answer = open && self.answering_since.load(Ordering::Acquire) == 0;
            let unasked = self.instance.lock().unwrap_or_else(|e| e.into_inner()).is_none();
            if first_answer || unasked {
                let instance = match self.store.instance().await {
                    Ok(instance) => instance,
                    Err(error) => return failed(&error),
                };
                let known = self.instance.lock().unwrap_or_else(|e| e.into_inner()).replace(instance.clone());
                if first_answer {
                    // A server restarted from a snapshot, or a replica promoted in its place,
                    // may have come back without invalidations it had applied: then nothing
                    // stored before is trusted. The same server lost nothing: only what this
                    // process could not deliver is delivered again, and the other processes
                    // keep what they hold.
                    if !matches!((known, instance), (Some(Some(was)), Some(is)) if was == is) {
                        self.undelivered.add(&[Tag::All]);
                    }
                    self.answering_since.store(self.channel.now().max(1), Ordering::Release);
                }
            }
            if let Some(tags) = self.undelivered.take() {
                // Whatever this process could not deliver while Redis failed is delivered now.
                // (A number stays open until it is delivered: heartbeats do not claim it.)
                let again = self.redelivery.lock().unwrap_or_else(|e| e.into_inner()).take();
                let seq = again.unwrap_or_else(|| self.numbers().take());
                let (seq, message) = self.numbered(seq, Body::Invalidate(tags.clone()));
                if let Err(error) = self.store.invalidate_and_publish(&tags, &message).await {
                    self.undelivered.add(&tags);
                    *self.redelivery.lock().unwrap_or_else(|e| e.into_inner()) = Some(seq);
                    return failed(&error);
                }
                self.numbers().close(seq);
            }
            let sent = self.channel.now();
            let seq = self.numbers().settled();
            let message = Message { publisher: self.channel.publisher(), seq, body: Body::Heartbeat(sent) }.encode();
            // A pool with an in-process tier registers as a member that acknowledges strict
            // writes, once its subscription hears it (until then it would only make writers
            // wait); a heartbeat that did not register it gives no trust when heard back.
            let result = if self.two_tiers && self.listening.load(Ordering::Acquire) {
                self.store.join_and_publish(self.channel.publisher(), self.channel.lease() * 2, &message).await
            } else {
                self.unregistered.fetch_max(sent, Ordering::AcqRel);
                self.store.publish(&message).await
            };
            if let Err(error) = result {
                failed(&error);
                return;
            }
            self.answered();
            self.reads_off.store(false, Ordering::Release);
            let since = self.answering_since.load(Ordering::Acquire);
            let settled = since != 0 && self.channel.now().saturating_sub(since) >= nanos(self.settle);
            // (An invalidation skipped or failed since this beat delivered is delivered by the
            // next one, before the breaker closes.)
            if open && settled && self.undelivered.is_empty() {
                let Some(local) = local.upgrade() else { return };
                // The others have had time to reconnect and deliver what they could not.
                local.drop_all("Redis answers again after it failed");
                self.answering_since.store(0, Ordering::Release);
                self.open.store(false, Ordering::Release);
                tracing::info!(target: "sqlacache", "Redis answers again; what this process could not deliver was delivered");
            }
        }

        /// Applies one message heard on the bus.
        fn heard(&self, local: &Local, text: &str) {
            let Some(message) = Message::decode(text) else {
                tracing::warn!(target: "sqlacache", "an unreadable message on the invalidation channel; dropping the in-process tier");
                self.unbroken.store(false, Ordering::Release);
                self.channel.lose_logged();
                return;
            };
            match message.body {
                // On this pool's own channel: `publisher` is the member acknowledging.
                Body::Ack(seq) => return self.acks.heard(message.publisher, seq),
                Body::Vouch(sent) => return self.vouches.heard(sent),
                _ => {}
            }
            if message.publisher == self.channel.publisher() {
                if let Body::Heartbeat(sent) = message.body {
                    self.listening.store(true, Ordering::Release);
                    if sent <= self.unregistered.load(Ordering::Acquire) {
                        return;
                    }
                    // Messages may be missing unless everything was heard since trust ended (a
                    // lapse of the lease alone): then drop before trusting again.
                    if let Some(first) = self.channel.must_drop() {
                        if !self.unbroken.swap(true, Ordering::AcqRel) {
                            local.drop_before_trust(
                                first,
                                "the bus is heard again after a reconnect, a gap in a publisher's messages or a Redis failure",
                            );
                        }
                    }
                    self.channel.renew(sent);
                }
                // Own invalidations were applied before they were published.
                return;
            }
            // Under the lock, so that whoever learns this message was heard finds it applied.
            let mut seen = self.seen();
            let heard = match message.body {
                Body::Heartbeat(_) => seen.note_heartbeat(message.publisher, message.seq),
                _ => seen.note(message.publisher, message.seq),
            };
            if !heard {
                tracing::debug!(target: "sqlacache", publisher = message.publisher, "a gap in a publisher's messages");
                self.unbroken.store(false, Ordering::Release);
                self.channel.lose_quietly();
            }
            match message.body {
                Body::Invalidate(tags) => local.invalidate(&tags, Origin::Peer),
                Body::Acked(tags) => {
                    local.invalidate(&tags, Origin::Peer);
                    // Only members (pools with an in-process tier) are waited for.
                    if self.two_tiers {
                        self.acknowledge(message.publisher, message.seq);
                    }
                }
                _ => {}
            }
            drop(seen);
        }

        /// Tells `publisher` that its message `seq` was applied here, off the listener's path. A
        /// lost acknowledgement costs the writer its deadline, nothing else.
        fn acknowledge(&self, publisher: u64, seq: u64) {
            let ack = Message { publisher: self.channel.publisher(), seq: 0, body: Body::Ack(seq) }.encode();
            let store = self.store.clone();
            tokio::spawn(async move {
                if let Err(error) = store.acknowledge(publisher, &ack).await {
                    tracing::debug!(target: "sqlacache", %error, "an acknowledgement failed");
                }
            });
        }
    }

    /// The change-feed heartbeats of a pool that others vouched for: the latest few, by send
    /// time. Only an exact match counts: a vouch for a heartbeat sent later may cover less, if
    /// it committed before the listener listened again.
    #[derive(Default)]
    struct Vouches {
        heard: std::sync::Mutex<std::collections::VecDeque<u64>>,
        wake: tokio::sync::Notify,
    }

    impl Vouches {
        /// Past this many, the oldest is forgotten.
        const KEPT: usize = 64;

        fn heard(&self, sent: u64) {
            let mut heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
            if heard.len() == Self::KEPT {
                heard.pop_front();
            }
            heard.push_back(sent);
            drop(heard);
            self.wake.notify_waiters();
        }

        async fn until(&self, sent: u64, within: Duration) -> bool {
            let wait = async {
                loop {
                    // Made before the check: a vouch heard in between still wakes it.
                    let next = self.wake.notified();
                    if self.heard.lock().unwrap_or_else(|e| e.into_inner()).contains(&sent) {
                        return;
                    }
                    next.await;
                }
            };
            tokio::time::timeout(within, wait).await.is_ok()
        }
    }

    /// An invalidation on its way to Redis; see [`Remote::pending`].
    pub(crate) struct Pending {
        remote: Arc<Remote>,
        tags: Vec<Tag>,
        /// Its number, once taken: closed when it is dropped.
        seq: Option<u64>,
        done: bool,
    }

    impl Pending {
        /// Deletes `tags` in Redis and tells the other processes, before the write returns. An
        /// invalidation whose outcome is unknown is remembered and widened (see the module).
        ///
        /// A writer cut off from Redis while the other processes still reach it would leave
        /// them reading its old value: so a failed delivery is tried again until it goes
        /// through, for as long as the settling time after the failures began (the first one
        /// since Redis last answered this process, whether or not its breaker was still
        /// settling after an earlier one). A cut-off shorter than that delays the write, never
        /// its invalidation; during a longer outage,
        /// writes return at once (and the other processes, if they reach Redis, may serve old
        /// values until this one reconnects and widens what it could not deliver).
        ///
        /// In strict mode the write also waits for the other processes (see [`crate::strict`]).
        /// If it could not reach Redis at all and the pool has the change feed, it waits a lease
        /// after its commit instead: every process hears the commit on the feed, and applies it
        /// or stops trusting its tiers within a lease.
        pub async fn publish(mut self, stats: &Stats) {
            let (remote, tags) = (&self.remote, &self.tags[..]);
            // After the commit.
            let committed = tokio::time::Instant::now();
            let body = || if remote.strict { Body::Acked(tags.to_vec()) } else { Body::Invalidate(tags.to_vec()) };
            let seq = remote.numbers().take();
            self.seq = Some(seq);
            let message = remote.numbered(seq, body());
            // Whether the other processes were told on the bus alone.
            let mut told = false;
            // When this write's first try failed.
            let mut first_failure = None;
            loop {
                match remote.deliver(tags, &message, stats).await {
                    Ok(()) => {
                        remote.answered();
                        stats.publish();
                        self.done = true;
                        return;
                    }
                    Err(error) => {
                        remote.failed(&error, stats);
                        let first = *first_failure.get_or_insert_with(|| remote.channel.now());
                        if !told {
                            // The bus may still work where the tags do not (a cluster node that
                            // holds them frozen): the others then drop their in-process copies
                            // now, instead of serving them until this process can widen. A
                            // process that does not hear this either does not hear its own
                            // heartbeats, and stops trusting its tier within the lease.
                            // (With the same number: the others take the full delivery that
                            // follows for a repeat.)
                            told = remote.store.publish(&message.1).await.is_ok();
                        }
                        // Tries end a settling time after the failures began (at once during a
                        // longer outage), and no write tries for longer than that (Redis may
                        // answer others in between, and a new run of failures begin).
                        let began = match remote.failing_since.load(Ordering::Acquire) {
                            0 => first,
                            since => since.min(first),
                        };
                        if remote.channel.now().saturating_sub(began) >= nanos(remote.retry_for) {
                            break;
                        }
                    }
                }
                // Sent again with its number: the others take a repeat for what it is.
                tokio::time::sleep(remote.retry_every).await;
            }
            // Given up: delivered again when Redis answers (see the module).
            remote.undelivered.add(tags);
            self.done = true;
            if remote.strict && remote.fed {
                tokio::time::sleep_until(deadline(committed, remote.channel.lease())).await;
            }
        }
    }

    impl Drop for Pending {
        fn drop(&mut self) {
            // Delivered, or widened: either way no longer on its way. (Widened before it is
            // closed, so that a heartbeat that says it settled comes after the widening.)
            if !self.done {
                self.remote.undelivered.add(&self.tags);
            }
            if let Some(seq) = self.seq {
                self.remote.numbers().close(seq);
            }
        }
    }

    /// Applies what the bus carries until the pool is dropped. A bus silent for longer than the
    /// channel allows while Redis answers is a connection that died without an error: make it
    /// again.
    async fn listen(remote: Weak<Remote>, local: Weak<Local>, mut subscription: Box<dyn Subscription>) {
        let Some(silence) = remote.upgrade().map(|r| r.channel.silence()) else { return };
        loop {
            let event = tokio::time::timeout(silence, subscription.next()).await;
            let (Some(remote), Some(local)) = (remote.upgrade(), local.upgrade()) else { return };
            match event {
                Ok(Event::Message(text)) => remote.heard(&local, &text),
                Ok(Event::Lost) => {
                    remote.listening.store(false, Ordering::Release);
                    remote.unbroken.store(false, Ordering::Release);
                    let line = "the invalidation channel reconnected; the in-process tier will be dropped";
                    remote.channel.lose(line, "the connection of the subscription was made again");
                    remote.seen().clear();
                }
                Err(_) if remote.usable() => {
                    remote.unbroken.store(false, Ordering::Release);
                    remote.channel.lose(
                        "the invalidation channel is silent; reconnecting it",
                        "nothing heard within four leases",
                    );
                    remote.listening.store(false, Ordering::Release);
                    drop((remote, local));
                    subscription.reconnect().await;
                }
                Err(_) => {
                    remote.unbroken.store(false, Ordering::Release);
                    remote.channel.lose_quietly();
                }
            }
        }
    }

    /// How long a process waits, after Redis answers again, before it trusts it: every other
    /// process has then reconnected (within `RECONNECT_MAX` and a connection timeout) and
    /// sent its own heartbeat, which first delivers what it could not.
    fn settling_time(settings: &RedisSettings) -> Duration {
        sqlacache_core::redis::RECONNECT_MAX + settings.lease / 5 + settings.timeout.max(Duration::from_millis(100)) * 2
    }

    fn nanos(duration: Duration) -> u64 {
        u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
    }
}
