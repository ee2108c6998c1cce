//! [`Sys`] on the real kernel. Runs in PID 1 of the job, as root, before any job code.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{chdir, chown, pivot_root, sethostname, Gid, Uid};

use super::Sys;

/// The flags a remount must repeat: in a user namespace, dropping any of them is refused.
fn locked_flags(target: &Path) -> nix::Result<MsFlags> {
    use nix::sys::statvfs::FsFlags;
    let current = nix::sys::statvfs::statvfs(target)?.flags();
    let pairs = [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ];
    Ok(pairs
        .iter()
        .filter(|(st, _)| current.contains(*st))
        .fold(MsFlags::empty(), |acc, (_, ms)| acc | *ms))
}

/// The real system calls.
pub struct RealSys {
    /// The process umask is 0: `mkdir` and `mknod` create exactly the mode asked for.
    umask_cleared: bool,
}

impl RealSys {
    /// The real system calls, after clearing the umask of this process (PID 1, which runs no
    /// job code; the job sets its own), so that directories and device nodes get their modes
    /// without a `chmod` each.
    pub fn new() -> RealSys {
        nix::sys::stat::umask(Mode::empty());
        RealSys {
            umask_cleared: true,
        }
    }
}

impl Default for RealSys {
    fn default() -> RealSys {
        RealSys::new()
    }
}

fn io_errno(e: std::io::Error) -> Errno {
    e.raw_os_error().map(Errno::from_raw).unwrap_or(Errno::EIO)
}

impl Sys for RealSys {
    fn mount(
        &mut self,
        src: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        let flags = if flags.contains(MsFlags::MS_REMOUNT) {
            flags | locked_flags(target)?
        } else {
            flags
        };
        mount(src, target, fstype, flags, data)
    }

    fn set_mount_attrs(&mut self, target: &Path, set: u64, clear: u64) -> nix::Result<()> {
        crate::sys::mount_setattr(target, set, clear)
    }

    fn mkdir(&mut self, path: &Path, mode: u32, owner: Option<(u32, u32)>) -> nix::Result<()> {
        DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .map_err(io_errno)?;
        if !self.umask_cleared {
            // mkdir applies the umask; set the mode exactly (sticky bit included).
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(io_errno)?;
        }
        if let Some((uid, gid)) = owner {
            chown(path, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
        }
        Ok(())
    }

    fn write_file(
        &mut self,
        path: &Path,
        contents: &[u8],
        mode: u32,
        owner: (u32, u32),
    ) -> nix::Result<()> {
        // create_new + O_NOFOLLOW: never write through something that already exists.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(io_errno)?;
        file.write_all(contents).map_err(io_errno)?;
        nix::unistd::fchown(
            &file,
            Some(Uid::from_raw(owner.0)),
            Some(Gid::from_raw(owner.1)),
        )?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io_errno)
    }

    fn mknod(&mut self, path: &Path, major: u64, minor: u64) -> nix::Result<()> {
        mknod(
            path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )?;
        if self.umask_cleared {
            return Ok(());
        }
        // mknod applies the umask.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(io_errno)
    }

    fn symlink(&mut self, target: &str, link: &Path) -> nix::Result<()> {
        std::os::unix::fs::symlink(target, link).map_err(io_errno)
    }

    fn chdir(&mut self, path: &Path) -> nix::Result<()> {
        chdir(path)
    }

    fn exists(&mut self, path: &Path) -> bool {
        path.symlink_metadata().is_ok()
    }

    fn pivot_root(&mut self, new_root: &Path) -> nix::Result<()> {
        chdir(new_root)?;
        // Stack the old root under the new one, then detach it: nothing of the host stays reachable.
        pivot_root(".", ".")?;
        umount2(".", MntFlags::MNT_DETACH)?;
        chdir("/")
    }

    fn sethostname(&mut self, name: &str) -> nix::Result<()> {
        sethostname(name)
    }
}
