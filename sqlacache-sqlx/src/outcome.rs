//! What one read did, for a caller that asks: [`outcome_of`].

use sqlacache_core::Uncached;
use std::cell::Cell;
use std::future::Future;

/// How a read was answered, from [`outcome_of`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// From the in-process tier, fresh.
    Hit,
    /// From Redis, fresh.
    RedisHit,
    /// From the in-process tier, past its TTL, within the stale-while-revalidate window of its
    /// tables, while one read refreshes it in the background. (Never an invalidated entry.)
    StaleHit,
    /// From the in-process tier, past its TTL, because PostgreSQL failed and the tables allow
    /// stale-if-error. (Never an invalidated entry.)
    StaleIfError,
    /// Read from PostgreSQL and cached.
    Miss,
    /// Read from PostgreSQL without the cache, for this reason.
    Bypassed(Uncached),
    /// Read from PostgreSQL because a tier could not be trusted (a change feed not heard within
    /// its lease).
    Degraded,
}

tokio::task_local! {
    static OUTCOME: Cell<Option<Outcome>>;
}

/// Runs `read` (one cached read, or code that makes several) and says how the last cached read
/// in it was answered: `None` when it made none.
///
/// ```no_run
/// use sqlacache_sqlx::{outcome_of, Outcome};
/// # #[derive(sqlx::FromRow, serde::Serialize, serde::Deserialize, sqlacache_sqlx::Cacheable)]
/// # #[cache(table = "users")]
/// # struct User { #[cache(pk)] id: i64 }
/// # async fn demo(cache: &sqlacache_sqlx::CachedPool) -> Result<(), sqlx::Error> {
/// let (user, outcome) = outcome_of(cache.get::<User>(1)).await;
/// let user = user?;
/// if outcome == Some(Outcome::StaleHit) {
///     // served past its TTL while a refresh runs
/// }
/// # Ok(()) }
/// ```
pub async fn outcome_of<F: Future>(read: F) -> (F::Output, Option<Outcome>) {
    OUTCOME
        .scope(Cell::new(None), async move {
            let output = read.await;
            (output, OUTCOME.with(Cell::get))
        })
        .await
}

/// Records how the current read was answered, for an [`outcome_of`] around it.
#[inline]
pub(crate) fn report(outcome: Outcome) {
    let _ = OUTCOME.try_with(|cell| cell.set(Some(outcome)));
}
