//! The `Executor` implementations: every statement run through a [`CachedPool`] or a
//! [`CachedConnection`] is planned, run, and followed by the invalidation its plan calls for,
//! before the caller sees the end of its results.
//!
//! This is the only module that takes `Execute` values apart.

use crate::plan::{Plan, RowColumns, WritePlan};
use crate::pool::Shared;
use crate::transaction::{CachedConnection, TxState};
use crate::CachedPool;
use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use futures_util::{stream, StreamExt, TryStreamExt};
use sqlacache_core::key::row_id;
use sqlacache_core::Tag;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArguments, PgConnection, PgQueryResult, PgRow, PgStatement, PgTypeInfo, PgValueFormat};
use sqlx::Either;
use sqlx::{AssertSqlSafe, Execute, Executor, Postgres, Row, SqlSafeStr, SqlStr, TypeInfo, ValueRef};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Beyond this many written rows a write invalidates every point read of the table instead of
/// one tag per row.
const MAX_ROW_TAGS: usize = 10_000;

type Step = Result<Either<PgQueryResult, PgRow>, sqlx::Error>;

/// A query taken apart so its SQL can be read (and rewritten) and it can still run.
pub(crate) struct Prepared {
    sql: SqlStr,
    statement: Option<PgStatement>,
    arguments: Option<Result<Option<PgArguments>, BoxDynError>>,
    persistent: bool,
}

impl Prepared {
    pub fn from_execute<'q, E: Execute<'q, Postgres>>(mut query: E) -> Prepared {
        // Order matters: `sql()` consumes the query.
        let persistent = query.persistent();
        let statement = query.statement().cloned();
        let arguments = Some(query.take_arguments());
        Prepared { sql: query.sql(), statement, arguments, persistent }
    }
}

impl<'q> Execute<'q, Postgres> for Prepared {
    fn sql(self) -> SqlStr {
        self.sql
    }

    fn statement(&self) -> Option<&PgStatement> {
        self.statement.as_ref()
    }

    fn take_arguments(&mut self) -> Result<Option<PgArguments>, BoxDynError> {
        self.arguments.take().unwrap_or(Ok(None))
    }

    fn persistent(&self) -> bool {
        self.persistent
    }
}

tokio::task_local! {
    /// Set while a cached read's own query runs through the executor: it is counted as a hit,
    /// a miss or a read not cached for its reason, not as a plain sqlx read.
    pub(crate) static FILLING: ();
}

/// Where a statement runs and where its invalidations go.
pub(crate) enum Target<'e> {
    /// On the pool; invalidations apply as soon as the statement is done.
    Pool,
    /// On a transaction's connection; invalidations wait for `COMMIT`.
    Transaction(&'e mut PgConnection, &'e mut TxState),
}

/// Runs `prepared` and applies what its plan calls for.
pub(crate) fn run<'e>(shared: Arc<Shared>, target: Target<'e>, prepared: Prepared) -> BoxStream<'e, Step> {
    Box::pin(
        stream::once(async move {
            let in_transaction = matches!(target, Target::Transaction(..));
            let plan = match shared.plan(prepared.sql.as_str(), !in_transaction).await {
                Ok(plan) => plan,
                Err(error) => {
                    // Without a plan the statement still runs, and counts as writing anything.
                    tracing::warn!(%error, "could not plan a statement; it will invalidate everything");
                    Arc::new(Plan::unknown())
                }
            };
            let mut prepared = prepared;
            let on_pool = matches!(target, Target::Pool);
            let parsed = plan.statements > 0;
            // A hand-written transaction left open through the pool, or settings given to the
            // sessions opened from now on: the pool's connections may differ from one another
            // from now on. Before it runs: no read may be served from a cache that its session
            // no longer matches.
            if plan.reach.new_sessions || (on_pool && parsed && plan.reach.leaves_open) {
                shared.session_changed(prepared.sql.as_str());
            }
            let ddl = plan.ddl;
            if ddl {
                shared.ddl_started();
            }
            if plan.read.is_ok() && FILLING.try_with(|_| ()).is_err() {
                // A read through sqlx's own API: the cache cannot know its row type.
                crate::pool::not_cached(&shared.stats, sqlacache_core::Uncached::PlainSqlx, prepared.sql.as_str(), "");
            }
            let mut track_rows = false;
            if let WritePlan::Writes(w) = &plan.write {
                // A session whose role may have changed may not be allowed to read what it writes.
                let append = match &target {
                    Target::Pool => !shared.sessions_differ(),
                    Target::Transaction(_, state) => !shared.sessions_differ() && !state.role_may_differ,
                };
                if let (Some(sql), None, true) = (&w.rewritten, &prepared.statement, append) {
                    prepared.sql = AssertSqlSafe(sql.clone()).into_sql_str();
                    track_rows = true;
                } else if w.rows.as_ref().is_some_and(|r| r.forward) {
                    track_rows = true;
                }
            }
            let steps: BoxStream<'e, Step> = match target {
                // The connection rule: a statement that may change its session runs on a
                // connection of its own, which never answers for the pool's others.
                Target::Pool if plan.taints && !(parsed && plan.reach.leaves_open) => {
                    isolated(shared.clone(), plan.clone(), prepared, track_rows, ddl)
                }
                Target::Pool if matches!(plan.write, WritePlan::None) && !ddl && !plan.reach.begins => {
                    Box::pin((&shared.pool).fetch_many(prepared))
                }
                Target::Pool => Box::pin(PoolWrite(Some(WriteStream {
                    inner: (&shared.pool).fetch_many(prepared),
                    tracker: Some(Tracker::new(&shared, &plan, None, track_rows, ddl)),
                    publishing: None,
                }))),
                Target::Transaction(conn, state) => {
                    // Invalidations wait for COMMIT, which `CachedTransaction::commit` runs to its
                    // end in the same way.
                    Box::pin(WriteStream {
                        inner: conn.fetch_many(prepared),
                        tracker: Some(Tracker::new(&shared, &plan, Some(state), track_rows, ddl)),
                        publishing: None,
                    })
                }
            };
            Ok::<_, sqlx::Error>(steps)
        })
        .try_flatten(),
    )
}

/// Runs a statement that may change its session (the plan's `taints`) on a connection taken
/// from the pool for it alone, which is closed afterwards instead of going back: the pool's
/// other connections stay as they were, and the cache keeps answering for them.
///
/// A string the library cannot read may also have begun a transaction that the caller means
/// to go on with on later calls (a hand-written `BEGIN` spelled in a way the parser does not
/// know): PostgreSQL is asked whether the connection is inside one. If it is, the connection
/// goes back to the pool as the raw pool would leave it, and the pool stops caching (see
/// [`Shared::session_changed`]).
///
/// The statement, its invalidation and the connection's end run on a task of their own, which
/// hands the results to the caller; a caller that stops listening does not stop it, so the
/// invalidation still follows the statement's completion.
fn isolated(
    shared: Arc<Shared>,
    plan: Arc<Plan>,
    prepared: Prepared,
    track_rows: bool,
    ddl: bool,
) -> BoxStream<'static, Step> {
    let (to_caller, mut from_task) = tokio::sync::mpsc::channel::<Step>(64);
    let running = shared.background_write();
    tokio::spawn(async move {
        let _running = running;
        let mut tracker = Tracker::new(&shared, &plan, None, track_rows, ddl);
        tracker.isolated = true;
        let mut conn = match shared.pool.acquire().await {
            Ok(conn) => conn,
            Err(error) => {
                // It never ran; what it would have invalidated is invalidated all the same.
                if let Some(publish) = shared.publish(tracker.finish(Outcome::Failed(&error))) {
                    publish.await;
                }
                let _ = to_caller.send(Err(error)).await;
                return;
            }
        };
        {
            let mut steps = WriteStream { inner: conn.fetch_many(prepared), tracker: Some(tracker), publishing: None };
            while let Some(step) = steps.next().await {
                // A caller that went away is no reason to stop: the rest still runs.
                let _ = to_caller.send(step).await;
            }
        }
        if plan.statements == 0 && in_transaction(&mut conn).await {
            // Back to the pool as it is (when dropped).
            shared.session_changed("a statement the library cannot read left its connection inside a transaction");
            return;
        }
        conn.close_on_drop();
    });
    Box::pin(stream::poll_fn(move |cx| from_task.poll_recv(cx)))
}

/// Whether a connection is inside a transaction block (or failed in one), asked of PostgreSQL:
/// a statement in a block starts after the block's transaction did, while one run on its own
/// starts its transaction. A connection that does not answer counts as inside one.
async fn in_transaction(conn: &mut PgConnection) -> bool {
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
            let shared = rest.tracker.as_ref().map(|t| t.shared.clone()).expect("filtered");
            finish_in_background(&shared, async move { while rest.next().await.is_some() {} });
        }
    }
}

/// Runs the unfinished rest of an abandoned write (a statement or a commit) on a task of its
/// own. Without a runtime (sqlx needs one too, so one is shutting down) `rest` is dropped here
/// instead, and the write's own drop invalidates at once, as for any abandoned write. Counted
/// in the pool until it has invalidated.
pub(crate) fn finish_in_background(shared: &Arc<Shared>, rest: impl Future<Output = ()> + Send + 'static) {
    let running = shared.background_write();
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            rest.await;
            drop(running);
        });
    }
}

/// Drains a stream to its first row, as `fetch_optional` does (a write must run to its end).
pub(crate) fn first_row<'e>(mut steps: BoxStream<'e, Step>) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>> {
    Box::pin(async move {
        let mut first = None;
        while let Some(step) = steps.try_next().await? {
            if let (Either::Right(row), None) = (step, &first) {
                first = Some(row);
            }
        }
        Ok(first)
    })
}

struct Tracker<'e> {
    shared: Arc<Shared>,
    plan: Arc<Plan>,
    sink: Option<&'e mut TxState>,
    /// Whether key columns of written rows are read from the output.
    track_rows: bool,
    rows: Vec<Tag>,
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
    fn new(shared: &Arc<Shared>, plan: &Arc<Plan>, sink: Option<&'e mut TxState>, track_rows: bool, ddl: bool) -> Self {
        // A transaction's own earlier schema changes stay in flight until it commits; they are
        // this statement's own, not a concurrent surprise.
        let epoch = shared.schema_epoch();
        Tracker {
            shared: shared.clone(),
            plan: plan.clone(),
            sink,
            track_rows,
            rows: Vec::new(),
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
        if !self.rows_lost {
            match row_key(row, rows.table, &rows.columns) {
                Some(tag) if self.rows.len() < MAX_ROW_TAGS => self.rows.push(tag),
                _ => self.rows_lost = true,
            }
        }
        rows.forward
    }

    /// Applies the statement's invalidation (or, in a transaction, keeps it for COMMIT), and
    /// returns what was applied, for the shared tier and the other processes.
    fn finish(mut self, outcome: Outcome<'_>) -> Vec<Tag> {
        let plan = self.plan.clone();
        let shared = self.shared.clone();
        let in_transaction = self.sink.as_ref().is_some_and(|s| !s.escaped);
        let nothing_ran = match outcome {
            Outcome::Failed(error) => nothing_ran(&plan, error, in_transaction),
            _ => false,
        };
        if self.sink.is_none() && !self.isolated && plan.reach.begins && !matches!(outcome, Outcome::Done) {
            // A failed string that began a transaction leaves its connection inside it.
            shared.session_changed("a failed statement string with BEGIN");
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
            let others_ddl = shared.schema_epoch() != self.epoch || shared.ddl_running() > own;
            if !tags.is_empty() && !tags.contains(&Tag::All) && others_ddl {
                shared.stats.widen();
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
                        shared.ddl_done();
                    }
                    shared.invalidate(&tags);
                    state.add(&shared, tags.clone());
                    return tags;
                }
                if self.ddl {
                    // Applied to the catalog when the transaction ends.
                    state.ddl += 1;
                }
                state.add(&shared, tags);
                if plan.reach.commits {
                    // A hand-written COMMIT (or a string the library cannot read) may have
                    // committed what the transaction wrote: it is visible now (widen: a rollback
                    // costs only misses). It is applied again at the transaction's real end:
                    // after `COMMIT AND CHAIN` the writes that follow commit only then, and a
                    // fill in between may have read the old rows.
                    return state.committed_early(&shared, plan.reach.ends_transaction);
                }
                Vec::new()
            }
            None => {
                if self.ddl {
                    shared.ddl_done();
                }
                shared.invalidate(&tags);
                tags
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

/// The key of a written row from the output columns that hold it.
fn row_key(row: &PgRow, table: u32, columns: &RowColumns) -> Option<Tag> {
    let mut parts = Vec::with_capacity(2);
    match columns {
        RowColumns::Indexed(indexes) => {
            for &i in indexes {
                parts.push(value_text(row, i)?);
            }
        }
        RowColumns::Named(names) => {
            for name in names {
                let i = row.columns().iter().position(|c| sqlx::Column::name(c) == name)?;
                parts.push(value_text(row, i)?);
            }
        }
    }
    Some(Tag::Row(row_id(table, &parts)))
}

/// The PostgreSQL text form of a key value, for the types whose text the key hashing trusts.
fn value_text(row: &PgRow, index: usize) -> Option<String> {
    let value = row.try_get_raw(index).ok()?;
    if value.is_null() {
        return None;
    }
    let type_info: PgTypeInfo = value.type_info().into_owned();
    let name = type_info.name();
    match value.format() {
        PgValueFormat::Text => {
            let text = value.as_str().ok()?;
            Some(match (name, text) {
                ("BOOL", "t") => "true".to_owned(),
                ("BOOL", "f") => "false".to_owned(),
                _ => text.to_owned(),
            })
        }
        PgValueFormat::Binary => {
            let bytes = value.as_bytes().ok()?;
            Some(match name {
                "INT2" => i16::from_be_bytes(bytes.try_into().ok()?).to_string(),
                "INT4" => i32::from_be_bytes(bytes.try_into().ok()?).to_string(),
                "INT8" => i64::from_be_bytes(bytes.try_into().ok()?).to_string(),
                "TEXT" | "VARCHAR" => std::str::from_utf8(bytes).ok()?.to_owned(),
                "BOOL" => (bytes.first()? != &0).to_string(),
                "UUID" => {
                    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                    if hex.len() != 32 {
                        return None;
                    }
                    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
                }
                _ => return None,
            })
        }
    }
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
    publish: BoxFuture<'static, ()>,
    last: Option<Step>,
    shared: Arc<Shared>,
}

impl WriteStream<'_> {
    /// Ends the statement: applies its invalidation, and starts publishing it if there is a
    /// shared tier (returns whether it did; the last item is then held back until it is done).
    fn finish(&mut self, outcome: Outcome<'_>) -> bool {
        let Some(tracker) = self.tracker.take() else { return false };
        let shared = tracker.shared.clone();
        if let Some(publish) = shared.publish(tracker.finish(outcome)) {
            self.publishing = Some(Publishing { publish, last: None, shared });
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
        if let Some(Publishing { publish, shared, .. }) = self.publishing.take() {
            finish_in_background(&shared, publish);
        }
    }
}

impl<'c> Executor<'c> for &'c CachedPool {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, Step>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        run(self.shared.clone(), Target::Pool, Prepared::from_execute(query))
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        first_row(self.fetch_many(query))
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement, sqlx::Error>>
    where
        'c: 'e,
    {
        self.shared.pool.prepare_with(sql, parameters)
    }

    #[doc(hidden)]
    fn describe<'e>(self, sql: SqlStr) -> BoxFuture<'e, Result<sqlx::Describe<Postgres>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.shared.pool.describe(sql)
    }
}

impl<'c> Executor<'c> for &'c mut CachedConnection {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, Step>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let (conn, state, shared) = self.parts();
        run(shared, Target::Transaction(conn, state), Prepared::from_execute(query))
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        first_row(self.fetch_many(query))
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement, sqlx::Error>>
    where
        'c: 'e,
    {
        self.parts().0.prepare_with(sql, parameters)
    }

    #[doc(hidden)]
    fn describe<'e>(self, sql: SqlStr) -> BoxFuture<'e, Result<sqlx::Describe<Postgres>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.parts().0.describe(sql)
    }
}
