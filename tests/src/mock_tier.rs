//! A shared tier in memory that fails on purpose: the rules a pool builds on its shared tier
//! (the breaker, widening what was not delivered, gaps, leases) are tested with it exactly, one
//! fault at a time, without a server.
//!
//! A [`MockServer`] stands for one Redis; each [`MockClient`] for one process's connection to
//! it, with faults of its own (a command that fails, messages it does not hear), so that one
//! process can be cut off while the others are not.

use sqlacache_core::bus::{Body, Message};
use sqlacache_core::key::Key;
use sqlacache_core::tier::{BoxFuture, Bus, Epochs, Event, Lookup, Store, Subscription, TierError};
use sqlacache_core::Tag;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Default)]
struct State {
    tags: HashMap<String, String>,
    values: HashMap<u128, (Epochs, Vec<u8>)>,
    subscribers: Vec<(Arc<Faults>, mpsc::UnboundedSender<Event>)>,
    next_epoch: u64,
}

/// One shared tier; see [`MockServer::client`].
#[derive(Clone, Default)]
pub struct MockServer(Arc<Mutex<State>>);

/// The faults of one client.
#[derive(Default)]
struct Faults {
    /// Invalidations still to fail (not applied, not published).
    fail: AtomicUsize,
    /// Reads (lookups, tickets, stores of filled values) still to fail.
    fail_reads: AtomicUsize,
    /// Invalidation messages still to be lost on their way to this client's subscriptions.
    lose: AtomicUsize,
    /// This client's subscriptions hear nothing, and say nothing of it.
    deaf: AtomicBool,
    /// While set, what this client's subscriptions would hear waits here, in order: a
    /// subscription that falls behind (a stalled process) without losing anything.
    stalled: Mutex<Option<Vec<Held>>>,
    /// Commands this client ran (failed or not).
    calls: AtomicU64,
    /// While set, invalidations wait for a permit before they are applied.
    gate: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
    /// Invalidations waiting at the gate.
    held: AtomicUsize,
}

/// A message held back from one subscription, and where it goes when the stall ends.
type Held = (mpsc::UnboundedSender<Event>, String);

/// One process's connection to a [`MockServer`].
pub struct MockClient {
    server: MockServer,
    faults: Arc<Faults>,
}

impl MockServer {
    /// A new, empty tier.
    pub fn new() -> MockServer {
        MockServer::default()
    }

    /// A connection of its own to this tier.
    pub fn client(&self) -> Arc<MockClient> {
        Arc::new(MockClient { server: self.clone(), faults: Arc::default() })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many values it holds.
    pub fn values(&self) -> usize {
        self.state().values.len()
    }
}

impl MockClient {
    /// The next `n` invalidations this client sends fail, neither applied nor published.
    pub fn fail_invalidations(&self, n: usize) {
        self.faults.fail.store(n, Ordering::SeqCst);
    }

    /// The next `n` reads this client sends (lookups, tickets, stores of filled values) fail.
    pub fn fail_reads(&self, n: usize) {
        self.faults.fail_reads.store(n, Ordering::SeqCst);
    }

    /// How many reads are still due to fail.
    pub fn reads_to_fail(&self) -> usize {
        self.faults.fail_reads.load(Ordering::SeqCst)
    }

    /// The next `n` invalidation messages (not heartbeats) this client's subscriptions would
    /// hear are lost, without an error.
    pub fn lose_invalidations(&self, n: usize) {
        self.faults.lose.store(n, Ordering::SeqCst);
    }

    /// Whether this client's subscriptions hear nothing (without an error).
    pub fn deafen(&self, deaf: bool) {
        self.faults.deaf.store(deaf, Ordering::SeqCst);
    }

    /// While `stalled`, this client's subscriptions hear nothing yet; when it ends they hear,
    /// in order, everything that was held back.
    pub fn stall(&self, stalled: bool) {
        // Under the server's lock, so that nothing published meanwhile overtakes what was held.
        let _state = self.server.state();
        let mut held = self.faults.stalled.lock().unwrap_or_else(|e| e.into_inner());
        if stalled {
            held.get_or_insert_with(Vec::new);
        } else if let Some(held) = held.take() {
            for (to, message) in held {
                let _ = to.send(Event::Message(message));
            }
        }
    }

    /// From now on, each invalidation this client sends waits (before it is applied) until
    /// [`MockClient::release`] lets it through.
    pub fn hold_invalidations(&self) {
        *self.faults.gate.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(tokio::sync::Semaphore::new(0)));
    }

    /// How many invalidations wait at the gate.
    pub fn held(&self) -> usize {
        self.faults.held.load(Ordering::SeqCst)
    }

    /// Lets every held invalidation through, and holds none from now on.
    pub fn release(&self) {
        if let Some(gate) = self.faults.gate.lock().unwrap_or_else(|e| e.into_inner()).take() {
            gate.close();
        }
    }

    /// How many commands this client has run.
    pub fn calls(&self) -> u64 {
        self.faults.calls.load(Ordering::SeqCst)
    }

    /// Runs one command of `kind`; it fails if one of its kind is due to.
    fn run<T: Send + 'static>(
        &self,
        kind: Kind,
        command: impl FnOnce(&mut State) -> T,
    ) -> BoxFuture<'static, Result<T, TierError>> {
        self.faults.calls.fetch_add(1, Ordering::SeqCst);
        let due = match kind {
            Kind::Invalidation => take(&self.faults.fail),
            Kind::Read => take(&self.faults.fail_reads),
            Kind::Publish => false,
        };
        let result =
            if due { Err(TierError::msg("mock: the command failed")) } else { Ok(command(&mut self.server.state())) };
        Box::pin(std::future::ready(result))
    }
}

/// What a command does, for the faults that apply to it.
enum Kind {
    Read,
    Invalidation,
    Publish,
}

/// Takes one from `count`, if it is not 0.
fn take(count: &AtomicUsize) -> bool {
    count.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
}

fn tag_key(tag: &Tag) -> String {
    format!("{tag:?}")
}

fn epochs(state: &mut State, tags: &[Tag]) -> Epochs {
    let keys = std::iter::once(Tag::All).chain(tags.iter().copied().filter(|t| *t != Tag::All));
    let pairs = keys
        .map(|tag| {
            let key = tag_key(&tag);
            state.next_epoch += 1;
            let fresh = state.next_epoch.to_string();
            let epoch = state.tags.entry(key.clone()).or_insert(fresh).clone();
            (key, epoch)
        })
        .collect();
    Epochs::new(pairs)
}

fn fresh(state: &State, epochs: &Epochs) -> bool {
    epochs.pairs().iter().all(|(key, epoch)| state.tags.get(key) == Some(epoch))
}

fn publish(state: &mut State, message: &str) {
    let invalidation = Message::decode(message).is_some_and(|m| matches!(m.body, Body::Invalidate(_)));
    state.subscribers.retain(|(faults, to)| {
        let lost = faults.deaf.load(Ordering::SeqCst) || (invalidation && take(&faults.lose));
        if lost {
            return true;
        }
        if let Some(held) = faults.stalled.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            held.push((to.clone(), message.to_owned()));
            return !to.is_closed();
        }
        to.send(Event::Message(message.to_owned())).is_ok()
    });
}

impl Store for MockClient {
    type Ticket = Epochs;

    fn lookup<'a>(
        &'a self,
        key: Key,
        tags: &'a [Tag],
        _: Duration,
    ) -> BoxFuture<'a, Result<Lookup<Epochs>, TierError>> {
        self.run(Kind::Read, move |state| match state.values.get(&key.0) {
            Some((stored, bytes)) if fresh(state, stored) => Lookup::Hit(bytes.clone()),
            _ => Lookup::Miss(epochs(state, tags)),
        })
    }

    fn ticket<'a>(&'a self, tags: &'a [Tag], _: Duration) -> BoxFuture<'a, Result<Epochs, TierError>> {
        self.run(Kind::Read, move |state| epochs(state, tags))
    }

    fn put<'a>(
        &'a self,
        key: Key,
        ticket: &'a Epochs,
        _: Duration,
        bytes: &'a [u8],
    ) -> BoxFuture<'a, Result<(), TierError>> {
        self.run(Kind::Read, move |state| {
            state.values.insert(key.0, (ticket.clone(), bytes.to_vec()));
        })
    }

    fn invalidate<'a>(&'a self, tags: &'a [Tag]) -> BoxFuture<'a, Result<(), TierError>> {
        self.run(Kind::Invalidation, move |state| tags.iter().for_each(|t| drop(state.tags.remove(&tag_key(t)))))
    }
}

impl Bus for MockClient {
    fn invalidate_and_publish<'a>(&'a self, tags: &'a [Tag], message: &'a str) -> BoxFuture<'a, Result<(), TierError>> {
        let gate = self.faults.gate.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Box::pin(async move {
            if let Some(gate) = gate {
                self.faults.held.fetch_add(1, Ordering::SeqCst);
                // Closed on release: the error is the signal to go on.
                let _ = gate.acquire().await;
                self.faults.held.fetch_sub(1, Ordering::SeqCst);
            }
            self.run(Kind::Invalidation, move |state| {
                tags.iter().for_each(|t| drop(state.tags.remove(&tag_key(t))));
                if !message.is_empty() {
                    publish(state, message);
                }
            })
            .await
        })
    }

    fn publish<'a>(&'a self, message: &'a str) -> BoxFuture<'a, Result<(), TierError>> {
        self.run(Kind::Publish, move |state| publish(state, message))
    }

    fn subscribe(&self) -> Result<Box<dyn Subscription>, TierError> {
        let (to, from) = mpsc::unbounded_channel();
        self.server.state().subscribers.push((self.faults.clone(), to));
        Ok(Box::new(MockSubscription(from)))
    }

    fn wait_connected(&self, _: Duration) -> BoxFuture<'_, bool> {
        Box::pin(std::future::ready(true))
    }
}

struct MockSubscription(mpsc::UnboundedReceiver<Event>);

impl Subscription for MockSubscription {
    fn next(&mut self) -> BoxFuture<'_, Event> {
        Box::pin(async move { self.0.recv().await.unwrap_or(Event::Lost) })
    }

    fn reconnect(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}
