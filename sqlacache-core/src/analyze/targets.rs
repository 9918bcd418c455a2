//! The tables a write statement targets, by name, as the SQL spells them.

use super::TableName;
use sqlparser::ast::{self, FromTable, Statement, TableFactor, TableObject};

/// The tables `statement` writes to directly (none if it is not a write).
pub(super) fn write_targets(statement: &Statement) -> Vec<TableName> {
    match statement {
        Statement::Insert(insert) => match &insert.table {
            TableObject::TableName(name) => TableName::from_object(name).into_iter().collect(),
            _ => Vec::new(),
        },
        Statement::Update(update) => factor_name(&update.table.relation).into_iter().collect(),
        Statement::Delete(delete) => delete_targets(delete),
        Statement::Merge(merge) => factor_name(&merge.table).into_iter().collect(),
        _ => Vec::new(),
    }
}

/// The table a `FROM` item names, if it is a plain table.
pub(super) fn factor_name(factor: &TableFactor) -> Option<TableName> {
    match factor {
        TableFactor::Table { name, .. } => TableName::from_object(name),
        _ => None,
    }
}

/// The name a `FROM` item's columns are qualified with: its alias, or its table's name.
pub(super) fn factor_qualifier(factor: &TableFactor) -> Option<String> {
    match factor {
        TableFactor::Table { name, alias, .. } => match alias {
            Some(alias) => Some(alias.name.to_string()),
            None => name.0.last().map(|part| part.to_string()),
        },
        _ => None,
    }
}

/// The tables a `DELETE` deletes from.
pub(super) fn delete_targets(delete: &ast::Delete) -> Vec<TableName> {
    let from = match &delete.from {
        FromTable::WithFromKeyword(tables) | FromTable::WithoutKeyword(tables) => tables,
    };
    from.iter()
        .filter_map(|t| factor_name(&t.relation))
        .chain(delete.tables.iter().filter_map(TableName::from_object))
        .collect()
}
