//! Test harness: a gateway on a temporary store, with a fake worker node that speaks the protocol
//! over channels and answers with canned results.
//!
//! The fake node's behaviour is chosen by the main file's content: `hang` runs until cancelled,
//! `slow` takes 50 ms, anything else finishes at once. A run's stdout is its stdin.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use corral_gateway::store::TenantQuota;
use corral_gateway::tenants::create_tenant;
use corral_gateway::{Config, Gateway, SqliteStore, Store};
use corral_protocol::{
    CoordinatorMessage, JobEvent, JobId, JobResult, JobSpec, LanguageInfo, Limits, NodeId,
    NodeStatus, RunResult, RunStatus, Stream, Verdict, WorkerMessage,
};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tower::ServiceExt;

pub fn limits() -> Limits {
    Limits {
        cpu_time_ms: 1000,
        wall_time_ms: 3000,
        memory_bytes: 128 << 20,
        processes: 16,
        output_bytes: 1 << 16,
        file_size_bytes: 1 << 20,
    }
}

pub fn languages() -> Vec<LanguageInfo> {
    let lang = |id: &str, aliases: &[&str], file: &str, compiled: bool| LanguageInfo {
        id: id.into(),
        name: id.to_uppercase(),
        version: "1.0".into(),
        aliases: aliases.iter().map(|a| a.to_string()).collect(),
        source_file: file.into(),
        compiled,
        extensions: vec![],
        limits: limits(),
        compile_limits: compiled.then(limits),
        image: Some("host".into()),
    };
    vec![
        lang("python", &["py", "python3"], "main.py", false),
        lang("c", &[], "main.c", true),
    ]
}

pub fn quota() -> TenantQuota {
    TenantQuota {
        max_concurrent: 100,
        rate_per_minute: 10_000,
        max_cpu_time_ms: 5_000,
        max_memory_bytes: 512 << 20,
        network_allowed: false,
    }
}

/// Everything the fake node saw.
#[derive(Default)]
pub struct NodeLog {
    /// Jobs assigned, in order.
    pub assigned: Vec<JobSpec>,
    /// Cancels received.
    pub cancelled: Vec<JobId>,
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub store: Arc<SqliteStore>,
    pub gateway: Gateway,
    pub app: Router,
    pub log: Arc<Mutex<NodeLog>>,
    /// API key of tenant `alice`, then `bob`.
    pub alice: String,
    pub bob: String,
    pub alice_secret: String,
}

impl Harness {
    pub async fn new() -> Harness {
        Self::with(Config::default(), quota(), 4).await
    }

    pub async fn with(config: Config, alice_quota: TenantQuota, slots: u32) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let alice = create_tenant(store.as_ref(), "alice", alice_quota).unwrap();
        let bob = create_tenant(store.as_ref(), "bob", quota()).unwrap();
        Self::start(dir, store, config, slots, alice, bob).await
    }

    async fn start(
        dir: tempfile::TempDir,
        store: Arc<SqliteStore>,
        config: Config,
        slots: u32,
        alice: corral_gateway::tenants::Credentials,
        bob: corral_gateway::tenants::Credentials,
    ) -> Harness {
        let registry = prometheus::Registry::new();
        let gateway = Gateway::start(config, store.clone() as Arc<dyn Store>, registry)
            .await
            .unwrap();
        let log = Arc::new(Mutex::new(NodeLog::default()));
        // With 0 slots the node offers its languages but never takes a job.
        connect_fake_node(&gateway, slots, log.clone());
        let app = gateway.router();
        let h = Harness {
            dir,
            store,
            gateway,
            app,
            log,
            alice: alice.api_key,
            bob: bob.api_key,
            alice_secret: alice.webhook_secret,
        };
        h.wait_ready().await;
        h
    }

    pub async fn wait_ready(&self) {
        for _ in 0..200 {
            if !self.gateway.dispatcher().languages().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Sends a request; (status, headers, JSON body or Null).
    pub async fn send(&self, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
        let response = self.app.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, headers, json)
    }

    pub async fn post(&self, key: &str, uri: &str, body: &Value) -> (StatusCode, Value) {
        let (s, _, v) = self.send(post(key, uri, body.to_string())).await;
        (s, v)
    }

    pub async fn get(&self, key: &str, uri: &str) -> (StatusCode, Value) {
        let (s, _, v) = self.send(get(key, uri)).await;
        (s, v)
    }

    /// How many jobs the store holds for a tenant.
    pub fn stored_jobs(&self, tenant: &str) -> usize {
        self.store.list_jobs(tenant, None, 1000).unwrap().len()
    }

    /// Polls until the job is final; its document.
    pub async fn wait_done(&self, key: &str, id: &str) -> Value {
        for _ in 0..500 {
            let (_, doc) = self.get(key, &format!("/v1/jobs/{id}")).await;
            if doc["state"] == "done" || doc["state"] == "cancelled" {
                return doc;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("job {id} did not finish");
    }
}

pub fn post(key: &str, uri: &str, body: String) -> Request<Body> {
    Request::post(uri)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}

pub fn get(key: &str, uri: &str) -> Request<Body> {
    Request::get(uri)
        .header("authorization", format!("Bearer {key}"))
        .body(Body::empty())
        .unwrap()
}

pub fn delete(key: &str, uri: &str) -> Request<Body> {
    Request::delete(uri)
        .header("authorization", format!("Bearer {key}"))
        .body(Body::empty())
        .unwrap()
}

/// Connects a fake node with `slots` slots to the gateway's dispatcher.
pub fn connect_fake_node(gateway: &Gateway, slots: u32, log: Arc<Mutex<NodeLog>>) {
    let (to_node, from_gateway) = mpsc::channel(64);
    let (to_gateway, from_node) = mpsc::channel(64);
    assert!(gateway.dispatcher().connect(to_node, from_node));
    tokio::spawn(fake_node(slots, from_gateway, to_gateway, log));
}

pub fn status(slots: u32) -> NodeStatus {
    NodeStatus {
        node: NodeId("fake".into()),
        slots,
        free_slots: slots,
        cpu_utilization: 0.0,
        memory_available_bytes: 1 << 33,
        images: vec![],
    }
}

async fn fake_node(
    slots: u32,
    mut rx: mpsc::Receiver<CoordinatorMessage>,
    tx: mpsc::Sender<WorkerMessage>,
    log: Arc<Mutex<NodeLog>>,
) {
    let hello = WorkerMessage::Hello {
        status: status(slots),
        languages: languages(),
    };
    tx.send(hello).await.unwrap();
    let mut hanging: Vec<JobSpec> = Vec::new();
    while let Some(msg) = rx.recv().await {
        match msg {
            CoordinatorMessage::Assign { job, .. } => {
                log.lock().unwrap().assigned.push(job.clone());
                let source = String::from_utf8_lossy(&job.files[0].content.0).to_string();
                if source.contains("hang") {
                    let _ = tx.send(event(&job, JobEvent::Started)).await;
                    hanging.push(job);
                    continue;
                }
                let tx = tx.clone();
                tokio::spawn(async move {
                    if source.contains("slow") {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    finish(&tx, &job, false).await;
                });
            }
            CoordinatorMessage::Cancel { job } => {
                log.lock().unwrap().cancelled.push(job);
                if let Some(i) = hanging.iter().position(|j| j.id == job) {
                    let spec = hanging.remove(i);
                    finish(&tx, &spec, true).await;
                }
            }
        }
    }
}

fn event(job: &JobSpec, event: JobEvent) -> WorkerMessage {
    WorkerMessage::Event { job: job.id, event }
}

pub fn run(stdout: &[u8], expected: Option<&[u8]>) -> RunResult {
    let verdict = match expected {
        Some(e) if e != stdout => Verdict::WrongAnswer,
        _ => Verdict::Accepted,
    };
    RunResult {
        status: RunStatus::Ok,
        limit: None,
        verdict,
        exit_code: Some(0),
        signal: None,
        cpu_time_ms: 1,
        wall_time_ms: 2,
        memory_peak_bytes: 1 << 20,
        stdout: stdout.into(),
        stderr: "".into(),
        stdout_truncated: false,
        stderr_truncated: false,
        error: None,
    }
}

async fn finish(tx: &mpsc::Sender<WorkerMessage>, job: &JobSpec, cancelled: bool) {
    let _ = tx.send(event(job, JobEvent::Started)).await;
    let runs: Vec<RunResult> = if job.tests.is_empty() {
        vec![run(&job.stdin.0, None)]
    } else {
        job.tests
            .iter()
            .map(|t| run(&t.stdin.0, t.expected_output.as_ref().map(|e| &e.0[..])))
            .collect()
    };
    for (index, r) in runs.iter().enumerate() {
        let out = JobEvent::Output {
            index: Some(index),
            stream: Stream::Stdout,
            data: r.stdout.clone(),
        };
        let _ = tx.send(event(job, out)).await;
    }
    let verdict = runs
        .iter()
        .map(|r| r.verdict)
        .find(|v| *v != Verdict::Accepted)
        .unwrap_or(Verdict::Accepted);
    let done = WorkerMessage::Done {
        job: job.id,
        result: JobResult {
            verdict,
            compile: None,
            runs,
        },
        cancelled,
    };
    let _ = tx.send(done).await;
}
