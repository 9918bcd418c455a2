//! Prints how the analyzer reads each SQL argument: whether it may be cached, what it writes.
//!
//! ```sh
//! cargo run -p sqlacache-core --example analyze -- "UPDATE users SET name = 'x' WHERE id = 1"
//! ```

fn main() {
    for sql in std::env::args().skip(1) {
        println!("{sql}\n  {:#?}", sqlacache_core::analyze::analyze(&sql));
    }
}
