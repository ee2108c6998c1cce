//! A real `corral serve` child process on port 0 with its own data directory, sandbox state
//! directory, cgroup parent `corral-test-<pid>-<n>` and uid range, and a small HTTP client.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_corral");

/// Fails with "needs root" unless the test runs as root.
pub fn require_root() -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("no effective uid in /proc/self/status")?;
    ensure!(
        uid == "0",
        "needs root: these tests run `corral serve` on the real sandbox"
    );
    Ok(())
}

/// A temporary data directory, a tenant in it, and (while started) a server on it.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub key: String,
    pub url: String,
    n: u32,
    child: Option<Child>,
}

impl Server {
    /// A data directory with tenant `t` (made with `corral tenant create`) and a server on it.
    pub fn start(n: u32) -> anyhow::Result<Server> {
        require_root()?;
        let dir = tempfile::Builder::new()
            .prefix("corral-service-test-")
            .tempdir()?;
        let out = Command::new(BIN)
            .args(["tenant", "create", "t", "--rate", "100000", "--data-dir"])
            .arg(dir.path().join("data"))
            .output()?;
        ensure!(out.status.success(), "tenant create: {out:?}");
        let key = String::from_utf8(out.stdout)?.trim().to_string();
        ensure!(
            key.starts_with("corral_") && !key.contains('\n'),
            "key {key:?}"
        );
        let mut server = Server {
            dir,
            key,
            url: String::new(),
            n,
            child: None,
        };
        server.spawn()?;
        Ok(server)
    }

    pub fn cgroup_parent(&self) -> String {
        format!("corral-test-{}-{}", std::process::id(), self.n)
    }

    /// Starts `corral serve` on the data directory and waits until it is ready.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        let uid_base = 600_000_000 + (std::process::id() % 50_000) * 8 * 8192 + self.n * 8192;
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--slots",
                "2",
                "--data-dir",
            ])
            .arg(self.dir.path().join("data"))
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .args(["--cgroup-parent", &self.cgroup_parent()])
            .args(["--uid-base", &uid_base.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        self.child = Some(child);
        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        reader.read_line(&mut line)?;
        // Keep reading the rest so the server never writes to a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        let url = line
            .trim()
            .strip_prefix("corral: listening on ")
            .with_context(|| format!("unexpected first line {line:?}"))?;
        self.url = url.to_string();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready =
                runtime().block_on(crate::http::call(&self.url, "GET", "/readyz", None, None));
            if matches!(ready, Ok((200, _))) {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "server not ready: {ready:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kill -9`.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM and wait (up to 20 s, then SIGKILL).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                child.kill()?;
                child.wait()?;
                bail!("corral serve did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// An API call with the tenant's key: (status, JSON body).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        runtime().block_on(crate::http::call(
            &self.url,
            method,
            path,
            Some(&self.key),
            body,
        ))
    }

    /// Polls a job until it is final.
    pub fn wait_final(&self, id: &str, within: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + within;
        loop {
            let (_, doc) = self.call("GET", &format!("/v1/jobs/{id}"), None)?;
            if doc["state"] == "done" || doc["state"] == "cancelled" {
                return Ok(doc);
            }
            ensure!(Instant::now() < deadline, "job {id} not final: {doc}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("warning: stopping the server: {e}");
        }
        remove_cgroups(&self.cgroup_parent());
    }
}

/// Removes the (by then empty) cgroup parent directories.
fn remove_cgroups(parent: &str) {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs: Vec<PathBuf> = vec![root.join(parent)];
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries.flatten() {
            if !entry.path().is_symlink() {
                dirs.push(entry.path().join(parent));
            }
        }
    }
    for dir in dirs.into_iter().filter(|d| d.is_dir()) {
        if let Err(e) = std::fs::remove_dir(&dir) {
            eprintln!("warning: removing cgroup {}: {e}", dir.display());
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A GET without a key: (status, body).
pub fn request_without_key(base: &str, path: &str) -> anyhow::Result<(u16, Value)> {
    runtime().block_on(crate::http::call(base, "GET", path, None, None))
}

/// A GET without a key, as text: (status, body).
pub fn get_text(base: &str, path: &str) -> anyhow::Result<(u16, String)> {
    get_text_with(base, path, None)
}

/// A GET, optionally with a key, as text (read to the end): (status, body).
pub fn get_text_with(base: &str, path: &str, key: Option<&str>) -> anyhow::Result<(u16, String)> {
    runtime().block_on(async {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let mut req = axum::http::Request::get(format!("{base}{path}"));
        if let Some(key) = key {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        let response = client.request(req.body(Full::new(Bytes::new()))?).await?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    })
}
