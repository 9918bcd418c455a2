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
//!
//! Both digests are taken in one shot over a small stack buffer (a typical key is one 64-byte
//! BLAKE3 block), switching to incremental hashing only when the input outgrows the buffer, which
//! gives the same digest. The SQL enters a key as its own digest ([`SqlDigest`]), computed once
//! per statement, so a key costs the same for a long statement as for a short one.

use crate::stats::Uncached;
use serde::ser::{self, Serialize};
use std::fmt;

/// A digest of a Rust type's full name (FNV-1a). The name is a constant of each instantiation,
/// so the optimizer folds this to a number.
///
/// ```
/// use sqlacache_core::key::type_digest;
/// assert_eq!(type_digest::<(i64, String)>(), type_digest::<(i64, String)>());
/// assert_ne!(type_digest::<(i64, String)>(), type_digest::<(String, i64)>());
/// ```
pub fn type_digest<V: ?Sized>() -> u64 {
    std::any::type_name::<V>()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// A digest that identifies one cached read.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Key(pub u128);

/// The digest of a SQL text, as it enters a [`Key`]. Compute it once per statement.
///
/// ```
/// use sqlacache_core::key::SqlDigest;
/// assert_eq!(SqlDigest::of("SELECT 1"), SqlDigest::of("SELECT 1"));
/// assert_ne!(SqlDigest::of("SELECT 1"), SqlDigest::of("SELECT 2"));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct SqlDigest([u8; 32]);

impl SqlDigest {
    /// The digest of `sql`.
    pub fn of(sql: &str) -> SqlDigest {
        SqlDigest(*blake3::hash(sql.as_bytes()).as_bytes())
    }

    /// The digest of `sql` read from these relations (by oid) in a session described by
    /// `session` (the role and settings the read runs with): the same text over other
    /// relations, such as a new table that shadows an old name, or run as another role or with
    /// other settings, is another read.
    ///
    /// ```
    /// use sqlacache_core::key::SqlDigest;
    /// let sql = "SELECT * FROM users";
    /// let of = |oids: &[u32], session: &[u8]| SqlDigest::with_relations(sql, oids, session);
    /// assert_ne!(of(&[16384], b"alice"), of(&[16390], b"alice"));
    /// assert_ne!(of(&[16384], b"alice"), of(&[16384], b"bob"));
    /// ```
    pub fn with_relations(sql: &str, oids: &[u32], session: &[u8]) -> SqlDigest {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&(sql.len() as u64).to_le_bytes());
        hasher.update(sql.as_bytes());
        hasher.update(&(oids.len() as u64).to_le_bytes());
        for oid in oids {
            hasher.update(&oid.to_le_bytes());
        }
        hasher.update(session);
        SqlDigest(*hasher.finalize().as_bytes())
    }
}

/// Room in a [`Material`] buffer; a key of a few scalar arguments takes about 60 bytes.
const INLINE: usize = 160;

/// Bytes to hash, kept on the stack until they outgrow it.
#[derive(Clone)]
struct Material {
    buf: [u8; INLINE],
    len: usize,
    spilled: Option<Box<blake3::Hasher>>,
}

impl Material {
    fn new() -> Material {
        Material { buf: [0; INLINE], len: 0, spilled: None }
    }

    fn update(&mut self, bytes: &[u8]) {
        if let Some(hasher) = &mut self.spilled {
            hasher.update(bytes);
        } else if let Some(room) = self.buf.get_mut(self.len..self.len + bytes.len()) {
            room.copy_from_slice(bytes);
            self.len += bytes.len();
        } else {
            let mut hasher = blake3::Hasher::new();
            hasher.update(&self.buf[..self.len]);
            hasher.update(bytes);
            self.spilled = Some(Box::new(hasher));
        }
    }

    /// [`Material::update`] of eight bytes, copied without a call while they fit inline.
    #[inline]
    fn word(&mut self, word: u64) {
        match self.buf.get_mut(self.len..self.len + 8) {
            Some(room) if self.spilled.is_none() => {
                room.copy_from_slice(&word.to_le_bytes());
                self.len += 8;
            }
            _ => self.update(&word.to_le_bytes()),
        }
    }

    /// Appends a length-prefixed part.
    fn part(&mut self, bytes: &[u8]) {
        self.word(bytes.len() as u64);
        self.update(bytes);
    }

    /// The first 128 bits of the BLAKE3 digest of everything added, then `suffix`.
    fn digest(mut self, suffix: &[u8]) -> u128 {
        self.update(suffix);
        self.finalize()
    }

    /// The first 128 bits of the BLAKE3 digest of everything added.
    fn finalize(&self) -> u128 {
        let hash = match &self.spilled {
            Some(hasher) => hasher.finalize(),
            None => blake3::hash(&self.buf[..self.len]),
        };
        let mut first = [0u8; 16];
        first.copy_from_slice(&hash.as_bytes()[..16]);
        u128::from_le_bytes(first)
    }
}

/// Builds a [`Key`] from the parts of a read: the row type's fingerprint and the bound
/// arguments now, the SQL and the kind of call when it is finished.
///
/// ```
/// use sqlacache_core::key::{KeyBuilder, SqlDigest};
/// let sql = SqlDigest::of("SELECT * FROM t WHERE id = $1");
/// let mut a = KeyBuilder::new(7);
/// a.arg(&1_i64).unwrap();
/// let mut b = KeyBuilder::new(8);
/// b.arg(&1_i64).unwrap();
/// let key = |k: &KeyBuilder, sql, kind| k.clone().finish(sql, kind);
/// assert_ne!(key(&a, &sql, 1), key(&b, &sql, 1), "the type fingerprint is part of the key");
/// assert_ne!(key(&a, &sql, 1), key(&a, &sql, 2), "so is the kind of call");
/// assert_ne!(key(&a, &sql, 1), key(&a, &SqlDigest::of("SELECT 1"), 1), "and the SQL");
/// ```
#[derive(Clone)]
pub struct KeyBuilder {
    material: Material,
}

impl fmt::Debug for KeyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyBuilder").finish_non_exhaustive()
    }
}

impl KeyBuilder {
    /// Starts a key for a read returning a type with fingerprint `fingerprint`.
    pub fn new(fingerprint: u64) -> KeyBuilder {
        let mut material = Material::new();
        material.word(fingerprint);
        KeyBuilder { material }
    }

    /// Adds one bound argument: its Rust type (so `None::<String>` and `""`, or `None::<i64>`
    /// and `0`, whose postcard bytes are equal, never share a key) and its postcard bytes.
    ///
    /// Fails with [`Uncached::Arguments`] when the value cannot be serialized, and with
    /// [`Uncached::Clock`] when it holds a word that PostgreSQL reads as a moment relative to
    /// now (`'now'`, `'today'`, ..): bound to a date/time parameter, it makes the result
    /// depend on the clock.
    ///
    /// ```
    /// use sqlacache_core::key::{KeyBuilder, SqlDigest};
    /// use sqlacache_core::Uncached;
    /// let sql = SqlDigest::of("SELECT * FROM t WHERE a = $1");
    /// let key = |arg: &dyn Fn(&mut KeyBuilder)| { let mut k = KeyBuilder::new(1); arg(&mut k); k.finish(&sql, 1) };
    /// assert_ne!(key(&|k| k.arg(&None::<String>).unwrap()), key(&|k| k.arg(&"").unwrap()));
    /// assert_ne!(key(&|k| k.arg(&None::<i64>).unwrap()), key(&|k| k.arg(&0_i64).unwrap()));
    /// assert_eq!(KeyBuilder::new(1).arg(&"now"), Err(Uncached::Clock));
    /// ```
    pub fn arg<V: Serialize + ?Sized>(&mut self, value: &V) -> Result<(), Uncached> {
        let m = &mut self.material;
        m.word(type_digest::<V>());
        // Serialize straight into the buffer behind room for the length; only arguments that
        // do not fit there are serialized on the heap.
        let start = m.len + 8;
        if m.spilled.is_none() && start < INLINE {
            match postcard::to_slice(value, &mut m.buf[start..]) {
                Ok(bytes) => {
                    let n = bytes.len();
                    if crate::analyze::mentions_clock_bytes(bytes) {
                        return Err(Uncached::Clock);
                    }
                    m.buf[m.len..start].copy_from_slice(&(n as u64).to_le_bytes());
                    m.len = start + n;
                    return Ok(());
                }
                Err(postcard::Error::SerializeBufferFull) => {}
                Err(_) => return Err(Uncached::Arguments),
            }
        }
        let bytes = postcard::to_allocvec(value).map_err(|_| Uncached::Arguments)?;
        if crate::analyze::mentions_clock_bytes(&bytes) {
            return Err(Uncached::Clock);
        }
        m.part(&bytes);
        Ok(())
    }

    /// The finished key for a read of the SQL with digest `sql`, by a call of kind `kind`
    /// (calls that store different shapes of result for the same SQL use different kinds).
    pub fn finish(self, sql: &SqlDigest, kind: u8) -> Key {
        self.complete(sql, kind).key()
    }

    /// [`KeyBuilder::finish`] without the digest: everything the key is made of, to compare
    /// whole in this process, and to hash only where the key must leave it.
    ///
    /// ```
    /// use sqlacache_core::key::{KeyBuilder, SqlDigest};
    /// let sql = SqlDigest::of("SELECT * FROM t WHERE id = $1");
    /// let mut a = KeyBuilder::new(7);
    /// a.arg(&1_i64).unwrap();
    /// let done = a.clone().complete(&sql, 1);
    /// assert_eq!(done.key(), a.finish(&sql, 1));
    /// assert!(done.exact().is_some_and(|bytes| bytes.len() < 100));
    /// ```
    pub fn complete(mut self, sql: &SqlDigest, kind: u8) -> KeyMaterial {
        // Fixed-size trailer after length-prefixed arguments: the framing stays unambiguous.
        let mut suffix = [0u8; 33];
        suffix[..32].copy_from_slice(&sql.0);
        suffix[32] = kind;
        self.material.update(&suffix);
        KeyMaterial { material: self.material }
    }
}

/// Everything a [`Key`] is made of (see [`KeyBuilder::complete`]).
#[derive(Clone)]
pub struct KeyMaterial {
    material: Material,
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyMaterial").field("len", &self.material.len).finish_non_exhaustive()
    }
}

impl KeyMaterial {
    /// The bytes the key is a digest of, unless they outgrew the inline buffer (a key with
    /// long arguments), when only the digest is left.
    #[inline]
    pub fn exact(&self) -> Option<&[u8]> {
        self.material.spilled.is_none().then(|| &self.material.buf[..self.material.len])
    }

    /// The key: the digest.
    pub fn key(&self) -> Key {
        Key(self.material.finalize())
    }
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
    let mut material = Material::new();
    material.update(&table.to_le_bytes());
    for part in parts {
        material.part(part.as_ref().as_bytes());
    }
    material.digest(&[])
}

/// Hashes the identity of one value of one column of a table: a read whose rows all have
/// `column` equal to `value` (its PostgreSQL text; `None` for NULL) depends on it, and a write
/// invalidates it for the old and new value of every row it changes. It shares the space of
/// [`row_id`]s (both travel as row tags); its first part, which holds a NUL byte, is never the
/// text of a key (PostgreSQL text never holds NUL), so the two never meet but by a collision
/// of 128-bit digests, which only invalidates more.
///
/// ```
/// use sqlacache_core::key::{row_id, value_id};
/// assert_ne!(value_id(42, "customer_id", Some("7")), value_id(42, "customer_id", Some("8")));
/// assert_ne!(value_id(42, "customer_id", Some("7")), value_id(42, "customer_id", None));
/// assert_ne!(value_id(42, "customer_id", Some("7")), row_id(42, &["7"]));
/// ```
pub fn value_id(table: u32, column: &str, value: Option<&str>) -> u128 {
    let mut material = Material::new();
    material.update(&table.to_le_bytes());
    material.part(b"\0value");
    material.part(column.as_bytes());
    match value {
        Some(text) => material.part(text.as_bytes()),
        // Not a text PostgreSQL can produce.
        None => material.part(b"\0"),
    }
    material.digest(&[])
}

/// Hashes the identity of a column of a table as a whole: every read that [`value_id`]s of
/// the column depend on also depends on it, and a write that changes the column's values
/// without knowing the old ones (an `UPDATE` that sets it) invalidates it.
///
/// ```
/// use sqlacache_core::key::{column_id, value_id};
/// assert_ne!(column_id(42, "status"), column_id(42, "customer_id"));
/// assert_ne!(column_id(42, "status"), value_id(42, "status", None));
/// ```
pub fn column_id(table: u32, column: &str) -> u128 {
    let mut material = Material::new();
    material.update(&table.to_le_bytes());
    material.part(b"\0column");
    material.part(column.as_bytes());
    material.digest(&[])
}

/// Hashes the row identity of a Rust primary-key value, or `None` when the value has no text
/// form that is known to equal PostgreSQL's (floats, bytes, options, maps, ...).
pub fn row_id_of<K: Serialize + ?Sized>(table: u32, key: &K) -> Option<u128> {
    let mut parts = PkText { material: Material::new(), parts: 0 };
    parts.material.update(&table.to_le_bytes());
    key.serialize(&mut parts).ok()?;
    if parts.parts == 0 {
        return None;
    }
    Some(parts.material.digest(&[]))
}

/// Hashes the PostgreSQL text form of each scalar in a key exactly as [`row_id`] hashes its
/// parts, without collecting them.
struct PkText {
    material: Material,
    parts: usize,
}

impl PkText {
    fn part(&mut self, text: &str) {
        self.material.part(text.as_bytes());
        self.parts += 1;
    }
}

/// Serializer methods that refuse enum variants with data, maps and structs: shared by the
/// serializers that read scalar values (`$error` is the error they return).
#[doc(hidden)]
#[macro_export]
macro_rules! __refuse_compounds {
    ($error:expr) => {
        fn serialize_newtype_variant<T: serde::Serialize + ?Sized>(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: &T,
        ) -> Result<Self::Ok, Self::Error> {
            Err($error)
        }
        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleVariant, Self::Error> {
            Err($error)
        }
        fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Self::Error> {
            Err($error)
        }
        fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Self::Error> {
            Err($error)
        }
        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeStructVariant, Self::Error> {
            Err($error)
        }
    };
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

/// The error of the serializers that read scalar values: the value is not one they read.
#[doc(hidden)]
#[derive(Debug)]
pub struct Unsupported;

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
    fn serialize_seq(self, _: Option<usize>) -> Result<Self, Unsupported> {
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self, Unsupported> {
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, Unsupported> {
        Ok(self)
    }
    crate::__refuse_compounds!(Unsupported);
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
        let sql = SqlDigest::of("q");
        let mut a = KeyBuilder::new(1);
        a.arg(&long).unwrap();
        let mut b = KeyBuilder::new(1);
        b.arg(&"x".repeat(301)).unwrap();
        assert_ne!(a.finish(&sql, 0), b.finish(&sql, 0), "arguments past the stack buffer are still keyed");
    }

    /// The key as a plain BLAKE3 hash of its framed parts, for comparison.
    fn reference_key(fingerprint: u64, args: &[String], sql: &str, kind: u8) -> Key {
        let mut all = fingerprint.to_le_bytes().to_vec();
        for arg in args {
            all.extend(type_digest::<String>().to_le_bytes());
            let bytes = postcard::to_allocvec(arg).unwrap();
            all.extend((bytes.len() as u64).to_le_bytes());
            all.extend(bytes);
        }
        all.extend(blake3::hash(sql.as_bytes()).as_bytes());
        all.push(kind);
        Key(u128::from_le_bytes(blake3::hash(&all).as_bytes()[..16].try_into().unwrap()))
    }

    #[test]
    fn digest_is_the_same_on_the_stack_or_spilled() {
        // Every total length around the buffer's size: arguments that fit, arguments that fit
        // but leave no room for the trailer, and arguments that spill.
        for count in 0..6 {
            for width in [0, 1, 7, 20, 60, 100, 111, 112, 113, 150, 200] {
                let args: Vec<String> = (0..count).map(|i| format!("{i}").repeat(width)).collect();
                let mut key = KeyBuilder::new(99);
                for arg in &args {
                    key.arg(arg).unwrap();
                }
                let sql = "SELECT * FROM t WHERE a = $1";
                assert_eq!(key.finish(&SqlDigest::of(sql), 3), reference_key(99, &args, sql, 3), "{count} x {width}");
            }
        }
    }

    #[test]
    fn booleans_use_postgres_text() {
        assert_eq!(row_id_of(1, &true), Some(row_id(1, &["true"])));
    }
}
