//! The job's Landlock ruleset (SANDBOX.md step 16), applied in the job process after it dropped its
//! identity and set `no_new_privs`, right before the seccomp filters.
//!
//! The ruleset handles every filesystem right of ABI 6 (so anything not granted below is denied),
//! TCP bind and connect unless the job was granted networking, and the ABI 6 scopes: the job can
//! neither connect to abstract unix sockets created outside its domain nor signal a process
//! outside it (PID 1 of the container included).
//!
//! Granted: read and execute everywhere under `/` (the root is already a read-only overlay and
//! bind mounts; Landlock is the second wall), full rights on the job's own writable directories,
//! and read/write of the harmless character devices.

use std::path::PathBuf;

use landlock::{
    path_beneath_rules, Access, AccessFs, AccessNet, CompatLevel, Compatible, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

/// The ABI whose rights the ruleset handles. ABI 7 only adds audit logging flags.
const TARGET_ABI: ABI = ABI::V6;

/// What the job may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Trees the job may read and execute.
    pub read_exec: Vec<PathBuf>,
    /// Trees the job may read, write, create and remove in.
    pub read_write: Vec<PathBuf>,
    /// Single files (devices) the job may read and write, not create or remove.
    pub write_files: Vec<PathBuf>,
    /// Allow TCP bind and connect (the job was granted networking).
    pub network: bool,
}

/// How much of the ruleset the running kernel enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcement {
    /// Everything asked for.
    Full,
    /// Some rights or scopes are unknown to this kernel (only accepted when not required).
    Partial,
    /// Landlock is unavailable (only accepted when not required).
    None,
}

/// Failure to build or apply the ruleset, or a weaker enforcement than required.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    /// The landlock crate or the kernel refused a step.
    #[error("applying the landlock ruleset: {0}")]
    Ruleset(#[from] landlock::RulesetError),
    /// The kernel does not enforce the whole ruleset and the operator did not opt out.
    #[error(
        "landlock is {0:?} on this kernel, not fully enforced; refusing to run (an operator can \
         allow weaker kernels explicitly)"
    )]
    NotEnforced(Enforcement),
}

/// Restrict the calling thread (and every process it creates) to `rules`. With `require_full`,
/// anything less than full enforcement is an error, and the caller must not run the job.
pub fn restrict(rules: &Rules, require_full: bool) -> Result<Enforcement, LandlockError> {
    let abi = TARGET_ABI;
    let level = if require_full {
        CompatLevel::HardRequirement
    } else {
        CompatLevel::BestEffort
    };
    let mut ruleset = Ruleset::default()
        .set_compatibility(level)
        .handle_access(AccessFs::from_all(abi))?
        .scope(Scope::from_all(abi))?;
    if !rules.network {
        ruleset = ruleset.handle_access(AccessNet::from_all(abi))?;
    }
    let device_rights = AccessFs::ReadFile | AccessFs::WriteFile;
    let status = ruleset
        .create()?
        .add_rules(path_beneath_rules(
            &rules.read_exec,
            AccessFs::from_read(abi),
        ))?
        .add_rules(path_beneath_rules(
            &rules.read_write,
            AccessFs::from_all(abi),
        ))?
        .add_rules(path_beneath_rules(&rules.write_files, device_rights))?
        .restrict_self()?;
    let enforcement = match status.ruleset {
        RulesetStatus::FullyEnforced => Enforcement::Full,
        RulesetStatus::PartiallyEnforced => Enforcement::Partial,
        RulesetStatus::NotEnforced => Enforcement::None,
    };
    if require_full && enforcement != Enforcement::Full {
        return Err(LandlockError::NotEnforced(enforcement));
    }
    Ok(enforcement)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;
    use std::net::{TcpListener, TcpStream};

    /// Apply `rules` on a fresh thread (Landlock is per thread until exec) and run `probe` there.
    fn on_restricted_thread<T: Send + 'static>(
        rules: Rules,
        probe: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        std::thread::spawn(move || {
            nix::sys::prctl::set_no_new_privs().expect("no_new_privs");
            assert_eq!(restrict(&rules, true).expect("restrict"), Enforcement::Full);
            probe()
        })
        .join()
        .expect("probe thread")
    }

    fn rules(dir: &std::path::Path, network: bool) -> Rules {
        Rules {
            read_exec: vec!["/usr".into()],
            read_write: vec![dir.to_path_buf()],
            write_files: vec!["/dev/null".into()],
            network,
        }
    }

    #[test]
    fn grants_only_what_the_rules_name() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let (inside, outside_path) = (tmp.path().to_path_buf(), outside.path().join("x"));
        let rules = rules(&inside, false);
        let (write_in, write_out, read_usr, read_etc, dev_null) =
            on_restricted_thread(rules, move || {
                (
                    std::fs::write(inside.join("f"), b"ok").map_err(|e| e.kind()),
                    std::fs::write(&outside_path, b"no").map_err(|e| e.kind()),
                    std::fs::read_dir("/usr").map(|_| ()).map_err(|e| e.kind()),
                    std::fs::read("/etc/hostname")
                        .map(|_| ())
                        .map_err(|e| e.kind()),
                    std::fs::write("/dev/null", b"x").map_err(|e| e.kind()),
                )
            });
        assert_eq!(write_in, Ok(()));
        assert_eq!(write_out, Err(ErrorKind::PermissionDenied));
        assert_eq!(read_usr, Ok(()));
        assert_eq!(read_etc, Err(ErrorKind::PermissionDenied));
        assert_eq!(dev_null, Ok(()));
        assert!(!outside.path().join("x").exists());
    }

    #[test]
    fn denies_tcp_unless_networking_was_granted() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let denied = on_restricted_thread(rules(tmp.path(), false), move || {
            TcpStream::connect(addr).map(|_| ()).map_err(|e| e.kind())
        });
        assert_eq!(denied, Err(ErrorKind::PermissionDenied));
        let allowed = on_restricted_thread(rules(tmp.path(), true), move || {
            TcpStream::connect(addr).map(|_| ()).map_err(|e| e.kind())
        });
        assert_eq!(allowed, Ok(()));
    }
}
