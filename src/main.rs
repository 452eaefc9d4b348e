//! The `virtualfit` binary: parses the command line and runs it (see `cli`).

fn main() {
    if let Err(e) = virtualfit::cli::main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
