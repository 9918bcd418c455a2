//! `#[derive(Cacheable)]` rejects bad attributes with errors that point at them.

#[test]
fn derive_errors_are_spanned() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("ui/*.rs");
}
