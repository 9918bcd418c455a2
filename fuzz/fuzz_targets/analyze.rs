//! The analyzer must not panic on any input; the offset where it would append a `RETURNING`
//! clause must always be a valid place to cut the string; and its verdicts must agree with each
//! other: a cacheable read writes nothing and leaves the session alone, a string that ends a
//! transaction is transaction control, and a write is never a cacheable read; a string that does
//! not parse may do anything; and the text a read is probed with never panics to build.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sqlacache_core::analyze::{analyze, probe_text, Effect, Reach, RowSource};

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else { return };
    let analysis = analyze(sql);
    if let Effect::Writes(writes) = &analysis.effect {
        for write in writes {
            if let RowSource::Append { at, .. } = write.rows {
                assert!(at <= sql.len() && sql.is_char_boundary(at), "bad offset {at} in {sql:?}");
                assert!(!sql[..at].trim_end().ends_with(';'), "offset {at} after a semicolon in {sql:?}");
            }
        }
    }
    if analysis.read.is_ok() {
        assert_eq!(analysis.effect, Effect::None, "a cacheable read that writes: {sql:?}");
        assert!(!analysis.reach.session, "a cacheable read that changes the session: {sql:?}");
        assert!(!analysis.reach.transaction_control && !analysis.ddl, "a cacheable read with control or DDL: {sql:?}");
        assert_eq!(analysis.statements, 1, "a cacheable read of several statements: {sql:?}");
    }
    if analysis.reach.ends_transaction {
        assert!(analysis.reach.transaction_control, "ends a transaction without being control: {sql:?}");
    }
    if analysis.statements == 0 {
        assert_eq!(analysis.effect, Effect::Everything { parsed: false }, "{sql:?}");
        assert_eq!(analysis.reach, Reach { new_sessions: analysis.reach.new_sessions, ..Reach::unknown() }, "{sql:?}");
    }
    if analysis.reach.ends_transaction {
        assert!(analysis.reach.commits, "ends a transaction without committing it: {sql:?}");
    }
    if let Some(text) = probe_text(sql, &["integer".to_owned(), "text".to_owned()]) {
        assert!(text.starts_with("SELECT 1 FROM (\n"), "{text:?}");
    }
    if analysis.reach.begins {
        assert!(analysis.reach.transaction_control, "begins a transaction without being control: {sql:?}");
    }
});
