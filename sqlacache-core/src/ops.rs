//! Which kinds of read a table caches.

use std::fmt;

/// A set of cacheable read operations, configured per table.
///
/// * [`Ops::GET`]: point reads by primary key through `CachedPool::get`.
/// * [`Ops::FETCH`]: row reads through the typed query builders.
/// * [`Ops::COUNT`]: `SELECT count(..)` reads.
/// * [`Ops::EXISTS`]: `SELECT EXISTS (..)` reads.
///
/// A read that touches several tables is cached only when every table allows its operation.
///
/// ```
/// use sqlacache_sqlx::Ops;
/// let ops = Ops::GET | Ops::COUNT;
/// assert!(ops.contains(Ops::GET));
/// assert!(!ops.contains(Ops::FETCH));
/// assert_eq!(Ops::ALL, Ops::GET | Ops::FETCH | Ops::COUNT | Ops::EXISTS);
/// assert_eq!(Ops::from_name("exists"), Some(Ops::EXISTS));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Ops(u8);

impl Ops {
    /// No read is cached.
    pub const NONE: Ops = Ops(0);
    /// Point reads by primary key.
    pub const GET: Ops = Ops(1);
    /// Row reads (lists, joins, single rows by any filter).
    pub const FETCH: Ops = Ops(2);
    /// `count(..)` reads.
    pub const COUNT: Ops = Ops(4);
    /// `EXISTS (..)` reads.
    pub const EXISTS: Ops = Ops(8);
    /// Every operation.
    pub const ALL: Ops = Ops(15);

    /// Whether every operation in `other` is in `self`.
    pub const fn contains(self, other: Ops) -> bool {
        self.0 & other.0 == other.0
    }

    /// The union of two sets, usable in constants.
    pub const fn union(self, other: Ops) -> Ops {
        Ops(self.0 | other.0)
    }

    /// The raw bits; stable across releases.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Builds a set from raw bits, dropping unknown ones.
    pub const fn from_bits(bits: u8) -> Ops {
        Ops(bits & Ops::ALL.0)
    }

    /// Parses one operation name (`get`, `fetch`, `count`, `exists`, `all`).
    pub fn from_name(name: &str) -> Option<Ops> {
        Some(match name {
            "get" => Ops::GET,
            "fetch" => Ops::FETCH,
            "count" => Ops::COUNT,
            "exists" => Ops::EXISTS,
            "all" => Ops::ALL,
            _ => return None,
        })
    }
}

impl std::ops::BitOr for Ops {
    type Output = Ops;
    fn bitor(self, rhs: Ops) -> Ops {
        self.union(rhs)
    }
}

impl fmt::Debug for Ops {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [(Ops::GET, "get"), (Ops::FETCH, "fetch"), (Ops::COUNT, "count"), (Ops::EXISTS, "exists")];
        let mut set = f.debug_set();
        for (op, name) in names {
            if self.contains(op) {
                set.entry(&format_args!("{name}"));
            }
        }
        set.finish()
    }
}
