//! Importing OCI image layout and `docker save` tarballs.
//!
//! Both manifest variants are read: `index.json` (OCI layout, also written by Docker 25+, nested
//! indexes followed to the linux/amd64 manifest) and the older `manifest.json` list. Every blob
//! read is checked against its sha256 while it streams: manifests and configs by their
//! descriptor digests, layers by their blob digest and, where the config lists them, by their
//! uncompressed `diff_ids`.
//!
//! Layers are applied in order into one directory (a whiteout deletes, an opaque marker empties
//! the directory of lower layers' entries) and registered as a single Corral layer. Flattening is
//! as correct as converting each layer to overlay form, needs no xattrs, and gives jobs one lower
//! directory instead of many.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, Read, Seek, SeekFrom};
use std::path::Path;

use serde::Deserialize;

use crate::digest::{Digest, HashingReader};
use crate::extract::{self, Budget, Caps, ExtractError, Whiteouts};
use crate::store::{check_name, Manifest, Store, StoreError};

/// Caps for one import.
#[derive(Debug, Clone, Copy)]
pub struct ImportOptions {
    /// Caps on the extracted tree (per entry, total, entry count); the tarball itself is capped
    /// at the same total.
    pub caps: Caps,
    /// Largest JSON document read (index, manifest, config).
    pub json_bytes: u64,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            caps: Caps::default(),
            json_bytes: 4 << 20,
        }
    }
}

/// Why an import failed. Nothing was registered.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Not an image tarball Corral understands.
    #[error("not an OCI layout or docker save tarball: {0}")]
    Format(String),
    /// A blob whose sha256 does not match what refers to it.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// Which blob.
        what: String,
        /// Recorded digest.
        expected: String,
        /// Computed digest.
        actual: String,
    },
    /// A JSON document that does not parse.
    #[error("{what}: {source}")]
    Json {
        /// Which document.
        what: String,
        /// Cause.
        source: serde_json::Error,
    },
    /// No `--name` and no usable tag in the tarball.
    #[error("the tarball records no usable tag: pass --name")]
    NoName,
    /// A layer could not be extracted safely.
    #[error("layer {layer}: {source}")]
    Extract {
        /// Which layer.
        layer: String,
        /// Cause.
        source: ExtractError,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading the tarball failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: String,
        /// Cause.
        source: io::Error,
    },
}

fn io_err(op: &'static str, path: impl Into<String>) -> impl FnOnce(io::Error) -> ImportError {
    let path = path.into();
    move |source| ImportError::Io { op, path, source }
}

/// A tarball indexed by member name, read with seeks.
struct Outer {
    file: File,
    members: HashMap<String, (u64, u64)>,
}

impl Outer {
    fn open(path: &Path, staging: &Path, opts: &ImportOptions) -> Result<Outer, ImportError> {
        let shown = path.display().to_string();
        let mut file = File::open(path).map_err(io_err("opening", &shown))?;
        let mut magic = [0u8; 2];
        let gz = file.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
        file.seek(SeekFrom::Start(0))
            .map_err(io_err("reading", &shown))?;
        if gz {
            let plain = staging.join("outer.tar");
            let mut out =
                File::create(&plain).map_err(io_err("creating", plain.display().to_string()))?;
            let mut dec = flate2::read::GzDecoder::new(file).take(opts.caps.total_bytes + 1);
            let n = io::copy(&mut dec, &mut out).map_err(io_err("decompressing", &shown))?;
            if n > opts.caps.total_bytes {
                return Err(ImportError::Extract {
                    layer: shown,
                    source: ExtractError::TotalTooLarge(format!("{} bytes", opts.caps.total_bytes)),
                });
            }
            file = File::open(&plain).map_err(io_err("opening", plain.display().to_string()))?;
        }
        let mut members = HashMap::new();
        {
            let mut ar = tar::Archive::new(&file);
            for entry in ar.entries().map_err(io_err("reading", &shown))? {
                let entry = entry.map_err(io_err("reading", &shown))?;
                if entry.header().entry_type() != tar::EntryType::Regular {
                    continue;
                }
                let name = entry
                    .path()
                    .map_err(io_err("reading", &shown))?
                    .to_string_lossy()
                    .trim_start_matches("./")
                    .to_string();
                let size = entry
                    .header()
                    .entry_size()
                    .map_err(io_err("reading", &shown))?;
                members.insert(name, (entry.raw_file_position(), size));
                if members.len() as u64 > opts.caps.entries {
                    return Err(ImportError::Format("too many members".into()));
                }
            }
        }
        Ok(Outer { file, members })
    }

    fn member(&self, name: &str) -> Result<impl Read + '_, ImportError> {
        let name = name.trim_start_matches("./");
        let &(offset, size) = self
            .members
            .get(name)
            .ok_or_else(|| ImportError::Format(format!("missing member {name:?}")))?;
        let mut f = &self.file;
        f.seek(SeekFrom::Start(offset))
            .map_err(io_err("seeking to", name))?;
        let actual = self.file.metadata().map_err(io_err("reading", name))?.len();
        if offset + size > actual {
            return Err(ImportError::Io {
                op: "reading (truncated tarball)",
                path: name.to_string(),
                source: io::ErrorKind::UnexpectedEof.into(),
            });
        }
        Ok(f.take(size))
    }

    /// A JSON member, checked against `digest` when given.
    fn json<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        digest: Option<&Digest>,
        opts: &ImportOptions,
    ) -> Result<T, ImportError> {
        let mut bytes = Vec::new();
        self.member(name)?
            .take(opts.json_bytes + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err("reading", name))?;
        if bytes.len() as u64 > opts.json_bytes {
            return Err(ImportError::Format(format!(
                "{name} is larger than {} bytes",
                opts.json_bytes
            )));
        }
        if let Some(expected) = digest {
            check(name, expected, &Digest::of_bytes(&bytes))?;
        }
        serde_json::from_slice(&bytes).map_err(|source| ImportError::Json {
            what: name.to_string(),
            source,
        })
    }
}

fn check(what: &str, expected: &Digest, actual: &Digest) -> Result<(), ImportError> {
    if expected == actual {
        Ok(())
    } else {
        Err(ImportError::DigestMismatch {
            what: what.to_string(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        })
    }
}

#[derive(Debug, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: HashMap<String, String>,
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Debug, Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct ImageManifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ImageConfig {
    #[serde(default)]
    config: Option<RunConfig>,
    #[serde(default)]
    rootfs: Option<RootFs>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// One layer to apply: its member, and the digests it must have.
struct LayerRef {
    member: String,
    blob: Option<Digest>,
    diff_id: Option<Digest>,
}

fn parse_digest(what: &str, s: &str) -> Result<Digest, ImportError> {
    Digest::parse(s).map_err(|e| ImportError::Format(format!("{what}: {e}")))
}

fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// Import the tarball at `path` into `store` as `name` (else its recorded tag).
pub fn import(
    store: &Store,
    path: &Path,
    name: Option<&str>,
    opts: &ImportOptions,
) -> Result<Manifest, ImportError> {
    if let Some(n) = name {
        check_name(n)?;
    }
    let staging = store.staging()?;
    let outer = Outer::open(path, staging.path(), opts)?;
    let (layers, config, tag) = if outer.members.contains_key("index.json") {
        read_oci(&outer, opts)?
    } else if outer.members.contains_key("manifest.json") {
        read_docker(&outer, opts)?
    } else {
        return Err(ImportError::Format(
            "neither index.json nor manifest.json at the top".into(),
        ));
    };
    let name = match name {
        Some(n) => n.to_string(),
        None => tag
            .as_deref()
            .and_then(name_from_tag)
            .ok_or(ImportError::NoName)?,
    };
    let root = staging.path().join("root");
    std::fs::create_dir(&root).map_err(io_err("creating", root.display().to_string()))?;
    let mut budget = Budget::default();
    for layer in &layers {
        apply_layer(&outer, layer, &root, opts, &mut budget)?;
    }
    let run = config.config.unwrap_or_default();
    let env = run
        .env
        .unwrap_or_default()
        .into_iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let source = format!(
        "import:{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let meta = Manifest {
        env,
        workdir: run.working_dir.filter(|w| !w.is_empty()),
        ..Manifest::new_layer(None, source)
    };
    Ok(store.register(&name, &root, meta)?)
}

/// `docker.io/library/alpine:3.19` → `alpine:3.19`; names the store cannot hold give `None`.
fn name_from_tag(tag: &str) -> Option<String> {
    let last = tag.rsplit('/').next()?.to_ascii_lowercase();
    check_name(&last).ok().map(|_| last)
}

type Parsed = (Vec<LayerRef>, ImageConfig, Option<String>);

fn read_oci(outer: &Outer, opts: &ImportOptions) -> Result<Parsed, ImportError> {
    let index: Index = outer.json("index.json", None, opts)?;
    let top = index
        .manifests
        .first()
        .ok_or_else(|| ImportError::Format("index.json lists no manifest".into()))?;
    let tag = top
        .annotations
        .get("io.containerd.image.name")
        .or_else(|| top.annotations.get("org.opencontainers.image.ref.name"))
        .cloned();
    let mut desc_digest = parse_digest("index.json", &top.digest)?;
    let mut media = top.media_type.clone();
    for _ in 0..2 {
        if !media.contains("index") && !media.contains("manifest.list") {
            break;
        }
        let nested: Index = outer.json(&blob_path(&desc_digest), Some(&desc_digest), opts)?;
        let pick = nested
            .manifests
            .iter()
            .find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
            })
            .or(nested.manifests.first())
            .ok_or_else(|| ImportError::Format("nested index lists no manifest".into()))?;
        desc_digest = parse_digest("index", &pick.digest)?;
        media = pick.media_type.clone();
    }
    let manifest: ImageManifest = outer.json(&blob_path(&desc_digest), Some(&desc_digest), opts)?;
    let config_digest = parse_digest("config", &manifest.config.digest)?;
    let config: ImageConfig = outer.json(&blob_path(&config_digest), Some(&config_digest), opts)?;
    let diff_ids = diff_ids(&config, manifest.layers.len())?;
    let mut layers = Vec::new();
    for (i, l) in manifest.layers.iter().enumerate() {
        if l.media_type.contains("zstd") {
            return Err(ImportError::Format(format!(
                "layer {} is zstd-compressed; re-save it with gzip or uncompressed layers",
                l.digest
            )));
        }
        let d = parse_digest("layer", &l.digest)?;
        layers.push(LayerRef {
            member: blob_path(&d),
            blob: Some(d),
            diff_id: diff_ids.get(i).cloned(),
        });
    }
    Ok((layers, config, tag))
}

fn read_docker(outer: &Outer, opts: &ImportOptions) -> Result<Parsed, ImportError> {
    let list: Vec<DockerEntry> = outer.json("manifest.json", None, opts)?;
    let entry = list
        .first()
        .ok_or_else(|| ImportError::Format("manifest.json lists no image".into()))?;
    let config_digest = digest_in_name(&entry.config).ok_or_else(|| {
        ImportError::Format(format!(
            "config {:?} is not named by its digest",
            entry.config
        ))
    })?;
    let config: ImageConfig = outer.json(&entry.config, Some(&config_digest), opts)?;
    let diff_ids = diff_ids(&config, entry.layers.len())?;
    if diff_ids.len() != entry.layers.len() {
        return Err(ImportError::Format(
            "config rootfs.diff_ids does not list every layer".into(),
        ));
    }
    let layers = entry
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(member, diff_id)| LayerRef {
            member: member.clone(),
            blob: member
                .starts_with("blobs/")
                .then(|| digest_in_name(member))
                .flatten(),
            diff_id: Some(diff_id),
        })
        .collect();
    let tag = entry.repo_tags.as_ref().and_then(|t| t.first().cloned());
    Ok((layers, config, tag))
}

/// `blobs/sha256/<hex>` or `<hex>.json` → the digest in the name.
fn digest_in_name(member: &str) -> Option<Digest> {
    let file = member.rsplit('/').next()?;
    Digest::parse(file.strip_suffix(".json").unwrap_or(file)).ok()
}

fn diff_ids(config: &ImageConfig, layers: usize) -> Result<Vec<Digest>, ImportError> {
    let ids = config
        .rootfs
        .as_ref()
        .map(|r| r.diff_ids.as_slice())
        .unwrap_or_default();
    if !ids.is_empty() && ids.len() != layers {
        return Err(ImportError::Format(format!(
            "config lists {} diff_ids for {layers} layers",
            ids.len()
        )));
    }
    ids.iter().map(|d| parse_digest("diff_id", d)).collect()
}

/// Stream one layer through the blob hash, gunzip if needed, the diff_id hash and the extractor;
/// both hashes are checked after the whole blob was read.
fn apply_layer(
    outer: &Outer,
    layer: &LayerRef,
    root: &Path,
    opts: &ImportOptions,
    budget: &mut Budget,
) -> Result<(), ImportError> {
    let what = layer.member.clone();
    let mut buffered = io::BufReader::new(HashingReader::new(outer.member(&layer.member)?));
    let gz = buffered
        .fill_buf()
        .map_err(io_err("reading", &what))?
        .starts_with(&[0x1f, 0x8b]);
    let decoded: Box<dyn Read + '_> = if gz {
        Box::new(flate2::read::GzDecoder::new(&mut buffered))
    } else {
        Box::new(&mut buffered)
    };
    let mut plain = HashingReader::new(decoded);
    let result = extract::extract(&mut plain, root, Whiteouts::Apply, &opts.caps, budget);
    // The tar reader stops at the end-of-archive marker: hash whatever follows too.
    let drained = io::copy(&mut plain, &mut io::sink());
    let (diff, _) = plain.finish();
    let rest = io::copy(&mut buffered, &mut io::sink());
    let (blob, _) = buffered.into_inner().finish();
    if let Some(expected) = &layer.blob {
        check(&what, expected, &blob)?;
    }
    if let Some(expected) = &layer.diff_id {
        check(&format!("{what} (uncompressed)"), expected, &diff)?;
    }
    result.map_err(|source| ImportError::Extract {
        layer: what.clone(),
        source,
    })?;
    drained.and(rest).map_err(io_err("reading", &what))?;
    Ok(())
}

#[cfg(test)]
mod tests;
