//! What a statement does to the session that runs it, and to the transaction it runs in.
//!
//! Session effects are judged by an allow-list: a statement leaves its session as it found it
//! only when it is of a kind known to (a query, a write, transaction control, a `SET LOCAL`).
//! Every other statement, and every spelling the parser does not know, is assumed to change the
//! session; the caller then keeps the connection that ran it from answering for the others.

use sqlparser::ast::{self, Statement};

/// Whether a top-level statement is of a kind that leaves its session as it found it once it
/// (or, for `SET LOCAL`, its transaction) ends. The functions it calls are judged apart, with
/// the catalog; a string that leaves a transaction open is judged by [`transaction_control`].
pub(super) fn session_neutral(statement: &Statement) -> bool {
    use ast::{ContextModifier, Set};
    match statement {
        // `SELECT .. INTO` creates a table, possibly a temporary one: not a query.
        Statement::Query(query) => !selects_into(query),
        Statement::Insert(_)
        | Statement::Update(_)
        | Statement::Delete(_)
        | Statement::Merge(_)
        | Statement::Truncate(_)
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. } => true,
        // Undone when the transaction ends (and outside one, PostgreSQL ignores them).
        Statement::Set(
            Set::SingleAssignment { scope: Some(ContextModifier::Local), .. }
            | Set::SetRole { context_modifier: Some(ContextModifier::Local), .. }
            | Set::SetTimeZone { local: true, .. }
            | Set::SetTransaction { session: false, .. },
        ) => true,
        _ => false,
    }
}

fn selects_into(query: &ast::Query) -> bool {
    match query.body.as_ref() {
        ast::SetExpr::Select(select) => select.into.is_some(),
        ast::SetExpr::Query(inner) => selects_into(inner),
        _ => false,
    }
}

/// Whether a top-level statement changes the settings of sessions other than its own (those
/// the pool opens from now on), so that new connections and old ones would differ.
pub(super) fn reaches_new_sessions(statement: &Statement) -> bool {
    matches!(statement, Statement::AlterRole { .. } | Statement::AlterUser(_))
}

/// What a top-level statement does to the transaction it runs in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Control {
    /// Nothing.
    None,
    /// `BEGIN` / `START TRANSACTION`.
    Begin,
    /// `COMMIT`, `END`, `ROLLBACK` (not to a savepoint): ends it.
    End,
    /// `COMMIT AND CHAIN`: ends it and begins another at once.
    CommitChain,
    /// `ROLLBACK AND CHAIN`: undoes it and begins another at once.
    RollbackChain,
    /// Runs code that may commit on its own when run outside a transaction (`CALL`, `EXECUTE`).
    MayCommit,
}

pub(super) fn transaction_control(statement: &Statement) -> Control {
    match statement {
        Statement::StartTransaction { .. } => Control::Begin,
        Statement::Commit { chain: true, .. } => Control::CommitChain,
        Statement::Rollback { chain: true, savepoint: None } => Control::RollbackChain,
        Statement::Commit { .. } | Statement::Rollback { savepoint: None, .. } => Control::End,
        // `ROLLBACK TO SAVEPOINT` commits nothing and ends nothing.
        Statement::Call(_) | Statement::Execute { .. } => Control::MayCommit,
        _ => Control::None,
    }
}
