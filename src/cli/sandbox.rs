//! `corral sandbox run`: one command in one sandbox, the outcome as one JSON object on stdout.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use corral_sandbox::{FileIn, Limits, Outcome, Sandbox, SandboxConfig, Spec, Stdin};
use serde_json::json;

use super::units::{parse_seconds, parse_size};

/// `corral sandbox ...`
#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Run one command in a fresh sandbox and print the outcome as one JSON object.
    ///
    /// Exits 0 whenever the sandbox itself worked, whatever the command did; bad options, a missing
    /// image or a sandbox failure exit non-zero with a one-line error on stderr.
    Run(RunArgs),
}

/// Options of `corral sandbox run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Image to run on: `host`, or an image built or imported into the data directory's store.
    #[arg(long, default_value = "host")]
    image: String,
    /// Data directory holding the image store (shared with `corral image` and `corral serve`).
    #[arg(long, default_value = super::image::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// CPU time limit in seconds, all processes and threads together.
    #[arg(long, value_parser = parse_seconds, default_value = "2")]
    cpu_time: Duration,
    /// Wall-clock time limit in seconds.
    #[arg(long, value_parser = parse_seconds, default_value = "5")]
    wall_time: Duration,
    /// Memory limit (RAM + swap, including files written to the job's tmpfs), e.g. 256M.
    #[arg(long, value_parser = parse_size, default_value = "256M")]
    memory: u64,
    /// Processes and threads at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    processes: u32,
    /// Bytes kept per output stream; past it the job is killed (output_limit).
    #[arg(long, value_parser = parse_size, default_value = "1M")]
    output_limit: u64,
    /// Size of the job's private disk (working directory, /tmp, /dev/shm), e.g. 64M.
    #[arg(long, value_parser = parse_size, default_value = "64M")]
    disk: u64,
    /// Host file copied into the working directory with its mode bits (repeatable).
    #[arg(long = "file", value_name = "HOSTPATH")]
    files: Vec<PathBuf>,
    /// File whose contents are the job's standard input (default: empty).
    #[arg(long, value_name = "FILE")]
    stdin: Option<PathBuf>,
    /// Give the job a private network namespace with loopback up and TCP allowed (off by default).
    #[arg(long)]
    network: bool,
    /// Run the container's PID 1 in a user namespace whose root is an unprivileged host uid.
    #[arg(long)]
    userns: bool,
    /// Directory for the sandbox's own state.
    #[arg(long, default_value = "/run/corral", hide = true)]
    state_dir: PathBuf,
    /// Cgroup (under each hierarchy) holding the slot cgroups; tests use their own.
    #[arg(long, default_value = "corral", hide = true)]
    cgroup_parent: String,
    /// First uid of the sandbox's range (`uid_base..uid_base + 8192`); tests use their own.
    #[arg(long, default_value_t = 1_000_000, hide = true)]
    uid_base: u32,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

/// Run a sandbox subcommand.
pub fn run(cmd: SandboxCommand) -> anyhow::Result<i32> {
    match cmd {
        SandboxCommand::Run(args) => run_one(args),
    }
}

fn run_one(args: RunArgs) -> anyhow::Result<i32> {
    let spec_files = read_files(&args.files)?;
    let stdin = match &args.stdin {
        Some(path) => Stdin::Bytes(
            std::fs::read(path).with_context(|| format!("reading --stdin {}", path.display()))?,
        ),
        None => Stdin::Empty,
    };
    // Resolve the image before starting the sandbox: a missing image is an error, never the host.
    let store_image = if args.image == "host" {
        None
    } else {
        Some(super::image::sandbox_image(&args.data_dir, &args.image)?)
    };
    // This command is single-threaded and runs one job: it clones the job's PID 1 itself, and
    // leaves the empty slot cgroups and network namespace for the next command.
    let mut config = SandboxConfig::one_shot();
    config.user_namespace = args.userns;
    config.state_dir = args.state_dir.clone();
    config.cgroup_parent = args.cgroup_parent.clone();
    config.uid_base = args.uid_base;
    let sandbox = Sandbox::new(config).context("starting the sandbox")?;
    let image = store_image.unwrap_or_else(|| sandbox.host_image());
    let spec = Spec {
        image,
        argv: args.command,
        files: spec_files,
        stdin,
        limits: Limits {
            cpu_time: args.cpu_time,
            wall_time: args.wall_time,
            memory_bytes: args.memory,
            processes: args.processes,
            output_bytes: args.output_limit,
            disk_bytes: args.disk,
            ..Limits::default()
        },
        network: args.network,
        ..Spec::default()
    };
    let outcome = sandbox
        .run(spec, &mut |_, _| {})
        .context("running the job")?;
    println!("{}", outcome_json(&outcome));
    Ok(0)
}

fn read_files(paths: &[PathBuf]) -> anyhow::Result<Vec<FileIn>> {
    use std::os::unix::fs::PermissionsExt;
    paths
        .iter()
        .map(|path| {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .with_context(|| format!("--file {}: no usable file name", path.display()))?;
            let meta =
                std::fs::metadata(path).with_context(|| format!("--file {}", path.display()))?;
            if !meta.is_file() {
                bail!("--file {}: not a regular file", path.display());
            }
            let contents =
                std::fs::read(path).with_context(|| format!("--file {}", path.display()))?;
            Ok(FileIn {
                name: name.to_string(),
                contents,
                mode: meta.permissions().mode() & 0o777,
            })
        })
        .collect()
}

/// The outcome as the JSON object `corral sandbox run` prints.
pub fn outcome_json(o: &Outcome) -> serde_json::Value {
    json!({
        "status": o.status,
        "limit": o.limit,
        "exit_code": o.exit_code,
        "signal": o.signal,
        "cpu_time_ms": o.cpu_time.as_millis() as u64,
        "wall_time_ms": o.wall_time.as_millis() as u64,
        "memory_peak_bytes": o.memory_peak_bytes,
        "stdout": String::from_utf8_lossy(&o.stdout),
        "stderr": String::from_utf8_lossy(&o.stderr),
        "stdout_truncated": o.stdout_truncated,
        "stderr_truncated": o.stderr_truncated,
        "error": o.error,
    })
}
