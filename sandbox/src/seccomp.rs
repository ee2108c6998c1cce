//! The job's seccomp-bpf filters, compiled with `seccompiler` and installed last, right before
//! `execve` (SANDBOX.md step 17).
//!
//! One filter, built by [`bpf`] as a binary search over system call numbers:
//!
//! - A non-native architecture (`int 0x80`, the i386 ABI) kills the process.
//! - The **allowlist**: the x86_64 system calls an ordinary program, compiler or language runtime
//!   uses are allowed.
//! - The **denylist**: the calls that are attack surface fail with `EPERM`: io_uring, bpf,
//!   perf_event_open, keys, userfaultfd, every mount call old and new, namespaces (`unshare`,
//!   `setns`, `clone` with any `CLONE_NEW*` flag), ptrace and cross-process memory, kernel, clock
//!   and swap administration, `personality` other than the plain Linux personas, sockets other
//!   than unix/inet/inet6 (AF_NETLINK, AF_PACKET, AF_VSOCK, ...), and the `TIOCSTI`/`TIOCLINUX`
//!   ioctls (compared as 32 bits, as the kernel reads the command).
//! - Everything else (new or exotic system calls, the x32 ABI, `clone3`) fails with `ENOSYS`, which
//!   makes libcs fall back (glibc retries `clone3` as `clone`).
//!
//! Calls allowed without argument conditions are cached by the kernel per system call number, so
//! the filter costs nothing on the hot path of ordinary programs.

mod bpf;

use std::sync::OnceLock;

use seccompiler::BpfProgram;

use bpf::Rule;

/// Failure to build or install the filters.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The kernel refused the filter.
    #[error("installing the seccomp filter: {0}")]
    Install(seccompiler::Error),
    /// This build only knows the x86_64 system call table.
    #[error("seccomp filters exist only for x86_64 in this build")]
    UnsupportedArch,
}

/// The compiled filter.
#[derive(Debug, Clone)]
pub struct Filters {
    program: BpfProgram,
}

impl Filters {
    /// BPF instructions (for tests and logs).
    pub fn instructions(&self) -> usize {
        self.program.len()
    }
}

/// The filter, compiled once per process. Every job gets the same one (networking is granted by
/// Landlock and the network namespace, not here: sockets are limited to unix/inet/inet6 either
/// way). The spawner compiles it at start-up, so the PID 1s and jobs it clones inherit it built.
pub fn filter() -> Result<&'static Filters, SeccompError> {
    static FILTER: OnceLock<Filters> = OnceLock::new();
    if let Some(filters) = FILTER.get() {
        return Ok(filters);
    }
    let filters = compile()?;
    Ok(FILTER.get_or_init(|| filters))
}

/// Compile the filter.
pub fn compile() -> Result<Filters, SeccompError> {
    if !cfg!(target_arch = "x86_64") {
        return Err(SeccompError::UnsupportedArch);
    }
    let mut rules: Vec<(u32, Rule)> = allowlist()
        .into_iter()
        .map(|nr| (nr as u32, Rule::Allow))
        .chain(
            DENIED
                .iter()
                .map(|&nr| (nr as u32, Rule::Errno(libc::EPERM))),
        )
        .filter(|(nr, _)| !ARGUMENT_RULES.iter().any(|(a, _)| *a as u32 == *nr))
        .chain(ARGUMENT_RULES.iter().map(|&(nr, rule)| (nr as u32, rule)))
        .collect();
    rules.sort_unstable_by_key(|(nr, _)| *nr);
    Ok(Filters {
        program: bpf::program(&rules, Rule::Errno(libc::ENOSYS)),
    })
}

/// Install the filter on the calling thread. `no_new_privs` must already be set.
pub fn install(filters: &Filters) -> Result<(), SeccompError> {
    seccompiler::apply_filter(&filters.program).map_err(SeccompError::Install)
}

// x86_64 system call numbers that the libc crate does not name yet.
const SYS_IO_PGETEVENTS: i64 = 333;
const SYS_CACHESTAT: i64 = 451;
const SYS_MAP_SHADOW_STACK: i64 = 453;
const SYS_FUTEX_WAKE: i64 = 454;
const SYS_FUTEX_WAIT: i64 = 455;
const SYS_FUTEX_REQUEUE: i64 = 456;
const SYS_STATMOUNT: i64 = 457;
const SYS_LISTMOUNT: i64 = 458;
const SYS_SETXATTRAT: i64 = 463;
const SYS_GETXATTRAT: i64 = 464;
const SYS_LISTXATTRAT: i64 = 465;
const SYS_REMOVEXATTRAT: i64 = 466;
const SYS_OPEN_TREE_ATTR: i64 = 467;

/// System calls allowed without conditions by the first filter. `clone`, `socket`, `ioctl` and
/// `personality` are here too: the denylist restricts their arguments.
#[rustfmt::skip]
fn allowlist() -> Vec<i64> {
    use libc::*;
    let mut list: Vec<i64> = vec![
        // Files and directories.
        SYS_read, SYS_write, SYS_open, SYS_openat, SYS_openat2, SYS_close, SYS_close_range,
        SYS_creat, SYS_stat, SYS_fstat, SYS_lstat, SYS_newfstatat, SYS_statx, SYS_statfs,
        SYS_fstatfs, SYS_lseek, SYS_pread64, SYS_pwrite64, SYS_readv, SYS_writev, SYS_preadv,
        SYS_pwritev, SYS_preadv2, SYS_pwritev2, SYS_access, SYS_faccessat, SYS_faccessat2,
        SYS_dup, SYS_dup2, SYS_dup3, SYS_fcntl, SYS_flock, SYS_fsync, SYS_fdatasync, SYS_sync,
        SYS_syncfs, SYS_sync_file_range, SYS_truncate, SYS_ftruncate, SYS_fallocate,
        SYS_fadvise64, SYS_readahead, SYS_getdents, SYS_getdents64, SYS_getcwd, SYS_chdir,
        SYS_fchdir, SYS_rename, SYS_renameat, SYS_renameat2, SYS_mkdir, SYS_mkdirat, SYS_rmdir,
        SYS_link, SYS_linkat, SYS_unlink, SYS_unlinkat, SYS_symlink, SYS_symlinkat,
        SYS_readlink, SYS_readlinkat, SYS_chmod, SYS_fchmod, SYS_fchmodat, SYS_fchmodat2,
        SYS_chown, SYS_fchown, SYS_lchown, SYS_fchownat, SYS_umask, SYS_mknod, SYS_mknodat,
        SYS_utime, SYS_utimes, SYS_utimensat, SYS_futimesat, SYS_sendfile, SYS_splice, SYS_tee,
        SYS_vmsplice, SYS_copy_file_range, SYS_getxattr, SYS_lgetxattr, SYS_fgetxattr,
        SYS_setxattr, SYS_lsetxattr, SYS_fsetxattr, SYS_listxattr, SYS_llistxattr,
        SYS_flistxattr, SYS_removexattr, SYS_lremovexattr, SYS_fremovexattr, SYS_SETXATTRAT,
        SYS_GETXATTRAT, SYS_LISTXATTRAT, SYS_REMOVEXATTRAT, SYS_inotify_init,
        SYS_inotify_init1, SYS_inotify_add_watch, SYS_inotify_rm_watch, SYS_ioctl,
        SYS_memfd_create, SYS_CACHESTAT,
        // Pipes, polling, events, timers.
        SYS_pipe, SYS_pipe2, SYS_poll, SYS_ppoll, SYS_select, SYS_pselect6, SYS_epoll_create,
        SYS_epoll_create1, SYS_epoll_ctl, SYS_epoll_wait, SYS_epoll_pwait, SYS_epoll_pwait2,
        SYS_eventfd, SYS_eventfd2, SYS_signalfd, SYS_signalfd4, SYS_timerfd_create,
        SYS_timerfd_settime, SYS_timerfd_gettime, SYS_timer_create, SYS_timer_settime,
        SYS_timer_gettime, SYS_timer_getoverrun, SYS_timer_delete, SYS_nanosleep,
        SYS_clock_nanosleep, SYS_clock_gettime, SYS_clock_getres, SYS_gettimeofday, SYS_time,
        SYS_times, SYS_alarm, SYS_getitimer, SYS_setitimer, SYS_pause,
        // Asynchronous I/O (not io_uring).
        SYS_io_setup, SYS_io_destroy, SYS_io_submit, SYS_io_cancel, SYS_io_getevents,
        SYS_IO_PGETEVENTS,
        // Memory.
        SYS_brk, SYS_mmap, SYS_munmap, SYS_mremap, SYS_mprotect, SYS_madvise, SYS_msync,
        SYS_mincore, SYS_mlock, SYS_mlock2, SYS_munlock, SYS_mlockall, SYS_munlockall,
        SYS_remap_file_pages, SYS_membarrier, SYS_pkey_alloc, SYS_pkey_free, SYS_pkey_mprotect,
        SYS_get_mempolicy, SYS_set_mempolicy, SYS_mbind, SYS_mseal, SYS_MAP_SHADOW_STACK,
        // Processes, threads, signals.
        SYS_clone, SYS_fork, SYS_vfork, SYS_execve, SYS_execveat, SYS_exit, SYS_exit_group,
        SYS_wait4, SYS_waitid, SYS_kill, SYS_tkill, SYS_tgkill, SYS_rt_sigaction,
        SYS_rt_sigprocmask, SYS_rt_sigreturn, SYS_rt_sigpending, SYS_rt_sigtimedwait,
        SYS_rt_sigsuspend, SYS_rt_sigqueueinfo, SYS_rt_tgsigqueueinfo, SYS_sigaltstack,
        SYS_restart_syscall, SYS_pidfd_open, SYS_pidfd_send_signal, SYS_futex, SYS_futex_waitv,
        SYS_FUTEX_WAKE, SYS_FUTEX_WAIT, SYS_FUTEX_REQUEUE, SYS_set_robust_list,
        SYS_get_robust_list, SYS_set_tid_address, SYS_rseq, SYS_arch_prctl, SYS_prctl,
        SYS_personality, SYS_seccomp,
        // Identity and limits (all unprivileged: the job holds no capability).
        SYS_getpid, SYS_getppid, SYS_gettid, SYS_getuid, SYS_geteuid, SYS_getgid, SYS_getegid,
        SYS_getresuid, SYS_getresgid, SYS_getgroups, SYS_setuid, SYS_setgid, SYS_setreuid,
        SYS_setregid, SYS_setresuid, SYS_setresgid, SYS_setfsuid, SYS_setfsgid, SYS_setgroups,
        SYS_getpgid, SYS_setpgid, SYS_getpgrp, SYS_getsid, SYS_setsid, SYS_capget, SYS_capset,
        SYS_getrlimit, SYS_setrlimit, SYS_prlimit64, SYS_getrusage, SYS_getpriority,
        SYS_setpriority, SYS_ioprio_get, SYS_ioprio_set, SYS_uname, SYS_sysinfo, SYS_getcpu,
        SYS_getrandom, SYS_sched_yield, SYS_sched_getaffinity, SYS_sched_setaffinity,
        SYS_sched_getparam, SYS_sched_setparam, SYS_sched_getscheduler,
        SYS_sched_setscheduler, SYS_sched_getattr, SYS_sched_setattr,
        SYS_sched_get_priority_max, SYS_sched_get_priority_min, SYS_sched_rr_get_interval,
        SYS_landlock_create_ruleset, SYS_landlock_add_rule, SYS_landlock_restrict_self,
        // Sockets (families restricted by the denylist) and System V IPC (private namespace).
        SYS_socket, SYS_socketpair, SYS_bind, SYS_listen, SYS_accept, SYS_accept4, SYS_connect,
        SYS_getsockname, SYS_getpeername, SYS_sendto, SYS_recvfrom, SYS_sendmsg, SYS_recvmsg,
        SYS_sendmmsg, SYS_recvmmsg, SYS_shutdown, SYS_setsockopt, SYS_getsockopt, SYS_shmget,
        SYS_shmat, SYS_shmdt, SYS_shmctl, SYS_semget, SYS_semop, SYS_semtimedop, SYS_semctl,
        SYS_msgget, SYS_msgsnd, SYS_msgrcv, SYS_msgctl, SYS_mq_open, SYS_mq_unlink,
        SYS_mq_timedsend, SYS_mq_timedreceive, SYS_mq_notify, SYS_mq_getsetattr,
    ];
    list.sort_unstable();
    list.dedup();
    list
}

/// System calls denied outright by the second filter.
const DENIED: &[i64] = &[
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_userfaultfd,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_open_tree,
    SYS_OPEN_TREE_ATTR,
    libc::SYS_move_mount,
    libc::SYS_mount_setattr,
    SYS_STATMOUNT,
    SYS_LISTMOUNT,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_process_madvise,
    libc::SYS_pidfd_getfd,
    libc::SYS_kcmp,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_sethostname,
    libc::SYS_setdomainname,
    libc::SYS_syslog,
    libc::SYS_quotactl,
    libc::SYS_quotactl_fd,
    libc::SYS_vhangup,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_modify_ldt,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_fanotify_init,
    libc::SYS_uselib,
    libc::SYS_lookup_dcookie,
    libc::SYS_migrate_pages,
    libc::SYS_move_pages,
];

/// Every `CLONE_NEW*` flag (and `CLONE_NEWTIME`): `clone` with any of them is denied.
const NAMESPACE_FLAGS: &[u32] = &[
    libc::CLONE_NEWNS as u32,
    libc::CLONE_NEWCGROUP as u32,
    libc::CLONE_NEWUTS as u32,
    libc::CLONE_NEWIPC as u32,
    libc::CLONE_NEWUSER as u32,
    libc::CLONE_NEWPID as u32,
    libc::CLONE_NEWNET as u32,
    0x80, // CLONE_NEWTIME
];

const fn or_all(flags: &[u32]) -> u32 {
    let (mut acc, mut i) = (0, 0);
    while i < flags.len() {
        acc |= flags[i];
        i += 1;
    }
    acc
}

/// Socket families a job may create.
const SOCKET_FAMILIES: &[u32] = &[
    libc::AF_UNIX as u32,
    libc::AF_INET as u32,
    libc::AF_INET6 as u32,
];

/// `personality` values a job may set: plain Linux, with or without the 32-bit / UNAME26 personas,
/// and the query value. Anything else (ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC, ...) is denied.
const PERSONALITIES: &[u32] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// ioctl commands that inject input into or control a terminal.
const DENIED_IOCTLS: &[u32] = &[libc::TIOCSTI as u32, libc::TIOCLINUX as u32];

/// System calls allowed only with some arguments (all are in the allowlist too).
const ARGUMENT_RULES: &[(i64, Rule)] = &[
    (
        libc::SYS_clone,
        Rule::DenyBits {
            arg: 0,
            mask: or_all(NAMESPACE_FLAGS),
            errno: libc::EPERM,
        },
    ),
    (
        libc::SYS_socket,
        Rule::AllowValues {
            arg: 0,
            values: SOCKET_FAMILIES,
            errno: libc::EPERM,
        },
    ),
    (
        libc::SYS_personality,
        Rule::AllowValues {
            arg: 0,
            values: PERSONALITIES,
            errno: libc::EPERM,
        },
    ),
    (
        libc::SYS_ioctl,
        Rule::DenyValues {
            arg: 1,
            values: DENIED_IOCTLS,
            errno: libc::EPERM,
        },
    ),
];

#[cfg(test)]
mod tests;
