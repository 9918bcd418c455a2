#[derive(serde::Serialize, serde::Deserialize, sqlx::FromRow, sqlacache_sqlx::Cacheable)]
#[cache(table = "users", ops(get, fetch_all))]
struct User {
    #[cache(pk)]
    id: i64,
}

fn main() {}
