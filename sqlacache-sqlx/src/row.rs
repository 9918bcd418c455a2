//! Row types that can be cached: [`CachedRow`] (any decodable, storable row: a projection, a
//! join, a tuple) and the stored form of a read's result.

use crate::model::Model;
use serde::de::{Deserialize, DeserializeOwned, Deserializer};
use serde::ser::{Serialize, Serializer};

/// A value that can be stored in the cache and read back: implemented for every type with
/// `serde::Serialize` and `serde::Deserialize`.
///
/// A cached result is stored as bytes (postcard) and decoded on a hit. A type that serializes
/// to something other than itself is refused at compile time where the derive can tell
/// (`#[serde(skip)]` and the like) and otherwise not cached (see `Uncached::Unstorable`).
///
/// ```
/// fn storable<T: sqlacache_sqlx::Storable>() {}
/// storable::<(i64, String, Option<bool>)>();
/// ```
///
/// A row type without serde's derives gets one error, "`Plain` cannot be cached: it needs
/// `serde::Serialize` and `serde::Deserialize`", at its definition:
///
/// ```compile_fail,E0277
/// #[derive(sqlx::FromRow, sqlacache_sqlx::CachedRow)]
/// struct Plain {
///     id: i64,
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be cached: it needs `serde::Serialize` and `serde::Deserialize`",
    label = "add `#[derive(serde::Serialize, serde::Deserialize)]` to `{Self}`",
    note = "a cached result is stored as bytes with serde and decoded again on a hit"
)]
pub trait Storable: Sized {
    #[doc(hidden)]
    fn __serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error>;
    #[doc(hidden)]
    fn __deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error>;
}

// Not recommended in diagnostics: a type missing serde gets the one message above instead of
// one error per missing serde trait.
#[diagnostic::do_not_recommend]
impl<T: Serialize + DeserializeOwned> Storable for T {
    fn __serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.serialize(serializer)
    }

    fn __deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer)
    }
}

/// A row type whose reads [`query_as`](crate::query_as()) and
/// [`query_as!`](crate::query_as!) can cache: any struct with serde's derives and
/// `#[derive(CachedRow)]` (a projection, a join result, an aggregate), every
/// [`Cacheable`](crate::Cacheable) model, and tuples of column types.
///
/// It needs no table and no key: the tables a query reads come from its SQL, so a write to any
/// of them invalidates the cached result. What it gives is a fingerprint, which keeps the cached
/// bytes of different row types apart.
///
/// ```no_run
/// use sqlacache_sqlx::CachedRow;
///
/// #[derive(sqlx::FromRow, serde::Serialize, serde::Deserialize, CachedRow)]
/// struct PostWithAuthor {
///     title: String,
///     author: String,
/// }
///
/// # async fn demo(cache: sqlacache_sqlx::CachedPool) -> Result<(), sqlx::Error> {
/// let rows: Vec<PostWithAuthor> = sqlacache_sqlx::query_as::<PostWithAuthor>(
///     "SELECT p.title, a.name AS author FROM posts p JOIN authors a ON a.id = p.author_id",
/// )
/// .fetch_all(&cache)
/// .await?;
/// let pairs: Vec<(i64, String)> = sqlacache_sqlx::query_as::<(i64, String)>("SELECT id, name FROM authors").fetch_all(&cache).await?;
/// # Ok(()) }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a row type the cache knows",
    label = "add `#[derive(sqlacache_sqlx::CachedRow)]` to `{Self}` (or `Cacheable` for a table's rows)",
    note = "`query_as` and `query_as!` cache rows of types that derive `CachedRow` or `Cacheable`, and tuples"
)]
pub trait CachedRow: Storable + Send + Sync + Unpin + 'static {
    /// The fingerprint that keeps this type's cached bytes apart from every other type's: for a
    /// derived type, a digest of its field names, types as written, `serde` and `sqlx`
    /// attributes, and the full path of the type and of each field's type as the compiler
    /// resolved it (so aliases and same-named types in other modules differ). Computed once.
    fn fingerprint() -> u64;

    /// The model of a [`Cacheable`](crate::Cacheable) type, registered at its first use when
    /// `.model::<T>()` did not.
    #[doc(hidden)]
    const __MODEL: Option<Model> = None;

    /// How a hit copies a value a thread keeps decoded: `Clone::clone` for a derived type that
    /// implements it; `None` (the value is decoded on each hit) otherwise.
    #[doc(hidden)]
    fn __cloner() -> Option<fn(&Self) -> Self> {
        None
    }
}

macro_rules! tuple_rows {
    ($($name:ident)+) => {
        /// A tuple of column types, as sqlx decodes it.
        impl<$($name),+> CachedRow for ($($name,)+)
        where
            $($name: Send + Sync + Unpin + 'static,)+
            ($($name,)+): Storable,
        {
            fn fingerprint() -> u64 {
                // No derive: the type's full name tells it apart.
                sqlacache_core::key::type_digest::<Self>()
            }
        }
    };
}

tuple_rows!(A);
tuple_rows!(A B);
tuple_rows!(A B C);
tuple_rows!(A B C D);
tuple_rows!(A B C D E);
tuple_rows!(A B C D E F);
tuple_rows!(A B C D E F G);
tuple_rows!(A B C D E F G H);
tuple_rows!(A B C D E F G H I);
tuple_rows!(A B C D E F G H I J);
tuple_rows!(A B C D E F G H I J K);
tuple_rows!(A B C D E F G H I J K L);
tuple_rows!(A B C D E F G H I J K L M);
tuple_rows!(A B C D E F G H I J K L M N);
tuple_rows!(A B C D E F G H I J K L M N O);
tuple_rows!(A B C D E F G H I J K L M N O P);

/// The result of a cached call, as the store keeps it: one format byte, then the value
/// encoded through [`Storable`] in that format.
///
/// Postcard where the value reads back through it; otherwise JSON, which carries the shape of
/// what it stores, for the types that ask the format what comes next when they are read
/// (`serde_json::Value`, `Json<T>` of such a type, untagged or internally tagged enums,
/// `#[serde(flatten)]`). The format is chosen per value at its fill, so one row type whose
/// empty results round-trip through postcard and whose other results need JSON is cached in
/// both; the byte tells a hit which one to read.
///
/// Either way a value is stored only when what it reads back as is the same value as far as
/// its `Serialize` can tell: the two have the same [`witness`](crate::witness). Comparing the
/// stored bytes would not do: JSON reads `Some(None)` back as `None` and writes the same text.
pub(crate) trait Stored: Sized {
    /// The stored form, when the value reads back as itself.
    fn encode(&self) -> Option<Vec<u8>>;
    /// The value, when `bytes` are exactly one stored value.
    fn decode(bytes: &[u8]) -> Option<Self>;
}

/// How a hit copies a result out of a thread's decoded copy (see `sqlacache_core::near`);
/// `None` from it (or no function: the result's type cannot be cloned) makes the hit decode
/// the stored form instead.
pub(crate) type Share<R> = Option<fn(&R) -> Option<R>>;

/// [`Share`] for the result of a one-row read of `T`.
pub(crate) fn share_one<T: CachedRow>() -> Share<Option<T>> {
    fn one<T: CachedRow>(value: &Option<T>) -> Option<Option<T>> {
        let clone = T::__cloner()?;
        Some(value.as_ref().map(clone))
    }
    T::__cloner().map(|_| one::<T> as fn(&Option<T>) -> Option<Option<T>>)
}

/// [`Share`] for the result of a many-row read of `T`.
pub(crate) fn share_all<T: CachedRow>() -> Share<Vec<T>> {
    // (`&Vec`: the type of a `Share<Vec<T>>`.)
    #[allow(clippy::ptr_arg)]
    fn all<T: CachedRow>(rows: &Vec<T>) -> Option<Vec<T>> {
        let clone = T::__cloner()?;
        Some(rows.iter().map(clone).collect())
    }
    T::__cloner().map(|_| all::<T> as fn(&Vec<T>) -> Option<Vec<T>>)
}

/// The first byte of a stored value: how the rest is encoded.
mod format {
    pub const POSTCARD: u8 = 0;
    pub const JSON: u8 = 1;
}

/// Serializes a [`Storable`] through its serde implementation.
struct Ser<'a, T>(&'a T);

impl<T: Storable> Serialize for Ser<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.__serialize(serializer)
    }
}

/// Deserializes a [`Storable`] through its serde implementation.
struct De<T>(T);

impl<'de, T: Storable> Deserialize<'de> for De<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::__deserialize(deserializer).map(De)
    }
}

/// The stored form of `value` (a serializing view of a result): the first format whose form
/// reads back, by `witness_of`, as a value with the same [`witness`](crate::witness).
fn encode<V: Serialize>(value: &V, witness_of: impl Fn(&[u8]) -> Option<Vec<u8>>) -> Option<Vec<u8>> {
    let witness = crate::witness::of(value)?;
    let mut stored = vec![format::POSTCARD];
    // Postcard refuses some values (a map of unknown length): JSON may still take them.
    if postcard::to_io(value, &mut stored).is_ok() && witness_of(&stored).is_some_and(|again| again == witness) {
        return Some(stored);
    }
    stored.clear();
    stored.push(format::JSON);
    serde_json::to_writer(&mut stored, value).ok()?;
    witness_of(&stored).is_some_and(|again| again == witness).then_some(stored)
}

/// The value of a stored form: exactly one value in its format, nothing after it.
fn decode<V: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<V> {
    match bytes.split_first()? {
        (&format::POSTCARD, rest) => match postcard::take_from_bytes::<V>(rest) {
            Ok((value, [])) => Some(value),
            _ => None,
        },
        // `from_slice` refuses anything but whitespace after the value.
        (&format::JSON, rest) => serde_json::from_slice(rest).ok(),
        _ => None,
    }
}

impl<T: Storable> Stored for Option<T> {
    fn encode(&self) -> Option<Vec<u8>> {
        encode(&self.as_ref().map(Ser), |bytes| {
            Self::decode(bytes).and_then(|again| crate::witness::of(&again.as_ref().map(Ser)))
        })
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        decode::<Option<De<T>>>(bytes).map(|v| v.map(|De(t)| t))
    }
}

impl<T: Storable> Stored for Vec<T> {
    fn encode(&self) -> Option<Vec<u8>> {
        let rows: Vec<Ser<'_, T>> = self.iter().map(Ser).collect();
        encode(&rows, |bytes| {
            Self::decode(bytes).and_then(|again| crate::witness::of(&again.iter().map(Ser).collect::<Vec<_>>()))
        })
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        // `De<T>` has `T`'s layout, so this collect reuses the vector.
        decode::<Vec<De<T>>>(bytes).map(|rows| rows.into_iter().map(|De(t)| t).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_forms_read_back_and_reject_trailing_bytes() {
        let rows = vec![(1_i64, "a".to_owned()), (2, String::new())];
        let bytes = rows.encode().unwrap();
        assert_eq!(bytes[0], format::POSTCARD);
        assert_eq!(bytes[1..], postcard::to_allocvec(&rows).unwrap(), "the same bytes as serde's own form");
        assert_eq!(Vec::<(i64, String)>::decode(&bytes), Some(rows));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Vec::<(i64, String)>::decode(&longer), None);
        assert_eq!(Option::<i64>::decode(&Some(5_i64).encode().unwrap()), Some(Some(5)));
        assert_eq!(Option::<i64>::decode(&None::<i64>.encode().unwrap()), Some(None));
        for corrupt in [&[][..], &[0, 1, 200], &[1, b'{'], &[1, b'1', b' ', b'2'], &[2, 0], &[7]] {
            assert_eq!(Option::<i64>::decode(corrupt), None, "a corrupt entry is a miss: {corrupt:?}");
        }
    }

    #[test]
    fn values_postcard_cannot_read_back_are_stored_as_json() {
        use serde_json::{json, Value};
        let rows = vec![(1_i64, json!({"a": [1, 2.5, null, "x"], "b": {"c": true}})), (2, json!([]))];
        let bytes = rows.encode().unwrap();
        assert_eq!(bytes[0], format::JSON);
        assert_eq!(Vec::<(i64, Value)>::decode(&bytes), Some(rows));
        // An empty result of the same type reads back through postcard, and stays there.
        assert_eq!(Vec::<(i64, Value)>::new().encode().unwrap(), [format::POSTCARD, 0]);

        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(untagged)]
        enum Either {
            Number(i64),
            Words { text: String },
        }
        let rows = vec![Either::Number(3), Either::Words { text: "w".into() }];
        assert_eq!(Vec::<Either>::decode(&rows.encode().unwrap()), Some(rows));
    }

    #[test]
    fn values_no_format_reads_back_as_themselves_are_not_stored() {
        use serde_json::Value;
        // JSON writes `Some(None)` as `null`, which reads back as `None`.
        assert_eq!(Some((Some(None::<i64>), Value::Null)).encode(), None);
        assert!(Some((Some(Some(1_i64)), Value::Null)).encode().is_some());
        assert!(Some((None::<Option<i64>>, Value::Null)).encode().is_some());
        // JSON has no NaN.
        assert_eq!(Some((f64::NAN, Value::Null)).encode(), None);
        assert!(Some(f64::NAN).encode().is_some(), "postcard keeps it");
    }

    #[test]
    fn tuples_have_distinct_fingerprints() {
        assert_ne!(<(i64, String)>::fingerprint(), <(String, i64)>::fingerprint());
        assert_eq!(<(i64,)>::fingerprint(), <(i64,)>::fingerprint());
    }
}
