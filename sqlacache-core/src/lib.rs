//! The driver-independent core of sqlacache: cache keys, tags and the version clock, the
//! in-process store, the SQL analyzer and the counters.
//!
//! Applications use the `sqlacache-sqlx` crate, which re-exports what they need from here.
#![forbid(unsafe_code)]

pub mod analyze;
pub mod bus;
pub mod key;
pub mod near;
mod ops;
#[cfg(feature = "redis")]
pub mod redis;
mod stats;
mod store;
pub mod tier;

pub use ops::Ops;
pub use stats::{Stats, StatsSnapshot, Tally, Uncached};
pub use store::{Entry, MemoryStore, Tag};
