//! The dispatcher: connected worker nodes, the in-memory queue index, and the job life cycle
//! between `queued` and a recorded result.
//!
//! One task owns all of it (no locks): handlers and node readers send it [`Command`]s. The queue
//! holds only job ids per tenant (oldest first); specs stay in the store until a job is assigned.
//! Placement and fair sharing are `corral-balancer`'s plain functions over snapshots of this state.
//!
//! A node is a channel pair speaking the protocol (the task reads every node's receiver itself,
//! with no forwarding task per node): the dispatcher sends `Assign` only while both
//! its own count of the node's unfinished jobs is below the node's slots and the node's last
//! report shows a free slot, and records each `Done` with
//! the attempt it assigned, so a result is stored exactly once. When a node's channel closes, its
//! jobs go back to the front of their tenants' queues.
//!
//! With a [`LayerSource`] (see [`crate::Gateway::serve_layers`]), each `Assign` of a language the
//! node runs on a named image carries that image's exact layers ([`ImageRef`]), resolved at
//! assignment time, so the node can fetch the layers it lacks and never runs another image.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use corral_balancer::{choose_node, choose_tenant, TenantLoad};
use corral_protocol::{
    CoordinatorMessage, ImageRef, JobId, JobResult, LanguageInfo, NodeStatus, Verdict,
    WorkerMessage,
};
use futures::{stream, Stream, StreamExt};
use tokio::sync::{mpsc, watch, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamMap;

use crate::api::images::LayerSource;
use crate::hub::{Finished, Hub, Update};
use crate::metrics::Metrics;
use crate::store::{now_ms, Db, FinishOutcome, JobState, StoreError};

/// A request to the dispatcher task.
#[derive(Debug)]
pub enum Command {
    /// A job was stored as queued.
    Queued {
        /// The job.
        id: JobId,
        /// Its tenant.
        tenant: String,
        /// The tenant's concurrency quota.
        max_concurrent: u32,
    },
    /// A running job should stop.
    Cancel(JobId),
    /// A node connected.
    Connect {
        /// To the node.
        tx: mpsc::Sender<CoordinatorMessage>,
        /// From the node.
        rx: mpsc::Receiver<WorkerMessage>,
    },
    /// A message from node `node`.
    FromNode(u64, WorkerMessage),
    /// Node `node`'s channel closed.
    NodeGone(u64),
    /// Resolve the images of assignments through this source from now on.
    ServeLayers(Layers),
}

/// A [`LayerSource`] handed to the dispatcher.
#[derive(Clone)]
pub struct Layers(pub Arc<dyn LayerSource>);

impl std::fmt::Debug for Layers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Layers")
    }
}

/// A cheap handle on the dispatcher task.
#[derive(Clone)]
pub struct Dispatcher {
    /// The task's inbox.
    tx: mpsc::UnboundedSender<Command>,
    /// Languages of all connected nodes (deduplicated by id).
    languages: watch::Receiver<Arc<Vec<LanguageInfo>>>,
}

impl Dispatcher {
    /// Loads the queued jobs and tenants from the store and starts the dispatcher task.
    pub async fn start(
        db: Db,
        hub: Arc<Hub>,
        metrics: Metrics,
        webhooks: Arc<Notify>,
    ) -> Result<Self, StoreError> {
        let (queued, tenants) = db
            .call(|s| Ok((s.queued_jobs()?, s.list_tenants()?)))
            .await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (lang_tx, languages) = watch::channel(Arc::new(Vec::new()));
        let mut state = State {
            db,
            hub,
            metrics,
            webhooks,
            languages: lang_tx,
            nodes: HashMap::new(),
            from_nodes: StreamMap::new(),
            next_node: 0,
            queues: HashMap::new(),
            running: HashMap::new(),
            served: 0,
            layers: None,
        };
        for t in tenants {
            state.queue(&t.name).max_concurrent = t.quota.max_concurrent;
        }
        for (id, tenant) in queued {
            state.queue(&tenant).jobs.push_back(id);
        }
        state.metrics.queue_depth.set(state.queued() as i64);
        tokio::spawn(state.run(rx));
        Ok(Dispatcher { tx, languages })
    }

    /// Sends a command; false when the dispatcher has stopped.
    pub fn send(&self, cmd: Command) -> bool {
        self.tx.send(cmd).is_ok()
    }

    /// Connects a node speaking the protocol over a channel pair.
    pub fn connect(
        &self,
        tx: mpsc::Sender<CoordinatorMessage>,
        rx: mpsc::Receiver<WorkerMessage>,
    ) -> bool {
        self.send(Command::Connect { tx, rx })
    }

    /// Languages the connected nodes can run.
    pub fn languages(&self) -> Arc<Vec<LanguageInfo>> {
        Arc::clone(&self.languages.borrow())
    }
}

/// Messages of one node; `None` once its channel closed.
type NodeStream = Pin<Box<dyn Stream<Item = Option<WorkerMessage>> + Send + Sync>>;

/// A connected node.
struct Node {
    /// Messages to it.
    tx: mpsc::Sender<CoordinatorMessage>,
    /// Its last reported status (`None` before `Hello`).
    status: Option<NodeStatus>,
    /// Languages from its `Hello`.
    languages: Vec<LanguageInfo>,
    /// Jobs assigned and not done.
    in_flight: u32,
}

/// A tenant's share of the queue.
#[derive(Default)]
struct TenantQueue {
    /// Queued job ids, oldest first (cancelled ones are skipped when popped).
    jobs: VecDeque<JobId>,
    /// Jobs running now.
    running: u32,
    /// Concurrency quota.
    max_concurrent: u32,
    /// Dispatch counter value when last served.
    last_served: u64,
}

/// A job assigned to a node.
struct Running {
    /// The node running it.
    node: u64,
    /// Its tenant (for the running count and metrics).
    tenant: String,
    /// Its language (for metrics).
    language: String,
    /// The attempt assigned: only this attempt's result is recorded.
    attempt: u32,
    /// When the store recorded this attempt's start, ms since the epoch.
    started_ms: i64,
    /// When it was assigned.
    started: Instant,
    /// A cancel was sent: if the node is lost, end the job as cancelled instead of re-running it.
    cancel_requested: bool,
}

/// Everything the dispatcher task owns.
struct State {
    /// Where jobs and results live.
    db: Db,
    /// Live updates to waiters and SSE streams.
    hub: Arc<Hub>,
    /// Queue, slot and job metrics.
    metrics: Metrics,
    /// Wakes the webhook deliverer when a result with a callback is recorded.
    webhooks: Arc<Notify>,
    /// Languages of the connected nodes, for the API.
    languages: watch::Sender<Arc<Vec<LanguageInfo>>>,
    /// Connected nodes by a key local to this process.
    nodes: HashMap<u64, Node>,
    /// The nodes' messages, by the same key.
    from_nodes: StreamMap<u64, NodeStream>,
    /// The next node key.
    next_node: u64,
    /// Queued job ids and running counts by tenant.
    queues: HashMap<String, TenantQueue>,
    /// Jobs assigned and not done.
    running: HashMap<JobId, Running>,
    /// Dispatches so far (the fair-share round-robin clock).
    served: u64,
    /// Where assignments' images are resolved (`None`: assignments carry no image).
    layers: Option<Arc<dyn LayerSource>>,
}

impl State {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        loop {
            let cmd = tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => cmd,
                    None => return,
                },
                Some((key, msg)) = self.from_nodes.next(), if !self.from_nodes.is_empty() => {
                    match msg {
                        Some(msg) => Command::FromNode(key, msg),
                        None => Command::NodeGone(key),
                    }
                }
            };
            // Progress events change nothing that assignment depends on.
            let may_assign = !matches!(cmd, Command::FromNode(_, WorkerMessage::Event { .. }));
            if let Err(e) = self.handle(cmd).await {
                tracing::error!(error = %e, "dispatcher: store failed");
            }
            if !may_assign {
                continue;
            }
            if let Err(e) = self.fill().await {
                tracing::error!(error = %e, "dispatcher: store failed while assigning");
            }
            self.update_gauges();
        }
    }

    fn queue(&mut self, tenant: &str) -> &mut TenantQueue {
        self.queues.entry(tenant.to_string()).or_default()
    }

    fn queued(&self) -> usize {
        self.queues.values().map(|q| q.jobs.len()).sum()
    }

    async fn handle(&mut self, cmd: Command) -> Result<(), StoreError> {
        match cmd {
            Command::Queued {
                id,
                tenant,
                max_concurrent,
            } => {
                let q = self.queue(&tenant);
                q.max_concurrent = max_concurrent;
                q.jobs.push_back(id);
            }
            Command::Cancel(id) => self.cancel(id),
            Command::Connect { tx, rx } => self.connect(tx, rx),
            Command::FromNode(node, msg) => self.node_message(node, msg).await?,
            Command::NodeGone(node) => self.node_gone(node).await?,
            Command::ServeLayers(Layers(source)) => self.layers = Some(source),
        }
        Ok(())
    }

    fn cancel(&mut self, id: JobId) {
        if let Some(r) = self.running.get_mut(&id) {
            r.cancel_requested = true;
            if let Some(node) = self.nodes.get(&r.node) {
                let _ = node.tx.try_send(CoordinatorMessage::Cancel { job: id });
            }
        }
    }

    fn connect(&mut self, tx: mpsc::Sender<CoordinatorMessage>, rx: mpsc::Receiver<WorkerMessage>) {
        let key = self.next_node;
        self.next_node += 1;
        self.nodes.insert(
            key,
            Node {
                tx,
                status: None,
                languages: Vec::new(),
                in_flight: 0,
            },
        );
        let messages = ReceiverStream::new(rx)
            .map(Some)
            .chain(stream::once(async { None }));
        self.from_nodes.insert(key, Box::pin(messages));
    }

    async fn node_message(&mut self, key: u64, msg: WorkerMessage) -> Result<(), StoreError> {
        match msg {
            WorkerMessage::Hello { status, languages } => {
                tracing::info!(node = %status.node.0, slots = status.slots, languages = languages.len(), "node connected");
                if let Some(node) = self.nodes.get_mut(&key) {
                    node.status = Some(status);
                    node.languages = languages;
                }
                self.publish_languages();
            }
            WorkerMessage::Status { status } => {
                if let Some(node) = self.nodes.get_mut(&key) {
                    node.status = Some(status);
                }
            }
            WorkerMessage::Event { job, event } => {
                self.hub.publish(job, Update::Event(Arc::new(event)))
            }
            WorkerMessage::Done {
                job,
                result,
                cancelled,
            } => self.done(key, job, result, cancelled).await?,
        }
        Ok(())
    }

    fn publish_languages(&mut self) {
        let mut all: Vec<LanguageInfo> = Vec::new();
        for node in self.nodes.values() {
            for lang in &node.languages {
                if !all.iter().any(|l| l.id == lang.id) {
                    all.push(lang.clone());
                }
            }
        }
        all.sort_by(|a, b| a.id.cmp(&b.id));
        self.languages.send_replace(Arc::new(all));
    }

    async fn done(
        &mut self,
        node: u64,
        id: JobId,
        result: JobResult,
        cancelled: bool,
    ) -> Result<(), StoreError> {
        let Some(run) = self.running.get(&id).filter(|r| r.node == node) else {
            tracing::warn!(job = %id, "result for a job this node does not run; ignored");
            return Ok(());
        };
        let attempt = run.attempt;
        let Some(run) = self.release(id) else {
            return Ok(());
        };
        let verdict = result.verdict;
        let finished_ms = now_ms();
        let result = Arc::new(result);
        let record = Arc::clone(&result);
        let outcome = self
            .db
            .call(move |s| s.finish_job(id, attempt, &record, cancelled, finished_ms))
            .await?;
        // The call's closure is gone: this is the only reference left.
        let result = Arc::try_unwrap(result).unwrap_or_else(|r| (*r).clone());
        let FinishOutcome::Recorded { webhook_queued } = outcome else {
            tracing::warn!(job = %id, attempt, "stale result; not recorded");
            return Ok(());
        };
        let state = if cancelled {
            JobState::Cancelled
        } else {
            JobState::Done
        };
        tracing::info!(job = %id, tenant = %run.tenant, language = %run.language,
            state = state.as_str(), verdict = verdict.as_str(), attempt, "job finished");
        self.count_finished(&run, state, verdict);
        // Committed: waiters may answer with it.
        let finished = Finished {
            state,
            result,
            attempts: attempt,
            started_ms: run.started_ms,
            finished_ms,
        };
        self.hub.publish(id, Update::Finished(Arc::new(finished)));
        if webhook_queued {
            self.webhooks.notify_one();
        }
        Ok(())
    }

    fn count_finished(&self, run: &Running, state: JobState, verdict: Verdict) {
        self.metrics
            .job_duration
            .with_label_values(&[&run.language])
            .observe(run.started.elapsed().as_secs_f64());
        self.metrics
            .jobs_finished
            .with_label_values(&[&run.tenant, &run.language, state.as_str(), verdict.as_str()])
            .inc();
    }

    /// Forgets a running job: frees its node's slot and its tenant's running count.
    fn release(&mut self, id: JobId) -> Option<Running> {
        let run = self.running.remove(&id)?;
        if let Some(node) = self.nodes.get_mut(&run.node) {
            node.in_flight = node.in_flight.saturating_sub(1);
        }
        let q = self.queue(&run.tenant);
        q.running = q.running.saturating_sub(1);
        Some(run)
    }

    async fn node_gone(&mut self, key: u64) -> Result<(), StoreError> {
        if self.nodes.remove(&key).is_none() {
            return Ok(());
        }
        tracing::warn!(node = key, "node disconnected; re-queueing its jobs");
        // When it is dropped for not keeping up, its messages are not read any more either.
        self.from_nodes.remove(&key);
        self.publish_languages();
        let lost: Vec<JobId> = self
            .running
            .iter()
            .filter(|(_, r)| r.node == key)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            let Some(run) = self.release(id) else {
                continue;
            };
            let attempt = run.attempt;
            if run.cancel_requested {
                let result = JobResult {
                    verdict: Verdict::InternalError,
                    compile: None,
                    runs: Vec::new(),
                };
                let outcome = self
                    .db
                    .call(move |s| s.finish_job(id, attempt, &result, true, now_ms()))
                    .await?;
                if outcome
                    == (FinishOutcome::Recorded {
                        webhook_queued: true,
                    })
                {
                    self.webhooks.notify_one();
                }
                self.hub.publish(id, Update::State(JobState::Cancelled));
            } else if self.db.call(move |s| s.requeue_job(id, attempt)).await? {
                self.queue(&run.tenant).jobs.push_front(id);
                self.hub.publish(id, Update::State(JobState::Queued));
            }
        }
        Ok(())
    }

    /// Assigns queued jobs while some node has a free slot.
    async fn fill(&mut self) -> Result<(), StoreError> {
        loop {
            let (keys, statuses): (Vec<u64>, Vec<NodeStatus>) = self
                .nodes
                .iter()
                .filter_map(|(k, n)| {
                    let mut s = n.status.clone()?;
                    // Our own count covers assignments the node has not reported yet; its
                    // report covers slots a job's parallel tests took.
                    s.free_slots = s.slots.saturating_sub(n.in_flight).min(s.free_slots);
                    Some((*k, s))
                })
                .unzip();
            let Some(node_index) = choose_node(&statuses) else {
                return Ok(());
            };
            let (names, loads): (Vec<&String>, Vec<TenantLoad>) = self
                .queues
                .iter()
                .map(|(name, q)| {
                    let load = TenantLoad {
                        running: q.running,
                        max_concurrent: Some(q.max_concurrent),
                        has_queued: !q.jobs.is_empty(),
                        last_served: q.last_served,
                    };
                    (name, load)
                })
                .unzip();
            let Some(tenant_index) = choose_tenant(&loads) else {
                return Ok(());
            };
            let tenant = names[tenant_index].clone();
            self.assign(keys[node_index], &tenant).await?;
        }
    }

    /// Starts the oldest queued job of `tenant` on `node` (skipping ones cancelled meanwhile).
    async fn assign(&mut self, node: u64, tenant: &str) -> Result<(), StoreError> {
        let Some(id) = self.queue(tenant).jobs.pop_front() else {
            return Ok(());
        };
        let started_ms = now_ms();
        let Some(started) = self.db.call(move |s| s.start_job(id, started_ms)).await? else {
            return Ok(()); // cancelled while queued
        };
        self.served += 1;
        let served = self.served;
        let q = self.queue(tenant);
        q.running += 1;
        q.last_served = served;
        let queued_for = (now_ms() - id_time_ms(id)).max(0) as f64 / 1000.0;
        self.metrics.queue_wait.observe(queued_for);
        self.running.insert(
            id,
            Running {
                node,
                tenant: tenant.to_string(),
                language: started.spec.language.clone(),
                attempt: started.attempt,
                started_ms,
                started: Instant::now(),
                cancel_requested: false,
            },
        );
        let image = self.image_for(node, &started.spec.language);
        let Some(n) = self.nodes.get_mut(&node) else {
            return Ok(());
        };
        n.in_flight += 1;
        let msg = CoordinatorMessage::Assign {
            job: started.spec,
            image,
        };
        if n.tx.try_send(msg).is_err() {
            // Full or closed: the node does not keep up with the slots it announced. Its reader
            // reports it gone when closed; a full channel means it is stuck, so drop it too.
            tracing::warn!(node, job = %id, "node does not accept work; disconnecting it");
            self.node_gone(node).await?;
            return Ok(());
        }
        self.hub.publish(id, Update::State(JobState::Running));
        tracing::debug!(job = %id, tenant, node, attempt = started.attempt, "assigned");
        Ok(())
    }

    /// The exact image `node` runs `language` on, when the node names one and the layer source
    /// knows it; `None` otherwise (the node then uses its own image of that name, never another).
    fn image_for(&self, node: u64, language: &str) -> Option<ImageRef> {
        let source = self.layers.as_ref()?;
        let name = self
            .nodes
            .get(&node)?
            .languages
            .iter()
            .find(|l| l.id == language)?
            .image
            .clone()?;
        // Inline rather than on the blocking pool: a name lookup is one small file read in the
        // store (chains are cached), cheaper than the hand-off, and it runs once per assignment.
        match source.image(&name) {
            Ok(image) => image,
            Err(e) => {
                tracing::error!(language, error = %e, "resolving a job's image; assigned without one");
                None
            }
        }
    }

    fn update_gauges(&self) {
        self.metrics.queue_depth.set(self.queued() as i64);
        let slots: u32 = self
            .nodes
            .values()
            .filter_map(|n| n.status.as_ref().map(|s| s.slots))
            .sum();
        self.metrics.slots.set(i64::from(slots));
        self.metrics.slots_busy.set(self.running.len() as i64);
    }
}

/// Creation time encoded in a UUIDv7 id, ms since the epoch.
fn id_time_ms(id: JobId) -> i64 {
    id.0.get_timestamp()
        .map(|t| {
            let (s, n) = t.to_unix();
            (s as i64) * 1000 + i64::from(n / 1_000_000)
        })
        .unwrap_or_else(now_ms)
}
