//! Safe tar extraction into a layer directory, for imported images and shipped layers.
//!
//! Every path is checked lexically (no absolute paths, no `..`) and then resolved one component
//! at a time with `openat(O_NOFOLLOW)`: an entry can never write through a symlink, whether the
//! symlink came from the archive or not. Hard links must name an earlier entry inside the root,
//! symlinks may not climb above the root, entry and total sizes are capped, and device nodes are
//! never created (except overlay whiteouts in raw layers).

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{
    fchmodat, fstatat, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use tar::EntryType;

/// Caps on what one extraction may write.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// Largest single entry, in bytes.
    pub entry_bytes: u64,
    /// All entries together, in bytes.
    pub total_bytes: u64,
    /// Number of entries.
    pub entries: u64,
}

impl Default for Caps {
    fn default() -> Self {
        Caps {
            entry_bytes: 4 << 30,
            total_bytes: 32 << 30,
            entries: 2_000_000,
        }
    }
}

/// How whiteouts in the archive are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteouts {
    /// OCI layers applied in order into one directory: `.wh.NAME` deletes NAME from earlier
    /// layers, `.wh..wh..opq` empties the directory of earlier layers' entries.
    Apply,
    /// A raw Corral layer: overlay whiteouts (char 0:0) and overlay xattrs are kept as they are.
    Keep,
}

/// Why an extraction stopped. The caller discards the half-written directory.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// An absolute path or a `..` component.
    #[error("archive entry {0:?} escapes the root (absolute path or `..`)")]
    PathEscape(String),
    /// A path whose parent is a symlink (or not a directory).
    #[error("archive entry {0:?} would write through a symlink or a non-directory")]
    ThroughSymlink(String),
    /// A hard link whose target is outside the root or not an earlier entry.
    #[error("hard link {path:?} -> {target:?} points outside the root or to no earlier entry")]
    LinkEscape {
        /// The link entry.
        path: String,
        /// Its target.
        target: String,
    },
    /// A symlink that climbs above the root with `..`.
    #[error("symlink {path:?} -> {target:?} escapes the root")]
    SymlinkEscape {
        /// The link entry.
        path: String,
        /// Its target.
        target: String,
    },
    /// One entry larger than the cap.
    #[error("archive entry {path:?} is {size} bytes, above the cap of {cap}")]
    EntryTooLarge {
        /// The entry.
        path: String,
        /// Its size.
        size: u64,
        /// The cap.
        cap: u64,
    },
    /// All entries together above the cap, or too many entries.
    #[error("archive too large: above the cap of {0}")]
    TotalTooLarge(String),
    /// An entry type Corral does not extract.
    #[error("archive entry {path:?} has unsupported type {kind}")]
    Unsupported {
        /// The entry.
        path: String,
        /// Its type.
        kind: String,
    },
    /// Reading the archive failed (truncated, corrupt) or writing the tree failed.
    #[error("{op} {path:?}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Entry or file.
        path: String,
        /// Cause.
        source: io::Error,
    },
}

/// Running totals across the layers of one import, and the directory mtimes to restore once
/// their contents are written (writing into a directory changes its mtime).
#[derive(Debug, Default)]
pub struct Budget {
    bytes: u64,
    entries: u64,
    dir_mtimes: BTreeMap<PathBuf, i64>,
}

fn sys<'a>(op: &'static str, path: &'a str) -> impl FnOnce(Errno) -> ExtractError + 'a {
    move |e| ExtractError::Io {
        op,
        path: path.to_string(),
        source: io::Error::from(e),
    }
}

/// The normal components of an archive path; `.` is dropped, anything else refused.
fn components(raw: &Path, display: &str) -> Result<Vec<PathBuf>, ExtractError> {
    let mut out = Vec::new();
    for c in raw.components() {
        match c {
            Component::Normal(n) => out.push(PathBuf::from(n)),
            Component::CurDir => {}
            _ => return Err(ExtractError::PathEscape(display.to_string())),
        }
    }
    Ok(out)
}

/// Open the directory `parts` under `root`, one component at a time, never following a symlink;
/// missing directories are created (0755, root) when `create`.
fn open_dir(
    root: &OwnedFd,
    parts: &[PathBuf],
    display: &str,
    create: bool,
) -> Result<OwnedFd, ExtractError> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut cur = openat(root, ".", flags, Mode::empty()).map_err(sys("opening", display))?;
    for part in parts {
        cur = match openat(&cur, part.as_path(), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) if create => {
                mkdirat(&cur, part.as_path(), Mode::from_bits_truncate(0o755))
                    .map_err(sys("creating directory for", display))?;
                openat(&cur, part.as_path(), flags, Mode::empty())
                    .map_err(sys("opening", display))?
            }
            Err(Errno::ENOTDIR | Errno::ELOOP) => {
                return Err(ExtractError::ThroughSymlink(display.to_string()))
            }
            Err(e) => return Err(sys("opening", display)(e)),
        };
    }
    Ok(cur)
}

/// Extract one tar stream into `root`. `written` collects the paths this layer wrote (so a
/// whiteout in the same layer never deletes them); pass a fresh set per layer.
pub fn extract<R: Read>(
    archive: R,
    root: &Path,
    mode: Whiteouts,
    caps: &Caps,
    budget: &mut Budget,
) -> Result<(), ExtractError> {
    let root_fd = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys("opening", &root.display().to_string()))?;
    let mut written = HashSet::new();
    let mut ar = tar::Archive::new(archive);
    let entries = ar.entries().map_err(|source| ExtractError::Io {
        op: "reading archive",
        path: String::new(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| ExtractError::Io {
            op: "reading archive",
            path: String::new(),
            source,
        })?;
        let mut ctx = Ctx {
            root: root_fd
                .as_fd()
                .try_clone_to_owned()
                .map_err(|source| ExtractError::Io {
                    op: "duplicating root fd",
                    path: String::new(),
                    source,
                })?,
            root_path: root,
            mode,
            written: &mut written,
        };
        ctx.entry(entry, caps, budget)?;
    }
    restore_dir_mtimes(&root_fd, budget)
}

/// Set a file's mtime (and atime) without following a symlink.
fn set_mtime(parent: &OwnedFd, name: &Path, mtime: i64, display: &str) -> Result<(), ExtractError> {
    let t = TimeSpec::new(mtime, 0);
    utimensat(parent, name, &t, &t, UtimensatFlags::NoFollowSymlink)
        .map_err(sys("setting mtime of", display))
}

/// Give every directory the archive named its recorded mtime, deepest first; directories that a
/// later entry removed or replaced are skipped (never followed through a symlink).
fn restore_dir_mtimes(root: &OwnedFd, budget: &Budget) -> Result<(), ExtractError> {
    let mut dirs: Vec<(&PathBuf, &i64)> = budget.dir_mtimes.iter().collect();
    dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (rel, mtime) in dirs {
        let parts: Vec<PathBuf> = rel.iter().map(PathBuf::from).collect();
        let Some((name, parents)) = parts.split_last() else {
            continue;
        };
        let display = rel.display().to_string();
        let Ok(parent) = open_dir(root, parents, &display, false) else {
            continue;
        };
        if existing_kind(&parent, name) == Some(true) {
            set_mtime(&parent, name, *mtime, &display)?;
        }
    }
    Ok(())
}

struct Ctx<'a> {
    root: OwnedFd,
    root_path: &'a Path,
    mode: Whiteouts,
    written: &'a mut HashSet<PathBuf>,
}

impl Ctx<'_> {
    fn entry<R: Read>(
        &mut self,
        mut entry: tar::Entry<'_, R>,
        caps: &Caps,
        budget: &mut Budget,
    ) -> Result<(), ExtractError> {
        let raw = entry.path().map_err(|source| ExtractError::Io {
            op: "reading entry path",
            path: String::new(),
            source,
        })?;
        let display = raw.display().to_string();
        let parts = components(&raw, &display)?;
        let size = entry.header().entry_size().unwrap_or(u64::MAX);
        check_caps(&display, size, caps, budget)?;
        let Some((name, dirs)) = parts.split_last() else {
            return Ok(()); // the root itself: its metadata stays Corral's
        };
        let rel: PathBuf = parts.iter().collect();
        let name_bytes = name.as_os_str().as_encoded_bytes();
        if self.mode == Whiteouts::Apply && name_bytes.starts_with(b".wh.") {
            return self.whiteout(dirs, name_bytes, &display);
        }
        let parent = open_dir(&self.root, dirs, &display, true)?;
        let kind = entry.header().entry_type();
        let is_dir = kind == EntryType::Directory;
        replace_existing(&parent, name, is_dir, self.root_path, &rel, &display)?;
        if !self.create(&mut entry, &parent, name, dirs, size, &display)? {
            return Ok(());
        }
        self.metadata(&mut entry, &parent, name, &rel, &display)?;
        let mtime = entry.header().mtime().unwrap_or(0).min(i64::MAX as u64) as i64;
        if entry.header().entry_type() == EntryType::Directory {
            budget.dir_mtimes.insert(rel.clone(), mtime);
        } else if entry.header().entry_type() != EntryType::Link {
            set_mtime(&parent, name, mtime, &display)?;
        }
        self.written.insert(rel);
        Ok(())
    }

    /// Create the entry's file, directory, link or node; false when the entry is skipped.
    fn create<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        parent: &OwnedFd,
        name: &Path,
        dirs: &[PathBuf],
        size: u64,
        display: &str,
    ) -> Result<bool, ExtractError> {
        match entry.header().entry_type() {
            EntryType::Directory => match mkdirat(parent, name, Mode::from_bits_truncate(0o700)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(sys("creating directory", display)(e)),
            },
            EntryType::Regular | EntryType::Continuous => {
                write_file(entry, parent, name, size, display)?
            }
            EntryType::Symlink => self.symlink(entry, parent, name, dirs, display)?,
            EntryType::Link => self.hard_link(entry, parent, name, display)?,
            EntryType::Char if self.mode == Whiteouts::Keep && is_whiteout(entry) => {
                mknodat(parent, name, SFlag::S_IFCHR, Mode::empty(), 0)
                    .map_err(sys("creating whiteout", display))?;
            }
            EntryType::Fifo => {
                mknodat(
                    parent,
                    name,
                    SFlag::S_IFIFO,
                    Mode::from_bits_truncate(0o600),
                    0,
                )
                .map_err(sys("creating fifo", display))?;
            }
            EntryType::Char | EntryType::Block => {
                let entry_path = display;
                tracing::warn!(entry = %entry_path, "skipping device node in archive");
                return Ok(false);
            }
            // PAX and GNU long-name records are consumed by the tar reader itself.
            EntryType::XGlobalHeader => return Ok(false),
            other => {
                return Err(ExtractError::Unsupported {
                    path: display.to_string(),
                    kind: format!("{other:?}"),
                })
            }
        }
        Ok(true)
    }

    fn symlink<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        parent: &OwnedFd,
        name: &Path,
        dirs: &[PathBuf],
        display: &str,
    ) -> Result<(), ExtractError> {
        let target = link_name(entry, display)?;
        if !target.is_absolute() && climbs_above(dirs.len(), &target) {
            return Err(ExtractError::SymlinkEscape {
                path: display.to_string(),
                target: target.display().to_string(),
            });
        }
        symlinkat(target.as_path(), parent, name).map_err(sys("creating symlink", display))
    }

    fn hard_link<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        parent: &OwnedFd,
        name: &Path,
        display: &str,
    ) -> Result<(), ExtractError> {
        let target = link_name(entry, display)?;
        let escape = || ExtractError::LinkEscape {
            path: display.to_string(),
            target: target.display().to_string(),
        };
        let parts = components(&target, display).map_err(|_| escape())?;
        let Some((src_name, src_dirs)) = parts.split_last() else {
            return Err(escape());
        };
        let src_parent = open_dir(&self.root, src_dirs, display, false).map_err(|_| escape())?;
        linkat(
            src_parent,
            src_name.as_path(),
            parent,
            name,
            AtFlags::empty(),
        )
        .map_err(|_| escape())
    }

    fn metadata<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        parent: &OwnedFd,
        name: &Path,
        rel: &Path,
        display: &str,
    ) -> Result<(), ExtractError> {
        let h = entry.header();
        let kind = h.entry_type();
        if kind == EntryType::Link {
            return Ok(()); // shares the target's inode and metadata
        }
        let uid = h
            .uid()
            .ok()
            .and_then(|u| u32::try_from(u).ok())
            .unwrap_or(0);
        let gid = h
            .gid()
            .ok()
            .and_then(|g| u32::try_from(g).ok())
            .unwrap_or(0);
        fchownat(
            parent,
            name,
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(sys("setting owner of", display))?;
        if kind == EntryType::Symlink {
            return Ok(());
        }
        let mut mode = h.mode().unwrap_or(0o644) & 0o7777;
        if self.mode == Whiteouts::Apply {
            mode &= 0o1777; // imported images get no setuid/setgid binaries
        }
        if kind == EntryType::Char {
            mode = 0;
        }
        fchmodat(
            parent,
            name,
            Mode::from_bits_truncate(mode),
            FchmodatFlags::NoFollowSymlink,
        )
        .map_err(sys("setting mode of", display))?;
        if self.mode == Whiteouts::Keep {
            self.xattrs(entry, rel, display)?;
        }
        Ok(())
    }

    fn xattrs<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        rel: &Path,
        display: &str,
    ) -> Result<(), ExtractError> {
        let Ok(Some(exts)) = entry.pax_extensions() else {
            return Ok(());
        };
        for ext in exts.flatten() {
            let Ok(key) = ext.key() else { continue };
            let Some(name) = key.strip_prefix("SCHILY.xattr.") else {
                continue;
            };
            // The parent chain was just opened without following symlinks, and this entry is
            // not a symlink, so the joined path names exactly the file written.
            xattr::set(self.root_path.join(rel), name, ext.value_bytes()).map_err(|source| {
                ExtractError::Io {
                    op: "setting xattr on",
                    path: display.to_string(),
                    source,
                }
            })?;
        }
        Ok(())
    }

    fn whiteout(
        &mut self,
        dirs: &[PathBuf],
        name: &[u8],
        display: &str,
    ) -> Result<(), ExtractError> {
        let dir_rel: PathBuf = dirs.iter().collect();
        let parent = match open_dir(&self.root, dirs, display, false) {
            Ok(fd) => fd,
            Err(ExtractError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(()); // nothing below to hide
            }
            Err(e) => return Err(e),
        };
        if name == b".wh..wh..opq" {
            let dir = self.root_path.join(&dir_rel);
            let children = std::fs::read_dir(&dir).map_err(|source| ExtractError::Io {
                op: "listing",
                path: display.to_string(),
                source,
            })?;
            for child in children.flatten() {
                let rel = dir_rel.join(child.file_name());
                if !self.written.contains(&rel) {
                    remove(
                        &parent,
                        Path::new(&child.file_name()),
                        &self.root_path.join(&rel),
                        display,
                    )?;
                }
            }
            return Ok(());
        }
        let victim = std::ffi::OsStr::from_bytes(&name[4..]);
        let rel = dir_rel.join(victim);
        if victim.is_empty() || self.written.contains(&rel) {
            return Ok(());
        }
        remove(
            &parent,
            Path::new(victim),
            &self.root_path.join(&rel),
            display,
        )
    }
}

fn check_caps(
    display: &str,
    size: u64,
    caps: &Caps,
    budget: &mut Budget,
) -> Result<(), ExtractError> {
    if size > caps.entry_bytes {
        return Err(ExtractError::EntryTooLarge {
            path: display.to_string(),
            size,
            cap: caps.entry_bytes,
        });
    }
    budget.bytes = budget.bytes.saturating_add(size);
    budget.entries += 1;
    if budget.bytes > caps.total_bytes {
        return Err(ExtractError::TotalTooLarge(format!(
            "{} bytes",
            caps.total_bytes
        )));
    }
    if budget.entries > caps.entries {
        return Err(ExtractError::TotalTooLarge(format!(
            "{} entries",
            caps.entries
        )));
    }
    Ok(())
}

fn is_whiteout<R: Read>(entry: &tar::Entry<'_, R>) -> bool {
    let h = entry.header();
    matches!(
        (h.device_major(), h.device_minor()),
        (Ok(Some(0)), Ok(Some(0)))
    )
}

fn link_name<R: Read>(entry: &tar::Entry<'_, R>, display: &str) -> Result<PathBuf, ExtractError> {
    match entry.link_name() {
        Ok(Some(target)) if !target.as_os_str().is_empty() => Ok(target.into_owned()),
        Ok(_) => Err(ExtractError::Unsupported {
            path: display.to_string(),
            kind: "link without a target".to_string(),
        }),
        Err(source) => Err(ExtractError::Io {
            op: "reading link target of",
            path: display.to_string(),
            source,
        }),
    }
}

/// Whether a relative symlink target, resolved from a directory `depth` levels below the root,
/// climbs above the root.
fn climbs_above(depth: usize, target: &Path) -> bool {
    let mut level = depth as i64;
    for c in target.components() {
        match c {
            Component::ParentDir => level -= 1,
            Component::Normal(_) => level += 1,
            _ => {}
        }
        if level < 0 {
            return true;
        }
    }
    false
}

/// Whether `name` in `parent` exists and is a directory (not following a symlink).
fn existing_kind(parent: &OwnedFd, name: &Path) -> Option<bool> {
    fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .ok()
        .map(|st| SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR)
}

/// Remove `name` from `parent`: a file, symlink or node with unlinkat, a directory tree with
/// `remove_dir_all` on `full` (whose parents were opened without following symlinks; it never
/// follows symlinks inside the tree).
fn remove(parent: &OwnedFd, name: &Path, full: &Path, display: &str) -> Result<(), ExtractError> {
    match existing_kind(parent, name) {
        None => Ok(()),
        Some(true) => std::fs::remove_dir_all(full).map_err(|source| ExtractError::Io {
            op: "removing",
            path: display.to_string(),
            source,
        }),
        Some(false) => {
            unlinkat(parent, name, UnlinkatFlags::NoRemoveDir).map_err(sys("removing", display))
        }
    }
}

/// Make room for a new entry: an existing directory stays when the entry is a directory too,
/// anything else is removed (later entries replace earlier ones, as tar does).
fn replace_existing(
    parent: &OwnedFd,
    name: &Path,
    new_is_dir: bool,
    root: &Path,
    rel: &Path,
    display: &str,
) -> Result<(), ExtractError> {
    match existing_kind(parent, name) {
        Some(true) if new_is_dir => Ok(()),
        Some(_) => remove(parent, name, &root.join(rel), display),
        None => Ok(()),
    }
}

/// Write a regular file's contents, refusing to follow or replace anything at `name`.
fn write_file<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    parent: &OwnedFd,
    name: &Path,
    size: u64,
    display: &str,
) -> Result<(), ExtractError> {
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(parent, name, flags, Mode::from_bits_truncate(0o600))
        .map_err(sys("creating file", display))?;
    let mut file = File::from(fd);
    let copied = io::copy(&mut entry.take(size), &mut file).map_err(|source| ExtractError::Io {
        op: "writing file",
        path: display.to_string(),
        source,
    })?;
    if copied != size {
        return Err(ExtractError::Io {
            op: "reading archive (truncated)",
            path: display.to_string(),
            source: io::ErrorKind::UnexpectedEof.into(),
        });
    }
    Ok(())
}
