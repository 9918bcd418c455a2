//! The change feed's listener, heartbeat and installer of one pool, and the lease they keep.

use super::message::{parse, tags, Ask, Change};
use super::sql::CHANNEL;
use crate::channel::{heartbeats, Channel};
use crate::local::Origin;
use crate::remote::Vouchee;
use crate::schema::Schema;
use crate::tiers::Tiers;
use sqlacache_core::Tag;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// What the feed's tasks work on, held weakly: they end with the pool.
#[derive(Clone)]
struct Parts {
    feed: Weak<Feed>,
    schema: Weak<Schema>,
    tiers: Weak<Tiers>,
}

/// [`Parts`], while a task uses them.
struct Held {
    feed: Arc<Feed>,
    schema: Arc<Schema>,
    tiers: Arc<Tiers>,
}

impl Parts {
    fn upgrade(&self) -> Option<Held> {
        Some(Held { feed: self.feed.upgrade()?, schema: self.schema.upgrade()?, tiers: self.tiers.upgrade()? })
    }
}

/// How many own heartbeats that did not ask for a vouch a listener lets pass, before it trusts
/// its tiers again without one (emptying the shared tier).
const MAX_UNASKED: u32 = 20;

/// The change feed of one pool: its listener, its heartbeat and the lease they keep.
pub(crate) struct Feed {
    /// The feed's channel, with this pool's lease on it.
    channel: Channel,
    /// The send time of the latest own heartbeat heard back.
    heard_sent: AtomicU64,
    /// The listener's backend process id (0 while it has none).
    pid: AtomicU32,
    /// Whether the listener has heard everything since it was last trusted: no connection was
    /// lost and nothing unreadable came. A lapse of the lease alone (a stalled process, a slow
    /// listener) then loses nothing, since notifications arrive in commit order once it
    /// catches up: the tiers are kept. Anything else drops them before trust comes back.
    unbroken: Arc<std::sync::atomic::AtomicBool>,
    /// Whether every break since the listener was last trusted was a lost connection (not an
    /// unreadable message, not a table that lost its triggers): then what it missed, another
    /// pool's listener may have heard and applied to the shared tier, and vouch for it.
    /// Cleared before `unbroken`.
    vouchable: Arc<std::sync::atomic::AtomicBool>,
    /// Own heartbeats heard since trust ended that did not ask for a vouch.
    unasked: AtomicU32,
    /// Whether the pool installs the feed (and so installs it again on a table created anew).
    install: bool,
    /// Wakes whoever waits for an own heartbeat to come back.
    heard: tokio::sync::Notify,
    /// Asks the one task that installs the feed again on tables created anew (requests made
    /// while it runs coalesce into one more run).
    reinstall: Arc<tokio::sync::Notify>,
    tasks: crate::tasks::Tasks,
}

impl Feed {
    /// This pool on the feed: the name its write path marks its statements with (see
    /// [`crate::feed`]).
    pub fn writer(&self) -> u64 {
        self.channel.publisher()
    }

    /// Whether the pool installs the feed itself (`change_feed`, not `change_feed_installed`).
    pub fn installs(&self) -> bool {
        self.install
    }

    pub fn new(lease: Duration, install: bool) -> Feed {
        Feed {
            channel: Channel::new(lease, "the change feed is heard again; cached reads resume"),
            heard_sent: AtomicU64::new(0),
            pid: AtomicU32::new(0),
            unbroken: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            vouchable: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            unasked: AtomicU32::new(0),
            install,
            heard: tokio::sync::Notify::new(),
            reinstall: Arc::new(tokio::sync::Notify::new()),
            tasks: crate::tasks::Tasks::default(),
        }
    }

    /// Starts the listener and the heartbeat that keep `schema` and `tiers` fresh; `pool` is
    /// the application's, whose options make the feed's own connections.
    pub fn start(self: &Arc<Self>, schema: &Arc<Schema>, tiers: &Arc<Tiers>, pool: &PgPool) {
        let parts = Parts { feed: Arc::downgrade(self), schema: Arc::downgrade(schema), tiers: Arc::downgrade(tiers) };
        // The listener and the heartbeat each have a connection of their own: a heartbeat that
        // waited behind the application's queries for one of the pool's would end the lease of
        // a busy pool for nothing.
        let own = || {
            let options = pool.connect_options().as_ref().clone();
            PgPoolOptions::new().max_connections(1).min_connections(0).connect_lazy_with(options)
        };
        // The catalog reads that judge schema changes too: one that waited for a connection of
        // a busy pool would hold every notification behind it, heartbeats included.
        self.tasks.spawn(listen(parts.clone(), own(), own(), self.channel.silence()));
        let beats_pool = own();
        let every = self.channel.every();
        // The feed and the schema are held only while a heartbeat is made, not while it is sent.
        // One that hangs (a stuck connection) is given up after five periods: it holds no state.
        let beats = heartbeats(every, move || {
            let Held { feed, schema, tiers } = parts.upgrade()?;
            let beat = feed.beat(&beats_pool, schema.fed_oids(), feed.ask(&schema, &tiers));
            Some(async move {
                if let Ok(Err(error)) = tokio::time::timeout(every * 5, beat).await {
                    tracing::debug!(target: "sqlacache", %error, "a change-feed heartbeat failed");
                }
            })
        });
        self.tasks.spawn(beats);
        if self.install {
            // On a connection of its own too, not the application's.
            self.tasks.spawn(reinstaller(Arc::downgrade(schema), own(), self.reinstall.clone()));
        }
    }

    /// Waits until an own heartbeat sent at or after `sent` has come back (`None`: until the
    /// feed is trusted); false if `within` passed first.
    pub async fn until_heard(&self, sent: Option<u64>, within: Duration) -> bool {
        let done = || match sent {
            Some(sent) => self.heard_sent.load(Ordering::Acquire) >= sent,
            None => self.trusted(),
        };
        let wait = async {
            loop {
                // Made before the check: a heartbeat heard in between still wakes it.
                let next = self.heard.notified();
                if done() {
                    return;
                }
                next.await;
            }
        };
        tokio::time::timeout(within, wait).await.is_ok()
    }

    /// How long ago the newest heartbeat that came back was sent: how far behind the feed
    /// may be. `None` before the first.
    #[cfg(feature = "metrics")]
    pub fn lag(&self) -> Option<std::time::Duration> {
        match self.heard_sent.load(Ordering::Acquire) {
            0 => None,
            sent => Some(std::time::Duration::from_nanos(self.channel.now().saturating_sub(sent))),
        }
    }

    /// Whether cached reads may be served now: a heartbeat came back within the lease.
    pub fn trusted(&self) -> bool {
        self.channel.trusted()
    }

    /// What a heartbeat sent now asks of the other pools: a vouch, while the listener is not
    /// trusted after it lost only its connection, if the pool can hear one.
    fn ask(&self, schema: &Schema, tiers: &Tiers) -> Option<Ask> {
        if self.unbroken.load(Ordering::Acquire) || !self.vouchable.load(Ordering::Acquire) {
            return None;
        }
        match tiers.vouchee() {
            Vouchee::Listening(member) => Some(Ask { member, fingerprint: schema.fingerprint() }),
            Vouchee::Deaf | Vouchee::Soon => None,
        }
    }

    /// Sends one heartbeat through `pool`, if every table of `fed` (oids) still has the feed's
    /// triggers, enabled: a feed removed or disabled (by `remove_all`, `DROP TRIGGER`,
    /// `ALTER TABLE .. DISABLE TRIGGER`) then ends the lease instead of being trusted. It
    /// `ask`s for a vouch or not. Returns its send time, or `None` when it was not sent.
    fn beat(
        &self,
        pool: &PgPool,
        fed: Vec<i64>,
        ask: Option<Ask>,
    ) -> impl std::future::Future<Output = Result<Option<u64>, sqlx::Error>> + Send + 'static {
        const BEAT: &str = "SELECT pg_catalog.pg_notify($1, $2) \
            WHERE (SELECT count(*) FROM pg_catalog.pg_trigger \
                    WHERE tgrelid = ANY($3::int8[]::pg_catalog.oid[]) AND tgenabled <> 'D' \
                      AND tgname IN ('sqlacache_feed_i', 'sqlacache_feed_u', 'sqlacache_feed_d', 'sqlacache_feed_t')) \
                  = 4 * cardinality($3::int8[])";
        let sent = self.channel.now();
        let payload = match ask {
            None => format!("h {} {sent}", self.channel.publisher()),
            Some(Ask { member, fingerprint }) => {
                format!("v {} {sent} {member:x} {fingerprint:x}", self.channel.publisher())
            }
        };
        let pool = pool.clone();
        let (unbroken, vouchable) = (self.unbroken.clone(), self.vouchable.clone());
        async move {
            let done = sqlx::query(BEAT).bind(CHANNEL).bind(payload).bind(fed).execute(&pool).await?;
            if done.rows_affected() == 0 {
                // Writes made meanwhile send nothing: heard or not, they are lost, and no other
                // pool's listener heard them either.
                vouchable.store(false, Ordering::Release);
                unbroken.store(false, Ordering::Release);
                tracing::debug!(target: "sqlacache", "a table this pool reads lost the change feed's triggers: no heartbeat");
                return Ok(None);
            }
            Ok(Some(sent))
        }
    }

    /// Waits until everything committed before this call has been applied: a heartbeat sent now
    /// has come back (for tests).
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    pub async fn sync(&self, pool: &PgPool, fed: Vec<i64>) -> Result<(), sqlx::Error> {
        let Some(sent) = self.beat(pool, fed.clone(), None).await? else {
            return Err(sqlx::Error::Protocol(format!(
                "no heartbeat was sent: a table this pool reads lacks the change feed's triggers (oids {fed:?})"
            )));
        };
        // Bounded: a listener that never hears it again is an error, not a hang. Generous: on
        // a machine loaded far past its cores, a listener has been seen to take over 30 s.
        let within = (self.channel.lease() * 20).max(Duration::from_secs(120));
        if self.until_heard(Some(sent), within).await {
            Ok(())
        } else {
            Err(sqlx::Error::Protocol(format!(
                "the change feed did not hear its heartbeat back within {within:?} (sent {sent}, heard up to {}, now {})",
                self.heard_sent.load(Ordering::Acquire),
                self.channel.now()
            )))
        }
    }

    /// The listener's backend process id (for tests).
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    pub fn listener_pid(&self) -> u32 {
        self.pid.load(Ordering::Acquire)
    }

    /// Trust ends: messages may have been missed, by this listener alone when only its
    /// `connection` was lost.
    fn lose(&self, why: &str, connection: bool) {
        if !connection {
            self.vouchable.store(false, Ordering::Release);
        }
        self.unbroken.store(false, Ordering::Release);
        self.channel.lose("the change feed may have missed writes; cached reads wait until it is heard again", why);
    }

    /// Applies notifications in the order they were sent: `payloads`, the ones that arrived
    /// together. Their invalidations are applied at once (one round trip to Redis, one catalog
    /// read for any number of schema changes), before any heartbeat among them renews the lease
    /// and by the end: a listener that does one round trip per notification falls behind a busy
    /// database (and far behind while Redis times out), and its lease lapses.
    async fn heard(&self, schema: &Schema, tiers: &Tiers, payloads: &[String], catalog: &PgPool) {
        let mut due = Due::default();
        for payload in payloads {
            let Some(change) = parse(payload) else {
                // Not one of ours, or damaged: whatever it meant is unknown.
                tracing::warn!(target: "sqlacache", payload, "an unreadable message on the change feed");
                self.lose("an unreadable message", false);
                continue;
            };
            match change {
                Change::Heartbeat { publisher, sent, asks } => {
                    // Everything sent before it is applied before it counts.
                    if publisher == self.channel.publisher() {
                        due.apply(self, schema, tiers, catalog).await;
                        if !self.trust_again(tiers, sent, asks.is_some()).await {
                            continue;
                        }
                        self.channel.renew(sent);
                        self.heard_sent.fetch_max(sent, Ordering::AcqRel);
                        self.heard.notify_waiters();
                    } else if let Some(ask) = asks {
                        // Only a listener that heard everything since the shared tier was
                        // last made whole, for the same invalidations.
                        if self.unbroken.load(Ordering::Acquire) && ask.fingerprint == schema.fingerprint() {
                            due.apply(self, schema, tiers, catalog).await;
                            if self.unbroken.load(Ordering::Acquire) && tiers.vouch(ask.member, sent) {
                                tracing::debug!(target: "sqlacache", member = ask.member, "vouched for another pool's change feed");
                            }
                        }
                    }
                }
                Change::Schema(parts) => {
                    let (catalog, cached) = (schema.catalog(), schema.cached_schemas());
                    // A change named in another schema may still reach the cached tables (a
                    // partition of one created elsewhere, their schema renamed, their feed
                    // disabled): judged by what it touched, read from the catalog.
                    if parts.iter().any(|part| part.matters(&catalog, &cached)) {
                        due.schema = Some(true);
                    } else if due.schema.is_none() {
                        due.schema = Some(false);
                    }
                }
                // Invalidated by this pool's own write path after the write committed: applied
                // again, it would only make what was read since miss once more.
                Change::Written { by, .. } if by == self.channel.publisher() => {}
                change => due.tags.extend(tags(&schema.catalog(), &change)),
            }
        }
        due.apply(self, schema, tiers, catalog).await;
    }

    /// Makes the tiers fit to be trusted again on an own heartbeat sent at `sent` (`asked`:
    /// one that asks for a vouch); false when this heartbeat must not renew the lease.
    ///
    /// Writes may have been missed while the listener was not trusted, unless everything was
    /// heard since (a lapse of the lease alone): then the in-process tier is dropped, and the
    /// shared tier emptied unless another pool vouches that it applied them there.
    async fn trust_again(&self, tiers: &Tiers, sent: u64, asked: bool) -> bool {
        let Some(first) = self.channel.must_drop() else { return true };
        if self.unbroken.load(Ordering::Acquire) {
            return true;
        }
        if self.vouchable.load(Ordering::Acquire) && !asked && tiers.vouchee() != Vouchee::Deaf {
            // Sent before the loss was seen, or before the bus could carry a vouch back: the
            // next one asks. (Not for long: a subscription that cannot be made is deaf.)
            if self.unasked.fetch_add(1, Ordering::AcqRel) < MAX_UNASKED {
                return false;
            }
        }
        self.unasked.store(0, Ordering::Release);
        if !self.unbroken.swap(true, Ordering::AcqRel) {
            let vouchable = self.vouchable.swap(true, Ordering::AcqRel) && asked;
            tiers.drop_here(first);
            // Within the lease: the others heard it when this listener did.
            if vouchable && tiers.vouched(sent, self.channel.lease()).await {
                tracing::debug!(target: "sqlacache", "another pool vouched for what the change feed missed: Redis is kept");
            } else {
                tiers.empty_shared().await;
            }
        }
        true
    }
}

/// What notifications heard together still have to apply.
#[derive(Default)]
struct Due {
    tags: Vec<Tag>,
    /// A schema change: `Some(true)` if it matters, `Some(false)` if the catalog must tell.
    schema: Option<bool>,
}

impl Due {
    async fn apply(&mut self, feed: &Feed, schema: &Schema, tiers: &Tiers, catalog: &PgPool) {
        if !self.tags.is_empty() {
            let mut seen = std::collections::HashSet::new();
            self.tags.retain(|tag| seen.insert(*tag));
            tiers.apply_now(&std::mem::take(&mut self.tags), Origin::Outside).await;
        }
        if let Some(matters) = self.schema.take() {
            if matters || schema.cached_tables_changed(catalog).await {
                // Plans are made again from a new catalog, and nothing cached before is served.
                schema.changed();
                tiers.apply_now(&[Tag::All], Origin::Outside).await;
                if feed.install {
                    // A fed table dropped and created again has lost its triggers.
                    feed.reinstall.notify_one();
                }
            }
        }
    }
}

/// Installs the feed again, through `pool`, on the configured tables that lost it, each time it
/// is asked, until the pool is dropped.
async fn reinstaller(schema: Weak<Schema>, pool: PgPool, wanted: Arc<tokio::sync::Notify>) {
    loop {
        wanted.notified().await;
        let Some(schema) = schema.upgrade() else { return };
        schema.reinstall_feed(&pool).await;
    }
}

/// Listens until the pool is dropped. Any doubt (an error, a lost connection, a silence of
/// several leases) ends the lease; a new connection is made after an error or a silence.
/// `catalog` makes the connection of the catalog reads that judge schema changes.
async fn listen(parts: Parts, own: PgPool, catalog: PgPool, silence: Duration) {
    let mut listener: Option<PgListener> = None;
    loop {
        let Some(active) = listener.as_mut() else {
            match connect(&own).await {
                Ok((new, pid)) => {
                    if let Some(feed) = parts.feed.upgrade() {
                        feed.pid.store(pid, Ordering::Release);
                    }
                    listener = Some(new);
                }
                Err(error) => {
                    tracing::debug!(target: "sqlacache", %error, "the change feed cannot listen yet");
                    if parts.feed.strong_count() == 0 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            continue;
        };
        let mut next = tokio::time::timeout(silence, active.try_recv()).await;
        if next.is_err() {
            // A process resumed after a stall finds its timer and its socket ready at once:
            // what arrived meanwhile is read before the silence counts.
            next = tokio::time::timeout(Duration::from_millis(50), active.try_recv()).await;
        }
        let Some(Held { feed, schema, tiers }) = parts.upgrade() else { return };
        match next {
            Ok(Ok(Some(notification))) => {
                let mut payloads = vec![notification.payload().to_owned()];
                while let Some(next) = active.next_buffered() {
                    payloads.push(next.payload().to_owned());
                }
                feed.heard(&schema, &tiers, &payloads, &catalog).await;
            }
            Ok(Ok(None)) => {
                // sqlx made the connection again: what was sent meanwhile is lost.
                feed.lose("the listener's connection was lost", true);
                listener = None;
            }
            Ok(Err(error)) => {
                tracing::debug!(target: "sqlacache", %error, "the change feed's connection failed");
                feed.lose("the listener's connection failed", true);
                listener = None;
            }
            Err(_) => {
                feed.lose("the change feed was silent", true);
                listener = None;
            }
        }
        if listener.is_none() {
            feed.pid.store(0, Ordering::Release);
        }
    }
}

async fn connect(own: &PgPool) -> Result<(PgListener, u32), sqlx::Error> {
    let mut listener = PgListener::connect_with(own).await?;
    listener.listen(CHANNEL).await?;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut listener).await?;
    Ok((listener, u32::try_from(pid).unwrap_or(0)))
}
