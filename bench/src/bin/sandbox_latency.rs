//! Start-to-exit latency of `/bin/true` in the full sandbox, beside the bare baselines, interleaved
//! in one run: (a) inside one long-lived process as a worker uses it, (b) as whole commands
//! (`corral sandbox run` vs bubblewrap vs bare), and (c) sandboxes per second with 2 parallel slots.
//!
//! `cargo run --release -p corral-bench --bin sandbox_latency -- --rounds 300`

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Context};
use clap::Parser;
use corral_bench::{interleave, median, table};
use corral_sandbox::{Sandbox, SandboxConfig, Spec, Status};

#[derive(Parser)]
struct Args {
    /// Measured rounds per variant.
    #[arg(long, default_value_t = 300)]
    rounds: usize,
    /// Unmeasured warm-up rounds.
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// The corral binary for the whole-command variant (default: next to this benchmark).
    #[arg(long)]
    corral: Option<PathBuf>,
    /// Jobs per throughput measurement.
    #[arg(long, default_value_t = 2000)]
    throughput_jobs: usize,
    /// Sequential jobs per block of the CPU-per-job measurement (0: skip it).
    #[arg(long, default_value_t = 200)]
    cpu_jobs: usize,
}

fn main() -> anyhow::Result<()> {
    corral_sandbox::run_helper_if_requested();
    let args = Args::parse();
    let mut config = SandboxConfig::host_defaults()?;
    config.slots = 2;
    config.state_dir = std::env::temp_dir().join(format!("corral-bench-{}", std::process::id()));
    config.cgroup_parent = format!("corral-bench-{}", std::process::id());
    config.uid_base = 3_000_000;
    let state = config.state_dir.clone();
    let sandbox = Arc::new(Sandbox::new(config).context("starting the sandbox (run as root)")?);
    let result = (|| -> anyhow::Result<()> {
        println!("{}", in_process(&sandbox, &args)?);
        println!("{}", whole_command(&args)?);
        println!("{}", throughput(&sandbox, &args)?);
        if args.cpu_jobs > 0 {
            println!("{}", cpu_per_job(&sandbox, args.cpu_jobs)?);
        }
        Ok(())
    })();
    // The sandbox removes its cgroups and mounts when dropped; its state directory is ours.
    drop(sandbox);
    let _ = std::fs::remove_dir_all(&state);
    result
}

/// CPU time the machine spends per job (every process and the kernel, from /proc/stat), bare
/// and in the sandbox: blocks of `jobs` sequential runs, bare and sandboxed alternating, three of
/// each. What a job costs when the cores are saturated (the service's throughput) follows it.
fn cpu_per_job(sandbox: &Sandbox, jobs: usize) -> anyhow::Result<String> {
    let tick_ms = 1000.0
        / nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.context("no clock tick rate")?
            as f64;
    let busy = || -> anyhow::Result<u64> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let fields: Vec<u64> = stat
            .lines()
            .next()
            .context("empty /proc/stat")?
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        // user nice system idle iowait irq softirq steal: all but idle and iowait.
        Ok(fields.iter().take(8).sum::<u64>() - fields[3] - fields[4])
    };
    let mut out = format!(
        "### CPU per job, {jobs} sequential jobs per block (all processes and the kernel, /proc/stat)\n\n| command | bare ms/job (3 blocks) | sandboxed ms/job (3 blocks) | sandbox's part, median |\n|---|---|---|---|\n"
    );
    for argv in [vec!["/bin/true"], vec!["/usr/bin/python3", "-c", "pass"]] {
        let bare = || -> anyhow::Result<()> {
            ensure!(Command::new(argv[0]).args(&argv[1..]).status()?.success());
            Ok(())
        };
        let boxed = || -> anyhow::Result<()> {
            let spec = Spec {
                image: sandbox.host_image(),
                argv: argv.iter().map(|a| a.to_string()).collect(),
                ..Spec::default()
            };
            let outcome = sandbox.run(spec, &mut |_, _| {})?;
            ensure!(outcome.status == Status::Ok, "{argv:?}: {outcome:?}");
            Ok(())
        };
        let block = |job: &dyn Fn() -> anyhow::Result<()>| -> anyhow::Result<f64> {
            let before = busy()?;
            for _ in 0..jobs {
                job()?;
            }
            Ok((busy()? - before) as f64 * tick_ms / jobs as f64)
        };
        let (mut b, mut s) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            b.push(block(&bare)?);
            s.push(block(&boxed)?);
        }
        let show = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {:+.2} ms |\n",
            argv.join(" "),
            show(&b),
            show(&s),
            median(&s) - median(&b)
        ));
    }
    Ok(out)
}

fn true_spec(sandbox: &Sandbox) -> Spec {
    Spec {
        image: sandbox.host_image(),
        argv: vec!["/bin/true".into()],
        ..Spec::default()
    }
}

fn in_process(sandbox: &Sandbox, args: &Args) -> anyhow::Result<String> {
    let mut bare = || -> anyhow::Result<()> {
        ensure!(Command::new("/bin/true").status()?.success());
        Ok(())
    };
    let mut boxed = || -> anyhow::Result<()> {
        let outcome = sandbox.run(true_spec(sandbox), &mut |_, _| {})?;
        ensure!(
            outcome.status == Status::Ok,
            "sandboxed /bin/true: {outcome:?}"
        );
        Ok(())
    };
    let samples = interleave(
        &mut [
            ("bare fork+exec+wait", &mut bare),
            ("corral sandbox (in-process)", &mut boxed),
        ],
        args.warmup,
        args.rounds,
    )?;
    Ok(table("In one long-lived process: /bin/true", &samples))
}

fn whole_command(args: &Args) -> anyhow::Result<String> {
    let corral = match &args.corral {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("corral"),
    };
    ensure!(
        corral.exists(),
        "{} not found: build it with cargo build --release",
        corral.display()
    );
    let state = std::env::temp_dir().join(format!("corral-bench-cli-{}", std::process::id()));
    // The binary as a user has it: installed, i.e. written by a copy. The file the linker just
    // wrote starts 0.1-0.2 ms slower until the page cache is dropped (bench/README.md: how lld
    // leaves it in the page cache, as we read it); it is measured too, as its own variant.
    std::fs::create_dir_all(&state)?;
    let installed = state.join("corral");
    std::fs::copy(&corral, &installed)
        .with_context(|| format!("copying {} into {}", corral.display(), state.display()))?;
    let run = |cmd: &mut Command| -> anyhow::Result<()> {
        let status = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status()?;
        ensure!(status.success(), "{cmd:?} failed: {status}");
        Ok(())
    };
    let mut bare = || run(&mut Command::new("/bin/true"));
    let mut bwrap = || {
        run(Command::new("bwrap").args([
            "--unshare-all",
            "--die-with-parent",
            "--ro-bind",
            "/usr",
            "/usr",
            "--symlink",
            "usr/lib64",
            "/lib64",
            "--symlink",
            "usr/lib",
            "/lib",
            "--symlink",
            "usr/bin",
            "/bin",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "/bin/true",
        ]))
    };
    let sandbox_run = |binary: &PathBuf| {
        run(Command::new(binary)
            .args(["sandbox", "run", "--state-dir"])
            .arg(&state)
            .args(["--", "/bin/true"]))
    };
    let mut ours = || sandbox_run(&installed);
    let mut as_linked = || sandbox_run(&corral);
    let samples = interleave(
        &mut [
            ("bare /bin/true", &mut bare),
            ("bubblewrap", &mut bwrap),
            ("corral sandbox run", &mut ours),
            ("corral sandbox run, file as linked", &mut as_linked),
        ],
        args.warmup,
        args.rounds,
    );
    remove_cli_state(&state);
    Ok(table("Whole command: /bin/true", &samples?))
}

fn throughput(sandbox: &Arc<Sandbox>, args: &Args) -> anyhow::Result<String> {
    let jobs = args.throughput_jobs;
    let parallel =
        |work: Arc<dyn Fn() -> anyhow::Result<()> + Send + Sync>| -> anyhow::Result<f64> {
            let left = Arc::new(AtomicUsize::new(jobs));
            let start = Instant::now();
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let (left, work) = (left.clone(), work.clone());
                    std::thread::spawn(move || -> anyhow::Result<()> {
                        while left
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok()
                        {
                            work()?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for t in threads {
                t.join()
                    .map_err(|_| anyhow::anyhow!("worker thread panicked"))??;
            }
            Ok(jobs as f64 / start.elapsed().as_secs_f64())
        };
    let bare = parallel(Arc::new(|| {
        ensure!(Command::new("/bin/true").status()?.success());
        Ok(())
    }))?;
    let sb = sandbox.clone();
    let boxed = parallel(Arc::new(move || {
        let outcome = sb.run(true_spec(&sb), &mut |_, _| {})?;
        ensure!(outcome.status == Status::Ok, "{outcome:?}");
        Ok(())
    }))?;
    Ok(format!(
        "### Throughput, 2 parallel slots, {jobs} jobs of /bin/true\n\n| variant | jobs/s | of bare |\n|---|---|---|\n| bare fork+exec+wait, 2 threads | {bare:.0} | 100% |\n| corral sandbox, 2 slots | {boxed:.0} | {:.0}% |\n",
        100.0 * boxed / bare
    ))
}

/// The one-shot command keeps its slot's network namespace pinned (a bind mount) in its state
/// directory for the next invocation; this benchmark's state directory is its own, so unpin and
/// remove it.
fn remove_cli_state(state: &std::path::Path) {
    if let Ok(entries) = std::fs::read_dir(state.join("slots")) {
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|e| e == "netns") {
                let _ = nix::mount::umount2(&entry.path(), nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
    let _ = std::fs::remove_dir_all(state);
}
