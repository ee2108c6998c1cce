//! A job as the worker receives it: already authenticated, validated and clamped by the gateway.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Bytes;

/// A job's id (UUID v7: sortable by creation time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub Uuid);

impl JobId {
    /// A new, time-ordered id.
    pub fn new() -> Self {
        JobId(Uuid::now_v7())
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for JobId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(JobId)
    }
}

/// Limits of one sandboxed run (a compile step or one test). The gateway fills every field (from
/// the request, else the language's defaults) and refuses values above the tenant's maxima.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// CPU time of all processes and threads together, in milliseconds.
    pub cpu_time_ms: u64,
    /// Wall-clock time, in milliseconds.
    pub wall_time_ms: u64,
    /// Memory (RAM + swap) of the whole run, in bytes.
    pub memory_bytes: u64,
    /// Processes and threads at once.
    pub processes: u32,
    /// Bytes kept per output stream; past it the run ends with `output_limit`.
    pub output_bytes: u64,
    /// Largest file the run may write, in bytes.
    pub file_size_bytes: u64,
}

/// A file placed in the job's working directory. The first file of a job is its main file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceFile {
    /// A plain file name: no `/`, no `..`, not empty (checked by the gateway and again by the
    /// sandbox).
    pub name: String,
    /// Contents.
    pub content: Bytes,
}

/// One judge test case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    /// Standard input of the run.
    pub stdin: Bytes,
    /// Expected standard output; `None`: the run is accepted when it exits 0 within its limits.
    pub expected_output: Option<Bytes>,
}

/// How a run's stdout is compared with the expected output.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum Compare {
    /// Byte for byte.
    Exact,
    /// Equal after removing trailing whitespace from every line and trailing empty lines.
    #[default]
    TrailingWhitespace,
    /// Equal as sequences of whitespace-separated tokens.
    Tokens,
    /// Tokens equal, numeric tokens within `tolerance` (absolute or relative).
    Float {
        /// Largest accepted absolute or relative difference.
        tolerance: f64,
    },
}

/// Everything a worker needs to run a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The job's id.
    pub id: JobId,
    /// The tenant that submitted it (its name; for logs, metrics and fair sharing).
    pub tenant: String,
    /// Language id (already resolved from aliases by the gateway).
    pub language: String,
    /// Source files; the first is the main file. Non-empty.
    pub files: Vec<SourceFile>,
    /// Extra arguments for the run command.
    pub args: Vec<String>,
    /// Standard input when there are no tests.
    pub stdin: Bytes,
    /// Limits of each run.
    pub limits: Limits,
    /// Limits of the compile step (ignored by interpreted languages).
    pub compile_limits: Limits,
    /// Test cases; empty: one run with `stdin`.
    pub tests: Vec<TestCase>,
    /// How outputs are compared with expected outputs.
    pub compare: Compare,
    /// Stop after the first test that is not accepted (the rest are not run).
    pub stop_on_first_failure: bool,
    /// Give the runs network access (the gateway only allows it for tenants that may).
    pub network: bool,
}
