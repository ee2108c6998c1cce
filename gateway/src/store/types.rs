//! Records the store reads and writes.

use corral_protocol::{JobId, JobResult, JobSpec};

/// A tenant's quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantQuota {
    /// Jobs running at once (more wait in the queue).
    pub max_concurrent: u32,
    /// API requests per minute.
    pub rate_per_minute: u32,
    /// Largest CPU time per run, in milliseconds.
    pub max_cpu_time_ms: u64,
    /// Largest memory per run, in bytes.
    pub max_memory_bytes: u64,
    /// Whether jobs may ask for network access.
    pub network_allowed: bool,
}

/// A tenant to create.
#[derive(Debug, Clone)]
pub struct NewTenant {
    /// Unique name.
    pub name: String,
    /// SHA-256 hex digest of its API key (the key itself is never stored).
    pub key_hash: String,
    /// Secret for signing its webhooks.
    pub webhook_secret: String,
    /// Quotas.
    pub quota: TenantQuota,
    /// Creation time, ms since the epoch.
    pub created_ms: i64,
}

/// A stored tenant.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// Unique name.
    pub name: String,
    /// Secret for signing its webhooks.
    pub webhook_secret: String,
    /// Quotas.
    pub quota: TenantQuota,
    /// Whether its key was revoked.
    pub revoked: bool,
    /// Creation time, ms since the epoch.
    pub created_ms: i64,
}

/// A job's life-cycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for a slot.
    Queued,
    /// Assigned to a node.
    Running,
    /// Finished with a result.
    Done,
    /// Cancelled by its tenant.
    Cancelled,
}

impl JobState {
    /// The stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "done" => JobState::Done,
            "cancelled" => JobState::Cancelled,
            _ => return None,
        })
    }

    /// Whether the job will not change any more.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Done | JobState::Cancelled)
    }
}

/// A job to insert (validated; state `queued`).
#[derive(Debug, Clone)]
pub struct NewJob {
    /// What to run.
    pub spec: JobSpec,
    /// Language version the node reported when the job was accepted.
    pub version: String,
    /// Where to POST the result.
    pub callback_url: Option<String>,
    /// The tenant's idempotency key.
    pub idempotency_key: Option<String>,
    /// Creation time, ms since the epoch.
    pub created_ms: i64,
}

/// A stored job.
#[derive(Debug, Clone)]
pub struct JobRecord {
    /// What to run (with its id and tenant).
    pub spec: JobSpec,
    /// Language version.
    pub version: String,
    /// State.
    pub state: JobState,
    /// Result once done (or what ran before a cancel).
    pub result: Option<JobResult>,
    /// Where to POST the result.
    pub callback_url: Option<String>,
    /// Times it was started (more than one after a crash or a lost node).
    pub attempts: u32,
    /// Creation time, ms since the epoch.
    pub created_ms: i64,
    /// Last start, ms since the epoch.
    pub started_ms: Option<i64>,
    /// End, ms since the epoch.
    pub finished_ms: Option<i64>,
}

/// What [`crate::store::Store::insert_job`] did.
#[derive(Debug, Clone)]
pub enum InsertOutcome {
    /// The job is new.
    Inserted,
    /// The tenant sent this idempotency key before: the existing job.
    Existing(Box<JobRecord>),
}

/// A job that just moved to `running`.
#[derive(Debug, Clone)]
pub struct StartedJob {
    /// What to run.
    pub spec: JobSpec,
    /// This attempt's number (1 for the first).
    pub attempt: u32,
}

/// What [`crate::store::Store::finish_job`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishOutcome {
    /// The job is not running that attempt: nothing changed.
    Stale,
    /// The result is recorded.
    Recorded {
        /// The job has a callback URL: its webhook was queued in the outbox in the same
        /// transaction (the deliverer needs waking only then).
        webhook_queued: bool,
    },
}

impl FinishOutcome {
    /// Whether the result was recorded.
    pub fn recorded(self) -> bool {
        matches!(self, FinishOutcome::Recorded { .. })
    }
}

/// What [`crate::store::Store::cancel_job`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was queued and is now cancelled; it never runs.
    Cancelled,
    /// It is running: the node must be told.
    Running,
    /// It had finished already (done or cancelled).
    Finished,
    /// No such job for this tenant.
    NotFound,
}

/// A webhook delivery waiting in the outbox.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// The job whose document is posted.
    pub job: JobId,
    /// Its tenant.
    pub tenant: String,
    /// Where to.
    pub url: String,
    /// Failed attempts so far.
    pub attempts: u32,
}
