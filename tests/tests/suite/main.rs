//! Integration tests against real PostgreSQL, one module per concern.

mod bad_input;
mod bounded;
mod change_feed;
mod config;
mod dependencies;
mod freshness;
mod interleavings;
mod late_redis;
mod logs;
mod macros;
mod never_cached;
mod partial_commits;
mod projections;
mod proof;
mod races;
mod read_after_write;
mod redis_store;
mod row_types;
mod schema_changes;
mod sessions;
mod single_flight;
mod tier_rules;
mod tiers;
mod transactions;
mod write_shapes;
