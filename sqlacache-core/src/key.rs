//! Cache keys and row identities.
//!
//! A cache key is a 128-bit BLAKE3 digest of everything that decides a read's result: the kind of
//! call, the fingerprint of the Rust type the rows decode into, the SQL text and the bound
//! arguments as the library serialized them at bind time. Two row types reading the same SQL get
//! different keys, so one never decodes the other's bytes.
//!
//! A row identity is a 128-bit digest of a table and the PostgreSQL text form of its primary-key
//! values. It is computed from a Rust key value (for `get`) and from the text PostgreSQL returns
//! for a written row, so the two sides must agree: only types whose serde form equals their
//! PostgreSQL text output are accepted (integers, text, booleans, UUIDs).

use serde::ser::{self, Serialize};
use std::fmt;

/// A digest that identifies one cached read.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Key(pub u128);

/// Builds a [`Key`] from the parts of a read.
///
/// ```
/// use sqlacache_core::key::KeyBuilder;
/// let mut a = KeyBuilder::new(7, "SELECT * FROM t WHERE id = $1");
/// a.arg(&1_i64).unwrap();
/// let mut b = KeyBuilder::new(8, "SELECT * FROM t WHERE id = $1");
/// b.arg(&1_i64).unwrap();
/// assert_ne!(a.finish(1), b.finish(1), "the type fingerprint is part of the key");
/// assert_ne!(a.finish(1), a.finish(2), "so is the kind of call");
/// ```
#[derive(Clone)]
pub struct KeyBuilder {
    hasher: blake3::Hasher,
}

impl fmt::Debug for KeyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyBuilder").finish_non_exhaustive()
    }
}

impl KeyBuilder {
    /// Starts a key for a read of `sql` returning a type with fingerprint `fingerprint`.
    pub fn new(fingerprint: u64, sql: &str) -> KeyBuilder {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&fingerprint.to_le_bytes());
        hasher.update(&(sql.len() as u64).to_le_bytes());
        hasher.update(sql.as_bytes());
        KeyBuilder { hasher }
    }

    /// Adds one bound argument.
    pub fn arg<V: Serialize + ?Sized>(&mut self, value: &V) -> Result<(), postcard::Error> {
        // Typical arguments fit on the stack; only large ones allocate.
        let mut stack = [0u8; 128];
        match postcard::to_slice(value, &mut stack) {
            Ok(bytes) => self.update_arg(bytes),
            Err(postcard::Error::SerializeBufferFull) => self.update_arg(&postcard::to_allocvec(value)?),
            Err(error) => return Err(error),
        }
        Ok(())
    }

    fn update_arg(&mut self, bytes: &[u8]) {
        self.hasher.update(&(bytes.len() as u64).to_le_bytes());
        self.hasher.update(bytes);
    }

    /// The finished key for a call of kind `kind` (calls that store different shapes of
    /// result for the same SQL use different kinds).
    pub fn finish(&self, kind: u8) -> Key {
        Key(digest128(&self.hasher) ^ u128::from(kind))
    }
}

fn digest128(hasher: &blake3::Hasher) -> u128 {
    let bytes = hasher.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&bytes.as_bytes()[..16]);
    u128::from_le_bytes(first)
}

/// Hashes a row identity from a table and the text form of its primary-key values.
///
/// ```
/// use sqlacache_core::key::{row_id, row_id_of};
/// assert_eq!(row_id(42, &["7"]), row_id_of(42, &7_i64).unwrap());
/// assert_eq!(row_id(42, &["7", "abc"]), row_id_of(42, &(7_i32, "abc")).unwrap());
/// assert!(row_id_of(42, &1.5_f64).is_none(), "floats have no exact text form");
/// ```
pub fn row_id<S: AsRef<str>>(table: u32, parts: &[S]) -> u128 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&table.to_le_bytes());
    for part in parts {
        let part = part.as_ref();
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    digest128(&hasher)
}

/// Hashes the row identity of a Rust primary-key value, or `None` when the value has no text
/// form that is known to equal PostgreSQL's (floats, bytes, options, maps, ...).
pub fn row_id_of<K: Serialize + ?Sized>(table: u32, key: &K) -> Option<u128> {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&table.to_le_bytes());
    let mut parts = PkText { hasher, parts: 0 };
    key.serialize(&mut parts).ok()?;
    if parts.parts == 0 {
        return None;
    }
    Some(digest128(&parts.hasher))
}

/// Hashes the PostgreSQL text form of each scalar in a key exactly as [`row_id`] hashes its
/// parts, without collecting them.
struct PkText {
    hasher: blake3::Hasher,
    parts: usize,
}

impl PkText {
    fn part(&mut self, text: &str) {
        self.hasher.update(&(text.len() as u64).to_le_bytes());
        self.hasher.update(text.as_bytes());
        self.parts += 1;
    }
}

/// Formats a scalar on the stack (the longest, an `i128`, is 40 bytes).
struct StackText {
    buf: [u8; 48],
    len: usize,
}

impl fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        self.buf.get_mut(self.len..end).ok_or(fmt::Error)?.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[derive(Debug)]
struct Unsupported;

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("value has no exact PostgreSQL text form")
    }
}
impl std::error::Error for Unsupported {}
impl ser::Error for Unsupported {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Unsupported
    }
}

macro_rules! text_of {
    ($($method:ident: $ty:ty),*) => {$(
        fn $method(self, v: $ty) -> Result<(), Unsupported> {
            use fmt::Write as _;
            let mut text = StackText { buf: [0; 48], len: 0 };
            write!(text, "{v}").map_err(|_| Unsupported)?;
            self.part(std::str::from_utf8(&text.buf[..text.len]).map_err(|_| Unsupported)?);
            Ok(())
        }
    )*};
}
macro_rules! unsupported {
    ($($method:ident($($arg:ty),*)),*) => {$(
        fn $method(self, $(_: $arg),*) -> Result<(), Unsupported> {
            Err(Unsupported)
        }
    )*};
}

impl ser::Serializer for &mut PkText {
    type Ok = ();
    type Error = Unsupported;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = ser::Impossible<(), Unsupported>;
    type SerializeMap = ser::Impossible<(), Unsupported>;
    type SerializeStruct = ser::Impossible<(), Unsupported>;
    type SerializeStructVariant = ser::Impossible<(), Unsupported>;

    text_of!(serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64,
        serialize_i128: i128, serialize_u8: u8, serialize_u16: u16, serialize_u32: u32,
        serialize_u64: u64, serialize_u128: u128, serialize_char: char);
    unsupported!(
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_bytes(&[u8]),
        serialize_none(),
        serialize_unit(),
        serialize_unit_struct(&'static str)
    );

    fn is_human_readable(&self) -> bool {
        // UUIDs and similar types then serialize as their canonical lower-case text.
        true
    }
    fn serialize_str(self, v: &str) -> Result<(), Unsupported> {
        self.part(v);
        Ok(())
    }
    fn serialize_bool(self, v: bool) -> Result<(), Unsupported> {
        self.part(if v { "true" } else { "false" });
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, v: &T) -> Result<(), Unsupported> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self, Unsupported> {
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self, Unsupported> {
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, Unsupported> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Unsupported> {
        Err(Unsupported)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Unsupported> {
        Err(Unsupported)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Unsupported> {
        Err(Unsupported)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Unsupported> {
        Err(Unsupported)
    }
}

macro_rules! elements {
    ($($trait:ident :: $method:ident),*) => {$(
        impl ser::$trait for &mut PkText {
            type Ok = ();
            type Error = Unsupported;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
                value.serialize(&mut **self)
            }
            fn end(self) -> Result<(), Unsupported> {
                Ok(())
            }
        }
    )*};
}
elements!(SerializeSeq::serialize_element, SerializeTuple::serialize_element, SerializeTupleStruct::serialize_field);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_widths_agree_with_text() {
        let text = row_id(1, &["12"]);
        assert_eq!(row_id_of(1, &12_i16), Some(text));
        assert_eq!(row_id_of(1, &12_i32), Some(text));
        assert_eq!(row_id_of(1, &12_u64), Some(text));
        assert_ne!(row_id_of(2, &12_i64), Some(text), "the table is part of the identity");
    }

    #[test]
    fn parts_are_length_prefixed() {
        assert_ne!(row_id(1, &["ab", "c"]), row_id(1, &["a", "bc"]));
    }

    #[test]
    fn options_and_floats_are_refused() {
        assert_eq!(row_id_of(1, &Some(1_i64)), None);
        assert_eq!(row_id_of(1, &(1_i64, 2.0_f32)), None);
        assert_eq!(row_id_of(1, &()), None);
    }

    #[test]
    fn long_text_and_large_arguments_hash_like_their_parts() {
        let long = "x".repeat(300);
        assert_eq!(row_id_of(1, &long), Some(row_id(1, &[long.as_str()])));
        assert_eq!(row_id_of(1, &(i128::MIN, 'é')), Some(row_id(1, &[i128::MIN.to_string(), "é".to_owned()])));
        let mut a = KeyBuilder::new(1, "q");
        a.arg(&long).unwrap();
        let mut b = KeyBuilder::new(1, "q");
        b.arg(&"x".repeat(301)).unwrap();
        assert_ne!(a.finish(0), b.finish(0), "arguments past the stack buffer are still keyed");
    }

    #[test]
    fn booleans_use_postgres_text() {
        assert_eq!(row_id_of(1, &true), Some(row_id(1, &["true"])));
    }
}
