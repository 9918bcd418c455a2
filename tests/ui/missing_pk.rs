#[derive(serde::Serialize, serde::Deserialize, sqlx::FromRow, sqlacache_sqlx::Cacheable)]
#[cache(table = "users")]
struct User {
    id: i64,
    name: String,
}

fn main() {}
