//! Per-thread copies of values the store holds, kept decoded where the reader can clone them.
//!
//! A hit in the shared store copies its entry and decodes it; both cost more than the rest of
//! the hit. A thread that hit an entry once keeps a copy of it here, keyed by the exact bytes
//! its key is made of (no digest is taken) and stamped and tagged like the entry: a later hit on
//! this thread takes nothing but reads of the clocks and a clone of the value. Nothing here is
//! shared between threads, so hits on different cores write no common memory.
//!
//! # Freshness
//!
//! A copy carries its entry's stamp, expiry and dependencies, and is served only while
//! [`MemoryStore`]'s own test of an entry (see the module documentation of the store) passes for
//! them: every invalidation that would make the entry stale makes the copy stale too, whether or
//! not the entry is still in the store. A copy is never served past its TTL (the stale windows
//! are the store's business).
//!
//! # Memory
//!
//! Each thread has `SLOTS` slots, one copy each, in sets of `WAYS` chosen by a hash of the key;
//! a new copy takes the place of an older copy of its key, or of an empty slot of its set, or
//! else of one of the set's copies in turn. Copies of values stored in more than `LARGEST` bytes are not kept, and a
//! thread's copies together stay under `BUDGET` bytes of stored size (when a new one would pass
//! it, the thread's copies are dropped first). A decoded value may take more room than its
//! stored form (the spare capacity of its strings, padding); the bound is by stored size.

use crate::store::{Deps, Entry, MemoryStore};
use std::any::Any;
use std::cell::RefCell;
use std::hash::BuildHasher;
use std::time::Instant;

/// Slots per thread.
const SLOTS: usize = 1024;
/// Slots a key may take.
const WAYS: usize = 4;
/// The largest stored value a thread keeps a copy of.
const LARGEST: usize = 64 * 1024;
/// The stored size of all of a thread's copies together.
const BUDGET: usize = 4 * 1024 * 1024;

/// What a thread keeps of a value.
enum Held {
    /// The value itself, for types the reader can clone.
    Value(Box<dyn Any>),
    /// Its stored form, decoded on each hit (without copying it first).
    Bytes(Box<[u8]>),
}

/// A copy of a value as a hit finds it: decoded, or its stored form to decode.
#[derive(Debug)]
pub enum Near<'a, R> {
    /// The value, to clone.
    Value(&'a R),
    /// The stored form, to decode.
    Bytes(&'a [u8]),
}

struct Slot {
    /// The store it was copied from (see [`MemoryStore::near_id`]).
    store: u64,
    /// The hash of `exact`, compared first.
    hash: u64,
    exact: Box<[u8]>,
    stamp: u64,
    expires: Instant,
    deps: Deps,
    size: usize,
    held: Held,
}

#[derive(Default)]
struct Copies {
    slots: Vec<Option<Slot>>,
    size: usize,
    hasher: quick_cache::DefaultHashBuilder,
    /// Which way of a full set the next new copy takes.
    turn: usize,
}

impl Copies {
    /// The hash of a key and the first slot of its set.
    fn set(&self, exact: &[u8]) -> (u64, usize) {
        let hash = self.hasher.hash_one(exact);
        (hash, (hash as usize % (SLOTS / WAYS)) * WAYS)
    }

    fn find(&self, store: u64, hash: u64, first: usize, exact: &[u8]) -> Option<usize> {
        let ways = self.slots.get(first..first + WAYS)?;
        let way = ways
            .iter()
            .position(|slot| slot.as_ref().is_some_and(|s| s.hash == hash && s.store == store && *s.exact == *exact))?;
        Some(first + way)
    }
}

thread_local! {
    static COPIES: RefCell<Copies> = RefCell::default();
}

impl MemoryStore {
    /// Answers from this thread's copy of the entry whose key is made of `exact`, if it holds
    /// one that is fresh and unexpired: `answer` gets the copy and makes the result (`None`,
    /// for example when the copy is not of type `R`, counts as no copy).
    ///
    /// ```
    /// use sqlacache_core::{MemoryStore, Tag, key::Key};
    /// use sqlacache_core::near::Near;
    /// use std::time::Duration;
    /// let store = MemoryStore::new(1 << 20);
    /// let (key, exact) = (Key(1), b"the bytes of key 1");
    /// store.put(key, &[Tag::Table(7)], store.stamp(), Duration::from_secs(60), b"stored".to_vec());
    /// let entry = store.get(key).unwrap();
    /// store.keep_near(exact, &entry, Some(String::from("decoded")));
    /// let answer = |copy: Near<'_, String>| match copy { Near::Value(s) => Some(s.clone()), Near::Bytes(_) => None };
    /// assert_eq!(store.near(exact, answer).as_deref(), Some("decoded"));
    /// store.invalidate(&[Tag::Table(7)]);
    /// assert_eq!(store.near(exact, answer), None, "an invalidation reaches the copies too");
    /// ```
    #[inline]
    pub fn near<R: 'static, T>(&self, exact: &[u8], answer: impl FnOnce(Near<'_, R>) -> Option<T>) -> Option<T> {
        let id = self.near_id();
        COPIES.with(|copies| {
            let copies = copies.try_borrow().ok()?;
            let (hash, first) = copies.set(exact);
            let slot = copies.slots[copies.find(id, hash, first, exact)?].as_ref()?;
            if slot.expires <= Instant::now() || !self.fresh(slot.stamp, &slot.deps) {
                return None;
            }
            match &slot.held {
                Held::Value(value) => answer(Near::Value(value.downcast_ref::<R>()?)),
                Held::Bytes(bytes) => answer(Near::Bytes(bytes)),
            }
        })
    }

    /// Keeps a copy on this thread of `entry` (just found by [`MemoryStore::get`] under the key
    /// made of `exact`): `value` decoded, or its stored form when `value` is `None`.
    pub fn keep_near<R: 'static>(&self, exact: &[u8], entry: &Entry, value: Option<R>) {
        let size = entry.bytes().len() + exact.len();
        if entry.bytes().len() > LARGEST {
            return;
        }
        let held = match value {
            Some(value) => Held::Value(Box::new(value)),
            None => Held::Bytes(entry.bytes().into()),
        };
        let id = self.near_id();
        let mut slot = Slot {
            store: id,
            hash: 0,
            exact: exact.into(),
            stamp: entry.stamp,
            expires: entry.expires,
            deps: entry.deps.clone(),
            size,
            held,
        };
        COPIES.with(|copies| {
            let Ok(mut copies) = copies.try_borrow_mut() else { return };
            if copies.slots.is_empty() {
                copies.slots.resize_with(SLOTS, || None);
            }
            let (hash, first) = copies.set(exact);
            slot.hash = hash;
            let index = match copies.find(id, hash, first, exact) {
                Some(same) => same,
                None => match copies.slots[first..first + WAYS].iter().position(Option::is_none) {
                    Some(empty) => first + empty,
                    None => {
                        copies.turn = (copies.turn + 1) % WAYS;
                        first + copies.turn
                    }
                },
            };
            let freed = copies.slots[index].as_ref().map_or(0, |old| old.size);
            copies.size -= freed;
            if copies.size + size > BUDGET {
                copies.slots.iter_mut().for_each(|slot| *slot = None);
                copies.size = 0;
            }
            copies.size += size;
            // (Dropping the copy it replaces runs no code of ours: nothing reads the copies.)
            copies.slots[index] = Some(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Key;
    use crate::Tag;
    use std::time::Duration;

    fn value(copy: Near<'_, u32>) -> Option<u32> {
        match copy {
            Near::Value(v) => Some(*v),
            Near::Bytes(b) => Some(u32::from(b[0])),
        }
    }

    #[test]
    fn copies_follow_the_entry_they_were_taken_from() {
        let store = MemoryStore::new(1 << 20);
        let deps = [Tag::Row(5), Tag::Rows(9)];
        store.put(Key(1), &deps, store.stamp(), Duration::from_secs(60), vec![7]);
        let entry = store.get(Key(1)).unwrap();
        store.keep_near(b"k1", &entry, Some(70_u32));
        assert_eq!(store.near(b"k1", value), Some(70));
        assert_eq!(store.near(b"k2", value), None, "another key");
        assert_eq!(store.near(b"k1", |_: Near<'_, u64>| Some(0)), None, "another type");
        let other = MemoryStore::new(1 << 20);
        assert_eq!(other.near(b"k1", value), None, "another store");
        // A write to another row leaves it; one to its row, or its table's unknown rows, not.
        store.invalidate(&[Tag::Row(6)]);
        assert_eq!(store.near(b"k1", value), Some(70));
        store.invalidate(&[Tag::Rows(9)]);
        assert_eq!(store.near(b"k1", value), None);
        // Evicted from the store, a copy still answers while its tags hold, as the entry would.
        store.put(Key(2), &[Tag::Table(3)], store.stamp(), Duration::from_secs(60), vec![8]);
        store.keep_near(b"k2", &store.get(Key(2)).unwrap(), None::<u32>);
        store.remove(Key(2));
        assert_eq!(store.near(b"k2", value), Some(8), "held as its stored form");
        store.invalidate(&[Tag::All]);
        assert_eq!(store.near(b"k2", value), None);
    }

    #[test]
    fn copies_expire_with_their_entry_and_stay_on_their_thread() {
        let store = MemoryStore::new(1 << 20);
        store.put(Key(1), &[Tag::Table(1)], store.stamp(), Duration::from_millis(30), vec![1]);
        store.keep_near(b"k", &store.get(Key(1)).unwrap(), Some(1_u32));
        assert_eq!(store.near(b"k", value), Some(1));
        std::thread::scope(|s| {
            s.spawn(|| assert_eq!(store.near(b"k", value), None, "another thread has no copy"));
        });
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(store.near(b"k", value), None, "expired");
    }

    #[test]
    fn a_hundred_keys_keep_their_copies() {
        let store = MemoryStore::new(1 << 20);
        for i in 0..100_u128 {
            store.put(Key(i), &[], store.stamp(), Duration::from_secs(60), vec![i as u8]);
            store.keep_near(&i.to_le_bytes(), &store.get(Key(i)).unwrap(), Some(i as u32));
        }
        let kept = (0..100_u128).filter(|i| store.near(&i.to_le_bytes(), value) == Some(*i as u32)).count();
        // Four ways to a set of 256: a set is full past four only by rare chance.
        assert!(kept >= 95, "{kept}");
    }

    #[test]
    fn a_thread_keeps_copies_within_its_budget() {
        let store = MemoryStore::new(1 << 30);
        let big = vec![0_u8; LARGEST];
        for i in 0..(2 * BUDGET / LARGEST) as u128 {
            store.put(Key(i), &[], store.stamp(), Duration::from_secs(60), big.clone());
            store.keep_near(&i.to_le_bytes(), &store.get(Key(i)).unwrap(), None::<u32>);
            let size = COPIES.with(|c| c.borrow().size);
            assert!(size <= BUDGET, "{size}");
        }
        store.put(Key(u128::MAX), &[], store.stamp(), Duration::from_secs(60), vec![0; LARGEST + 1]);
        store.keep_near(b"huge", &store.get(Key(u128::MAX)).unwrap(), None::<u32>);
        assert_eq!(store.near(b"huge", value), None, "too large to copy");
    }
}
