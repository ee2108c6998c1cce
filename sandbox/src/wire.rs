//! Messages between the supervisor, the per-slot spawner and the sandbox's PID 1.
//!
//! A frame is a little-endian `u32` length, a JSON header of that length, then raw blobs whose lengths
//! the header lists. File descriptors travel as `SCM_RIGHTS` on the first bytes of a frame. Lengths
//! are capped before anything is allocated.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Largest JSON header accepted (argv, env and file names together).
pub const MAX_HEADER: u32 = 8 << 20;
/// Most descriptors passed with one frame.
pub const MAX_FDS: usize = 8;

/// Rlimits applied to the job process (hard = soft).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Rlimits {
    /// RLIMIT_CPU in seconds: a backstop above the cgroup-enforced CPU limit.
    pub cpu_secs: u64,
    /// RLIMIT_FSIZE.
    pub fsize: u64,
    /// RLIMIT_NOFILE.
    pub nofile: u64,
    /// RLIMIT_STACK.
    pub stack: u64,
    /// RLIMIT_NPROC (per uid; sound because every slot has its own uid).
    pub nproc: u64,
}

/// Metadata of one input file; its bytes follow the header in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileMeta {
    /// Plain name inside the working directory.
    pub name: String,
    /// Permission bits.
    pub mode: u32,
    /// Byte length of the blob.
    pub len: u64,
}

/// Everything PID 1 needs to build the container and start the job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRequest {
    /// Command, `argv[0]` looked up in PATH when it has no `/`.
    pub argv: Vec<String>,
    /// Complete environment of the job.
    pub env: Vec<(String, String)>,
    /// Input files (blobs follow the header).
    pub files: Vec<FileMeta>,
    /// Image layers, lowest first.
    pub layers: Vec<PathBuf>,
    /// Host directories bind-mounted read-only at the same path.
    pub host_binds: Vec<PathBuf>,
    /// Host directory (private to the job's mount namespace) where its tmpfs is mounted.
    pub slot_dir: PathBuf,
    /// Unprivileged uid and gid of the slot.
    pub uid: u32,
    /// Group id of the slot.
    pub gid: u32,
    /// Rlimits of the job.
    pub rlimits: Rlimits,
    /// Job tmpfs size in bytes.
    pub disk_bytes: u64,
    /// Job tmpfs inode count.
    pub disk_inodes: u64,
    /// Private network namespace with loopback up and TCP allowed.
    pub network: bool,
    /// Files to read back from the working directory after the job.
    pub collect: Vec<String>,
    /// Cap per collected file.
    pub collect_max_bytes: u64,
    /// Refuse to run unless Landlock is fully enforced.
    pub require_landlock: bool,
    /// Run PID 1 in a new user namespace where root is this unprivileged host uid (and gid); the
    /// job's uid maps to itself. `None`: no user namespace.
    pub userns_root: Option<u32>,
}

/// What a container's root and namespaces depend on: two requests with equal keys can use the
/// same prepared root (see `spawner`). Everything else of a request (command, environment, input
/// files, rlimits, files to collect) is applied only after the root is in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootKey {
    layers: Vec<PathBuf>,
    host_binds: Vec<PathBuf>,
    slot_dir: PathBuf,
    ids: (u32, u32),
    disk: (u64, u64),
    network: bool,
    userns_root: Option<u32>,
}

impl JobRequest {
    /// The part of the request that shapes the root.
    pub fn root_key(&self) -> RootKey {
        RootKey {
            layers: self.layers.clone(),
            host_binds: self.host_binds.clone(),
            slot_dir: self.slot_dir.clone(),
            ids: (self.uid, self.gid),
            disk: (self.disk_bytes, self.disk_inodes),
            network: self.network,
            userns_root: self.userns_root,
        }
    }
}

/// Supervisor to spawner, once, first: how to place itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpawnerSetup {
    /// Files to write "0" to, joining the slot's cgroups.
    pub cgroup_files: Vec<PathBuf>,
    /// Where the slot's persistent network namespace is pinned; `None`: a fresh one for the
    /// spawner's lifetime.
    pub netns: Option<PathBuf>,
}

/// Spawner to supervisor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SpawnerMsg {
    /// The spawner is up; its pid (to place it in the slot cgroup).
    Ready { pid: u32 },
    /// PID 1 of the job was created; its pidfd comes with this frame.
    Started { pid: u32 },
    /// PID 1 could not be created.
    Failed { error: String },
    /// PID 1 was reaped with this raw wait status. `prepared` is the pid of the PID 1 the spawner
    /// then started for the slot's next job (its root built ahead, waiting for a request), which
    /// lives in the slot's cgroup beside the spawner.
    Exited { status: i32, prepared: Option<u32> },
}

/// How the job process ended, as PID 1 saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobExit {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

/// A file PID 1 read back; its bytes follow the header when `len` is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileReport {
    /// Name asked for.
    pub name: String,
    /// Mode bits found.
    pub mode: u32,
    /// Length of the blob that follows, or why the file was refused.
    pub len: Result<u64, String>,
}

/// PID 1 to supervisor, written once just before PID 1 exits.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// How the job ended; `None` when it never started.
    pub exit: Option<JobExit>,
    /// Corral failed to build the container (an internal error).
    pub setup_error: Option<String>,
    /// The command could not be executed (not found, not executable): the job's own error.
    pub exec_error: Option<String>,
    /// Files read back.
    pub files: Vec<FileReport>,
}

/// Write one frame on a plain stream (no descriptors).
pub fn write_frame<T: Serialize>(
    w: &mut impl Write,
    header: &T,
    blobs: &[&[u8]],
) -> io::Result<()> {
    let json = serde_json::to_vec(header).map_err(io::Error::other)?;
    let len = u32::try_from(json.len()).map_err(io::Error::other)?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(&json)?;
    for blob in blobs {
        w.write_all(blob)?;
    }
    w.flush()
}

/// Read one frame's header from a plain stream; `Ok(None)` on a clean end of file.
pub fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    read_header(r, u32::from_le_bytes(len)).map(Some)
}

fn read_header<T: DeserializeOwned>(r: &mut impl Read, len: u32) -> io::Result<T> {
    if len > MAX_HEADER {
        return Err(io::Error::other(format!(
            "frame header of {len} bytes is over the cap"
        )));
    }
    let mut json = vec![0u8; len as usize];
    r.read_exact(&mut json)?;
    serde_json::from_slice(&json).map_err(io::Error::other)
}

/// Read a blob of `len` bytes, refusing lengths over `cap`.
pub fn read_blob(r: &mut impl Read, len: u64, cap: u64) -> io::Result<Vec<u8>> {
    if len > cap {
        return Err(io::Error::other(format!(
            "blob of {len} bytes is over the cap of {cap}"
        )));
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

/// Send a frame on a unix socket with descriptors attached to its first bytes.
pub fn send_frame<T: Serialize>(
    sock: &mut UnixStream,
    header: &T,
    blobs: &[&[u8]],
    fds: &[RawFd],
) -> io::Result<()> {
    let json = serde_json::to_vec(header).map_err(io::Error::other)?;
    let len = u32::try_from(json.len())
        .map_err(io::Error::other)?
        .to_le_bytes();
    let iov = [IoSlice::new(&len)];
    let cmsgs: &[ControlMessage<'_>] = &[ControlMessage::ScmRights(fds)];
    let cmsgs = if fds.is_empty() { &[][..] } else { cmsgs };
    let sent = sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    sock.write_all(&len[sent..])?;
    sock.write_all(&json)?;
    for blob in blobs {
        sock.write_all(blob)?;
    }
    Ok(())
}

/// Receive a frame's header and the descriptors sent with it; `Ok(None)` on a clean end of file.
pub fn recv_frame<T: DeserializeOwned>(
    sock: &mut UnixStream,
) -> io::Result<Option<(T, Vec<OwnedFd>)>> {
    let mut len = [0u8; 4];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (got, fds) = {
        let mut iov = [IoSliceMut::new(&mut len)];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                fds.extend(raw.into_iter().map(crate::sys::adopt_received_fd));
            }
        }
        (msg.bytes, fds)
    };
    if got == 0 {
        return Ok(None);
    }
    sock.read_exact(&mut len[got..])?;
    let header = read_header(sock, u32::from_le_bytes(len))?;
    Ok(Some((header, fds)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip_with_blobs() {
        let mut buf = Vec::new();
        let report = Report {
            exit: Some(JobExit::Code(3)),
            ..Report::default()
        };
        write_frame(&mut buf, &report, &[b"abc"]).unwrap();
        let mut r = &buf[..];
        let back: Report = read_frame(&mut r).unwrap().unwrap();
        assert_eq!(back.exit, Some(JobExit::Code(3)));
        assert_eq!(read_blob(&mut r, 3, 10).unwrap(), b"abc");
        assert!(read_frame::<Report>(&mut r).unwrap().is_none());
    }

    #[test]
    fn oversized_header_and_blob_are_refused() {
        let mut buf = (MAX_HEADER + 1).to_le_bytes().to_vec();
        buf.extend_from_slice(b"{}");
        assert!(read_frame::<Report>(&mut &buf[..]).is_err());
        assert!(read_blob(&mut &b"abcdef"[..], 6, 5).is_err());
    }

    #[test]
    fn socket_frame_carries_descriptors() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        send_frame(
            &mut a,
            &SpawnerMsg::Started { pid: 7 },
            &[b"xy"],
            &[w.as_raw_fd()],
        )
        .unwrap();
        drop(w);
        let (msg, fds): (SpawnerMsg, _) = recv_frame(&mut b).unwrap().unwrap();
        assert!(matches!(msg, SpawnerMsg::Started { pid: 7 }));
        assert_eq!(fds.len(), 1);
        let mut file = std::fs::File::from(fds.into_iter().next().unwrap());
        file.write_all(b"hi").unwrap();
        drop(file);
        let mut out = String::new();
        std::fs::File::from(r).read_to_string(&mut out).unwrap();
        assert_eq!(out, "hi");
        assert_eq!(read_blob(&mut b, 2, 2).unwrap(), b"xy");
    }
}
