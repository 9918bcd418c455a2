//! `query_as!`: `sqlx::query_as!` with compile-time checked SQL, cached.

/// Like `sqlx::query_as!` (same arguments, same compile-time checks), but returns a
/// [`CachedMap`](crate::CachedMap) whose `fetch_*` methods take a [`CachedPool`](crate::CachedPool)
/// and answer from the cache. The output type must be a [`CachedRow`](crate::CachedRow) (it
/// needs no `FromRow`: the macro maps columns to fields), the SQL one string literal, and each
/// argument `serde::Serialize` (it is part of the cache key). Each argument expression is
/// evaluated once.
///
/// ```no_run
/// #[derive(serde::Serialize, serde::Deserialize, sqlacache_sqlx::CachedRow)]
/// struct User {
///     id: i64,
///     name: String,
///     active: bool,
/// }
///
/// # async fn demo(cache: sqlacache_sqlx::CachedPool) -> Result<(), sqlx::Error> {
/// let user: Option<User> =
///     sqlacache_sqlx::query_as!(User, "SELECT id, name, active FROM users WHERE id = $1", 1_i64)
///         .fetch_optional(&cache)
///         .await?;
/// # Ok(()) }
/// ```
#[macro_export]
macro_rules! query_as {
    ($out:path, $sql:literal $(,)?) => {{
        let __key = ::core::result::Result::Ok($crate::__private::ReadKey::new(<$out as $crate::CachedRow>::fingerprint()));
        $crate::CachedMap::<$out, _>::new($sql, ::sqlx::query_as!($out, $sql), __key)
    }};
    ($out:path, $sql:literal, $($args:expr),+ $(,)?) => {
        $crate::__query_as_bind!(($out, $sql) [] $($args,)+)
    };
}

/// Binds each argument of [`query_as!`] to a name once, then expands to the cached query.
#[doc(hidden)]
#[macro_export]
macro_rules! __query_as_bind {
    (($out:path, $sql:literal) [$($bound:ident)*] $head:expr, $($rest:expr,)*) => {
        match &$head {
            __arg => $crate::__query_as_bind!(($out, $sql) [$($bound)* __arg] $($rest,)*),
        }
    };
    (($out:path, $sql:literal) [$($bound:ident)*]) => {{
        let mut __key = ::core::result::Result::Ok($crate::__private::ReadKey::new(<$out as $crate::CachedRow>::fingerprint()));
        $( $crate::__private::add_arg(&mut __key, $bound); )*
        $crate::CachedMap::<$out, _>::new($sql, ::sqlx::query_as!($out, $sql, $($bound),*), __key)
    }};
}
