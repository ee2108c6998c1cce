//! Shipping layers between nodes by digest: open a stored layer for reading, and register a
//! layer received over the network only if its sha256 matches.
//!
//! The bytes shipped are exactly what the digest covers: the EROFS file, or a directory layer's
//! deterministic raw tar ([`crate::tarball::TarForm::Raw`]).

use std::io::{self, Read, Write};
use std::path::Path;

use crate::digest::{Digest, HashingReader};
use crate::extract::{self, Budget, Caps, Whiteouts};
use crate::layer::LayerFormat;
use crate::store::{io_err, write_atomic, Manifest, Store, StoreError};
use crate::tarball::{self, TarForm};

/// Why a fetched layer was not registered.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The bytes did not hash to the digest asked for.
    #[error("layer digest mismatch: expected {expected}, received {actual} ({bytes} bytes)")]
    Mismatch {
        /// Digest asked for.
        expected: Digest,
        /// Digest of what arrived.
        actual: Digest,
        /// Bytes received.
        bytes: u64,
    },
    /// More bytes than the cap.
    #[error("layer larger than the cap of {0} bytes")]
    TooLarge(u64),
    /// A layer that this node cannot store (EROFS without kernel support).
    #[error("cannot store layer {0}: {1}")]
    Unsupported(Digest, String),
    /// The raw tar of a directory layer could not be extracted.
    #[error("extracting layer: {0}")]
    Extract(#[from] extract::ExtractError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stream broke.
    #[error("receiving layer: {0}")]
    Read(io::Error),
}

/// EROFS superblock magic, little-endian at byte 1024.
const EROFS_MAGIC: [u8; 4] = [0xe2, 0xe1, 0xf5, 0xe0];

/// Open a stored layer's bytes by digest (what `GET /v1/images/{digest}` serves) with their size
/// when known up front (EROFS files; directory layers stream their tar).
pub fn open_layer(
    store: &Store,
    digest: &Digest,
) -> Result<(Box<dyn Read + Send>, Option<u64>), StoreError> {
    let m = store
        .manifest(digest)?
        .ok_or_else(|| StoreError::NotFound(digest.to_string()))?;
    let path = store.layer_path(digest, m.format);
    match m.format {
        LayerFormat::Erofs => {
            let file = std::fs::File::open(&path).map_err(io_err("opening", &path))?;
            let len = file.metadata().map_err(io_err("reading", &path))?.len();
            Ok((Box::new(file), Some(len)))
        }
        LayerFormat::Dir => {
            let mut buf = Vec::new();
            tarball::write_tree(&path, TarForm::Raw, &mut buf)
                .map_err(io_err("archiving", &path))?;
            Ok((Box::new(io::Cursor::new(buf)), None))
        }
    }
}

/// Receive a layer from `reader`, verifying its sha256 while it streams into a temporary file,
/// and register it with `manifest` (whose digest must be `expected`) only on a match. Nothing is
/// left behind on any error. `max_bytes` caps what is accepted.
pub fn fetch_layer<R: Read>(
    reader: R,
    expected: &Digest,
    manifest: Manifest,
    store: &Store,
    max_bytes: u64,
) -> Result<Manifest, FetchError> {
    if manifest.digest != *expected {
        return Err(FetchError::Unsupported(
            expected.clone(),
            format!("manifest is for {}", manifest.digest),
        ));
    }
    if let Some(m) = store.manifest(expected)? {
        return Ok(m);
    }
    let staging = store.staging()?;
    let tmp = staging.path().join("layer");
    let mut file = std::fs::File::create(&tmp).map_err(io_err("creating", &tmp))?;
    let mut hashing = HashingReader::new(reader.take(max_bytes + 1));
    io::copy(&mut hashing, &mut file).map_err(FetchError::Read)?;
    file.flush()
        .and_then(|_| file.sync_all())
        .map_err(io_err("syncing", &tmp))?;
    let (actual, bytes) = hashing.finish();
    if bytes > max_bytes {
        return Err(FetchError::TooLarge(max_bytes));
    }
    if actual != *expected {
        return Err(FetchError::Mismatch {
            expected: expected.clone(),
            actual,
            bytes,
        });
    }
    let (format, staged) = stage(&tmp, staging.path(), expected)?;
    let dest = store.layer_path(expected, format);
    if !dest.exists() {
        std::fs::rename(&staged, &dest).map_err(io_err("moving layer into", &dest))?;
    }
    let manifest = Manifest {
        format,
        size: bytes,
        ..manifest
    };
    let path = store
        .root()
        .join("manifests")
        .join(format!("{}.json", expected.hex()));
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| io_err("encoding", &path)(io::Error::other(e)))?;
    write_atomic(&path, &json)?;
    Ok(manifest)
}

fn is_erofs(path: &Path) -> bool {
    use std::io::{Seek, SeekFrom};
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| {
            f.seek(SeekFrom::Start(1024))
                .and_then(|_| f.read_exact(&mut magic))
        })
        .is_ok()
        && magic == EROFS_MAGIC
}

/// Put a verified layer in its stored form under `staging`: an EROFS file as is, a raw tar
/// extracted into a directory.
fn stage(
    tmp: &Path,
    staging: &Path,
    expected: &Digest,
) -> Result<(LayerFormat, std::path::PathBuf), FetchError> {
    let format = if is_erofs(tmp) {
        LayerFormat::Erofs
    } else {
        LayerFormat::Dir
    };
    let staged = match format {
        LayerFormat::Erofs if !crate::layer::erofs_available() => {
            return Err(FetchError::Unsupported(
                expected.clone(),
                "EROFS is not available on this node".into(),
            ))
        }
        LayerFormat::Erofs => tmp.to_path_buf(),
        LayerFormat::Dir => {
            let dir = staging.join("dir");
            std::fs::create_dir(&dir).map_err(io_err("creating", &dir))?;
            let file = std::fs::File::open(tmp).map_err(io_err("opening", tmp))?;
            extract::extract(
                file,
                &dir,
                Whiteouts::Keep,
                &Caps::default(),
                &mut Budget::default(),
            )?;
            dir
        }
    };
    Ok((format, staged))
}
