//! Compile-error tests of the sqlacache derives; see `tests/ui.rs`.
