//! Row types of one table, with a primary key: [`Cacheable`], what `get` reads.

use crate::model::Model;
use crate::row::{CachedRow, Storable};

/// A row type of one table, with a primary key: what [`CachedPool::get`](crate::CachedPool::get)
/// reads. Implement it with `#[derive(Cacheable)]`. Every `Cacheable` type is a [`CachedRow`]
/// too, so `query_as` reads it as well.
///
/// Register each model with [`model`](crate::CachedPoolBuilder::model): `build()` then checks
/// that its table exists and that its `#[cache(pk)]` fields are the table's primary key, and the
/// table takes the model's `ops` and `ttl`. A model used without registration is checked and
/// registered at its first use; if it does not check out, reads into it are never cached
/// ([`Uncached::BadModel`](crate::Uncached::BadModel)).
///
/// ```
/// use sqlacache_sqlx::{Cacheable, Ops};
///
/// #[derive(sqlx::FromRow, serde::Serialize, serde::Deserialize, Cacheable)]
/// #[cache(table = "memberships", ops(get, fetch), ttl = 60)]
/// struct Membership {
///     #[cache(pk)]
///     org_id: i64,
///     #[cache(pk)]
///     user_id: i64,
///     role: String,
/// }
///
/// assert_eq!(Membership::MODEL.primary_key, ["org_id", "user_id"]);
/// assert_eq!(Membership::MODEL.ops, Ops::GET | Ops::FETCH);
/// assert_eq!(Membership::MODEL.ttl_secs, Some(60));
/// assert_eq!(Membership::MODEL.get_sql, r#"SELECT * FROM memberships WHERE "org_id" = $1 AND "user_id" = $2"#);
/// let key: <Membership as Cacheable>::Key = (1, 2);
/// ```
///
/// `get` reads only models: a type with no table and key is an error at compile time ("`Titles`
/// has no table and primary key, so `get` cannot read it"). Read it with `query_as`.
///
/// ```compile_fail,E0277
/// #[derive(sqlx::FromRow, serde::Serialize, serde::Deserialize, sqlacache_sqlx::CachedRow)]
/// struct Titles {
///     title: String,
/// }
///
/// async fn demo(cache: sqlacache_sqlx::CachedPool) {
///     let _ = cache.get::<Titles>(1).await;
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no table and primary key, so `get` cannot read it",
    label = "`get` needs a type with `#[derive(Cacheable)]`",
    note = "derive `Cacheable` with `#[cache(table = \"..\")]` and `#[cache(pk)]` on the key fields, \
            or read this type with `query_as`"
)]
pub trait Cacheable:
    Storable + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Sync + Unpin + 'static
{
    /// The primary key: the key field's type, or a tuple of them for a composite key.
    type Key: serde::Serialize + Clone + Send + Sync + 'static;

    /// The table, key, ops, TTL and fingerprint.
    const MODEL: Model;

    /// Binds a key as the arguments of [`Model::get_sql`].
    fn bind_key(key: Self::Key, args: &mut sqlx::postgres::PgArguments) -> Result<(), sqlx::error::BoxDynError>;

    /// [`CachedRow::fingerprint`] of this type, made by the derive.
    #[doc(hidden)]
    fn __fingerprint() -> u64;

    /// [`CachedRow`]'s `__cloner`, made by the derive.
    #[doc(hidden)]
    fn __cloner() -> Option<fn(&Self) -> Self> {
        None
    }
}

// Not a supertrait: a model that misses serde's derives then gets one error (from `Storable`),
// not one per trait that needs it.
impl<T: Cacheable> CachedRow for T {
    fn fingerprint() -> u64 {
        T::__fingerprint()
    }

    const __MODEL: Option<Model> = Some(T::MODEL);

    fn __cloner() -> Option<fn(&Self) -> Self> {
        <T as Cacheable>::__cloner()
    }
}
