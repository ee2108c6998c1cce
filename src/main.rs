//! The `corral` executable: parses the command line and calls the libraries.
#![forbid(unsafe_code)]

fn main() {
    println!("corral {}", env!("CARGO_PKG_VERSION"));
}
