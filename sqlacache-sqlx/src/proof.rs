//! Proof of what a read depends on, asked of PostgreSQL rather than guessed from the text.
//!
//! When a read is first planned, PostgreSQL analyzes it as the body of a temporary view (inside
//! a transaction that is rolled back, so nothing remains), with each placeholder replaced by a
//! null of the type PostgreSQL infers for it. The view's dependencies, which PostgreSQL records
//! in `pg_depend`, name every relation, function (aggregates and functions written in attribute
//! notation included) and operator the read uses, as resolved by PostgreSQL itself; its
//! expression tree shows casts that call a type's input function at run time and SQL value
//! functions (`CURRENT_DATE`, `CURRENT_USER`, ..). The read is cached only when:
//!
//! - every relation it depends on is a plain table the analyzer also found (a dependency the
//!   analyzer missed means its invalidations would be too narrow);
//! - every function is immutable (for an aggregate, every function it runs);
//! - every operator's function is immutable, or stable and built in (built-in stable operators
//!   depend on session settings, which are part of every key, not on the clock or on data);
//! - it calls no SQL value function, and any input function a cast runs is immutable.
//!
//! Anything else, and a probe that fails (a role without the `TEMP` privilege, say), leaves
//! the read uncached, with the reason counted. The probe runs once per statement and catalog
//! generation, never on a hit.

use sqlacache_core::Uncached;
use sqlx::{AssertSqlSafe, PgPool, Row};

/// What PostgreSQL says of the probe view's dependencies: one row per dependency or check,
/// with whether it is acceptable.
const VERDICT: &str = concat!(
    r#"
WITH rule AS (
  SELECT r.oid, r.ev_class, r.ev_action::text AS tree
    FROM pg_catalog.pg_rewrite r
   WHERE r.ev_class = 'pg_temp.sqlacache_probe'::pg_catalog.regclass),
deps AS (
  SELECT d.refclassid, d.refobjid FROM pg_catalog.pg_depend d, rule
   WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = rule.oid)
SELECT 'relation' AS kind, c.oid::int8 AS oid, c.relkind IN ('r', 'p') AS ok
  FROM deps JOIN pg_catalog.pg_class c ON c.oid = deps.refobjid, rule
 WHERE deps.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND c.oid <> rule.ev_class
UNION ALL
SELECT 'function', p.oid::int8,
       "#,
    crate::catalog::immutable_in_full!(),
    r#"
  FROM deps JOIN pg_catalog.pg_proc p ON p.oid = deps.refobjid
 WHERE deps.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
UNION ALL
SELECT 'operator', o.oid::int8,
       f.provolatile = 'i' OR (f.provolatile = 's' AND f.pronamespace = 'pg_catalog'::pg_catalog.regnamespace)
  FROM deps JOIN pg_catalog.pg_operator o ON o.oid = deps.refobjid
  JOIN pg_catalog.pg_proc f ON f.oid = o.oprcode
 WHERE deps.refclassid = 'pg_catalog.pg_operator'::pg_catalog.regclass
UNION ALL
SELECT 'clock', 0, strpos(tree, '{SQLVALUEFUNCTION') = 0 FROM rule
UNION ALL
-- A cast through text runs the target type's input function when the read runs ('today'
-- read from a text column as a date): then every type a node of the tree results in must have
-- an immutable input function (a domain, its base type's).
SELECT 'cast', 0, strpos(tree, '{COERCEVIAIO') = 0 OR coalesce((
         SELECT bool_and(i.provolatile = 'i')
           FROM pg_catalog.regexp_matches(tree, ':resulttype (\d+)', 'g') m
           JOIN pg_catalog.pg_type t ON t.oid = m[1]::pg_catalog.oid
           JOIN pg_catalog.pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
           JOIN pg_catalog.pg_proc i ON i.oid = b.typinput), false)
  FROM rule
"#
);

/// Proves that a read of `sql`, planned to depend on the tables `tables`, may be cached; the
/// reason it may not otherwise.
pub(crate) async fn prove(pool: &PgPool, sql: &str, tables: &[u32]) -> Result<(), Uncached> {
    match probe(pool, sql).await {
        Ok(rows) => judge(&rows, tables),
        Err(error) => {
            tracing::debug!(target: "sqlacache", %error, statement = sql, "PostgreSQL could not tell what a read depends on; it is not cached");
            Err(Uncached::Unproven)
        }
    }
}

fn judge(rows: &[(String, i64, bool)], tables: &[u32]) -> Result<(), Uncached> {
    let mut verdict = Ok(());
    for (kind, oid, ok) in rows {
        let reason = match kind.as_str() {
            "relation" if !ok => Some(Uncached::NotATable),
            "relation" if !tables.iter().any(|&t| i64::from(t) == *oid) => Some(Uncached::Unproven),
            "function" | "operator" | "cast" if !ok => Some(Uncached::Volatile),
            "clock" if !ok => Some(Uncached::Clock),
            _ => None,
        };
        if let Some(reason) = reason {
            verdict = verdict.and(Err(reason));
        }
    }
    // Without its relations the probe did not see the read.
    if !rows.iter().any(|(kind, _, _)| kind == "relation") {
        return verdict.and(Err(Uncached::Unproven));
    }
    verdict
}

#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("a placeholder PostgreSQL gave no type")]
    Untyped,
}

/// Runs the probe on a connection of the pool, in the simple protocol only, so that nothing is
/// left in the connection's statement cache (a statement prepared here with the types
/// PostgreSQL infers would be reused by the caller's read, whose arguments may be of others).
/// Whatever fails, the connection is left as it was found, or closed.
async fn probe(pool: &PgPool, sql: &str) -> Result<Vec<(String, i64, bool)>, ProbeError> {
    let mut conn = pool.acquire().await?;
    // The types PostgreSQL infers for the placeholders. A prepared statement outlives a
    // transaction: it is deallocated in the same string, or after a failure.
    let prepare = format!(
        "PREPARE sqlacache_probe AS {sql}\n; SELECT parameter_types::text[] AS types FROM pg_catalog.pg_prepared_statements \
         WHERE name = 'sqlacache_probe'; DEALLOCATE sqlacache_probe"
    );
    let types: Vec<String> = match sqlx::raw_sql(AssertSqlSafe(prepare)).fetch_one(&mut *conn).await {
        Ok(row) => row.try_get("types")?,
        Err(error) => {
            // Fails when PREPARE did; only this name, never the caller's statements.
            let _ = sqlx::raw_sql("DEALLOCATE sqlacache_probe").execute(&mut *conn).await;
            return Err(error.into());
        }
    };
    let body = sqlacache_core::analyze::probe_text(sql, &types).ok_or(ProbeError::Untyped)?;
    let text = format!("BEGIN; CREATE TEMP VIEW sqlacache_probe AS {body}; {VERDICT}; ROLLBACK");
    let rows = match sqlx::raw_sql(AssertSqlSafe(text)).fetch_all(&mut *conn).await {
        Ok(rows) => rows,
        Err(error) => {
            // The transaction is open and failed: end it, or the connection does not go back.
            if sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await.is_err() {
                conn.close_on_drop();
            }
            return Err(error.into());
        }
    };
    rows.iter()
        .map(|row| {
            Ok((row.try_get::<String, _>("kind")?, row.try_get::<i64, _>("oid")?, row.try_get::<bool, _>("ok")?))
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
}
