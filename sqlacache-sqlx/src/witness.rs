//! What a value's `Serialize` says of it, written down call by call: the check that a stored
//! value reads back as itself, whatever format stored it.
//!
//! Every call of serde's data model is recorded with its arguments (names, variant indexes,
//! lengths, the exact bits of floats), so two values have the same witness only when their
//! `Serialize` cannot tell them apart. Unlike a format, it keeps what JSON merges (`Some(None)`
//! and `None`, `()` and `None`) and accepts what postcard refuses (maps and sequences of unknown
//! length, as `#[serde(flatten)]` makes).

use serde::ser::{self, Serialize};
use std::fmt;

/// The witness of `value`: equal for two values exactly when their serializations are.
pub(crate) fn of<V: Serialize + ?Sized>(value: &V) -> Option<Vec<u8>> {
    let mut out = Witness(Vec::new());
    value.serialize(&mut out).ok()?;
    Some(out.0)
}

struct Witness(Vec<u8>);

/// The one error: a `Serialize` that failed (its value is then not stored).
#[derive(Debug)]
struct Failed;

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the value did not serialize")
    }
}

impl std::error::Error for Failed {}

impl ser::Error for Failed {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Failed
    }
}

impl Witness {
    fn tag(&mut self, tag: u8) {
        self.0.push(tag);
    }

    fn bytes(&mut self, tag: u8, bytes: &[u8]) {
        self.0.push(tag);
        self.0.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        self.0.extend_from_slice(bytes);
    }

    fn len(&mut self, tag: u8, len: Option<usize>) {
        self.0.push(tag);
        // Known lengths are part of what was said; an unknown one is a marker of its own.
        self.0.extend_from_slice(&len.map_or(u64::MAX, |n| n as u64).to_le_bytes());
    }

    fn variant(&mut self, tag: u8, name: &str, index: u32, variant: &str) {
        self.bytes(tag, name.as_bytes());
        self.0.extend_from_slice(&index.to_le_bytes());
        self.bytes(b'=', variant.as_bytes());
    }
}

/// Primitive calls: a tag per type, then the value's bytes.
macro_rules! primitives {
    ($($method:ident $ty:ty => $tag:literal),* $(,)?) => {$(
        fn $method(self, v: $ty) -> Result<(), Failed> {
            self.bytes($tag, &v.to_le_bytes());
            Ok(())
        }
    )*};
}

impl ser::Serializer for &mut Witness {
    type Ok = ();
    type Error = Failed;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    primitives! {
        serialize_i8 i8 => b'a', serialize_i16 i16 => b'b', serialize_i32 i32 => b'c',
        serialize_i64 i64 => b'd', serialize_i128 i128 => b'e',
        serialize_u8 u8 => b'f', serialize_u16 u16 => b'g', serialize_u32 u32 => b'h',
        serialize_u64 u64 => b'i', serialize_u128 u128 => b'j',
        // `to_le_bytes` of a float is its bits: NaNs and signed zeros stay apart.
        serialize_f32 f32 => b'k', serialize_f64 f64 => b'l',
    }

    fn serialize_bool(self, v: bool) -> Result<(), Failed> {
        self.bytes(b'B', &[u8::from(v)]);
        Ok(())
    }

    fn serialize_char(self, v: char) -> Result<(), Failed> {
        self.bytes(b'C', &u32::from(v).to_le_bytes());
        Ok(())
    }

    fn serialize_str(self, v: &str) -> Result<(), Failed> {
        self.bytes(b'S', v.as_bytes());
        Ok(())
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), Failed> {
        self.bytes(b'Y', v);
        Ok(())
    }

    fn serialize_none(self) -> Result<(), Failed> {
        self.tag(b'N');
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Failed> {
        self.tag(b'O');
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), Failed> {
        self.tag(b'U');
        Ok(())
    }

    fn serialize_unit_struct(self, name: &'static str) -> Result<(), Failed> {
        self.bytes(b'u', name.as_bytes());
        Ok(())
    }

    fn serialize_unit_variant(self, name: &'static str, index: u32, variant: &'static str) -> Result<(), Failed> {
        self.variant(b'v', name, index, variant);
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, name: &'static str, value: &T) -> Result<(), Failed> {
        self.bytes(b'n', name.as_bytes());
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Failed> {
        self.variant(b'w', name, index, variant);
        value.serialize(self)
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Self, Failed> {
        self.len(b'[', len);
        Ok(self)
    }

    fn serialize_tuple(self, len: usize) -> Result<Self, Failed> {
        self.len(b'(', Some(len));
        Ok(self)
    }

    fn serialize_tuple_struct(self, name: &'static str, len: usize) -> Result<Self, Failed> {
        self.bytes(b't', name.as_bytes());
        self.len(b'(', Some(len));
        Ok(self)
    }

    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self, Failed> {
        self.variant(b'x', name, index, variant);
        self.len(b'(', Some(len));
        Ok(self)
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Self, Failed> {
        self.len(b'{', len);
        Ok(self)
    }

    fn serialize_struct(self, name: &'static str, len: usize) -> Result<Self, Failed> {
        self.bytes(b's', name.as_bytes());
        self.len(b'{', Some(len));
        Ok(self)
    }

    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self, Failed> {
        self.variant(b'z', name, index, variant);
        self.len(b'{', Some(len));
        Ok(self)
    }

    fn is_human_readable(&self) -> bool {
        // As postcard: the compact forms, which are also what a hit decoded from postcard saw.
        false
    }
}

/// Elements, fields and entries, each marked, then the end of the compound.
macro_rules! compound {
    ($($trait:ident :: $method:ident),*) => {$(
        impl ser::$trait for &mut Witness {
            type Ok = ();
            type Error = Failed;

            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Failed> {
                self.tag(b',');
                value.serialize(&mut **self)
            }

            fn end(self) -> Result<(), Failed> {
                self.tag(b'.');
                Ok(())
            }
        }
    )*};
}

compound!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl ser::SerializeMap for &mut Witness {
    type Ok = ();
    type Error = Failed;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Failed> {
        self.tag(b':');
        key.serialize(&mut **self)
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Failed> {
        self.tag(b'=');
        value.serialize(&mut **self)
    }

    fn end(self) -> Result<(), Failed> {
        self.tag(b'.');
        Ok(())
    }
}

/// Named fields, by name; a skipped field is said too (it is part of what `Serialize` told).
macro_rules! fields {
    ($($trait:ident),*) => {$(
        impl ser::$trait for &mut Witness {
            type Ok = ();
            type Error = Failed;

            fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), Failed> {
                self.bytes(b':', key.as_bytes());
                value.serialize(&mut **self)
            }

            fn skip_field(&mut self, key: &'static str) -> Result<(), Failed> {
                self.bytes(b'-', key.as_bytes());
                Ok(())
            }

            fn end(self) -> Result<(), Failed> {
                self.tag(b'.');
                Ok(())
            }
        }
    )*};
}

fields!(SerializeStruct, SerializeStructVariant);

#[cfg(test)]
mod tests {
    use super::of;

    #[test]
    fn tells_apart_what_json_merges() {
        assert_ne!(of(&Some(None::<i64>)), of(&None::<Option<i64>>));
        assert_ne!(of(&()), of(&None::<()>));
        assert_ne!(of(&1_i64), of(&1_u64));
        assert_ne!(of(&0.0_f64), of(&-0.0_f64));
        assert_ne!(of(&vec!["ab"]), of(&vec!["a", "b"]));
        assert_eq!(of(&vec![(1, "x")]), of(&[(1, "x")].to_vec()));
    }

    #[test]
    fn records_maps_of_unknown_length() {
        #[derive(serde::Serialize)]
        struct Outer {
            a: i64,
            #[serde(flatten)]
            rest: std::collections::BTreeMap<String, i64>,
        }
        let one = Outer { a: 1, rest: [("b".to_owned(), 2)].into() };
        let two = Outer { a: 1, rest: [("b".to_owned(), 3)].into() };
        assert!(of(&one).is_some());
        assert_ne!(of(&one), of(&two));
    }
}
