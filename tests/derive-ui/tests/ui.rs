//! `#[derive(Cacheable)]` and `#[derive(CachedRow)]` reject bad input with errors that point at
//! it. (The type-level diagnostics, such as a row type without serde's derives, are
//! `compile_fail` examples in `sqlacache-sqlx`'s documentation.)

#[test]
fn derive_errors_are_spanned() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("ui/*.rs");
}
