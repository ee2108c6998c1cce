//! Thin wrappers over the system calls that `nix` does not cover safely. This is the only module of
//! Corral with `unsafe`; every block names the invariants it relies on.
//!
//! Each wrapper turns the raw return value into a `nix::Result`, so callers attach their own context.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::unistd::Pid;

/// What a fork-like `clone` returned.
pub enum CloneResult {
    /// In the parent: the child's pid and a pidfd for it.
    Parent { pid: Pid, pidfd: OwnedFd },
    /// In the child.
    Child,
}

/// `clone(2)` without a new stack (fork semantics) with extra namespace flags and `CLONE_PIDFD`.
///
/// # Safety
///
/// Same contract as `fork(2)`: the calling process must be single-threaded, or the child must only
/// call async-signal-safe functions until it execs or exits. Corral calls it only from the spawner,
/// which is a single-threaded process.
pub unsafe fn clone_with_pidfd(ns_flags: libc::c_int) -> nix::Result<CloneResult> {
    let mut pidfd: libc::c_int = -1;
    let flags = (ns_flags | libc::CLONE_PIDFD | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: a null stack pointer gives fork semantics (the child runs on a copy-on-write copy of the
    // parent's stack); `pidfd` is a valid out-pointer for CLONE_PIDFD; the caller upholds the
    // fork-safety contract documented above.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            std::ptr::null_mut::<libc::c_void>(),
            &mut pidfd as *mut libc::c_int,
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    };
    match ret {
        -1 => Err(Errno::last()),
        0 => Ok(CloneResult::Child),
        pid => {
            // SAFETY: the kernel returned a fresh pidfd that nothing else owns.
            let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
            Ok(CloneResult::Parent {
                pid: Pid::from_raw(pid as libc::pid_t),
                pidfd,
            })
        }
    }
}

/// `fork(2)` after the caller checked, from /proc/self/status, that it has a single thread.
///
/// Safe to call because a process with one thread cannot have another thread holding a lock (the
/// allocator's included) at the moment of the fork; the caller does the check right before.
pub(crate) fn fork_single_threaded() -> nix::Result<nix::unistd::ForkResult> {
    // SAFETY: see above; the only caller checks the thread count immediately before.
    unsafe { nix::unistd::fork() }
}

/// A null-terminated array of pointers to `strings`, for [`execve`], built ahead so the call
/// itself allocates nothing.
pub struct ExecArray<'a> {
    ptrs: Vec<*const libc::c_char>,
    _strings: std::marker::PhantomData<&'a CStr>,
}

impl<'a> ExecArray<'a> {
    pub fn new(strings: &'a [std::ffi::CString]) -> ExecArray<'a> {
        let mut ptrs: Vec<*const libc::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        ExecArray {
            ptrs,
            _strings: std::marker::PhantomData,
        }
    }
}

/// `execve(2)` with arrays built ahead: no allocation between the caller and the kernel. Returns
/// only on failure.
pub fn execve(path: &CStr, argv: &ExecArray<'_>, envp: &ExecArray<'_>) -> Errno {
    // SAFETY: `path` and every pointer of both arrays point to NUL-terminated strings borrowed for
    // the arrays' lifetime, and both arrays end with a null pointer.
    unsafe { libc::execve(path.as_ptr(), argv.ptrs.as_ptr(), envp.ptrs.as_ptr()) };
    Errno::last()
}

/// Stack of a child started by [`spawn_shared_vm`]: it runs the job's set-up code (Landlock and
/// seccomp included) until exec. Only the pages it touches are ever allocated.
const SHARED_VM_STACK: usize = 1 << 20;

/// Start a child process that shares this process's memory until it execs or exits
/// (`CLONE_VM | CLONE_VFORK`, on a stack of its own, as glibc's `posix_spawn` does) and run `child`
/// in it. This process is suspended until then, so nothing runs concurrently in the shared memory;
/// and no page table is copied, nor any page copied on write afterwards, which a `fork` of a large
/// process pays for on both sides. The child has its own descriptor table, credentials, signal
/// dispositions and namespaces, as after a fork.
///
/// # Safety
///
/// The calling process must be single-threaded (a lock another thread holds would be held in the
/// child too). `child` must end in `execve` or `_exit` (or return its exit status), must not
/// unwind, and must take nothing out of the parent's data that the parent relies on (it may
/// allocate).
pub unsafe fn spawn_shared_vm(child: &mut dyn FnMut() -> libc::c_int) -> nix::Result<Pid> {
    extern "C" fn trampoline(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` points to the `&mut dyn FnMut` below, alive in the suspended parent's
        // frame for as long as this child runs.
        let child = unsafe { &mut *arg.cast::<&mut dyn FnMut() -> libc::c_int>() };
        child()
    }
    // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            SHARED_VM_STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    // The lowest page is a guard: an overflow faults instead of writing below the stack.
    // SAFETY: the first page of the mapping just made.
    let guarded = unsafe { libc::mprotect(stack, 4096, libc::PROT_NONE) };
    let mut child = child;
    let result = if guarded == 0 {
        // SAFETY: the stack grows down from the end of the mapping (16-byte aligned, as the ABI
        // wants); CLONE_VFORK keeps this frame (and `child`) alive until the child execs or exits.
        Errno::result(unsafe {
            libc::clone(
                trampoline,
                stack.cast::<u8>().add(SHARED_VM_STACK).cast(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                (&mut child as *mut &mut dyn FnMut() -> libc::c_int).cast(),
            )
        })
        .map(Pid::from_raw)
    } else {
        Err(Errno::last())
    };
    // SAFETY: the child has exec'd or exited: nothing runs on this stack any more.
    unsafe { libc::munmap(stack, SHARED_VM_STACK) };
    result
}

/// `pidfd_send_signal(2)`: signal a process through its pidfd, with no pid-reuse race.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: libc::c_int) -> nix::Result<()> {
    // SAFETY: plain syscall with an fd we borrow and null siginfo; no memory is handed over.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    Errno::result(ret).map(drop)
}

/// `openat2(2)` with the given flags and resolve flags; mode 0.
pub fn openat2(dir: BorrowedFd<'_>, path: &CStr, flags: u64, resolve: u64) -> nix::Result<OwnedFd> {
    /// `struct open_how` of openat2(2) (libc's is non-exhaustive).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags,
        mode: 0,
        resolve,
    };
    // SAFETY: `path` is a valid NUL-terminated string and `how` a valid open_how whose size we pass;
    // both outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    let fd = Errno::result(ret)?;
    // SAFETY: the kernel returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `mount_setattr(2)` (Linux 5.12+) on the mount at `target` alone (not recursive, following no
/// final symlink): set the `MOUNT_ATTR_*` bits of `set` and clear those of `clear`.
pub fn mount_setattr(target: &std::path::Path, set: u64, clear: u64) -> nix::Result<()> {
    /// `struct mount_attr` of `<linux/mount.h>` (its first, 32-byte version).
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let path = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str()))
        .map_err(|_| nix::Error::EINVAL)?;
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: a NUL-terminated path and a mount_attr of the size passed, both outliving the call.
    #[allow(unsafe_code)]
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    nix::Error::result(ret).map(drop)
}

/// Close every file descriptor from `first` upwards (`close_range(2)`).
pub fn close_from(first: u32) -> nix::Result<()> {
    // SAFETY: closing descriptors is memory-safe; callers invoke it in a freshly forked child that
    // owns no Rust objects wrapping those descriptors that it will use afterwards.
    let ret = unsafe { libc::close_range(first, u32::MAX, 0) };
    Errno::result(ret).map(drop)
}

/// Close every descriptor except those in `keep`.
pub fn close_all_except(keep: &[RawFd]) -> nix::Result<()> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok())
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut first = 0u32;
    for fd in keep.into_iter().chain(std::iter::once(u32::MAX)) {
        if fd > first {
            // SAFETY: closing descriptors is memory-safe; callers invoke it first thing in a freshly
            // cloned child that owns no Rust object wrapping the closed descriptors.
            let ret = unsafe { libc::close_range(first, fd - 1, 0) };
            Errno::result(ret)?;
        }
        first = fd.saturating_add(1);
    }
    Ok(())
}

/// Drop every capability from the bounding set (needs CAP_SETPCAP, so call it before dropping uid).
/// Only those still in it: reading a bit is cheap, while each drop replaces the process's
/// credentials (the spawner drops them once, so a job cloned from it usually has none left).
pub fn drop_bounding_set() -> nix::Result<()> {
    for cap in 0..=63 {
        // SAFETY: prctl with integer arguments only.
        let held = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) };
        match held {
            0 => continue,
            -1 if Errno::last() == Errno::EINVAL => break,
            -1 => return Err(Errno::last()),
            _ => {}
        }
        // SAFETY: prctl with integer arguments only.
        let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if ret == -1 {
            match Errno::last() {
                // Past the last capability this kernel knows.
                Errno::EINVAL => break,
                e => return Err(e),
            }
        }
    }
    Ok(())
}

/// Clear the effective, permitted and inheritable capability sets and the ambient set.
pub fn clear_capabilities() -> nix::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let ret = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    Errno::result(ret)?;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: header and data have the layout capset(2) expects for version 3 (two data structs)
    // and outlive the call.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) };
    Errno::result(ret).map(drop)
}

/// Bring the loopback interface of the current network namespace up.
pub fn loopback_up() -> nix::Result<()> {
    // SAFETY: creating a socket has no memory-safety preconditions.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    let fd = Errno::result(raw)?;
    // SAFETY: `fd` is a fresh descriptor we own from here on.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq that outlives the call; SIOCGIFFLAGS fills ifru_flags.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: reading the union field SIOCGIFFLAGS just wrote.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: as above; SIOCSIFFLAGS reads ifru_flags.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) }).map(drop)
}

/// `dup2(2)` by number: make `fd` also descriptor `target` (without close-on-exec).
///
/// Only for a child about to exec, which owns its whole descriptor table: whatever `target` was is
/// replaced. Async-signal-safe, so usable from `Command::pre_exec`.
pub(crate) fn dup2_raw(fd: RawFd, target: RawFd) -> nix::Result<()> {
    // SAFETY: dup2 only manipulates the descriptor table; the caller owns `target` per the contract.
    Errno::result(unsafe { libc::dup2(fd, target) }).map(drop)
}

/// `fcntl(F_DUPFD_CLOEXEC)` by number: a new owned copy of `fd`.
pub(crate) fn dup_cloexec_raw(fd: RawFd) -> nix::Result<OwnedFd> {
    // SAFETY: fcntl with integer arguments; a negative or closed fd yields EBADF.
    let new = Errno::result(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) })?;
    // SAFETY: the kernel returned a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Like [`dup2_raw`] but the new descriptor is close-on-exec (`dup3(O_CLOEXEC)`).
pub(crate) fn dup3_cloexec_raw(fd: RawFd, target: RawFd) -> nix::Result<()> {
    // SAFETY: as for dup2_raw.
    Errno::result(unsafe { libc::dup3(fd, target, libc::O_CLOEXEC) }).map(drop)
}

/// Write `msg` to the descriptor `fd` (best effort) and `_exit(code)` without running any atexit
/// handler or destructor: the end of a forked child that failed before exec.
pub(crate) fn write_and_exit(fd: RawFd, msg: &[u8], code: i32) -> ! {
    // SAFETY: write reads `msg.len()` bytes from a live slice.
    unsafe { libc::write(fd, msg.as_ptr().cast(), msg.len()) };
    exit_now(code)
}

/// `_exit(code)`: end a forked process without atexit handlers or destructors.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions and never returns.
    unsafe { libc::_exit(code) }
}

/// Run `f` in the child of a fresh `Command` before exec.
///
/// # Safety
///
/// `f` must be async-signal-safe (it runs between fork and exec in a possibly multi-threaded parent).
pub unsafe fn pre_exec<F>(cmd: &mut std::process::Command, f: F)
where
    F: FnMut() -> std::io::Result<()> + Send + Sync + 'static,
{
    use std::os::unix::process::CommandExt;
    // SAFETY: forwarded to the caller's contract.
    unsafe {
        cmd.pre_exec(f);
    }
}

/// Take ownership of a descriptor the kernel just installed through `SCM_RIGHTS`.
///
/// Only for descriptors received that way: nothing else in the process refers to them yet.
pub(crate) fn adopt_received_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: per the contract above, `fd` is open and owned by no other object.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Restore every signal disposition to its default and unblock all signals, so the job does not
/// inherit the supervisor's ignored SIGPIPE or any mask.
pub fn reset_signals() -> nix::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for signal in Signal::iterator() {
        if matches!(signal, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: installing SIG_DFL runs no handler code, so no async-signal-safety concern.
        unsafe { sigaction(signal, &default) }?;
    }
    nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&SigSet::empty()),
        None,
    )
}
