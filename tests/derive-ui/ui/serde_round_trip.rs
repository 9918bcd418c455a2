#[derive(serde::Serialize, serde::Deserialize, sqlacache_derive::Cacheable)]
#[cache(table = "users")]
struct User {
    #[cache(pk)]
    id: i64,
    #[serde(skip)]
    password_hash: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    nickname: Option<String>,
    #[serde(default, rename = "display")]
    display_name: String,
}

fn main() {}
