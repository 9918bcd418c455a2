//! Transactions whose writes invalidate the cache only once they commit.

use crate::engine::Engine;
use crate::local::Origin;
use crate::tiers::Delivery;
use sqlacache_core::Tag;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgTransactionManager};
use sqlx::Postgres;
use sqlx_core::transaction::TransactionManager;
use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// A transaction begun with [`CachedPool::begin`](crate::CachedPool::begin).
///
/// Run statements on it with `&mut *tx`, as with a sqlx transaction. Their invalidations are
/// collected and applied when [`commit`](CachedTransaction::commit) returns (also when the
/// commit fails or is cancelled, since the server may have committed); after
/// [`rollback`](CachedTransaction::rollback) or a drop they are discarded. Reads inside the
/// transaction go to the database (they see its uncommitted writes) and never fill the cache.
///
/// A statement in it that may change the session beyond the transaction (a session-level
/// `SET`, a temporary table, anything the library cannot read; see the README's connection
/// rule), or a use of [`CachedConnection::inner`], makes its connection close when the
/// transaction ends instead of going back to the pool.
///
/// ```no_run
/// # async fn demo(cache: &sqlacache_sqlx::CachedPool) -> Result<(), sqlx::Error> {
/// let mut tx = cache.begin().await?;
/// sqlx::query("DELETE FROM users WHERE id = $1").bind(2_i64).execute(&mut *tx).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
pub struct CachedTransaction {
    conn: CachedConnection,
}

/// The connection of a [`CachedTransaction`]; `&mut CachedConnection` is a sqlx `Executor`.
///
/// ```no_run
/// # async fn demo(cache: &sqlacache_sqlx::CachedPool) -> Result<(), sqlx::Error> {
/// let mut tx = cache.begin().await?;
/// let conn: &mut sqlacache_sqlx::CachedConnection = &mut tx;
/// let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&mut *conn).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
pub struct CachedConnection {
    conn: PoolConnection<Postgres>,
    /// The transaction `begin` opened has not been committed or rolled back through this value.
    open: bool,
    state: TxState,
}

/// Beyond this many distinct pending tags a transaction invalidates everything at commit.
const MAX_PENDING: usize = 16 * 1024;

/// What a transaction's statements left to do at its end.
pub(crate) struct TxState {
    engine: Arc<Engine>,
    /// Tags to invalidate after `COMMIT`, without repeats.
    pending: HashSet<Tag>,
    /// A hand-written `COMMIT` or `ROLLBACK` ended the transaction: statements now run on
    /// their own and invalidate at once.
    pub escaped: bool,
    /// Schema changes made in the transaction; they are in flight until it ends.
    pub ddl: usize,
    /// A statement may have changed the session beyond the transaction: the connection is
    /// closed when the transaction ends.
    pub tainted: bool,
    /// A statement may have changed the role or settings for the rest of the transaction
    /// (`SET LOCAL ROLE`, say): a `RETURNING` is no longer appended to its writes, since the
    /// role they run as may not read what they write.
    pub role_may_differ: bool,
}

impl TxState {
    /// Adds tags to invalidate at commit; past the cap, the commit invalidates everything.
    pub fn add(&mut self, tags: Vec<Tag>) {
        if self.pending.contains(&Tag::All) {
            return;
        }
        self.pending.extend(tags);
        if self.pending.len() > MAX_PENDING || self.pending.contains(&Tag::All) {
            if !self.pending.contains(&Tag::All) {
                self.engine.stats().widen();
            }
            self.pending = HashSet::from([Tag::All]);
        }
    }

    /// A statement of the caller's may have committed what the transaction wrote so far (a
    /// hand-written `COMMIT`, `COMMIT AND CHAIN`, or a string the library cannot read): apply
    /// it now, and keep it for the real end too, since the transaction may go on. With `ended`,
    /// it may be over: later statements then also apply their invalidations at once (and still
    /// at the end). Returns the rest of its delivery (to the shared tier and the other
    /// processes).
    pub fn committed_early(&mut self, ended: bool) -> Option<Delivery> {
        self.escaped |= ended;
        let tags: Vec<Tag> = self.pending.iter().copied().collect();
        self.engine.apply(&tags, Origin::Early);
        self.engine.tiers.publish(tags)
    }

    /// Applies what the transaction collected; returns the rest of its delivery.
    fn apply(&mut self) -> Option<Delivery> {
        let tags: Vec<Tag> = self.pending.drain().collect();
        let delivery = self.engine.apply(&tags, Origin::Write);
        for _ in 0..std::mem::take(&mut self.ddl) {
            self.engine.schema.ddl_done();
        }
        delivery
    }
}

impl Drop for TxState {
    fn drop(&mut self) {
        // Rolled back or dropped: the schema changes are over, whichever way they went.
        for _ in 0..std::mem::take(&mut self.ddl) {
            self.engine.schema.ddl_done();
        }
    }
}

impl CachedConnection {
    pub(crate) fn parts(&mut self) -> (&mut PgConnection, &mut TxState, Arc<Engine>) {
        let engine = self.state.engine.clone();
        (&mut self.conn, &mut self.state, engine)
    }

    /// The underlying connection. Writes made on it directly are **not** invalidated, and since
    /// the library cannot tell what they do to the session, the connection is closed when the
    /// transaction ends instead of going back to the pool.
    pub fn inner(&mut self) -> &mut PgConnection {
        self.state.tainted = true;
        &mut self.conn
    }

    /// Ends the connection's part: a tainted connection is closed when dropped; one whose
    /// transaction is still open rolls it back first (queued, as sqlx does on drop).
    fn release(&mut self) {
        if self.open {
            PgTransactionManager::start_rollback(&mut self.conn);
            self.open = false;
        }
        if self.state.tainted {
            self.conn.close_on_drop();
        }
    }
}

impl Drop for CachedConnection {
    fn drop(&mut self) {
        self.release();
    }
}

impl fmt::Debug for CachedConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedConnection").field("pending_tags", &self.state.pending.len()).finish_non_exhaustive()
    }
}

impl fmt::Debug for CachedTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedTransaction").field("conn", &self.conn).finish()
    }
}

impl Deref for CachedTransaction {
    type Target = CachedConnection;
    fn deref(&self) -> &CachedConnection {
        &self.conn
    }
}

impl DerefMut for CachedTransaction {
    fn deref_mut(&mut self) -> &mut CachedConnection {
        &mut self.conn
    }
}

/// Applies pending invalidations (and schema changes) when dropped: a commit that is
/// cancelled after `COMMIT` was sent may have committed. (A commit that completes applies them
/// itself, and publishes them before it returns.) The connection is released after.
struct ApplyOnDrop(CachedConnection);

impl Drop for ApplyOnDrop {
    fn drop(&mut self) {
        if let Some(delivery) = self.0.state.apply() {
            self.0.state.engine.finish_in_background(delivery);
        }
    }
}

/// Polls a future in place; dropped before its end, hands the rest to a task of its own.
struct FinishOnDrop<F: Future<Output = Result<(), sqlx::Error>> + Send + 'static>(Option<Pin<Box<F>>>, Arc<Engine>);

impl<F: Future<Output = Result<(), sqlx::Error>> + Send + 'static> Future for FinishOnDrop<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let Some(future) = &mut this.0 else {
            return Poll::Ready(Ok(()));
        };
        let output = std::task::ready!(future.as_mut().poll(cx));
        this.0 = None;
        Poll::Ready(output)
    }
}

impl<F: Future<Output = Result<(), sqlx::Error>> + Send + 'static> Drop for FinishOnDrop<F> {
    fn drop(&mut self) {
        // Only ever dropped unfinished after a first poll: `commit` awaits it at once.
        if let Some(rest) = self.0.take() {
            self.1.finish_in_background(async move {
                let _ = rest.await;
            });
        }
    }
}

impl CachedTransaction {
    /// Begins a transaction on a connection of `engine`'s pool.
    pub(crate) async fn begin(engine: Arc<Engine>) -> Result<CachedTransaction, sqlx::Error> {
        let conn = engine.pool.acquire().await?;
        let state =
            TxState { engine, pending: HashSet::new(), escaped: false, ddl: 0, tainted: false, role_may_differ: false };
        // Open before `BEGIN` is sent: if it fails or is cancelled, the drop rolls back.
        let mut conn = CachedConnection { conn, open: true, state };
        PgTransactionManager::begin(&mut conn.conn, None).await?;
        Ok(CachedTransaction { conn })
    }

    /// Commits, then invalidates what the transaction's writes changed.
    ///
    /// The invalidation follows the commit whether it succeeds or fails (a failed commit may
    /// still have committed, if the connection was lost after sending it). Once started, the
    /// commit runs to its end even if this future is dropped: the rest of it moves to a task of
    /// its own.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        let engine = self.conn.state.engine.clone();
        let mut apply = ApplyOnDrop(self.conn);
        FinishOnDrop(
            Some(Box::pin(async move {
                let committed = PgTransactionManager::commit(&mut apply.0.conn).await;
                if committed.is_ok() {
                    apply.0.open = false;
                }
                if let Some(delivery) = apply.0.state.apply() {
                    delivery.await;
                }
                committed
            })),
            engine,
        )
        .await
    }

    /// Rolls back; nothing is invalidated (but what a hand-written `COMMIT` in it committed,
    /// which was invalidated when it ran).
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        let mut conn = self.conn;
        let rolled_back = PgTransactionManager::rollback(&mut conn.conn).await;
        if rolled_back.is_ok() {
            conn.open = false;
        }
        rolled_back
    }
}
