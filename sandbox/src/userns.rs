//! The sync pipe a freshly cloned PID 1 waits on until its parent has set it up, and the optional
//! user namespace set up that way. The parent (spawner, or the process itself in in-process mode)
//! places PID 1 in the slot's cgroups when it is not there already and writes its maps, then
//! releases it: container root is an unprivileged host uid of its own, the job's uid maps to
//! itself, and nothing else is mapped.

use std::os::fd::OwnedFd;

use nix::unistd::Pid;

use crate::wire::JobRequest;

/// The two ends of the pipe PID 1 waits on until its maps are written.
pub struct SyncPipe {
    /// Kept by PID 1.
    pub wait: OwnedFd,
    /// Kept by the parent.
    pub release: OwnedFd,
}

/// A sync pipe when `req` asks for a user namespace (PID 1 waits until its maps are written).
pub fn sync_pipe(req: &JobRequest) -> Result<Option<SyncPipe>, String> {
    if req.userns_root.is_none() {
        return Ok(None);
    }
    let (wait, release) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("sync pipe: {e}"))?;
    Ok(Some(SyncPipe { wait, release }))
}

/// In the parent: write PID 1's maps (with a user namespace), then release it.
pub fn map_and_release(req: &JobRequest, pid: Pid, sync: SyncPipe) -> Result<(), String> {
    drop(sync.wait);
    if let Some(root) = req.userns_root {
        let write = |name: &str, contents: String| {
            let path = format!("/proc/{pid}/{name}");
            std::fs::write(&path, contents).map_err(|e| format!("writing {path}: {e}"))
        };
        write("uid_map", format!("0 {root} 1\n{0} {0} 1\n", req.uid))?;
        write("gid_map", format!("0 {root} 1\n{0} {0} 1\n", req.gid))?;
    }
    let mut release = std::fs::File::from(sync.release);
    std::io::Write::write_all(&mut release, b"1").map_err(|e| format!("releasing PID 1: {e}"))
}

/// In PID 1: wait until the parent placed it and wrote the maps (end of file without a byte: it
/// failed), then, in a user namespace, become its root: until then PID 1 still holds the host's
/// (unmapped) root ids.
pub fn wait_for_release(req: &JobRequest, sync: Option<OwnedFd>) -> Result<(), String> {
    let Some(fd) = sync else { return Ok(()) };
    let mut byte = [0u8; 1];
    if !matches!(
        std::io::Read::read(&mut std::fs::File::from(fd), &mut byte),
        Ok(1)
    ) {
        return Err("the parent did not set up PID 1".to_string());
    }
    if req.userns_root.is_none() {
        return Ok(());
    }
    let root_gid = nix::unistd::Gid::from_raw(0);
    let root_uid = nix::unistd::Uid::from_raw(0);
    nix::unistd::setresgid(root_gid, root_gid, root_gid)
        .map_err(|e| format!("setresgid in user namespace: {e}"))?;
    nix::unistd::setresuid(root_uid, root_uid, root_uid)
        .map_err(|e| format!("setresuid in user namespace: {e}"))?;
    nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups in user namespace: {e}"))
}
