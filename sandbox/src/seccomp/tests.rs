//! Each rule is checked both ways: a call the filters must let through, and a denied variant that
//! must fail with the documented errno. Filters are installed on a spawned thread (seccomp and
//! `no_new_privs` are per thread), so the test process itself stays unfiltered. The denied calls use
//! arguments that the kernel would reject anyway (or that are harmless), so a broken filter shows up
//! as the wrong errno, never as a changed host.
#![allow(unsafe_code)]

use super::*;

/// errno of a raw system call, or 0 when it succeeded.
fn raw(nr: i64, args: [u64; 4]) -> i32 {
    // SAFETY: every call below passes either null pointers or invalid values that the kernel
    // validates before touching memory, so no memory of this process is read or written.
    let ret = unsafe { libc::syscall(nr, args[0], args[1], args[2], args[3]) };
    if ret < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    } else {
        if nr == libc::SYS_socket || nr == libc::SYS_memfd_create {
            // SAFETY: a successful socket/memfd_create returned a descriptor that nothing else owns.
            unsafe { libc::close(ret as i32) };
        }
        0
    }
}

/// Run `probe` on a new thread with the filters installed.
fn filtered<T: Send + 'static>(probe: impl FnOnce() -> T + Send + 'static) -> T {
    let filters = compile().expect("compile");
    std::thread::spawn(move || {
        nix::sys::prctl::set_no_new_privs().expect("no_new_privs");
        install(&filters).expect("install");
        probe()
    })
    .join()
    .expect("probe thread")
}

#[test]
fn compiles_to_a_program_the_kernel_accepts() {
    let filters = compile().unwrap();
    assert!(filters.instructions() > 100 && filters.instructions() < 4096);
    assert_eq!(filtered(|| raw(libc::SYS_getpid, [0; 4])), 0);
}

#[test]
fn clone3_fails_with_enosys_so_libc_falls_back_to_clone() {
    let (clone3, thread) = filtered(|| {
        let clone3 = raw(libc::SYS_clone3, [0, 0, 0, 0]);
        // glibc's pthread_create tries clone3 first; on ENOSYS it uses clone.
        let thread = std::thread::spawn(|| 7).join().unwrap();
        (clone3, thread)
    });
    assert_eq!(clone3, libc::ENOSYS);
    assert_eq!(thread, 7);
}

#[test]
fn clone_with_namespace_flags_is_denied() {
    // CLONE_THREAD without CLONE_VM is EINVAL for the kernel: allowed calls fail harmlessly.
    let bad = (libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
    let results = filtered(move || {
        let plain = raw(libc::SYS_clone, [bad, 0, 0, 0]);
        let per_flag: Vec<i32> = NAMESPACE_FLAGS
            .iter()
            .map(|&f| raw(libc::SYS_clone, [bad | u64::from(f), 0, 0, 0]))
            .collect();
        let unshare = raw(libc::SYS_unshare, [libc::CLONE_NEWUSER as u64, 0, 0, 0]);
        let setns = raw(libc::SYS_setns, [u64::MAX, 0, 0, 0]);
        (plain, per_flag, unshare, setns)
    });
    assert_eq!(results.0, libc::EINVAL);
    assert!(results.1.iter().all(|&e| e == libc::EPERM), "{results:?}");
    assert_eq!((results.2, results.3), (libc::EPERM, libc::EPERM));
}

#[test]
fn only_unix_and_inet_sockets() {
    let stream = libc::SOCK_STREAM as u64;
    let dgram = libc::SOCK_DGRAM as u64;
    let results = filtered(move || {
        [
            raw(libc::SYS_socket, [libc::AF_UNIX as u64, stream, 0, 0]),
            raw(libc::SYS_socket, [libc::AF_INET as u64, stream, 0, 0]),
            raw(libc::SYS_socket, [libc::AF_INET6 as u64, dgram, 0, 0]),
            raw(libc::SYS_socket, [libc::AF_NETLINK as u64, dgram, 0, 0]),
            raw(
                libc::SYS_socket,
                [libc::AF_PACKET as u64, libc::SOCK_RAW as u64, 0, 0],
            ),
            raw(libc::SYS_socket, [libc::AF_VSOCK as u64, stream, 0, 0]),
            // The family compared as the kernel reads it: a 32-bit int.
            raw(
                libc::SYS_socket,
                [(1 << 32) | libc::AF_VSOCK as u64, stream, 0, 0],
            ),
        ]
    });
    assert_eq!(&results[..3], &[0, 0, 0]);
    assert!(
        results[3..].iter().all(|&e| e == libc::EPERM),
        "{results:?}"
    );
}

#[test]
fn terminal_injection_ioctls_are_denied_even_with_high_bits() {
    let results = filtered(|| {
        let fd = u64::MAX >> 33; // not an open descriptor: allowed ioctls fail with EBADF
        [
            raw(libc::SYS_ioctl, [fd, libc::FIONREAD, 0, 0]),
            raw(libc::SYS_ioctl, [fd, libc::TIOCSTI, 0, 0]),
            raw(libc::SYS_ioctl, [fd, (1 << 32) | libc::TIOCSTI, 0, 0]),
            raw(libc::SYS_ioctl, [fd, libc::TIOCLINUX, 0, 0]),
        ]
    });
    assert_eq!(
        results,
        [libc::EBADF, libc::EPERM, libc::EPERM, libc::EPERM]
    );
}

#[test]
fn personality_cannot_weaken_aslr_or_nx() {
    let results = filtered(|| {
        [
            raw(libc::SYS_personality, [0xffff_ffff, 0, 0, 0]),
            raw(
                libc::SYS_personality,
                [libc::ADDR_NO_RANDOMIZE as u64, 0, 0, 0],
            ),
            raw(
                libc::SYS_personality,
                [libc::READ_IMPLIES_EXEC as u64, 0, 0, 0],
            ),
        ]
    });
    assert_eq!(results, [0, libc::EPERM, libc::EPERM]);
}

#[test]
fn kernel_attack_surface_is_denied_with_eperm() {
    let denied = filtered(|| {
        DENIED
            .iter()
            .map(|&nr| (nr, raw(nr, [0, 0, 0, 0])))
            .collect::<Vec<_>>()
    });
    let wrong: Vec<_> = denied.iter().filter(|(_, e)| *e != libc::EPERM).collect();
    assert!(wrong.is_empty(), "not EPERM (nr, errno): {wrong:?}");
}

#[test]
fn unknown_and_x32_system_calls_fail_with_enosys() {
    const X32_BIT: i64 = 0x4000_0000;
    let results = filtered(|| {
        [
            raw(1000, [0; 4]),
            raw(X32_BIT | libc::SYS_getpid, [0; 4]),
            raw(libc::SYS_memfd_create, [c"probe".as_ptr() as u64, 0, 0, 0]),
        ]
    });
    assert_eq!(results, [libc::ENOSYS, libc::ENOSYS, 0]);
}

#[test]
fn lists_do_not_overlap_except_for_argument_filtered_calls() {
    let allow = allowlist();
    for nr in DENIED {
        assert!(
            !allow.contains(nr),
            "syscall {nr} is both allowed and denied"
        );
    }
    // clone3 must be neither: only the allowlist's ENOSYS makes libcs fall back to clone.
    assert!(!allow.contains(&libc::SYS_clone3) && !DENIED.contains(&libc::SYS_clone3));
    for nr in [
        libc::SYS_clone,
        libc::SYS_socket,
        libc::SYS_ioctl,
        libc::SYS_personality,
    ] {
        assert!(
            allow.contains(&nr),
            "syscall {nr} must be allowed for its denylist rules"
        );
    }
}
