#[derive(serde::Serialize, serde::Deserialize, sqlacache_derive::CachedRow)]
#[cache(table = "posts")]
struct Summary {
    #[cache(pk)]
    id: i64,
    #[serde(flatten)]
    extra: std::collections::HashMap<String, String>,
}

#[derive(sqlacache_derive::CachedRow)]
enum Kind {
    A,
}

#[derive(sqlacache_derive::CachedRow)]
struct Unit;

#[derive(serde::Serialize, serde::Deserialize, sqlacache_derive::CachedRow)]
struct Page<T> {
    rows: Vec<T>,
}

fn main() {}
