//! `corral tenant`: create, list and revoke tenants in the data directory's store.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use corral_gateway::store::TenantQuota;
use corral_gateway::tenants::{create_tenant, DEFAULT_QUOTA};
use corral_gateway::{SqliteStore, Store};

use super::units::{parse_seconds, parse_size};

/// `corral tenant` subcommands.
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant; prints its API key on stdout (one line) and its webhook secret on stderr.
    Create(CreateArgs),
    /// List tenants and their quotas.
    List(DataDir),
    /// Revoke a tenant's API key (its jobs stay readable to operators in the store).
    Revoke {
        /// The tenant.
        name: String,
        #[command(flatten)]
        data: DataDir,
    },
}

/// The store's location.
#[derive(Debug, Args)]
pub struct DataDir {
    /// Where the job store lives.
    #[arg(long, default_value = "./corral-data")]
    pub data_dir: PathBuf,
}

/// `corral tenant create` flags.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Name: 1 to 64 of a-z, 0-9, _ and -.
    pub name: String,
    /// Jobs running at once (more wait in the queue).
    #[arg(long, default_value_t = DEFAULT_QUOTA.max_concurrent,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent: u32,
    /// API requests per minute.
    #[arg(long, default_value_t = DEFAULT_QUOTA.rate_per_minute,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: u32,
    /// Largest CPU time per run, in seconds.
    #[arg(long, value_parser = parse_seconds, default_value = "10")]
    pub max_cpu_time: std::time::Duration,
    /// Largest memory per run (e.g. 512M, 2G).
    #[arg(long, value_parser = parse_size, default_value = "1G")]
    pub max_memory: u64,
    /// Allow this tenant's jobs to ask for network access.
    #[arg(long)]
    pub network: bool,
    #[command(flatten)]
    pub data: DataDir,
}

/// Runs a tenant subcommand.
pub fn run(cmd: TenantCommand) -> anyhow::Result<i32> {
    match cmd {
        TenantCommand::Create(args) => {
            let store = open(&args.data)?;
            let quota = TenantQuota {
                max_concurrent: args.max_concurrent,
                rate_per_minute: args.rate,
                max_cpu_time_ms: args.max_cpu_time.as_millis() as u64,
                max_memory_bytes: args.max_memory,
                network_allowed: args.network,
            };
            let creds = create_tenant(&store, &args.name, quota)?;
            eprintln!("webhook secret: {}", creds.webhook_secret);
            println!("{}", creds.api_key);
        }
        TenantCommand::List(data) => {
            let store = open(&data)?;
            println!("NAME\tSTATE\tCONCURRENT\tRATE/MIN\tMAX_CPU_MS\tMAX_MEMORY\tNETWORK");
            for t in store.list_tenants()? {
                let q = t.quota;
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    t.name,
                    if t.revoked { "revoked" } else { "active" },
                    q.max_concurrent,
                    q.rate_per_minute,
                    q.max_cpu_time_ms,
                    q.max_memory_bytes,
                    if q.network_allowed { "yes" } else { "no" },
                );
            }
        }
        TenantCommand::Revoke { name, data } => {
            let store = open(&data)?;
            if !store.revoke_tenant(&name)? {
                anyhow::bail!("no tenant named {name:?}");
            }
            eprintln!("revoked {name}");
        }
    }
    Ok(0)
}

fn open(data: &DataDir) -> anyhow::Result<SqliteStore> {
    SqliteStore::open(&data.data_dir)
        .with_context(|| format!("opening the store in {}", data.data_dir.display()))
}
