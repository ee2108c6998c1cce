//! Command-line interface: one subcommand group per file.

pub mod image;
pub mod sandbox;
pub mod serve;
pub mod submit;
pub mod tenant;
pub mod units;

use clap::{Parser, Subcommand};

/// Corral: a multi-tenant sandboxed code execution service.
#[derive(Debug, Parser)]
#[command(name = "corral", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The command line when it starts with `sandbox`: the same `corral sandbox ...` commands as
/// [`Cli`] parses, without building the other subcommands' arguments (see `main`).
#[derive(Debug, Parser)]
#[command(name = "corral", version)]
pub struct SandboxOnly {
    /// What to do.
    #[command(subcommand)]
    command: SandboxOnlyCommand,
}

#[derive(Debug, Subcommand)]
enum SandboxOnlyCommand {
    /// Run commands in the sandbox directly, without the service.
    #[command(subcommand)]
    Sandbox(sandbox::SandboxCommand),
}

impl SandboxOnly {
    /// Run the parsed command; the process exit code.
    pub fn run(self) -> anyhow::Result<i32> {
        let SandboxOnlyCommand::Sandbox(cmd) = self.command;
        sandbox::run(cmd)
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run commands in the sandbox directly, without the service.
    #[command(subcommand)]
    Sandbox(sandbox::SandboxCommand),
    /// Build, list, remove, import and export images in the data directory's image store.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Run the service: HTTP API, job store and a local worker node on the sandbox.
    Serve(serve::ServeArgs),
    /// Create, list and revoke tenants (API keys and quotas).
    #[command(subcommand)]
    Tenant(tenant::TenantCommand),
    /// Send a program to a Corral server and print the result.
    Submit(submit::SubmitArgs),
}

/// Run the parsed command; the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Sandbox(cmd) => sandbox::run(cmd),
        Command::Image(cmd) => image::run(cmd),
        Command::Serve(args) => serve::run(args),
        Command::Tenant(cmd) => tenant::run(cmd),
        Command::Submit(args) => submit::run(args),
    }
}
