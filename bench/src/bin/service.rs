//! The job service end to end: a real `corral serve` on 127.0.0.1 (fresh data dir, its own tenants,
//! sandbox state dir, cgroup parent and uid range), driven over HTTP:
//!
//! 1. latency of `POST /v1/jobs?wait=true` for a python and a C hello world beside the same program
//!    run bare on the host (C: gcc compile + run), interleaved in one run;
//! 2. throughput with many concurrent `?wait=true` clients beside the bare ceiling (as many
//!    parallel bare processes as the machine has cores), alternated;
//! 3. 10,000 jobs submitted without waiting: the server's RSS while they queue and run, the time to
//!    drain, and a check that every job finished exactly once with its own output.
//!
//! `cargo build --release && cargo run --release -p corral-bench --bin service` (as root).

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Parser;
use corral_bench::{interleave, table, Samples};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::runtime::Runtime;

const PYTHON_HELLO: &str = "print(\"hello\")";
const C_HELLO: &str = "#include <stdio.h>\nint main(void){puts(\"hello\");return 0;}\n";
/// The interpreter the `host` image's python language runs.
const PYTHON: &str = "/usr/bin/python3";
/// `PATH` of the bare runs.
const BARE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// The C language's compile argv (images/languages/c.toml), run bare on the host.
const GCC: [&str; 7] = ["-O2", "-std=gnu17", "-pipe", "-o", "a.out", "main.c", "-lm"];
/// Longest time one HTTP request may take before the benchmark gives up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Parser)]
struct Args {
    /// Measured rounds per latency variant (python).
    #[arg(long, default_value_t = 300)]
    rounds: usize,
    /// Measured rounds per latency variant (C: compile + run).
    #[arg(long, default_value_t = 60)]
    c_rounds: usize,
    /// Unmeasured warm-up rounds per latency comparison.
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// Concurrent `?wait=true` clients for the throughput runs (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "8,16")]
    clients: Vec<usize>,
    /// Jobs per throughput measurement.
    #[arg(long, default_value_t = 300)]
    throughput_jobs: usize,
    /// Throughput repetitions (each: bare, then every client count).
    #[arg(long, default_value_t = 6)]
    throughput_reps: usize,
    /// Jobs submitted without waiting for the queue/memory run.
    #[arg(long, default_value_t = 10_000)]
    queued_jobs: usize,
    /// Submissions in flight at once during the queue run.
    #[arg(long, default_value_t = 32)]
    submit_concurrency: usize,
    /// Give up on the queue run after this many seconds.
    #[arg(long, default_value_t = 1800)]
    drain_timeout: u64,
    /// Sandbox slots of the server (default: the server's own, one per CPU).
    #[arg(long)]
    slots: Option<u32>,
    /// Small counts for a smoke run (overrides the counts above).
    #[arg(long)]
    quick: bool,
    /// The corral binary (default: next to this benchmark).
    #[arg(long)]
    corral: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.rounds = 10;
        args.c_rounds = 4;
        args.warmup = 2;
        args.throughput_jobs = 20;
        args.throughput_reps = 1;
        args.queued_jobs = 200;
    }
    let corral = match &args.corral {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("corral"),
    };
    ensure!(
        corral.exists(),
        "{} not found: build it with cargo build --release",
        corral.display()
    );
    let rt = Runtime::new().context("starting the async runtime")?;
    let server = Server::start(&corral, args.slots, &rt)?;
    println!(
        "corral serve pid {} at {}; {} cores; load {}\n",
        server.pid(),
        server.url,
        cores(),
        load()
    );
    let api = server.api(&server.bench_key);
    println!("{}", python_latency(&rt, &api, &args)?);
    println!("{}", c_latency(&rt, &api, &args)?);
    println!("{}", throughput(&rt, &api, server.pid(), &args)?);
    let api = server.api(&server.queue_key);
    println!("{}", queued(&rt, &api, server.pid(), &args)?);
    println!("load at the end: {}", load());
    Ok(())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// A `corral serve` child process on a temporary data directory with two tenants.
struct Server {
    dir: tempfile::TempDir,
    child: Option<Child>,
    url: String,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Tenant of the latency and throughput runs.
    bench_key: String,
    /// Tenant of the queue run (so its job list holds only those jobs).
    queue_key: String,
}

impl Server {
    fn start(corral: &Path, slots: Option<u32>, rt: &Runtime) -> anyhow::Result<Server> {
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

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn api(&self, key: &str) -> Api {
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
struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    key: String,
}

impl Api {
    async fn call(
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
    async fn histograms(&self) -> anyhow::Result<Histograms> {
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
    async fn run(&self, body: &Value, stdout: &str) -> anyhow::Result<u64> {
        let (status, doc) = self.call("POST", "/v1/jobs?wait=true", Some(body)).await?;
        ensure!(status == 200, "{status}: {doc}");
        ensure!(
            doc["verdict"] == "accepted" && doc["runs"][0]["stdout"] == stdout,
            "unexpected result: {doc}"
        );
        Ok(doc["runs"][0]["wall_time_ms"].as_u64().unwrap_or(0))
    }
}

/// A bare host command as the host image runs it: by absolute path, with an environment of only
/// `PATH` (a login shell's PATH may put shims such as pyenv's in front of /usr/bin).
fn bare(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear().env("PATH", BARE_PATH);
    cmd
}

/// The server's histograms [`Api::histograms`] reads.
const HISTOGRAMS: [&str; 3] = [
    "corral_job_duration_seconds",
    "corral_sandbox_start_seconds",
    "corral_run_seconds",
];

/// (sum, count) of each of [`HISTOGRAMS`].
#[derive(Default, Clone, Copy)]
struct Histograms([(f64, f64); 3]);

impl Histograms {
    /// Mean milliseconds of each histogram between `before` and now, as a sentence.
    fn means_since(&self, before: &Histograms) -> String {
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

fn bare_python() -> anyhow::Result<()> {
    let out = bare(PYTHON)
        .args(["-c", PYTHON_HELLO])
        .stderr(Stdio::inherit())
        .output()?;
    ensure!(out.status.success() && out.stdout == b"hello\n", "{out:?}");
    Ok(())
}

fn medians_line(samples: &[Samples]) -> String {
    let base = samples[0].median().as_secs_f64();
    let ours = samples[1].median().as_secs_f64();
    format!(
        "\nMedian difference: {:+.2} ms (service − bare); ratio {:.2}×.\n",
        (ours - base) * 1e3,
        ours / base.max(1e-9)
    )
}

fn python_latency(rt: &Runtime, api: &Api, args: &Args) -> anyhow::Result<String> {
    let body = json!({"language": "python", "source": PYTHON_HELLO});
    let mut bare = bare_python;
    let mut walls = Vec::new();
    let mut served = || {
        walls.push(rt.block_on(api.run(&body, "hello\n"))? as f64);
        Ok(())
    };
    let samples = interleave(
        &mut [
            ("bare `/usr/bin/python3 -c 'print(\"hello\")'`", &mut bare),
            ("`POST /v1/jobs?wait=true` python", &mut served),
        ],
        args.warmup,
        args.rounds,
    )?;
    Ok(table("Latency: python hello world", &samples)
        + &medians_line(&samples)
        + &format!(
            "Median `wall_time_ms` of the run as the sandbox measured it: {} ms.\n",
            median(&walls)
        ))
}

fn c_latency(rt: &Runtime, api: &Api, args: &Args) -> anyhow::Result<String> {
    let dir = tempfile::Builder::new()
        .prefix("corral-bench-c-")
        .tempdir()?;
    std::fs::write(dir.path().join("main.c"), C_HELLO)?;
    let mut bare = || -> anyhow::Result<()> {
        let _ = std::fs::remove_file(dir.path().join("a.out"));
        let status = bare("/usr/bin/gcc")
            .args(GCC)
            .current_dir(dir.path())
            .status()?;
        ensure!(status.success(), "gcc: {status}");
        let out = bare(&dir.path().join("a.out").to_string_lossy()).output()?;
        ensure!(out.status.success() && out.stdout == b"hello\n", "{out:?}");
        Ok(())
    };
    let body = json!({"language": "c", "source": C_HELLO});
    let mut served = || rt.block_on(api.run(&body, "hello\n")).map(drop);
    let samples = interleave(
        &mut [
            ("bare `/usr/bin/gcc -O2 … main.c && ./a.out`", &mut bare),
            ("`POST /v1/jobs?wait=true` c (compile + run)", &mut served),
        ],
        args.warmup.min(3),
        args.c_rounds,
    )?;
    Ok(table("Latency: C hello world, compile + run", &samples) + &medians_line(&samples))
}

/// Jobs per second of `jobs` bare python hello worlds on one thread per core.
fn bare_throughput(jobs: usize) -> anyhow::Result<f64> {
    let left = Arc::new(AtomicUsize::new(jobs));
    let start = Instant::now();
    let threads: Vec<_> = (0..cores())
        .map(|_| {
            let left = left.clone();
            std::thread::spawn(move || -> anyhow::Result<()> {
                while take(&left) {
                    bare_python()?;
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("thread panicked"))??;
    }
    Ok(jobs as f64 / start.elapsed().as_secs_f64())
}

fn take(left: &AtomicUsize) -> bool {
    left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// Jobs per second of `jobs` python hello worlds through `clients` concurrent `?wait=true` clients.
async fn served_throughput(api: &Api, clients: usize, jobs: usize) -> anyhow::Result<f64> {
    let left = Arc::new(AtomicUsize::new(jobs));
    let body = Arc::new(json!({"language": "python", "source": PYTHON_HELLO}));
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (api, left, body) = (api.clone(), left.clone(), body.clone());
            tokio::spawn(async move {
                while take(&left) {
                    api.run(&body, "hello\n").await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(jobs as f64 / start.elapsed().as_secs_f64())
}

fn throughput(rt: &Runtime, api: &Api, server: u32, args: &Args) -> anyhow::Result<String> {
    let jobs = args.throughput_jobs;
    let mut bare = Vec::new();
    let mut served: Vec<Vec<f64>> = vec![Vec::new(); args.clients.len()];
    // CPU seconds of this benchmark (the clients) and of the server's own threads, per variant.
    let mut cpu = vec![(0.0, 0.0); args.clients.len()];
    let hist_before = rt.block_on(api.histograms())?;
    for _ in 0..args.throughput_reps {
        bare.push(bare_throughput(jobs)?);
        for (i, &clients) in args.clients.iter().enumerate() {
            let before = (cpu_seconds("self"), cpu_seconds(&server.to_string()));
            served[i].push(rt.block_on(served_throughput(api, clients, jobs))?);
            cpu[i].0 += cpu_seconds("self") - before.0;
            cpu[i].1 += cpu_seconds(&server.to_string()) - before.1;
        }
    }
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let hist = rt.block_on(api.histograms())?.means_since(&hist_before);
    let base = median(&bare);
    let mut out = format!(
        "### Throughput: python hello world, {jobs} jobs per run, {} repetitions\n\n\
         | variant | jobs/s (each run) | median jobs/s | of bare (median of per-repetition ratios) | client CPU ms/job | server threads CPU ms/job |\n\
         |---|---|---|---|---|---|\n\
         | bare, {} parallel processes | {} | {base:.1} | 100% | – | – |\n",
        args.throughput_reps,
        cores(),
        list(&bare),
    );
    let total = (jobs * args.throughput_reps) as f64;
    for (i, clients) in args.clients.iter().enumerate() {
        let m = median(&served[i]);
        // Per repetition, against the bare run just before it; the median of those ratios.
        let ratios: Vec<f64> = served[i].iter().zip(&bare).map(|(s, b)| s / b).collect();
        out.push_str(&format!(
            "| service, {clients} concurrent `?wait=true` clients | {} | {m:.1} | {:.0}% | {:.2} | {:.2} |\n",
            list(&served[i]),
            100.0 * median(&ratios),
            1e3 * cpu[i].0 / total,
            1e3 * cpu[i].1 / total,
        ));
    }
    out.push_str(
        "\nClient CPU: this benchmark's HTTP clients, on the same two cores. Server threads: the \
         `corral serve` process itself (HTTP, store, dispatcher, worker), without its sandbox \
         spawners and jobs.\n",
    );
    out.push_str(&hist);
    Ok(out)
}

/// User + system CPU seconds of a process (`self` or a pid), from /proc/<pid>/stat.
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the command name.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // USER_HZ is 100 on Linux.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len().saturating_sub(1) / 2).copied().unwrap_or(0.0)
}

/// Samples the server's VmRSS every 50 ms until stopped; the peak, in KiB.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak_kib: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak_kib = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak_kib.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                if let Some(kib) = status_kib(pid, "VmRSS:") {
                    p.fetch_max(kib, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        RssSampler {
            stop,
            peak_kib,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak_kib.load(Ordering::SeqCst)
    }
}

/// A `kB` field of /proc/<pid>/status.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Submits `n` jobs without waiting, `concurrency` at a time; job `i` prints `i`. Their ids.
async fn submit_all(api: &Api, n: usize, concurrency: usize) -> anyhow::Result<Vec<String>> {
    let ids = Arc::new(Mutex::new(vec![String::new(); n]));
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (api, ids, next) = (api.clone(), ids.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= n {
                        return anyhow::Ok(());
                    }
                    let body = json!({"language": "python", "source": format!("print({i})")});
                    let (status, doc) = api.call("POST", "/v1/jobs", Some(&body)).await?;
                    ensure!(
                        status == 202 || status == 200,
                        "submit {i}: {status}: {doc}"
                    );
                    let id = doc["id"].as_str().context("no id")?.to_string();
                    ids.lock().expect("ids lock")[i] = id;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let ids = std::mem::take(&mut *ids.lock().expect("ids lock"));
    Ok(ids)
}

/// Waits until every job is final (polling the oldest unfinished one), then returns every
/// job's document, in submission order.
async fn drain(api: &Api, ids: &[String], timeout: Duration) -> anyhow::Result<Vec<Value>> {
    let deadline = Instant::now() + timeout;
    let mut docs = Vec::with_capacity(ids.len());
    while docs.len() < ids.len() {
        let (status, doc) = api
            .call("GET", &format!("/v1/jobs/{}", ids[docs.len()]), None)
            .await?;
        ensure!(status == 200, "GET job: {status}: {doc}");
        if doc["state"] == "done" || doc["state"] == "cancelled" {
            docs.push(doc);
            continue;
        }
        ensure!(
            Instant::now() < deadline,
            "{} of {} jobs final after {timeout:?}",
            docs.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(docs)
}

/// Every job id of the tenant, through `GET /v1/jobs` pages.
async fn list_all(api: &Api, most: usize) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs?limit=100&cursor={c}"),
            None => "/v1/jobs?limit=100".to_string(),
        };
        let (status, page) = api.call("GET", &path, None).await?;
        ensure!(status == 200, "list: {status}: {page}");
        for job in page["jobs"].as_array().context("no jobs")? {
            ids.push(job["id"].as_str().context("no id")?.to_string());
        }
        ensure!(ids.len() <= most, "the list holds more than {most} jobs");
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return Ok(ids),
        }
    }
}

/// Problems of the finished jobs: wrong state, verdict, output or attempts.
fn check_jobs(ids: &[String], docs: &[Value], listed: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    let distinct: HashSet<&String> = ids.iter().collect();
    if distinct.len() != ids.len() {
        problems.push(format!(
            "{} distinct ids for {} jobs",
            distinct.len(),
            ids.len()
        ));
    }
    let listed_set: HashSet<&String> = listed.iter().collect();
    if listed.len() != ids.len() || listed_set != distinct {
        problems.push(format!(
            "the list has {} entries ({} distinct) for {} submitted jobs",
            listed.len(),
            listed_set.len(),
            ids.len()
        ));
    }
    for (i, doc) in docs.iter().enumerate() {
        let ok = doc["id"] == ids[i].as_str()
            && doc["state"] == "done"
            && doc["verdict"] == "accepted"
            && doc["attempts"] == 1
            && doc["runs"].as_array().map_or(0, Vec::len) == 1
            && doc["runs"][0]["stdout"] == format!("{i}\n");
        if !ok {
            problems.push(format!("job {i}: {doc}"));
        }
    }
    problems
}

fn queued(rt: &Runtime, api: &Api, pid: u32, args: &Args) -> anyhow::Result<String> {
    let n = args.queued_jobs;
    // The machine's load changes by the minute: a bare ceiling right before, for comparison.
    let bare = bare_throughput(args.throughput_jobs)?;
    let before = status_kib(pid, "VmRSS:").unwrap_or(0);
    let hist_before = rt.block_on(api.histograms())?;
    let sampler = RssSampler::start(pid);
    let start = Instant::now();
    let ids = rt.block_on(submit_all(api, n, args.submit_concurrency))?;
    let submitted = start.elapsed();
    let at_submitted = status_kib(pid, "VmRSS:").unwrap_or(0);
    let timeout = Duration::from_secs(args.drain_timeout);
    let docs = rt.block_on(drain(api, &ids, timeout))?;
    let drained = start.elapsed();
    let peak = sampler.finish();
    let after = status_kib(pid, "VmRSS:").unwrap_or(0);
    let hwm = status_kib(pid, "VmHWM:").unwrap_or(0);
    let hist = rt.block_on(api.histograms())?.means_since(&hist_before);
    let listed = rt.block_on(list_all(api, n * 2))?;
    let problems = check_jobs(&ids, &docs, &listed);
    let mib = |kib: u64| kib as f64 / 1024.0;
    let mut out = format!(
        "### {n} jobs submitted without waiting (python `print(i)`), {} at a time\n\n\
         | measure | value |\n|---|---|\n\
         | submitted in | {:.1} s ({:.0} jobs/s) |\n\
         | drained (all final) in | {:.1} s ({:.1} jobs/s) |\n\
         | bare ceiling just before ({} processes) | {bare:.1} jobs/s (drain: {:.0}% of it) |\n\
         | server RSS before | {:.1} MiB |\n\
         | server RSS when all were submitted | {:.1} MiB |\n\
         | server peak RSS (sampled every 50 ms) | {:.1} MiB |\n\
         | server RSS after the drain | {:.1} MiB |\n\
         | server VmHWM (whole run) | {:.1} MiB |\n\
         | check | {} |\n",
        args.submit_concurrency,
        submitted.as_secs_f64(),
        n as f64 / submitted.as_secs_f64(),
        drained.as_secs_f64(),
        n as f64 / drained.as_secs_f64(),
        cores(),
        100.0 * n as f64 / drained.as_secs_f64() / bare,
        mib(before),
        mib(at_submitted),
        mib(peak),
        mib(after),
        mib(hwm),
        if problems.is_empty() {
            format!("all {n} done and accepted, each with its own output, 1 attempt each; the list holds exactly the {n} ids")
        } else {
            format!("**{} problems**", problems.len())
        }
    );
    out.push_str(&format!("\n{hist}"));
    for p in problems.iter().take(10) {
        out.push_str(&format!("\n- {p}"));
    }
    Ok(out)
}
