//! The `corral serve` child process of the service benchmark (temporary data dir, tenants, its
//! own sandbox state dir, cgroup parent and uid range) and a keep-alive HTTP client for it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::runtime::Runtime;

/// Longest time one HTTP request may take before the benchmark gives up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A `corral serve` child process on a temporary data directory with two tenants.
pub struct Server {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub url: String,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Tenant of the latency and throughput runs.
    pub bench_key: String,
    /// Tenant of the queue run (so its job list holds only those jobs).
    pub queue_key: String,
}

impl Server {
    pub fn start(corral: &Path, slots: Option<u32>, rt: &Runtime) -> anyhow::Result<Server> {
        let dir = tempfile::Builder::new()
            .prefix("corral-bench-service-")
            .tempdir()?;
        let data = dir.path().join("data");
        let bench_key = create_tenant(corral, &data, "bench")?;
        let queue_key = create_tenant(corral, &data, "queue")?;
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build_http();
        let mut server = Server {
            dir,
            child: None,
            url: String::new(),
            client,
            bench_key,
            queue_key,
        };
        server.spawn(corral, slots)?;
        server.wait_ready(rt)?;
        Ok(server)
    }

    fn cgroup_parent() -> String {
        format!("corral-bench-service-{}", std::process::id())
    }

    fn spawn(&mut self, corral: &Path, slots: Option<u32>) -> anyhow::Result<()> {
        // A band of its own, below 2^31 and away from the service default and the test bands.
        let uid_base = 2_100_000_000 + (std::process::id() % 4_000) * 8192;
        let log = std::fs::File::create(self.dir.path().join("serve.log"))?;
        let mut cmd = Command::new(corral);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .arg("--state-dir")
            .arg(self.dir.path().join("state"))
            .args(["--cgroup-parent", &Self::cgroup_parent()])
            .args(["--uid-base", &uid_base.to_string()]);
        if let Some(slots) = slots {
            cmd.args(["--slots", &slots.to_string()]);
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(log).spawn()?;
        let stdout = child.stdout.take().context("serve's stdout")?;
        self.child = Some(child);
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        let url = line
            .trim()
            .strip_prefix("corral: listening on ")
            .with_context(|| format!("unexpected first line {line:?}; {}", self.log_tail()))?;
        self.url = url.to_string();
        Ok(())
    }

    fn wait_ready(&self, rt: &Runtime) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let api = self.api("");
        loop {
            let ready = rt.block_on(api.call("GET", "/readyz", None));
            if matches!(ready, Ok((200, _))) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "server not ready: {ready:?}; {}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn api(&self, key: &str) -> Api {
        Api {
            client: self.client.clone(),
            base: self.url.clone(),
            key: key.to_string(),
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "serve's log ends with:\n{}",
            lines[lines.len().saturating_sub(20)..].join("\n")
        )
    }

    /// SIGTERM and wait (up to 20 s, then SIGKILL).
    fn stop(&mut self) -> anyhow::Result<()> {
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
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("warning: stopping the server: {e}");
        }
        remove_cgroups(&Self::cgroup_parent());
    }
}

fn create_tenant(corral: &Path, data: &Path, name: &str) -> anyhow::Result<String> {
    let out = Command::new(corral)
        .args(["tenant", "create", name, "--max-concurrent", "1000"])
        .args(["--rate", "100000000", "--data-dir"])
        .arg(data)
        .output()?;
    ensure!(out.status.success(), "tenant create: {out:?}");
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// Removes the (by then empty) cgroup parent directories of the server's slots.
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

/// A keep-alive HTTP client for one tenant.
#[derive(Clone)]
pub struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    key: String,
}

impl Api {
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let (status, bytes) = self.call_raw(method, path, body).await?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    async fn call_raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Bytes)> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.key));
        let payload = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Bytes::from(b.to_string())
            }
            None => Bytes::new(),
        };
        let work = async {
            let response = self.client.request(req.body(Full::new(payload))?).await?;
            let status = response.status().as_u16();
            let bytes = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, bytes))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, work)
            .await
            .with_context(|| format!("{method} {path}: no answer in {REQUEST_TIMEOUT:?}"))?
    }

    /// Sums and counts of the server's histograms where the time of a job goes (summed over
    /// labels): assigned→result, sandbox start, sandboxed run.
    pub async fn histograms(&self) -> anyhow::Result<Histograms> {
        let (status, text) = self.call_raw("GET", "/metrics", None).await?;
        ensure!(status == 200, "/metrics: {status}");
        let mut h = Histograms::default();
        for line in String::from_utf8_lossy(&text).lines() {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let name = name.split('{').next().unwrap_or(name);
            let value: f64 = value.parse().unwrap_or(0.0);
            for (i, metric) in HISTOGRAMS.iter().enumerate() {
                if name.strip_suffix("_sum") == Some(metric) {
                    h.0[i].0 += value;
                } else if name.strip_suffix("_count") == Some(metric) {
                    h.0[i].1 += value;
                }
            }
        }
        Ok(h)
    }

    /// `POST /v1/jobs?wait=true`; fails unless the job is accepted with `stdout`. The run's
    /// `wall_time_ms` as the sandbox measured it.
    pub async fn run(&self, body: &Value, stdout: &str) -> anyhow::Result<u64> {
        let (status, doc) = self.call("POST", "/v1/jobs?wait=true", Some(body)).await?;
        ensure!(status == 200, "{status}: {doc}");
        ensure!(
            doc["verdict"] == "accepted" && doc["runs"][0]["stdout"] == stdout,
            "unexpected result: {doc}"
        );
        Ok(doc["runs"][0]["wall_time_ms"].as_u64().unwrap_or(0))
    }
}

/// The server's histograms [`Api::histograms`] reads.
const HISTOGRAMS: [&str; 3] = [
    "corral_job_duration_seconds",
    "corral_sandbox_start_seconds",
    "corral_run_seconds",
];

/// (sum, count) of each of [`HISTOGRAMS`].
#[derive(Default, Clone, Copy)]
pub struct Histograms([(f64, f64); 3]);

impl Histograms {
    /// Mean milliseconds of each histogram between `before` and now, as a sentence.
    pub fn means_since(&self, before: &Histograms) -> String {
        let mean = |i: usize| {
            let (sum, count) = (self.0[i].0 - before.0[i].0, self.0[i].1 - before.0[i].1);
            1e3 * sum / count.max(1.0)
        };
        format!(
            "Server-side means: assigned→result {:.2} ms, sandbox start {:.2} ms, sandboxed run {:.2} ms.\n",
            mean(0),
            mean(1),
            mean(2)
        )
    }
}
