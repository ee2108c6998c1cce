//! Wire types shared by the gateway, the balancer and the worker: what a job is, what running it
//! produced, and the messages a worker node and its coordinator exchange. Everything here is plain
//! serde data, designed to cross the network as JSON (`corral worker --join URL`); inside
//! `corral serve` the very same messages travel over in-process channels.
//!
//! No runtime dependencies (no tokio, no sandbox): wire changes never touch security code, and the
//! sandbox never sees these types (the worker maps them onto a sandbox spec).
//!
//! # Layout
//!
//! - [`job`]: a job as the worker receives it ([`JobSpec`]), its limits, tests and comparison mode.
//! - [`result`]: what a run produced ([`RunResult`]), statuses, verdicts, the job's result.
//! - [`node`]: node identity, utilization, and the messages between a worker and its coordinator.
//! - [`bytes`]: [`Bytes`], binary data carried as base64 in JSON.
#![forbid(unsafe_code)]

pub mod bytes;
pub mod job;
pub mod node;
pub mod result;

pub use bytes::Bytes;
pub use job::{Compare, JobId, JobSpec, Limits, SourceFile, TestCase};
pub use node::{
    CoordinatorMessage, ImageRef, JobEvent, LanguageInfo, NodeId, NodeStatus, WorkerMessage,
};
pub use result::{JobResult, RunResult, RunStatus, Stream, Verdict};
