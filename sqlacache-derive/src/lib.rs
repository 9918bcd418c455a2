//! `#[derive(Cacheable)]` and `#[derive(CachedRow)]` for sqlacache.
//!
//! The derive reads `#[cache(..)]` attributes, validates them with errors that point at the
//! offending tokens, and implements `sqlacache_sqlx::Cacheable` and `sqlacache_sqlx::CachedRow`. Use it through
//! `sqlacache_sqlx`, which re-exports it.
#![forbid(unsafe_code)]

extern crate proc_macro;

mod attr;
mod expand;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

/// Implements `sqlacache_sqlx::Cacheable` for the row struct of a table (which makes it a
/// `CachedRow` too).
///
/// ```
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
/// pool's default TTL), `swr = seconds` and `stale_if_error = seconds` (how long past its TTL an
/// entry that was not invalidated may still be served while a background read refreshes it, or
/// while PostgreSQL fails; default: not at all). Field attributes: `pk` marks a primary-key column (several make a
/// composite key, declared in the order of the table's `PRIMARY KEY`, which `build()` checks);
/// `column = "name"` names the column when it differs from the
/// field (`#[sqlx(rename = "..")]` is honoured too).
#[proc_macro_derive(Cacheable, attributes(cache))]
pub fn derive_cacheable(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    attr::Model::from_input(&input)
        .map(|model| expand::expand_model(&input, &model))
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Implements `sqlacache_sqlx::CachedRow` for a row struct with no table or key of its own (a
/// projection, a join result, an aggregate), so `query_as` and `query_as!` can cache it.
///
/// ```
/// #[derive(sqlx::FromRow, serde::Serialize, serde::Deserialize, sqlacache_sqlx::CachedRow)]
/// struct PostWithAuthor {
///     title: String,
///     author: String,
/// }
///
/// // Tuple structs work too.
/// #[derive(sqlx::FromRow, serde::Serialize, serde::Deserialize, sqlacache_sqlx::CachedRow)]
/// struct Tally(String, i64);
/// ```
///
/// It takes no attributes of its own. Like `Cacheable`, it refuses `serde` attributes under
/// which a row would not read back as itself (`skip`, `skip_serializing_if`, `flatten`, ..).
#[proc_macro_derive(CachedRow, attributes(cache))]
pub fn derive_cached_row(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    attr::Row::from_input(&input)
        .map(|row| expand::expand_row(&input, &row))
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
