//! Transactions whose writes invalidate the cache only once they commit.

use crate::pool::Shared;
use sqlacache_core::Tag;
use sqlx::postgres::PgConnection;
use sqlx::{Postgres, Transaction};
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
    pending: Vec<Tag>,
    shared: Arc<Shared>,
}

impl CachedConnection {
    pub(crate) fn parts(&mut self) -> (&mut PgConnection, &mut Vec<Tag>, Arc<Shared>) {
        (&mut self.tx, &mut self.pending, self.shared.clone())
    }

    /// The underlying connection. Writes made on it directly are **not** invalidated.
    pub fn inner(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

impl fmt::Debug for CachedConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedConnection").field("pending_tags", &self.pending.len()).finish_non_exhaustive()
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

/// Applies pending invalidations when dropped, unless disarmed: a commit that is cancelled
/// after `COMMIT` was sent may have committed.
struct ApplyOnDrop {
    shared: Arc<Shared>,
    tags: Vec<Tag>,
}

impl Drop for ApplyOnDrop {
    fn drop(&mut self) {
        self.shared.invalidate(&self.tags);
    }
}

/// Polls a future in place; dropped before its end, hands the rest to a task of its own.
struct FinishOnDrop<F: Future<Output = Result<(), sqlx::Error>> + Send + 'static>(Option<Pin<Box<F>>>);

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
            crate::executor::finish_in_background(async move {
                let _ = rest.await;
            });
        }
    }
}

impl CachedTransaction {
    pub(crate) fn new(tx: Transaction<'static, Postgres>, shared: Arc<Shared>) -> CachedTransaction {
        CachedTransaction { conn: CachedConnection { tx, pending: Vec::new(), shared } }
    }

    /// Commits, then invalidates what the transaction's writes changed.
    ///
    /// The invalidation follows the commit whether it succeeds or fails (a failed commit may
    /// still have committed, if the connection was lost after sending it). Once started, the
    /// commit runs to its end even if this future is dropped: the rest of it moves to a task of
    /// its own.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        let CachedConnection { tx, pending, shared } = self.conn;
        FinishOnDrop(Some(Box::pin(async move {
            let _apply = ApplyOnDrop { shared, tags: pending };
            tx.commit().await
        })))
        .await
    }

    /// Rolls back; nothing is invalidated.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.conn.tx.rollback().await
    }
}
