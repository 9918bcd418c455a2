#[derive(serde::Serialize, serde::Deserialize, sqlacache_derive::Cacheable)]
#[cache(table = "users", ops(get, fetch_all))]
struct User {
    #[cache(pk)]
    id: i64,
}

fn main() {}
