#[derive(sqlacache_sqlx::Cacheable)]
#[cache(table = "kinds")]
enum Kind {
    A,
    B,
}

fn main() {}
