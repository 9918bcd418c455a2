//! Single-flight: concurrent misses of one key run one database read.
//!
//! The first miss of a key leads: it reads the database and offers the value to the store.
//! Misses of the same key that arrive meanwhile wait for the leader to finish, then look in the
//! store again. They never take the leader's value from the leader: only from the store, which
//! holds it only if the fill was accepted (no invalidation fell between the leader's stamp and its
//! store) and still fresh. A waiter that finds nothing (the leader failed, was cancelled, or its
//! fill was refused or invalidated) reads the database itself, without waiting again, so a read
//! waits for at most one other read.

use sqlacache_core::key::Key;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Shards of the in-flight map, so unrelated keys rarely share a lock.
const SHARDS: usize = 16;

#[derive(Default)]
struct Flight {
    done: AtomicBool,
    notify: Notify,
}

/// Keys are digests already: a fast hasher does (std's SipHash cost more than the rest of a join).
type Map = HashMap<u128, Arc<Flight>, quick_cache::DefaultHashBuilder>;

type Shards = [Mutex<Map>; SHARDS];

/// The fills in progress, by key.
pub(crate) struct Flights {
    shards: Arc<Shards>,
}

impl Default for Flights {
    fn default() -> Self {
        Flights { shards: Arc::new(std::array::from_fn(|_| Mutex::default())) }
    }
}

/// What a miss does: lead the fill, or wait for the one in progress.
pub(crate) enum Role {
    Leader(Lead),
    Waiter(Wait),
}

/// Held by the leader while it fills; dropping it (also on error or cancellation) releases the
/// waiters. It owns what it needs, so a fill may finish storing on a task of its own.
pub(crate) struct Lead {
    shards: Arc<Shards>,
    key: u128,
    flight: Arc<Flight>,
}

/// A fill in progress that a miss waits for.
pub(crate) struct Wait(Arc<Flight>);

fn shard(shards: &Shards, key: u128) -> &Mutex<Map> {
    &shards[(key as usize) % SHARDS]
}

impl Flights {
    /// Leads the fill of `key`, or joins the one in progress.
    pub fn join(&self, key: Key) -> Role {
        let mut map = shard(&self.shards, key.0).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(flight) = map.get(&key.0) {
            return Role::Waiter(Wait(flight.clone()));
        }
        let flight = Arc::new(Flight::default());
        map.insert(key.0, flight.clone());
        Role::Leader(Lead { shards: self.shards.clone(), key: key.0, flight })
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        let mut map = shard(&self.shards, self.key).lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&self.key).is_some_and(|f| Arc::ptr_eq(f, &self.flight)) {
            map.remove(&self.key);
        }
        drop(map);
        self.flight.done.store(true, Ordering::Release);
        self.flight.notify.notify_waiters();
    }
}

impl Wait {
    /// Returns once the leader has finished (stored, failed or been dropped).
    pub async fn finished(self) {
        let mut notified = std::pin::pin!(self.0.notify.notified());
        // Registered before the check, so a release between the two is not missed.
        notified.as_mut().enable();
        if self.0.done.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_leader_per_key_and_waiters_are_released_when_it_drops() {
        let flights = Flights::default();
        let lead = match flights.join(Key(7)) {
            Role::Leader(lead) => lead,
            Role::Waiter(_) => panic!("the first miss leads"),
        };
        assert!(matches!(flights.join(Key(8)), Role::Leader(_)), "another key has its own flight");
        let waits: Vec<Wait> = (0..3)
            .map(|_| match flights.join(Key(7)) {
                Role::Waiter(wait) => wait,
                Role::Leader(_) => panic!("a fill is in progress"),
            })
            .collect();
        let waiting = tokio::spawn(async move {
            for wait in waits {
                wait.finished().await;
            }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(lead);
        waiting.await.unwrap();
        assert!(matches!(flights.join(Key(7)), Role::Leader(_)), "the next miss leads again");
    }
}
