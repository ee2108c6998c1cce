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
    if let Some(spec) = std::env::var("CORRAL_LOG").ok().filter(|v| !v.is_empty()) {
        init_logs(&spec);
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

/// Log to stderr what `spec` asks for: a default level and `target=level` pairs, comma-separated
/// (tracing-subscriber's `Targets`: no regex engine for span and field filters, which every start
/// of the binary would relocate). A spec that does not parse is reported and logs nothing.
fn init_logs(spec: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    match spec.parse::<tracing_subscriber::filter::Targets>() {
        Ok(filter) => tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .with(filter)
            .init(),
        Err(e) => eprintln!("corral: CORRAL_LOG={spec:?} ignored: {e}"),
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
