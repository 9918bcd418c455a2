//! Parsing and validation of `#[cache(..)]` attributes.

use syn::{Data, DeriveInput, Fields, LitInt, LitStr};

/// Bits of each operation; must match `sqlacache_core::Ops`.
const OPS: &[(&str, u8)] = &[("get", 1), ("fetch", 2), ("count", 4), ("exists", 8), ("all", 15)];

/// What every cached row type must be: a struct whose stored form reads back as itself.
pub struct Row<'a> {
    pub fields: Vec<&'a syn::Field>,
}

/// A `#[derive(Cacheable)]` type: a row of one table, with its key and settings.
pub struct Model<'a> {
    pub row: Row<'a>,
    pub table: String,
    pub ops: u8,
    pub ttl: Option<u64>,
    /// `swr = seconds`: the stale-while-revalidate window.
    pub swr: Option<u32>,
    /// `stale_if_error = seconds`.
    pub stale_if_error: Option<u32>,
    pub pk: Vec<PkField<'a>>,
}

pub struct PkField<'a> {
    pub field: &'a syn::Field,
    pub column: String,
}

/// Collects every error instead of stopping at the first, so one build shows them all.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(existing) => existing.combine(error),
            None => self.0 = Some(error),
        }
    }

    fn finish<T>(self, value: impl FnOnce() -> T) -> syn::Result<T> {
        match self.0 {
            Some(error) => Err(error),
            None => Ok(value()),
        }
    }
}

impl<'a> Row<'a> {
    /// Checks what `derive` (the macro's name) needs of any row type. `named` requires named
    /// fields (a model's key columns are named).
    fn check(input: &'a DeriveInput, derive: &str, named: bool, errors: &mut Errors) -> syn::Result<Row<'a>> {
        let fields: Vec<&syn::Field> = match &input.data {
            Data::Struct(data) => match &data.fields {
                Fields::Named(fields) => fields.named.iter().collect(),
                Fields::Unnamed(fields) if !named => fields.unnamed.iter().collect(),
                _ if named => {
                    return Err(syn::Error::new_spanned(
                        &input.ident,
                        format!("{derive} needs a struct with named fields"),
                    ))
                }
                _ => return Err(syn::Error::new_spanned(&input.ident, format!("{derive} needs a struct with fields"))),
            },
            _ => {
                return Err(syn::Error::new_spanned(&input.ident, format!("{derive} can only be derived for structs")))
            }
        };
        if !input.generics.params.is_empty() {
            errors.push(syn::Error::new_spanned(
                &input.generics,
                format!("{derive} cannot be derived for generic structs"),
            ));
        }
        for field in &fields {
            check_round_trip(field, errors);
        }
        Ok(Row { fields })
    }

    /// A `#[derive(CachedRow)]` type: any row, with no table and no key.
    pub fn from_input(input: &'a DeriveInput) -> syn::Result<Row<'a>> {
        let mut errors = Errors::default();
        let row = Row::check(input, "CachedRow", false, &mut errors)?;
        let cache_attrs = input.attrs.iter().chain(row.fields.iter().flat_map(|f| &f.attrs));
        for attr in cache_attrs.filter(|a| a.path().is_ident("cache")) {
            errors.push(syn::Error::new_spanned(
                attr,
                "`#[cache(..)]` belongs to `#[derive(Cacheable)]`: a `CachedRow` has no table, key or settings of its own",
            ));
        }
        errors.finish(|| row)
    }
}

impl<'a> Model<'a> {
    pub fn from_input(input: &'a DeriveInput) -> syn::Result<Model<'a>> {
        let mut errors = Errors::default();
        let row = Row::check(input, "Cacheable", true, &mut errors)?;

        let mut table = None;
        let mut ops = None;
        let mut ttl = None;
        let mut swr = None;
        let mut stale_if_error = None;
        for attr in input.attrs.iter().filter(|a| a.path().is_ident("cache")) {
            let result = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("table") {
                    let lit: LitStr = meta.value()?.parse()?;
                    if lit.value().trim().is_empty() {
                        return Err(syn::Error::new_spanned(&lit, "table name cannot be empty"));
                    }
                    table = Some(lit.value());
                } else if meta.path.is_ident("ops") {
                    let mut bits = 0u8;
                    meta.parse_nested_meta(|op| {
                        let name = op.path.get_ident().map(ToString::to_string).unwrap_or_default();
                        match OPS.iter().find(|(n, _)| *n == name) {
                            Some((_, bit)) => bits |= bit,
                            None => {
                                return Err(op.error(format!(
                                    "unknown cache op `{name}`; expected one of get, fetch, count, exists, all"
                                )))
                            }
                        }
                        Ok(())
                    })?;
                    ops = Some(bits);
                } else if meta.path.is_ident("ttl") {
                    let lit: LitInt = meta.value()?.parse().map_err(|e| {
                        syn::Error::new(e.span(), "ttl must be a whole number of seconds, e.g. `ttl = 900`")
                    })?;
                    let secs: u64 = lit.base10_parse()?;
                    if secs == 0 {
                        return Err(syn::Error::new_spanned(&lit, "ttl must be at least 1 second"));
                    }
                    ttl = Some(secs);
                } else if meta.path.is_ident("swr") || meta.path.is_ident("stale_if_error") {
                    let name = if meta.path.is_ident("swr") { "swr" } else { "stale_if_error" };
                    let lit: LitInt = meta.value()?.parse().map_err(|e| {
                        syn::Error::new(
                            e.span(),
                            format!("{name} must be a whole number of seconds, e.g. `{name} = 30`"),
                        )
                    })?;
                    let secs: u32 = lit.base10_parse()?;
                    if name == "swr" {
                        swr = Some(secs)
                    } else {
                        stale_if_error = Some(secs)
                    }
                } else {
                    return Err(meta
                        .error("unknown cache attribute; expected `table`, `ops`, `ttl`, `swr` or `stale_if_error`"));
                }
                Ok(())
            });
            if let Err(e) = result {
                errors.push(e);
            }
        }

        let rename_all = sqlx_rename_all(input, &mut errors);
        let mut pk = Vec::new();
        for field in &row.fields {
            let mut is_pk = false;
            let mut column = None;
            for attr in field.attrs.iter().filter(|a| a.path().is_ident("cache")) {
                let result = attr.parse_nested_meta(|meta| {
                    if meta.path.is_ident("pk") {
                        is_pk = true;
                    } else if meta.path.is_ident("column") {
                        column = Some(meta.value()?.parse::<LitStr>()?.value());
                    } else {
                        return Err(meta.error("unknown field attribute; expected `pk` or `column = \"..\"`"));
                    }
                    Ok(())
                });
                if let Err(e) = result {
                    errors.push(e);
                }
            }
            if column.is_none() {
                column = sqlx_rename(field);
            }
            if is_pk {
                let ident = field.ident.as_ref().expect("named field");
                let name = ident.to_string();
                let name = name.trim_start_matches("r#");
                let column = column.unwrap_or_else(|| rename_all.map_or_else(|| name.to_owned(), |r| r.apply(name)));
                pk.push(PkField { field, column });
            }
        }

        if table.is_none() {
            errors.push(syn::Error::new(
                input.ident.span(),
                "missing `#[cache(table = \"..\")]`: Cacheable needs the table the rows come from",
            ));
        }
        if pk.is_empty() {
            errors.push(syn::Error::new(
                row.fields.first().and_then(|f| f.ident.as_ref()).map_or(input.ident.span(), |i| i.span()),
                "missing primary key: mark the key field(s) with `#[cache(pk)]`",
            ));
        }
        errors.finish(|| Model {
            row,
            table: table.expect("checked"),
            ops: ops.unwrap_or(15),
            ttl,
            swr,
            stale_if_error,
            pk,
        })
    }
}

/// `serde` field attributes under which a value does not read back as itself: the cached copy
/// would differ from the row the database returned.
const NOT_ROUND_TRIP: &[&str] = &["skip", "skip_serializing", "skip_deserializing", "skip_serializing_if", "flatten"];

fn check_round_trip(field: &syn::Field, errors: &mut Errors) {
    for attr in field.attrs.iter().filter(|a| a.path().is_ident("serde")) {
        let _ = attr.parse_nested_meta(|meta| {
            if let Some(name) = NOT_ROUND_TRIP.iter().find(|n| meta.path.is_ident(n)) {
                errors.push(syn::Error::new_spanned(
                    &meta.path,
                    format!(
                        "`#[serde({name})]` cannot be cached: a cached row must read back exactly as the database \
                         returned it; remove the attribute, or use a separate type for the cached reads"
                    ),
                ));
            }
            if meta.input.peek(syn::Token![=]) {
                let _: syn::Expr = meta.value()?.parse()?;
            } else if meta.input.peek(syn::token::Paren) {
                let _ = meta.parse_nested_meta(|_| Ok(()));
            }
            Ok(())
        });
    }
}

/// A `#[sqlx(rename_all = "..")]` convention, applied to field names as sqlx applies it.
#[derive(Clone, Copy)]
pub enum RenameAll {
    Lower,
    Upper,
    Snake,
    ScreamingSnake,
    Kebab,
    ScreamingKebab,
    Camel,
    Pascal,
}

impl RenameAll {
    fn parse(text: &str) -> Option<RenameAll> {
        Some(match text {
            "lowercase" => RenameAll::Lower,
            "UPPERCASE" => RenameAll::Upper,
            "snake_case" => RenameAll::Snake,
            "SCREAMING_SNAKE_CASE" => RenameAll::ScreamingSnake,
            "kebab-case" => RenameAll::Kebab,
            "SCREAMING-KEBAB-CASE" => RenameAll::ScreamingKebab,
            "camelCase" => RenameAll::Camel,
            "PascalCase" => RenameAll::Pascal,
            _ => return None,
        })
    }

    /// The column name of a field named `name` (a snake_case Rust identifier).
    pub fn apply(self, name: &str) -> String {
        let words: Vec<&str> = name.split('_').filter(|w| !w.is_empty()).collect();
        let capitalized = |w: &str| {
            let mut chars = w.chars();
            chars.next().map(|c| c.to_uppercase().chain(chars).collect::<String>()).unwrap_or_default()
        };
        match self {
            RenameAll::Lower => name.to_lowercase(),
            RenameAll::Upper => name.to_uppercase(),
            RenameAll::Snake => name.to_owned(),
            RenameAll::ScreamingSnake => name.to_uppercase(),
            RenameAll::Kebab => name.replace('_', "-"),
            RenameAll::ScreamingKebab => name.replace('_', "-").to_uppercase(),
            RenameAll::Pascal => words.iter().map(|w| capitalized(w)).collect(),
            RenameAll::Camel => {
                words.iter().enumerate().map(|(i, w)| if i == 0 { (*w).to_owned() } else { capitalized(w) }).collect()
            }
        }
    }
}

fn sqlx_rename_all(input: &DeriveInput, errors: &mut Errors) -> Option<RenameAll> {
    let mut rename_all = None;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("sqlx")) {
        let _ = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("rename_all") {
                let lit: LitStr = meta.value()?.parse()?;
                match RenameAll::parse(&lit.value()) {
                    Some(r) => rename_all = Some(r),
                    None => errors.push(syn::Error::new_spanned(&lit, "unknown `rename_all` convention")),
                }
            } else if meta.input.peek(syn::Token![=]) {
                let _: syn::Expr = meta.value()?.parse()?;
            }
            Ok(())
        });
    }
    rename_all
}

/// The column name given by `#[sqlx(rename = "..")]`, if any.
fn sqlx_rename(field: &syn::Field) -> Option<String> {
    let mut rename = None;
    for attr in field.attrs.iter().filter(|a| a.path().is_ident("sqlx")) {
        let _ = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("rename") {
                rename = Some(meta.value()?.parse::<LitStr>()?.value());
            } else if meta.input.peek(syn::Token![=]) {
                let _: syn::Expr = meta.value()?.parse()?;
            }
            Ok(())
        });
    }
    rename
}
