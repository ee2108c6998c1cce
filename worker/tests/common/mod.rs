//! Shared harness of the worker's integration tests: a node on the plain-process executor (no root
//! needed), driven over its channels like a coordinator would.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use corral_images::language::LanguageSet;
use corral_protocol::{
    Bytes, Compare, CoordinatorMessage, JobEvent, JobId, JobResult, JobSpec, LanguageInfo, Limits,
    NodeStatus, SourceFile, TestCase, Verdict, WorkerMessage,
};
use corral_worker::{serve_node, Executor, ProcessExecutor, Worker, WorkerConfig};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub const WAIT: Duration = Duration::from_secs(60);

pub struct Node {
    pub to_worker: Option<mpsc::Sender<CoordinatorMessage>>,
    pub from_worker: mpsc::Receiver<WorkerMessage>,
    pub task: JoinHandle<Result<(), corral_worker::WorkerError>>,
    pub languages: Vec<LanguageInfo>,
    pub hello: NodeStatus,
    pub registry: prometheus::Registry,
}

/// Everything the worker said about one job.
pub struct Job {
    pub events: Vec<JobEvent>,
    pub result: JobResult,
    pub cancelled: bool,
    pub statuses: Vec<NodeStatus>,
}

impl Job {
    pub fn count(&self, pred: impl Fn(&JobEvent) -> bool) -> usize {
        self.events.iter().filter(|e| pred(e)).count()
    }

    pub fn verdicts(&self) -> Vec<Verdict> {
        self.result.runs.iter().map(|r| r.verdict).collect()
    }
}

/// A node with python and c only (self-testing every language in every test is slow).
pub async fn start(slots: usize) -> anyhow::Result<Node> {
    let executor = Arc::new(ProcessExecutor::new(slots));
    let mut languages = LanguageSet::builtin();
    languages.retain(|l| ["python", "c"].contains(&l.id.as_str()));
    start_with(executor, languages).await
}

pub async fn start_with(
    executor: Arc<dyn Executor>,
    languages: LanguageSet,
) -> anyhow::Result<Node> {
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
    pub async fn send(&self, message: CoordinatorMessage) -> anyhow::Result<()> {
        let tx = self.to_worker.as_ref().context("closed")?;
        tx.send(message).await.context("worker gone")
    }

    pub async fn next(&mut self) -> anyhow::Result<WorkerMessage> {
        tokio::time::timeout(WAIT, self.from_worker.recv())
            .await
            .context("no message from the worker in time")?
            .context("worker closed its channel")
    }

    /// Assign `spec` and collect what the worker says until its `Done`.
    pub async fn run(&mut self, spec: JobSpec) -> anyhow::Result<Job> {
        let id = spec.id;
        self.send(CoordinatorMessage::Assign {
            job: spec,
            image: None,
        })
        .await?;
        self.collect(id).await
    }

    pub async fn collect(&mut self, id: JobId) -> anyhow::Result<Job> {
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

pub fn limits() -> Limits {
    Limits {
        cpu_time_ms: 10_000,
        wall_time_ms: 20_000,
        memory_bytes: 256 << 20,
        processes: 64,
        output_bytes: 1 << 20,
        file_size_bytes: 64 << 20,
    }
}

pub fn job(language: &str, file: &str, source: &str, tests: &[(&str, Option<&str>)]) -> JobSpec {
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

pub const PY_DOUBLE: &str = "print(int(input()) * 2)\n";
