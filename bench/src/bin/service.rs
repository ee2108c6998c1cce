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
//!
//! Layout: this file, the measurements; `service/server.rs`, the server child process and the
//! HTTP client.

#[path = "service/server.rs"]
mod server;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Parser;
use corral_bench::{interleave, median, table, Samples};
use serde_json::{json, Value};
use server::{Api, Server};
use tokio::runtime::Runtime;

const PYTHON_HELLO: &str = "print(\"hello\")";
const C_HELLO: &str = "#include <stdio.h>\nint main(void){puts(\"hello\");return 0;}\n";
/// The interpreter the `host` image's python language runs.
const PYTHON: &str = "/usr/bin/python3";
/// `PATH` of the bare runs.
const BARE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// The C language's compile argv (images/languages/c.toml), run bare on the host.
const GCC: [&str; 7] = ["-O2", "-std=gnu17", "-pipe", "-o", "a.out", "main.c", "-lm"];

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

/// A bare host command as the host image runs it: by absolute path, with an environment of only
/// `PATH` (a login shell's PATH may put shims such as pyenv's in front of /usr/bin).
fn bare(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear().env("PATH", BARE_PATH);
    cmd
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
