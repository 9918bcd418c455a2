fn main() {
    for sql in std::env::args().skip(1) {
        eprintln!("{sql}");
        println!("{:?}", sqlacache_core::analyze::analyze(&sql));
    }
}
