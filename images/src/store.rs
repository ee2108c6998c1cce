//! The image store in `<data-dir>/images/`: content-addressed layers, their manifests, and
//! names pointing at them.
//!
//! ```text
//! images/layers/<hex>.erofs   an EROFS layer (or layers/<hex>/, a directory layer)
//! images/manifests/<hex>.json its manifest
//! images/refs/<name>          "sha256:<hex>": the image a name points at
//! images/mnt/<hex>/           where an EROFS layer is mounted read-only, once per node
//! images/tmp/                 builds and imports in progress (removed when they end)
//! images/lock                 flock held while registering, removing or mounting
//! ```
//!
//! Registration is atomic: a layer is written under `tmp/`, fsynced and renamed into `layers/`,
//! then its manifest, then the name; a build that fails before the rename leaves nothing behind.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::digest::{Digest, HashingWriter};
use crate::layer::{self, LayerError, LayerFormat};
use crate::tarball::{self, TarForm};

/// What a layer's manifest records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The name it was registered under.
    pub name: String,
    /// This layer's digest.
    pub digest: Digest,
    /// The layer it stacks on, if any.
    pub parent: Option<Digest>,
    /// How the layer is stored.
    pub format: LayerFormat,
    /// Bytes on disk (EROFS file, or regular files of a directory layer).
    pub size: u64,
    /// Debian packages this layer added or changed, with their versions.
    pub packages: BTreeMap<String, String>,
    /// Build or import time, seconds since the Unix epoch.
    pub created: u64,
    /// Environment for jobs (PATH, LANG, ...): the whole image's, not only this layer's.
    pub env: BTreeMap<String, String>,
    /// Working directory the image suggests (informational: jobs run in the sandbox's own).
    pub workdir: Option<String>,
    /// Hash of the recipe chain it was built from; `None` for imported images.
    pub recipe_hash: Option<String>,
    /// Where it came from: `recipe:<name>`, `import:<file name>` or `fetch`.
    pub source: String,
}

impl Manifest {
    /// The manifest of a layer about to be registered, stacked on `parent`, created now, with
    /// nothing else recorded yet: [`Store::register`] fills in its name, digest, format and size.
    pub fn new_layer(parent: Option<Digest>, source: impl Into<String>) -> Manifest {
        Manifest {
            name: String::new(),
            digest: Digest::of_bytes(b""),
            parent,
            format: LayerFormat::Dir,
            size: 0,
            packages: BTreeMap::new(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            env: BTreeMap::new(),
            workdir: None,
            recipe_hash: None,
            source: source.into(),
        }
    }
}

/// A name resolved to mounted layers, ready for a sandbox image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The name asked for.
    pub name: String,
    /// The top layer's digest.
    pub digest: Digest,
    /// Layer directories, lowest first.
    pub layers: Vec<PathBuf>,
    /// Environment for jobs.
    pub env: Vec<(String, String)>,
    /// Suggested working directory.
    pub workdir: Option<String>,
}

/// Errors of store operations.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A name or digest that the store does not have.
    #[error("image {0:?} not found in the image store (see `corral image ls`)")]
    NotFound(String),
    /// A name with characters the store does not allow.
    #[error(
        "invalid image name {0:?}: use 1-128 of a-z 0-9 . _ - : starting with a letter or digit"
    )]
    BadName(String),
    /// Removing a layer that another image stacks on.
    #[error("cannot remove {name}: image(s) {children} stack on it; remove them first")]
    InUse {
        /// What was asked for.
        name: String,
        /// The images using it.
        children: String,
    },
    /// An image whose merged root would make the sandbox mount onto a symlink or a file.
    #[error("image {name} is unusable: /{path} is not a directory (the sandbox mounts there)")]
    Unsafe {
        /// Image.
        name: String,
        /// Top-level entry.
        path: String,
    },
    /// A manifest that does not parse.
    #[error("corrupt manifest {path}: {source}")]
    Manifest {
        /// Its file.
        path: PathBuf,
        /// Cause.
        source: serde_json::Error,
    },
    /// A layer operation failed.
    #[error(transparent)]
    Layer(#[from] LayerError),
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Check an image name: 1-128 characters of `a-z 0-9 . _ - :`, starting with a letter or digit.
pub fn check_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadName(name.to_string()))
    }
}

/// The image store of one data directory.
#[derive(Debug, Clone)]
pub struct Store {
    /// `<data-dir>/images`, absolute.
    root: PathBuf,
    /// Format for new layers, worked out on first use: finding out whether EROFS is usable runs
    /// `mkfs.erofs`, which a store opened only to read images (`corral sandbox run --image`) never
    /// needs.
    format: std::sync::OnceLock<LayerFormat>,
}

impl Store {
    /// Open (creating if needed) the store under `data_dir`; new layers are EROFS when this node
    /// supports it, else directories.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        Store::open_in(data_dir, std::sync::OnceLock::new())
    }

    /// Open the store, writing new layers in `format`.
    pub fn open_with_format(data_dir: &Path, format: LayerFormat) -> Result<Store, StoreError> {
        Store::open_in(data_dir, std::sync::OnceLock::from(format))
    }

    fn open_in(
        data_dir: &Path,
        format: std::sync::OnceLock<LayerFormat>,
    ) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(io_err("creating data directory", data_dir))?;
        let data_dir = std::fs::canonicalize(data_dir).map_err(io_err("resolving", data_dir))?;
        let root = data_dir.join("images");
        for sub in ["layers", "manifests", "refs", "mnt", "tmp"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        }
        Ok(Store { root, format })
    }

    /// `<data-dir>/images`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The format new layers are written in.
    pub fn format(&self) -> LayerFormat {
        *self.format.get_or_init(|| {
            if layer::erofs_available() {
                LayerFormat::Erofs
            } else {
                LayerFormat::Dir
            }
        })
    }

    /// A fresh directory under `images/tmp/` for a build or import; removed when dropped.
    pub fn staging(&self) -> Result<tempfile::TempDir, StoreError> {
        let tmp = self.root.join("tmp");
        tempfile::Builder::new()
            .prefix("stage-")
            .tempdir_in(&tmp)
            .map_err(io_err("creating staging dir in", &tmp))
    }

    fn lock(&self) -> Result<Flock<File>, StoreError> {
        let path = self.root.join("lock");
        let file = File::create(&path).map_err(io_err("opening", &path))?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| StoreError::Io {
            op: "locking",
            path,
            source: e.into(),
        })
    }

    fn manifest_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("manifests")
            .join(format!("{}.json", digest.hex()))
    }

    /// Where a layer lives: the EROFS file or the directory.
    pub fn layer_path(&self, digest: &Digest, format: LayerFormat) -> PathBuf {
        match format {
            LayerFormat::Erofs => self
                .root
                .join("layers")
                .join(format!("{}.erofs", digest.hex())),
            LayerFormat::Dir => self.root.join("layers").join(digest.hex()),
        }
    }

    /// The manifest of a layer, if the store has it.
    pub fn manifest(&self, digest: &Digest) -> Result<Option<Manifest>, StoreError> {
        let path = self.manifest_path(digest);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StoreError::Manifest { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("reading", &path)(e)),
        }
    }

    /// The digest a name points at, if any.
    pub fn lookup(&self, name: &str) -> Result<Option<Digest>, StoreError> {
        check_name(name)?;
        let path = self.root.join("refs").join(name);
        match std::fs::read_to_string(&path) {
            Ok(s) => Digest::parse(s.trim())
                .map(Some)
                .map_err(|e| StoreError::Io {
                    op: "parsing",
                    path,
                    source: io::Error::other(e),
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("reading", &path)(e)),
        }
    }

    /// The manifest of `NAME`, `sha256:<hex>` or `<hex>`.
    pub fn find(&self, name_or_digest: &str) -> Result<Manifest, StoreError> {
        let digest = match Digest::parse(name_or_digest) {
            Ok(d) => d,
            Err(_) => self
                .lookup(name_or_digest)?
                .ok_or_else(|| StoreError::NotFound(name_or_digest.to_string()))?,
        };
        self.manifest(&digest)?
            .ok_or_else(|| StoreError::NotFound(name_or_digest.to_string()))
    }

    /// Every name with its manifest, sorted by name.
    pub fn list(&self) -> Result<Vec<(String, Manifest)>, StoreError> {
        let refs = self.root.join("refs");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&refs).map_err(io_err("listing", &refs))? {
            let entry = entry.map_err(io_err("listing", &refs))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if check_name(&name).is_err() {
                continue; // a temporary file of an atomic write
            }
            if let Some(digest) = self.lookup(&name)? {
                if let Some(m) = self.manifest(&digest)? {
                    out.push((name, m));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn all_manifests(&self) -> Result<Vec<Manifest>, StoreError> {
        let dir = self.root.join("manifests");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
            let name = entry.map_err(io_err("listing", &dir))?.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if let Ok(d) = Digest::parse(hex) {
                out.extend(self.manifest(&d)?);
            }
        }
        Ok(out)
    }

    /// The layer chain of an image, lowest first.
    pub fn chain(&self, top: &Manifest) -> Result<Vec<Manifest>, StoreError> {
        let mut chain = vec![top.clone()];
        while let Some(parent) = chain.last().and_then(|m| m.parent.clone()) {
            if chain.len() > 64 {
                return Err(StoreError::NotFound(format!(
                    "{parent} (parent chain too long)"
                )));
            }
            let m = self
                .manifest(&parent)?
                .ok_or_else(|| StoreError::NotFound(parent.to_string()))?;
            chain.push(m);
        }
        chain.reverse();
        Ok(chain)
    }

    /// The digests of `top`'s layer chain, lowest first; empty when the store lacks `top` or one
    /// of its parents.
    pub fn chain_digests(&self, top: &Digest) -> Result<Vec<Digest>, StoreError> {
        let Some(m) = self.manifest(top)? else {
            return Ok(Vec::new());
        };
        match self.chain(&m) {
            Ok(chain) => Ok(chain.into_iter().map(|m| m.digest).collect()),
            Err(StoreError::NotFound(_)) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Resolve a name (or digest) to its stacked layer directories, mounting EROFS layers that
    /// are not mounted yet (a mount survives restarts of Corral and is shared by all jobs).
    pub fn resolve(&self, name: &str) -> Result<Resolved, StoreError> {
        let top = self.find(name)?;
        let chain = self.chain(&top)?;
        let mut layers = Vec::with_capacity(chain.len());
        for m in &chain {
            layers.push(self.mounted_layer(m)?);
        }
        check_mount_points(name, &layers)?;
        Ok(Resolved {
            name: name.to_string(),
            digest: top.digest.clone(),
            layers,
            env: top.env.clone().into_iter().collect(),
            workdir: top.workdir.clone(),
        })
    }

    fn mounted_layer(&self, m: &Manifest) -> Result<PathBuf, StoreError> {
        let path = self.layer_path(&m.digest, m.format);
        if m.format == LayerFormat::Dir {
            return Ok(path);
        }
        let target = self.root.join("mnt").join(m.digest.hex());
        if layer::is_mount_point(&target) {
            return Ok(target);
        }
        let _lock = self.lock()?;
        if !layer::is_mount_point(&target) {
            layer::mount_erofs(&path, &target)?;
            tracing::info!(digest = %m.digest, "mounted layer");
        }
        Ok(target)
    }

    /// Register the tree under `dir` as a new layer named `name` on top of `meta.parent`, and
    /// return its manifest. `meta.digest`, `format` and `size` are filled in here. Registering a
    /// tree identical to a stored layer re-uses it.
    pub fn register(
        &self,
        name: &str,
        dir: &Path,
        mut meta: Manifest,
    ) -> Result<Manifest, StoreError> {
        check_name(name)?;
        let staging = self.staging()?;
        let (digest, size, staged) = match self.format() {
            LayerFormat::Erofs => {
                let file = staging.path().join("layer.erofs");
                layer::make_erofs(dir, &file)?;
                fsync(&file)?;
                let digest = Digest::of_file(&file).map_err(io_err("hashing", &file))?;
                let size = std::fs::metadata(&file)
                    .map_err(io_err("reading", &file))?
                    .len();
                (digest, size, file)
            }
            LayerFormat::Dir => {
                let digest = dir_digest(dir)?;
                let size = layer::tree_size(dir).map_err(io_err("measuring", dir))?;
                (digest, size, dir.to_path_buf())
            }
        };
        meta.name = name.to_string();
        meta.digest = digest.clone();
        meta.format = self.format();
        meta.size = size;
        let _lock = self.lock()?;
        let dest = self.layer_path(&digest, self.format());
        if !dest.exists() {
            std::fs::rename(&staged, &dest).map_err(io_err("moving layer into", &dest))?;
            sync_dir(&self.root.join("layers"))?;
        }
        match self.manifest(&digest)? {
            Some(existing) => meta = existing, // the same layer registered before: keep its record
            None => write_atomic(
                &self.manifest_path(&digest),
                &serde_json::to_vec_pretty(&meta)
                    .map_err(io::Error::other)
                    .map_err(io_err("encoding manifest", dir))?,
            )?,
        }
        self.set_ref(name, &digest)?;
        tracing::info!(name, digest = %digest, size, "registered image");
        Ok(meta)
    }

    /// Point `name` at `digest` (which must be in the store).
    pub fn set_ref(&self, name: &str, digest: &Digest) -> Result<(), StoreError> {
        check_name(name)?;
        write_atomic(
            &self.root.join("refs").join(name),
            format!("{digest}\n").as_bytes(),
        )
    }

    /// Remove a name, or every name of a digest; the layer goes too once no name points at it.
    /// Refused while another image's layer stacks on it.
    pub fn remove(&self, name_or_digest: &str) -> Result<Vec<String>, StoreError> {
        let target = self.find(name_or_digest)?;
        let _lock = self.lock()?;
        let by_digest = Digest::parse(name_or_digest).is_ok();
        let names: Vec<String> = self
            .list()?
            .into_iter()
            .filter(|(_, m)| m.digest == target.digest)
            .map(|(n, _)| n)
            .collect();
        let dropping: Vec<String> = if by_digest {
            names.clone()
        } else {
            vec![name_or_digest.to_string()]
        };
        let layer_goes = dropping.len() == names.len();
        if layer_goes {
            let children: Vec<String> = self
                .all_manifests()?
                .into_iter()
                .filter(|m| m.parent.as_ref() == Some(&target.digest))
                .map(|m| m.name)
                .collect();
            if !children.is_empty() {
                return Err(StoreError::InUse {
                    name: name_or_digest.to_string(),
                    children: children.join(", "),
                });
            }
        }
        for name in &dropping {
            let path = self.root.join("refs").join(name);
            std::fs::remove_file(&path).map_err(io_err("removing", &path))?;
        }
        if layer_goes {
            self.delete_layer(&target)?;
        }
        Ok(dropping)
    }

    fn delete_layer(&self, m: &Manifest) -> Result<(), StoreError> {
        let mnt = self.root.join("mnt").join(m.digest.hex());
        layer::unmount(&mnt);
        let _ = std::fs::remove_dir(&mnt);
        let path = self.layer_path(&m.digest, m.format);
        match m.format {
            LayerFormat::Erofs => std::fs::remove_file(&path),
            LayerFormat::Dir => std::fs::remove_dir_all(&path),
        }
        .map_err(io_err("removing", &path))?;
        let manifest = self.manifest_path(&m.digest);
        std::fs::remove_file(&manifest).map_err(io_err("removing", &manifest))
    }
}

/// Top-level directories the sandbox mounts onto inside every job's root.
const MOUNT_POINTS: &[&str] = &["dev", "proc", "tmp", "box"];

/// Refuse an image whose merged view has a symlink or a file where the sandbox mounts: the top
/// layer that has the name decides (a whiteout hides it, so the sandbox creates a directory).
fn check_mount_points(name: &str, layers: &[PathBuf]) -> Result<(), StoreError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    for point in MOUNT_POINTS {
        for layer in layers.iter().rev() {
            let Ok(meta) = std::fs::symlink_metadata(layer.join(point)) else {
                continue;
            };
            let whiteout = meta.file_type().is_char_device() && meta.rdev() == 0;
            if !meta.is_dir() && !whiteout {
                return Err(StoreError::Unsafe {
                    name: name.to_string(),
                    path: point.to_string(),
                });
            }
            break;
        }
    }
    Ok(())
}

/// The digest of a directory layer: sha256 of its deterministic raw tar.
pub fn dir_digest(dir: &Path) -> Result<Digest, StoreError> {
    let writer = tarball::write_tree(dir, TarForm::Raw, HashingWriter::new(io::sink()))
        .map_err(io_err("hashing", dir))?;
    Ok(writer.finish().0)
}

fn fsync(path: &Path) -> Result<(), StoreError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_err("syncing", path))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    fsync(dir)
}

/// Write a small file by writing a temporary file beside it, syncing and renaming.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io_err("creating temporary file in", dir))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(io_err("writing", path))?;
    tmp.persist(path).map_err(|e| StoreError::Io {
        op: "renaming into",
        path: path.to_path_buf(),
        source: e.error,
    })?;
    sync_dir(dir)
}
