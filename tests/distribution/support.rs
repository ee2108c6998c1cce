//! What tests/distribution.rs runs against: an in-process gateway on a real HTTP server (port 0)
//! serving a store's layers, a worker node on the real sandbox with its own store and a relay to
//! the gateway it can be cut off by, a hand-written HTTP server that misbehaves on purpose, and
//! the probe image.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use corral_gateway::tenants::{create_tenant, DEFAULT_QUOTA};
use corral_gateway::{Config, Gateway, LayerSource, LayerStream, SqliteStore};
use corral_images::digest::Digest;
use corral_images::language::{Language, LanguageSet};
use corral_images::lock::Lock;
use corral_images::oci::{import, ImportOptions};
use corral_images::serve::LayerServer;
use corral_images::store::{Manifest, Store};
use corral_protocol::{CoordinatorMessage, ImageRef, WorkerMessage};
use corral_sandbox::{Helper, SandboxConfig};
use corral_worker::{serve_node, NodeLayers, Remote, SandboxExecutor, Worker, WorkerConfig};
use tokio::sync::mpsc;

use super::common;

/// The node token both sides are configured with.
pub const TOKEN: &str = "corral-test-node-token";

const PROBE: &str = r#"
#include <stdio.h>
#include <string.h>
static void cat(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) { printf("%s: missing\n", path); return; }
    char buf[256]; size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) fwrite(buf, 1, n, stdout);
    fclose(f);
}
int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "--version")) { puts("probe 1.0"); return 0; }
    cat("/etc/marker");
    for (int i = 1; i < argc; i++) cat(argv[i]);
    return 0;
}
"#;

/// The probe language, on the probe image only.
pub const LANGUAGE: &str = r#"
id = "probe"
name = "Probe"
extensions = ["probe"]
images = ["probe"]
source_file = "main.probe"
[version]
argv = ["/bin/probe", "--version"]
regex = 'probe (\S+)'
[run]
argv = ["/bin/probe", "{main}"]
[run.limits]
cpu_time_ms = 2000
wall_time_ms = 10000
memory_bytes = 268435456
processes = 16
output_bytes = 1048576
file_size_bytes = 1048576
"#;

/// The probe image in `store` as `probe`: a base layer imported from an OCI tarball (the probe
/// binary) and a layer stacked on it holding `/etc/marker` with `marker`.
pub fn import_probe(store: &Store, marker: &str) -> anyhow::Result<Manifest> {
    let probe = common::compile_c("distribution_probe", PROBE);
    let base = common::oci::layer(&[("bin", None, 0o755), ("bin/probe", Some(&probe), 0o755)]);
    let tmp = tempfile::tempdir()?;
    let file = tmp.path().join("probe.tar");
    std::fs::write(
        &file,
        common::oci::tarball(&[base], &["PATH=/bin"], "probe-base:1"),
    )?;
    let base = import(store, &file, Some("probe-base"), &ImportOptions::default())?;
    let upper = store.staging()?;
    std::fs::create_dir(upper.path().join("etc"))?;
    std::fs::write(upper.path().join("etc/marker"), format!("{marker}\n"))?;
    let child = Manifest {
        parent: Some(base.digest.clone()),
        source: "test".into(),
        ..base
    };
    Ok(store.register("probe", upper.path(), child)?)
}

/// What is registered or staged in a store: entries of its layers, manifests, refs and tmp.
pub fn snapshot(store: &Store) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["layers", "manifests", "refs", "tmp"] {
        for entry in std::fs::read_dir(store.root().join(sub))
            .into_iter()
            .flatten()
            .flatten()
        {
            out.push(format!("{sub}/{}", entry.file_name().to_string_lossy()));
        }
    }
    out.sort();
    out
}

/// The gateway's layer source, swappable (to change its lock) while the gateway runs.
pub struct TestLayers(Mutex<Arc<LayerServer>>);

impl TestLayers {
    /// Serve through `server` from now on.
    pub fn set(&self, server: LayerServer) {
        *self.0.lock().unwrap() = Arc::new(server);
    }

    fn get(&self) -> Arc<LayerServer> {
        self.0.lock().unwrap().clone()
    }
}

impl LayerSource for TestLayers {
    fn manifest(&self, digest: &str) -> Result<Option<Vec<u8>>, String> {
        let digest = Digest::parse(digest).map_err(|e| e.to_string())?;
        self.get().manifest_json(&digest).map_err(|e| e.to_string())
    }

    fn open(&self, digest: &str) -> Result<Option<LayerStream>, String> {
        let digest = Digest::parse(digest).map_err(|e| e.to_string())?;
        self.get().open(&digest).map_err(|e| e.to_string())
    }

    fn image(&self, name: &str) -> Result<Option<ImageRef>, String> {
        let found = self.get().image(name).map_err(|e| e.to_string())?;
        Ok(found.map(|(top, chain)| ImageRef {
            name: name.to_string(),
            digest: top.to_string(),
            layers: chain.iter().map(Digest::to_string).collect(),
        }))
    }
}

/// A gateway with one tenant, serving `images` over HTTP.
pub struct Gw {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The tenant's API key.
    pub key: String,
    /// The gateway's image store.
    pub images: Store,
    /// Its layer source.
    pub layers: Arc<TestLayers>,
    gateway: Gateway,
    server: tokio::task::JoinHandle<()>,
    _data: tempfile::TempDir,
}

impl Drop for Gw {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Start a gateway whose image routes take [`TOKEN`], on a free port.
pub async fn start_gateway() -> anyhow::Result<Gw> {
    let data = tempfile::tempdir()?;
    let db = SqliteStore::open(data.path())?;
    let key = create_tenant(&db, "acme", DEFAULT_QUOTA)?.api_key;
    let config = Config {
        node_token: Some(TOKEN.into()),
        ..Config::default()
    };
    let db: Arc<dyn corral_gateway::Store> = Arc::new(db);
    let mut gateway = Gateway::start(config, db, prometheus::Registry::new()).await?;
    let images = Store::open(&data.path().join("gateway"))?;
    let layers = Arc::new(TestLayers(Mutex::new(Arc::new(LayerServer::new(
        images.clone(),
        Lock::default(),
    )))));
    gateway.serve_layers(layers.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let router = gateway.router();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(Gw {
        url,
        key,
        images,
        layers,
        gateway,
        server,
        _data: data,
    })
}

/// A worker node on the real sandbox, connected to a gateway through a relay.
pub struct TestNode {
    /// The node's image store, pins and remote.
    pub layers: Arc<NodeLayers>,
    task: tokio::task::JoinHandle<Result<(), corral_worker::WorkerError>>,
    relay: tokio::task::JoinHandle<()>,
    /// Unmounts and removes what the node leaves, also when a check panics.
    _cleanup: Cleanup,
}

/// What a node leaves behind: its layer mounts, cgroups and directories. Dropped last (after
/// the worker has ended, or on a panic while it may still run: the unmounts are lazy).
pub struct Cleanup {
    cgroup_parent: String,
    state: Option<tempfile::TempDir>,
    /// The node's data directory, whose `images/mnt/*` are unmounted.
    pub dir: Option<tempfile::TempDir>,
}

/// A sandbox of this test process (2 slots, cgroup parent `corral-test-<pid>-dist<n>`, its own
/// uid range and state directory) and what removes it.
pub fn test_sandbox(n: u32) -> anyhow::Result<(corral_sandbox::Sandbox, Cleanup)> {
    let state = tempfile::Builder::new()
        .prefix("corral-dist-test-")
        .tempdir()?;
    let cgroup_parent = format!("corral-test-{}-dist{n}", std::process::id());
    let sandbox = corral_sandbox::Sandbox::new(SandboxConfig {
        slots: 2,
        state_dir: state.path().to_path_buf(),
        cgroup_parent: cgroup_parent.clone(),
        uid_base: 310_000_000 + (std::process::id() % 100_000) * 4 * 8192 + n * 8192,
        helper: Helper::Exec(env!("CARGO_BIN_EXE_corral").into()),
        require_landlock: true,
        keep_cgroups: false,
        keep_netns: false,
        user_namespace: false,
    })
    .context("starting the sandbox")?;
    let cleanup = Cleanup {
        cgroup_parent,
        state: Some(state),
        dir: None,
    };
    Ok((sandbox, cleanup))
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let mnt = dir.path().join("images/mnt");
            for entry in std::fs::read_dir(mnt).into_iter().flatten().flatten() {
                let _ = nix::mount::umount2(&entry.path(), nix::mount::MntFlags::MNT_DETACH);
            }
            drop(dir);
        }
        remove_cgroups(&self.cgroup_parent);
        drop(self.state.take());
    }
}

/// Start a node with an empty store of its own, `lock`'s pins and the gateway as remote, and
/// wait until the gateway offers its `probe` language.
pub async fn start_node(n: u32, gw: &Gw, lock: Lock) -> anyhow::Result<TestNode> {
    let (sandbox, mut cleanup) = test_sandbox(n)?;
    let dir = tempfile::tempdir()?;
    let layers = Arc::new(
        NodeLayers::new(Store::open(dir.path())?, lock).with_remote(Remote::new(&gw.url, TOKEN)),
    );
    let executor = Arc::new(SandboxExecutor::with_layers(sandbox, layers.clone()));
    let languages = LanguageSet::new(vec![Language::parse("probe.toml", LANGUAGE)?])?;
    let registry = prometheus::Registry::new();
    let worker = Worker::new(WorkerConfig::new("remote"), executor, languages, &registry)?;
    let (worker_tx, worker_rx, relay) = relay(gw);
    let task = tokio::spawn(serve_node(worker, worker_tx, worker_rx));
    cleanup.dir = Some(dir);
    let node = TestNode {
        layers,
        task,
        relay,
        _cleanup: cleanup,
    };
    if let Err(e) = node.offered(gw).await {
        let _ = node.stop().await;
        return Err(e);
    }
    Ok(node)
}

/// Connect a node to the gateway's dispatcher through a relay task (aborting it cuts the node
/// off): the node's sender and receiver, and the task.
fn relay(
    gw: &Gw,
) -> (
    mpsc::Sender<WorkerMessage>,
    mpsc::Receiver<CoordinatorMessage>,
    tokio::task::JoinHandle<()>,
) {
    let (to_node, mut from_gateway) = mpsc::channel(64);
    let (to_gateway, from_node) = mpsc::channel(64);
    gw.gateway.dispatcher().connect(to_node, from_node);
    let (to_worker, worker_rx) = mpsc::channel(64);
    let (worker_tx, mut from_worker) = mpsc::channel(64);
    let relay = tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(m) = from_gateway.recv() => if to_worker.send(m).await.is_err() { return },
                Some(m) = from_worker.recv() => if to_gateway.send(m).await.is_err() { return },
                else => return,
            }
        }
    });
    (worker_tx, worker_rx, relay)
}

impl TestNode {
    /// Wait until the gateway offers the node's `probe` language (its layers fetched and its
    /// self-test passed), two minutes at most.
    async fn offered(&self, gw: &Gw) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (_, doc) =
                common::http::call(&gw.url, "GET", "/v1/languages", Some(&gw.key), None).await?;
            let languages = doc["languages"].as_array().into_iter().flatten();
            if languages.clone().any(|l| l["id"] == "probe") {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline && !self.task.is_finished(),
                "the node never offered probe: {doc}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Cut the node off, wait for it to end, unmount its layers and remove its cgroups.
    pub async fn stop(self) -> anyhow::Result<()> {
        let TestNode {
            relay,
            task,
            _cleanup,
            ..
        } = self;
        relay.abort();
        let _ = relay.await;
        let ended = tokio::time::timeout(Duration::from_secs(60), task).await;
        drop(_cleanup);
        ensure!(
            matches!(ended, Ok(Ok(Ok(())))),
            "the node did not stop cleanly: {ended:?}"
        );
        Ok(())
    }
}

fn remove_cgroups(parent: &str) {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join(parent)];
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        if !entry.path().is_symlink() {
            dirs.push(entry.path().join(parent));
        }
    }
    for dir in dirs.into_iter().filter(|d| d.is_dir()) {
        if let Err(e) = std::fs::remove_dir(&dir) {
            eprintln!("warning: removing cgroup {}: {e}", dir.display());
        }
    }
}

/// How the hand-written server misbehaves (always on the lowest layer, fetched first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fake {
    /// Serves everything as stored.
    Honest,
    /// One byte of the layer flipped.
    Tamper,
    /// Announces the layer's whole length, sends half, closes.
    Truncate,
    /// Answers the layer's manifest request with another layer's manifest.
    WrongManifest,
}

/// A one-connection-at-a-time HTTP/1.1 server in a thread, answering image routes from a
/// [`LayerServer`], misbehaving as told; stopped when dropped.
pub struct FakeServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Authorization headers seen.
    auth: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeServer {
    /// Listen on a free port.
    pub fn start(served: Arc<LayerServer>, fake: Fake, lowest: Digest) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        let auth = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopping) = (auth.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(conn) = conn {
                    let _ = answer(conn, &served, fake, &lowest, &seen);
                }
            }
        });
        Ok(FakeServer {
            url,
            auth,
            stop,
            thread: Some(thread),
        })
    }

    /// Whether every request carried exactly `Bearer TOKEN` (and there was one).
    pub fn saw_only_the_node_token(&self) -> bool {
        let auth = self.auth.lock().unwrap();
        !auth.is_empty() && auth.iter().all(|a| *a == format!("Bearer {TOKEN}"))
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(self.url.trim_start_matches("http://"));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn answer(
    conn: std::net::TcpStream,
    served: &LayerServer,
    fake: Fake,
    lowest: &Digest,
    seen: &Mutex<Vec<String>>,
) -> anyhow::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line
        .split_whitespace()
        .nth(1)
        .context("request line")?
        .to_string();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header)?;
        if header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("authorization") {
                seen.lock().unwrap().push(value.trim().to_string());
            }
        }
    }
    let rest = path.strip_prefix("/v1/images/").context("an image route")?;
    let (digest, manifest) = match rest.strip_suffix("/manifest") {
        Some(d) => (Digest::parse(d)?, true),
        None => (Digest::parse(rest)?, false),
    };
    let mut out = conn;
    let mut body = if manifest {
        let asked = if fake == Fake::WrongManifest && digest == *lowest {
            served.image("probe")?.context("probe")?.0
        } else {
            digest.clone()
        };
        served.manifest_json(&asked)?
    } else {
        match served.open(&digest)? {
            Some((mut reader, _)) => {
                let mut bytes = Vec::new();
                reader.read_to_end(&mut bytes)?;
                Some(bytes)
            }
            None => None,
        }
    };
    let Some(bytes) = body.as_mut() else {
        write!(
            out,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        return Ok(());
    };
    let mut send = bytes.len();
    if !manifest && digest == *lowest {
        match fake {
            Fake::Tamper => {
                let middle = bytes.len() / 2;
                bytes[middle] ^= 1;
            }
            Fake::Truncate => send = bytes.len() / 2,
            Fake::Honest | Fake::WrongManifest => {}
        }
    }
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        bytes.len()
    )?;
    out.write_all(&bytes[..send])?;
    out.flush()?;
    Ok(())
}
