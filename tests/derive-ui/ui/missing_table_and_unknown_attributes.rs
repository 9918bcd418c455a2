#[derive(serde::Serialize, serde::Deserialize, sqlacache_derive::Cacheable)]
#[cache(tabel = "users")]
struct User {
    #[cache(primary)]
    id: i64,
}

fn main() {}
