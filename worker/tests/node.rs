//! The node loop driven over its channels, with the plain-process executor (no root needed): the
//! service logic (compile once, judge, stop early, cancel, status, exactly one `Done`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use corral_images::language::LanguageSet;
use corral_protocol::{
    Bytes, Compare, CoordinatorMessage, JobEvent, JobId, JobResult, JobSpec, LanguageInfo, Limits,
    NodeStatus, RunStatus, SourceFile, TestCase, Verdict, WorkerMessage,
};
use corral_sandbox::spec::CancelToken;
use corral_sandbox::{Outcome, StreamKind};
use corral_worker::{
    serve_node, ExecError, ExecRequest, Executor, ProcessExecutor, Worker, WorkerConfig,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(60);

struct Node {
    to_worker: Option<mpsc::Sender<CoordinatorMessage>>,
    from_worker: mpsc::Receiver<WorkerMessage>,
    task: JoinHandle<Result<(), corral_worker::WorkerError>>,
    languages: Vec<LanguageInfo>,
    hello: NodeStatus,
    registry: prometheus::Registry,
}

/// Everything the worker said about one job.
struct Job {
    events: Vec<JobEvent>,
    result: JobResult,
    cancelled: bool,
    statuses: Vec<NodeStatus>,
}

impl Job {
    fn count(&self, pred: impl Fn(&JobEvent) -> bool) -> usize {
        self.events.iter().filter(|e| pred(e)).count()
    }

    fn verdicts(&self) -> Vec<Verdict> {
        self.result.runs.iter().map(|r| r.verdict).collect()
    }
}

/// A node with python and c only (self-testing every language in every test is slow).
async fn start(slots: usize) -> anyhow::Result<Node> {
    let executor = Arc::new(ProcessExecutor::new(slots));
    let mut languages = LanguageSet::builtin();
    languages.retain(|l| ["python", "c"].contains(&l.id.as_str()));
    start_with(executor, languages).await
}

async fn start_with(executor: Arc<dyn Executor>, languages: LanguageSet) -> anyhow::Result<Node> {
    let registry = prometheus::Registry::new();
    let worker = Worker::new(
        WorkerConfig::new("test-node"),
        executor,
        languages,
        &registry,
    )?;
    let (tx, from_worker) = mpsc::channel(16);
    let (to_worker, rx) = mpsc::channel(16);
    let task = tokio::spawn(serve_node(worker, tx, rx));
    let mut node = Node {
        to_worker: Some(to_worker),
        from_worker,
        task,
        languages: Vec::new(),
        hello: NodeStatus {
            node: corral_protocol::NodeId(String::new()),
            slots: 0,
            free_slots: 0,
            cpu_utilization: 0.0,
            memory_available_bytes: 0,
            images: Vec::new(),
        },
        registry,
    };
    match tokio::time::timeout(WAIT, node.from_worker.recv()).await? {
        Some(WorkerMessage::Hello { status, languages }) => {
            node.hello = status;
            node.languages = languages;
        }
        other => bail!("expected hello, got {other:?}"),
    }
    Ok(node)
}

impl Node {
    async fn send(&self, message: CoordinatorMessage) -> anyhow::Result<()> {
        let tx = self.to_worker.as_ref().context("closed")?;
        tx.send(message).await.context("worker gone")
    }

    async fn next(&mut self) -> anyhow::Result<WorkerMessage> {
        tokio::time::timeout(WAIT, self.from_worker.recv())
            .await
            .context("no message from the worker in time")?
            .context("worker closed its channel")
    }

    /// Assign `spec` and collect what the worker says until its `Done`.
    async fn run(&mut self, spec: JobSpec) -> anyhow::Result<Job> {
        let id = spec.id;
        self.send(CoordinatorMessage::Assign { job: spec }).await?;
        self.collect(id).await
    }

    async fn collect(&mut self, id: JobId) -> anyhow::Result<Job> {
        let mut events = Vec::new();
        let mut statuses = Vec::new();
        loop {
            match self.next().await? {
                WorkerMessage::Event { job, event } if job == id => events.push(event),
                WorkerMessage::Status { status } => statuses.push(status),
                WorkerMessage::Done {
                    job,
                    result,
                    cancelled,
                } if job == id => {
                    return Ok(Job {
                        events,
                        result,
                        cancelled,
                        statuses,
                    })
                }
                other => bail!("unexpected message {other:?}"),
            }
        }
    }
}

fn limits() -> Limits {
    Limits {
        cpu_time_ms: 10_000,
        wall_time_ms: 20_000,
        memory_bytes: 256 << 20,
        processes: 64,
        output_bytes: 1 << 20,
        file_size_bytes: 64 << 20,
    }
}

fn job(language: &str, file: &str, source: &str, tests: &[(&str, Option<&str>)]) -> JobSpec {
    JobSpec {
        id: JobId::new(),
        tenant: "t".into(),
        language: language.into(),
        files: vec![SourceFile {
            name: file.into(),
            content: source.into(),
        }],
        args: Vec::new(),
        stdin: Bytes::default(),
        limits: limits(),
        compile_limits: limits(),
        tests: tests
            .iter()
            .map(|(stdin, expected)| TestCase {
                stdin: (*stdin).into(),
                expected_output: expected.map(Bytes::from),
            })
            .collect(),
        compare: Compare::TrailingWhitespace,
        stop_on_first_failure: false,
        network: false,
    }
}

const PY_DOUBLE: &str = "print(int(input()) * 2)\n";

#[tokio::test]
async fn hello_lists_self_tested_languages_with_versions() -> anyhow::Result<()> {
    let node = start_with(Arc::new(ProcessExecutor::new(3)), LanguageSet::builtin()).await?;
    assert_eq!(node.hello.slots, 3);
    assert_eq!(node.hello.free_slots, 3);
    assert_eq!(node.hello.node.0, "test-node");
    let python = node
        .languages
        .iter()
        .find(|l| l.id == "python")
        .context("python passed its self-test")?;
    assert!(python.version.starts_with('3'), "{}", python.version);
    assert!(python.aliases.contains(&"py".to_string()));
    assert_eq!(python.limits.cpu_time_ms, 2000);
    let c = node.languages.iter().find(|l| l.id == "c").context("c")?;
    assert!(c.compiled && c.compile_limits.is_some());
    Ok(())
}

#[tokio::test]
async fn python_tests_get_per_test_verdicts() -> anyhow::Result<()> {
    let mut node = start(1).await?;
    let spec = job(
        "python",
        "main.py",
        PY_DOUBLE,
        &[("2\n", Some("4\n")), ("3\n", Some("7")), ("5", Some("10"))],
    );
    let done = node.run(spec).await?;
    assert_eq!(
        done.verdicts(),
        [Verdict::Accepted, Verdict::WrongAnswer, Verdict::Accepted]
    );
    assert_eq!(done.result.verdict, Verdict::WrongAnswer);
    assert_eq!(done.result.runs[1].stdout.0, b"6\n");
    assert!(!done.cancelled);
    assert_eq!(done.events.first(), Some(&JobEvent::Started));
    assert_eq!(done.count(|e| matches!(e, JobEvent::RunStarted { .. })), 3);
    assert_eq!(done.count(|e| matches!(e, JobEvent::RunFinished { .. })), 3);
    let outputs: Vec<&JobEvent> = done
        .events
        .iter()
        .filter(|e| matches!(e, JobEvent::Output { .. }))
        .collect();
    assert!(
        outputs.contains(&&JobEvent::Output {
            index: Some(2),
            stream: corral_protocol::Stream::Stdout,
            data: "10\n".into()
        }),
        "{outputs:?}"
    );
    assert!(done.result.compile.is_none());
    assert_eq!(done.statuses.first().map(|s| s.free_slots), Some(0));
    Ok(())
}

#[tokio::test]
async fn c_is_compiled_once_and_run_on_each_test() -> anyhow::Result<()> {
    let mut node = start(2).await?;
    let source = "#include <stdio.h>\nint main(void){long a,b;scanf(\"%ld %ld\",&a,&b);printf(\"%ld\\n\",a+b);return 0;}\n";
    let spec = job(
        "c",
        "main.c",
        source,
        &[
            ("1 2", Some("3")),
            ("40 2", Some("42")),
            ("-5 5", Some("0")),
        ],
    );
    let done = node.run(spec).await?;
    let compile = done.result.compile.as_ref().context("compile result")?;
    assert_eq!(compile.verdict, Verdict::Accepted, "{compile:?}");
    assert_eq!(done.count(|e| *e == JobEvent::CompileStarted), 1);
    assert_eq!(
        done.count(|e| matches!(e, JobEvent::CompileFinished { .. })),
        1
    );
    assert_eq!(done.verdicts(), [Verdict::Accepted; 3]);
    assert_eq!(done.result.verdict, Verdict::Accepted);
    Ok(())
}

#[tokio::test]
async fn c_compile_error_is_a_compilation_error_without_runs() -> anyhow::Result<()> {
    let mut node = start(1).await?;
    let spec = job("c", "main.c", "int main( { return 0; }\n", &[("", None)]);
    let done = node.run(spec).await?;
    assert_eq!(done.result.verdict, Verdict::CompilationError);
    let compile = done.result.compile.context("compile result")?;
    assert!(compile.stderr.to_string_lossy().contains("error"));
    assert!(done.result.runs.is_empty());
    assert!(done.events.iter().any(|e| matches!(
        e,
        JobEvent::Output {
            index: None,
            stream: corral_protocol::Stream::Stderr,
            ..
        }
    )));
    Ok(())
}

#[tokio::test]
async fn wrong_answer_and_comparison_modes() -> anyhow::Result<()> {
    let mut node = start(1).await?;
    let mut spec = job(
        "python",
        "main.py",
        "print('1.0000001  2')\n",
        &[("", Some("1 2"))],
    );
    spec.compare = Compare::Tokens;
    assert_eq!(
        node.run(spec.clone()).await?.result.verdict,
        Verdict::WrongAnswer
    );
    spec.id = JobId::new();
    spec.compare = Compare::Float { tolerance: 1e-6 };
    assert_eq!(
        node.run(spec.clone()).await?.result.verdict,
        Verdict::Accepted
    );
    spec.id = JobId::new();
    spec.compare = Compare::Exact;
    spec.tests[0].expected_output = Some("1.0000001  2\n".into());
    assert_eq!(node.run(spec).await?.result.verdict, Verdict::Accepted);
    Ok(())
}

#[tokio::test]
async fn runtime_error_time_limit_and_output_limit() -> anyhow::Result<()> {
    let mut node = start(1).await?;
    let crash = job("python", "main.py", "raise SystemExit(3)\n", &[]);
    let done = node.run(crash).await?;
    assert_eq!(done.result.verdict, Verdict::RuntimeError);
    assert_eq!(done.result.runs[0].exit_code, Some(3));
    let mut slow = job("python", "main.py", "while True: pass\n", &[]);
    slow.limits.wall_time_ms = 500;
    let done = node.run(slow).await?;
    assert_eq!(done.result.verdict, Verdict::TimeLimitExceeded);
    assert_eq!(done.result.runs[0].status, RunStatus::TimeLimit);
    let mut loud = job("python", "main.py", "print('x' * 100000)\n", &[]);
    loud.limits.output_bytes = 1000;
    let done = node.run(loud).await?;
    assert_eq!(done.result.verdict, Verdict::OutputLimitExceeded);
    assert_eq!(done.result.runs[0].stdout.len(), 1000);
    assert!(done.result.runs[0].stdout_truncated);
    Ok(())
}

#[tokio::test]
async fn stop_on_first_failure_skips_the_rest() -> anyhow::Result<()> {
    let mut node = start(1).await?;
    let tests = [
        ("1", Some("2")),
        ("2", Some("5")),
        ("3", Some("6")),
        ("4", Some("8")),
    ];
    let mut spec = job("python", "main.py", PY_DOUBLE, &tests);
    spec.stop_on_first_failure = true;
    let done = node.run(spec.clone()).await?;
    assert_eq!(done.verdicts(), [Verdict::Accepted, Verdict::WrongAnswer]);
    assert_eq!(done.count(|e| matches!(e, JobEvent::RunStarted { .. })), 2);
    spec.id = JobId::new();
    spec.stop_on_first_failure = false;
    let done = node.run(spec).await?;
    assert_eq!(done.verdicts().len(), 4);
    Ok(())
}

#[tokio::test]
async fn stop_on_first_failure_with_parallel_tests_keeps_a_prefix() -> anyhow::Result<()> {
    let mut node = start(2).await?;
    let tests: Vec<(&str, Option<&str>)> = vec![
        ("1", Some("2")),
        ("2", Some("0")),
        ("3", Some("6")),
        ("4", Some("8")),
        ("5", Some("10")),
    ];
    let mut spec = job("python", "main.py", PY_DOUBLE, &tests);
    spec.stop_on_first_failure = true;
    let done = node.run(spec).await?;
    assert_eq!(done.verdicts(), [Verdict::Accepted, Verdict::WrongAnswer]);
    Ok(())
}

#[tokio::test]
async fn tests_run_in_parallel_on_free_slots() -> anyhow::Result<()> {
    let mut node = start(2).await?;
    let tests = [("1", Some("2")), ("2", Some("4")), ("3", Some("6"))];
    let done = node
        .run(job("python", "main.py", PY_DOUBLE, &tests))
        .await?;
    assert_eq!(done.verdicts(), [Verdict::Accepted; 3]);
    // The job's own slot, then a borrowed one: the node reported itself full while it ran.
    let free: Vec<u32> = done.statuses.iter().map(|s| s.free_slots).collect();
    assert_eq!(free.first(), Some(&1), "{free:?}");
    assert!(free.contains(&0), "{free:?}");
    // All slots come back after the Done.
    let after = node.next().await?;
    match after {
        WorkerMessage::Status { status } => assert_eq!(status.free_slots, 2),
        other => bail!("expected a status, got {other:?}"),
    }
    let metrics = prometheus::TextEncoder::new().encode_to_string(&node.registry.gather())?;
    assert!(
        metrics.contains("corral_run_seconds_count{language=\"python\",step=\"run\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("corral_worker_slot_utilization 0"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn cancel_kills_a_running_job_and_still_sends_done() -> anyhow::Result<()> {
    let mut node = start(1).await?;
    let spec = job(
        "python",
        "main.py",
        "import time\nprint('up', flush=True)\ntime.sleep(30)\n",
        &[],
    );
    let id = spec.id;
    node.send(CoordinatorMessage::Assign { job: spec }).await?;
    // Wait until the job is running (its first output).
    loop {
        if let WorkerMessage::Event {
            event: JobEvent::Output { .. },
            ..
        } = node.next().await?
        {
            break;
        }
    }
    let started = std::time::Instant::now();
    node.send(CoordinatorMessage::Cancel { job: id }).await?;
    let done = node.collect(id).await?;
    assert!(done.cancelled);
    assert!(done.result.runs.is_empty(), "the cut run has no result");
    assert!(started.elapsed() < Duration::from_secs(10));
    // A cancel for a job that is not running changes nothing.
    node.send(CoordinatorMessage::Cancel { job: JobId::new() })
        .await?;
    let done = node.run(job("python", "main.py", "print(1)", &[])).await?;
    assert_eq!(done.result.verdict, Verdict::Accepted);
    Ok(())
}

#[tokio::test]
async fn unknown_language_gets_an_internal_error_done() -> anyhow::Result<()> {
    let mut node = start(1).await?;
    let done = node.run(job("cobol", "main.cob", "", &[])).await?;
    assert_eq!(done.result.verdict, Verdict::InternalError);
    let error = done.result.runs[0].error.as_deref().unwrap_or_default();
    assert!(error.contains("cobol"), "{error}");
    assert!(done.events.is_empty());
    Ok(())
}

#[tokio::test]
async fn args_and_stdin_reach_the_program_as_data() -> anyhow::Result<()> {
    let mut node = start(1).await?;
    let mut spec = job(
        "python",
        "main.py",
        "import sys\nprint(sys.argv[1:])\nprint(sys.stdin.read())\n",
        &[],
    );
    spec.args = vec!["a b".into(), "{main}".into(), "$(id)".into()];
    spec.stdin = "from stdin".into();
    let done = node.run(spec).await?;
    assert_eq!(
        done.result.runs[0].stdout.to_string_lossy(),
        "['a b', '{main}', '$(id)']\nfrom stdin\n"
    );
    Ok(())
}

#[tokio::test]
async fn closing_the_coordinator_side_cancels_running_jobs_and_ends() -> anyhow::Result<()> {
    let mut node = start(1).await?;
    let spec = job("python", "main.py", "import time\ntime.sleep(30)\n", &[]);
    let id = spec.id;
    node.send(CoordinatorMessage::Assign { job: spec }).await?;
    loop {
        if let WorkerMessage::Event {
            event: JobEvent::RunStarted { .. },
            ..
        } = node.next().await?
        {
            break;
        }
    }
    node.to_worker = None;
    let done = node.collect(id).await?;
    assert!(done.cancelled);
    tokio::time::timeout(WAIT, node.task).await???;
    Ok(())
}

/// Passes version probes through to plain processes, then fails every job's command.
struct FailingExecutor(ProcessExecutor);

impl Executor for FailingExecutor {
    fn slots(&self) -> usize {
        1
    }

    fn run(
        &self,
        request: ExecRequest,
        cancel: &CancelToken,
        on_output: &mut dyn FnMut(StreamKind, &[u8]),
    ) -> Result<Outcome, ExecError> {
        if request.argv.iter().any(|a| a == "--version") {
            return self.0.run(request, cancel, on_output);
        }
        Err(ExecError::UnknownImage("gone".into()))
    }

    fn images(&self) -> Vec<String> {
        Vec::new()
    }
}

#[tokio::test]
async fn executor_failures_become_internal_error_runs() -> anyhow::Result<()> {
    let executor = Arc::new(FailingExecutor(ProcessExecutor::new(1)));
    let mut languages = LanguageSet::builtin();
    languages.retain(|l| l.id == "python");
    let mut node = start_with(executor, languages).await?;
    assert_eq!(node.languages.len(), 1);
    let done = node
        .run(job(
            "python",
            "main.py",
            PY_DOUBLE,
            &[("1", Some("2")), ("2", Some("4"))],
        ))
        .await?;
    assert_eq!(done.result.verdict, Verdict::InternalError);
    assert_eq!(done.result.runs.len(), 2);
    for run in &done.result.runs {
        assert_eq!(run.status, RunStatus::InternalError);
        assert!(
            run.error.as_deref().unwrap_or_default().contains("gone"),
            "{run:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_missing_compile_artifact_is_a_compilation_error() -> anyhow::Result<()> {
    // A "compiler" that succeeds without writing the artifact it promises.
    let text = r#"
id = "fakec"
name = "Fake C"
extensions = ["fc"]
image = "host"
source_file = "main.fc"
[version]
argv = ["bash", "--version"]
regex = 'version (\S+)'
[compile]
argv = ["true", "{sources}"]
artifacts = ["a.out"]
[compile.limits]
cpu_time_ms = 5000
wall_time_ms = 10000
memory_bytes = 268435456
processes = 16
output_bytes = 65536
file_size_bytes = 1048576
[run]
argv = ["./a.out"]
[run.limits]
cpu_time_ms = 5000
wall_time_ms = 10000
memory_bytes = 268435456
processes = 16
output_bytes = 65536
file_size_bytes = 1048576
"#;
    let language = corral_images::language::Language::parse("fakec.toml", text)?;
    let languages = LanguageSet::new(vec![language])?;
    let mut node = start_with(Arc::new(ProcessExecutor::new(1)), languages).await?;
    let done = node.run(job("fakec", "main.fc", "", &[])).await?;
    assert_eq!(done.result.verdict, Verdict::CompilationError);
    let compile = done.result.compile.context("compile result")?;
    assert_eq!(
        compile.status,
        RunStatus::Ok,
        "the compiler itself exited 0"
    );
    assert!(
        compile
            .stderr
            .to_string_lossy()
            .contains("compile artifact a.out: not found"),
        "{compile:?}"
    );
    assert!(done.result.runs.is_empty());
    Ok(())
}

#[tokio::test]
async fn compile_output_is_capped_without_killing_the_compiler() -> anyhow::Result<()> {
    // A "compiler" that writes 100 KB of warnings, then its artifact (the script itself).
    let script = r#"head -c 100000 /dev/zero | tr "\0" w >&2; cp "$1" a.out; chmod 755 a.out"#;
    let text = format!(
        r#"
id = "noisy"
name = "Noisy"
extensions = ["sh"]
image = "host"
source_file = "main.sh"
[version]
argv = ["bash", "--version"]
regex = 'version (\S+)'
[compile]
argv = ["bash", "-c", '{script}', "bash", "{{sources}}"]
artifacts = ["a.out"]
[compile.limits]
cpu_time_ms = 5000
wall_time_ms = 10000
memory_bytes = 268435456
processes = 16
output_bytes = 1000
file_size_bytes = 1048576
[run]
argv = ["./a.out"]
[run.limits]
cpu_time_ms = 5000
wall_time_ms = 10000
memory_bytes = 268435456
processes = 16
output_bytes = 65536
file_size_bytes = 1048576
"#
    );
    let language = corral_images::language::Language::parse("noisy.toml", &text)?;
    let languages = LanguageSet::new(vec![language])?;
    let mut node = start_with(Arc::new(ProcessExecutor::new(1)), languages).await?;
    let mut spec = job(
        "noisy",
        "main.sh",
        "#!/bin/bash\necho ran\n",
        &[("", Some("ran"))],
    );
    spec.compile_limits.output_bytes = 1000;
    let done = node.run(spec).await?;
    let compile = done.result.compile.as_ref().context("compile result")?;
    assert_eq!(compile.verdict, Verdict::Accepted, "{compile:?}");
    assert_eq!(compile.stderr.len(), 1000);
    assert!(compile.stderr_truncated);
    let streamed: usize = done
        .events
        .iter()
        .map(|e| match e {
            JobEvent::Output {
                index: None, data, ..
            } => data.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(streamed, 1000, "compile events are capped too");
    assert_eq!(done.result.verdict, Verdict::Accepted, "{:?}", done.result);
    Ok(())
}
