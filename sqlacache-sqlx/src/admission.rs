//! One decision for every cached read: may it be cached, and if not, why. The reasons are
//! checked in one order, so a read counts the same reason whichever call made it.

use crate::plan::{Plan, ReadPlan};
use crate::schema::Schema;
use crate::statements::Counters;
use sqlacache_core::analyze::ReadOp;
use sqlacache_core::{Ops, Stats, Uncached};

/// Decides whether a read may be cached, in this order: its row type's model (`admitted`),
/// the pool's sessions, the plan, the operation the table allows (`op`; `None`: the plan's
/// own), then its arguments (`key`: whether every one could be part of a key).
#[inline]
pub(crate) fn decide<'p>(
    schema: &Schema,
    admitted: Result<(), Uncached>,
    plan: &'p Plan,
    op: Option<Ops>,
    key: Result<(), Uncached>,
) -> Result<&'p ReadPlan, Uncached> {
    // A model whose checks failed says so, whatever else its read runs into.
    admitted?;
    if schema.sessions_differ() {
        return Err(Uncached::Session);
    }
    let read = plan.read.as_ref().map_err(|r| *r)?;
    if !read.allowed.contains(op.unwrap_or_else(|| op_of(read.op))) {
        return Err(Uncached::Disabled);
    }
    key?;
    Ok(read)
}

/// The operation a read counts as.
pub(crate) fn op_of(op: ReadOp) -> Ops {
    match op {
        ReadOp::Fetch => Ops::FETCH,
        ReadOp::Count => Ops::COUNT,
        ReadOp::Exists => Ops::EXISTS,
    }
}

/// Counts a read not cached for `reason` and says so at debug level, naming the statement
/// (shortened) and the row type, here and in the statement's counters, so "which query is never cached?" has an answer in the logs.
/// `type_name` is the type read (`Vec<Row>`, `Option<Row>` or `Row`): the event names `Row`.
pub(crate) fn not_cached(stats: &Stats, counters: &Counters, reason: Uncached, sql: &str, type_name: &str) {
    stats.bypass(reason);
    counters.bypass(reason);
    crate::outcome::report(crate::outcome::Outcome::Bypassed(reason));
    let row = ["alloc::vec::Vec<", "core::option::Option<"]
        .into_iter()
        .find_map(|wrapper| type_name.strip_prefix(wrapper)?.strip_suffix('>'))
        .unwrap_or(type_name);
    tracing::debug!(target: "sqlacache", ?reason, statement = shorten(sql), r#type = row, "read not cached");
}

/// At most 120 characters of `sql`, on one line.
fn shorten(sql: &str) -> String {
    let mut short: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some((cut, _)) = short.char_indices().nth(120) {
        short.truncate(cut);
        short.push('…');
    }
    short
}

/// Says once per type and message, at `warn` level, why reads into it are not cached.
pub(crate) fn warn_once_per_type(type_name: &'static str, message: &'static str) {
    static WARNED: std::sync::Mutex<Vec<(&'static str, &'static str)>> = std::sync::Mutex::new(Vec::new());
    let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if !warned.contains(&(type_name, message)) && warned.len() < 256 {
        warned.push((type_name, message));
        tracing::warn!(target: "sqlacache", r#type = type_name, "{message}");
    }
}
