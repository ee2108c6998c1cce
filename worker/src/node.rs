//! The node loop: the worker's side of the protocol over a pair of channels.
//!
//! [`Worker::serve`] chooses each language's image (the first of its images the executor has;
//! languages with none are not offered), self-tests the languages on them, sends `Hello`, then
//! handles `Assign` and `Cancel` until the coordinator's channel closes. Each assigned job runs on its own blocking thread
//! (plus one thread per slot it borrows for parallel tests); its events, its single `Done` and the
//! node's `Status` updates all go through one ordered internal queue to the transport, so a slow
//! coordinator never blocks a running job (the queue holds at most the jobs' capped output).

use std::collections::HashMap;
use std::sync::Arc;

use corral_images::language::{Language, LanguageSet};
use corral_protocol::{
    CoordinatorMessage, ImageRef, JobEvent, JobId, JobResult, JobSpec, NodeId, NodeStatus, Verdict,
    WorkerMessage,
};
use corral_sandbox::spec::CancelToken;
use prometheus::Registry;
use tokio::sync::mpsc::{self, UnboundedSender};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::convert::internal_error;
use crate::executor::Executor;
use crate::layers::assigned_language;
use crate::load::HostLoad;
use crate::metrics::Metrics;
use crate::runner::{run_job, Finished, Job};
use crate::selftest::self_test;
use crate::slots::Slots;

/// How a worker node is set up.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The node's name (unique in a deployment; the host name by default).
    pub node: NodeId,
    /// Version probes run at once during the self-test.
    pub probe_concurrency: usize,
}

impl WorkerConfig {
    /// A node named `node`, probing two languages at a time.
    pub fn new(node: impl Into<String>) -> WorkerConfig {
        WorkerConfig {
            node: NodeId(node.into()),
            probe_concurrency: 2,
        }
    }
}

/// Why the node loop stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The metrics could not be registered (e.g. registered twice on one registry).
    #[error("registering worker metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The coordinator's side of the transport closed before `Hello` was sent.
    #[error("the coordinator went away before the worker's hello")]
    Disconnected,
}

/// A worker node: an executor, the languages it may run, and its metrics.
pub struct Worker {
    config: WorkerConfig,
    executor: Arc<dyn Executor>,
    languages: LanguageSet,
    metrics: Metrics,
}

/// The node loop's shared state, also handed to every job task.
struct Shared {
    executor: Arc<dyn Executor>,
    metrics: Metrics,
    slots: Arc<Slots>,
    out: UnboundedSender<WorkerMessage>,
}

impl Worker {
    /// A worker running `languages` (only those passing their self-test are offered) on
    /// `executor`, with its metrics registered on `registry`.
    pub fn new(
        config: WorkerConfig,
        executor: Arc<dyn Executor>,
        languages: LanguageSet,
        registry: &Registry,
    ) -> Result<Worker, WorkerError> {
        Ok(Worker {
            config,
            executor,
            languages,
            metrics: Metrics::new(registry)?,
        })
    }

    /// Serve the coordinator on this transport until it closes either side; see [`serve_node`].
    pub async fn serve(
        mut self,
        tx: mpsc::Sender<WorkerMessage>,
        rx: mpsc::Receiver<CoordinatorMessage>,
    ) -> Result<(), WorkerError> {
        self.languages = choose_images(self.executor.clone(), self.languages).await;
        let executor = self.executor.clone();
        let concurrency = self.config.probe_concurrency;
        let infos = self_test(executor, &self.languages, concurrency).await;
        self.languages
            .retain(|l| infos.iter().any(|info| info.id == l.id));
        let (out, queue) = mpsc::unbounded_channel();
        let status = status_fn(
            self.config.node.clone(),
            self.executor.as_ref(),
            &self.metrics,
        );
        let total = self.executor.slots();
        let on_change = {
            let out = out.clone();
            let status = status.clone();
            Box::new(move |busy: usize| {
                let _ = out.send(WorkerMessage::Status {
                    status: status(total, busy),
                });
            })
        };
        let hello = WorkerMessage::Hello {
            status: status(total, 0),
            languages: infos,
        };
        tx.send(hello)
            .await
            .map_err(|_| WorkerError::Disconnected)?;
        let closed = tx.clone();
        let forwarder = tokio::spawn(forward(queue, tx));
        let shared = Arc::new(Shared {
            executor: self.executor.clone(),
            metrics: self.metrics.clone(),
            slots: Arc::new(Slots::new(total, on_change)),
            out,
        });
        self.run_loop(&shared, rx, closed).await;
        drop(shared);
        let _ = forwarder.await;
        Ok(())
    }

    /// Handle coordinator messages; on the way out, cancel and finish every running job.
    async fn run_loop(
        &self,
        shared: &Arc<Shared>,
        mut rx: mpsc::Receiver<CoordinatorMessage>,
        closed: mpsc::Sender<WorkerMessage>,
    ) {
        let mut running: HashMap<JobId, CancelToken> = HashMap::new();
        let mut tasks: JoinSet<JobId> = JoinSet::new();
        loop {
            tokio::select! {
                message = rx.recv() => match message {
                    None => break,
                    Some(CoordinatorMessage::Assign { job, image }) => {
                        self.assign(shared, job, image, &mut running, &mut tasks);
                    }
                    Some(CoordinatorMessage::Cancel { job }) => {
                        if let Some(token) = running.get(&job) {
                            tracing::info!(job = %job, "cancelling");
                            token.cancel();
                        }
                    }
                },
                Some(done) = tasks.join_next() => {
                    if let Ok(id) = done {
                        running.remove(&id);
                    }
                }
                _ = closed.closed() => break,
            }
        }
        for token in running.values() {
            token.cancel();
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Start an assigned job (or answer at once when it cannot run here).
    fn assign(
        &self,
        shared: &Arc<Shared>,
        job: JobSpec,
        image: Option<ImageRef>,
        running: &mut HashMap<JobId, CancelToken>,
        tasks: &mut JoinSet<JobId>,
    ) {
        let id = job.id;
        if running.contains_key(&id) {
            tracing::warn!(job = %id, "job assigned twice while running; ignoring the second");
            return;
        }
        let Some(language) = self.languages.resolve(&job.language).cloned() else {
            let why = format!("language {:?} is not available on this node", job.language);
            send_failure(&shared.out, id, why);
            return;
        };
        let cancel = match CancelToken::new() {
            Ok(token) => token,
            Err(e) => return send_failure(&shared.out, id, format!("cancel token: {e}")),
        };
        running.insert(id, cancel.clone());
        shared.slots.take();
        let span =
            tracing::info_span!("job", id = %id, tenant = %job.tenant, language = %job.language);
        let shared = shared.clone();
        tasks.spawn(
            async move {
                let task_shared = shared.clone();
                let joined = tokio::task::spawn_blocking(move || {
                    execute(&task_shared, &job, &language, image.as_ref(), &cancel)
                })
                .await;
                let finished = joined.unwrap_or_else(|e| Finished {
                    result: failed(format!("the job's thread failed: {e}")),
                    cancelled: false,
                });
                tracing::info!(
                    verdict = finished.result.verdict.as_str(),
                    cancelled = finished.cancelled,
                    "job done"
                );
                let _ = shared.out.send(WorkerMessage::Done {
                    job: id,
                    result: finished.result,
                    cancelled: finished.cancelled,
                });
                shared.slots.release();
                id
            }
            .instrument(span),
        );
    }
}

/// Serve a coordinator over an in-process transport (the same messages cross the network as JSON
/// with `corral worker --join URL`): self-test the languages, send `Hello`, run assigned jobs,
/// stream their events, send exactly one `Done` per assignment and a `Status` whenever the free
/// slots change. Returns when the coordinator closes its sender (running jobs are then cancelled
/// and their `Done`s still sent) or drops the receiver.
pub async fn serve_node(
    worker: Worker,
    tx: mpsc::Sender<WorkerMessage>,
    rx: mpsc::Receiver<CoordinatorMessage>,
) -> Result<(), WorkerError> {
    worker.serve(tx, rx).await
}

/// Run one job on this (blocking) thread, on the assigned image when there is one (its missing
/// layers fetched first; a failure is the job's internal error).
fn execute(
    shared: &Shared,
    spec: &JobSpec,
    language: &Language,
    image: Option<&ImageRef>,
    cancel: &CancelToken,
) -> Finished {
    let assigned = image.map(|image| assigned_language(shared.executor.as_ref(), language, image));
    let assigned = match assigned.transpose() {
        Ok(assigned) => assigned,
        Err(why) => {
            return Finished {
                result: failed(why),
                cancelled: false,
            }
        }
    };
    let language = assigned.as_ref().unwrap_or(language);
    let id = spec.id;
    let out = shared.out.clone();
    let emit = move |event: JobEvent| {
        let _ = out.send(WorkerMessage::Event { job: id, event });
    };
    run_job(&Job {
        spec,
        language,
        executor: shared.executor.as_ref(),
        cancel,
        emit: &emit,
        slots: &shared.slots,
        metrics: &shared.metrics,
    })
}

/// Send queued messages to the transport, in order, until the queue closes or the transport
/// does.
async fn forward(
    mut queue: mpsc::UnboundedReceiver<WorkerMessage>,
    tx: mpsc::Sender<WorkerMessage>,
) {
    while let Some(message) = queue.recv().await {
        if tx.send(message).await.is_err() {
            return;
        }
    }
}

/// A job that could not run at all: `Started`-less, one `internal_error` run.
/// Run each language on the first of its images the executor has, and drop the languages with
/// none (on a blocking thread: resolving an image may mount its layers). The choice is fixed for
/// the node's life: a job never moves to another image, and a language whose version probe then
/// fails on the chosen image is not offered (it does not fall back to the next of its images).
async fn choose_images(executor: Arc<dyn Executor>, mut languages: LanguageSet) -> LanguageSet {
    let chosen = tokio::task::spawn_blocking(move || {
        let dropped = languages.choose_images(|image| executor.has_image(image));
        (languages, dropped)
    })
    .await;
    let (languages, dropped) = chosen.expect("choosing images does not panic");
    for (id, images) in dropped {
        tracing::warn!(language = %id, ?images, "language not offered: none of its images is on this node");
    }
    for lang in languages.all() {
        tracing::info!(language = %lang.id, image = lang.image(), "language image chosen");
    }
    languages
}

fn send_failure(out: &UnboundedSender<WorkerMessage>, job: JobId, why: String) {
    tracing::warn!(job = %job, reason = %why, "job refused");
    let _ = out.send(WorkerMessage::Done {
        job,
        result: failed(why),
        cancelled: false,
    });
}

fn failed(why: String) -> JobResult {
    JobResult {
        verdict: Verdict::InternalError,
        compile: None,
        runs: vec![internal_error(why)],
    }
}

/// Builds the node's status from (total, busy) slots, and updates the utilization gauges.
type StatusFn = Arc<dyn Fn(usize, usize) -> NodeStatus + Send + Sync>;

fn status_fn(node: NodeId, executor: &dyn Executor, metrics: &Metrics) -> StatusFn {
    let images = executor.images();
    let load = HostLoad::default();
    let metrics = metrics.clone();
    Arc::new(move |total, busy| {
        metrics.slots_busy.set(busy as f64);
        metrics
            .slot_utilization
            .set((busy as f64 / total.max(1) as f64).min(1.0));
        let (cpu_utilization, memory_available_bytes) = load.sample();
        NodeStatus {
            node: node.clone(),
            slots: total as u32,
            free_slots: total.saturating_sub(busy) as u32,
            cpu_utilization,
            memory_available_bytes,
            images: images.clone(),
        }
    })
}
