//! The boundary between the job logic and whatever runs commands: the [`Executor`] trait, its
//! request type, and the real implementation over [`corral_sandbox::Sandbox`].
//!
//! An executor runs one command with files, stdin and limits, streams output through a callback,
//! honours a cancel token and returns a sandbox [`Outcome`]. A job's timeout, OOM kill or non-zero
//! exit is an outcome; `Err` means Corral itself failed.
//!
//! [`SandboxExecutor`] knows the sandbox's `host` image and, given the node's image store, every
//! image built or imported there: a name is resolved (its EROFS layers mounted, once per node)
//! when the worker asks [`Executor::has_image`] at start-up, and checked again before each
//! command, so a job whose image was removed since fails with [`ExecError::ImageGone`] instead of
//! running anywhere else. Its store sits behind [`NodeLayers`]: names pinned in images.lock run
//! on their pinned digest, and an assignment's exact image ([`Executor::prepare_image`]) has its
//! missing layers fetched from the gateway first (see [`crate::layers`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use corral_images::digest::Digest;
use corral_images::lock::Lock;
use corral_images::store::Store;
use corral_protocol::ImageRef;
use corral_sandbox::spec::CancelToken;
use corral_sandbox::{FileIn, Image, Limits, Outcome, Sandbox, Spec, Stdin, StreamKind};

use crate::layers::{LayerError, NodeLayers};

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
    /// The image was chosen at start-up but is no longer in the node's image store.
    #[error(
        "image {name:?} was chosen for this language when the node started but is gone from its \
         image store ({why}); the job does not fall back to another image: rebuild or re-import \
         it, or restart the node to choose again"
    )]
    ImageGone {
        /// The image name.
        name: String,
        /// What the store said.
        why: String,
    },
    /// An image's layers could not be made available (a pinned or assigned layer missing and
    /// not fetchable, a refused fetch).
    #[error(transparent)]
    Layers(Box<LayerError>),
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

impl From<LayerError> for ExecError {
    fn from(e: LayerError) -> Self {
        ExecError::Layers(Box::new(e))
    }
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

    /// Whether commands can run on image `name` (asked once per image at start-up, to choose
    /// each language's image; it may mount the image's layers).
    fn has_image(&self, name: &str) -> bool {
        self.images().iter().any(|image| image == name)
    }

    /// Make the exact image of an assignment runnable (fetching layers this node lacks) and
    /// return the image name to run its commands on. Executors without an image store run
    /// everything on their one image and return the name unchanged.
    fn prepare_image(&self, image: &ImageRef) -> Result<String, ExecError> {
        Ok(image.name.clone())
    }
}

/// The real executor: every command in a fresh container of [`corral_sandbox::Sandbox`].
pub struct SandboxExecutor {
    /// The sandbox's slot pool; `run` blocks a thread per busy slot.
    sandbox: Arc<Sandbox>,
    /// The sandbox's built-in images (`host`), by name.
    builtin: HashMap<String, Image>,
    /// The node's image store with its pins and remote, if it has one.
    layers: Option<Arc<NodeLayers>>,
    /// Store images resolved so far, by name, with the digest the name pointed at.
    resolved: Mutex<HashMap<String, (Digest, Image)>>,
}

impl SandboxExecutor {
    /// Run on `sandbox`, with its `host` image only.
    pub fn new(sandbox: Sandbox) -> SandboxExecutor {
        let host = sandbox.host_image();
        SandboxExecutor {
            sandbox: Arc::new(sandbox),
            builtin: HashMap::from([(host.name.clone(), host)]),
            layers: None,
            resolved: Mutex::default(),
        }
    }

    /// Run on `sandbox`, with its `host` image and every image of `store` (the data directory's
    /// image store, shared with `corral image`).
    pub fn with_store(sandbox: Sandbox, store: Store) -> SandboxExecutor {
        SandboxExecutor::with_layers(sandbox, Arc::new(NodeLayers::new(store, Lock::default())))
    }

    /// Run on `sandbox`, with its `host` image and the images of `layers` (a store, its pins,
    /// and the gateway to fetch missing layers from).
    pub fn with_layers(sandbox: Sandbox, layers: Arc<NodeLayers>) -> SandboxExecutor {
        SandboxExecutor {
            layers: Some(layers),
            ..SandboxExecutor::new(sandbox)
        }
    }

    /// The sandbox image for `name`: built in, or from the store. A store name is looked up again
    /// on every call (one small file read); its layers are resolved (and mounted) only the first
    /// time, or again when the name now points at another digest (the image was rebuilt).
    fn image(&self, name: &str) -> Result<Image, ExecError> {
        if let Some(image) = self.builtin.get(name) {
            return Ok(image.clone());
        }
        let Some(layers) = &self.layers else {
            return Err(ExecError::UnknownImage(name.to_string()));
        };
        let gone = |why: String| ExecError::ImageGone {
            name: name.to_string(),
            why,
        };
        let digest = match layers.current(name) {
            Ok(digest) => digest,
            Err(LayerError::NotFound(_)) => return Err(gone("no image of that name".into())),
            Err(LayerError::Store(e)) => return Err(gone(e.to_string())),
            Err(e) => return Err(e.into()),
        };
        let mut resolved = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((known, image)) = resolved.get(name) {
            if *known == digest {
                return Ok(image.clone());
            }
        }
        let r = layers
            .store()
            .resolve(&digest.to_string())
            .map_err(|e| gone(e.to_string()))?;
        let image = Image {
            name: name.to_string(),
            layers: r.layers,
            host_binds: Vec::new(),
            env: r.env,
        };
        tracing::info!(image = name, digest = %r.digest, "image resolved");
        resolved.insert(name.to_string(), (r.digest, image.clone()));
        Ok(image)
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
        let image = self.image(&request.image)?;
        let spec = Spec {
            image,
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
        let resolved = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<String> = self
            .builtin
            .keys()
            .chain(resolved.keys())
            .cloned()
            .collect();
        names.sort();
        names
    }

    fn prepare_image(&self, image: &ImageRef) -> Result<String, ExecError> {
        let Some(layers) = &self.layers else {
            return Err(ExecError::UnknownImage(image.name.clone()));
        };
        Ok(layers.ensure_image(image)?.to_string())
    }

    /// A name pinned in images.lock counts as present even when its layers are not: a pin means
    /// exactly that digest, so the language is not moved to its next image (the host's); its
    /// self-test then fails with the pin named, and the language is not offered.
    fn has_image(&self, name: &str) -> bool {
        match self.image(name) {
            Ok(_) => true,
            Err(e) if self.layers.as_ref().is_some_and(|l| l.is_pinned(name)) => {
                tracing::warn!(image = name, reason = %e, "pinned image unusable; its languages stay on it");
                true
            }
            Err(e) => {
                if self.layers.is_some() && !self.builtin.contains_key(name) {
                    tracing::info!(image = name, reason = %e, "image not usable on this node");
                }
                false
            }
        }
    }
}
