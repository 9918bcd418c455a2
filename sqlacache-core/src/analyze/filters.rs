//! The equality facts of a read: which columns of which tables its top-level `WHERE` (and the
//! `ON` of its inner joins) pins to constants, lists or placeholders, and which columns it
//! equates. A read whose rows all satisfy `customer_id = 7` can only change when a row with
//! `customer_id = 7` is written (before or after), so it may depend on that value alone.
//!
//! Only facts that hold of every row a table contributes are reported:
//! - conjuncts of the top-level `WHERE` (and of `ON` of an inner join), never under `OR` or
//!   `NOT`;
//! - nothing at all when the query has a `WITH`, a set operation or an outer join (under an
//!   outer join, the rows of one side change the other side's output without meeting its
//!   conditions: `LEFT JOIN .. WHERE b.id IS NULL`);
//! - a table that also occurs elsewhere in the statement (in a subquery) is not pinned by the
//!   conjuncts of its top-level occurrence: the caller, which resolves names, compares the
//!   occurrences of each table with its sources.
//!
//! The facts are syntactic: the caller keeps only those on columns whose equality the catalog
//! shows to be equality of PostgreSQL text, with operands it can put in that text.

use super::{ident, TableName};
use sqlparser::ast::{
    BinaryOperator, Expr, InTarget, JoinConstraint, JoinOperator, Query, SetExpr, TableFactor, UnaryOperator, Value,
};

/// What a column is compared with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operand {
    /// The placeholder `$n` (1-based).
    Param(usize),
    /// `= ANY($n)`: each element of the array bound to `$n`.
    ParamList(usize),
    /// A numeric literal as written (with a leading `-` for a negated one).
    Number(String),
    /// A plain single-quoted string literal (its value).
    Text(String),
    /// `IS NULL`.
    Null,
}

/// One conjunct pinning a column: the column's value is one of `values`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Constraint {
    /// The column, folded like PostgreSQL folds identifiers.
    pub column: String,
    /// What it equals (one of).
    pub values: Vec<Operand>,
}

/// A plain table of the top-level `FROM`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// The table as written.
    pub table: TableName,
    /// The conjuncts on its columns.
    pub constraints: Vec<Constraint>,
}

/// The equality facts of a read (see the module).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    /// The plain tables of the top-level `FROM`, in order.
    pub sources: Vec<Source>,
    /// Conjuncts `a.x = b.y` between two sources' columns, by source index.
    pub equalities: Vec<((usize, String), (usize, String))>,
}

/// The facts of `query`, or `None` when its shape gives none that hold of every row.
pub(super) fn filters_of(query: &Query) -> Option<Filters> {
    if query.with.is_some() {
        return None;
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let mut filters = Filters::default();
    // Qualifiers (alias, or the table's own name) by source index.
    let mut qualifiers: Vec<Option<String>> = Vec::new();
    let mut conditions: Vec<&Expr> = select.selection.iter().collect();
    let mut items = 0;
    for from in &select.from {
        let mut add = |factor: &TableFactor, filters: &mut Filters, qualifiers: &mut Vec<Option<String>>| {
            items += 1;
            if let TableFactor::Table { name, alias, args: None, .. } = factor {
                if let Some(table) = TableName::from_object(name) {
                    let qualifier = match alias {
                        Some(alias) if alias.columns.is_empty() => Some(ident(&alias.name)),
                        // Renamed columns: conjuncts name them otherwise; keep none.
                        Some(_) => None,
                        None => Some(table.name.clone()),
                    };
                    qualifiers.push(qualifier);
                    filters.sources.push(Source { table, constraints: Vec::new() });
                }
            }
        };
        add(&from.relation, &mut filters, &mut qualifiers);
        for join in &from.joins {
            match &join.join_operator {
                JoinOperator::Join(constraint) | JoinOperator::Inner(constraint) => {
                    if let JoinConstraint::On(on) = constraint {
                        conditions.push(on);
                    }
                }
                JoinOperator::CrossJoin(JoinConstraint::None) => {}
                _ => return None,
            }
            add(&join.relation, &mut filters, &mut qualifiers);
        }
    }
    let single = items == 1 && qualifiers.len() == 1 && qualifiers[0].is_some();
    let resolve = |expr: &Expr| column_of(expr, single, &qualifiers);
    let mut conjuncts = Vec::new();
    for condition in conditions {
        split_and(condition, &mut conjuncts);
    }
    for conjunct in conjuncts {
        match conjunct {
            Expr::BinaryOp { left, op: BinaryOperator::Eq, right } => match (resolve(left), resolve(right)) {
                (Some(a), Some(b)) => filters.equalities.push((a, b)),
                (Some((i, column)), None) => push(&mut filters, i, column, operand(right).into_iter().collect()),
                (None, Some((i, column))) => push(&mut filters, i, column, operand(left).into_iter().collect()),
                (None, None) => {}
            },
            Expr::In { expr, target: InTarget::List(list), negated: false, global: false } => {
                if let Some((i, column)) = resolve(expr) {
                    let values: Option<Vec<Operand>> = list.iter().map(operand).collect();
                    push(&mut filters, i, column, values.unwrap_or_default());
                }
            }
            Expr::IsNull(expr) => {
                if let Some((i, column)) = resolve(expr) {
                    push(&mut filters, i, column, vec![Operand::Null]);
                }
            }
            Expr::AnyOp { left, compare_op: BinaryOperator::Eq, right, .. } => {
                if let (Some((i, column)), Some(Operand::Param(n))) = (resolve(left), operand(right)) {
                    push(&mut filters, i, column, vec![Operand::ParamList(n)]);
                }
            }
            _ => {}
        }
    }
    Some(filters)
}

/// The source and column a column reference names: unqualified only when the `FROM` holds a
/// single item, qualified by an alias (or a table's own name) that names one source.
fn column_of(expr: &Expr, single: bool, qualifiers: &[Option<String>]) -> Option<(usize, String)> {
    match expr {
        Expr::Identifier(column) if single => Some((0, ident(column))),
        Expr::CompoundIdentifier(parts) if parts.len() == 2 => {
            let qualifier = ident(&parts[0]);
            let mut found = qualifiers.iter().enumerate().filter(|(_, q)| q.as_deref() == Some(qualifier.as_str()));
            let (index, _) = found.next()?;
            // An ambiguous qualifier is PostgreSQL's error, not a fact.
            found.next().is_none().then(|| (index, ident(&parts[1])))
        }
        Expr::Nested(inner) => column_of(inner, single, qualifiers),
        _ => None,
    }
}

/// Adds a conjunct (none when an operand was not one the caller can use).
fn push(filters: &mut Filters, source: usize, column: String, values: Vec<Operand>) {
    if !values.is_empty() {
        filters.sources[source].constraints.push(Constraint { column, values });
    }
}

/// The conjuncts of `expr` (through `AND` and parentheses).
fn split_and<'a>(expr: &'a Expr, out: &mut Vec<&'a Expr>) {
    match expr {
        Expr::BinaryOp { left, op: BinaryOperator::And, right } => {
            split_and(left, out);
            split_and(right, out);
        }
        Expr::Nested(inner) => split_and(inner, out),
        _ => out.push(expr),
    }
}

/// An operand the caller can read: a placeholder, a number, or a plain string.
fn operand(expr: &Expr) -> Option<Operand> {
    match expr {
        Expr::Nested(inner) => operand(inner),
        Expr::UnaryOp { op: UnaryOperator::Minus, expr } => match operand(expr)? {
            Operand::Number(n) if !n.starts_with('-') => Some(Operand::Number(format!("-{n}"))),
            _ => None,
        },
        Expr::Value(value) => match &value.value {
            Value::Placeholder(p) => p.strip_prefix('$')?.parse().ok().filter(|&n| n > 0).map(Operand::Param),
            Value::Number(n, false) => Some(Operand::Number(n.to_string())),
            // A backslash means something else with `standard_conforming_strings = off`.
            Value::SingleQuotedString(s) if !s.contains('\\') => Some(Operand::Text(s.clone())),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::analyze;

    fn filters(sql: &str) -> Option<Filters> {
        analyze(sql).read.expect("a read").filters
    }

    fn pins(sql: &str) -> Vec<(String, String, Vec<Operand>)> {
        let f = filters(sql).expect("facts");
        f.sources
            .iter()
            .flat_map(|s| s.constraints.iter().map(|c| (s.table.name.clone(), c.column.clone(), c.values.clone())))
            .collect()
    }

    #[test]
    fn conjuncts_pin_columns() {
        use Operand::*;
        assert_eq!(
            pins("SELECT * FROM orders WHERE customer_id = $1 AND (status = 'open') AND 7 = shop"),
            vec![
                ("orders".into(), "customer_id".into(), vec![Param(1)]),
                ("orders".into(), "status".into(), vec![Text("open".into())]),
                ("orders".into(), "shop".into(), vec![Number("7".into())]),
            ]
        );
        assert_eq!(
            pins("SELECT count(*) FROM orders o WHERE o.id IN (1, -2, $3) AND o.note IS NULL AND o.x = ANY($2)"),
            vec![
                ("orders".into(), "id".into(), vec![Number("1".into()), Number("-2".into()), Param(3)]),
                ("orders".into(), "note".into(), vec![Null]),
                ("orders".into(), "x".into(), vec![ParamList(2)]),
            ]
        );
    }

    #[test]
    fn what_is_not_a_fact_of_every_row_is_left_out() {
        for sql in [
            "SELECT * FROM orders WHERE customer_id = 7 OR status = 'open'",
            "SELECT * FROM orders WHERE NOT (customer_id = 7)",
            "SELECT * FROM orders WHERE customer_id NOT IN (7)",
            "SELECT * FROM orders WHERE customer_id = 7::int8",
            "SELECT * FROM orders WHERE customer_id = '7' COLLATE \"C\"",
            "SELECT * FROM orders WHERE status = E'a\\\\b'",
            "SELECT * FROM orders WHERE status = 'a\\b'",
            "SELECT * FROM orders WHERE customer_id > 7",
            "SELECT * FROM orders WHERE customer_id = 7.5e0 + 1",
            // Unqualified with two tables: which table is the catalog's business.
            "SELECT * FROM orders, customers WHERE customer_id = 7",
            // Renamed columns.
            "SELECT * FROM orders AS o(a, b) WHERE a = 7",
        ] {
            assert_eq!(pins(sql), vec![], "{sql}");
        }
        for sql in [
            "WITH x AS (SELECT 1) SELECT * FROM orders WHERE customer_id = 7",
            "SELECT * FROM orders WHERE customer_id = 7 UNION SELECT * FROM orders WHERE customer_id = 8",
            "SELECT * FROM orders o LEFT JOIN items i ON i.order_id = o.id WHERE i.id IS NULL",
            "SELECT * FROM orders o FULL JOIN items i ON i.order_id = o.id WHERE o.customer_id = 7",
        ] {
            assert_eq!(filters(sql), None, "{sql}");
        }
    }

    #[test]
    fn joins_give_equalities() {
        let f = filters(
            "SELECT * FROM orders o JOIN items i ON i.order_id = o.id, products p \
             WHERE o.customer_id = 7 AND p.id = i.product_id \
               AND EXISTS (SELECT 1 FROM products q WHERE q.id = i.product_id)",
        )
        .expect("facts");
        assert_eq!(f.sources.len(), 3);
        assert_eq!(
            f.equalities,
            vec![((2, "id".into()), (1, "product_id".into())), ((1, "order_id".into()), (0, "id".into()))]
        );
        // A self-join: two sources of one table.
        let f = filters("SELECT * FROM t a JOIN t b ON a.parent = b.id WHERE a.id = 1").expect("facts");
        assert_eq!(f.sources.len(), 2);
    }
}
