//! The `Executor` implementations: every statement run through a [`CachedPool`] or a
//! [`CachedConnection`] is planned, run, and followed by the invalidation its plan calls for,
//! before the caller sees the end of its results.
//!
//! This is the only module that takes `Execute` values apart.

use crate::admission::not_cached;
use crate::engine::Engine;
use crate::handle::CachedPool;
use crate::plan::{Plan, WritePlan};
use crate::read::FILLING;
use crate::transaction::{CachedConnection, TxState};
use crate::write::{self, Step};
use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use futures_util::{stream, TryStreamExt};
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArguments, PgConnection, PgQueryResult, PgRow, PgStatement, PgTypeInfo};
use sqlx::Either;
use sqlx::{AssertSqlSafe, Execute, Executor, Postgres, SqlSafeStr, SqlStr};
use std::sync::Arc;

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
    Transaction(&'e mut PgConnection, &'e mut TxState),
}

/// Runs `prepared` and applies what its plan calls for. With `discard`, the caller keeps no
/// row (`execute`): a write may then return more columns than its own `RETURNING` asks for.
pub(crate) fn run<'e>(
    engine: Arc<Engine>,
    target: Target<'e>,
    prepared: Prepared,
    discard: bool,
) -> BoxStream<'e, Step> {
    Box::pin(
        stream::once(async move {
            let in_transaction = matches!(target, Target::Transaction(..));
            // A typed read's own query comes with the plan its read made.
            let planned = FILLING.try_with(Arc::clone).ok();
            let filling = planned.is_some();
            let plan = match planned {
                Some(plan) => Ok(plan),
                None => engine.plan(prepared.sql.as_str(), !in_transaction).await,
            };
            let plan = match plan {
                Ok(plan) => plan,
                Err(error) => {
                    // Without a plan the statement still runs, and counts as writing anything.
                    tracing::warn!(%error, "could not plan a statement; it will invalidate everything");
                    Arc::new(Plan::unknown())
                }
            };
            let plan = match &plan.write {
                WritePlan::Writes(w) if discard => match &w.discarding {
                    Some(discarding) => {
                        Arc::new(Plan { write: WritePlan::Writes((**discarding).clone()), ..(*plan).clone() })
                    }
                    None => plan,
                },
                _ => plan,
            };
            let mut prepared = prepared;
            let on_pool = matches!(target, Target::Pool);
            let parsed = plan.statements > 0;
            // A hand-written transaction left open through the pool, or settings given to the
            // sessions opened from now on: the pool's connections may differ from one another
            // from now on. Before it runs: no read may be served from a cache that its session
            // no longer matches.
            if plan.reach.new_sessions || (on_pool && parsed && plan.reach.leaves_open) {
                engine.schema.session_changed(prepared.sql.as_str());
            }
            let ddl = plan.ddl;
            if ddl {
                engine.schema.ddl_started();
            }
            if plan.read.is_ok() && !filling {
                // A read through sqlx's own API: the cache cannot know its row type.
                let reason = sqlacache_core::Uncached::PlainSqlx;
                not_cached(engine.stats(), &plan.counters, reason, prepared.sql.as_str(), "");
            }
            // Before the SQL is rewritten: the span names the caller's statement.
            let span = (!matches!(plan.write, WritePlan::None)).then(|| write_span(&engine, prepared.sql.as_str()));
            let mut track_rows = false;
            if let WritePlan::Writes(w) = &plan.write {
                // A session whose role may have changed may not be allowed to read what it writes.
                let append = match &target {
                    Target::Pool => !engine.schema.sessions_differ(),
                    Target::Transaction(_, state) => !engine.schema.sessions_differ() && !state.role_may_differ,
                };
                if let (Some(sql), None, true) = (&w.rewritten, &prepared.statement, append) {
                    prepared.sql = match (&engine.feed, &w.rows) {
                        // Marked as this pool's, for the change feed's triggers (at the end,
                        // where it moves no position PostgreSQL may report).
                        (Some(feed), Some(rows)) => {
                            AssertSqlSafe(format!("{sql} /*sqlacache {:x} {}*/", feed.writer(), rows.table))
                                .into_sql_str()
                        }
                        _ => AssertSqlSafe(sql.clone()).into_sql_str(),
                    };
                    track_rows = true;
                } else if w.rows.as_ref().is_some_and(|r| r.forward) {
                    track_rows = true;
                }
            }
            let steps: BoxStream<'e, Step> = match target {
                // The connection rule: a statement that may change its session runs on a
                // connection of its own, which never answers for the pool's others.
                Target::Pool if plan.taints && !(parsed && plan.reach.leaves_open) => {
                    write::isolated(engine.clone(), plan.clone(), prepared, track_rows, ddl)
                }
                Target::Pool if matches!(plan.write, WritePlan::None) && !ddl && !plan.reach.begins => {
                    Box::pin((&engine.pool).fetch_many(prepared))
                }
                Target::Pool => write::on_pool(&engine, &plan, (&engine.pool).fetch_many(prepared), track_rows, ddl),
                Target::Transaction(conn, state) => {
                    write::in_transaction(&engine, &plan, conn.fetch_many(prepared), state, track_rows, ddl)
                }
            };
            let steps: BoxStream<'e, Step> = match span {
                Some(span) => Box::pin(Traced { span, steps }),
                None => steps,
            };
            Ok::<_, sqlx::Error>(steps)
        })
        .try_flatten(),
    )
}

/// A write's steps inside its `sqlacache.write` span, entered at every poll.
struct Traced<'e> {
    span: tracing::Span,
    steps: BoxStream<'e, Step>,
}

/// The span of a write: OpenTelemetry's attributes, the SQL text only if the pool says so.
fn write_span(engine: &Engine, sql: &str) -> tracing::Span {
    // The statement's first word, as `db.operation.name` wants it.
    let operation = sql.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
    let span = tracing::debug_span!(
        target: "sqlacache",
        "sqlacache.write",
        db.system.name = "postgresql",
        db.operation.name = operation,
        db.query.text = tracing::field::Empty,
    );
    if engine.trace_text {
        span.record("db.query.text", sql);
    }
    span
}

impl futures_core::Stream for Traced<'_> {
    type Item = Step;

    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Step>> {
        let this = &mut *self;
        let _entered = this.span.enter();
        this.steps.as_mut().poll_next(cx)
    }
}

/// The results of a statement's steps, its rows dropped (as sqlx's own `execute_many`).
fn results(steps: BoxStream<'_, Step>) -> BoxStream<'_, Result<PgQueryResult, sqlx::Error>> {
    Box::pin(steps.try_filter_map(|step| async move {
        Ok(match step {
            Either::Left(result) => Some(result),
            Either::Right(_) => None,
        })
    }))
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

impl<'c> Executor<'c> for &'c CachedPool {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, Step>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        run(self.engine.clone(), Target::Pool, Prepared::from_execute(query), false)
    }

    fn execute_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, Result<PgQueryResult, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        results(run(self.engine.clone(), Target::Pool, Prepared::from_execute(query), true))
    }

    fn execute<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<PgQueryResult, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        Box::pin(self.execute_many(query).try_collect())
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
        self.engine.pool.prepare_with(sql, parameters)
    }

    #[doc(hidden)]
    fn describe<'e>(self, sql: SqlStr) -> BoxFuture<'e, Result<sqlx::Describe<Postgres>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.engine.pool.describe(sql)
    }
}

impl<'c> Executor<'c> for &'c mut CachedConnection {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, Step>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let (conn, state, engine) = self.parts();
        run(engine, Target::Transaction(conn, state), Prepared::from_execute(query), false)
    }

    fn execute_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, Result<PgQueryResult, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let (conn, state, engine) = self.parts();
        results(run(engine, Target::Transaction(conn, state), Prepared::from_execute(query), true))
    }

    fn execute<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<PgQueryResult, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        Box::pin(self.execute_many(query).try_collect())
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
