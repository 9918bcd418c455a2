//! The error type of this crate.

/// Errors from building or steering a [`crate::CachedPool`].
///
/// Reads and writes return [`sqlx::Error`] unchanged, so cached calls compose with plain sqlx
/// code; this type converts into it for `?`.
///
/// ```no_run
/// # async fn demo(cache: sqlacache_sqlx::CachedPool) {
/// match cache.invalidate_table("no_such_table").await {
///     Err(sqlacache_sqlx::Error::UnknownTable(name)) => eprintln!("no table {name}"),
///     other => other.unwrap(),
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database failed (for example while reading the catalog).
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A table named in a call is not in the database.
    #[error("unknown table `{0}`")]
    UnknownTable(String),
    /// The configuration is not valid.
    #[error("invalid cache configuration: {0}")]
    Config(String),
    /// The Redis settings given to `CachedPoolBuilder::redis` are not valid (such as a URL
    /// with an unknown scheme). An unreachable Redis is not an error.
    #[error("invalid Redis configuration: {0}")]
    Redis(String),
    /// The change feed could not be installed, or is not installed where it must be.
    #[error("change feed: {0}")]
    Feed(String),
}

impl From<Error> for sqlx::Error {
    fn from(error: Error) -> sqlx::Error {
        match error {
            Error::Database(e) => e,
            other => sqlx::Error::Configuration(Box::new(other)),
        }
    }
}
