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
//! Row tags live in a bounded map. When a shard of that map grows past its bound, the older half
//! of its tags is dropped and the shard's *floor* is raised to the newest dropped sequence: an
//! entry stamped below the floor of a row tag it depends on counts as stale. The map never
//! forgets an invalidation; it only widens old ones.
//!
//! # Memory
//!
//! Entries are held in a [`quick_cache`] cache bounded by weight, where the weight of an entry is
//! `value bytes + 24 * dependencies + 96`. An entry heavier than a shard's share of the capacity
//! is not kept. Tag bookkeeping is outside that bound: a fixed table of `TABLE_CLOCKS` clocks
//! (64 KiB) and at most `ROW_SHARDS * ROW_TAGS_PER_SHARD` row tags of 24 bytes (about 50 MiB at
//! the extreme).
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
use std::sync::{Mutex, RwLock};
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

const ROW_SHARDS: usize = 64;
const ROW_TAGS_PER_SHARD: usize = 32 * 1024;

#[derive(Debug, Default)]
struct TableClock {
    table: AtomicU64,
    rows: AtomicU64,
}

/// One shard of the row tags, with the newest sequence it holds readable without the lock: an
/// entry stamped at or after it is fresh as far as this shard goes, so most hits never lock.
#[derive(Debug, Default)]
#[repr(align(128))]
struct RowSlot {
    newest: AtomicU64,
    shard: Mutex<RowShard>,
}

#[derive(Debug, Default)]
struct RowShard {
    tags: HashMap<u128, u64>,
    floor: u64,
}

impl RowShard {
    fn seq(&self, row: u128) -> u64 {
        self.tags.get(&row).copied().unwrap_or(self.floor)
    }

    fn set(&mut self, row: u128, seq: u64) {
        self.tags.insert(row, seq);
        if self.tags.len() > ROW_TAGS_PER_SHARD {
            let mut seqs: Vec<u64> = self.tags.values().copied().collect();
            let mid = seqs.len() / 2;
            let (_, median, _) = seqs.select_nth_unstable(mid);
            let median = *median;
            self.tags.retain(|_, s| *s > median);
            self.floor = self.floor.max(median);
        }
    }
}

/// Table clocks held by a store. Tables past this many share the last clock, so a write to any
/// of them invalidates the reads of all of them: more than needed, never less.
const TABLE_CLOCKS: usize = 4096;

/// Oids remembered with their clock; past this, new oids use the overflow clock unremembered.
const MAX_REMEMBERED_TABLES: usize = 64 * 1024;

/// A dependency resolved to the clock cell it reads (a table's index in the store's clocks), so
/// a hit does no map lookups and takes no reference counts.
#[derive(Clone, Copy, Debug)]
enum Dep {
    Table(u32),
    Rows(u32),
    Row(u128),
}

/// Dependencies, inline up to two (a point read has two, a one-table list one).
#[derive(Clone, Debug)]
enum Deps {
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
    stamp: u64,
    expires: Instant,
    /// Until when the entry is kept past `expires` (the table's stale windows), still subject
    /// to every invalidation; `expires` when it has none.
    keep: Instant,
    deps: Deps,
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
    tables: RwLock<HashMap<u32, u32>>,
    /// Tables given the shared overflow clock (or, past the map's cap, not remembered at all).
    shared_clocks: AtomicU64,
    clocks: Box<[TableClock]>,
    rows: Box<[RowSlot]>,
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
            tables: RwLock::new(HashMap::new()),
            shared_clocks: AtomicU64::new(0),
            clocks: (0..TABLE_CLOCKS).map(|_| TableClock::default()).collect(),
            rows: (0..ROW_SHARDS).map(|_| RowSlot::default()).collect(),
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
                    let slot = self.row_slot(r);
                    lock(&slot.shard).set(r, seq);
                    slot.newest.fetch_max(seq, SeqCst);
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

    /// The row tags held (rows and values of tracked columns written since each shard was last
    /// compacted) and the bytes their tables take: at most 64 shards of 32,768 tags, each a
    /// 16-byte identity, an 8-byte sequence and a control byte.
    pub fn tag_memory(&self) -> (usize, u64) {
        self.rows.iter().fold((0, 0), |(tags, bytes), slot| {
            let shard = lock(&slot.shard);
            (tags + shard.tags.len(), bytes + shard.tags.capacity() as u64 * 25)
        })
    }

    fn is_fresh(&self, entry: &Entry) -> bool {
        let stamp = entry.stamp;
        if self.all.load(SeqCst) > stamp {
            return false;
        }
        entry.deps.as_slice().iter().all(|dep| match dep {
            Dep::Table(t) => self.clock(*t).table.load(SeqCst) <= stamp,
            Dep::Rows(t) => self.clock(*t).rows.load(SeqCst) <= stamp,
            Dep::Row(r) => {
                let slot = self.row_slot(*r);
                slot.newest.load(SeqCst) <= stamp || lock(&slot.shard).seq(*r) <= stamp
            }
        })
    }

    fn row_slot(&self, row: u128) -> &RowSlot {
        &self.rows[(row as usize) % ROW_SHARDS]
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

fn lock(shard: &Mutex<RowShard>) -> std::sync::MutexGuard<'_, RowShard> {
    // A panic while holding the lock cannot leave a shard half-updated in a way that loses an
    // invalidation (inserts are single map operations), so poisoning is ignored.
    shard.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn entry_is_served_until_a_dependency_is_invalidated() {
        let store = MemoryStore::new(1 << 20);
        let stamp = store.stamp();
        assert!(store.put(Key(1), &[Tag::Table(1)], stamp, TTL, vec![1]));
        assert!(store.put(Key(2), &[Tag::Table(2)], stamp, TTL, vec![2]));
        assert_eq!(store.get(Key(1)).unwrap().bytes(), &[1]);
        store.invalidate(&[Tag::Table(1)]);
        assert!(store.get(Key(1)).is_none());
        assert!(store.get(Key(2)).is_some(), "other tables stay cached");
    }

    #[test]
    fn fill_that_straddles_an_invalidation_is_refused() {
        let store = MemoryStore::new(1 << 20);
        let stamp = store.stamp();
        store.invalidate(&[Tag::Row(9)]);
        assert!(!store.put(Key(1), &[Tag::Row(9)], stamp, TTL, vec![1]));
        let later = store.stamp();
        assert!(store.put(Key(1), &[Tag::Row(9)], later, TTL, vec![1]));
    }

    #[test]
    fn rows_sharing_a_shard_stay_apart() {
        let store = MemoryStore::new(1 << 20);
        let (a, b) = (5_u128, 5 + ROW_SHARDS as u128);
        assert!(store.put(Key(1), &[Tag::Row(a)], store.stamp(), TTL, vec![1]));
        assert!(store.put(Key(2), &[Tag::Row(b)], store.stamp(), TTL, vec![2]));
        store.invalidate(&[Tag::Row(b)]);
        assert!(store.get(Key(1)).is_some(), "a write to another row of the shard leaves this one");
        assert!(store.get(Key(2)).is_none());
        assert!(store.put(Key(2), &[Tag::Row(b)], store.stamp(), TTL, vec![2]));
        store.invalidate(&[Tag::Row(a)]);
        assert!(store.get(Key(1)).is_none(), "past the shard's newest sequence, the row itself is checked");
        assert!(store.get(Key(2)).is_some());
    }

    #[test]
    fn global_tag_drops_everything() {
        let store = MemoryStore::new(1 << 20);
        assert!(store.put(Key(1), &[Tag::Row(3)], store.stamp(), TTL, vec![1]));
        store.invalidate(&[Tag::All]);
        assert!(store.get(Key(1)).is_none());
    }

    #[test]
    fn a_ttl_too_long_for_the_clock_keeps_the_entry() {
        let store = MemoryStore::new(1 << 20);
        assert!(store.put(Key(1), &[Tag::Table(1)], store.stamp(), Duration::MAX, vec![1]));
        assert!(store.get(Key(1)).is_some());
    }

    #[test]
    fn tables_past_the_clock_table_share_one_clock() {
        let store = MemoryStore::new(1 << 20);
        for oid in 0..TABLE_CLOCKS as u32 + 10 {
            assert!(store.put(Key(u128::from(oid)), &[Tag::Table(oid)], store.stamp(), TTL, vec![1]));
        }
        let (last, beyond) = (TABLE_CLOCKS as u128 + 9, TABLE_CLOCKS as u32 + 5);
        store.invalidate(&[Tag::Table(beyond)]);
        assert!(store.get(Key(last)).is_none(), "tables sharing the overflow clock are invalidated together");
        assert!(store.get(Key(u128::from(beyond))).is_none());
        assert!(store.get(Key(7)).is_some(), "tables with a clock of their own stay precise");
        assert_eq!(store.tables_sharing_a_clock(), 11, "counted: the last own clock's table and ten beyond");
    }

    #[test]
    fn large_values_are_served_whole() {
        let store = MemoryStore::new(1 << 24);
        let large: Vec<u8> = (0..SHARE_ABOVE * 3).map(|i| i as u8).collect();
        assert!(store.put(Key(1), &[Tag::Table(1)], store.stamp(), TTL, large.clone()));
        assert_eq!(store.get(Key(1)).unwrap().bytes(), &large[..]);
        assert_eq!(store.get(Key(1)).unwrap().bytes(), &large[..], "a second hit sees the same bytes");
    }

    #[test]
    fn expired_entries_are_misses() {
        let store = MemoryStore::new(1 << 20);
        assert!(store.put(Key(1), &[], store.stamp(), Duration::ZERO, vec![1]));
        assert!(store.get(Key(1)).is_none());
    }

    #[test]
    fn row_tag_compaction_never_forgets_an_invalidation() {
        let mut shard = RowShard::default();
        for seq in 1..=(ROW_TAGS_PER_SHARD as u64 + 1) {
            shard.set(u128::from(seq), seq);
        }
        assert!(shard.tags.len() <= ROW_TAGS_PER_SHARD);
        // Every row invalidated at `seq` must still look invalidated to an entry stamped before it.
        for seq in 1..=(ROW_TAGS_PER_SHARD as u64 + 1) {
            assert!(shard.seq(u128::from(seq)) >= seq, "row {seq} forgotten");
        }
    }

    #[test]
    fn weight_stays_under_capacity() {
        let store = MemoryStore::new(64 * 1024);
        for i in 0..10_000u128 {
            store.put(Key(i), &[Tag::Table(1)], store.stamp(), TTL, vec![0; 100]);
        }
        assert!(store.weight() <= 64 * 1024, "weight {} over capacity", store.weight());
        assert!(store.len() > 100);
    }
}
