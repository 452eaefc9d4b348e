fn main() {
    if let Err(e) = virtualfit::cli::main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
