//! The pool's counters through the [`metrics`] facade (feature `metrics`), copied as totals:
//! a read adds to the pool's own counters only, and [`record`] sets the facade's to their sums
//! (`Counter::absolute`), so exporting costs a hit nothing.
//!
//! Names follow OpenTelemetry's conventions (dotted, lower case, the unit apart); a Prometheus
//! exporter writes them with underscores (`sqlacache_reads`). Every metric has the label `pool`
//! (the pool's key prefix). See [`CachedPool::record_metrics`](crate::CachedPool::record_metrics)
//! for the list.

use crate::engine::Engine;
use metrics::{counter, describe_counter, describe_gauge, gauge, Unit};
use sqlacache_core::Uncached;
use std::sync::Once;

/// Describes every metric to the installed recorder, once per process.
fn describe() {
    static DESCRIBED: Once = Once::new();
    DESCRIBED.call_once(|| {
        describe_counter!(
            "sqlacache.reads",
            Unit::Count,
            "Cacheable and bypassed reads by how they were answered (labels result, tier, reason)."
        );
        describe_counter!(
            "sqlacache.invalidations",
            Unit::Count,
            "Invalidations applied in this process, by origin (pool, peer, feed)."
        );
        describe_counter!("sqlacache.invalidations.full", Unit::Count, "Invalidations that dropped every entry.");
        describe_counter!(
            "sqlacache.tier.drops",
            Unit::Count,
            "Times the in-process tier was dropped because invalidations may have been missed."
        );
        describe_counter!("sqlacache.redis.errors", Unit::Count, "Redis commands that failed or timed out.");
        describe_counter!(
            "sqlacache.fills.rejected",
            Unit::Count,
            "Fills not stored because a write invalidated what they read."
        );
        describe_counter!(
            "sqlacache.fills.coalesced",
            Unit::Count,
            "Misses that waited for a concurrent fill of the same read."
        );
        describe_counter!("sqlacache.entries.corrupt", Unit::Count, "Cached values that did not decode (each a miss).");
        describe_counter!(
            "sqlacache.invalidations.widened",
            Unit::Count,
            "Invalidations made wider than needed because a bound was reached."
        );
        describe_counter!("sqlacache.bus.published", Unit::Count, "Invalidations published to the other processes.");
        describe_counter!("sqlacache.strict.deadlines", Unit::Count, "Strict writes that returned at their deadline.");
        describe_counter!(
            "sqlacache.verify.checks",
            Unit::Count,
            "Shadow checks of sampled hits, by result (equal, mismatch)."
        );
        describe_counter!("sqlacache.statements.analyzed", Unit::Count, "SQL strings parsed and planned.");
        describe_gauge!("sqlacache.memory.usage", Unit::Bytes, "Bytes held by cached entries in the in-process tier.");
        describe_gauge!("sqlacache.memory.entries", Unit::Count, "Entries held by the in-process tier.");
        describe_gauge!(
            "sqlacache.feed.lag",
            Unit::Seconds,
            "How long ago the newest change-feed heartbeat that came back was sent."
        );
    });
}

/// Copies the pool's totals into the facade.
pub(crate) fn record(engine: &Engine) {
    describe();
    let pool = engine.name.clone();
    let s = engine.stats().snapshot();
    let read = |result: &'static str, tier: &'static str, value: u64| {
        counter!("sqlacache.reads", "pool" => pool.clone(), "result" => result, "tier" => tier).absolute(value);
    };
    let fresh_local = s.hits.saturating_sub(s.redis_hits + s.stale_hits + s.stale_if_error);
    read("hit", "memory", fresh_local);
    read("hit", "redis", s.redis_hits);
    read("stale_hit", "memory", s.stale_hits);
    read("stale_if_error", "memory", s.stale_if_error);
    read("miss", "none", s.misses);
    read("degraded", "none", s.degraded);
    for reason in Uncached::ALL {
        counter!("sqlacache.reads", "pool" => pool.clone(), "result" => "bypass", "tier" => "none", "reason" => reason_name(reason))
            .absolute(s.uncached(reason));
    }
    let own = s.invalidations.saturating_sub(s.received + s.feed_invalidations);
    for (origin, value) in [("pool", own), ("peer", s.received), ("feed", s.feed_invalidations)] {
        counter!("sqlacache.invalidations", "pool" => pool.clone(), "origin" => origin).absolute(value);
    }
    let totals = [
        ("sqlacache.invalidations.full", s.full_invalidations),
        ("sqlacache.tier.drops", s.tier_drops),
        ("sqlacache.redis.errors", s.redis_errors),
        ("sqlacache.fills.rejected", s.fills_rejected),
        ("sqlacache.fills.coalesced", s.coalesced),
        ("sqlacache.entries.corrupt", s.corrupt_entries),
        ("sqlacache.invalidations.widened", s.widened + engine.store().tables_sharing_a_clock()),
        ("sqlacache.bus.published", s.published),
        ("sqlacache.strict.deadlines", s.strict_deadlines),
        ("sqlacache.statements.analyzed", s.statements_analyzed),
    ];
    for (name, value) in totals {
        counter!(name, "pool" => pool.clone()).absolute(value);
    }
    for (result, value) in [("equal", s.verified), ("mismatch", s.verify_mismatches)] {
        counter!("sqlacache.verify.checks", "pool" => pool.clone(), "result" => result).absolute(value);
    }
    gauge!("sqlacache.memory.usage", "pool" => pool.clone()).set(engine.store().weight() as f64);
    gauge!("sqlacache.memory.entries", "pool" => pool.clone()).set(engine.store().len() as f64);
    if let Some(lag) = engine.feed.as_ref().and_then(|feed| feed.lag()) {
        gauge!("sqlacache.feed.lag", "pool" => pool).set(lag.as_secs_f64());
    }
}

/// The reason as a label value: its name in snake case (`plain_sqlx`).
fn reason_name(reason: Uncached) -> &'static str {
    match reason {
        Uncached::NotARead => "not_a_read",
        Uncached::Unparsable => "unparsable",
        Uncached::Locking => "locking",
        Uncached::Volatile => "volatile",
        Uncached::Clock => "clock",
        Uncached::Sample => "sample",
        Uncached::NotATable => "not_a_table",
        Uncached::RowSecurity => "row_security",
        Uncached::Disabled => "disabled",
        Uncached::UnknownTable => "unknown_table",
        Uncached::Session => "session",
        Uncached::Arguments => "arguments",
        Uncached::Unstorable => "unstorable",
        Uncached::BadModel => "bad_model",
        Uncached::NotInFeed => "not_in_feed",
        Uncached::Unproven => "unproven",
        Uncached::PlainSqlx => "plain_sqlx",
        _ => "other",
    }
}
