//! Whether a single query may be cached as a read, and as which operation.

use super::scan::Scan;
use super::{Read, ReadOp, TableName, Uncached};
use sqlparser::ast::{self, Expr, Query, SelectItem, SetExpr};

pub(super) fn read_of(query: &Query, scan: &Scan) -> Result<Read, Uncached> {
    if !scan.nested_writes.is_empty() || scan.select_into || scan.session {
        return Err(Uncached::NotARead);
    }
    if scan.locks {
        return Err(Uncached::Locking);
    }
    if scan.clock {
        return Err(Uncached::Clock);
    }
    if scan.sample {
        return Err(Uncached::Sample);
    }
    if scan.volatile {
        return Err(Uncached::Volatile);
    }
    if scan.unreadable_relation {
        return Err(Uncached::Unparsable);
    }
    let tables: Vec<TableName> = scan.relations.clone();
    if tables.is_empty() {
        return Err(Uncached::NotARead);
    }
    let op = match query.body.as_ref() {
        SetExpr::Select(select) if select.projection.len() == 1 => {
            let expr = match &select.projection[0] {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => Some(e),
                _ => None,
            };
            let grouped = !matches!(&select.group_by, ast::GroupByExpr::Expressions(e, _) if e.is_empty());
            match expr {
                Some(Expr::Function(f)) if !grouped && f.name.to_string().eq_ignore_ascii_case("count") => {
                    ReadOp::Count
                }
                Some(Expr::Exists { .. }) => ReadOp::Exists,
                _ => ReadOp::Fetch,
            }
        }
        _ => ReadOp::Fetch,
    };
    Ok(Read { op, tables, ctes: scan.ctes.clone(), filters: super::filters::filters_of(query) })
}
