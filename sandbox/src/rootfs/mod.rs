//! The container's root filesystem: a plan of steps computed from the request, then applied through
//! the [`Sys`] seam, in PID 1, inside the job's fresh mount namespace.
//!
//! The plan is pure data, so its order (private propagation first; every mount before `pivot_root`;
//! the old root detached right after) is tested without root, and [`Sys`] has a recording fake.
//!
//! Layout inside the job's tmpfs (mounted on the slot directory, invisible to the host):
//! `upper/` and `work/` for the overlay, `root/` where the overlay is mounted, `shm/` for /dev/shm,
//! `dev/` bound read-only on /dev, and `empty/` bound read-only over the masked /proc directories.
//! The working directory `/box` and `/tmp` live in `upper/`, so they share the tmpfs quota. /dev and
//! the masks are bind mounts of directories of that tmpfs rather than filesystems of their own: a
//! superblock costs its creation and, at the job's end, its teardown, for every job.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use crate::wire::JobRequest;

/// The job's working directory inside the container.
pub const WORKDIR: &str = "/box";
/// Hostname every job sees.
pub const HOSTNAME: &str = "corral";

/// /proc files hidden behind /dev/null: the world-readable ones that describe the host or other
/// tenants (kernel memory and symbols, keys, timers with their owners' names, scheduler state) and
/// the SysRq trigger. The root-only ones (kmsg, kpage*) are unreadable to the job's uid already.
const MASKED_PROC_FILES: &[&str] = &[
    "kcore",
    "keys",
    "key-users",
    "timer_list",
    "timer_stats",
    "sched_debug",
    "latency_stats",
    "sysrq-trigger",
    "kallsyms",
];
/// /proc directories hidden behind an empty read-only directory (hardware and firmware details).
const MASKED_PROC_DIRS: &[&str] = &["acpi", "scsi", "asound"];
/// Character devices of the minimal /dev: (name, major, minor).
const DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
];

/// One step of building the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Make every mount private, recursively, before any other mount.
    MakePrivate,
    /// Mount a tmpfs.
    Tmpfs {
        target: PathBuf,
        options: String,
        flags: MsFlags,
    },
    /// Create a directory (mode 0755, root) where one is missing; an existing one is left untouched
    /// (changing it would copy it up into the job's upper layer for nothing).
    MountPoint { path: PathBuf },
    /// Create a directory (and missing parents) with this mode and owner.
    Mkdir {
        path: PathBuf,
        mode: u32,
        owner: Option<(u32, u32)>,
    },
    /// Write input file number `index` of the request.
    WriteFile {
        path: PathBuf,
        index: usize,
        mode: u32,
        owner: (u32, u32),
    },
    /// Change the working directory (relative overlay paths are resolved from it).
    Chdir { path: PathBuf },
    /// Mount the overlay of the image layers over the job's upper directory.
    Overlay { target: PathBuf, options: String },
    /// Bind-mount `source` on `target`, then remount it read-only, nosuid, nodev.
    BindReadOnly { source: PathBuf, target: PathBuf },
    /// Bind-mount `source` on `target` writable (nosuid, nodev).
    Bind { source: PathBuf, target: PathBuf },
    /// Bind-mount the directory `source` on `target` with its mount flags left for a later
    /// [`Step::RemountReadOnly`] (so that /dev keeps its device nodes usable).
    BindDir { source: PathBuf, target: PathBuf },
    /// Mount a fresh proc (processes of other users invisible).
    Proc { target: PathBuf },
    /// Bind-mount the host's device node over a new empty file (a user namespace cannot mknod).
    BindDevice { source: PathBuf, target: PathBuf },
    /// Create a character device node.
    Mknod {
        path: PathBuf,
        major: u64,
        minor: u64,
    },
    /// Create a symbolic link.
    Symlink { target: String, link: PathBuf },
    /// Make a bind mount read-only with exactly the given nosuid/nodev/noexec flags besides (its
    /// own flags only: the filesystem it shows stays as it is). A bind inherits its source mount's
    /// flags, and `mount(2)` remounts here repeat the current ones (see `RealSys`), so this one
    /// uses `mount_setattr(2)`, which can clear `nodev` for /dev.
    RemountReadOnly { target: PathBuf, flags: MsFlags },
    /// Hide a file behind /dev/null (skipped when it does not exist).
    MaskFile { dev_null: PathBuf, target: PathBuf },
    /// Hide a directory behind the empty directory `empty`, bound read-only, nosuid, nodev and
    /// noexec (skipped when it does not exist).
    MaskDir { empty: PathBuf, target: PathBuf },
    /// `pivot_root` into `new_root`, detach the old root, chdir to `/`.
    PivotRoot { new_root: PathBuf },
    /// Set the hostname of the job's UTS namespace.
    Hostname { name: String },
}

/// The input files of `req`, written into the working directory once the root is in place (after
/// `pivot_root`: a root prepared ahead of the job, see `spawner`, gets them the same way). Nothing
/// of the job has run yet, so nothing in the fresh upper layer can redirect these writes, and they
/// refuse to follow links anyway.
pub fn input_steps(req: &JobRequest) -> Vec<Step> {
    req.files
        .iter()
        .enumerate()
        .map(|(index, file)| Step::WriteFile {
            path: Path::new(WORKDIR).join(&file.name),
            index,
            mode: file.mode & 0o777,
            owner: (req.uid, req.gid),
        })
        .collect()
}

/// Compute the steps that build the root for `req` (its input files come after, see
/// [`input_steps`]).
pub fn plan(req: &JobRequest) -> Vec<Step> {
    let slot = &req.slot_dir;
    let root = slot.join("root");
    let upper = slot.join("upper");
    let owner = (req.uid, req.gid);
    let mut steps = vec![
        Step::MakePrivate,
        Step::Tmpfs {
            target: slot.clone(),
            options: format!(
                "size={},nr_inodes={},mode=0755",
                req.disk_bytes, req.disk_inodes
            ),
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        },
        Step::Mkdir {
            path: upper.clone(),
            mode: 0o755,
            owner: None,
        },
        Step::Mkdir {
            path: slot.join("work"),
            mode: 0o700,
            owner: None,
        },
        Step::Mkdir {
            path: root.clone(),
            mode: 0o755,
            owner: None,
        },
        Step::Mkdir {
            path: slot.join("shm"),
            mode: 0o1777,
            owner: None,
        },
        Step::Mkdir {
            path: slot.join("empty"),
            mode: 0o555,
            owner: None,
        },
        Step::Mkdir {
            path: upper.join("tmp"),
            mode: 0o1777,
            owner: None,
        },
        Step::Mkdir {
            path: upper.join(&WORKDIR[1..]),
            mode: 0o755,
            owner: Some(owner),
        },
    ];
    // The overlay is mounted from inside the job's tmpfs with relative names (`l0`, `l1` are links to
    // the layers), so /proc/self/mountinfo inside the container shows no host path.
    for (i, layer) in req.layers.iter().enumerate() {
        steps.push(Step::Symlink {
            target: layer.display().to_string(),
            link: slot.join(format!("l{i}")),
        });
    }
    steps.push(Step::Chdir { path: slot.clone() });
    steps.push(Step::Overlay {
        target: "root".into(),
        options: overlay_options(req),
    });
    for bind in &req.host_binds {
        let target = inside(&root, bind);
        steps.push(Step::MountPoint {
            path: target.clone(),
        });
        steps.push(Step::BindReadOnly {
            source: bind.clone(),
            target,
        });
    }
    steps.extend(dev_steps(slot, &root, req.userns_root.is_some()));
    steps.extend(proc_steps(slot, &root));
    steps.push(Step::PivotRoot { new_root: root });
    steps.push(Step::Hostname {
        name: HOSTNAME.to_string(),
    });
    steps
}

fn overlay_options(req: &JobRequest) -> String {
    let lower: Vec<String> = (0..req.layers.len())
        .rev()
        .map(|i| format!("l{i}"))
        .collect();
    // In a user namespace overlayfs may not use trusted.* xattrs: it keeps its own in user.*.
    let userxattr = if req.userns_root.is_some() {
        ",userxattr"
    } else {
        ""
    };
    format!(
        "lowerdir={},upperdir=upper,workdir=work,xino=off,index=off,metacopy=off,redirect_dir=nofollow{userxattr}",
        lower.join(":")
    )
}

fn dev_steps(slot: &Path, root: &Path, userns: bool) -> Vec<Step> {
    // Filled in the job's tmpfs first, where nothing of the job can reach it, then bound on /dev.
    let dir = slot.join("dev");
    let dev = root.join("dev");
    let mut steps = vec![Step::Mkdir {
        path: dir.clone(),
        mode: 0o755,
        owner: None,
    }];
    if !userns {
        for &(name, major, minor) in DEVICES {
            steps.push(Step::Mknod {
                path: dir.join(name),
                major,
                minor,
            });
        }
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        steps.push(Step::Symlink {
            target: target.to_string(),
            link: dir.join(link),
        });
    }
    steps.push(Step::Mkdir {
        path: dir.join("shm"),
        mode: 0o1777,
        owner: None,
    });
    steps.push(Step::MountPoint { path: dev.clone() });
    steps.push(Step::BindDir {
        source: dir,
        target: dev.clone(),
    });
    if userns {
        // A tmpfs mounted in a user namespace never honours device nodes: bind the host's.
        for &(name, _, _) in DEVICES {
            steps.push(Step::BindDevice {
                source: Path::new("/dev").join(name),
                target: dev.join(name),
            });
        }
    }
    steps.push(Step::Bind {
        source: slot.join("shm"),
        target: dev.join("shm"),
    });
    steps.push(Step::RemountReadOnly {
        target: dev,
        flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
    });
    steps
}

fn proc_steps(slot: &Path, root: &Path) -> Vec<Step> {
    let proc = root.join("proc");
    let mut steps = vec![
        Step::MountPoint { path: proc.clone() },
        Step::Proc {
            target: proc.clone(),
        },
    ];
    for name in MASKED_PROC_FILES {
        steps.push(Step::MaskFile {
            dev_null: root.join("dev/null"),
            target: proc.join(name),
        });
    }
    for name in MASKED_PROC_DIRS {
        steps.push(Step::MaskDir {
            empty: slot.join("empty"),
            target: proc.join(name),
        });
    }
    steps.push(Step::BindReadOnly {
        source: proc.join("sys"),
        target: proc.join("sys"),
    });
    steps
}

/// `path` (absolute, on the host) re-rooted under `root`.
fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// The system calls the plan needs: the real implementation is [`RealSys`]; tests record calls.
pub trait Sys {
    /// `mount(2)`.
    fn mount(
        &mut self,
        src: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()>;
    /// `mount_setattr(2)` on the mount at `target` alone: set the `MOUNT_ATTR_*` bits of `set`,
    /// clear those of `clear`, keep the rest (a flag another namespace locked stays set).
    fn set_mount_attrs(&mut self, target: &Path, set: u64, clear: u64) -> nix::Result<()>;
    /// `mkdir -p` then chmod and optionally chown.
    fn mkdir(&mut self, path: &Path, mode: u32, owner: Option<(u32, u32)>) -> nix::Result<()>;
    /// Create a regular file with these contents, mode and owner (refusing to follow links).
    fn write_file(
        &mut self,
        path: &Path,
        contents: &[u8],
        mode: u32,
        owner: (u32, u32),
    ) -> nix::Result<()>;
    /// `mknod(2)` of a character device, mode 0666.
    fn mknod(&mut self, path: &Path, major: u64, minor: u64) -> nix::Result<()>;
    /// `symlink(2)`.
    fn symlink(&mut self, target: &str, link: &Path) -> nix::Result<()>;
    /// `chdir(2)`.
    fn chdir(&mut self, path: &Path) -> nix::Result<()>;
    /// Whether `path` exists (without following a final symlink).
    fn exists(&mut self, path: &Path) -> bool;
    /// chdir, `pivot_root(".", ".")`, detach the old root, chdir `/`.
    fn pivot_root(&mut self, new_root: &Path) -> nix::Result<()>;
    /// `sethostname(2)`.
    fn sethostname(&mut self, name: &str) -> nix::Result<()>;
}

/// A step that failed, with the step for context.
#[derive(Debug, thiserror::Error)]
#[error("building the container root failed at {step:?}: {errno}")]
pub struct RootfsError {
    /// The failing step.
    pub step: Box<Step>,
    /// The error.
    pub errno: nix::Error,
}

/// Apply every step in order; stop at the first failure.
pub fn apply(steps: &[Step], files: &[Vec<u8>], sys: &mut dyn Sys) -> Result<(), RootfsError> {
    for step in steps {
        apply_one(step, files, sys).map_err(|errno| RootfsError {
            step: Box::new(step.clone()),
            errno,
        })?;
    }
    Ok(())
}

fn apply_one(step: &Step, files: &[Vec<u8>], sys: &mut dyn Sys) -> nix::Result<()> {
    let none: Option<&str> = None;
    match step {
        Step::MakePrivate => sys.mount(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            none,
        ),
        Step::Tmpfs {
            target,
            options,
            flags,
        } => sys.mount(
            Some(Path::new("tmpfs")),
            target,
            Some("tmpfs"),
            *flags,
            Some(options),
        ),
        Step::Mkdir { path, mode, owner } => sys.mkdir(path, *mode, *owner),
        Step::Chdir { path } => sys.chdir(path),
        Step::MountPoint { path } if sys.exists(path) => Ok(()),
        Step::MountPoint { path } => sys.mkdir(path, 0o755, None),
        Step::WriteFile {
            path,
            index,
            mode,
            owner,
        } => {
            let contents = files.get(*index).ok_or(nix::Error::EINVAL)?;
            sys.write_file(path, contents, *mode, *owner)
        }
        Step::Overlay { target, options } => sys.mount(
            Some(Path::new("overlay")),
            target,
            Some("overlay"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options),
        ),
        Step::BindReadOnly { source, target } => {
            bind_read_only(sys, source, target, MsFlags::empty())
        }
        Step::BindDir { source, target } => {
            sys.mount(Some(source), target, None, MsFlags::MS_BIND, none)
        }
        Step::Bind { source, target } => {
            sys.mount(Some(source), target, None, MsFlags::MS_BIND, none)?;
            let flags =
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
            sys.mount(None, target, None, flags, none)
        }
        Step::Proc { target } => sys.mount(
            Some(Path::new("proc")),
            target,
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("hidepid=invisible"),
        ),
        Step::Mknod { path, major, minor } => sys.mknod(path, *major, *minor),
        Step::BindDevice { source, target } => {
            sys.write_file(target, &[], 0o666, (0, 0))?;
            sys.mount(Some(source), target, None, MsFlags::MS_BIND, none)
        }
        Step::Symlink { target, link } => sys.symlink(target, link),
        Step::RemountReadOnly { target, flags } => {
            let set = MOUNT_ATTR_RDONLY | mount_attrs(*flags);
            let clear = (MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC) & !set;
            sys.set_mount_attrs(target, set, clear)
        }
        Step::MaskFile { dev_null, target } if sys.exists(target) => {
            sys.mount(Some(dev_null), target, None, MsFlags::MS_BIND, none)
        }
        Step::MaskDir { empty, target } if sys.exists(target) => {
            bind_read_only(sys, empty, target, MsFlags::MS_NOEXEC)
        }
        Step::MaskFile { .. } | Step::MaskDir { .. } => Ok(()),
        Step::PivotRoot { new_root } => sys.pivot_root(new_root),
        Step::Hostname { name } => sys.sethostname(name),
    }
}

/// Bind-mount `source` on `target`, then remount the bind read-only, nosuid, nodev and `extra`.
fn bind_read_only(
    sys: &mut dyn Sys,
    source: &Path,
    target: &Path,
    extra: MsFlags,
) -> nix::Result<()> {
    let none: Option<&str> = None;
    sys.mount(Some(source), target, None, MsFlags::MS_BIND, none)?;
    let ro = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | extra;
    sys.mount(None, target, None, ro, none)
}

/// `MOUNT_ATTR_*` of `<linux/mount.h>`, for [`Sys::set_mount_attrs`].
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
/// No set-user-ID or set-group-ID execution.
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
/// No device files.
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
/// No execution.
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;

/// The `MOUNT_ATTR_*` bits of the per-mount flags among `flags`.
fn mount_attrs(flags: MsFlags) -> u64 {
    [
        (MsFlags::MS_RDONLY, MOUNT_ATTR_RDONLY),
        (MsFlags::MS_NOSUID, MOUNT_ATTR_NOSUID),
        (MsFlags::MS_NODEV, MOUNT_ATTR_NODEV),
        (MsFlags::MS_NOEXEC, MOUNT_ATTR_NOEXEC),
    ]
    .iter()
    .filter(|(ms, _)| flags.contains(*ms))
    .fold(0, |acc, (_, attr)| acc | attr)
}

mod real;
pub use real::RealSys;

#[cfg(test)]
mod tests;
