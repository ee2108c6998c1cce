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
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print to stdout and exit 0.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            eprintln!("corral: {} (see --help)", usage_error(&e.to_string()));
            std::process::exit(2);
        }
    };
    match cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("corral: {e:#}");
            std::process::exit(2);
        }
    }
}

/// A clap usage error as one line: its message and details, without the usage and tip lines.
fn usage_error(rendered: &str) -> String {
    let parts: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with("Usage:")
                && !l.starts_with("For more information")
                && !l.starts_with("tip:")
        })
        .collect();
    parts.join(" ").trim_start_matches("error: ").to_string()
}
