//! The embedded [`Store`]: one SQLite file (WAL) in the data directory.
//!
//! `synchronous = NORMAL` in WAL mode: a committed transaction survives a crash of the process
//! (`kill -9`); only a power loss may lose the last transactions. Other processes (`corral tenant
//! create` while `corral serve` runs) share the file; `busy_timeout` makes them wait their turn.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use corral_protocol::{JobId, JobResult};
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{
    CancelOutcome, FinishOutcome, InsertOutcome, JobRecord, JobState, NewJob, NewTenant,
    StartedJob, Store, StoreError, Tenant, TenantQuota, Webhook,
};

mod tx;

use tx::Immediate;

/// How long a connection waits for another one's lock, until [`Store::never_wait`].
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Schema versions, applied in order; `PRAGMA user_version` records how many ran.
pub(super) const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE tenants (
    name TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    webhook_secret TEXT NOT NULL,
    max_concurrent INTEGER NOT NULL,
    rate_per_minute INTEGER NOT NULL,
    max_cpu_time_ms INTEGER NOT NULL,
    max_memory_bytes INTEGER NOT NULL,
    network_allowed INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL
);
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants(name),
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'cancelled')),
    spec TEXT NOT NULL,
    version TEXT NOT NULL,
    result TEXT,
    callback_url TEXT,
    idempotency_key TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL,
    started_ms INTEGER,
    finished_ms INTEGER
);
CREATE UNIQUE INDEX jobs_idempotency ON jobs(tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_tenant_id ON jobs(tenant, id);
CREATE INDEX jobs_state ON jobs(state, id);
CREATE TABLE webhooks (
    job TEXT PRIMARY KEY REFERENCES jobs(id),
    tenant TEXT NOT NULL,
    url TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_ms INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'gave_up'))
);
CREATE INDEX webhooks_due ON webhooks(state, next_ms);
"#];

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    /// One connection; SQLite serializes writers anyway, and calls are short.
    conn: Mutex<Connection>,
    /// The database file, for the checkpoint connection.
    path: PathBuf,
    /// A second connection for [`Store::checkpoint`] (opened by the first one), so that a
    /// checkpoint syncing the disk never holds `conn`.
    checkpointer: Mutex<Option<Connection>>,
}

impl SqliteStore {
    /// Opens (creating if needed) `corral.db` in `data_dir` and brings its schema up to date.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join("corral.db");
        let conn = Connection::open(&path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Every statement is prepared once per connection (see `prepare_cached` below).
        conn.set_prepared_statement_cache_capacity(64);
        migrate(&conn)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            path,
            checkpointer: Mutex::new(None),
        })
    }

    /// `PRAGMA wal_checkpoint(PASSIVE)` on the checkpoint connection: copies what it can of the
    /// WAL into the database (syncing both), without waiting for or blocking writers.
    fn checkpoint_wal(&self) -> Result<(), StoreError> {
        let mut checkpointer = self.checkpointer.lock().unwrap_or_else(|p| p.into_inner());
        let conn = match checkpointer.take() {
            Some(conn) => conn,
            None => Connection::open(&self.path)?,
        };
        // (busy, WAL frames, frames checkpointed): a busy checkpoint (another process's) is
        // simply tried again next time.
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0))?;
        *checkpointer = Some(conn);
        Ok(())
    }

    pub(super) fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a transaction half-applied (it rolls back
        // on drop), so a poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let supported = MIGRATIONS.len() as i64;
    if version > supported {
        return Err(StoreError::SchemaTooNew {
            found: version,
            supported,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {sql}; PRAGMA user_version = {}; COMMIT;",
            i + 1
        ))?;
    }
    Ok(())
}

const TENANT_COLUMNS: &str = "name, webhook_secret, max_concurrent, rate_per_minute, \
     max_cpu_time_ms, max_memory_bytes, network_allowed, revoked, created_ms";

fn tenant_from_row(r: &Row<'_>) -> rusqlite::Result<Tenant> {
    Ok(Tenant {
        name: r.get(0)?,
        webhook_secret: r.get(1)?,
        quota: TenantQuota {
            max_concurrent: r.get(2)?,
            rate_per_minute: r.get(3)?,
            max_cpu_time_ms: r.get::<_, i64>(4)? as u64,
            max_memory_bytes: r.get::<_, i64>(5)? as u64,
            network_allowed: r.get(6)?,
        },
        revoked: r.get(7)?,
        created_ms: r.get(8)?,
    })
}

const JOB_COLUMNS: &str =
    "spec, version, state, result, callback_url, attempts, created_ms, started_ms, finished_ms";

/// A job row before its JSON columns are decoded.
struct RawJob {
    spec: String,
    version: String,
    state: String,
    result: Option<String>,
    callback_url: Option<String>,
    attempts: u32,
    created_ms: i64,
    started_ms: Option<i64>,
    finished_ms: Option<i64>,
}

fn raw_job(r: &Row<'_>) -> rusqlite::Result<RawJob> {
    Ok(RawJob {
        spec: r.get(0)?,
        version: r.get(1)?,
        state: r.get(2)?,
        result: r.get(3)?,
        callback_url: r.get(4)?,
        attempts: r.get(5)?,
        created_ms: r.get(6)?,
        started_ms: r.get(7)?,
        finished_ms: r.get(8)?,
    })
}

fn decode(raw: RawJob) -> Result<JobRecord, StoreError> {
    let spec = serde_json::from_str(&raw.spec).map_err(|source| StoreError::Decode {
        what: "job spec",
        source,
    })?;
    let result = match raw.result {
        Some(text) => Some(
            serde_json::from_str(&text).map_err(|source| StoreError::Decode {
                what: "job result",
                source,
            })?,
        ),
        None => None,
    };
    let state = JobState::parse(&raw.state).ok_or_else(|| StoreError::Decode {
        what: "job state",
        source: serde::de::Error::custom(format!("unknown state {:?}", raw.state)),
    })?;
    Ok(JobRecord {
        spec,
        version: raw.version,
        state,
        result,
        callback_url: raw.callback_url,
        attempts: raw.attempts,
        created_ms: raw.created_ms,
        started_ms: raw.started_ms,
        finished_ms: raw.finished_ms,
    })
}

fn encode<T: serde::Serialize>(what: &'static str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|source| StoreError::Decode { what, source })
}

fn parse_id(text: &str) -> Result<JobId, StoreError> {
    text.parse().map_err(|e: uuid::Error| StoreError::Decode {
        what: "job id",
        source: serde::de::Error::custom(e.to_string()),
    })
}

impl Store for SqliteStore {
    fn create_tenant(&self, t: &NewTenant) -> Result<(), StoreError> {
        let q = &t.quota;
        let conn = self.conn();
        let mut insert = conn.prepare_cached(
            "INSERT INTO tenants (name, key_hash, webhook_secret, max_concurrent, rate_per_minute,
                 max_cpu_time_ms, max_memory_bytes, network_allowed, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        let res = insert.execute(params![
            t.name,
            t.key_hash,
            t.webhook_secret,
            q.max_concurrent,
            q.rate_per_minute,
            q.max_cpu_time_ms as i64,
            q.max_memory_bytes as i64,
            q.network_allowed,
            t.created_ms
        ]);
        match res {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::TenantExists(t.name.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn tenant_by_key_hash(&self, key_hash: &str) -> Result<Option<Tenant>, StoreError> {
        let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE key_hash = ?1");
        Ok(self
            .conn()
            .prepare_cached(&sql)?
            .query_row([key_hash], tenant_from_row)
            .optional()?)
    }

    fn tenant_by_name(&self, name: &str) -> Result<Option<Tenant>, StoreError> {
        let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE name = ?1");
        Ok(self
            .conn()
            .prepare_cached(&sql)?
            .query_row([name], tenant_from_row)
            .optional()?)
    }

    fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {TENANT_COLUMNS} FROM tenants ORDER BY name"
        ))?;
        let rows = stmt.query_map([], tenant_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn revoke_tenant(&self, name: &str) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .prepare_cached("UPDATE tenants SET revoked = 1 WHERE name = ?1")?
            .execute([name])?;
        Ok(n == 1)
    }

    fn insert_job(&self, job: &NewJob) -> Result<InsertOutcome, StoreError> {
        let spec = encode("job spec", &job.spec)?;
        let conn = self.conn();
        let tx = Immediate::begin(&conn)?;
        if let Some(key) = &job.idempotency_key {
            let sql = format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = ?1 AND idempotency_key = ?2"
            );
            let existing = tx
                .prepare_cached(&sql)?
                .query_row(params![job.spec.tenant, key], raw_job)
                .optional()?;
            if let Some(raw) = existing {
                return Ok(InsertOutcome::Existing(Box::new(decode(raw)?)));
            }
        }
        tx.prepare_cached(
            "INSERT INTO jobs (id, tenant, state, spec, version, callback_url, idempotency_key,
                 created_ms)
             VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            job.spec.id.to_string(),
            job.spec.tenant,
            spec,
            job.version,
            job.callback_url,
            job.idempotency_key,
            job.created_ms
        ])?;
        tx.commit()?;
        Ok(InsertOutcome::Inserted)
    }

    fn get_job(&self, tenant: &str, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1 AND tenant = ?2");
        let raw = self
            .conn()
            .prepare_cached(&sql)?
            .query_row(params![id.to_string(), tenant], raw_job)
            .optional()?;
        raw.map(decode).transpose()
    }

    fn list_jobs(
        &self,
        tenant: &str,
        before: Option<JobId>,
        limit: u32,
    ) -> Result<Vec<JobRecord>, StoreError> {
        // Ids are UUIDv7 in lowercase hex: their text order is their creation order.
        let before = before.map_or_else(|| "~".to_string(), |id| id.to_string());
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3"
        ))?;
        let raws = stmt
            .query_map(params![tenant, before, limit], raw_job)?
            .collect::<Result<Vec<_>, _>>()?;
        raws.into_iter().map(decode).collect()
    }

    fn requeue_all_running(&self) -> Result<u64, StoreError> {
        let n = self
            .conn()
            .prepare_cached("UPDATE jobs SET state = 'queued' WHERE state = 'running'")?
            .execute([])?;
        Ok(n as u64)
    }

    fn queued_jobs(&self) -> Result<Vec<(JobId, String)>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT id, tenant FROM jobs WHERE state = 'queued' ORDER BY id")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(id, tenant)| Ok((parse_id(&id)?, tenant)))
            .collect()
    }

    fn start_job(&self, id: JobId, now_ms: i64) -> Result<Option<StartedJob>, StoreError> {
        let row = self
            .conn()
            .prepare_cached(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, started_ms = ?2
                 WHERE id = ?1 AND state = 'queued' RETURNING spec, attempts",
            )?
            .query_row(params![id.to_string(), now_ms], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?))
            })
            .optional()?;
        let Some((spec, attempt)) = row else {
            return Ok(None);
        };
        let spec = serde_json::from_str(&spec).map_err(|source| StoreError::Decode {
            what: "job spec",
            source,
        })?;
        Ok(Some(StartedJob { spec, attempt }))
    }

    fn requeue_job(&self, id: JobId, attempt: u32) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .prepare_cached(
                "UPDATE jobs SET state = 'queued' WHERE id = ?1 AND state = 'running' \
                 AND attempts = ?2",
            )?
            .execute(params![id.to_string(), attempt])?;
        Ok(n == 1)
    }

    fn finish_job(
        &self,
        id: JobId,
        attempt: u32,
        result: &JobResult,
        cancelled: bool,
        now_ms: i64,
    ) -> Result<FinishOutcome, StoreError> {
        let result = encode("job result", result)?;
        let state = if cancelled { "cancelled" } else { "done" };
        let conn = self.conn();
        let tx = Immediate::begin(&conn)?;
        let row = tx
            .prepare_cached(
                "UPDATE jobs SET state = ?3, result = ?4, finished_ms = ?5
                 WHERE id = ?1 AND state = 'running' AND attempts = ?2
                 RETURNING tenant, callback_url",
            )?
            .query_row(
                params![id.to_string(), attempt, state, result, now_ms],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?)),
            )
            .optional()?;
        let Some((tenant, callback)) = row else {
            return Ok(FinishOutcome::Stale);
        };
        let webhook_queued = callback.is_some();
        if let Some(url) = callback {
            tx.prepare_cached(
                "INSERT INTO webhooks (job, tenant, url, next_ms) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![id.to_string(), tenant, url, now_ms])?;
        }
        tx.commit()?;
        Ok(FinishOutcome::Recorded { webhook_queued })
    }

    fn cancel_job(
        &self,
        tenant: &str,
        id: JobId,
        now_ms: i64,
    ) -> Result<CancelOutcome, StoreError> {
        let conn = self.conn();
        let tx = Immediate::begin(&conn)?;
        let state: Option<String> = tx
            .prepare_cached("SELECT state FROM jobs WHERE id = ?1 AND tenant = ?2")?
            .query_row(params![id.to_string(), tenant], |r| r.get(0))
            .optional()?;
        let outcome = match state.as_deref().and_then(JobState::parse) {
            None => CancelOutcome::NotFound,
            Some(JobState::Running) => CancelOutcome::Running,
            Some(JobState::Done | JobState::Cancelled) => CancelOutcome::Finished,
            Some(JobState::Queued) => {
                tx.prepare_cached(
                    "UPDATE jobs SET state = 'cancelled', finished_ms = ?2 WHERE id = ?1",
                )?
                .execute(params![id.to_string(), now_ms])?;
                CancelOutcome::Cancelled
            }
        };
        tx.commit()?;
        Ok(outcome)
    }

    fn count_by_state(&self) -> Result<Vec<(JobState, u64)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows
            .into_iter()
            .filter_map(|(s, n)| Some((JobState::parse(&s)?, n as u64)))
            .collect())
    }

    fn due_webhooks(&self, now_ms: i64, limit: u32) -> Result<Vec<Webhook>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT job, tenant, url, attempts FROM webhooks
             WHERE state = 'pending' AND next_ms <= ?1 ORDER BY next_ms LIMIT ?2",
        )?;
        let rows = stmt
            .query_map(params![now_ms, limit], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, u32>(3)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(job, tenant, url, attempts)| {
                Ok(Webhook {
                    job: parse_id(&job)?,
                    tenant,
                    url,
                    attempts,
                })
            })
            .collect()
    }

    fn next_webhook_due(&self) -> Result<Option<i64>, StoreError> {
        Ok(self
            .conn()
            .prepare_cached("SELECT MIN(next_ms) FROM webhooks WHERE state = 'pending'")?
            .query_row([], |r| r.get(0))?)
    }

    fn webhook_finished(&self, job: JobId, gave_up: bool) -> Result<(), StoreError> {
        let state = if gave_up { "gave_up" } else { "delivered" };
        self.conn()
            .prepare_cached("UPDATE webhooks SET state = ?2 WHERE job = ?1")?
            .execute(params![job.to_string(), state])?;
        Ok(())
    }

    fn never_wait(&self) {
        let conn = self.conn();
        // Checkpoints sync the disk: only `checkpoint` runs them from now on.
        let set = conn.busy_timeout(Duration::ZERO).and_then(|()| {
            conn.query_row("PRAGMA wal_autocheckpoint = 0", [], |r| r.get::<_, i64>(0))
        });
        if let Err(e) = set {
            tracing::error!(error = %e, "store: switching to never wait failed");
        }
    }

    fn checkpoint(&self) -> Result<(), StoreError> {
        self.checkpoint_wal()
    }

    fn webhook_retry(&self, job: JobId, attempts: u32, next_ms: i64) -> Result<(), StoreError> {
        self.conn()
            .prepare_cached("UPDATE webhooks SET attempts = ?2, next_ms = ?3 WHERE job = ?1")?
            .execute(params![job.to_string(), attempts, next_ms])?;
        Ok(())
    }
}
