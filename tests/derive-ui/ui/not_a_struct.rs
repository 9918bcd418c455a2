#[derive(sqlacache_derive::Cacheable)]
#[cache(table = "kinds")]
enum Kind {
    A,
    B,
}

fn main() {}
