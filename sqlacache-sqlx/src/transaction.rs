//! Transactions whose writes invalidate the cache only once they commit.

use crate::pool::Shared;
use sqlacache_core::Tag;
use sqlx::postgres::PgConnection;
use sqlx::{Postgres, Transaction};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

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

impl CachedTransaction {
    pub(crate) fn new(tx: Transaction<'static, Postgres>, shared: Arc<Shared>) -> CachedTransaction {
        CachedTransaction { conn: CachedConnection { tx, pending: Vec::new(), shared } }
    }

    /// Commits, then invalidates what the transaction's writes changed.
    ///
    /// The commit runs to its end on a task of its own, and the invalidation follows it whether
    /// it succeeds or fails (a failed commit may still have committed, if the connection was
    /// lost after sending it). Dropping this future does not stop either.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        let CachedConnection { tx, pending, shared } = self.conn;
        let apply = ApplyOnDrop { shared, tags: pending };
        let task = tokio::spawn(async move {
            let _apply = apply;
            tx.commit().await
        });
        task.await.unwrap_or_else(|e| Err(sqlx::Error::Io(std::io::Error::other(e))))
    }

    /// Rolls back; nothing is invalidated.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.conn.tx.rollback().await
    }
}
