//! Turning a statement's analysis into what the cache does with it, given the catalog and the
//! configuration. Plans are memoized per SQL string and catalog generation.

use crate::catalog::{Actions, Catalog, TableInfo};
use sqlacache_core::analyze::{Analysis, Effect, Reach, ReadOp, RowSource, TableName, WriteKind};
use sqlacache_core::key::SqlDigest;
use sqlacache_core::{Ops, Tag, Uncached};
use std::sync::Arc;
use std::time::Duration;

/// How a table is cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Policy {
    pub ops: Ops,
    pub ttl: Duration,
}

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
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct ReadPlan {
    pub op: ReadOp,
    /// Operations every table read allows.
    pub allowed: Ops,
    pub ttl: Duration,
    /// `Table` tags of every table read.
    pub deps: Box<[Tag]>,
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
}

#[derive(Clone, Debug)]
pub(crate) struct RowsPlan {
    pub table: u32,
    pub columns: RowColumns,
    /// Whether rows reach the caller (`false` when the library appended the `RETURNING`).
    pub forward: bool,
}

/// Whether the catalog shows that a `RETURNING` of the key appended to a write on `info` is
/// accepted wherever the write is: no rules that could rewrite it, no row-level security that
/// could filter or refuse it, and the role may read the key.
fn accepts_returning(info: &TableInfo) -> bool {
    matches!(info.kind, 'r' | 'p') && !info.has_rules && !info.row_security && info.key_readable
}

#[derive(Clone, Debug)]
pub(crate) enum RowColumns {
    /// Key columns at these positions.
    Indexed(Vec<usize>),
    /// Key columns under these names (the first column of each name).
    Named(Vec<String>),
}

/// What the planner needs besides the analysis.
pub(crate) struct Context<'a> {
    pub catalog: &'a Catalog,
    pub policy: &'a dyn Fn(&TableInfo) -> Option<Policy>,
    /// The pool has a change feed: reads of tables it does not cover are not cached.
    pub feed: bool,
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
    Ok(ReadPlan {
        op: read.op,
        allowed,
        ttl,
        deps: deps.into(),
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

        let rows = match (&info.key, write.kind, writes.len()) {
            (Some(key), WriteKind::Insert | WriteKind::Update | WriteKind::Delete, 1)
                if !write.assigned.iter().any(|c| key.contains(c)) =>
            {
                row_columns(sql, key, &write.rows).filter(|(_, _, append)| append.is_none() || accepts_returning(info))
            }
            _ => None,
        };
        match rows {
            Some((columns, forward, sql)) => {
                rows_plan = Some(RowsPlan { table: t, columns, forward });
                rewritten = sql.map(Arc::from);
            }
            None => push(&mut tags, Tag::Rows(t)),
        }
    }
    WritePlan::Writes(WriteTags { rewritten, tags, rows: rows_plan })
}

/// Where the key columns of written rows will be in the output, whether the rows reach the
/// caller, and the rewritten SQL when a `RETURNING` must be appended.
fn row_columns(sql: &str, key: &[String], source: &RowSource) -> Option<(RowColumns, bool, Option<String>)> {
    match source {
        RowSource::Unknown => None,
        RowSource::Append { at, qualifier } => {
            let columns: Vec<String> =
                key.iter().map(|c| format!("{qualifier}.\"{}\"::text", c.replace('"', "\"\""))).collect();
            // An offset that is not a character boundary of this text (never made by the
            // analyzer of this text) names no rows: the caller invalidates the whole table.
            let (head, tail) = (sql.get(..*at)?, sql.get(*at..)?);
            let rewritten = format!("{head} RETURNING {}{tail}", columns.join(", "));
            Some((RowColumns::Indexed((0..key.len()).collect()), false, Some(rewritten)))
        }
        RowSource::Returning { items, star_first: true } if items.iter().all(|(out, _)| !key.contains(out)) => {
            // `RETURNING *, ..`: the star's columns come first under their own names.
            Some((RowColumns::Named(key.to_vec()), true, None))
        }
        RowSource::Returning { items, star_first: false } => {
            let positions: Option<Vec<usize>> =
                key.iter().map(|k| items.iter().position(|(_, src)| src.as_deref() == Some(k.as_str()))).collect();
            positions.map(|p| (RowColumns::Indexed(p), true, None))
        }
        RowSource::Returning { .. } => None,
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
        let (_, _, rewritten) = row_columns(sql, &key, &append(sql.len())).expect("at the end");
        assert_eq!(rewritten.as_deref(), Some("UPDATE t SET name = 'é' WHERE id = 1 RETURNING t.\"id\"::text"));
        // Inside the two bytes of `é`, or past the end: no rows named (the whole table is
        // invalidated instead), and no panic.
        let inside = sql.find('é').expect("present") + 1;
        assert!(row_columns(sql, &key, &append(inside)).is_none());
        assert!(row_columns(sql, &key, &append(sql.len() + 1)).is_none());
    }
}
