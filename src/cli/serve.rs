//! `corral serve`: the whole service in one process: the gateway (HTTP API, SQLite store,
//! dispatcher, webhooks) and one in-process worker node on the real sandbox, joined by the same
//! protocol messages that cross the network between machines.
//!
//! The data directory's image store (`<data-dir>/images`, shared with `corral image`) is the
//! node's: languages run on the first of their images found there (or `host`), a name pinned in
//! images.lock (compiled in, or `<data-dir>/images.lock`) runs on exactly its pinned digest, and
//! the gateway serves the store's layers on `GET /v1/images/{digest}` through [`StoreLayers`] to
//! nodes presenting `--node-token` (or a tenant key), and names each job's exact layers in its
//! assignment.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use corral_gateway::{Config, Gateway, LayerSource, LayerStream, SqliteStore, Store};
use corral_images::digest::Digest;
use corral_images::lock::Lock;
use corral_images::serve::LayerServer;
use corral_protocol::ImageRef;
use corral_sandbox::{Sandbox, SandboxConfig};
use corral_worker::{serve_node, NodeLayers, SandboxExecutor, Worker, WorkerConfig};

use super::units::parse_size;

/// `corral serve` flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0: any free port; the chosen one is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the job store and the image store (`images/`, see `corral image`) live.
    #[arg(long, default_value = "./corral-data")]
    pub data_dir: PathBuf,
    /// Sandbox slots (jobs at once); default: one per CPU.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub slots: Option<u32>,
    /// Largest request body.
    #[arg(long, value_parser = parse_size, default_value = "10M")]
    pub max_body: u64,
    /// The sandbox's state directory.
    #[arg(long, default_value = "/run/corral")]
    pub state_dir: PathBuf,
    /// Cgroup (under each hierarchy's root) holding the slot cgroups.
    #[arg(long, default_value = "corral")]
    pub cgroup_parent: String,
    /// First uid of the slots' range (8192 uids from it must belong to nobody else).
    #[arg(long, default_value_t = 1_000_000)]
    pub uid_base: u32,
    /// Let webhooks reach loopback, private and link-local addresses (off: public ones only).
    #[arg(long)]
    pub allow_private_callbacks: bool,
    /// Directory of language definitions (`*.toml`) instead of the built-in ones.
    #[arg(long)]
    pub languages: Option<PathBuf>,
    /// Shared secret worker nodes present (`Authorization: Bearer TOKEN`) to fetch image layers
    /// from `/v1/images/...`; without it only tenant keys may fetch layers.
    #[arg(long, env = "CORRAL_NODE_TOKEN", hide_env_values = true)]
    pub node_token: Option<String>,
}

/// Runs the service until SIGINT or SIGTERM.
pub fn run(args: ServeArgs) -> anyhow::Result<i32> {
    let store = Arc::new(
        SqliteStore::open(&args.data_dir)
            .with_context(|| format!("opening the store in {}", args.data_dir.display()))?,
    );
    let sandbox = start_sandbox(&args)?;
    let languages = match &args.languages {
        Some(dir) => corral_images::language::LanguageSet::load_dir(dir)
            .with_context(|| format!("loading languages from {}", dir.display()))?,
        None => corral_images::language::LanguageSet::builtin(),
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(serve(args, store, sandbox, languages))?;
    // Jobs still running are abandoned here: the store has them as `running`, and the next start
    // queues them again (their sandboxes are torn down as the process exits).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(0)
}

/// The gateway, the in-process worker node and the HTTP server, until a shutdown signal.
async fn serve(
    args: ServeArgs,
    store: Arc<SqliteStore>,
    sandbox: Sandbox,
    languages: corral_images::language::LanguageSet,
) -> anyhow::Result<()> {
    let registry = prometheus::Registry::new();
    let config = Config {
        max_body_bytes: usize::try_from(args.max_body).unwrap_or(usize::MAX),
        webhook_allow_private: args.allow_private_callbacks,
        node_token: args.node_token.clone().filter(|t| !t.is_empty()),
        ..Config::default()
    };
    let tenants = store.list_tenants()?.len();
    let images = corral_images::store::Store::open(&args.data_dir)
        .with_context(|| format!("opening the image store in {}", args.data_dir.display()))?;
    let lock = Lock::load(&args.data_dir).context("loading images.lock")?;
    let mut gateway = Gateway::start(config, store as Arc<dyn Store>, registry.clone()).await?;
    let served = LayerServer::new(images.clone(), lock.clone());
    gateway.serve_layers(Arc::new(StoreLayers(served)));
    // The node shares the gateway's store: it never lacks a layer, so it has no remote.
    let layers = Arc::new(NodeLayers::new(images, lock));
    let executor = Arc::new(SandboxExecutor::with_layers(sandbox, layers));
    let worker = Worker::new(
        WorkerConfig::new(node_name()),
        executor,
        languages,
        &registry,
    )?;
    let (to_gateway, from_node) = tokio::sync::mpsc::channel(1024);
    let (to_node, from_gateway) = tokio::sync::mpsc::channel(1024);
    gateway.dispatcher().connect(to_node, from_node);
    tokio::spawn(async move {
        if let Err(e) = serve_node(worker, to_gateway, from_gateway).await {
            tracing::error!(error = %e, "worker node stopped");
        }
    });
    listen(&args, &gateway, tenants).await
}

/// Binds, announces itself, serves until SIGINT or SIGTERM, then stops gracefully.
async fn listen(args: &ServeArgs, gateway: &Gateway, tenants: usize) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    // stdout may be a pipe its reader closed; the service does not depend on it.
    let mut out = std::io::stdout();
    let _ = writeln!(out, "corral: listening on http://{addr}");
    if tenants == 0 {
        let _ = writeln!(
            out,
            "corral: no tenants yet; create one with `corral tenant create NAME --data-dir {}`",
            args.data_dir.display()
        );
    }
    let _ = out.flush();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, gateway.router()).with_graceful_shutdown(async {
        let _ = stopped.await;
    });
    let server = tokio::spawn(std::future::IntoFuture::into_future(server));
    shutdown_signal().await;
    let _ = stop.send(());
    // Open event streams and long waits would hold a graceful shutdown forever: give them a
    // few seconds, then close them.
    match tokio::time::timeout(std::time::Duration::from_secs(5), server).await {
        Ok(result) => result
            .context("HTTP server task")?
            .context("serving HTTP")?,
        Err(_) => eprintln!("corral: closing connections still open"),
    }
    eprintln!("corral: stopped; unfinished jobs run again at the next start");
    Ok(())
}

fn start_sandbox(args: &ServeArgs) -> anyhow::Result<Sandbox> {
    let mut config = SandboxConfig::host_defaults()?;
    if let Some(slots) = args.slots {
        config.slots = slots as usize;
    }
    config.state_dir = args.state_dir.clone();
    config.cgroup_parent = args.cgroup_parent.clone();
    config.uid_base = args.uid_base;
    Sandbox::new(config).context("starting the sandbox (needs root)")
}

/// The image store's layers, for the gateway's `GET /v1/images/{digest}` (and its manifest), and
/// each assignment's exact image.
struct StoreLayers(LayerServer);

impl LayerSource for StoreLayers {
    fn manifest(&self, digest: &str) -> Result<Option<Vec<u8>>, String> {
        let digest = Digest::parse(digest).map_err(|e| e.to_string())?;
        self.0.manifest_json(&digest).map_err(|e| e.to_string())
    }

    fn open(&self, digest: &str) -> Result<Option<LayerStream>, String> {
        let digest = Digest::parse(digest).map_err(|e| e.to_string())?;
        self.0.open(&digest).map_err(|e| e.to_string())
    }

    fn image(&self, name: &str) -> Result<Option<ImageRef>, String> {
        let found = self.0.image(name).map_err(|e| e.to_string())?;
        Ok(found.map(|(top, chain)| ImageRef {
            name: name.to_string(),
            digest: top.to_string(),
            layers: chain.iter().map(Digest::to_string).collect(),
        }))
    }
}

fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".to_string())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("corral: shutting down");
}
