//! Deterministic tar streams of a layer directory: the same tree always gives the same bytes.
//!
//! Two forms: [`TarForm::Raw`] keeps the layer exactly (overlay whiteouts as character devices
//! 0:0, xattrs as PAX `SCHILY.xattr.*` records) and is what a directory layer's digest is
//! computed over and what is shipped between nodes; [`TarForm::Oci`] is an OCI layer (whiteouts
//! as `.wh.NAME` files, opaque directories as `.wh..wh..opq`, overlay xattrs dropped) for export.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tar::{Builder, EntryType, Header};

/// Which tar form to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TarForm {
    /// The layer as is.
    Raw,
    /// An OCI layer.
    Oci,
}

/// Write the tree under `root` (not the root itself) as a tar to `out`, entries sorted by name.
pub fn write_tree<W: Write>(root: &Path, form: TarForm, out: W) -> io::Result<W> {
    let mut builder = Builder::new(out);
    builder.follow_symlinks(false);
    let mut links = HashMap::new();
    walk(&mut builder, root, Path::new(""), form, &mut links)?;
    builder.into_inner()
}

fn walk<W: Write>(
    b: &mut Builder<W>,
    root: &Path,
    rel: &Path,
    form: TarForm,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> io::Result<()> {
    let dir = root.join(rel);
    let mut names: Vec<_> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let rel = rel.join(&name);
        let path = root.join(&rel);
        let meta = std::fs::symlink_metadata(&path)?;
        append_entry(b, &path, &rel, &meta, form, links)?;
        if meta.is_dir() {
            walk(b, root, &rel, form, links)?;
        }
    }
    Ok(())
}

fn base_header(meta: &std::fs::Metadata, kind: EntryType) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(meta.mode() & 0o7777);
    h.set_uid(meta.uid().into());
    h.set_gid(meta.gid().into());
    h.set_mtime(meta.mtime().max(0) as u64);
    h.set_size(0);
    h
}

fn append_entry<W: Write>(
    b: &mut Builder<W>,
    path: &Path,
    rel: &Path,
    meta: &std::fs::Metadata,
    form: TarForm,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> io::Result<()> {
    let ft = meta.file_type();
    let is_whiteout = ft.is_char_device() && meta.rdev() == 0;
    if form == TarForm::Oci && is_whiteout {
        let mut name = b".wh.".to_vec();
        name.extend_from_slice(rel.file_name().unwrap_or_default().as_bytes());
        let wh = rel.with_file_name(std::ffi::OsStr::from_bytes(&name));
        let mut h = base_header(meta, EntryType::Regular);
        h.set_mode(0o644);
        return b.append_data(&mut h, wh, io::empty());
    }
    if form == TarForm::Raw {
        append_xattrs(b, path)?;
    }
    if !ft.is_dir() && meta.nlink() > 1 {
        let key = (meta.dev(), meta.ino());
        if let Some(first) = links.get(&key) {
            let mut h = base_header(meta, EntryType::Link);
            return b.append_link(&mut h, rel, first);
        }
        links.insert(key, rel.to_path_buf());
    }
    if ft.is_dir() {
        let mut h = base_header(meta, EntryType::Directory);
        b.append_data(&mut h, rel, io::empty())?;
        if form == TarForm::Oci && is_opaque(path) {
            let mut h = base_header(meta, EntryType::Regular);
            h.set_mode(0o644);
            b.append_data(&mut h, rel.join(".wh..wh..opq"), io::empty())?;
        }
        Ok(())
    } else if ft.is_file() {
        let mut h = base_header(meta, EntryType::Regular);
        h.set_size(meta.len());
        b.append_data(&mut h, rel, std::fs::File::open(path)?)
    } else if ft.is_symlink() {
        let mut h = base_header(meta, EntryType::Symlink);
        b.append_link(&mut h, rel, std::fs::read_link(path)?)
    } else {
        let kind = if ft.is_char_device() {
            EntryType::Char
        } else if ft.is_block_device() {
            EntryType::Block
        } else if ft.is_fifo() {
            EntryType::Fifo
        } else {
            return Err(io::Error::other(format!(
                "{}: sockets cannot be archived",
                path.display()
            )));
        };
        let mut h = base_header(meta, kind);
        let rdev = meta.rdev();
        h.set_device_major(nix::sys::stat::major(rdev) as u32)?;
        h.set_device_minor(nix::sys::stat::minor(rdev) as u32)?;
        b.append_data(&mut h, rel, io::empty())
    }
}

/// Whether a directory is marked opaque for overlayfs.
pub fn is_opaque(path: &Path) -> bool {
    matches!(xattr::get(path, "trusted.overlay.opaque"), Ok(Some(v)) if v == b"y")
}

fn append_xattrs<W: Write>(b: &mut Builder<W>, path: &Path) -> io::Result<()> {
    let mut names: Vec<_> = xattr::list(path)?.collect();
    if names.is_empty() {
        return Ok(());
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let mut records = Vec::new();
    for name in names {
        if let Some(value) = xattr::get(path, &name)? {
            let key = format!("SCHILY.xattr.{}", name.to_string_lossy());
            records.push((key, value));
        }
    }
    b.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
}
