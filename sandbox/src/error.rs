//! The crate's error type. A job's timeout, OOM kill or non-zero exit is an [`crate::Outcome`], not
//! an error: `Err` means Corral itself could not run the job.

use std::path::PathBuf;

/// Corral failed to run a job, or to set up the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The sandbox needs root (namespaces, mounts, cgroups).
    #[error("the sandbox needs root (it creates namespaces, mounts and cgroups); run as root")]
    NotRoot,
    /// The spec is not runnable as given.
    #[error("invalid job: {0}")]
    InvalidSpec(String),
    /// A directory of the sandbox's state could not be prepared.
    #[error("preparing {path}: {source}")]
    StateDir {
        /// The path.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A cgroup operation failed.
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    /// The spawner helper could not be started.
    #[error("starting the spawner {path}: {source}")]
    StartSpawner {
        /// The helper executable.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Talking to the spawner failed (it is restarted for the next job).
    #[error("spawner of slot {slot}: {message}")]
    Spawner {
        /// Slot index.
        slot: usize,
        /// What failed.
        message: String,
    },
    /// A pipe or poll operation of the supervisor failed.
    #[error("{op}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// What failed.
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn nix(op: &'static str) -> impl FnOnce(nix::Error) -> Error {
        move |e| Error::Io {
            op,
            source: e.into(),
        }
    }
}
