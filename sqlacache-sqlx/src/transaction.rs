//! Transactions whose writes invalidate the cache only once they commit.

use crate::pool::Shared;
use sqlacache_core::Tag;
use sqlx::postgres::PgConnection;
use sqlx::{Postgres, Transaction};
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
    tx: Transaction<'static, Postgres>,
    state: TxState,
}

/// Beyond this many distinct pending tags a transaction invalidates everything at commit.
const MAX_PENDING: usize = 16 * 1024;

/// What a transaction's statements left to do at its end.
pub(crate) struct TxState {
    shared: Arc<Shared>,
    /// Tags to invalidate after `COMMIT`, without repeats.
    pending: HashSet<Tag>,
    /// A hand-written `COMMIT` or `ROLLBACK` ended the transaction: statements now run on
    /// their own and invalidate at once.
    pub escaped: bool,
    /// Schema changes made in the transaction; they are in flight until it ends.
    pub ddl: usize,
    /// Temporary relations the transaction made.
    pub temp_tables: Vec<String>,
}

impl TxState {
    /// Adds tags to invalidate at commit; past the cap, the commit invalidates everything.
    pub fn add(&mut self, shared: &Shared, tags: Vec<Tag>) {
        if self.pending.contains(&Tag::All) {
            return;
        }
        self.pending.extend(tags);
        if self.pending.len() > MAX_PENDING || self.pending.contains(&Tag::All) {
            if !self.pending.contains(&Tag::All) {
                shared.stats.widen();
            }
            self.pending = HashSet::from([Tag::All]);
        }
    }

    /// The transaction ended by a statement of the caller's: apply what it collected now.
    /// Returns what was applied, to be published.
    pub fn escape(&mut self, shared: &Shared) -> Vec<Tag> {
        self.escaped = true;
        self.apply(shared)
    }

    /// Applies what the transaction collected here; returns it, to be published.
    fn apply(&mut self, shared: &Shared) -> Vec<Tag> {
        let tags: Vec<Tag> = self.pending.drain().collect();
        shared.invalidate(&tags);
        for _ in 0..std::mem::take(&mut self.ddl) {
            shared.ddl_done(&self.temp_tables);
        }
        tags
    }
}

impl Drop for TxState {
    fn drop(&mut self) {
        // Rolled back or dropped: the schema changes are over, whichever way they went.
        for _ in 0..std::mem::take(&mut self.ddl) {
            self.shared.ddl_done(&[]);
        }
    }
}

impl CachedConnection {
    pub(crate) fn parts(&mut self) -> (&mut PgConnection, &mut TxState, Arc<Shared>) {
        let shared = self.state.shared.clone();
        (&mut self.tx, &mut self.state, shared)
    }

    /// The underlying connection. Writes made on it directly are **not** invalidated.
    pub fn inner(&mut self) -> &mut PgConnection {
        &mut self.tx
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
/// itself, and publishes them before it returns.)
struct ApplyOnDrop(TxState);

impl Drop for ApplyOnDrop {
    fn drop(&mut self) {
        let shared = self.0.shared.clone();
        if let Some(publish) = shared.publish(self.0.apply(&shared)) {
            crate::executor::finish_in_background(&shared, publish);
        }
    }
}

/// Polls a future in place; dropped before its end, hands the rest to a task of its own.
struct FinishOnDrop<F: Future<Output = Result<(), sqlx::Error>> + Send + 'static>(Option<Pin<Box<F>>>, Arc<Shared>);

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
            crate::executor::finish_in_background(&self.1, async move {
                let _ = rest.await;
            });
        }
    }
}

impl CachedTransaction {
    pub(crate) fn new(tx: Transaction<'static, Postgres>, shared: Arc<Shared>) -> CachedTransaction {
        let state = TxState { shared, pending: HashSet::new(), escaped: false, ddl: 0, temp_tables: Vec::new() };
        CachedTransaction { conn: CachedConnection { tx, state } }
    }

    /// Commits, then invalidates what the transaction's writes changed.
    ///
    /// The invalidation follows the commit whether it succeeds or fails (a failed commit may
    /// still have committed, if the connection was lost after sending it). Once started, the
    /// commit runs to its end even if this future is dropped: the rest of it moves to a task of
    /// its own.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        let CachedConnection { tx, state } = self.conn;
        let shared = state.shared.clone();
        FinishOnDrop(
            Some(Box::pin(async move {
                let mut apply = ApplyOnDrop(state);
                let committed = tx.commit().await;
                let applied = apply.0.apply(&apply.0.shared.clone());
                if let Some(publish) = apply.0.shared.publish(applied) {
                    publish.await;
                }
                committed
            })),
            shared,
        )
        .await
    }

    /// Rolls back; nothing is invalidated.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.conn.tx.rollback().await
    }
}
