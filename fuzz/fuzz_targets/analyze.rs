//! The analyzer must not panic on any input, and the offset where it would append a
//! `RETURNING` clause must always be a valid place to cut the string.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sqlacache_core::analyze::{analyze, Effect, RowSource};

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
});
