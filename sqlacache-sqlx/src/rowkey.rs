//! Row identities: of a model's row by its key, and of a written row from its output columns.

use crate::cacheable::Cacheable;
use crate::plan::RowColumns;
use sqlacache_core::key::{row_id, row_id_of};
use sqlacache_core::Tag;
use sqlx::postgres::{PgRow, PgTypeInfo, PgValueFormat};
use sqlx::{Row, TypeInfo, ValueRef};

/// The row identity of `T`'s row with `key`, given the table a plan reads and its primary-key
/// columns; `None` when `T`'s key is not that primary key or has no exact text form, so any
/// write to the table may be a write to this row.
pub(crate) fn row_of<T: Cacheable>((oid, columns): &(u32, Option<Vec<String>>), key: &T::Key) -> Option<u128> {
    let same_key =
        columns.as_ref().is_some_and(|c| c.iter().map(String::as_str).eq(T::MODEL.primary_key.iter().copied()));
    same_key.then(|| row_id_of(*oid, key)).flatten()
}

/// The key of a written row from the output columns that hold it.
pub(crate) fn row_key(row: &PgRow, table: u32, columns: &RowColumns) -> Option<Tag> {
    let mut parts = Vec::with_capacity(2);
    match columns {
        RowColumns::Indexed(indexes) => {
            for &i in indexes {
                parts.push(value_text(row, i)?);
            }
        }
        RowColumns::Named(names) => {
            for name in names {
                let i = row.columns().iter().position(|c| sqlx::Column::name(c) == name)?;
                parts.push(value_text(row, i)?);
            }
        }
    }
    Some(Tag::Row(row_id(table, &parts)))
}

/// The PostgreSQL text form of a key value, for the types whose text the key hashing trusts.
fn value_text(row: &PgRow, index: usize) -> Option<String> {
    let value = row.try_get_raw(index).ok()?;
    if value.is_null() {
        return None;
    }
    let type_info: PgTypeInfo = value.type_info().into_owned();
    let name = type_info.name();
    match value.format() {
        PgValueFormat::Text => {
            let text = value.as_str().ok()?;
            Some(match (name, text) {
                ("BOOL", "t") => "true".to_owned(),
                ("BOOL", "f") => "false".to_owned(),
                _ => text.to_owned(),
            })
        }
        PgValueFormat::Binary => {
            let bytes = value.as_bytes().ok()?;
            Some(match name {
                "INT2" => i16::from_be_bytes(bytes.try_into().ok()?).to_string(),
                "INT4" => i32::from_be_bytes(bytes.try_into().ok()?).to_string(),
                "INT8" => i64::from_be_bytes(bytes.try_into().ok()?).to_string(),
                "TEXT" | "VARCHAR" => std::str::from_utf8(bytes).ok()?.to_owned(),
                "BOOL" => (bytes.first()? != &0).to_string(),
                "UUID" => {
                    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                    if hex.len() != 32 {
                        return None;
                    }
                    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
                }
                _ => return None,
            })
        }
    }
}
