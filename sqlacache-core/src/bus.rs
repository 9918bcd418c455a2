//! Invalidation messages between processes, and the rules that decide when a process may trust
//! its in-process tier.
//!
//! Every process publishes its invalidations, and a heartbeat, on one channel. Messages carry
//! the publisher's id and a sequence number that counts every message it tried to send, and a
//! heartbeat the number below which all had reached the server, so a receiver sees a **gap**
//! when one was lost (a publish whose outcome was unknown, a dropped connection): a number it
//! has not heard that the publisher's heartbeat says had settled. (Messages sent at once by
//! several tasks of one publisher may overtake each other: that alone is no gap.) The channel
//! itself is at-most-once; these rules make a loss visible:
//!
//! - a gap in a publisher's numbers, a reconnect of the subscriber, or a lagging receiver means
//!   messages may be missing: the in-process tier is dropped before it serves again;
//! - a process trusts its in-process tier only for a **lease** after it sent a heartbeat that it
//!   has since received back: every message published before that heartbeat reached the server
//!   has then been received, so a write returned more than a lease ago has been applied. A bus
//!   that goes silent without an error (a frozen server, a half-open connection) therefore
//!   stops the in-process tier within a lease.
//!
//! This module holds the wire form and the bookkeeping, without any I/O, so the rules are
//! tested without a server.

use crate::store::Tag;
use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// A message on the bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The process (pool) that sent it.
    pub publisher: u64,
    /// Counts every message the publisher tried to send, from 1.
    pub seq: u64,
    /// What it says.
    pub body: Body,
}

/// What a [`Message`] says.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Body {
    /// These tags were invalidated.
    Invalidate(Vec<Tag>),
    /// These tags were invalidated by a strict write: every member that hears it acknowledges
    /// it (with [`Body::Ack`], on the publisher's own channel) once it has applied it.
    Acked(Vec<Tag>),
    /// The sender applied the publisher's message with this number (sent on the publisher's
    /// acknowledgement channel, numbered 0: acknowledgements are not counted for gaps).
    Ack(u64),
    /// The publisher is alive; sent at the publisher's `sent` (nanoseconds on its own clock),
    /// so that it can tell, when it receives its own heartbeat, when the bus last carried it.
    Heartbeat(u64),
    /// The sender's change-feed listener heard, without a break since the shared tier was last
    /// made whole, every change committed before the publisher's change-feed heartbeat sent at
    /// this time, and applied each to the shared tier (sent on the publisher's own channel,
    /// numbered 0). The publisher, whose listener lost its connection, then need not empty
    /// the shared tier.
    Vouch(u64),
}

impl Message {
    /// The text form: `<publisher hex> <seq>` and then `i <tags>` (`s <tags>` when acknowledged),
    /// `h <sent>`, `k <seq acknowledged>` or `v <sent vouched for>`.
    pub fn encode(&self) -> String {
        let mut out = format!("{:x} {} ", self.publisher, self.seq);
        match &self.body {
            Body::Heartbeat(sent) => {
                let _ = write!(out, "h {sent}");
            }
            Body::Ack(seq) => {
                let _ = write!(out, "k {seq}");
            }
            Body::Vouch(sent) => {
                let _ = write!(out, "v {sent}");
            }
            Body::Invalidate(tags) | Body::Acked(tags) => {
                out.push(if matches!(self.body, Body::Acked(_)) { 's' } else { 'i' });
                for tag in tags {
                    let _ = match tag {
                        Tag::All => write!(out, " a"),
                        Tag::Table(oid) => write!(out, " t{oid}"),
                        Tag::Rows(oid) => write!(out, " r{oid}"),
                        Tag::Row(id) => write!(out, " w{id:x}"),
                    };
                }
            }
        }
        out
    }

    /// Reads the text form; `None` if it is not one.
    pub fn decode(text: &str) -> Option<Message> {
        let mut words = text.split(' ');
        let publisher = u64::from_str_radix(words.next()?, 16).ok()?;
        let seq = words.next()?.parse().ok()?;
        let kind = words.next()?;
        let tags = |words: std::str::Split<'_, char>| words.map(decode_tag).collect::<Option<Vec<_>>>();
        let number = |mut words: std::str::Split<'_, char>| -> Option<u64> {
            let number = words.next()?.parse().ok()?;
            words.next().is_none().then_some(number)
        };
        let body = match kind {
            "h" => Body::Heartbeat(number(words)?),
            "k" => Body::Ack(number(words)?),
            "v" => Body::Vouch(number(words)?),
            "i" => Body::Invalidate(tags(words)?),
            "s" => Body::Acked(tags(words)?),
            _ => return None,
        };
        Some(Message { publisher, seq, body })
    }
}

fn decode_tag(word: &str) -> Option<Tag> {
    let (kind, rest) = word.split_at_checked(1)?;
    Some(match kind {
        "a" if rest.is_empty() => Tag::All,
        "t" => Tag::Table(rest.parse().ok()?),
        "r" => Tag::Rows(rest.parse().ok()?),
        "w" => Tag::Row(u128::from_str_radix(rest, 16).ok()?),
        _ => return None,
    })
}

/// The numbers of one publisher's invalidations, and which of them are still on their way.
///
/// Several tasks of one process publish at once, so message 8 may reach the server before
/// message 7: a heartbeat must not claim 8 while 7 is in flight, or a receiver that has not yet
/// heard 7 would take it for lost. So a heartbeat carries [`Outgoing::settled`], below which
/// every invalidation has reached the server or been given up (and is then widened).
#[derive(Debug, Default)]
pub struct Outgoing {
    last: u64,
    open: BTreeSet<u64>,
}

impl Outgoing {
    /// The next number, open until [`Outgoing::close`].
    pub fn take(&mut self) -> u64 {
        self.last += 1;
        self.open.insert(self.last);
        self.last
    }

    /// The message `seq` reached the server, or was given up.
    pub fn close(&mut self, seq: u64) {
        self.open.remove(&seq);
    }

    /// The highest number below which (inclusive) no message is on its way.
    pub fn settled(&self) -> u64 {
        self.open.first().map_or(self.last, |first| first - 1)
    }

    /// The last number taken.
    pub fn last(&self) -> u64 {
        self.last
    }
}

/// Publishers heard from: the highest number heard from each, and the lower ones not heard yet.
///
/// Messages of one publisher may arrive out of order (see [`Outgoing`]), so a number skipped is
/// only missing, not lost: it is lost when the publisher's heartbeat says it had settled. A
/// heartbeat comes every fraction of a lease, so a loss is still seen within one.
#[derive(Debug, Default)]
pub struct Sequences {
    heard: HashMap<u64, Heard>,
}

#[derive(Debug, Default)]
struct Heard {
    last: u64,
    missing: BTreeSet<u64>,
}

/// Publishers remembered; past this the map starts over (and the caller drops its tier).
const MAX_PUBLISHERS: usize = 4096;

/// Numbers of one publisher awaited at once; past this they count as lost.
const MAX_MISSING: u64 = 1024;

impl Sequences {
    /// Notes a message; returns `false` when messages of this publisher may have been lost
    /// before it, or the bookkeeping had to start over.
    pub fn note(&mut self, publisher: u64, seq: u64) -> bool {
        let Some(heard) = self.publisher(publisher, seq) else { return false };
        match heard {
            // First heard: only its first message proves nothing was missed. Anything it sent
            // before may have been sent after this process started listening (and lost), so a
            // later first number counts as a loss: a process that starts among running ones, or
            // reconnects, drops its tier once per publisher (it holds little by then).
            None => seq == 1,
            // A number already passed: one that overtook it arrived first, or a message sent
            // again (a publisher tries a message whose outcome it does not know again, with its
            // number).
            Some(heard) if seq <= heard.last => {
                heard.missing.remove(&seq);
                true
            }
            Some(heard) => {
                let skipped = seq - heard.last - 1;
                if skipped + heard.missing.len() as u64 > MAX_MISSING {
                    heard.missing.clear();
                    heard.last = seq;
                    return false;
                }
                heard.missing.extend(heard.last + 1..seq);
                heard.last = seq;
                true
            }
        }
    }

    /// Notes a heartbeat, which carries the number below which every invalidation of its
    /// publisher had reached the server (or was given up) before it was sent; returns `false`
    /// when this process has not heard one of those (a loss), or the bookkeeping had to start
    /// over.
    pub fn note_heartbeat(&mut self, publisher: u64, settled: u64) -> bool {
        let Some(heard) = self.publisher(publisher, settled) else { return false };
        match heard {
            // First heard: as for an invalidation, only "nothing sent yet" proves nothing missed.
            None => settled == 0,
            Some(heard) if settled > heard.last => {
                heard.last = settled;
                heard.missing.clear();
                false
            }
            Some(heard) => match heard.missing.first() {
                Some(&first) if first <= settled => {
                    heard.missing = heard.missing.split_off(&(settled + 1));
                    false
                }
                _ => true,
            },
        }
    }

    /// What is known of `publisher`: `Some(None)` when it was first heard now (with `seq`),
    /// `None` when the bookkeeping had to start over.
    fn publisher(&mut self, publisher: u64, seq: u64) -> Option<Option<&mut Heard>> {
        if !self.heard.contains_key(&publisher) {
            let full = self.heard.len() >= MAX_PUBLISHERS;
            if full {
                self.heard.clear();
            }
            self.heard.insert(publisher, Heard { last: seq, missing: BTreeSet::new() });
            return if full { None } else { Some(None) };
        }
        Some(self.heard.get_mut(&publisher))
    }

    /// The number up to which every message of `publisher` was heard (or counted lost), if
    /// any was since the bookkeeping last started over.
    pub fn last(&self, publisher: u64) -> Option<u64> {
        let heard = self.heard.get(&publisher)?;
        Some(heard.missing.first().map_or(heard.last, |first| first - 1))
    }

    /// Forgets everyone: after a reconnect, numbers restart from whatever arrives next.
    pub fn clear(&mut self) {
        self.heard.clear();
    }
}

/// When this process may serve its in-process tier.
///
/// The tier is trusted until `heard + lease`, where `heard` is when this process sent the last
/// heartbeat it has received back. When it loses trust (the lease ran out, or a loss was seen),
/// the next heartbeat received back first drops the tier, then trusts it again.
///
/// The lease is measured on the boot-time clock (`CLOCK_BOOTTIME` on Linux), which keeps
/// counting while the machine is suspended: on `Instant`'s clock, which stops then, a process
/// resumed after a sleep would still trust a tier that missed every invalidation sent meanwhile.
/// (Elsewhere it falls back to `Instant`.)
#[derive(Debug)]
pub struct Lease {
    /// The clock's reading when the lease was made.
    origin: u64,
    lease: Duration,
    /// Nanoseconds since `origin` until which the tier is trusted; 0 while it is not.
    until: AtomicU64,
    /// A loss was logged and no renewal has ended it yet.
    announced: AtomicBool,
    /// A heartbeat has given trust at least once.
    ever: AtomicBool,
}

impl Lease {
    /// A lease of `lease`, not yet trusted.
    pub fn new(lease: Duration) -> Lease {
        Lease {
            origin: clock(),
            lease,
            until: AtomicU64::new(0),
            announced: AtomicBool::new(false),
            ever: AtomicBool::new(false),
        }
    }

    /// Now, on this lease's clock, for a heartbeat's send time.
    pub fn now(&self) -> u64 {
        clock().saturating_sub(self.origin)
    }

    /// Whether the tier may be served now.
    pub fn trusted(&self) -> bool {
        self.now() < self.until.load(Ordering::Acquire)
    }

    /// Messages may have been lost: trust nothing until a heartbeat comes back.
    pub fn lose(&self) {
        self.until.store(0, Ordering::Release);
    }

    /// As [`lose`](Lease::lose), for a loss its caller has logged: the renewal that ends it
    /// says so, so that the log tells when the tier is trusted again.
    pub fn lose_announced(&self) {
        self.announced.store(true, Ordering::Release);
        self.lose();
    }

    /// Whether a loss was announced that no renewal has ended yet.
    pub fn lost_announced(&self) -> bool {
        self.announced.load(Ordering::Acquire)
    }

    /// Own heartbeat sent at `sent` came back: trusts the tier until `lease` after `sent`
    /// (never moving back). Whoever calls this drops the tier first if it was not
    /// [`trusted`](Lease::trusted): messages may have been missed while it was not.
    ///
    /// Returns whether this renewal ends a loss announced by
    /// [`lose_announced`](Lease::lose_announced) (once per such loss), for a log line.
    pub fn renew(&self, sent: u64) -> bool {
        let until = sent.saturating_add(u64::try_from(self.lease.as_nanos()).unwrap_or(u64::MAX));
        self.until.fetch_max(until, Ordering::AcqRel);
        if !self.trusted() {
            return false;
        }
        self.ever.store(true, Ordering::Release);
        self.announced.swap(false, Ordering::AcqRel)
    }

    /// Whether a heartbeat has ever given trust: the first one ends no loss worth a log line
    /// (there was nothing yet to miss).
    pub fn ever_trusted(&self) -> bool {
        self.ever.load(Ordering::Acquire)
    }

    /// The lease.
    pub fn duration(&self) -> Duration {
        self.lease
    }
}

/// Nanoseconds on the clock leases are measured with: since boot, suspended time included.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn clock() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    let seconds = u64::try_from(now.tv_sec).unwrap_or(0);
    seconds.saturating_mul(1_000_000_000).saturating_add(u64::try_from(now.tv_nsec).unwrap_or(0))
}

/// Nanoseconds on the clock leases are measured with: `Instant`'s, from the first reading.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn clock() -> u64 {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    u64::try_from(ORIGIN.get_or_init(std::time::Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_back_as_themselves() {
        let messages = [
            Message { publisher: u64::MAX, seq: 1, body: Body::Heartbeat(123) },
            Message {
                publisher: 7,
                seq: 99,
                body: Body::Invalidate(vec![Tag::All, Tag::Table(5), Tag::Rows(u32::MAX), Tag::Row(u128::MAX)]),
            },
            Message { publisher: 0, seq: 0, body: Body::Invalidate(vec![]) },
            Message { publisher: 3, seq: 4, body: Body::Acked(vec![Tag::Table(1), Tag::All]) },
            Message { publisher: 9, seq: 0, body: Body::Ack(u64::MAX) },
            Message { publisher: 10, seq: 0, body: Body::Vouch(42) },
        ];
        for message in messages {
            assert_eq!(Message::decode(&message.encode()), Some(message));
        }
    }

    #[test]
    fn malformed_messages_are_refused() {
        for text in [
            "",
            "x 1 h 2",
            "1 y h 2",
            "1 2 q",
            "1 2 h",
            "1 2 h 3 4",
            "1 2 i t",
            "1 2 i ax",
            "1 2 i z1",
            "1 2 i w-1",
            "1 0 k",
            "1 0 k x",
            "1 0 k 1 2",
            "1 0 v",
            "1 0 v 1 2",
            "1 2 s t",
        ] {
            assert_eq!(Message::decode(text), None, "{text:?}");
        }
    }

    #[test]
    fn a_publishers_first_number_says_whether_anything_was_missed() {
        let mut seen = Sequences::default();
        assert!(!seen.note(1, 5), "1 to 4 may have been lost before this process heard any");
        assert!(seen.note(1, 6));
        assert!(seen.note(2, 1), "a publisher's first message");
        assert!(seen.note(2, 1), "a message sent again is no loss");
        assert_eq!(seen.last(2), Some(1));
    }

    #[test]
    fn messages_that_overtake_each_other_are_no_loss() {
        let mut seen = Sequences::default();
        assert!(seen.note_heartbeat(1, 0));
        assert!(seen.note(1, 2), "1 is still on its way");
        assert!(seen.note(1, 4));
        assert_eq!(seen.last(1), Some(0), "everything up to 0 was heard");
        assert!(seen.note_heartbeat(1, 0), "a heartbeat that claims nothing missing");
        assert!(seen.note(1, 1));
        assert_eq!(seen.last(1), Some(2));
        assert!(seen.note(1, 3));
        assert_eq!(seen.last(1), Some(4));
        assert!(seen.note_heartbeat(1, 4), "all heard");
        assert!(seen.note(1, 4), "a repeat");
        assert_eq!(seen.last(1), Some(4), "a repeat does not move the count back");
    }

    #[test]
    fn a_heartbeat_reveals_an_invalidation_not_heard() {
        let mut seen = Sequences::default();
        assert!(seen.note_heartbeat(1, 0), "nothing sent yet");
        assert!(seen.note(1, 1));
        assert!(seen.note_heartbeat(1, 1));
        assert!(seen.note_heartbeat(1, 0), "an older heartbeat, overtaken");
        assert!(!seen.note_heartbeat(1, 2), "invalidation 2 reached the server and not here");
        assert!(seen.note(1, 3), "the loss was counted once");
        assert!(seen.note(1, 5), "4 may still be on its way");
        assert!(seen.note_heartbeat(1, 3));
        assert!(!seen.note_heartbeat(1, 4), "4 settled and was not heard");
        assert!(seen.note_heartbeat(1, 5), "counted once");
        assert!(seen.note(1, 4), "heard late: no new loss");
        assert!(!seen.note_heartbeat(2, 4), "first heard after it had sent invalidations");
    }

    #[test]
    fn too_many_numbers_awaited_count_as_lost() {
        let mut seen = Sequences::default();
        assert!(seen.note(1, 1));
        assert!(seen.note(1, 2 + MAX_MISSING), "1024 numbers on their way");
        assert!(!seen.note(1, 4 + MAX_MISSING), "one more is too many");
        assert_eq!(seen.last(1), Some(4 + MAX_MISSING), "and the count starts over");
        assert!(seen.note(1, 5 + MAX_MISSING));
    }

    #[test]
    fn a_heartbeat_carries_the_number_below_which_nothing_is_on_its_way() {
        let mut out = Outgoing::default();
        assert_eq!(out.settled(), 0);
        let (a, b, c) = (out.take(), out.take(), out.take());
        assert_eq!((a, b, c, out.last()), (1, 2, 3, 3));
        assert_eq!(out.settled(), 0);
        out.close(b);
        assert_eq!(out.settled(), 0, "1 is still on its way");
        out.close(a);
        assert_eq!(out.settled(), 2);
        out.close(c);
        out.close(c);
        assert_eq!(out.settled(), 3);
        assert_eq!(out.take(), 4);
        assert_eq!(out.settled(), 3);
    }

    #[test]
    fn too_many_publishers_start_the_bookkeeping_over() {
        let mut seen = Sequences::default();
        for publisher in 0..MAX_PUBLISHERS as u64 {
            assert!(seen.note(publisher, 1));
        }
        assert!(!seen.note(u64::MAX, 1));
        assert!(seen.note(u64::MAX, 2));
        assert!(!seen.note(0, 2), "forgotten: the next number is a first heard after 1");
    }

    /// The kernel's own count of time since boot, suspended time included (`/proc/uptime`, to
    /// the hundredth of a second) is the lease's clock: a sleep of the machine ends leases.
    #[cfg(target_os = "linux")]
    #[test]
    fn leases_are_measured_on_the_clock_that_counts_suspended_time() {
        let uptime = || {
            let text = std::fs::read_to_string("/proc/uptime").expect("/proc/uptime");
            let seconds: f64 = text.split_whitespace().next().and_then(|s| s.parse().ok()).expect("a number");
            (seconds * 1e9) as u64
        };
        let (before, ours, after) = (uptime(), clock(), uptime());
        let tolerance = 20_000_000; // the file's resolution, 10 ms, and some
        assert!(ours + tolerance >= before && ours <= after + tolerance, "{before} <= {ours} <= {after}");
    }

    #[test]
    fn trust_lasts_a_lease_after_the_heartbeat_was_sent() {
        let lease = Lease::new(Duration::from_secs(3600));
        assert!(!lease.trusted(), "not trusted before the first heartbeat");
        let sent = lease.now();
        lease.renew(sent);
        assert!(lease.trusted());
        lease.lose();
        assert!(!lease.trusted(), "a loss ends trust at once");
        lease.renew(lease.now());
        assert!(lease.trusted());
    }

    #[test]
    fn trust_ends_when_the_lease_runs_out() {
        let lease = Lease::new(Duration::from_millis(1));
        let sent = lease.now();
        lease.renew(sent);
        std::thread::sleep(Duration::from_millis(5));
        assert!(!lease.trusted());
        lease.renew(sent);
        assert!(!lease.trusted(), "an old heartbeat does not give trust back");
    }

    #[test]
    fn the_renewal_that_ends_an_announced_loss_says_so_once() {
        let lease = Lease::new(Duration::from_secs(1));
        // Long enough for a heartbeat sent at the start to be too old.
        std::thread::sleep(Duration::from_millis(1100));
        assert!(!lease.ever_trusted());
        assert!(!lease.renew(lease.now()), "a first heartbeat ends no announced loss");
        assert!(lease.ever_trusted());
        lease.lose();
        assert!(!lease.renew(lease.now()), "a loss nobody announced is not announced as over");
        lease.lose_announced();
        assert!(!lease.trusted());
        assert!(!lease.renew(0), "too old a heartbeat: trust is not back");
        assert!(lease.renew(lease.now()), "the renewal that gives trust back says the loss is over");
        assert!(!lease.renew(lease.now()), "once");
    }
}
