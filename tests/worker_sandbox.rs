//! The worker on the real sandbox (needs root; CI runs as root): every shipped language's hello
//! world is accepted, a C compile error is a `compilation_error`, an infinite loop a
//! `time_limit_exceeded`, a memory hog a `memory_limit_exceeded`, a C program is compiled once for several tests, and a cancel kills a
//! running job (through the worker and through `Sandbox::run` directly).
//!
//! Each test starts its own sandbox: a temporary state directory, cgroup parent
//! `corral-test-<pid>-<n>`, its own uid range, and this package's `corral` binary as the spawner
//! helper; all of it is removed at the end.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use corral_images::language::LanguageSet;
use corral_protocol::{
    Bytes, Compare, CoordinatorMessage, JobEvent, JobId, JobResult, JobSpec, LanguageInfo, Limits,
    SourceFile, TestCase, Verdict, WorkerMessage,
};
use corral_sandbox::spec::CancelToken;
use corral_sandbox::{Helper, Sandbox, SandboxConfig, Spec, Status};
use corral_worker::{serve_node, SandboxExecutor, Worker, WorkerConfig};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(120);

/// A sandbox of this test process, and what to remove after it.
struct TestSandbox {
    sandbox: Sandbox,
    cgroup_parent: String,
    state: tempfile::TempDir,
}

fn test_sandbox(n: u32, slots: usize) -> anyhow::Result<TestSandbox> {
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "needs root: these tests run the real sandbox (namespaces, cgroups, mounts)"
    );
    let state = tempfile::Builder::new()
        .prefix("corral-worker-test-")
        .tempdir()?;
    let cgroup_parent = format!("corral-test-{}-{n}", std::process::id());
    let config = SandboxConfig {
        slots,
        state_dir: state.path().to_path_buf(),
        cgroup_parent: cgroup_parent.clone(),
        // Distinct per process and per test: 8192 uids each, far from the service's default.
        uid_base: 300_000_000 + (std::process::id() % 100_000) * 4 * 8192 + n * 8192,
        helper: Helper::Exec(env!("CARGO_BIN_EXE_corral").into()),
        require_landlock: true,
        keep_cgroups: false,
        keep_netns: false,
        user_namespace: false,
    };
    let sandbox = Sandbox::new(config).context("starting the sandbox")?;
    Ok(TestSandbox {
        sandbox,
        cgroup_parent,
        state,
    })
}

/// Remove the (by then empty) cgroup parent directories and the state directory.
fn cleanup(cgroup_parent: &str, state: tempfile::TempDir) {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join(cgroup_parent)];
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries.flatten() {
            if !entry.path().is_symlink() {
                dirs.push(entry.path().join(cgroup_parent));
            }
        }
    }
    for dir in dirs.into_iter().filter(|d| d.is_dir()) {
        if let Err(e) = std::fs::remove_dir(&dir) {
            eprintln!("warning: removing cgroup {}: {e}", dir.display());
        }
    }
    drop(state);
}

/// A worker on a test sandbox, driven over its channels.
struct Node {
    to_worker: mpsc::Sender<CoordinatorMessage>,
    from_worker: mpsc::Receiver<WorkerMessage>,
    task: tokio::task::JoinHandle<Result<(), corral_worker::WorkerError>>,
    languages: Vec<LanguageInfo>,
    cgroup_parent: String,
    state: tempfile::TempDir,
}

async fn start(n: u32, slots: usize) -> anyhow::Result<Node> {
    let TestSandbox {
        sandbox,
        cgroup_parent,
        state,
    } = test_sandbox(n, slots)?;
    let registry = prometheus::Registry::new();
    let executor = Arc::new(SandboxExecutor::new(sandbox));
    let config = WorkerConfig::new("sandbox-test");
    let worker = Worker::new(config, executor, LanguageSet::builtin(), &registry)?;
    let (tx, mut from_worker) = mpsc::channel(64);
    let (to_worker, rx) = mpsc::channel(64);
    let task = tokio::spawn(serve_node(worker, tx, rx));
    let languages = match tokio::time::timeout(WAIT, from_worker.recv()).await? {
        Some(WorkerMessage::Hello { languages, .. }) => languages,
        other => bail!("expected hello, got {other:?}"),
    };
    Ok(Node {
        to_worker,
        from_worker,
        task,
        languages,
        cgroup_parent,
        state,
    })
}

impl Node {
    /// Assign a job and wait for its `Done`; returns its events too.
    async fn run(&mut self, spec: JobSpec) -> anyhow::Result<(JobResult, bool, Vec<JobEvent>)> {
        let id = spec.id;
        self.to_worker
            .send(CoordinatorMessage::Assign {
                job: spec,
                image: None,
            })
            .await?;
        self.until_done(id).await
    }

    async fn until_done(&mut self, id: JobId) -> anyhow::Result<(JobResult, bool, Vec<JobEvent>)> {
        let mut events = Vec::new();
        loop {
            let message = tokio::time::timeout(WAIT, self.from_worker.recv())
                .await
                .context("no message from the worker in time")?
                .context("the worker stopped")?;
            match message {
                WorkerMessage::Event { job, event } if job == id => events.push(event),
                WorkerMessage::Done {
                    job,
                    result,
                    cancelled,
                } if job == id => return Ok((result, cancelled, events)),
                _ => {}
            }
        }
    }

    /// Stop the worker (dropping the sandbox) and remove what the test created.
    async fn stop(self) -> anyhow::Result<()> {
        drop(self.to_worker);
        tokio::time::timeout(WAIT, self.task).await???;
        cleanup(&self.cgroup_parent, self.state);
        Ok(())
    }
}

fn limits(cpu_ms: u64) -> Limits {
    Limits {
        cpu_time_ms: cpu_ms,
        wall_time_ms: cpu_ms * 3,
        memory_bytes: 512 << 20,
        processes: 128,
        output_bytes: 1 << 20,
        file_size_bytes: 64 << 20,
    }
}

fn job(language: &str, files: &[(&str, &str)], tests: &[(&str, &str)]) -> JobSpec {
    JobSpec {
        id: JobId::new(),
        tenant: "test".into(),
        language: language.into(),
        files: files
            .iter()
            .map(|(name, text)| SourceFile {
                name: (*name).into(),
                content: (*text).into(),
            })
            .collect(),
        args: Vec::new(),
        stdin: Bytes::default(),
        limits: limits(5_000),
        compile_limits: limits(20_000),
        tests: tests
            .iter()
            .map(|(stdin, expected)| TestCase {
                stdin: (*stdin).into(),
                expected_output: Some((*expected).into()),
            })
            .collect(),
        compare: Compare::TrailingWhitespace,
        stop_on_first_failure: false,
        network: false,
    }
}

const HELLO: &[(&str, &str, &str)] = &[
    ("bash", "main.sh", "echo hello\n"),
    (
        "c",
        "main.c",
        "#include <stdio.h>\nint main(void){puts(\"hello\");return 0;}\n",
    ),
    (
        "cpp",
        "main.cpp",
        "#include <iostream>\nint main(){std::cout<<\"hello\"<<std::endl;}\n",
    ),
    (
        "java",
        "Main.java",
        // A nested class and a lambda: javac writes several .class files, all must reach the run.
        "public class Main {\n  static class Greeter { String hi() { return \"hello\"; } }\n  public static void main(String[] a) {\n    Runnable r = () -> System.out.println(new Greeter().hi());\n    r.run();\n  }\n}\n",
    ),
    ("javascript", "main.js", "console.log('hello')\n"),
    ("python", "main.py", "print('hello')\n"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shipped_language_runs_hello_world() -> anyhow::Result<()> {
    let mut node = start(0, 2).await?;
    let tested: Vec<&str> = node.languages.iter().map(|l| l.id.as_str()).collect();
    // This node has the host image only: the languages that can fall back to it are offered,
    // those that need their own image (ruby, go, rust, haskell) are not.
    let builtin = LanguageSet::builtin();
    let (on_host, image_only): (Vec<_>, Vec<_>) = builtin
        .all()
        .iter()
        .partition(|l| l.images.iter().any(|i| i == "host"));
    let shipped: Vec<&str> = on_host.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(
        tested, shipped,
        "every shipped language with a host toolchain passes its self-test"
    );
    assert!(!image_only.is_empty());
    for info in &node.languages {
        assert_eq!(info.image.as_deref(), Some("host"), "{info:?}");
    }
    for info in &node.languages {
        assert!(!info.version.is_empty(), "{info:?}");
    }
    for (language, file, source) in HELLO {
        let (result, _, _) = node
            .run(job(language, &[(file, source)], &[("", "hello")]))
            .await?;
        let run = result.runs.first().context("one run")?;
        assert_eq!(
            result.verdict,
            Verdict::Accepted,
            "{language}: compile {:?}, run stdout {:?} stderr {:?} error {:?}",
            result.compile.as_ref().map(|c| c.stderr.to_string_lossy()),
            run.stdout.to_string_lossy(),
            run.stderr.to_string_lossy(),
            run.error
        );
        assert_eq!(
            result.compile.is_some(),
            ["c", "cpp", "java"].contains(language)
        );
    }
    node.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compile_errors_time_limits_tests_and_cancel() -> anyhow::Result<()> {
    let mut node = start(1, 2).await?;

    let (result, _, _) = node
        .run(job("c", &[("main.c", "int main( { return 0; }\n")], &[]))
        .await?;
    assert_eq!(result.verdict, Verdict::CompilationError);
    let compile = result.compile.context("compile result")?;
    assert!(
        compile.stderr.to_string_lossy().contains("error"),
        "{compile:?}"
    );
    assert!(result.runs.is_empty());

    // HOSTILE.md 39: host files are not reachable from the compiler (the image's /etc is a
    // skeleton); 40: error spam ends as a compilation error with capped diagnostics.
    let (result, _, _) = node
        .run(job(
            "c",
            &[(
                "main.c",
                "#include \"/etc/shadow\"\nint main(void){return 0;}\n",
            )],
            &[],
        ))
        .await?;
    assert_eq!(result.verdict, Verdict::CompilationError);
    let stderr = result
        .compile
        .context("compile result")?
        .stderr
        .to_string_lossy();
    assert!(stderr.contains("No such file"), "{stderr}");
    let spam: String = (0..40_000)
        .map(|i| format!("int f{i}(void) {{ return \"x\" * {i}; }}\n"))
        .collect();
    let mut spammy = job("cpp", &[("main.cpp", spam.as_str())], &[]);
    spammy.compile_limits.output_bytes = 4096;
    let (result, _, events) = node.run(spammy).await?;
    assert_eq!(result.verdict, Verdict::CompilationError);
    let compile = result.compile.context("compile result")?;
    assert!(
        compile.stderr.len() <= 4096 && compile.stderr_truncated,
        "{compile:?}"
    );
    let streamed: usize = events
        .iter()
        .map(|e| match e {
            JobEvent::Output { data, .. } => data.len(),
            _ => 0,
        })
        .sum();
    assert!(
        streamed <= 2 * 4096,
        "{streamed} bytes of diagnostics streamed"
    );

    let mut spin = job("python", &[("main.py", "while True:\n    pass\n")], &[]);
    spin.limits = limits(1_000);
    let (result, _, _) = node.run(spin).await?;
    assert_eq!(result.verdict, Verdict::TimeLimitExceeded, "{result:?}");

    let mut hog = job("python", &[("main.py", "b = b'x' * (400 << 20)\n")], &[]);
    hog.limits.memory_bytes = 128 << 20;
    let (result, _, _) = node.run(hog).await?;
    assert_eq!(result.verdict, Verdict::MemoryLimitExceeded, "{result:?}");

    let sum = "#include <stdio.h>\nint main(void){long a,b;if(scanf(\"%ld %ld\",&a,&b)!=2)return 1;printf(\"%ld\\n\",a+b);return 0;}\n";
    let tests = [("1 2", "3"), ("40 2", "42"), ("2 2", "5")];
    let (result, _, events) = node.run(job("c", &[("main.c", sum)], &tests)).await?;
    let compiles = events
        .iter()
        .filter(|e| **e == JobEvent::CompileStarted)
        .count();
    assert_eq!(compiles, 1);
    let verdicts: Vec<Verdict> = result.runs.iter().map(|r| r.verdict).collect();
    assert_eq!(
        verdicts,
        [Verdict::Accepted, Verdict::Accepted, Verdict::WrongAnswer]
    );

    let sleeper = job(
        "python",
        &[(
            "main.py",
            "import time\nprint('up', flush=True)\ntime.sleep(60)\n",
        )],
        &[],
    );
    let id = sleeper.id;
    node.to_worker
        .send(CoordinatorMessage::Assign {
            job: sleeper,
            image: None,
        })
        .await?;
    loop {
        match tokio::time::timeout(WAIT, node.from_worker.recv()).await? {
            Some(WorkerMessage::Event {
                event: JobEvent::Output { .. },
                ..
            }) => break,
            Some(_) => {}
            None => bail!("the worker stopped"),
        }
    }
    let cancelled_at = Instant::now();
    node.to_worker
        .send(CoordinatorMessage::Cancel { job: id })
        .await?;
    let (result, cancelled, _) = node.until_done(id).await?;
    assert!(cancelled);
    assert!(result.runs.is_empty());
    assert!(cancelled_at.elapsed() < Duration::from_secs(5));
    node.stop().await
}

#[test]
fn sandbox_cancel_token_kills_a_running_job_and_skips_a_cancelled_one() -> anyhow::Result<()> {
    let TestSandbox {
        sandbox,
        cgroup_parent,
        state,
    } = test_sandbox(2, 1)?;
    let spec = |cancel: &CancelToken| Spec {
        image: sandbox.host_image(),
        argv: vec!["sleep".into(), "30".into()],
        limits: corral_sandbox::Limits {
            wall_time: Duration::from_secs(20),
            ..corral_sandbox::Limits::default()
        },
        cancel: Some(cancel.clone()),
        ..Spec::default()
    };
    let token = CancelToken::new()?;
    let canceller = {
        let token = token.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            token.cancel();
        })
    };
    let started = Instant::now();
    let outcome = sandbox.run(spec(&token), &mut |_, _| {})?;
    canceller.join().expect("canceller thread");
    assert_eq!(outcome.status, Status::Cancelled, "{outcome:?}");
    assert_eq!(outcome.signal, Some(9));
    assert!(started.elapsed() < Duration::from_secs(5));

    // Already cancelled: never launched.
    let outcome = sandbox.run(spec(&token), &mut |_, _| {})?;
    assert_eq!(outcome.status, Status::Cancelled);
    assert_eq!(outcome.wall_time, Duration::ZERO);

    // The slot is clean for the next job.
    let fresh = CancelToken::new()?;
    let mut ok = spec(&fresh);
    ok.argv = vec!["true".into()];
    assert_eq!(sandbox.run(ok, &mut |_, _| {})?.status, Status::Ok);
    drop(sandbox);
    cleanup(&cgroup_parent, state);
    Ok(())
}
