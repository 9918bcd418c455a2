//! What a statement does to the session that runs it, and to the transaction it runs in.

use sqlparser::ast::{self, Statement};

/// Whether a top-level statement changes its session beyond itself.
pub(super) fn session_effect(statement: &Statement) -> bool {
    use ast::{ContextModifier, Set};
    match statement {
        Statement::Set(set) => !matches!(
            set,
            Set::SingleAssignment { scope: Some(ContextModifier::Local), .. }
                | Set::SetRole { context_modifier: Some(ContextModifier::Local), .. }
                | Set::SetTimeZone { local: true, .. }
                | Set::SetTransaction { session: false, .. }
        ),
        Statement::Reset(_) | Statement::Discard { .. } | Statement::Load { .. } => true,
        // Settings of a role apply to its connections made from now on: new ones and old ones
        // would differ.
        Statement::AlterRole { .. } | Statement::AlterUser(_) => true,
        _ => false,
    }
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
    /// Runs code that may commit on its own when run outside a transaction (`CALL`, `EXECUTE`).
    MayCommit,
}

pub(super) fn transaction_control(statement: &Statement) -> Control {
    match statement {
        Statement::StartTransaction { .. } => Control::Begin,
        Statement::Commit { .. } | Statement::Rollback { savepoint: None, .. } => Control::End,
        // `ROLLBACK TO SAVEPOINT` commits nothing and ends nothing.
        Statement::Call(_) | Statement::Execute { .. } => Control::MayCommit,
        _ => Control::None,
    }
}
