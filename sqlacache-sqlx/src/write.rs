//! The write path: a statement's results pass through a [`WriteStream`], which notes the
//! rows it wrote and applies its invalidation before the caller sees the end; an abandoned
//! write finishes on a task of its own; a statement that may change its session runs on a
//! connection of its own.

use crate::engine::Engine;
use crate::local::Origin;
use crate::plan::{Plan, WritePlan};
use crate::rowkey::row_tags;
use crate::tiers::Delivery;
use crate::transaction::TxState;
use futures_core::stream::BoxStream;
use futures_util::{stream, StreamExt};
use sqlacache_core::Tag;
use sqlx::postgres::{PgConnection, PgQueryResult, PgRow};
use sqlx::{AssertSqlSafe, Either, Execute, Executor, Postgres, Row};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// One item of a statement's results.
pub(crate) type Step = Result<Either<PgQueryResult, PgRow>, sqlx::Error>;

/// Beyond this many written rows a write invalidates every point read of the table instead of
/// the tags of each row.
const MAX_ROWS: usize = 10_000;

/// The results of a write on the pool (`inner`), passed through with its invalidation.
pub(crate) fn on_pool(
    engine: &Arc<Engine>,
    plan: &Arc<Plan>,
    inner: BoxStream<'static, Step>,
    track_rows: bool,
    ddl: bool,
) -> BoxStream<'static, Step> {
    let tracker = Tracker::new(engine, plan, None, track_rows, ddl);
    Box::pin(PoolWrite(Some(WriteStream { inner, tracker: Some(tracker), publishing: None })))
}

/// The results of a statement in a transaction (`inner`): its invalidation waits for `COMMIT`
/// (kept in `state`), which `CachedTransaction::commit` runs to its end in the same way.
pub(crate) fn in_transaction<'e>(
    engine: &Arc<Engine>,
    plan: &Arc<Plan>,
    inner: BoxStream<'e, Step>,
    state: &'e mut TxState,
    track_rows: bool,
    ddl: bool,
) -> BoxStream<'e, Step> {
    let tracker = Tracker::new(engine, plan, Some(state), track_rows, ddl);
    Box::pin(WriteStream { inner, tracker: Some(tracker), publishing: None })
}

/// Runs a statement that may change its session (the plan's `taints`) on a connection taken
/// from the pool for it alone, which is closed afterwards instead of going back: the pool's
/// other connections stay as they were, and the cache keeps answering for them.
///
/// A string the library cannot read may also have begun a transaction that the caller means
/// to go on with on later calls (a hand-written `BEGIN` spelled in a way the parser does not
/// know): PostgreSQL is asked whether the connection is inside one. If it is, the connection
/// goes back to the pool as the raw pool would leave it, and the pool stops caching (see
/// [`crate::schema::Schema::session_changed`]).
///
/// The statement, its invalidation and the connection's end run on a task of their own, which
/// hands the results to the caller; a caller that stops listening does not stop it, so the
/// invalidation still follows the statement's completion.
pub(crate) fn isolated<Q: Execute<'static, Postgres> + Send + 'static>(
    engine: Arc<Engine>,
    plan: Arc<Plan>,
    query: Q,
    track_rows: bool,
    ddl: bool,
) -> BoxStream<'static, Step> {
    let (to_caller, mut from_task) = tokio::sync::mpsc::channel::<Step>(64);
    let running = engine.background_write();
    tokio::spawn(async move {
        let _running = running;
        let mut tracker = Tracker::new(&engine, &plan, None, track_rows, ddl);
        tracker.isolated = true;
        let mut conn = match engine.pool.acquire().await {
            Ok(conn) => conn,
            Err(error) => {
                // It never ran; what it would have invalidated is invalidated all the same.
                if let Some(delivery) = tracker.finish(Outcome::Failed(&error)) {
                    delivery.await;
                }
                let _ = to_caller.send(Err(error)).await;
                return;
            }
        };
        {
            let mut steps = WriteStream { inner: conn.fetch_many(query), tracker: Some(tracker), publishing: None };
            while let Some(step) = steps.next().await {
                // A caller that went away is no reason to stop: the rest still runs.
                let _ = to_caller.send(step).await;
            }
        }
        if plan.statements == 0 && inside_transaction(&mut conn).await {
            // Back to the pool as it is (when dropped).
            engine
                .schema
                .session_changed("a statement the library cannot read left its connection inside a transaction");
            return;
        }
        conn.close_on_drop();
    });
    Box::pin(stream::poll_fn(move |cx| from_task.poll_recv(cx)))
}

/// Whether a connection is inside a transaction block (or failed in one), asked of PostgreSQL:
/// a statement in a block starts after the block's transaction did, while one run on its own
/// starts its transaction. A connection that does not answer counts as inside one.
async fn inside_transaction(conn: &mut PgConnection) -> bool {
    // The simple protocol: in the extended one, each message of a statement restarts its
    // statement clock.
    const PROBE: &str = "SELECT pg_catalog.statement_timestamp() <> pg_catalog.transaction_timestamp()";
    let row = sqlx::raw_sql(AssertSqlSafe(PROBE)).fetch_one(conn).await;
    row.and_then(|row| row.try_get::<bool, _>(0)).unwrap_or(true)
}

/// A write on the pool. It runs in the caller's task; if the caller stops listening before its
/// end (a cancelled future), the rest of it is driven on a task of its own, so the invalidation
/// still follows the statement's completion rather than preceding it. (It is made inside
/// [`run`]'s first poll and polled at once, so it is never dropped before it started.)
struct PoolWrite(Option<WriteStream<'static>>);

impl futures_core::Stream for PoolWrite {
    type Item = Step;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Step>> {
        match &mut self.get_mut().0 {
            Some(stream) => stream.poll_next_unpin(cx),
            None => Poll::Ready(None),
        }
    }
}

impl Drop for PoolWrite {
    fn drop(&mut self) {
        if let Some(mut rest) = self.0.take().filter(|s| s.tracker.is_some()) {
            let engine = rest.tracker.as_ref().map(|t| t.engine.clone()).expect("filtered");
            engine.finish_in_background(async move { while rest.next().await.is_some() {} });
        }
    }
}

struct Tracker<'e> {
    engine: Arc<Engine>,
    plan: Arc<Plan>,
    sink: Option<&'e mut TxState>,
    /// Whether key columns of written rows are read from the output.
    track_rows: bool,
    /// The tags of the rows seen so far, and how many rows.
    rows: Vec<Tag>,
    rows_seen: usize,
    rows_lost: bool,
    /// Whether the statement changes the schema (it was counted as started).
    ddl: bool,
    /// The schema epoch before the statement ran: if it moved, the plan may miss a cascade.
    epoch: u64,
    /// It runs on a connection of its own (see [`isolated`]), which does not go back to the
    /// pool in whatever state a failure left it.
    isolated: bool,
}

enum Outcome<'a> {
    Done,
    Failed(&'a sqlx::Error),
    Abandoned,
}

impl<'e> Tracker<'e> {
    fn new(engine: &Arc<Engine>, plan: &Arc<Plan>, sink: Option<&'e mut TxState>, track_rows: bool, ddl: bool) -> Self {
        // A transaction's own earlier schema changes stay in flight until it commits; they are
        // this statement's own, not a concurrent surprise.
        let epoch = engine.schema.epoch();
        Tracker {
            engine: engine.clone(),
            plan: plan.clone(),
            sink,
            track_rows,
            rows: Vec::new(),
            rows_seen: 0,
            rows_lost: false,
            ddl,
            epoch,
            isolated: false,
        }
    }

    /// Notes a row; returns whether the caller should see it.
    fn observe(&mut self, row: &PgRow) -> bool {
        let WritePlan::Writes(w) = &self.plan.write else {
            return true;
        };
        let Some(rows) = w.rows.as_ref().filter(|_| self.track_rows) else {
            return true;
        };
        self.rows_seen += 1;
        if !self.rows_lost && (self.rows_seen > MAX_ROWS || row_tags(row, rows, &mut self.rows).is_none()) {
            self.rows_lost = true;
        }
        rows.forward
    }

    /// Applies the statement's invalidation (or, in a transaction, keeps it for COMMIT), and
    /// returns what is left to deliver to the shared tier and the other processes.
    fn finish(mut self, outcome: Outcome<'_>) -> Option<Delivery> {
        let plan = self.plan.clone();
        let engine = self.engine.clone();
        let in_transaction = self.sink.as_ref().is_some_and(|s| !s.escaped);
        let nothing_ran = match outcome {
            Outcome::Failed(error) => nothing_ran(&plan, error, in_transaction),
            _ => false,
        };
        if self.sink.is_none() && !self.isolated && plan.reach.begins && !matches!(outcome, Outcome::Done) {
            // A failed string that began a transaction leaves its connection inside it.
            engine.schema.session_changed("a failed statement string with BEGIN");
        }
        let tags = if nothing_ran {
            Vec::new()
        } else {
            let mut tags = match &plan.write {
                WritePlan::None => Vec::new(),
                WritePlan::Everything => vec![Tag::All],
                WritePlan::Writes(w) => w.tags.clone(),
            };
            if let WritePlan::Writes(w) = &plan.write {
                if let Some(rows) = &w.rows {
                    if self.track_rows && !self.rows_lost && matches!(outcome, Outcome::Done) {
                        tags.append(&mut self.rows);
                    } else {
                        tags.push(Tag::Rows(rows.table));
                    }
                }
            }
            // A schema change since this statement was planned (or one still running) may have
            // added a cascade or family that its plan does not know: trust no plan.
            let own = usize::from(self.ddl) + self.sink.as_ref().map_or(0, |s| s.ddl);
            let others_ddl = engine.schema.epoch() != self.epoch || engine.schema.ddl_running() > own;
            if !tags.is_empty() && !tags.contains(&Tag::All) && others_ddl {
                engine.stats().widen();
                tags = vec![Tag::All];
            }
            tags
        };
        match self.sink.take() {
            Some(state) => {
                state.tainted |= plan.taints;
                state.role_may_differ |= plan.taints || plan.reach.sets;
                if state.escaped {
                    // The transaction may be over, and this statement committed on its own:
                    // apply now, and again at the end in case it is not.
                    if self.ddl {
                        engine.schema.ddl_done();
                    }
                    state.add(tags.clone());
                    return engine.apply(&tags, Origin::Write);
                }
                if self.ddl {
                    // Applied to the catalog when the transaction ends.
                    state.ddl += 1;
                }
                state.add(tags);
                if plan.reach.commits {
                    // A hand-written COMMIT (or a string the library cannot read) may have
                    // committed what the transaction wrote: it is visible now (widen: a rollback
                    // costs only misses). It is applied again at the transaction's real end:
                    // after `COMMIT AND CHAIN` the writes that follow commit only then, and a
                    // fill in between may have read the old rows.
                    return state.committed_early(plan.reach.ends_transaction);
                }
                None
            }
            None => {
                if self.ddl {
                    engine.schema.ddl_done();
                }
                engine.apply(&tags, Origin::Write)
            }
        }
    }
}

/// Whether a failed statement is known to have changed nothing. PostgreSQL parses a whole
/// string before it runs any of it, so a syntax error in the text ran nothing; and a string
/// outside a transaction runs as one implicit transaction that a failure rolls back, unless it
/// holds transaction control or code that may commit on its own (`CALL`, `DO`). Anything else
/// may have committed part of its work.
fn nothing_ran(plan: &Plan, error: &sqlx::Error, in_transaction: bool) -> bool {
    let Some(database_error) = error.as_database_error() else {
        return false;
    };
    let pg = database_error.try_downcast_ref::<sqlx::postgres::PgDatabaseError>();
    // PostgreSQL parses a whole string before it runs any of it, but analyzes each statement
    // only when its turn comes: a syntax error raised by the grammar ran nothing, while one
    // raised in analysis (`VALUES` lists of unequal length, say) may follow statements that ran
    // and committed. In a single statement either ran nothing.
    let syntax_in_text = pg.is_some_and(|e| {
        e.code() == "42601"
            && matches!(e.position(), Some(sqlx::postgres::PgErrorPosition::Original(_)))
            && (plan.statements == 1 || matches!(e.routine(), Some("scanner_yyerror" | "base_yyparse")))
    });
    let parsed = plan.statements > 0;
    syntax_in_text || (parsed && !plan.reach.transaction_control && !in_transaction)
}

/// Passes the statement's results through, noting written rows, and invalidates before it ends
/// (in the shared tier too: its last item waits for that).
struct WriteStream<'e> {
    inner: BoxStream<'e, Step>,
    tracker: Option<Tracker<'e>>,
    /// The invalidation being published, and the item to yield once it is.
    publishing: Option<Publishing>,
}

struct Publishing {
    publish: Delivery,
    last: Option<Step>,
    engine: Arc<Engine>,
}

impl WriteStream<'_> {
    /// Ends the statement: applies its invalidation, and starts publishing it if there is a
    /// shared tier (returns whether it did; the last item is then held back until it is done).
    fn finish(&mut self, outcome: Outcome<'_>) -> bool {
        let Some(tracker) = self.tracker.take() else { return false };
        let engine = tracker.engine.clone();
        if let Some(publish) = tracker.finish(outcome) {
            self.publishing = Some(Publishing { publish, last: None, engine });
        }
        self.publishing.is_some()
    }
}

impl futures_core::Stream for WriteStream<'_> {
    type Item = Step;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Step>> {
        let this = self.get_mut();
        loop {
            if let Some(publishing) = &mut this.publishing {
                std::task::ready!(publishing.publish.as_mut().poll(cx));
                return Poll::Ready(this.publishing.take().and_then(|p| p.last));
            }
            let step = match this.inner.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(step) => step,
            };
            return Poll::Ready(match step {
                Some(Ok(Either::Right(row))) => {
                    let forward = this.tracker.as_mut().is_none_or(|t| t.observe(&row));
                    if !forward {
                        continue;
                    }
                    Some(Ok(Either::Right(row)))
                }
                Some(Ok(done)) => Some(Ok(done)),
                Some(Err(error)) => {
                    if let (true, Some(publishing)) = (this.finish(Outcome::Failed(&error)), &mut this.publishing) {
                        publishing.last = Some(Err(error));
                        continue;
                    }
                    Some(Err(error))
                }
                None => {
                    if this.finish(Outcome::Done) {
                        continue;
                    }
                    None
                }
            });
        }
    }
}

impl Drop for WriteStream<'_> {
    fn drop(&mut self) {
        // Dropped before the end (a cancelled future, `fetch_one` on a stream): the statement may
        // have run, so invalidate as if it did, without trusting a partial row list.
        self.finish(Outcome::Abandoned);
        // The publishing is finished on its own.
        if let Some(Publishing { publish, engine, .. }) = self.publishing.take() {
            engine.finish_in_background(publish);
        }
    }
}
