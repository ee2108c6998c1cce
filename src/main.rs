//! The `corral` executable: parses the command line, sets up tracing and calls the libraries.
#![forbid(unsafe_code)]

mod cli;

use clap::Parser;

fn main() {
    // A sandbox spawner re-executes this binary; it must not parse the command line.
    corral_sandbox::run_helper_if_requested();
    // Logs go to stderr when CORRAL_LOG names what to show (`info`, `corral_worker=debug`, ...).
    // Unset or empty, its filter enables nothing: then no subscriber is set up at all, which a
    // whole `corral sandbox run` per job would pay for (50 µs).
    if std::env::var_os("CORRAL_LOG").is_some_and(|v| !v.is_empty()) {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("CORRAL_LOG"))
            .with_writer(std::io::stderr)
            .init();
    }
    // `corral sandbox ...` is a whole process per job: it parses with the sandbox commands alone
    // instead of building every subcommand's arguments first (a tenth of a millisecond).
    let result = if std::env::args_os().nth(1).is_some_and(|a| a == "sandbox") {
        parse::<cli::SandboxOnly>().run()
    } else {
        cli::run(parse::<cli::Cli>())
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("corral: {e:#}");
            std::process::exit(2);
        }
    }
}

/// The parsed command line; on --help or --version their text, on a usage error one line on
/// stderr, then exit.
fn parse<P: Parser>() -> P {
    match P::try_parse() {
        Ok(parsed) => parsed,
        // --help and --version print to stdout and exit 0.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            eprintln!("corral: {} (see --help)", usage_error(&e.to_string()));
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
