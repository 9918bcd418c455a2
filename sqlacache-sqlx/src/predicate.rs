//! Predicate tags: a read whose rows all have `column = value` depends on that value of that
//! column instead of on its whole table, and a write invalidates the values its rows had and
//! have.
//!
//! The rule, and why it is sound:
//! - A column is *tracked* when it leads a btree index and its type's equality is equality of
//!   its PostgreSQL text (`smallint`, `integer`, `bigint`, `uuid`; `text` and `varchar` under a
//!   deterministic collation), at most `catalog::MAX_TRACKED` per table in column order (see
//!   `catalog::TRACKED`). Every pool reads it from the same catalog, so a write in one process
//!   names every value a read in another may depend on.
//! - A read depends on one tracked column's values per table when every row it takes from the
//!   table satisfies a conjunct `column = v`, `column IN (..)`, `column = ANY($n)` or
//!   `column IS NULL` of its top-level `WHERE` (or, through inner-join equalities between
//!   tracked columns, of another table's column): then only a row that had or has one of those
//!   values can change its result. It also depends on the column as a whole
//!   ([`column_id`]) and on `Rows(table)`; every other table it reads, by `Table`.
//! - A write whose rows are learned (its `RETURNING`, appended or its own) invalidates, for each
//!   row and tracked column, the value the row has after it ([`value_id`]): for an `INSERT` the
//!   new value, for a `DELETE` the old one, and for an `UPDATE` both, since a column it does not
//!   set keeps its value. A column it sets (or, with a `BEFORE UPDATE` row trigger, any column)
//!   had an old value the write does not return: the column as a whole is invalidated; so is a
//!   column missing from a `RETURNING` of the caller's own that the caller fetches (run with
//!   `execute`, the missing columns are added to it, see `plan::WriteTags::discarding`), and a
//!   column the pool's role may not read. A write whose rows are not learned invalidates
//!   `Rows(table)`, as it always did. Whatever else names rows without their values (the change
//!   feed of an older trigger, `invalidate_rows`) invalidates the columns as a whole.
//! - Operands are put in PostgreSQL's text only where that text is certain: integers written
//!   in plain digits, plain string literals, `uuid` in its canonical form, and arguments of
//!   Rust's integer, string and `Uuid` types (and options and vectors of them). Anything else
//!   makes the read depend on its whole table.

use crate::catalog::{Catalog, TableInfo, ValueKind};
use serde::ser::{self, Serialize};
use sqlacache_core::analyze::{Filters, Operand, TableName};
use sqlacache_core::key::{column_id, value_id, Unsupported};
use sqlacache_core::Tag;
use std::borrow::Cow;

/// How literals and arguments compared with a tracked column are put in PostgreSQL's text.
impl ValueKind {
    /// The text of a literal compared with a column of this kind (`None` inside: NULL), or
    /// `None` when it is not certain.
    fn literal(self, operand: &Operand) -> Option<Option<String>> {
        match (self, operand) {
            (_, Operand::Null) => Some(None),
            // A number, or an untyped string read as one.
            (ValueKind::Int, Operand::Number(text) | Operand::Text(text)) => integer(text).map(Some),
            (ValueKind::Text, Operand::Text(text)) => Some(Some(text.clone())),
            (ValueKind::Uuid, Operand::Text(text)) => canonical_uuid(text).then(|| Some(text.clone())),
            _ => None,
        }
    }

    /// The texts of an argument compared with a column of this kind.
    fn argument(self, arg: &ArgValue, list: bool) -> Option<Vec<Option<String>>> {
        match (arg, list) {
            (ArgValue::List(items), true) => items.iter().map(|item| self.argument(item, false)?.pop()).collect(),
            (ArgValue::Null, false) => Some(vec![None]),
            (ArgValue::Int(i), false) if self == ValueKind::Int => Some(vec![Some(i.to_string())]),
            (ArgValue::Text(s), false) if self == ValueKind::Text => Some(vec![Some(s.clone())]),
            (ArgValue::Uuid(s), false) if self == ValueKind::Uuid && canonical_uuid(s) => Some(vec![Some(s.clone())]),
            _ => None,
        }
    }
}

/// An integer in plain digits (PostgreSQL reads `007` as 7), in its canonical text.
fn integer(text: &str) -> Option<String> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<i64>().ok().map(|i| i.to_string())
}

/// Whether `text` is a `uuid` as PostgreSQL prints one: lower-case hex in groups 8-4-4-4-12.
fn canonical_uuid(text: &str) -> bool {
    text.len() == 36
        && text.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        })
}

/// A read's dependency on the values of one tracked column of one table.
#[derive(Clone, Debug)]
pub(crate) struct Narrowed {
    pub table: u32,
    pub column: String,
    kind: ValueKind,
    /// The values known from the text; `$n` operands are read from the arguments.
    params: Vec<(usize, bool)>,
}

/// What a planned read depends on: tags known from its text, and the narrowed columns whose
/// values come from its arguments.
#[derive(Clone, Debug, Default)]
pub(crate) struct ReadDeps {
    pub fixed: Box<[Tag]>,
    pub narrowed: Vec<Narrowed>,
    /// What it depends on, in words, for [`CachedPool::explain`](crate::CachedPool::explain).
    pub described: Vec<String>,
}

impl ReadDeps {
    /// The tags of a read with these arguments: borrowed when none come from them.
    pub fn tags(&self, args: &[ArgValue]) -> Cow<'_, [Tag]> {
        if self.narrowed.iter().all(|n| n.params.is_empty()) {
            return Cow::Borrowed(&self.fixed);
        }
        let mut tags = self.fixed.to_vec();
        for narrowed in &self.narrowed {
            for &(n, list) in &narrowed.params {
                let texts = args.get(n - 1).and_then(|arg| narrowed.kind.argument(arg, list));
                match texts {
                    Some(texts) => tags.extend(
                        texts.iter().map(|t| Tag::Row(value_id(narrowed.table, &narrowed.column, t.as_deref()))),
                    ),
                    // Not an argument whose text is certain: any write to the table.
                    None => tags.push(Tag::Table(narrowed.table)),
                }
            }
        }
        Cow::Owned(tags)
    }
}

/// The dependencies of a read of `tables` (resolved, one per distinct table), which names
/// `names` (every occurrence, subqueries included), given its equality facts: per table, one
/// tracked column's values when every occurrence of the table is a pinned source, else the
/// whole table.
pub(crate) fn read_deps(
    tables: &[&TableInfo],
    names: &[TableName],
    filters: Option<&Filters>,
    catalog: &Catalog,
) -> ReadDeps {
    let mut fixed = Vec::new();
    let mut narrowed = Vec::new();
    let mut described = Vec::new();
    let pins = filters.map(|f| pins(f, catalog)).unwrap_or_default();
    for table in tables {
        let occurrences = names.iter().filter(|n| catalog.resolve(n).is_some_and(|t| t.oid == table.oid)).count();
        let sources: Vec<&Option<Pin>> =
            pins.iter().filter(|(oid, _)| *oid == Some(table.oid)).map(|(_, pin)| pin).collect();
        if sources.is_empty() || sources.len() != occurrences || sources.iter().any(|p| p.is_none()) {
            fixed.push(Tag::Table(table.oid));
            described.push(whole_table(table));
            continue;
        }
        fixed.push(Tag::Rows(table.oid));
        for (column, kind, values) in sources.into_iter().flatten() {
            let whole = Tag::Row(column_id(table.oid, column));
            if !fixed.contains(&whole) {
                fixed.push(whole);
            }
            let mut params = Vec::new();
            let mut words = Vec::new();
            for value in values {
                match value {
                    Operand::Param(n) => {
                        params.push((*n, false));
                        words.push(format!("${n}"));
                    }
                    Operand::ParamList(n) => {
                        params.push((*n, true));
                        words.push(format!("any of ${n}"));
                    }
                    literal => match kind.literal(literal) {
                        Some(text) => {
                            fixed.push(Tag::Row(value_id(table.oid, column, text.as_deref())));
                            words.push(match text {
                                None => "NULL".to_owned(),
                                Some(t) if *kind == ValueKind::Int => t,
                                Some(t) => format!("'{}'", t.replace('\'', "''")),
                            });
                        }
                        None => {
                            fixed.push(Tag::Table(table.oid));
                            described.push(whole_table(table));
                        }
                    },
                }
            }
            described.push(format!(
                "{}.{} in ({}): a write of a row with one of these values, before or after",
                table.qualified(),
                crate::catalog::quote_ident(column),
                words.join(", ")
            ));
            if !params.is_empty() {
                narrowed.push(Narrowed { table: table.oid, column: column.clone(), kind: *kind, params });
            }
        }
    }
    ReadDeps { fixed: fixed.into(), narrowed, described }
}

/// A dependency on every write to `table`, in words.
pub(crate) fn whole_table(table: &TableInfo) -> String {
    format!("{}: any write", table.qualified())
}

/// The tracked column a source is pinned by, its kind, and the values it is pinned to.
type Pin = (String, ValueKind, Vec<Operand>);

/// Tracked columns known equal to one another, with the operand lists that pin them.
struct Class {
    members: Vec<(usize, String)>,
    kind: ValueKind,
    sets: Vec<Vec<Operand>>,
}

/// For each source of the facts, its table's oid and the tracked column it is pinned by, if
/// any: its own conjuncts first, then those it gets through equalities of tracked columns of
/// one kind. Of several, the one with the fewest values.
fn pins(filters: &Filters, catalog: &Catalog) -> Vec<(Option<u32>, Option<Pin>)> {
    let infos: Vec<Option<&TableInfo>> = filters.sources.iter().map(|s| catalog.resolve(&s.table)).collect();
    let tracked = |source: usize, column: &str| -> Option<ValueKind> {
        infos[source]?.tracked.iter().find(|(name, _)| name == column).map(|(_, kind)| *kind)
    };
    let mut classes: Vec<Class> = Vec::new();
    for (i, source) in filters.sources.iter().enumerate() {
        for constraint in &source.constraints {
            if let Some(kind) = tracked(i, &constraint.column) {
                let members = vec![(i, constraint.column.clone())];
                classes.push(Class { members, kind, sets: vec![constraint.values.clone()] });
            }
        }
    }
    // Join equalities merge classes of one kind (a class without operands is made on the way).
    for ((a, x), (b, y)) in &filters.equalities {
        let (Some(kind), Some(other)) = (tracked(*a, x), tracked(*b, y)) else { continue };
        if kind != other {
            continue;
        }
        let mut find = |member: (usize, String)| match classes.iter().position(|c| c.members.contains(&member)) {
            Some(i) => i,
            None => {
                classes.push(Class { members: vec![member], kind, sets: Vec::new() });
                classes.len() - 1
            }
        };
        let (i, j) = (find((*a, x.clone())), find((*b, y.clone())));
        if i != j {
            let merged = classes.remove(i.max(j));
            let into = &mut classes[i.min(j)];
            into.members.extend(merged.members);
            into.sets.extend(merged.sets);
        }
    }
    (0..filters.sources.len())
        .map(|i| {
            let best = classes
                .iter()
                .flat_map(|c| c.members.iter().filter(|(s, _)| *s == i).map(move |(_, column)| (column, c)))
                .flat_map(|(column, c)| c.sets.iter().map(move |values| (column.clone(), c.kind, values.clone())))
                .min_by_key(|(_, _, values)| values.len());
            (infos[i].map(|t| t.oid), best)
        })
        .collect()
}

/// Whether a write reports the old value of a tracked column in its rows: not when it may
/// change the column without returning the old value (an update that sets it, or any update
/// under a `BEFORE UPDATE` row trigger), nor when the pool's role may not read it back. Such a
/// column is invalidated as a whole.
pub(crate) fn reported(info: &TableInfo, column: &str, updates: bool, assigned: &[String]) -> bool {
    let changed_unseen = updates && (info.before_update || assigned.iter().any(|a| a == column));
    !changed_unseen && !info.unreadable.iter().any(|c| c == column)
}

/// Every tracked column of a table as a whole: what a change to rows whose values are not
/// known invalidates besides their row tags.
pub(crate) fn all_columns(info: &TableInfo) -> impl Iterator<Item = Tag> + '_ {
    info.tracked.iter().map(|(column, _)| Tag::Row(column_id(info.oid, column)))
}

/// A bound argument, as far as predicate tags can use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ArgValue {
    Int(i64),
    Text(String),
    Uuid(String),
    Null,
    List(Vec<ArgValue>),
    /// Of a type whose PostgreSQL text is not certain.
    Unknown,
}

/// What an argument of Rust type `V` says of its PostgreSQL value: only for the types whose
/// serde form is their PostgreSQL text (by the type's name, not by what its `Serialize` says,
/// so a newtype that serializes otherwise than it encodes is never trusted).
pub(crate) fn capture<V: Serialize + ?Sized>(value: &V) -> ArgValue {
    let mut name = std::any::type_name::<V>();
    while let Some(rest) = name.strip_prefix('&') {
        name = rest.trim_start_matches("mut ");
    }
    let Some(shape) = Shape::of(name) else { return ArgValue::Unknown };
    value.serialize(Capture { shape }).unwrap_or(ArgValue::Unknown)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scalar {
    Int,
    Text,
    Uuid,
}

#[derive(Clone, Copy)]
struct Shape {
    scalar: Scalar,
    option: bool,
    list: bool,
}

impl Shape {
    fn of(name: &str) -> Option<Shape> {
        let scalar = |name: &str| match name.trim_start_matches('&') {
            "i16" | "i32" | "i64" => Some(Scalar::Int),
            "str" | "alloc::string::String" => Some(Scalar::Text),
            "uuid::Uuid" => Some(Scalar::Uuid),
            _ => None,
        };
        let inner = |wrapper: &str| name.strip_prefix(wrapper)?.strip_suffix('>');
        if let Some(s) = scalar(name) {
            return Some(Shape { scalar: s, option: false, list: false });
        }
        if let Some(item) = inner("core::option::Option<") {
            return Some(Shape { scalar: scalar(item)?, option: true, list: false });
        }
        let item = inner("alloc::vec::Vec<").or_else(|| name.strip_prefix('[')?.strip_suffix(']'))?;
        Some(Shape { scalar: scalar(item)?, option: false, list: true })
    }
}

/// Reads one value of a known [`Shape`] through its `Serialize`.
struct Capture {
    shape: Shape,
}

impl Capture {
    fn scalar(&self) -> Capture {
        Capture { shape: Shape { option: false, list: false, ..self.shape } }
    }

    fn int(self, v: i64) -> Result<ArgValue, Unsupported> {
        match self.shape {
            Shape { scalar: Scalar::Int, list: false, .. } => Ok(ArgValue::Int(v)),
            _ => Err(Unsupported),
        }
    }
}

/// A sequence being captured.
struct Items {
    item: Capture,
    items: Vec<ArgValue>,
}

impl ser::SerializeSeq for Items {
    type Ok = ArgValue;
    type Error = Unsupported;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        self.items.push(value.serialize(self.item.scalar())?);
        Ok(())
    }
    fn end(self) -> Result<ArgValue, Unsupported> {
        Ok(ArgValue::List(self.items))
    }
}

macro_rules! refuse {
    ($($method:ident($($arg:ty),*)),*) => {$(
        fn $method(self, $(_: $arg),*) -> Result<ArgValue, Unsupported> {
            Err(Unsupported)
        }
    )*};
}

impl ser::Serializer for Capture {
    type Ok = ArgValue;
    type Error = Unsupported;
    type SerializeSeq = Items;
    type SerializeTuple = ser::Impossible<ArgValue, Unsupported>;
    type SerializeTupleStruct = ser::Impossible<ArgValue, Unsupported>;
    type SerializeTupleVariant = ser::Impossible<ArgValue, Unsupported>;
    type SerializeMap = ser::Impossible<ArgValue, Unsupported>;
    type SerializeStruct = ser::Impossible<ArgValue, Unsupported>;
    type SerializeStructVariant = ser::Impossible<ArgValue, Unsupported>;

    fn serialize_i16(self, v: i16) -> Result<ArgValue, Unsupported> {
        self.int(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<ArgValue, Unsupported> {
        self.int(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<ArgValue, Unsupported> {
        self.int(v)
    }
    fn serialize_str(self, v: &str) -> Result<ArgValue, Unsupported> {
        match self.shape {
            Shape { scalar: Scalar::Text, list: false, .. } => Ok(ArgValue::Text(v.to_owned())),
            Shape { scalar: Scalar::Uuid, list: false, .. } => Ok(ArgValue::Uuid(v.to_owned())),
            _ => Err(Unsupported),
        }
    }
    fn serialize_none(self) -> Result<ArgValue, Unsupported> {
        if self.shape.option {
            Ok(ArgValue::Null)
        } else {
            Err(Unsupported)
        }
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<ArgValue, Unsupported> {
        if self.shape.option {
            value.serialize(self.scalar())
        } else {
            Err(Unsupported)
        }
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Items, Unsupported> {
        if self.shape.list {
            Ok(Items { item: self.scalar(), items: Vec::with_capacity(len.unwrap_or(0).min(1024)) })
        } else {
            Err(Unsupported)
        }
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<ArgValue, Unsupported> {
        value.serialize(self)
    }
    refuse!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i128(i128),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_u128(u128),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_bytes(&[u8]),
        serialize_unit(),
        serialize_unit_struct(&'static str),
        serialize_unit_variant(&'static str, u32, &'static str)
    );
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Unsupported> {
        Err(Unsupported)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeTupleStruct, Unsupported> {
        Err(Unsupported)
    }
    sqlacache_core::__refuse_compounds!(Unsupported);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_of_trusted_types_are_captured() {
        assert_eq!(capture(&7_i64), ArgValue::Int(7));
        assert_eq!(capture(&&7_i32), ArgValue::Int(7));
        assert_eq!(capture("abc"), ArgValue::Text("abc".into()));
        assert_eq!(capture(&String::from("abc")), ArgValue::Text("abc".into()));
        assert_eq!(capture(&None::<i64>), ArgValue::Null);
        assert_eq!(capture(&Some(3_i16)), ArgValue::Int(3));
        assert_eq!(capture(&vec![1_i64, 2]), ArgValue::List(vec![ArgValue::Int(1), ArgValue::Int(2)]));
        assert_eq!(
            capture(&["a", "b"][..]),
            ArgValue::List(vec![ArgValue::Text("a".into()), ArgValue::Text("b".into())])
        );
        // Types whose text is not certain, and a newtype whose Serialize might say anything.
        #[derive(serde::Serialize)]
        struct Id(i64);
        assert_eq!(capture(&Id(7)), ArgValue::Unknown);
        assert_eq!(capture(&1.5_f64), ArgValue::Unknown);
        assert_eq!(capture(&true), ArgValue::Unknown);
        assert_eq!(capture(&7_u64), ArgValue::Unknown);
    }

    #[test]
    fn operands_are_put_in_postgresql_text_only_when_certain() {
        use Operand::*;
        let int = |o: Operand| ValueKind::Int.literal(&o);
        assert_eq!(int(Number("007".into())), Some(Some("7".into())));
        assert_eq!(int(Number("-12".into())), Some(Some("-12".into())));
        assert_eq!(int(Text("7".into())), Some(Some("7".into())));
        assert_eq!(int(Text(" 7".into())), None);
        assert_eq!(int(Text("+7".into())), None);
        assert_eq!(int(Number("7.0".into())), None);
        assert_eq!(int(Number("1e3".into())), None);
        assert_eq!(int(Number("99999999999999999999".into())), None);
        assert_eq!(int(Null), Some(None));
        assert_eq!(ValueKind::Text.literal(&Number("7".into())), None);
        assert_eq!(ValueKind::Text.literal(&Text("Open".into())), Some(Some("Open".into())));
        let id = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
        assert_eq!(ValueKind::Uuid.literal(&Text(id.into())), Some(Some(id.into())));
        assert_eq!(ValueKind::Uuid.literal(&Text(id.to_uppercase())), None);
        assert_eq!(ValueKind::Int.argument(&ArgValue::Text("7".into()), false), None);
        assert_eq!(
            ValueKind::Int.argument(&ArgValue::List(vec![ArgValue::Int(1), ArgValue::Null]), true),
            Some(vec![Some("1".into()), None])
        );
        assert_eq!(ValueKind::Int.argument(&ArgValue::Int(1), true), None);
    }
}
