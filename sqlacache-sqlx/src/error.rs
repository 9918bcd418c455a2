//! The error type of this crate.

use std::fmt;

/// Errors from building or steering a [`crate::CachedPool`].
///
/// Reads and writes return [`sqlx::Error`] unchanged, so cached calls compose with plain sqlx
/// code; this type converts into it for `?`. The underlying error, when there is one (a Redis
/// URL that does not parse, the database refusing to install the change feed), is the
/// [`source`](std::error::Error::source) of the variant's [`Cause`].
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
    Config(#[source] Cause),
    /// The Redis settings given to `CachedPoolBuilder::redis` are not valid (such as a URL
    /// with an unknown scheme). An unreachable Redis is not an error.
    #[error("invalid Redis configuration: {0}")]
    Redis(#[source] Cause),
    /// The change feed could not be installed, or is not installed where it must be.
    #[error("change feed: {0}")]
    Feed(#[source] Cause),
}

impl From<Error> for sqlx::Error {
    fn from(error: Error) -> sqlx::Error {
        match error {
            Error::Database(e) => e,
            other => sqlx::Error::Configuration(Box::new(other)),
        }
    }
}

/// What went wrong, in words, and the error that caused it, if any (its
/// [`source`](std::error::Error::source)).
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) {
/// use std::error::Error as _;
/// if let Err(sqlacache_sqlx::Error::Redis(cause)) =
///     sqlacache_sqlx::CachedPool::builder(pool).redis("http://localhost").build().await
/// {
///     eprintln!("{cause}; because: {:?}", cause.source().map(|s| s.to_string()));
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct Cause {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Cause {
    /// A cause told in words alone.
    pub(crate) fn new(message: impl Into<String>) -> Cause {
        Cause { message: message.into(), source: None }
    }

    /// `message` (what was being done), caused by `source`.
    pub(crate) fn from_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Cause {
        Cause { message: message.into(), source: Some(Box::new(source)) }
    }

    /// The cause in words (without its source's).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|s| s as &(dyn std::error::Error + 'static))
    }
}
