//! Exporting an image as an OCI image layout tarball: one uncompressed OCI layer per Corral layer
//! (whiteouts as `.wh.` files, opaque directories as `.wh..wh..opq`), a config carrying Env and
//! WorkingDir, and `index.json` naming the image. `corral image import` and `docker load` read it.

use std::io::{self, Seek, Write};
use std::path::Path;

use serde_json::json;

use crate::digest::{Digest, HashingWriter};
use crate::store::{Store, StoreError};
use crate::tarball::{self, TarForm};

const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// Write image `name` (a name or digest) to `out` as an OCI image layout tarball.
pub fn export<W: Write>(store: &Store, name: &str, out: W) -> Result<W, StoreError> {
    let top = store.find(name)?;
    let resolved = store.resolve(name)?;
    let staging = store.staging()?;
    let (blobs, layer_descs) = layer_blobs(&resolved.layers, staging.path())?;
    let diff_ids: Vec<String> = blobs.iter().map(|(d, _)| d.to_string()).collect();
    let env: Vec<String> = top.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": env, "WorkingDir": top.workdir.clone().unwrap_or_default()},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = serde_json::to_vec(&config)
        .map_err(|e| crate::store::io_err("encoding", Path::new("config"))(io::Error::other(e)))?;
    let config_digest = Digest::of_bytes(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config.len()},
        "layers": layer_descs,
    }))
    .map_err(|e| crate::store::io_err("encoding", Path::new("manifest"))(io::Error::other(e)))?;
    let manifest_digest = Digest::of_bytes(&manifest);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest.to_string(),
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": top.name},
        }],
    }))
    .map_err(|e| crate::store::io_err("encoding", Path::new("index"))(io::Error::other(e)))?;
    let mut b = tar::Builder::new(out);
    let err = |e| crate::store::io_err("writing export", Path::new(name))(e);
    append_bytes(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(err)?;
    append_bytes(&mut b, "index.json", &index).map_err(err)?;
    append_bytes(
        &mut b,
        &format!("blobs/sha256/{}", manifest_digest.hex()),
        &manifest,
    )
    .map_err(err)?;
    append_bytes(
        &mut b,
        &format!("blobs/sha256/{}", config_digest.hex()),
        &config,
    )
    .map_err(err)?;
    for (digest, path) in &blobs {
        let mut file = std::fs::File::open(path).map_err(err)?;
        let size = file
            .seek(io::SeekFrom::End(0))
            .and_then(|n| file.rewind().map(|_| n))
            .map_err(err)?;
        let mut h = header(size);
        b.append_data(&mut h, format!("blobs/sha256/{}", digest.hex()), file)
            .map_err(err)?;
    }
    b.into_inner().map_err(err)
}

fn header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(size);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

fn append_bytes<W: Write>(b: &mut tar::Builder<W>, name: &str, bytes: &[u8]) -> io::Result<()> {
    b.append_data(&mut header(bytes.len() as u64), name, bytes)
}

type Blobs = (Vec<(Digest, std::path::PathBuf)>, Vec<serde_json::Value>);

/// Each layer as an uncompressed OCI layer tar under `staging`, with its descriptor.
fn layer_blobs(layers: &[std::path::PathBuf], staging: &Path) -> Result<Blobs, StoreError> {
    let mut blobs: Vec<(Digest, std::path::PathBuf)> = Vec::new();
    let mut layer_descs = Vec::new();
    for (i, dir) in layers.iter().enumerate() {
        let path = staging.join(format!("layer{i}.tar"));
        let file = std::fs::File::create(&path).map_err(crate::store::io_err("creating", &path))?;
        let writer = tarball::write_tree(
            dir,
            TarForm::Oci,
            HashingWriter::new(io::BufWriter::new(file)),
        )
        .map_err(crate::store::io_err("archiving", dir))?;
        let (digest, size, mut buf) = writer.finish();
        buf.flush()
            .map_err(crate::store::io_err("writing", &path))?;
        layer_descs
            .push(json!({"mediaType": LAYER_TYPE, "digest": digest.to_string(), "size": size}));
        blobs.push((digest, path));
    }
    Ok((blobs, layer_descs))
}
