//! Row identities: of a model's row by its key, and of a written row from its output columns.

use crate::cacheable::Cacheable;
use crate::plan::{At, RowsPlan};
use sqlacache_core::key::{row_id, row_id_of, value_id};
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

/// The tags of a written row, from the output columns that hold its key and the values of
/// its tracked columns (see [`crate::predicate`]); `None` when one cannot be read.
pub(crate) fn row_tags(row: &PgRow, plan: &RowsPlan, out: &mut Vec<Tag>) -> Option<()> {
    let index = |at: &At| match at {
        At::Index(i) => Some(*i),
        At::Name(name) => row.columns().iter().position(|c| sqlx::Column::name(c) == name),
    };
    let mut parts = Vec::with_capacity(plan.columns.len());
    for at in &plan.columns {
        parts.push(value_text(row, index(at)?)?);
    }
    out.push(Tag::Row(row_id(plan.table, &parts)));
    for (column, at) in &plan.values {
        let i = index(at)?;
        let text = match row.try_get_raw(i).ok()?.is_null() {
            true => None,
            false => Some(value_text(row, i)?),
        };
        out.push(Tag::Row(value_id(plan.table, column, text.as_deref())));
    }
    Some(())
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
