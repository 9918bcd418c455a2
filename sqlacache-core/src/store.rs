//! The in-process store and its version clock.
//!
//! # Freshness protocol
//!
//! The store keeps a global monotonic sequence and, for every tag that was ever invalidated, the
//! sequence number of its last invalidation. A fill reads the sequence with [`MemoryStore::stamp`]
//! *before* it queries the database and stores that stamp with the entry. An entry is fresh only
//! while every tag it depends on (and the implicit global tag) has a sequence number `<=` its
//! stamp. So a fill that read the database before a write committed, and stores its result after
//! that write's invalidation, is never served: its stamp is older than the invalidation.
//!
//! Row tags (rows, and values of tracked columns) live in a fixed table of clocks: a row tag's
//! invalidation raises the `ROW_HASHES` clocks its identity picks, and an entry depending on it
//! is fresh only while the lowest of them is `<=` its stamp. A clock shared with other rows only
//! ever holds a newer sequence than the row's own, so sharing can make an entry stale early,
//! never serve one late; an entry goes early only when every one of its row's clocks was raised
//! by other rows since its stamp: with `w` rows written meanwhile, about `(4w / 2^20)^4` of the
//! time (one entry in 100,000 at 20,000 rows). The table is read and written without locks: no hit
//! ever waits for a writer.
//!
//! # Memory
//!
//! Entries are held in a [`quick_cache`] cache bounded by weight, where the weight of an entry is
//! `value bytes + 24 * dependencies + 96`. An entry heavier than a shard's share of the capacity
//! is not kept. Tag bookkeeping is outside that bound and fixed: `TABLE_CLOCKS` table clocks
//! (64 KiB) and `ROW_CLOCKS` row clocks (8 MiB). Threads keep copies of entries they hit outside
//! it too, bounded per thread (see [`crate::near`]).
//!
//! # Reads share nothing they write
//!
//! A hit takes a copy of its entry (one allocation for the value bytes) instead of a reference
//! count on a shared one (values over `SHARE_ABOVE` bytes, whose copy would cost more than the
//! contention, are shared), and reads the clocks without locking: threads hitting the same hot
//! entries do not contend for a cache line. Only invalidations and fills write shared state.

use crate::key::Key;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// Something a cached read depends on and a write invalidates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Tag {
    /// Every entry depends on this tag; invalidating it drops the whole cache.
    All,
    /// Any change to the table (by its PostgreSQL oid). Multi-row reads depend on it.
    Table(u32),
    /// A change to rows of the table whose primary keys are unknown. Point reads depend on it.
    Rows(u32),
    /// A change to one row, identified by [`crate::key::row_id`].
    Row(u128),
}

/// Row clocks per store.
const ROW_CLOCKS: usize = 1 << 20;
/// The clocks a row tag raises.
const ROW_HASHES: usize = 4;

#[derive(Debug, Default)]
struct TableClock {
    table: AtomicU64,
    rows: AtomicU64,
}

/// Makes each store's copies on threads (see [`crate::near`]) its own.
static NEAR_IDS: AtomicU64 = AtomicU64::new(1);

/// Table clocks held by a store. Tables past this many share the last clock, so a write to any
/// of them invalidates the reads of all of them: more than needed, never less.
const TABLE_CLOCKS: usize = 4096;

/// Oids remembered with their clock; past this, new oids use the overflow clock unremembered.
const MAX_REMEMBERED_TABLES: usize = 64 * 1024;

/// A dependency resolved to the clock cell it reads (a table's index in the store's clocks), so
/// a hit does no map lookups and takes no reference counts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Dep {
    Table(u32),
    Rows(u32),
    Row(u128),
}

/// Dependencies, inline up to two (a point read has two, a one-table list one).
#[derive(Clone, Debug)]
pub(crate) enum Deps {
    Inline(u8, [Dep; 2]),
    Heap(Box<[Dep]>),
}

impl Deps {
    fn new(deps: &[Dep]) -> Deps {
        match *deps {
            [] => Deps::Inline(0, [Dep::Row(0); 2]),
            [a] => Deps::Inline(1, [a, Dep::Row(0)]),
            [a, b] => Deps::Inline(2, [a, b]),
            _ => Deps::Heap(deps.into()),
        }
    }

    fn as_slice(&self) -> &[Dep] {
        match self {
            Deps::Inline(len, deps) => &deps[..usize::from(*len)],
            Deps::Heap(deps) => deps,
        }
    }
}

/// A cached value with the stamp and dependencies that decide its freshness.
#[derive(Clone)]
pub struct Entry {
    pub(crate) stamp: u64,
    pub(crate) expires: Instant,
    /// Until when the entry is kept past `expires` (the table's stale windows), still subject
    /// to every invalidation; `expires` when it has none.
    keep: Instant,
    pub(crate) deps: Deps,
    bytes: Value,
}

/// Values larger than this are shared by reference count rather than copied on each hit.
const SHARE_ABOVE: usize = 16 * 1024;

#[derive(Clone)]
enum Value {
    Copied(Box<[u8]>),
    Shared(std::sync::Arc<[u8]>),
}

impl Value {
    fn new(bytes: Vec<u8>) -> Value {
        if bytes.len() > SHARE_ABOVE {
            Value::Shared(bytes.into())
        } else {
            Value::Copied(bytes.into())
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Value::Copied(bytes) => bytes,
            Value::Shared(bytes) => bytes,
        }
    }
}

impl Entry {
    /// The serialized value.
    pub fn bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    /// How long ago its TTL ran out (zero while it has not).
    pub fn expired_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.expires)
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("stamp", &self.stamp)
            .field("deps", &self.deps.as_slice().len())
            .field("bytes", &self.bytes().len())
            .finish()
    }
}

#[derive(Clone)]
struct EntryWeight;

impl quick_cache::Weighter<u128, Entry> for EntryWeight {
    fn weight(&self, _: &u128, entry: &Entry) -> u64 {
        (entry.bytes().len() + 24 * entry.deps.as_slice().len() + 96) as u64
    }
}

/// The in-process store: a byte-bounded map of entries plus the version clock.
///
/// ```
/// use sqlacache_core::{MemoryStore, Tag, key::Key};
/// use std::time::Duration;
/// let store = MemoryStore::new(1 << 20);
/// let key = Key(1);
/// let stamp = store.stamp();                 // read BEFORE the database
/// store.invalidate(&[Tag::Table(7)]);        // a write commits meanwhile
/// let stored = store.put(key, &[Tag::Table(7)], stamp, Duration::from_secs(60), b"old".to_vec());
/// assert!(!stored, "a fill older than an invalidation of its tags is refused");
/// assert!(store.get(key).is_none());
/// ```
pub struct MemoryStore {
    entries: quick_cache::sync::Cache<u128, Entry, EntryWeight>,
    seq: AtomicU64,
    all: AtomicU64,
    /// Table oid to its index in `clocks`.
    tables: RwLock<HashMap<u32, u32, quick_cache::DefaultHashBuilder>>,
    /// Tables given the shared overflow clock (or, past the map's cap, not remembered at all).
    shared_clocks: AtomicU64,
    clocks: Box<[TableClock]>,
    rows: Box<[AtomicU64]>,
    /// Tells this store's copies on threads from other stores' (changed to disown them all).
    near_id: AtomicU64,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.entries.len())
            .field("weight", &self.entries.weight())
            .field("capacity", &self.entries.capacity())
            .field("seq", &self.seq.load(SeqCst))
            .finish()
    }
}

impl MemoryStore {
    /// A store that holds at most `capacity_bytes` of entry weight.
    pub fn new(capacity_bytes: u64) -> MemoryStore {
        let estimated_items = (capacity_bytes / 512).clamp(16, 1 << 22) as usize;
        MemoryStore {
            entries: quick_cache::sync::Cache::with_weighter(estimated_items, capacity_bytes, EntryWeight),
            seq: AtomicU64::new(0),
            all: AtomicU64::new(0),
            tables: RwLock::default(),
            shared_clocks: AtomicU64::new(0),
            clocks: (0..TABLE_CLOCKS).map(|_| TableClock::default()).collect(),
            rows: (0..ROW_CLOCKS).map(|_| AtomicU64::new(0)).collect(),
            near_id: AtomicU64::new(NEAR_IDS.fetch_add(1, Relaxed)),
        }
    }

    /// The current sequence. A fill must read it before it queries the database.
    pub fn stamp(&self) -> u64 {
        self.seq.load(SeqCst)
    }

    /// A fresh, unexpired entry, or `None`. Stale entries are removed, and expired ones past
    /// the time they are kept for.
    pub fn get(&self, key: Key) -> Option<Entry> {
        let entry = self.entries.get(&key.0)?;
        if self.is_live(&entry, Instant::now()) {
            Some(entry)
        } else {
            // Unless a fresh fill replaced it meanwhile.
            self.entries.remove_if(&key.0, |e| !self.is_fresh(e) || e.keep <= Instant::now());
            None
        }
    }

    /// An entry whose TTL ran out but which is still kept (see [`MemoryStore::put_keeping`])
    /// and was not invalidated: the same check of its tags as [`MemoryStore::get`], only not of
    /// its TTL.
    pub fn get_expired(&self, key: Key) -> Option<Entry> {
        let entry = self.entries.get(&key.0)?;
        let now = Instant::now();
        (entry.expires <= now && entry.keep > now && self.is_fresh(&entry)).then_some(entry)
    }

    fn is_live(&self, entry: &Entry, now: Instant) -> bool {
        entry.expires > now && self.is_fresh(entry)
    }

    /// Stores a value filled from the database. Returns `false`, storing nothing, when one of
    /// `deps` was invalidated after `stamp` was taken (the value may predate that write).
    pub fn put(&self, key: Key, deps: &[Tag], stamp: u64, ttl: Duration, bytes: Vec<u8>) -> bool {
        self.put_keeping(key, deps, stamp, ttl, Duration::ZERO, bytes)
    }

    /// [`MemoryStore::put`], keeping the entry for `keep` past its TTL, for
    /// [`MemoryStore::get_expired`]: stale-while-revalidate and stale-if-error. Invalidations
    /// reach it as before; only its expiry is extended.
    pub fn put_keeping(
        &self,
        key: Key,
        deps: &[Tag],
        stamp: u64,
        ttl: Duration,
        keep: Duration,
        bytes: Vec<u8>,
    ) -> bool {
        let deps: Vec<Dep> = deps
            .iter()
            .filter_map(|tag| match *tag {
                Tag::All => None,
                Tag::Table(t) => Some(Dep::Table(self.table(t))),
                Tag::Rows(t) => Some(Dep::Rows(self.table(t))),
                Tag::Row(r) => Some(Dep::Row(r)),
            })
            .collect();
        let expires = Instant::now().checked_add(ttl).unwrap_or_else(far_future);
        let keep = expires.checked_add(keep).unwrap_or(expires);
        let entry = Entry { stamp, expires, keep, deps: Deps::new(&deps), bytes: Value::new(bytes) };
        if !self.is_fresh(&entry) {
            return false;
        }
        self.entries.insert(key.0, entry);
        true
    }

    /// Removes one entry (for example one whose bytes no longer decode).
    pub fn remove(&self, key: Key) {
        self.entries.remove(&key.0);
    }

    /// Invalidates `tags`: every entry depending on one of them and stamped before this call
    /// becomes stale. The call is complete when it returns.
    pub fn invalidate(&self, tags: &[Tag]) {
        let seq = self.seq.fetch_add(1, SeqCst) + 1;
        for tag in tags {
            match *tag {
                Tag::All => {
                    self.all.fetch_max(seq, SeqCst);
                }
                Tag::Table(t) => {
                    self.clock(self.table(t)).table.fetch_max(seq, SeqCst);
                }
                Tag::Rows(t) => {
                    self.clock(self.table(t)).rows.fetch_max(seq, SeqCst);
                }
                Tag::Row(r) => {
                    for i in 0..ROW_HASHES {
                        self.rows[row_clock(r, i)].fetch_max(seq, SeqCst);
                    }
                }
            }
        }
        if tags.contains(&Tag::All) {
            self.entries.clear();
        }
    }

    /// Test support: replaces every entry's bytes with bytes that do not decode, keeping its
    /// stamp and dependencies.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn scramble_for_tests(&self) {
        let keys: Vec<u128> = self.entries.iter().map(|(k, _)| k).collect();
        for key in keys {
            if let Some(entry) = self.entries.get(&key) {
                self.entries.insert(key, Entry { bytes: Value::new(vec![0xFF]), ..entry });
            }
        }
        // Copies taken on threads are of the old bytes: disowned.
        self.near_id.store(NEAR_IDS.fetch_add(1, Relaxed), SeqCst);
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the store holds no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total weight of the entries held, in bytes.
    pub fn weight(&self) -> u64 {
        self.entries.weight()
    }

    /// The configured weight capacity, in bytes.
    pub fn capacity(&self) -> u64 {
        self.entries.capacity()
    }

    /// The row clocks that hold an invalidation (of a row or a value of a tracked column; each
    /// raises two) and the bytes of the fixed table they are in.
    pub fn tag_memory(&self) -> (usize, u64) {
        let set = self.rows.iter().filter(|clock| clock.load(Relaxed) != 0).count();
        (set, (ROW_CLOCKS * std::mem::size_of::<AtomicU64>()) as u64)
    }

    /// The identity of this store for the copies threads keep of its entries.
    pub(crate) fn near_id(&self) -> u64 {
        self.near_id.load(Relaxed)
    }

    fn is_fresh(&self, entry: &Entry) -> bool {
        self.fresh(entry.stamp, &entry.deps)
    }

    /// Whether a value stamped `stamp` and depending on `deps` is fresh: no tag of it (nor
    /// `All`) invalidated after the stamp. Lock-free: loads of clocks only.
    #[inline]
    pub(crate) fn fresh(&self, stamp: u64, deps: &Deps) -> bool {
        if self.all.load(SeqCst) > stamp {
            return false;
        }
        deps.as_slice().iter().all(|dep| match dep {
            Dep::Table(t) => self.clock(*t).table.load(SeqCst) <= stamp,
            Dep::Rows(t) => self.clock(*t).rows.load(SeqCst) <= stamp,
            // One clock of the row not raised since the stamp proves the row was not written.
            Dep::Row(r) => (0..ROW_HASHES).any(|i| self.rows[row_clock(*r, i)].load(SeqCst) <= stamp),
        })
    }

    fn clock(&self, index: u32) -> &TableClock {
        &self.clocks[index as usize]
    }

    /// The index of a table's clock, assigned on first use.
    fn table(&self, oid: u32) -> u32 {
        if let Some(&index) = self.tables.read().unwrap_or_else(|e| e.into_inner()).get(&oid) {
            return index;
        }
        let mut tables = self.tables.write().unwrap_or_else(|e| e.into_inner());
        if let Some(&index) = tables.get(&oid) {
            return index;
        }
        let overflow = TABLE_CLOCKS as u32 - 1;
        let next = (tables.len() as u32).min(overflow);
        if next == overflow {
            self.shared_clocks.fetch_add(1, Relaxed);
        }
        // The map itself is bounded too (tables dropped and made again get new oids): past the
        // cap, new oids share the overflow clock without being remembered.
        if tables.len() < MAX_REMEMBERED_TABLES {
            tables.insert(oid, next);
        }
        next
    }

    /// How many tables were given the shared overflow clock: their reads are invalidated
    /// together, more than needed.
    pub fn tables_sharing_a_clock(&self) -> u64 {
        self.shared_clocks.load(Relaxed)
    }
}

/// An expiry for TTLs too long to add to now (the entry then lives until evicted).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

/// The `i`th row clock of a row tag: from the `i`th quarter of its identity (a digest already).
#[inline]
fn row_clock(row: u128, i: usize) -> usize {
    ((row >> (32 * i)) as usize) % ROW_CLOCKS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_clocks_never_forget_and_rarely_widen() {
        let store = MemoryStore::new(1 << 26);
        let ttl = Duration::from_secs(60);
        let row = |i: u128| crate::key::row_id(1, &[i.to_string()]);
        // Entries of 20,000 rows, then writes to 20,000 other rows, far more than fit the
        // clocks one to one.
        let stamp = store.stamp();
        for i in 0..20_000 {
            assert!(store.put(Key(i), &[Tag::Row(row(i))], stamp, ttl, vec![1]));
        }
        for i in 20_000..40_000 {
            store.invalidate(&[Tag::Row(row(i))]);
        }
        let kept = (0..20_000).filter(|&i| store.get(Key(i)).is_some()).count();
        assert!(kept > 19_990, "writes to other rows made {} of 20,000 entries stale", 20_000 - kept);
        // A write to each of their own rows reaches every one of them.
        for i in 0..20_000 {
            store.invalidate(&[Tag::Row(row(i))]);
        }
        assert!((0..20_000).all(|i| store.get(Key(i)).is_none()));
        let (set, bytes) = store.tag_memory();
        assert!(set > 20_000 && bytes == 8 << 20, "{set} {bytes}");
    }
}
