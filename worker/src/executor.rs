//! The boundary between the job logic and whatever runs commands: the [`Executor`] trait, its
//! request type, and the real implementation over [`corral_sandbox::Sandbox`].
//!
//! An executor runs one command with files, stdin and limits, streams output through a callback,
//! honours a cancel token and returns a sandbox [`Outcome`]. A job's timeout, OOM kill or non-zero
//! exit is an outcome; `Err` means Corral itself failed.

use std::collections::HashMap;
use std::sync::Arc;

use corral_sandbox::spec::CancelToken;
use corral_sandbox::{FileIn, Image, Limits, Outcome, Sandbox, Spec, Stdin, StreamKind};

/// One command to run.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    /// Image name (`host`).
    pub image: String,
    /// The command, placeholders already substituted.
    pub argv: Vec<String>,
    /// Files placed in the working directory.
    pub files: Vec<FileIn>,
    /// Standard input.
    pub stdin: Vec<u8>,
    /// Limits.
    pub limits: Limits,
    /// Network access.
    pub network: bool,
    /// Files to read back after the run.
    pub collect: Vec<String>,
    /// Size cap of each collected file.
    pub collect_max_bytes: u64,
}

/// Why an executor could not run a command.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The language names an image this node does not have.
    #[error("image {0:?} is not available on this node")]
    UnknownImage(String),
    /// The sandbox failed.
    #[error("sandbox: {0}")]
    Sandbox(#[from] corral_sandbox::Error),
    /// A plain-process run failed to start or be supervised.
    #[error("{op}: {source}")]
    Process {
        /// What failed.
        op: &'static str,
        /// The cause.
        source: std::io::Error,
    },
}

/// Runs commands. Blocking: call it from a blocking thread. Implementations must be usable from
/// several threads at once (one per busy slot).
pub trait Executor: Send + Sync + 'static {
    /// How many commands can run at once.
    fn slots(&self) -> usize;

    /// Run one command. `on_output` gets chunks as they are produced (within the caps).
    fn run(
        &self,
        request: ExecRequest,
        cancel: &CancelToken,
        on_output: &mut dyn FnMut(StreamKind, &[u8]),
    ) -> Result<Outcome, ExecError>;

    /// Digests or names of the images present (for the node's status).
    fn images(&self) -> Vec<String>;
}

/// The real executor: every command in a fresh container of [`corral_sandbox::Sandbox`].
pub struct SandboxExecutor {
    /// The sandbox's slot pool; `run` blocks a thread per busy slot.
    sandbox: Arc<Sandbox>,
    /// Images by name (the built-in `host`, for now).
    images: HashMap<String, Image>,
}

impl SandboxExecutor {
    /// Run on `sandbox`, with its `host` image.
    pub fn new(sandbox: Sandbox) -> SandboxExecutor {
        let host = sandbox.host_image();
        let images = HashMap::from([(host.name.clone(), host)]);
        SandboxExecutor {
            sandbox: Arc::new(sandbox),
            images,
        }
    }
}

impl Executor for SandboxExecutor {
    fn slots(&self) -> usize {
        self.sandbox.slots()
    }

    fn run(
        &self,
        request: ExecRequest,
        cancel: &CancelToken,
        on_output: &mut dyn FnMut(StreamKind, &[u8]),
    ) -> Result<Outcome, ExecError> {
        let image = self
            .images
            .get(&request.image)
            .ok_or_else(|| ExecError::UnknownImage(request.image.clone()))?;
        let spec = Spec {
            image: image.clone(),
            argv: request.argv,
            env: Vec::new(),
            files: request.files,
            stdin: Stdin::Bytes(request.stdin),
            limits: request.limits,
            network: request.network,
            collect: request.collect,
            collect_max_bytes: request.collect_max_bytes,
            cancel: Some(cancel.clone()),
        };
        Ok(self.sandbox.run(spec, on_output)?)
    }

    fn images(&self) -> Vec<String> {
        let mut names: Vec<String> = self.images.keys().cloned().collect();
        names.sort();
        names
    }
}
