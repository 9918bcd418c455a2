//! Shows how the analyzer reads a statement, before the catalog (and PostgreSQL's own check)
//! judge it: whether it is a cacheable read, what it writes, which functions it calls.
//!
//! ```sh
//! cargo run -p sqlacache-core --example analyze -- "SELECT count(*) FROM users WHERE active"
//! ```

fn main() {
    let sql = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    if sql.trim().is_empty() {
        eprintln!("usage: cargo run -p sqlacache-core --example analyze -- \"<sql>\"");
        std::process::exit(2);
    }
    println!("{:#?}", sqlacache_core::analyze::analyze(&sql));
}
