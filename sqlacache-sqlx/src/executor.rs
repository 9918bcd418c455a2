//! The `Executor` implementations: every statement run through a [`CachedPool`] or a
//! [`CachedConnection`] is planned, run, and followed by the invalidation its plan calls for,
//! before the caller sees the end of its results.
//!
//! This is the only module that takes `Execute` values apart.

use crate::plan::{Plan, RowColumns, WritePlan};
use crate::pool::Shared;
use crate::transaction::CachedConnection;
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

/// Where a statement runs and where its invalidations go.
pub(crate) enum Target<'e> {
    /// On the pool; invalidations apply as soon as the statement is done.
    Pool,
    /// On a transaction's connection; invalidations wait for `COMMIT`.
    Transaction(&'e mut PgConnection, &'e mut Vec<Tag>),
}

/// Runs `prepared` and applies what its plan calls for.
pub(crate) fn run<'e>(shared: Arc<Shared>, target: Target<'e>, prepared: Prepared) -> BoxStream<'e, Step> {
    Box::pin(
        stream::once(async move {
            let plan = match shared.plan(prepared.sql.as_str()).await {
                Ok(plan) => plan,
                Err(error) => {
                    // Without a plan the statement still runs, and counts as writing anything.
                    tracing::warn!(%error, "could not plan a statement; it will invalidate everything");
                    Arc::new(Plan::unknown())
                }
            };
            let mut prepared = prepared;
            let mut track_rows = false;
            if let WritePlan::Writes(w) = &plan.write {
                if let (Some(sql), None) = (&w.rewritten, &prepared.statement) {
                    prepared.sql = AssertSqlSafe(sql.clone()).into_sql_str();
                    track_rows = true;
                } else if w.rows.as_ref().is_some_and(|r| r.forward) {
                    track_rows = true;
                }
            }
            let steps: BoxStream<'e, Step> = match target {
                Target::Pool if matches!(plan.write, WritePlan::None) => Box::pin((&shared.pool).fetch_many(prepared)),
                Target::Pool => Box::pin(PoolWrite(Some(WriteStream {
                    inner: (&shared.pool).fetch_many(prepared),
                    tracker: Some(Tracker::new(&shared, &plan, None, track_rows)),
                }))),
                Target::Transaction(conn, pending) => {
                    // Invalidations wait for COMMIT, which `CachedTransaction::commit` runs to its
                    // end in the same way.
                    Box::pin(WriteStream {
                        inner: conn.fetch_many(prepared),
                        tracker: Some(Tracker::new(&shared, &plan, Some(pending), track_rows)),
                    })
                }
            };
            Ok::<_, sqlx::Error>(steps)
        })
        .try_flatten(),
    )
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
            finish_in_background(async move { while rest.next().await.is_some() {} });
        }
    }
}

/// Runs the unfinished rest of an abandoned write (a statement or a commit) on a task of its
/// own. Without a runtime (sqlx needs one too, so one is shutting down) `rest` is dropped here
/// instead, and the write's own drop invalidates at once, as for any abandoned write.
pub(crate) fn finish_in_background(rest: impl Future<Output = ()> + Send + 'static) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(rest);
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
    sink: Option<&'e mut Vec<Tag>>,
    /// Whether key columns of written rows are read from the output.
    track_rows: bool,
    rows: Vec<Tag>,
    rows_lost: bool,
}

enum Outcome<'a> {
    Done,
    Failed(&'a sqlx::Error),
    Abandoned,
}

impl<'e> Tracker<'e> {
    fn new(shared: &Arc<Shared>, plan: &Arc<Plan>, sink: Option<&'e mut Vec<Tag>>, track_rows: bool) -> Self {
        Tracker { shared: shared.clone(), plan: plan.clone(), sink, track_rows, rows: Vec::new(), rows_lost: false }
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

    fn finish(mut self, outcome: Outcome<'_>) {
        let plan = &self.plan;
        let in_transaction = self.sink.is_some();
        if let Outcome::Failed(error) = outcome {
            let database_error = error.as_database_error();
            let syntax_error = database_error.and_then(|e| e.code()).is_some_and(|c| c == "42601");
            // PostgreSQL parses a whole string before running any of it, and a single statement
            // outside a transaction that fails is rolled back: in both cases nothing changed.
            let nothing_ran = syntax_error || (database_error.is_some() && plan.statements == 1 && !in_transaction);
            if nothing_ran {
                return;
            }
        }
        if matches!(outcome, Outcome::Done) && (plan.ddl || !plan.temp_tables.is_empty()) {
            self.shared.schema_changed(&plan.temp_tables);
        }
        let mut tags = match &plan.write {
            WritePlan::None => return,
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
        match self.sink.take() {
            Some(pending) => {
                for tag in tags {
                    if !pending.contains(&tag) {
                        pending.push(tag);
                    }
                }
            }
            None => self.shared.invalidate(&tags),
        }
    }
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

/// Passes the statement's results through, noting written rows, and invalidates before it ends.
struct WriteStream<'e> {
    inner: BoxStream<'e, Step>,
    tracker: Option<Tracker<'e>>,
}

impl futures_core::Stream for WriteStream<'_> {
    type Item = Step;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Step>> {
        let this = self.get_mut();
        loop {
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
                    if let Some(tracker) = this.tracker.take() {
                        tracker.finish(Outcome::Failed(&error));
                    }
                    Some(Err(error))
                }
                None => {
                    if let Some(tracker) = this.tracker.take() {
                        tracker.finish(Outcome::Done);
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
        if let Some(tracker) = self.tracker.take() {
            tracker.finish(Outcome::Abandoned);
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
        let (conn, pending, shared) = self.parts();
        run(shared, Target::Transaction(conn, pending), Prepared::from_execute(query))
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
