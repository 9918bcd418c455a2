//! Integration tests against real PostgreSQL, one module per concern.

mod bad_input;
mod config;
mod dependencies;
mod freshness;
mod interleavings;
mod macros;
mod never_cached;
mod races;
mod read_after_write;
mod transactions;
mod write_shapes;
