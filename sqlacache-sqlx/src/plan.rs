//! Turning a statement's analysis into what the cache does with it, given the catalog and the
//! configuration. Plans are memoized per SQL string and catalog generation.

use crate::catalog::{Actions, Catalog, TableInfo};
use crate::config::{Policy, Stale};
use crate::predicate::{read_deps, reported, whole_table, ReadDeps};
use crate::statements::Counters;
use sqlacache_core::analyze::{Analysis, Effect, Reach, ReadOp, RowSource, TableName, WriteKind};
use sqlacache_core::key::{column_id, SqlDigest};
use sqlacache_core::{Ops, Tag, Uncached};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub generation: u64,
    /// How the statement is cached as a read, or why it is not.
    pub read: Result<ReadPlan, Uncached>,
    pub write: WritePlan,
    pub statements: usize,
    /// Whether running it changes the schema.
    pub ddl: bool,
    /// What it does to its session and its transaction.
    pub reach: Reach,
    /// Whether the connection that runs it may no longer answer like the pool's others: its
    /// kind is not known to leave the session alone ([`Reach::session`]), or it calls a function
    /// not known to (see [`Catalog::leaves_session_alone`]).
    pub taints: bool,
    /// What its reads did, shared by every copy of the plan and carried over to the next plan
    /// of the same text.
    pub counters: Arc<Counters>,
}

impl Plan {
    /// The plan of a statement that could not be planned: not cached, invalidates everything.
    pub fn unknown() -> Plan {
        Plan {
            generation: 0,
            read: Err(Uncached::Unparsable),
            write: WritePlan::Everything,
            statements: 0,
            ddl: true,
            reach: Reach::unknown(),
            taints: true,
            counters: Arc::default(),
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct ReadPlan {
    pub op: ReadOp,
    /// Operations every table read allows.
    pub allowed: Ops,
    pub ttl: Duration,
    /// The smallest stale windows of the tables read.
    pub stale: Stale,
    /// Every table read, by oid.
    pub tables: Box<[u32]>,
    /// What it depends on: per table, the whole table or, when its conditions pin a tracked
    /// column, that column's values (see [`crate::predicate`]).
    pub deps: ReadDeps,
    /// The table, when exactly one is read, with its primary-key columns when usable.
    pub single: Option<(u32, Option<Vec<String>>)>,
    /// The SQL's part of every cache key, with the relations it resolved to (so a table that
    /// now shadows the name never answers with the old one's entries), hashed once here
    /// rather than on each read.
    pub sql: SqlDigest,
}

#[derive(Clone, Debug)]
pub(crate) enum WritePlan {
    None,
    Everything,
    Writes(WriteTags),
}

#[derive(Clone, Debug)]
pub(crate) struct WriteTags {
    /// The SQL to run instead of the caller's, with `RETURNING` appended.
    pub rewritten: Option<Arc<str>>,
    /// Tags invalidated whatever the rows were.
    pub tags: Vec<Tag>,
    /// How to learn the written rows from the output; when that fails, `Rows(table)` is
    /// invalidated instead.
    pub rows: Option<RowsPlan>,
    /// The same write for a caller that discards its rows (`execute`), when its own
    /// `RETURNING` lacks tracked columns: with them appended, so that their values are learned
    /// rather than each column invalidated as a whole.
    pub discarding: Option<Box<WriteTags>>,
}

#[derive(Clone, Debug)]
pub(crate) struct RowsPlan {
    pub table: u32,
    /// Where the key columns are in the output.
    pub columns: Vec<At>,
    /// Where the values of tracked columns the write does not assign are in the output (see
    /// [`crate::predicate`]).
    pub values: Vec<(String, At)>,
    /// Whether rows reach the caller (`false` when the library appended the `RETURNING`).
    pub forward: bool,
}

/// Whether the catalog shows that a `RETURNING` of the key appended to a write on `info` is
/// accepted wherever the write is: no rules that could rewrite it, no row-level security that
/// could filter or refuse it, and the role may read the key.
fn accepts_returning(info: &TableInfo) -> bool {
    matches!(info.kind, 'r' | 'p') && !info.has_rules && !info.row_security && info.key_readable
}

/// Where a column of a written row is in the statement's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum At {
    /// At this position.
    Index(usize),
    /// Under this name (the first column of the name).
    Name(String),
}

/// What the planner needs besides the analysis.
pub(crate) struct Context<'a> {
    pub catalog: &'a Catalog,
    pub policy: &'a dyn Fn(&TableInfo) -> Option<Policy>,
    /// The pool has a change feed: reads of tables it does not cover are not cached.
    pub feed: bool,
    /// Reads may depend on values of tracked columns rather than on whole tables.
    pub predicates: bool,
}

/// Names that did not resolve; the caller may reload the catalog and plan again.
pub(crate) struct Unresolved(pub Vec<TableName>);

pub(crate) fn plan(sql: &str, analysis: &Analysis, cx: &Context<'_>) -> (Plan, Unresolved) {
    let mut unresolved = Vec::new();
    let read = analysis.read.clone().and_then(|read| plan_read(sql, &read, analysis, cx, &mut unresolved));
    let write = match &analysis.effect {
        Effect::None => WritePlan::None,
        Effect::Everything { .. } => WritePlan::Everything,
        Effect::Writes(writes) => plan_writes(sql, writes, cx, &mut unresolved),
    };
    let plan = Plan {
        generation: cx.catalog.generation,
        read,
        write,
        statements: analysis.statements,
        // Creating a temporary relation changes what names resolve to, on its connection.
        ddl: analysis.ddl || !analysis.temp_tables.is_empty(),
        reach: analysis.reach,
        taints: analysis.reach.session
            || !analysis.functions.iter().all(|f| cx.catalog.leaves_session_alone(f))
            || !writes_plain_tables(&analysis.effect, cx),
        counters: Arc::default(),
    };
    (plan, Unresolved(unresolved))
}

/// Whether every table a statement writes is a plain table: a write to a view or a system
/// relation may run anything its rules or triggers say (`UPDATE pg_settings` changes settings).
fn writes_plain_tables(effect: &Effect, cx: &Context<'_>) -> bool {
    match effect {
        Effect::None => true,
        Effect::Everything { .. } => false,
        Effect::Writes(writes) => {
            writes.iter().all(|w| cx.catalog.resolve(&w.table).is_some_and(|info| info.is_plain_table()))
        }
    }
}

fn plan_read(
    sql: &str,
    read: &sqlacache_core::analyze::Read,
    analysis: &Analysis,
    cx: &Context<'_>,
    unresolved: &mut Vec<TableName>,
) -> Result<ReadPlan, Uncached> {
    let mut allowed = Ops::ALL;
    let mut ttl = Duration::MAX;
    let mut stale: Option<Stale> = None;
    let mut deps = Vec::new();
    let mut tables: Vec<&TableInfo> = Vec::new();
    // The first reason found wins, but every name is still resolved so that unknown ones are
    // all reported at once.
    let mut refused = None;
    for name in &read.tables {
        let outcome = match cx.catalog.resolve(name) {
            Some(info) if !info.is_plain_table() => Err(Uncached::NotATable),
            Some(info) if info.row_security => Err(Uncached::RowSecurity),
            Some(info) if cx.feed && !cx.catalog.fed(info) => Err(Uncached::NotInFeed),
            Some(info) => match (cx.policy)(info) {
                Some(policy) => {
                    allowed = Ops::from_bits(allowed.bits() & policy.ops.bits());
                    ttl = ttl.min(policy.ttl);
                    stale = Some(stale.map_or(policy.stale, |s| s.min(policy.stale)));
                    if !deps.contains(&Tag::Table(info.oid)) {
                        deps.push(Tag::Table(info.oid));
                        tables.push(info);
                    }
                    Ok(())
                }
                None => Err(Uncached::Disabled),
            },
            None if name.schema.is_none() && read.ctes.contains(&name.name) => Ok(()),
            None => {
                unresolved.push(name.clone());
                Err(Uncached::UnknownTable)
            }
        };
        if let Err(reason) = outcome {
            refused.get_or_insert(reason);
        }
    }
    if let Some(reason) = refused {
        return Err(reason);
    }
    if tables.is_empty() {
        return Err(Uncached::NotARead);
    }
    if !analysis.functions.iter().all(|f| cx.catalog.is_immutable(f)) {
        return Err(Uncached::Volatile);
    }
    let oids: Vec<u32> = tables.iter().map(|t| t.oid).collect();
    let deps = if cx.predicates {
        read_deps(&tables, &read.tables, read.filters.as_ref(), cx.catalog)
    } else {
        let described = tables.iter().map(|t| whole_table(t)).collect();
        ReadDeps { fixed: deps.into(), narrowed: Vec::new(), described }
    };
    Ok(ReadPlan {
        op: read.op,
        allowed,
        ttl,
        stale: stale.unwrap_or_default(),
        tables: oids.clone().into(),
        deps,
        sql: SqlDigest::with_relations(sql, &oids, &cx.catalog.session),
        single: match tables.as_slice() {
            [one] => Some((one.oid, one.key.clone())),
            _ => None,
        },
    })
}

fn plan_writes(
    sql: &str,
    writes: &[sqlacache_core::analyze::Write],
    cx: &Context<'_>,
    unresolved: &mut Vec<TableName>,
) -> WritePlan {
    let mut tags = Vec::new();
    let mut rows_plan = None;
    let mut rewritten = None;
    let mut discarding = None;
    let push = |tags: &mut Vec<Tag>, tag: Tag| {
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    };
    for write in writes {
        let info = match cx.catalog.resolve(&write.table) {
            Some(info) => info,
            None => {
                unresolved.push(write.table.clone());
                return WritePlan::Everything;
            }
        };
        if info.kind == 'v' {
            // A write through a view changes its base tables, which the catalog does not map.
            return WritePlan::Everything;
        }
        let t = info.oid;
        let actions = match write.kind {
            WriteKind::Insert if write.assigned.is_empty() => Actions::None,
            WriteKind::Insert | WriteKind::Update => Actions::Update,
            WriteKind::Delete => Actions::Delete,
            WriteKind::Truncate { cascade: true } => Actions::Truncate,
            WriteKind::Truncate { cascade: false } => Actions::None,
            WriteKind::Other | WriteKind::Ddl => Actions::Any,
        };
        for tag in cx.catalog.write_tags(t, actions) {
            push(&mut tags, tag);
        }

        // A tracked column the write may change without reporting its old value, as a whole.
        let updates =
            write.kind == WriteKind::Update || (write.kind == WriteKind::Insert && !write.assigned.is_empty());
        // The others' values, from the rows (which report the new value, equal to the old).
        let (wanted, unreported): (Vec<&String>, Vec<&String>) =
            info.tracked.iter().map(|(column, _)| column).partition(|c| reported(info, c, updates, &write.assigned));
        for column in unreported {
            push(&mut tags, Tag::Row(column_id(t, column)));
        }
        let rows = match (&info.key, write.kind, writes.len()) {
            (Some(key), WriteKind::Insert | WriteKind::Update | WriteKind::Delete, 1)
                if !write.assigned.iter().any(|c| key.contains(c)) =>
            {
                row_columns(sql, key, &wanted, &write.rows)
                    .filter(|found| found.rewritten.is_none() || accepts_returning(info))
            }
            _ => None,
        };
        match rows {
            Some(found) => {
                if let (RowSource::Returning { items, star_first: false, end: Some((at, qualifier)) }, false) =
                    (&write.rows, found.missing.is_empty())
                {
                    let extra = returning_columns(qualifier, &found.missing);
                    let rewritten =
                        sql.get(..*at).zip(sql.get(*at..)).map(|(head, tail)| format!("{head}, {extra}{tail}"));
                    if let Some(sql) = rewritten.filter(|_| accepts_returning(info)) {
                        let mut values = found.values.clone();
                        values.extend(
                            found.missing.iter().enumerate().map(|(j, c)| (c.clone(), At::Index(items.len() + j))),
                        );
                        let rows = RowsPlan { table: t, columns: found.key.clone(), values, forward: false };
                        discarding = Some(Box::new(WriteTags {
                            rewritten: Some(Arc::from(sql)),
                            tags: tags.clone(),
                            rows: Some(rows),
                            discarding: None,
                        }));
                    }
                }
                for column in &found.missing {
                    push(&mut tags, Tag::Row(column_id(t, column)));
                }
                rows_plan =
                    Some(RowsPlan { table: t, columns: found.key, values: found.values, forward: found.forward });
                rewritten = found.rewritten.map(Arc::from);
            }
            None => push(&mut tags, Tag::Rows(t)),
        }
    }
    WritePlan::Writes(WriteTags { rewritten, tags, rows: rows_plan, discarding })
}

/// `RETURNING` items giving the text of these columns of the target.
fn returning_columns(qualifier: &str, columns: &[String]) -> String {
    let items: Vec<String> =
        columns.iter().map(|c| format!("{qualifier}.\"{}\"::text", c.replace('"', "\"\""))).collect();
    items.join(", ")
}

/// Where the columns of written rows are in a write's output.
struct Found {
    key: Vec<At>,
    values: Vec<(String, At)>,
    /// Tracked columns the output does not hold.
    missing: Vec<String>,
    /// Whether rows reach the caller.
    forward: bool,
    /// The SQL with a `RETURNING` appended, when one must be.
    rewritten: Option<String>,
}

/// Where the key columns (all needed) and the `tracked` columns (each if it can be had) of
/// written rows will be in the output, whether the rows reach the caller, and the rewritten
/// SQL when a `RETURNING` must be appended.
fn row_columns(sql: &str, key: &[String], tracked: &[&String], source: &RowSource) -> Option<Found> {
    let found = |key, values, missing, forward, rewritten| Found { key, values, missing, forward, rewritten };
    match source {
        RowSource::Unknown => None,
        RowSource::Append { at, qualifier } => {
            // The key's columns, then the tracked columns that are not among them.
            let extra: Vec<&String> = tracked.iter().copied().filter(|c| !key.contains(c)).collect();
            let columns: Vec<String> = key.iter().chain(extra.iter().copied()).cloned().collect();
            // An offset that is not a character boundary of this text (never made by the
            // analyzer of this text) names no rows: the caller invalidates the whole table.
            let (head, tail) = (sql.get(..*at)?, sql.get(*at..)?);
            let rewritten = format!("{head} RETURNING {}{tail}", returning_columns(qualifier, &columns));
            let position = |c: &String| {
                key.iter()
                    .position(|k| k == c)
                    .unwrap_or_else(|| key.len() + extra.iter().position(|e| *e == c).unwrap_or(0))
            };
            let values = tracked.iter().map(|c| ((*c).clone(), At::Index(position(c)))).collect();
            Some(found((0..key.len()).map(At::Index).collect(), values, Vec::new(), false, Some(rewritten)))
        }
        RowSource::Returning { items, star_first: true, .. } => {
            // `RETURNING *, ..`: the star's columns come first under their own names, unless
            // an item shadows one.
            let named = |c: &String| items.iter().all(|(out, _)| out != c);
            if !key.iter().all(named) {
                return None;
            }
            let (values, missing): (Vec<&String>, Vec<&String>) = tracked.iter().copied().partition(|c| named(c));
            Some(found(
                key.iter().map(|c| At::Name(c.clone())).collect(),
                values.into_iter().map(|c| (c.clone(), At::Name(c.clone()))).collect(),
                missing.into_iter().cloned().collect(),
                true,
                None,
            ))
        }
        RowSource::Returning { items, star_first: false, .. } => {
            let position = |c: &String| items.iter().position(|(_, src)| src.as_deref() == Some(c.as_str()));
            let key: Option<Vec<At>> = key.iter().map(|k| position(k).map(At::Index)).collect();
            let mut values = Vec::new();
            let mut missing = Vec::new();
            for column in tracked {
                match position(column) {
                    Some(i) => values.push(((*column).clone(), At::Index(i))),
                    None => missing.push((*column).clone()),
                }
            }
            Some(found(key?, values, missing, true, None))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(at: usize) -> RowSource {
        RowSource::Append { at, qualifier: "t".into() }
    }

    #[test]
    fn a_returning_is_appended_at_a_character_boundary_only() {
        let sql = "UPDATE t SET name = 'é' WHERE id = 1";
        let key = ["id".to_owned()];
        let found = row_columns(sql, &key, &[], &append(sql.len())).expect("at the end");
        assert_eq!(found.rewritten.as_deref(), Some("UPDATE t SET name = 'é' WHERE id = 1 RETURNING t.\"id\"::text"));
        // Inside the two bytes of `é`, or past the end: no rows named (the whole table is
        // invalidated instead), and no panic.
        let inside = sql.find('é').expect("present") + 1;
        assert!(row_columns(sql, &key, &[], &append(inside)).is_none());
        assert!(row_columns(sql, &key, &[], &append(sql.len() + 1)).is_none());
    }
}
