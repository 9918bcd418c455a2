#[derive(serde::Serialize, serde::Deserialize, sqlx::FromRow, sqlacache_sqlx::Cacheable)]
#[cache(tabel = "users")]
struct User {
    #[cache(primary)]
    id: i64,
}

fn main() {}
