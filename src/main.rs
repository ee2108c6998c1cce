//! The `corral` executable: parses the command line, sets up tracing and calls the libraries.
#![forbid(unsafe_code)]

mod cli;

use clap::Parser;

fn main() {
    // A sandbox spawner re-executes this binary; it must not parse the command line.
    corral_sandbox::run_helper_if_requested();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("CORRAL_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("corral: {e:#}");
            std::process::exit(2);
        }
    }
}
