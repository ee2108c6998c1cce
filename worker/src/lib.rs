//! The node agent: owns a fixed number of sandbox slots, turns a job plus its language definition
//! into sandbox runs (compile once, then run or judge each test), and speaks the worker side of
//! the protocol (`corral_protocol::WorkerMessage` / `CoordinatorMessage`) over a transport.
//!
//! Depends on `corral-protocol` (wire types), `corral-images` (language definitions) and
//! `corral-sandbox` (the security boundary); never on the gateway or the balancer.
//!
//! # Use
//!
//! ```no_run
//! # async fn example(sandbox: corral_sandbox::Sandbox) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use corral_worker::{serve_node, SandboxExecutor, Worker, WorkerConfig};
//! let registry = prometheus::Registry::new();
//! let executor = Arc::new(SandboxExecutor::new(sandbox));
//! let languages = corral_images::language::LanguageSet::builtin();
//! let worker = Worker::new(WorkerConfig::new("node-1"), executor, languages, &registry)?;
//! let (to_coordinator, _from_worker) = tokio::sync::mpsc::channel(1024);
//! let (_to_worker, from_coordinator) = tokio::sync::mpsc::channel(1024);
//! serve_node(worker, to_coordinator, from_coordinator).await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`node`]: [`Worker`] and [`serve_node`], the node loop: hello, assignments, cancels, status.
//! - `runner`: one job on a blocking thread: compile once, run tests in parallel on free slots.
//! - [`judge`]: output comparison (`exact`, `trailing_whitespace`, `tokens`, `float`) and verdicts.
//! - [`executor`]: the [`Executor`] boundary and [`SandboxExecutor`], the real one.
//! - [`layers`]: the node's image store, images.lock pins, and fetching missing layers from the
//!   gateway by digest (verified while streaming, once per layer) before a job needs them.
//! - [`process`]: [`ProcessExecutor`], plain local processes for tests of the service logic.
//! - [`selftest`]: the languages' start-up version probes.
//! - [`convert`]: wire limits to sandbox limits, sandbox outcomes to wire results.
//! - [`metrics`]: Prometheus metrics on a registry passed in.
//! - `slots`: busy/free slot accounting. `load`: CPU and memory figures for the node's status.
#![forbid(unsafe_code)]

pub mod convert;
pub mod executor;
pub mod judge;
pub mod layers;
mod load;
pub mod metrics;
pub mod node;
pub mod process;
mod runner;
pub mod selftest;
mod slots;

pub use corral_sandbox::spec::CancelToken;
pub use executor::{ExecError, ExecRequest, Executor, SandboxExecutor};
pub use layers::{LayerError, NodeLayers, Remote};
pub use node::{serve_node, Worker, WorkerConfig, WorkerError};
pub use process::ProcessExecutor;
