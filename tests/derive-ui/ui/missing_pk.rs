#[derive(serde::Serialize, serde::Deserialize, sqlacache_derive::Cacheable)]
#[cache(table = "users")]
struct User {
    id: i64,
    name: String,
}

fn main() {}
