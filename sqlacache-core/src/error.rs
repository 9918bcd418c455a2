//! The error type of the core crate.

/// Errors raised by the cache layer itself (never by the database).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value could not be serialized for the cache.
    #[error("cannot serialize a value for the cache: {0}")]
    Serialize(#[from] postcard::Error),
    /// The configuration is invalid.
    #[error("invalid cache configuration: {0}")]
    Config(String),
}
