//! `#[derive(Cacheable)]` for sqlacache.
//!
//! The derive reads `#[cache(..)]` attributes, validates them with errors that point at the
//! offending tokens, and implements `sqlacache_sqlx::Cacheable`. Use it through
//! `sqlacache_sqlx`, which re-exports it.
#![forbid(unsafe_code)]

extern crate proc_macro;

mod attr;
mod expand;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

/// Implements `sqlacache_sqlx::Cacheable` for a row struct.
///
/// ```text
/// #[derive(sqlx::FromRow, serde::Serialize, serde::Deserialize, sqlacache_sqlx::Cacheable)]
/// #[cache(table = "users", ops(get, fetch, count, exists), ttl = 900)]
/// struct User {
///     #[cache(pk)]
///     id: i64,
///     name: String,
/// }
/// ```
///
/// Container attributes: `table = "name"` (required; may be schema-qualified), `ops(..)` with
/// any of `get`, `fetch`, `count`, `exists`, `all` (default: all), `ttl = seconds` (default: the
/// pool's default TTL). Field attributes: `pk` marks a primary-key column (several make a
/// composite key, in field order); `column = "name"` names the column when it differs from the
/// field (`#[sqlx(rename = "..")]` is honoured too).
#[proc_macro_derive(Cacheable, attributes(cache))]
pub fn derive_cacheable(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    attr::Model::from_input(&input)
        .map(|model| expand::expand(&input, &model))
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
