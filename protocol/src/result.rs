//! What running a job produced.

use serde::{Deserialize, Serialize};

use crate::Bytes;

/// How one sandboxed run ended (the sandbox's outcome, computed from supervisor-owned data only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Exited 0 within every limit.
    Ok,
    /// Non-zero exit or a fatal signal.
    RuntimeError,
    /// CPU or wall time limit reached.
    TimeLimit,
    /// Memory limit reached (the cgroup's OOM killer fired).
    MemoryLimit,
    /// An output stream went past its cap.
    OutputLimit,
    /// Corral failed to run it.
    InternalError,
}

/// A judge's verdict on a run or a whole job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Ran within limits, exited 0 and (when expected output was given) matched it.
    Accepted,
    /// Ran fine but the output did not match.
    WrongAnswer,
    /// CPU or wall time limit.
    TimeLimitExceeded,
    /// Memory limit.
    MemoryLimitExceeded,
    /// Output limit.
    OutputLimitExceeded,
    /// Non-zero exit or fatal signal.
    RuntimeError,
    /// The compile step did not succeed.
    CompilationError,
    /// Corral failed.
    InternalError,
}

impl Verdict {
    /// The stable snake_case name (as in JSON and metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Accepted => "accepted",
            Verdict::WrongAnswer => "wrong_answer",
            Verdict::TimeLimitExceeded => "time_limit_exceeded",
            Verdict::MemoryLimitExceeded => "memory_limit_exceeded",
            Verdict::OutputLimitExceeded => "output_limit_exceeded",
            Verdict::RuntimeError => "runtime_error",
            Verdict::CompilationError => "compilation_error",
            Verdict::InternalError => "internal_error",
        }
    }
}

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One sandboxed run: the compile step or one test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunResult {
    /// How the sandbox saw it end.
    pub status: RunStatus,
    /// Set for [`RunStatus::TimeLimit`]: `"cpu"` or `"wall"`.
    pub limit: Option<String>,
    /// The judge's verdict on this run.
    pub verdict: Verdict,
    /// Exit code when it exited normally.
    pub exit_code: Option<i32>,
    /// Signal number when killed by a signal.
    pub signal: Option<i32>,
    /// CPU time of all its processes and threads, in milliseconds.
    pub cpu_time_ms: u64,
    /// Wall time, in milliseconds.
    pub wall_time_ms: u64,
    /// Peak memory, in bytes.
    pub memory_peak_bytes: u64,
    /// Standard output (capped).
    pub stdout: Bytes,
    /// Standard error (capped).
    pub stderr: Bytes,
    /// Stdout went past its cap.
    pub stdout_truncated: bool,
    /// Stderr went past its cap.
    pub stderr_truncated: bool,
    /// For internal errors: what failed (for operators; the gateway may redact it).
    pub error: Option<String>,
}

/// The result of a whole job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    /// The first non-accepted run's verdict (compile step first), else `accepted`.
    pub verdict: Verdict,
    /// The compile step, for compiled languages.
    pub compile: Option<RunResult>,
    /// One run per test case in order (fewer when stopped early or compilation failed), or one run
    /// when the job has no tests.
    pub runs: Vec<RunResult>,
}
