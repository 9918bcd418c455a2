//! Code generation for `#[derive(Cacheable)]` and `#[derive(CachedRow)]`.

use crate::attr::{Model, Row};
use proc_macro2::TokenStream;
use quote::{quote, ToTokens};
use syn::DeriveInput;

/// `impl CachedRow`.
pub fn expand_row(input: &DeriveInput, row: &Row<'_>) -> TokenStream {
    let ident = &input.ident;
    let fingerprint = fingerprint_fn(fingerprint(input, row), row, quote!(fingerprint));
    let cloner = cloner();
    quote! {
        #[automatically_derived]
        impl ::sqlacache_sqlx::CachedRow for #ident {
            #fingerprint
            #cloner
        }
    }
}

/// `fn __cloner()`: `Clone::clone` when the type implements it (known where the derive
/// expands: a method found by value wins over one found through a reference), else `None`.
fn cloner() -> TokenStream {
    quote! {
        fn __cloner() -> ::core::option::Option<fn(&Self) -> Self> {
            #[allow(unused_imports)]
            use ::sqlacache_sqlx::__private::{NotClone as _, ViaClone as _};
            (&::sqlacache_sqlx::__private::Probe::<Self>(::core::marker::PhantomData)).cloner()
        }
    }
}

/// `fn <name>() -> u64`: the fingerprint of the compile-time digest `fingerprint` and the resolved
/// names of the type and its fields, computed once.
fn fingerprint_fn(fingerprint: u64, row: &Row<'_>, name: TokenStream) -> TokenStream {
    let field_types: Vec<&syn::Type> = row.fields.iter().map(|f| &f.ty).collect();
    quote! {
        fn #name() -> u64 {
            static FINGERPRINT: ::std::sync::OnceLock<u64> = ::std::sync::OnceLock::new();
            *FINGERPRINT.get_or_init(|| {
                ::sqlacache_sqlx::__private::fingerprint(
                    #fingerprint,
                    &[::core::any::type_name::<Self>(), #(::core::any::type_name::<#field_types>()),*],
                )
            })
        }
    }
}

/// `impl Cacheable` (which makes the type a `CachedRow` too).
pub fn expand_model(input: &DeriveInput, model: &Model<'_>) -> TokenStream {
    let ident = &input.ident;
    let table = &model.table;
    let ops = model.ops;
    fn seconds<T: quote::ToTokens>(secs: Option<T>) -> TokenStream {
        match secs {
            Some(secs) => quote!(::core::option::Option::Some(#secs)),
            None => quote!(::core::option::Option::None),
        }
    }
    let (ttl, swr, stale_if_error) = (seconds(model.ttl), seconds(model.swr), seconds(model.stale_if_error));
    let columns: Vec<&str> = model.pk.iter().map(|p| p.column.as_str()).collect();
    let get_sql = get_sql(table, &columns);
    let fingerprint = fingerprint(input, &model.row);

    let key_types: Vec<&syn::Type> = model.pk.iter().map(|p| &p.field.ty).collect();
    let (key_type, binds) = if let [single] = key_types.as_slice() {
        (single.to_token_stream(), quote!(__args.add(key)?;))
    } else {
        let indexes = (0..key_types.len()).map(syn::Index::from);
        (quote!((#(#key_types),*)), quote!(#(__args.add(key.#indexes)?;)*))
    };

    let fingerprint_fn = fingerprint_fn(fingerprint, &model.row, quote!(__fingerprint));
    let cloner = cloner();
    quote! {
        #[automatically_derived]
        impl ::sqlacache_sqlx::Cacheable for #ident {
            type Key = #key_type;

            const MODEL: ::sqlacache_sqlx::Model = ::sqlacache_sqlx::Model {
                table: #table,
                primary_key: &[#(#columns),*],
                ops: ::sqlacache_sqlx::Ops::from_bits(#ops),
                ttl_secs: #ttl,
                swr_secs: #swr,
                stale_if_error_secs: #stale_if_error,
                fingerprint: #fingerprint,
                get_sql: #get_sql,
            };

            fn bind_key(
                key: #key_type,
                __args: &mut ::sqlacache_sqlx::__private::PgArguments,
            ) -> ::core::result::Result<(), ::sqlacache_sqlx::__private::BoxDynError> {
                use ::sqlacache_sqlx::__private::Arguments as _;
                #binds
                ::core::result::Result::Ok(())
            }

            #fingerprint_fn
            #cloner
        }
    }
}

/// `SELECT * FROM <table> WHERE "a" = $1 AND "b" = $2`. `*` lets `FromRow` pick its columns, so
/// renamed and skipped fields keep working.
fn get_sql(table: &str, columns: &[&str]) -> String {
    let conditions: Vec<String> =
        columns.iter().enumerate().map(|(i, c)| format!("\"{}\" = ${}", c.replace('"', "\"\""), i + 1)).collect();
    format!("SELECT * FROM {table} WHERE {}", conditions.join(" AND "))
}

/// A digest of the type's name, its `serde` and `sqlx` attributes, and its fields' names, types
/// and attributes as written: postcard is not self-describing, so a changed struct must never
/// decode bytes written by the old one. (`CachedRow::fingerprint` adds the resolved types.)
fn fingerprint(input: &DeriveInput, row: &Row<'_>) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(input.ident.to_string().as_bytes());
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("serde") || a.path().is_ident("sqlx")) {
        hasher.update(attr.to_token_stream().to_string().as_bytes());
    }
    for (index, field) in row.fields.iter().enumerate() {
        hasher.update(b"|");
        match &field.ident {
            Some(ident) => hasher.update(ident.to_string().as_bytes()),
            None => hasher.update(index.to_string().as_bytes()),
        };
        hasher.update(b":");
        hasher.update(field.ty.to_token_stream().to_string().as_bytes());
        for attr in field.attrs.iter().filter(|a| a.path().is_ident("serde") || a.path().is_ident("sqlx")) {
            hasher.update(attr.to_token_stream().to_string().as_bytes());
        }
    }
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_bytes()[..8]);
    u64::from_le_bytes(first)
}
