//! Functional integration tests of the sandbox through its public API and through
//! `corral sandbox run`: output and exit status, stdin (bytes and an interactive pipe), files in and
//! out, the environment, every limit, and networking. Needs root (CI runs as root); the hostile
//! cases are in `tests/hostile.rs`.

mod common;

use std::io::Write;
use std::sync::mpsc;
use std::time::Duration;

use common::{exe, text, Shared};
use corral_sandbox::{FileIn, Limits, Outcome, Spec, Status, Stdin, StreamKind, TimeLimitKind};

const JOBS_C: &str = include_str!("hostile/jobs.c");
const MIB: u64 = 1 << 20;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// `sh -c script` on the host image.
fn sh(shared: &Shared, script: &str, limits: Limits) -> Spec {
    shared.spec(&["sh", "-c", script], limits)
}

/// `./jobs args...` (tests/hostile/jobs.c).
fn jobs(shared: &Shared, args: &[&str], limits: Limits) -> Spec {
    let argv: Vec<&str> = std::iter::once("./jobs")
        .chain(args.iter().copied())
        .collect();
    let mut spec = shared.spec(&argv, limits);
    spec.files = vec![exe("jobs", common::compile_c("jobs", JOBS_C))];
    spec
}

fn show(o: &Outcome) -> String {
    format!(
        "{:?} limit {:?} exit {:?} signal {:?} cpu {:?} wall {:?} stdout {:?} stderr {:?} error {:?}",
        o.status,
        o.limit,
        o.exit_code,
        o.signal,
        o.cpu_time,
        o.wall_time,
        text(&o.stdout[..o.stdout.len().min(500)]),
        text(&o.stderr[..o.stderr.len().min(500)]),
        o.error
    )
}

#[test]
fn stdout_and_stderr_are_captured_separately() {
    let s = common::sandbox();
    let o = s.run(sh(
        &s,
        "echo out; echo err >&2; printf 'no newline'",
        Limits::default(),
    ));
    assert_eq!(o.status, Status::Ok, "{}", show(&o));
    assert_eq!(o.stdout, b"out\nno newline");
    assert_eq!(o.stderr, b"err\n");
    assert_eq!(o.exit_code, Some(0));
    assert!(!o.stdout_truncated && !o.stderr_truncated);
}

#[test]
fn exit_codes_and_signals_are_reported() {
    let s = common::sandbox();
    let o = s.run(sh(&s, "exit 3", Limits::default()));
    assert_eq!(
        (o.status, o.exit_code, o.signal),
        (Status::RuntimeError, Some(3), None)
    );
    for (sig, num) in [("SEGV", 11), ("TERM", 15), ("KILL", 9)] {
        let o = s.run(sh(&s, &format!("kill -{sig} $$"), Limits::default()));
        assert_eq!(o.status, Status::RuntimeError, "{}", show(&o));
        assert_eq!((o.exit_code, o.signal), (None, Some(num)), "{}", show(&o));
    }
    let o = s.run(s.spec(&["/nonexistent/program"], Limits::default()));
    assert_eq!(o.status, Status::RuntimeError, "{}", show(&o));
    assert!(
        text(&o.stderr).contains("/nonexistent/program"),
        "{}",
        show(&o)
    );
}

#[test]
fn stdin_bytes_reach_the_job_exactly() {
    let s = common::sandbox();
    let bytes: Vec<u8> = (0..3 * MIB as usize).map(|i| (i * 7 % 256) as u8).collect();
    let limits = Limits {
        output_bytes: 4 * MIB,
        ..Limits::default()
    };
    let mut spec = s.spec(&["cat"], limits);
    spec.stdin = Stdin::Bytes(bytes.clone());
    let o = s.run(spec);
    assert_eq!(o.status, Status::Ok, "{}", show(&o));
    assert!(
        o.stdout == bytes,
        "stdin came back altered ({} bytes)",
        o.stdout.len()
    );
}

#[test]
fn stdin_pipe_streams_interactively() {
    let s = common::sandbox();
    let (mut writer, stdin) = corral_sandbox::stdin_pipe().unwrap();
    let mut spec = sh(
        &s,
        "while read l; do echo \"got $l\"; done; echo bye",
        Limits::default(),
    );
    spec.limits.wall_time = secs(30.0);
    spec.stdin = stdin;
    let (tx, rx) = mpsc::channel();
    let outcome = std::thread::scope(|scope| {
        let job = scope.spawn(|| {
            let mut on = common::to_channel(tx);
            s.sandbox.run(spec, &mut on)
        });
        let mut seen = Vec::new();
        for line in ["first", "second", "third"] {
            writer.write_all(format!("{line}\n").as_bytes()).unwrap();
            // The answer to each line arrives before the next line is sent: output is streamed.
            let want = format!("got {line}\n");
            while !text(&seen).ends_with(&want) {
                let (kind, chunk) = rx
                    .recv_timeout(Duration::from_secs(10))
                    .unwrap_or_else(|_| panic!("no answer to {line:?}; so far {:?}", text(&seen)));
                assert_eq!(kind, StreamKind::Stdout);
                seen.extend(chunk);
            }
        }
        drop(writer);
        job.join().unwrap().unwrap()
    });
    assert_eq!(outcome.status, Status::Ok, "{}", show(&outcome));
    assert_eq!(
        text(&outcome.stdout),
        "got first\ngot second\ngot third\nbye\n"
    );
}

#[test]
fn files_in_keep_their_mode_bits_and_belong_to_the_job() {
    let s = common::sandbox();
    let mut spec = sh(
        &s,
        "stat -c '%n %a %U' run.sh data.txt secret setuid; ./run.sh",
        Limits::default(),
    );
    let file = |name: &str, contents: &[u8], mode| FileIn {
        name: name.into(),
        contents: contents.to_vec(),
        mode,
    };
    spec.files = vec![
        file("run.sh", b"#!/bin/sh\necho script ran\n", 0o755),
        file("data.txt", b"data", 0o644),
        file("secret", b"s", 0o600),
        file("setuid", b"x", 0o4755),
    ];
    let o = s.run(spec);
    assert_eq!(o.status, Status::Ok, "{}", show(&o));
    assert_eq!(
        text(&o.stdout),
        "run.sh 755 corral\ndata.txt 644 corral\nsecret 600 corral\nsetuid 755 corral\nscript ran\n"
    );
}

#[test]
fn files_are_collected_back_and_traps_refused() {
    let s = common::sandbox();
    let script = "printf result > out.txt; chmod 640 out.txt; ln -s /etc/passwd link; echo a > a; \
                  ln a hard; mkfifo fifo; ln -s /dev/zero dev; truncate -s 1T sparse; \
                  head -c 300000 /dev/zero > large";
    let mut spec = sh(&s, script, Limits::default());
    spec.limits.file_size_bytes = 2 << 40;
    spec.collect = [
        "out.txt", "link", "hard", "fifo", "dev", "sparse", "large", "missing",
    ]
    .map(String::from)
    .to_vec();
    spec.collect_max_bytes = 100_000;
    let o = s.run(spec);
    assert_eq!(o.status, Status::Ok, "{}", show(&o));
    let names: Vec<&str> = o.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        ["out.txt", "link", "hard", "fifo", "dev", "sparse", "large", "missing"]
    );
    assert_eq!(o.files[0].contents.as_deref(), Ok(b"result".as_slice()));
    assert_eq!(o.files[0].mode & 0o777, 0o640);
    let why = |i: usize| o.files[i].contents.clone().unwrap_err();
    assert!(why(1).contains("symbolic link"), "{}", why(1));
    assert!(why(2).contains("more than one link"), "{}", why(2));
    assert!(why(3).contains("not a regular file"), "{}", why(3));
    assert!(why(4).contains("symbolic link"), "{}", why(4));
    assert!(why(5).contains("larger than the cap"), "{}", why(5));
    assert!(why(6).contains("larger than the cap"), "{}", why(6));
    assert!(why(7).contains("not found"), "{}", why(7));
}

#[test]
fn environment_is_the_image_plus_the_spec_only() {
    let s = common::sandbox();
    let mut spec = s.spec(&["/usr/bin/env"], Limits::default());
    spec.env = vec![("GREETING".into(), "hello world".into())];
    let o = s.run(spec);
    assert_eq!(o.status, Status::Ok, "{}", show(&o));
    let mut keys: Vec<String> = text(&o.stdout)
        .lines()
        .map(|l| l.split('=').next().unwrap().to_string())
        .collect();
    keys.sort();
    assert_eq!(keys, ["GREETING", "HOME", "LANG", "PATH", "TMPDIR"]);
    assert!(text(&o.stdout).contains("GREETING=hello world\n"));
}

#[test]
fn cpu_time_limit() {
    let s = common::sandbox();
    let limits = Limits {
        cpu_time: secs(0.5),
        wall_time: secs(20.0),
        ..Limits::default()
    };
    let o = s.run(jobs(&s, &["spin"], limits));
    assert_eq!(
        (o.status, o.limit),
        (Status::TimeLimit, Some(TimeLimitKind::Cpu)),
        "{}",
        show(&o)
    );
    assert!(
        o.cpu_time >= secs(0.5) && o.cpu_time < secs(1.0),
        "{}",
        show(&o)
    );
}

#[test]
fn wall_time_limit() {
    let s = common::sandbox();
    let limits = Limits {
        wall_time: secs(0.5),
        ..Limits::default()
    };
    let o = s.run(s.spec(&["sleep", "10"], limits));
    assert_eq!(
        (o.status, o.limit),
        (Status::TimeLimit, Some(TimeLimitKind::Wall)),
        "{}",
        show(&o)
    );
    assert!(
        o.wall_time >= secs(0.5) && o.wall_time < secs(2.0),
        "{}",
        show(&o)
    );
}

#[test]
fn cpu_time_counts_every_thread() {
    let s = common::sandbox();
    let limits = Limits {
        cpu_time: secs(1.0),
        wall_time: secs(20.0),
        ..Limits::default()
    };
    // Exact accounting: the job's own threads report the CPU they used together.
    let o = s.run(jobs(&s, &["cputhreads", "4", "600"], limits));
    assert_eq!(o.status, Status::Ok, "{}", show(&o));
    let own: u64 = text(&o.stdout)
        .trim()
        .strip_prefix("process_cpu_ns ")
        .and_then(|n| n.parse().ok())
        .expect("the job's report");
    assert!(
        o.cpu_time >= Duration::from_nanos(own)
            && o.cpu_time < Duration::from_nanos(own) + secs(0.3),
        "reported {:?}, threads used {own} ns",
        o.cpu_time
    );
    // And a multi-threaded spinner is stopped by the CPU limit once its threads used it together
    // (not by comparing CPU with wall time: that holds only while both cores are free).
    let o = s.run(jobs(&s, &["threads", "4"], limits));
    assert_eq!(o.status, Status::TimeLimit, "{}", show(&o));
    assert_eq!(o.limit, Some(TimeLimitKind::Cpu), "{}", show(&o));
    assert!(o.cpu_time >= secs(1.0), "{}", show(&o));
}

#[test]
fn memory_limit() {
    let s = common::sandbox();
    let limits = Limits {
        memory_bytes: 48 * MIB,
        ..Limits::default()
    };
    let o = s.run(jobs(&s, &["hog", "200"], limits));
    assert_eq!(o.status, Status::MemoryLimit, "{}", show(&o));
    assert!(o.memory_peak_bytes <= 48 * MIB, "{}", o.memory_peak_bytes);
    let o = s.run(jobs(&s, &["hog", "16"], limits));
    assert_eq!(o.status, Status::Ok, "{}", show(&o));
    assert!(o.memory_peak_bytes >= 16 * MIB, "{}", o.memory_peak_bytes);
}

/// A job one of whose processes the OOM killer took is a memory-limit overrun, also when another
/// of its processes then runs on until the CPU limit ends it.
#[test]
fn memory_limit_wins_over_a_later_time_limit() {
    let s = common::sandbox();
    let limits = Limits {
        memory_bytes: 48 * MIB,
        cpu_time: secs(1.0),
        wall_time: secs(20.0),
        ..Limits::default()
    };
    let mut spec = sh(&s, "./jobs hog 200; ./jobs spin", limits);
    spec.files = vec![exe("jobs", common::compile_c("jobs", JOBS_C))];
    let o = s.run(spec);
    assert_eq!(o.status, Status::MemoryLimit, "{}", show(&o));
    assert_eq!(o.limit, None, "{}", show(&o));
}

/// A job goes to a free slot whose prepared root fits it (same image, disk size and network), not
/// just to the one free longest, so jobs of two kinds interleaved keep finding their roots ready.
#[test]
fn a_job_takes_the_free_slot_prepared_for_its_root() {
    let s = common::sandbox();
    let prepared = || -> Vec<(usize, Option<u32>)> {
        let slots = s.sandbox.idle_slots();
        slots
            .iter()
            .map(|slot| (slot.index, slot.prepared_pid))
            .collect()
    };
    // Run a job with this disk size; the slot it ran on (the one whose prepared PID 1 changed).
    let run_on = |disk_bytes: u64| -> usize {
        let before = prepared();
        let limits = Limits {
            disk_bytes,
            ..Limits::default()
        };
        let o = s.run(s.spec(&["true"], limits));
        assert_eq!(o.status, Status::Ok, "{}", show(&o));
        let after = prepared();
        let used: Vec<usize> = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| b.1 != a.1)
            .map(|(b, _)| b.0)
            .collect();
        assert_eq!(used.len(), 1, "{before:?} -> {after:?}");
        used[0]
    };
    let first = run_on(32 * MIB);
    let second = run_on(16 * MIB);
    assert_ne!(first, second, "two jobs in turn use both slots");
    // The slot free longest is now the 32 MiB one; a 16 MiB job takes the other.
    assert_eq!(run_on(16 * MIB), second);
    assert_eq!(run_on(32 * MIB), first);
}

#[test]
fn process_limit() {
    let s = common::sandbox();
    let limits = Limits {
        processes: 8,
        ..Limits::default()
    };
    let o = s.run(jobs(&s, &["forkcount"], limits));
    assert_eq!(o.status, Status::RuntimeError, "{}", show(&o));
    let out = text(&o.stdout);
    let n: u32 = out
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("fork count");
    assert!((1..8).contains(&n) && out.contains("EAGAIN"), "{out}");
}

#[test]
fn output_limit_per_stream_with_both_flooding() {
    let s = common::sandbox();
    let limits = Limits {
        output_bytes: 100_000,
        ..Limits::default()
    };
    let o = s.run(jobs(&s, &["flood2"], limits));
    assert_eq!(o.status, Status::OutputLimit, "{}", show(&o));
    assert!(
        o.stdout.len() <= 100_000 && o.stderr.len() <= 100_000,
        "{}",
        show(&o)
    );
    assert!(o.stdout_truncated || o.stderr_truncated);
    assert!(o.wall_time < secs(5.0), "{}", show(&o));
    // Just under the cap on both streams: nothing is truncated.
    let o = s.run(sh(
        &s,
        "head -c 100000 /dev/zero; head -c 100000 /dev/zero >&2",
        limits,
    ));
    assert_eq!(o.status, Status::Ok, "{}", show(&o));
    assert_eq!((o.stdout.len(), o.stderr.len()), (100_000, 100_000));
}

#[test]
fn file_size_limit() {
    let s = common::sandbox();
    let limits = Limits {
        file_size_bytes: MIB,
        ..Limits::default()
    };
    let o = s.run(sh(
        &s,
        "(head -c 3000000 /dev/zero > f); stat -c 'size %s' f",
        limits,
    ));
    assert_eq!(o.status, Status::Ok, "{}", show(&o));
    assert_eq!(text(&o.stdout), format!("size {MIB}\n"));
}

#[test]
fn disk_size_and_inode_limits() {
    let s = common::sandbox();
    let limits = Limits {
        disk_bytes: 8 * MIB,
        ..Limits::default()
    };
    let o = s.run(jobs(&s, &["fill", "/tmp"], limits));
    assert_eq!(o.status, Status::RuntimeError, "{}", show(&o));
    let out = text(&o.stdout);
    let wrote: u64 = out
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(wrote <= 8 * MIB && out.contains("ENOSPC"), "{out}");

    let limits = Limits {
        disk_inodes: 200,
        ..Limits::default()
    };
    let o = s.run(jobs(&s, &["inodes"], limits));
    assert_eq!(o.status, Status::RuntimeError, "{}", show(&o));
    let out = text(&o.stdout);
    let files: u64 = out
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(files < 200 && out.contains("ENOSPC"), "{out}");
}

#[test]
fn open_files_limit() {
    let s = common::sandbox();
    let limits = Limits {
        open_files: 32,
        ..Limits::default()
    };
    let o = s.run(jobs(&s, &["fds"], limits));
    assert_eq!(o.status, Status::Ok, "{}", show(&o));
    assert_eq!(
        text(&o.stdout),
        "fds 29 errno=EMFILE\n",
        "0, 1, 2 are open already"
    );
}

const LOOPBACK_PY: &str = "import socket\n\
s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1)\n\
c = socket.create_connection(s.getsockname(), timeout=2); a, _ = s.accept()\n\
c.sendall(b'ping'); print(a.recv(4).decode())\n";

#[test]
fn network_is_off_by_default() {
    let s = common::sandbox();
    let o = s.run(s.spec(&["python3", "-c", LOOPBACK_PY], Limits::default()));
    assert_eq!(o.status, Status::RuntimeError, "{}", show(&o));
    assert!(!text(&o.stdout).contains("ping"), "{}", show(&o));
    let o = s.run(sh(
        &s,
        "cat /proc/net/dev | tail -n +3 | awk '{print $1, $2}'",
        Limits::default(),
    ));
    assert_eq!(o.status, Status::Ok, "{}", show(&o));
    // Only loopback exists, down, with nothing received.
    assert_eq!(text(&o.stdout), "lo: 0\n", "{}", show(&o));
}

#[test]
fn network_grants_loopback_only() {
    let s = common::sandbox();
    let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = host.local_addr().unwrap().port();
    let mut spec = s.spec(&["python3", "-c", LOOPBACK_PY], Limits::default());
    spec.network = true;
    let o = s.run(spec);
    assert_eq!(o.status, Status::Ok, "{}", show(&o));
    assert_eq!(text(&o.stdout), "ping\n");
    let script = format!(
        "import socket\nfor addr in [('127.0.0.1', {port}), ('10.0.0.1', 80), ('169.254.169.254', 80), ('8.8.8.8', 53)]:\n    \
         try:\n        socket.create_connection(addr, timeout=2); print('reached', addr)\n    \
         except OSError as e:\n        print('failed', addr[0])\n"
    );
    let mut spec = s.spec(&["python3", "-c", &script], Limits::default());
    spec.network = true;
    spec.limits.wall_time = secs(20.0);
    let o = s.run(spec);
    assert_eq!(o.status, Status::Ok, "{}", show(&o));
    assert!(!text(&o.stdout).contains("reached"), "{}", show(&o));
    assert_eq!(text(&o.stdout).lines().count(), 4, "{}", show(&o));
    host.set_nonblocking(true).unwrap();
    assert!(
        host.accept().is_err(),
        "the host's loopback listener was reached"
    );
}

/// The one-shot command's PID 1 moves itself into the slot's cgroups and only then gets its cgroup
/// namespace: the job sees its own cgroup as `/` in every hierarchy, and its CPU is charged there.
#[test]
fn cli_job_runs_in_its_slot_cgroup_namespace() {
    let run = common::cli::run(
        &[
            "sh",
            "-c",
            "cat /proc/self/cgroup; i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done",
        ],
        &[],
    );
    assert!(run.leftovers.is_empty(), "{:?}", run.leftovers);
    let json = run.json().unwrap();
    assert_eq!(json["status"], "ok", "{json}");
    let cgroups = json["stdout"].as_str().unwrap();
    assert!(!cgroups.is_empty(), "{json}");
    for line in cgroups.lines() {
        assert!(
            line.ends_with(":/"),
            "cgroup outside the job's namespace root: {line}"
        );
    }
    assert!(json["cpu_time_ms"].as_u64().unwrap() >= 20, "{json}");
}

/// A one-shot command sweeps the slot cgroups a crashed run left (here: slot 7, leased by no one,
/// with a process still in it); it does so while its own job runs, and kills what it finds.
#[test]
fn cli_sweeps_the_cgroups_a_crashed_run_left() {
    common::require_root();
    let parent = format!("corral-test-cli-{}", std::process::id());
    let mut sleeper = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    for hierarchy in ["memory", "pids", "cpuacct", "cpu", "freezer"] {
        let dir = std::path::Path::new("/sys/fs/cgroup")
            .join(hierarchy)
            .join(&parent)
            .join("slot-7");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tasks"), sleeper.id().to_string()).unwrap();
    }
    let run = common::cli::run(&["true"], &[]);
    let swept = sleeper.try_wait().unwrap();
    if swept.is_none() {
        let _ = sleeper.kill();
        let _ = sleeper.wait();
    }
    assert_eq!(run.json().unwrap()["status"], "ok");
    assert!(run.leftovers.is_empty(), "{:?}", run.leftovers);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        swept.and_then(|s| s.signal()),
        Some(9), // SIGKILL
        "the leftover slot's process survived the run"
    );
}

#[test]
fn cli_prints_one_json_object_with_every_field() {
    let run = common::cli::run(&["sh", "-c", "echo out; echo err >&2; exit 3"], &[]);
    assert!(run.leftovers.is_empty(), "{:?}", run.leftovers);
    let json = run.json().unwrap();
    let fields = [
        "status",
        "limit",
        "exit_code",
        "signal",
        "cpu_time_ms",
        "wall_time_ms",
        "memory_peak_bytes",
        "stdout",
        "stderr",
        "stdout_truncated",
        "stderr_truncated",
    ];
    for field in fields {
        assert!(
            json.get(field).is_some(),
            "field {field} missing from {json}"
        );
    }
    assert_eq!(
        json["status"], "runtime_error",
        "the job failed, the command did not: {json}"
    );
    assert_eq!(json["exit_code"], 3);
    assert_eq!(json["signal"], serde_json::Value::Null);
    assert_eq!(json["stdout"], "out\n");
    assert_eq!(json["stderr"], "err\n");
    assert_eq!(json["stdout_truncated"], false);
    assert!(json["wall_time_ms"].as_u64().is_some() && json["cpu_time_ms"].as_u64().is_some());
    assert!(json["memory_peak_bytes"].as_u64().unwrap() > 0);

    let run = common::cli::run_with(
        &["--cpu-time", "0.3"],
        &["sh", "-c", "while :; do :; done"],
        &[],
    );
    let json = run.json().unwrap();
    assert_eq!(
        (json["status"].as_str(), json["limit"].as_str()),
        (Some("time_limit"), Some("cpu"))
    );
}

/// The one-shot command moves its PID 1 off the caller's CPU while the root is built; the job
/// still gets every CPU the command had (and no more): the mask is restored before it starts.
#[test]
fn cli_job_may_use_every_cpu_its_caller_may() {
    let cpus = |status: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .map(|list| list.trim().to_string())
    };
    let ours = cpus(&std::fs::read_to_string("/proc/self/status").unwrap()).unwrap();
    for _ in 0..5 {
        let run = common::cli::run(&["grep", "Cpus_allowed_list", "/proc/self/status"], &[]);
        assert!(run.leftovers.is_empty(), "{:?}", run.leftovers);
        let json = run.json().unwrap();
        assert_eq!(json["status"], "ok", "{json}");
        assert_eq!(
            cpus(json["stdout"].as_str().unwrap()).as_deref(),
            Some(ours.as_str()),
            "{json}"
        );
    }
}

#[test]
fn cli_output_is_valid_json_whatever_the_job_prints() {
    let run = common::cli::run(
        &[
            "printf",
            "\\033[2J nul:\\000: bad:\\377\\376: \"quoted\" \\\\ end",
        ],
        &[],
    );
    let json = run.json().unwrap();
    assert_eq!(json["status"], "ok");
    let stdout = json["stdout"].as_str().unwrap();
    assert!(stdout.starts_with("\u{1b}[2J nul:\0: bad:") && stdout.ends_with("\"quoted\" \\ end"));
}

#[test]
fn cli_errors_are_one_line_and_non_zero() {
    let missing = common::cli::run_with(&["--file", "/nonexistent/corral-input"], &["true"], &[]);
    let image = common::cli::run_with(&["--image", "no-such-image-corral"], &["true"], &[]);
    let option = common::cli::run_with(&["--cpu-time", "soon"], &["true"], &[]);
    let unknown = common::cli::run_with(&["--no-such-option"], &["true"], &[]);
    for (what, run) in [
        ("missing --file", missing),
        ("missing image", image),
        ("bad value", option),
        ("unknown option", unknown),
    ] {
        assert!(!run.status.success(), "{what}: exit status {}", run.status);
        assert!(run.stdout.is_empty(), "{what}: stdout {:?}", run.stdout);
        assert_eq!(
            run.stderr.trim_end().lines().count(),
            1,
            "{what}: stderr is not one line: {:?}",
            run.stderr
        );
        assert!(run.leftovers.is_empty(), "{what}: {:?}", run.leftovers);
    }
}

#[test]
fn dropping_a_sandbox_removes_its_cgroups_and_spawners() {
    common::require_root();
    let state = tempfile::tempdir().unwrap();
    let parent = format!("corral-test-{}-drop", std::process::id());
    let sandbox = corral_sandbox::Sandbox::new(corral_sandbox::SandboxConfig {
        slots: 2,
        state_dir: state.path().to_path_buf(),
        cgroup_parent: parent.clone(),
        uid_base: common::uid_base(2),
        helper: corral_sandbox::Helper::Exec(env!("CARGO_BIN_EXE_corral").into()),
        require_landlock: true,
        keep_cgroups: false,
        keep_netns: false,
        user_namespace: false,
    })
    .unwrap();
    let spec = Spec {
        image: sandbox.host_image(),
        argv: vec!["true".into()],
        ..Spec::default()
    };
    let o = sandbox.run(spec, &mut |_, _| {}).unwrap();
    assert_eq!(o.status, Status::Ok, "{}", show(&o));
    let dirs: Vec<_> = sandbox
        .idle_slots()
        .into_iter()
        .flat_map(|s| s.cgroup_dirs)
        .collect();
    let spawners: Vec<String> = dirs
        .iter()
        .flat_map(|d| {
            std::fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        !dirs.is_empty() && !spawners.is_empty(),
        "{dirs:?} {spawners:?}"
    );
    drop(sandbox);
    for dir in &dirs {
        assert!(!dir.exists(), "{} survived the sandbox", dir.display());
    }
    for pid in &spawners {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "spawner {pid} survived"
        );
    }
    common::remove_cgroup_parent(&parent);
    assert!(
        common::cgroup_parent_dirs(&parent).is_empty(),
        "cgroup parent {parent} left"
    );
}

#[test]
fn cpu_quota_slows_the_job_down() {
    let s = common::sandbox();
    let limits = Limits {
        cpu_quota_millicpus: Some(250),
        cpu_time: secs(5.0),
        wall_time: secs(30.0),
        ..Limits::default()
    };
    // 250 ms of CPU at a quarter of a CPU cannot take less than about a second of wall time.
    let o = s.run(jobs(&s, &["cputhreads", "2", "250"], limits));
    assert_eq!(o.status, Status::Ok, "{}", show(&o));
    assert!(o.wall_time >= secs(0.8), "{}", show(&o));
    assert!(
        o.cpu_time >= secs(0.25) && o.cpu_time < secs(0.5),
        "{}",
        show(&o)
    );
}

#[test]
fn cli_copies_files_and_stdin_in() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("hello.sh");
    std::fs::write(&script, "#!/bin/sh\nread name\necho \"hello $name\"\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o750)).unwrap();
    let input = dir.path().join("input");
    std::fs::write(&input, "corral\n").unwrap();
    let (script, input) = (script.to_str().unwrap(), input.to_str().unwrap());
    let run = common::cli::run_with(
        &["--file", script, "--stdin", input],
        &["sh", "-c", "stat -c %a hello.sh; ./hello.sh"],
        &[],
    );
    assert!(run.leftovers.is_empty(), "{:?}", run.leftovers);
    let json = run.json().unwrap();
    assert_eq!(json["status"], "ok", "{json}");
    assert_eq!(json["stdout"], "750\nhello corral\n");
}
