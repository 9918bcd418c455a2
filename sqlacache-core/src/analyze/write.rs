//! What a statement writes: its target tables, the kind of each write, the columns it
//! assigns, and how the keys of the rows it touched can be learned.

use super::parse::append_offset;
use super::scan::Scan;
use super::targets::{delete_targets, factor_name, factor_qualifier, write_targets};
use super::{fold, ident, RowSource, TableName, Write, WriteKind};
use sqlparser::ast::{
    self, AssignmentTarget, Expr, FromTable, ObjectName, ObjectNamePart, OnConflictAction, OnInsert, SelectItem,
    Statement, TableObject, Visit,
};

/// Adds the effect of one top-level statement. Returns `true` when it may change anything.
/// What one top-level statement does to cached data.
#[derive(Default)]
pub(super) struct StatementEffect {
    /// Writes to known tables.
    pub writes: Vec<Write>,
    /// It may change anything.
    pub everything: bool,
    /// It changes the schema.
    pub ddl: bool,
    /// Temporary relations it creates.
    pub temp_tables: Vec<String>,
}

/// The effect of one top-level statement.
pub(super) fn statement_effect(statement: &Statement, sql: &str, single: bool, scan: &Scan) -> StatementEffect {
    let mut effect = StatementEffect::default();
    effect.everything = effect_into(statement, sql, single, scan, &mut effect);
    effect
}

/// Adds the effect of one top-level statement to `out`; returns whether it may change anything.
fn effect_into(statement: &Statement, sql: &str, single: bool, scan: &Scan, out: &mut StatementEffect) -> bool {
    let writes = &mut out.writes;
    let unknown =
        |table: TableName, kind: WriteKind| Write { table, kind, assigned: Vec::new(), rows: RowSource::Unknown };
    for table in &scan.nested_writes {
        writes.push(unknown(table.clone(), WriteKind::Other));
    }
    if scan.unreadable_relation {
        return true;
    }
    match statement {
        Statement::Query(_) => {
            if scan.select_into {
                out.ddl = true;
                out.temp_tables.extend(scan.temp_into.iter().cloned());
            }
            false
        }
        Statement::Insert(insert) => {
            let Some(table) = write_targets(statement).pop() else {
                return true;
            };
            let mut assigned = Vec::new();
            if let Some(OnInsert::OnConflict(conflict)) = &insert.on {
                if let OnConflictAction::DoUpdate(update) = &conflict.action {
                    assigned = assigned_columns(&update.assignments);
                }
            }
            let qualifier = match &insert.table_alias {
                Some(alias) => alias.alias.to_string(),
                None => match &insert.table {
                    TableObject::TableName(name) => name.0.last().map(|p| p.to_string()).unwrap_or_default(),
                    _ => return true,
                },
            };
            let rows = row_source(sql, single, insert.returning.as_deref(), &qualifier);
            writes.push(Write { table, kind: WriteKind::Insert, assigned, rows });
            false
        }
        Statement::Update(update) => {
            let (Some(table), Some(qualifier)) =
                (factor_name(&update.table.relation), factor_qualifier(&update.table.relation))
            else {
                return true;
            };
            if !update.table.joins.is_empty() {
                return true;
            }
            let rows = row_source(sql, single, update.returning.as_deref(), &qualifier);
            writes.push(Write {
                table,
                kind: WriteKind::Update,
                assigned: assigned_columns(&update.assignments),
                rows,
            });
            false
        }
        Statement::Delete(delete) => {
            let targets = delete_targets(delete);
            let from = match &delete.from {
                FromTable::WithFromKeyword(tables) | FromTable::WithoutKeyword(tables) => tables,
            };
            match (targets.as_slice(), from.as_slice()) {
                ([table], [from]) if delete.tables.is_empty() && from.joins.is_empty() => {
                    let Some(qualifier) = factor_qualifier(&from.relation) else {
                        return true;
                    };
                    let rows = row_source(sql, single, delete.returning.as_deref(), &qualifier);
                    writes.push(Write { table: table.clone(), kind: WriteKind::Delete, assigned: Vec::new(), rows });
                }
                ([], _) => return true,
                _ => writes.extend(targets.into_iter().map(|t| unknown(t, WriteKind::Delete))),
            }
            false
        }
        Statement::Merge(_) => match write_targets(statement).pop() {
            Some(table) => {
                writes.push(unknown(table, WriteKind::Other));
                false
            }
            None => true,
        },
        Statement::Truncate(truncate) => {
            let cascade = matches!(truncate.cascade, Some(ast::CascadeOption::Cascade));
            for target in &truncate.table_names {
                match TableName::from_object(&target.name) {
                    Some(table) => writes.push(unknown(table, WriteKind::Truncate { cascade })),
                    None => return true,
                }
            }
            false
        }
        Statement::CreateTable(create) => {
            out.ddl = true;
            if create.temporary {
                if let Some(table) = TableName::from_object(&create.name) {
                    out.temp_tables.push(table.name);
                }
            }
            false
        }
        Statement::AlterTable(alter) => {
            out.ddl = true;
            // Joining or leaving a family changes what reads of the other members return, and
            // the family is not known until the catalog is read again.
            let regroups = alter.operations.iter().any(|op| {
                matches!(
                    op,
                    ast::AlterTableOperation::AttachPartition { .. }
                        | ast::AlterTableOperation::AttachPartitionOf { .. }
                        | ast::AlterTableOperation::DetachPartition { .. }
                        | ast::AlterTableOperation::DetachPartitionOf { .. }
                        | ast::AlterTableOperation::Inherit { .. }
                        | ast::AlterTableOperation::NoInherit { .. }
                )
            });
            if regroups {
                return true;
            }
            match TableName::from_object(&alter.name) {
                Some(table) => {
                    writes.push(unknown(table, WriteKind::Ddl));
                    false
                }
                None => true,
            }
        }
        Statement::Drop { object_type, names, .. } => {
            out.ddl = true;
            match object_type {
                ast::ObjectType::Table => {
                    for name in names {
                        match TableName::from_object(name) {
                            Some(table) => writes.push(unknown(table, WriteKind::Ddl)),
                            None => return true,
                        }
                    }
                    false
                }
                ast::ObjectType::Index
                | ast::ObjectType::View
                | ast::ObjectType::MaterializedView
                | ast::ObjectType::Sequence => false,
                _ => true,
            }
        }
        Statement::Copy { source, to, .. } => match (source, to) {
            (_, true) => false,
            (ast::CopySource::Table { table_name, .. }, false) => match TableName::from_object(table_name) {
                Some(table) => {
                    writes.push(unknown(table, WriteKind::Other));
                    false
                }
                None => true,
            },
            _ => true,
        },
        Statement::Explain { analyze, statement, .. } => {
            if *analyze {
                // EXPLAIN ANALYZE runs the statement; its writes are not reported back.
                let mut scan = Scan::default();
                let _ = statement.visit(&mut scan);
                let inner = statement_effect(statement, sql, false, &scan);
                writes.extend(inner.writes);
                out.ddl |= inner.ddl;
                return inner.everything;
            }
            false
        }
        Statement::CreateView(view) => {
            out.ddl = true;
            if view.temporary {
                out.temp_tables.extend(TableName::from_object(&view.name).map(|t| t.name));
            }
            false
        }
        Statement::CreateIndex(_)
        | Statement::CreateSchema { .. }
        | Statement::CreateSequence { .. }
        | Statement::CreateExtension(_)
        | Statement::CreateType { .. } => {
            out.ddl = true;
            false
        }
        Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. }
        | Statement::Set(_)
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::Comment { .. }
        | Statement::Analyze(_)
        | Statement::LISTEN { .. }
        | Statement::UNLISTEN { .. }
        | Statement::NOTIFY { .. }
        | Statement::Discard { .. }
        | Statement::Deallocate { .. }
        | Statement::Prepare { .. }
        | Statement::Declare { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. }
        | Statement::Lock(_) => false,
        // Privileges decide what the pool's role may read (a revoked read must fail as on the
        // raw pool) and whether an appended `RETURNING` is accepted.
        Statement::Grant(_) | Statement::Revoke(_) => {
            out.ddl = true;
            true
        }
        // CALL and EXECUTE: may write anywhere.
        Statement::Call(_) | Statement::Execute { .. } => true,
        // Anything not listed: may write anywhere and change the schema.
        _ => {
            out.ddl = true;
            true
        }
    }
}

pub(super) fn assigned_columns(assignments: &[ast::Assignment]) -> Vec<String> {
    let column = |name: &ObjectName| {
        name.0
            .last()
            .map(|part| match part {
                ObjectNamePart::Identifier(i) => ident(i),
                other => other.to_string().to_ascii_lowercase(),
            })
            .unwrap_or_default()
    };
    let mut columns = Vec::new();
    for assignment in assignments {
        match &assignment.target {
            AssignmentTarget::ColumnName(name) => columns.push(column(name)),
            AssignmentTarget::Tuple(names) => columns.extend(names.iter().map(column)),
        }
    }
    columns
}

pub(super) fn row_source(sql: &str, single: bool, returning: Option<&[SelectItem]>, qualifier: &str) -> RowSource {
    match returning {
        None if single => match append_offset(sql) {
            Some(at) => RowSource::Append { at, qualifier: qualifier.to_owned() },
            None => RowSource::Unknown,
        },
        None => RowSource::Unknown,
        Some(items) => {
            // Only the target's own qualifier names it: with an alias, the table's name refers
            // to another instance of it (`UPDATE t AS x .. FROM t .. RETURNING t.id`).
            let folded_qualifier = fold(qualifier);
            let is_target = |q: &ast::Ident| ident(q) == folded_qualifier;
            let norm = ident;
            let source = |expr: &Expr| match expr {
                Expr::Identifier(i) => Some(norm(i)),
                Expr::CompoundIdentifier(parts) if parts.len() == 2 && is_target(&parts[0]) => Some(norm(&parts[1])),
                _ => None,
            };
            let mut star_first = false;
            let mut out = Vec::new();
            for (index, item) in items.iter().enumerate() {
                match item {
                    SelectItem::Wildcard(_) if index == 0 => star_first = true,
                    SelectItem::QualifiedWildcard(ast::SelectItemQualifiedWildcardKind::ObjectName(name), _)
                        if index == 0
                            && matches!(name.0.as_slice(), [ObjectNamePart::Identifier(i)] if is_target(i)) =>
                    {
                        star_first = true;
                    }
                    SelectItem::UnnamedExpr(expr) => {
                        let src = source(expr);
                        let output = match expr {
                            Expr::Identifier(i) => norm(i),
                            Expr::CompoundIdentifier(parts) => parts.last().map(norm).unwrap_or_default(),
                            _ => String::new(),
                        };
                        out.push((output, src));
                    }
                    SelectItem::ExprWithAlias { expr, alias } => out.push((norm(alias), source(expr))),
                    // Anything else makes the positions of later names uncertain.
                    _ => return RowSource::Unknown,
                }
            }
            // Where more items could go, for a caller that discards the rows.
            let end = if single { append_offset(sql).map(|at| (at, qualifier.to_owned())) } else { None };
            RowSource::Returning { items: out, star_first, end }
        }
    }
}
