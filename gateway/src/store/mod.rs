//! Durable state: tenants, jobs, results and the webhook outbox.
//!
//! [`Store`] is a small synchronous trait so that another backend (PostgreSQL with
//! `FOR UPDATE SKIP LOCKED`) can implement it later; [`SqliteStore`] is the embedded default.
//! Async code calls it through [`Db`], which runs each call right on the async thread (the calls
//! are short and never wait: see [`Db`]) and on the blocking pool only what has to wait.
//!
//! Exactly-once results: a job carries an attempt counter, incremented each time it starts;
//! a result is only recorded by `UPDATE ... WHERE state = 'running' AND attempts = ?`, so a stale
//! attempt (a node that came back after its job was re-queued) can never record a second result.

mod sqlite;
mod types;

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

pub use sqlite::SqliteStore;
pub use types::{
    CancelOutcome, FinishOutcome, InsertOutcome, JobRecord, JobState, NewJob, NewTenant,
    StartedJob, Tenant, TenantQuota, Webhook,
};

use corral_protocol::{JobId, JobResult};

/// What can go wrong talking to the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored JSON document did not decode (a bug or a damaged database).
    #[error("decoding stored {what}: {source}")]
    Decode {
        /// Which document.
        what: &'static str,
        /// Why.
        source: serde_json::Error,
    },
    /// Creating the data directory failed.
    #[error("creating data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database was written by a newer Corral.
    #[error("database schema version {found} is newer than this corral ({supported})")]
    SchemaTooNew {
        /// Version in the file.
        found: i64,
        /// Newest version this build knows.
        supported: i64,
    },
    /// A tenant with that name exists already.
    #[error("tenant {0:?} exists already")]
    TenantExists(String),
    /// The blocking task running a store call panicked or was cancelled.
    #[error("store task failed: {0}")]
    Task(String),
}

impl StoreError {
    /// The database is locked by another connection (another process writing): the call
    /// changed nothing and may be tried again.
    pub fn is_busy(&self) -> bool {
        matches!(
            self,
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _))
                if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked)
        )
    }
}

/// The store's operations. Every method is one transaction.
pub trait Store: Send + Sync + 'static {
    /// Adds a tenant; [`StoreError::TenantExists`] when the name is taken.
    fn create_tenant(&self, tenant: &NewTenant) -> Result<(), StoreError>;
    /// The tenant owning an API key (by the key's SHA-256 hex digest), revoked or not.
    fn tenant_by_key_hash(&self, key_hash: &str) -> Result<Option<Tenant>, StoreError>;
    /// A tenant by name, revoked or not.
    fn tenant_by_name(&self, name: &str) -> Result<Option<Tenant>, StoreError>;
    /// All tenants, by name.
    fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError>;
    /// Revokes a tenant's key; false when there is no such tenant.
    fn revoke_tenant(&self, name: &str) -> Result<bool, StoreError>;

    /// Stores a new queued job, or returns the tenant's existing job with the same idempotency key.
    fn insert_job(&self, job: &NewJob) -> Result<InsertOutcome, StoreError>;
    /// A job of `tenant` (never another tenant's).
    fn get_job(&self, tenant: &str, id: JobId) -> Result<Option<JobRecord>, StoreError>;
    /// A page of `tenant`'s jobs, newest first, strictly older than `before` when given.
    fn list_jobs(
        &self,
        tenant: &str,
        before: Option<JobId>,
        limit: u32,
    ) -> Result<Vec<JobRecord>, StoreError>;
    /// Puts every `running` job back to `queued` (at start-up: the crash was Corral's); how many.
    fn requeue_all_running(&self) -> Result<u64, StoreError>;
    /// Queued jobs, oldest first, as (id, tenant).
    fn queued_jobs(&self) -> Result<Vec<(JobId, String)>, StoreError>;
    /// Moves a queued job to `running` and counts the attempt; `None` when it is no longer queued.
    fn start_job(&self, id: JobId, now_ms: i64) -> Result<Option<StartedJob>, StoreError>;
    /// Moves a running job back to `queued` if `attempt` is still its current attempt.
    fn requeue_job(&self, id: JobId, attempt: u32) -> Result<bool, StoreError>;
    /// Records the result of attempt `attempt`, exactly once, and queues its webhook in the same
    /// transaction; [`FinishOutcome::Stale`] when the job is not running that attempt (nothing
    /// changed).
    fn finish_job(
        &self,
        id: JobId,
        attempt: u32,
        result: &JobResult,
        cancelled: bool,
        now_ms: i64,
    ) -> Result<FinishOutcome, StoreError>;
    /// Cancels a job of `tenant` that has not started.
    fn cancel_job(&self, tenant: &str, id: JobId, now_ms: i64)
        -> Result<CancelOutcome, StoreError>;
    /// Jobs by state, for metrics.
    fn count_by_state(&self) -> Result<Vec<(JobState, u64)>, StoreError>;

    /// Webhooks due at `now_ms`, at most `limit`.
    fn due_webhooks(&self, now_ms: i64, limit: u32) -> Result<Vec<Webhook>, StoreError>;
    /// The earliest time a pending webhook is due, if any.
    fn next_webhook_due(&self) -> Result<Option<i64>, StoreError>;
    /// Marks a webhook delivered (or given up, with `gave_up`).
    fn webhook_finished(&self, job: JobId, gave_up: bool) -> Result<(), StoreError>;
    /// Reschedules a webhook after a failed attempt.
    fn webhook_retry(&self, job: JobId, attempts: u32, next_ms: i64) -> Result<(), StoreError>;

    /// Called by [`Db::new`]: from then on calls come from async threads, so a call that would
    /// wait for a lock another process holds must fail at once ([`StoreError::is_busy`]; `Db`
    /// waits on the blocking pool), and work that syncs the disk must be left to
    /// [`Store::checkpoint`]. By default, nothing changes.
    fn never_wait(&self) {}

    /// Housekeeping that may wait for the disk (SQLite: a WAL checkpoint), run by [`Db`] on the
    /// blocking pool every [`CHECKPOINT_EVERY`]. By default, none.
    fn checkpoint(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// How often [`Db`] runs [`Store::checkpoint`].
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// How long [`Db`] retries a call that found the database locked by another process.
const BUSY_WAIT: Duration = Duration::from_secs(10);

/// An async handle on a [`Store`].
///
/// Each call runs right on the calling async thread: the store's calls are tens of microseconds
/// and never wait (SQLite: WAL with `synchronous = NORMAL`, so a commit does not sync the disk;
/// checkpoints, which do, run on the blocking pool; see [`Store::never_wait`]). Handing every
/// call to the blocking pool cost more than the calls: two thread switches each, about a fifth
/// of a busy server's own CPU. A call that finds the database locked by another process
/// (`corral tenant create`) fails at once, changing nothing, and is retried on the blocking pool
/// until the lock is free (at most [`BUSY_WAIT`]).
#[derive(Clone)]
pub struct Db {
    /// The backend, shared by all handlers and tasks.
    store: Arc<dyn Store>,
}

impl Db {
    /// Wraps a store (switching it to [`Store::never_wait`]) and starts its checkpoints (a task
    /// that ends when the store is dropped). Call it inside a Tokio runtime.
    pub fn new(store: Arc<dyn Store>) -> Self {
        store.never_wait();
        let weak = Arc::downgrade(&store);
        tokio::spawn(checkpoints(weak));
        Db { store }
    }

    /// Runs `f` with the store. `f` may run twice: it must be one store call, or several that
    /// only read (a busy failure changed nothing; a write after another write could not be
    /// undone).
    pub async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: Fn(&dyn Store) -> Result<R, StoreError> + Send + 'static,
    {
        match f(self.store.as_ref()) {
            Err(e) if e.is_busy() => {}
            done => return done,
        }
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            loop {
                match f(store.as_ref()) {
                    Err(e) if e.is_busy() && started.elapsed() < BUSY_WAIT => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    done => return done,
                }
            }
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

/// Runs [`Store::checkpoint`] every [`CHECKPOINT_EVERY`] on the blocking pool while the store
/// lives.
async fn checkpoints(store: Weak<dyn Store>) {
    let mut every = tokio::time::interval(CHECKPOINT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(store) = store.upgrade() else {
            return;
        };
        let done = tokio::task::spawn_blocking(move || store.checkpoint()).await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "store checkpoint failed"),
            Err(e) => tracing::error!(error = %e, "store checkpoint task failed"),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
