//! The messages of the change feed (see the parent module for their grammar), and the tags a
//! change invalidates.

use crate::catalog::{Actions, Catalog};
use sqlacache_core::key::{column_id, row_id, value_id};
use sqlacache_core::Tag;

/// What a message asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// Rows of a table, by the text of their keys; with the text of the `columns` of each
    /// (`None`: NULL), in `values`, row by row (an update names old and new rows).
    Rows { table: u32, op: char, keys: Vec<Vec<String>>, columns: Vec<String>, values: Vec<Vec<Option<String>>> },
    /// A table as a whole.
    Table { table: u32, op: char },
    /// The schema, where these parts say.
    Schema(Vec<Ddl>),
    /// A heartbeat; `asks` when its pool asks the others to vouch for it.
    Heartbeat { publisher: u64, sent: u64, asks: Option<Ask> },
    /// Rows or a table written by a statement straight from the write path of the pool `by`
    /// (which invalidated them itself once the write committed).
    Written { by: u64, change: Box<Change> },
}

/// A heartbeat's request: a pool whose listener lost its connection asks any other whose
/// listener heard every change before this heartbeat, and applied it to the shared tier, to
/// say so (on the bus, to `member`), so that the shared tier need not be emptied.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(crate) struct Ask {
    /// The asking pool on the bus.
    pub member: u64,
    /// What decides which invalidations a message makes for the asking pool (see
    /// `Schema::fingerprint`): only a pool that would make the same may vouch.
    pub fingerprint: u64,
}

/// What a schema change touched.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ddl {
    /// Something in a schema (or the schema itself).
    Schema(String),
    /// A function, by schema and name.
    Function(String, String),
    /// Anything else.
    Any,
}

impl Ddl {
    fn parse(word: &str) -> Option<Ddl> {
        if word == "*" {
            return Some(Ddl::Any);
        }
        if let Some(schema) = word.strip_prefix('s') {
            return Some(Ddl::Schema(unhex(schema)?));
        }
        let (schema, name) = word.strip_prefix('f')?.split_once('.')?;
        Some(Ddl::Function(unhex(schema)?, unhex(name)?))
    }

    /// Whether a pool that caches reads of tables in the `cached` schemas must take this
    /// change into account.
    pub fn matters(&self, catalog: &Catalog, cached: &[String]) -> bool {
        match self {
            Ddl::Any => true,
            Ddl::Schema(schema) => catalog.searched(schema) || cached.contains(schema),
            Ddl::Function(schema, name) => catalog.searched(schema) || catalog.calls(schema, name),
        }
    }
}

/// Text from the hex of its UTF-8 bytes.
fn unhex(hex: &str) -> Option<String> {
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// Reads a message; `None` if it is not one of the feed's.
pub(crate) fn parse(payload: &str) -> Option<Change> {
    if let Some(rest) = payload.strip_prefix("w ") {
        let (by, rest) = rest.split_once(' ')?;
        let by = u64::from_str_radix(by, 16).ok()?;
        let change = parse(rest)?;
        return matches!(change, Change::Rows { .. } | Change::Table { .. })
            .then(|| Change::Written { by, change: Box::new(change) });
    }
    let mut words = payload.split(' ');
    let kind = words.next()?;
    let change = match kind {
        "d" => {
            let parts = words.map(Ddl::parse).collect::<Option<Vec<_>>>()?;
            return (!parts.is_empty()).then_some(Change::Schema(parts));
        }
        "h" | "v" => {
            let (publisher, sent) = (words.next()?.parse().ok()?, words.next()?.parse().ok()?);
            let asks = if kind == "v" {
                let mut hex = || u64::from_str_radix(words.next()?, 16).ok();
                Some(Ask { member: hex()?, fingerprint: hex()? })
            } else {
                None
            };
            Change::Heartbeat { publisher, sent, asks }
        }
        "t" | "r" => {
            let table = words.next()?.parse().ok()?;
            let op = single(words.next()?)?;
            if kind == "t" {
                Change::Table { table, op }
            } else {
                let mut words = words.peekable();
                // `c<name hex>,..`: the columns whose values follow each key.
                let columns = match words.peek().and_then(|w| w.strip_prefix('c')) {
                    Some(list) => {
                        let columns = list.split(',').map(unhex).collect::<Option<Vec<_>>>()?;
                        words.next();
                        columns
                    }
                    None => Vec::new(),
                };
                let mut keys = Vec::new();
                let mut values = Vec::new();
                for word in words {
                    let mut parts = word.split(';');
                    keys.push(key(parts.next()?)?);
                    let row = parts.map(value).collect::<Option<Vec<_>>>()?;
                    if row.len() != columns.len() {
                        return None;
                    }
                    values.push(row);
                }
                if keys.is_empty() {
                    return None;
                }
                return Some(Change::Rows { table, op, keys, columns, values });
            }
        }
        _ => return None,
    };
    words.next().is_none().then_some(change)
}

fn single(word: &str) -> Option<char> {
    let mut chars = word.chars();
    let c = chars.next()?;
    chars.next().is_none().then_some(c)
}

/// One value of a message: `_` for NULL, else as a key part.
fn value(word: &str) -> Option<Option<String>> {
    match word {
        "_" => Some(None),
        _ => Some(Some(key(word)?.pop()?)).filter(|_| !word.contains(',')),
    }
}

/// One key of a message: its columns' text.
fn key(word: &str) -> Option<Vec<String>> {
    word.split(',')
        .map(|part| match part.strip_prefix('x') {
            Some(hex) => unhex(hex),
            None => {
                let digits = part.strip_prefix('-').unwrap_or(part);
                (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| part.to_owned())
            }
        })
        .collect()
}

/// The tags a change invalidates: the table, its family and what cascades from it, as a write
/// through the pool would (a cascade also fires the triggers of the tables it reaches, when they
/// are fed).
pub(crate) fn tags(catalog: &Catalog, change: &Change) -> Vec<Tag> {
    let (table, op, rows) = match change {
        Change::Rows { table, op, keys, columns, values } => (*table, *op, Some((keys, columns, values))),
        Change::Table { table, op } => (*table, *op, None),
        Change::Schema(_) => return vec![Tag::All],
        Change::Heartbeat { .. } => return Vec::new(),
        Change::Written { change, .. } => return tags(catalog, change),
    };
    // A table created after the catalog was read has no family or actions it knows: no
    // cached read depends on it (one that joins a known family was reported as a schema change).
    let actions = match op {
        'u' => Actions::Update,
        'd' => Actions::Delete,
        't' => Actions::Truncate,
        _ => Actions::None,
    };
    let mut tags = catalog.write_tags(table, actions);
    match rows {
        Some((keys, columns, values)) => {
            tags.extend(keys.iter().map(|k| Tag::Row(row_id(table, k))));
            // The values of the tracked columns the message names (old and new rows); every
            // read pinned to a tracked column it does not name (a trigger installed before the
            // column was tracked).
            for (column, _) in catalog.tables.get(&table).map(|t| t.tracked.as_slice()).unwrap_or_default() {
                match columns.iter().position(|c| c == column) {
                    Some(i) => {
                        tags.extend(values.iter().map(|row| Tag::Row(value_id(table, column, row[i].as_deref()))))
                    }
                    None => tags.push(Tag::Row(column_id(table, column))),
                }
            }
        }
        None => tags.push(Tag::Rows(table)),
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_back() {
        assert_eq!(
            parse("d * s6170 f7075626c6963.6c6f776572"),
            Some(Change::Schema(vec![
                Ddl::Any,
                Ddl::Schema("ap".into()),
                Ddl::Function("public".into(), "lower".into())
            ]))
        );
        assert_eq!(parse("h 7 99"), Some(Change::Heartbeat { publisher: 7, sent: 99, asks: None }));
        assert_eq!(
            parse("v 7 99 ff 1a"),
            Some(Change::Heartbeat { publisher: 7, sent: 99, asks: Some(Ask { member: 255, fingerprint: 26 }) })
        );
        assert_eq!(parse("t 16384 t"), Some(Change::Table { table: 16384, op: 't' }));
        assert_eq!(
            parse("w ff r 5 u 1"),
            Some(Change::Written {
                by: 255,
                change: Box::new(Change::Rows {
                    table: 5,
                    op: 'u',
                    keys: vec![vec!["1".into()]],
                    columns: vec![],
                    values: vec![vec![]]
                })
            })
        );
        assert_eq!(
            parse("r 16384 u 1 -2 x616263,7"),
            Some(Change::Rows {
                table: 16384,
                op: 'u',
                keys: vec![vec!["1".into()], vec!["-2".into()], vec!["abc".into(), "7".into()]],
                columns: vec![],
                values: vec![vec![], vec![], vec![]]
            })
        );
        assert_eq!(
            parse("r 1 i x"),
            Some(Change::Rows {
                table: 1,
                op: 'i',
                keys: vec![vec![String::new()]],
                columns: vec![],
                values: vec![vec![]]
            })
        );
        // With the values of two tracked columns (`customer_id`, `status`), NULL as `_`.
        assert_eq!(
            parse("r 1 u c637573746f6d65725f6964,737461747573 1;7;x6f70656e 1;-8;_"),
            Some(Change::Rows {
                table: 1,
                op: 'u',
                keys: vec![vec!["1".into()], vec!["1".into()]],
                columns: vec!["customer_id".into(), "status".into()],
                values: vec![vec![Some("7".into()), Some("open".into())], vec![Some("-8".into()), None]]
            })
        );
        for bad in [
            "",
            "q",
            "d",
            "d 1",
            "d s6",
            "d f70",
            "h 1",
            "h 1 2 3",
            "w ff",
            "w ff h 1 2",
            "w zz r 5 u 1",
            "w ff w ff r 5 u 1",
            "r 1 u c6964 1",
            "r 1 u c6964 1;2;3",
            "r 1 u c6964 1;2,3",
            "r 1 u czz 1;2",
            "v 1 2",
            "v 1 2 ff",
            "v 1 2 ff 1 0",
            "v 1 2 zz 1",
            "t x i",
            "t 1 io",
            "r 1 i",
            "r 1 i 1a",
            "r 1 i xzz",
            "r 1 i x6",
            "r 1 i -",
            "t 1 i 2",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
