#[derive(serde::Serialize, serde::Deserialize, sqlacache_derive::Cacheable)]
#[cache(table = "users", ttl = "15m")]
struct User {
    #[cache(pk)]
    id: i64,
}

#[derive(serde::Serialize, serde::Deserialize, sqlacache_derive::Cacheable)]
#[cache(table = "orders", ttl = 0)]
struct Order {
    #[cache(pk)]
    id: i64,
}

fn main() {}
