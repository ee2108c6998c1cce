//! The JSON documents the API answers with.
//!
//! Output is sent as a UTF-8 string when it is valid UTF-8 (`"stdout_encoding": "utf8"`), else as
//! standard base64 of the raw bytes (`"stdout_encoding": "base64"`): lossless, and never invalid
//! JSON. Internal error details stay in the store and the logs.

use std::time::{Duration, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use corral_protocol::{Bytes, RunResult, RunStatus, Verdict};
use serde::Serialize;

use crate::store::{JobRecord, JobState};

/// A job, as `GET /v1/jobs/{id}` returns it.
#[derive(Debug, Serialize)]
pub struct JobDocument {
    /// The job's id.
    pub id: String,
    /// `queued`, `running`, `done` or `cancelled`.
    pub state: JobState,
    /// Language id.
    pub language: String,
    /// Language version.
    pub version: String,
    /// The job's verdict, once done.
    pub verdict: Option<Verdict>,
    /// The compile step, for compiled languages.
    pub compile: Option<RunDocument>,
    /// One run per test (fewer when stopped early), or one without tests.
    pub runs: Vec<RunDocument>,
    /// Times the job was started (more than 1 after Corral restarted or lost a node).
    pub attempts: u32,
    /// RFC 3339 times.
    pub created_at: String,
    /// When it last started.
    pub started_at: Option<String>,
    /// When it ended.
    pub finished_at: Option<String>,
}

/// One run of a job.
#[derive(Debug, Serialize)]
pub struct RunDocument {
    /// How the sandbox saw it end.
    pub status: RunStatus,
    /// `cpu` or `wall` for a time limit.
    pub limit: Option<String>,
    /// The verdict on this run.
    pub verdict: Verdict,
    /// Exit code when it exited.
    pub exit_code: Option<i32>,
    /// Signal number when killed.
    pub signal: Option<i32>,
    /// CPU time, ms.
    pub cpu_time_ms: u64,
    /// Wall time, ms.
    pub wall_time_ms: u64,
    /// Peak memory, bytes.
    pub memory_peak_bytes: u64,
    /// Standard output.
    pub stdout: String,
    /// `utf8` or `base64`.
    pub stdout_encoding: &'static str,
    /// Standard error.
    pub stderr: String,
    /// `utf8` or `base64`.
    pub stderr_encoding: &'static str,
    /// Stdout went past the output limit.
    pub stdout_truncated: bool,
    /// Stderr went past the output limit.
    pub stderr_truncated: bool,
}

/// Bytes as text: UTF-8 when valid, else base64; with the encoding's name.
pub fn text(bytes: &Bytes) -> (String, &'static str) {
    match std::str::from_utf8(&bytes.0) {
        Ok(s) => (s.to_string(), "utf8"),
        Err(_) => (STANDARD.encode(&bytes.0), "base64"),
    }
}

/// RFC 3339 time (ms precision) of ms since the epoch.
pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

impl From<&RunResult> for RunDocument {
    fn from(r: &RunResult) -> Self {
        let (stdout, stdout_encoding) = text(&r.stdout);
        let (stderr, stderr_encoding) = text(&r.stderr);
        RunDocument {
            status: r.status,
            limit: r.limit.clone(),
            verdict: r.verdict,
            exit_code: r.exit_code,
            signal: r.signal,
            cpu_time_ms: r.cpu_time_ms,
            wall_time_ms: r.wall_time_ms,
            memory_peak_bytes: r.memory_peak_bytes,
            stdout,
            stdout_encoding,
            stderr,
            stderr_encoding,
            stdout_truncated: r.stdout_truncated,
            stderr_truncated: r.stderr_truncated,
        }
    }
}

impl From<&JobRecord> for JobDocument {
    fn from(j: &JobRecord) -> Self {
        let result = j.result.as_ref();
        JobDocument {
            id: j.spec.id.to_string(),
            state: j.state,
            language: j.spec.language.clone(),
            version: j.version.clone(),
            verdict: result
                .filter(|_| j.state == JobState::Done)
                .map(|r| r.verdict),
            compile: result
                .and_then(|r| r.compile.as_ref())
                .map(RunDocument::from),
            runs: result
                .map(|r| r.runs.iter().map(RunDocument::from).collect())
                .unwrap_or_default(),
            attempts: j.attempts,
            created_at: rfc3339(j.created_ms),
            started_at: j.started_ms.map(rfc3339),
            finished_at: j.finished_ms.map(rfc3339),
        }
    }
}

/// A job in a list: without its runs.
#[derive(Debug, Serialize)]
pub struct JobSummary {
    /// The job's id.
    pub id: String,
    /// Its state.
    pub state: JobState,
    /// Language id.
    pub language: String,
    /// Verdict once done.
    pub verdict: Option<Verdict>,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 end time.
    pub finished_at: Option<String>,
}

impl From<&JobRecord> for JobSummary {
    fn from(j: &JobRecord) -> Self {
        JobSummary {
            id: j.spec.id.to_string(),
            state: j.state,
            language: j.spec.language.clone(),
            verdict: j
                .result
                .as_ref()
                .filter(|_| j.state == JobState::Done)
                .map(|r| r.verdict),
            created_at: rfc3339(j.created_ms),
            finished_at: j.finished_ms.map(rfc3339),
        }
    }
}
