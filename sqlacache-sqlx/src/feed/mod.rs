//! The change feed: writes the pool never sees (other services, `psql`, migrations, cron jobs,
//! functions, `cache.inner()`), told by PostgreSQL itself.
//!
//! - **Triggers.** Each fed table has four statement-level `AFTER` triggers, one per event
//!   (`INSERT`, `UPDATE` and `DELETE` with transition tables, which PostgreSQL allows one event
//!   at a time, and `TRUNCATE`). Each statement sends one `pg_notify` on [`CHANNEL`] naming the
//!   table and the primary keys it touched; a message that would pass the payload limit names
//!   the table alone. PostgreSQL delivers notifications at commit, in commit order, and never
//!   for a rolled-back transaction.
//! - **Schema changes.** An event trigger (which needs a superuser to create) sends a message
//!   at the end of every DDL command; without it, call `CachedPool::refresh_catalog` after
//!   changing the schema elsewhere.
//! - **The listener.** Each pool listens on a connection of its own (not one of its pool's)
//!   and applies each message as an invalidation: in-process, and in Redis when the pool has it.
//! - **Its own writes.** A write the pool rewrites (to learn its rows) also ends with a comment
//!   naming the pool and the table, `/*sqlacache <pool> <table oid>*/`. A trigger fired straight
//!   by such a statement on that table (not by a cascade, nor by a statement that another
//!   trigger or a function the statement calls ran: `pg_trigger_depth() = 1` and no other line
//!   in `PG_CONTEXT`) prefixes its message with the pool, and that pool skips it: its write
//!   path invalidated those rows itself once the write committed. Every other pool applies it.
//! - **Nothing lost silently.** The pool publishes a heartbeat through the same channel (on a
//!   connection of its own, so a busy pool does not delay it) and
//!   serves cached reads only while it has heard one back within the lease: a heartbeat heard
//!   proves every commit before it was delivered. A lost connection, an error or a silence ends
//!   that trust; the in-process tier is dropped before cached reads are served again.
//! - **Vouching for the shared tier.** Changes missed by one listener were applied to Redis by
//!   every other pool that heard them. So a pool whose listener lost only its connection (not
//!   one that read an unreadable message or found triggers missing) asks, in the heartbeats it
//!   sends until it is trusted again, for a vouch: any pool whose listener has heard without a
//!   break since Redis was last made whole (at its own start or recovery), with the same
//!   configuration, and has delivered every invalidation it applied to Redis, answers on the
//!   bus once it has applied everything before that heartbeat. With a vouch the asking pool
//!   keeps Redis; without one within the lease (every listener lost the feed at once, as when
//!   PostgreSQL restarts, or the pool is alone) it empties Redis as well.
//!
//! Message forms (text, space-separated):
//!
//! - `r <table oid> <op> [c<column>,..] <row> <row> ...`: rows changed; `op` is `i`, `u` or `d`
//!   (an update names each row old and new); a row is its key, the text forms of its key's
//!   columns joined by `,`, each as is when it is an integer, else `x` and the hex of its UTF-8
//!   bytes, then, for each column of the `c` word (the hex of the names of the table's tracked
//!   columns when the trigger was installed), `;` and its value written alike (`_` for NULL);
//! - `t <table oid> <op>`: the table changed (a truncate is `op` `t`);
//! - `d <part> ...`: the schema changed; a part is `s` and the hex of a schema's name (something
//!   in it changed), `f` and the hex of a function's schema and name joined by `.`, or `*`
//!   (anything else: roles, extensions);
//! - `w <pool> <message>`: an `r` or `t` message of a statement that the pool `<pool>` (hex)
//!   marked as its own;
//! - `h <publisher> <sent>`: a pool's heartbeat;
//! - `v <publisher> <sent> <member> <fingerprint>`: a heartbeat that asks for a vouch, with the
//!   pool's id on the bus and its configuration's fingerprint, both in hex.

pub(crate) mod listener;
pub(crate) mod message;
pub(crate) mod sql;

pub use sql::FeedSql;
