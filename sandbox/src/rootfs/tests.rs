//! Order and content of the root plan, and the calls it makes, checked without root.

use super::*;
use crate::wire::{FileMeta, JobRequest, Rlimits};

fn request() -> JobRequest {
    JobRequest {
        argv: vec!["true".into()],
        env: vec![],
        files: vec![FileMeta {
            name: "main.py".into(),
            mode: 0o4755,
            len: 2,
        }],
        layers: vec!["/img/base".into(), "/img/python".into()],
        host_binds: vec!["/usr".into()],
        slot_dir: "/run/corral/slots/3".into(),
        uid: 60003,
        gid: 60003,
        rlimits: Rlimits {
            cpu_secs: 3,
            fsize: 1,
            nofile: 1,
            stack: 1,
            nproc: 1,
        },
        disk_bytes: 1 << 20,
        disk_inodes: 100,
        network: false,
        collect: vec![],
        collect_max_bytes: 0,
        require_landlock: true,
        userns_root: None,
    }
}

fn position(steps: &[Step], pred: impl Fn(&Step) -> bool) -> usize {
    steps.iter().position(pred).expect("step is in the plan")
}

fn count(steps: &[Step], pred: impl Fn(&Step) -> bool) -> usize {
    steps.iter().filter(|s| pred(s)).count()
}

#[test]
fn private_first_pivot_after_every_mount_hostname_last() {
    let steps = plan(&request());
    assert_eq!(steps[0], Step::MakePrivate);
    let pivot = position(&steps, |s| matches!(s, Step::PivotRoot { .. }));
    assert_eq!(pivot, steps.len() - 2);
    assert!(matches!(steps.last(), Some(Step::Hostname { name }) if name == HOSTNAME));
    assert!(steps[pivot + 1..].iter().all(|s| !matches!(
        s,
        Step::Tmpfs { .. }
            | Step::Overlay { .. }
            | Step::Bind { .. }
            | Step::BindReadOnly { .. }
            | Step::Proc { .. }
    )));
}

#[test]
fn files_are_written_into_the_working_directory_without_special_bits() {
    let req = request();
    assert!(!plan(&req)
        .iter()
        .any(|s| matches!(s, Step::WriteFile { .. })));
    assert_eq!(
        input_steps(&req),
        vec![Step::WriteFile {
            path: "/box/main.py".into(),
            index: 0,
            mode: 0o755,
            owner: (60003, 60003)
        }]
    );
}

#[test]
fn overlay_stacks_layers_top_first_and_job_tmpfs_is_capped() {
    let steps = plan(&request());
    let Step::Overlay { options, target } =
        &steps[position(&steps, |s| matches!(s, Step::Overlay { .. }))]
    else {
        unreachable!()
    };
    assert_eq!(target, Path::new("root"));
    assert!(options.starts_with("lowerdir=l1:l0,upperdir=upper,workdir=work,"));
    assert!(
        !options.contains('/'),
        "no host path may show in mountinfo: {options}"
    );
    let chdir = position(&steps, |s| matches!(s, Step::Chdir { .. }));
    let overlay = position(&steps, |s| matches!(s, Step::Overlay { .. }));
    assert_eq!(
        steps[chdir],
        Step::Chdir {
            path: "/run/corral/slots/3".into()
        }
    );
    assert!(chdir < overlay);
    assert!(steps.contains(&Step::Symlink {
        target: "/img/python".into(),
        link: "/run/corral/slots/3/l1".into()
    }));
    let Step::Tmpfs { options, flags, .. } = &steps[1] else {
        unreachable!()
    };
    assert!(options.contains("size=1048576") && options.contains("nr_inodes=100"));
    assert!(flags.contains(MsFlags::MS_NOSUID | MsFlags::MS_NODEV));
}

#[test]
fn masks_come_after_proc_and_dev_null_exists_before_them() {
    let steps = plan(&request());
    let proc = position(&steps, |s| matches!(s, Step::Proc { .. }));
    let null = position(
        &steps,
        |s| matches!(s, Step::Mknod { path, .. } if path.ends_with("dev/null")),
    );
    let kcore = position(
        &steps,
        |s| matches!(s, Step::MaskFile { target, .. } if target.ends_with("proc/kcore")),
    );
    assert!(null < kcore && proc < kcore);
    assert!(steps
        .iter()
        .any(|s| matches!(s, Step::BindReadOnly { target, .. } if target.ends_with("proc/sys"))));
    assert!(!steps
        .iter()
        .any(|s| format!("{s:?}").contains("/sys/fs") || format!("{s:?}").contains("\"/sys\"")));
}

/// Records every call; `exists` answers from a fixed list.
#[derive(Default)]
struct Recorder {
    calls: Vec<String>,
    existing: Vec<PathBuf>,
}

impl Sys for Recorder {
    fn mount(
        &mut self,
        src: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        self.calls.push(format!(
            "mount {src:?} {} {fstype:?} {flags:?} {data:?}",
            target.display()
        ));
        Ok(())
    }
    fn set_mount_attrs(&mut self, target: &Path, set: u64, clear: u64) -> nix::Result<()> {
        self.calls.push(format!(
            "setattr {} set={set:#x} clear={clear:#x}",
            target.display()
        ));
        Ok(())
    }
    fn mkdir(&mut self, path: &Path, mode: u32, _owner: Option<(u32, u32)>) -> nix::Result<()> {
        self.calls
            .push(format!("mkdir {} {mode:o}", path.display()));
        Ok(())
    }
    fn write_file(
        &mut self,
        path: &Path,
        contents: &[u8],
        mode: u32,
        _owner: (u32, u32),
    ) -> nix::Result<()> {
        self.calls.push(format!(
            "write {} {} {mode:o}",
            path.display(),
            contents.len()
        ));
        Ok(())
    }
    fn mknod(&mut self, path: &Path, _major: u64, _minor: u64) -> nix::Result<()> {
        self.calls.push(format!("mknod {}", path.display()));
        Ok(())
    }
    fn symlink(&mut self, target: &str, link: &Path) -> nix::Result<()> {
        self.calls
            .push(format!("symlink {target} {}", link.display()));
        Ok(())
    }
    fn chdir(&mut self, path: &Path) -> nix::Result<()> {
        self.calls.push(format!("chdir {}", path.display()));
        Ok(())
    }
    fn exists(&mut self, path: &Path) -> bool {
        self.existing.iter().any(|p| p == path)
    }
    fn pivot_root(&mut self, new_root: &Path) -> nix::Result<()> {
        self.calls
            .push(format!("pivot_root {}", new_root.display()));
        Ok(())
    }
    fn sethostname(&mut self, name: &str) -> nix::Result<()> {
        self.calls.push(format!("sethostname {name}"));
        Ok(())
    }
}

#[test]
fn apply_issues_calls_in_plan_order_with_read_only_remounts() {
    let mut sys = Recorder {
        existing: vec!["/run/corral/slots/3/root/proc/kcore".into()],
        ..Default::default()
    };
    let req = request();
    let steps: Vec<Step> = plan(&req).into_iter().chain(input_steps(&req)).collect();
    apply(&steps, &[b"hi".to_vec()], &mut sys).unwrap();
    let calls = &sys.calls;
    assert!(
        calls[0].starts_with("mount None / None") && calls[0].contains("MS_PRIVATE"),
        "{}",
        calls[0]
    );
    assert!(calls[0].contains("MS_REC"), "{}", calls[0]);
    let bind_usr = calls
        .iter()
        .position(|c| c.contains("Some(\"/usr\") /run/corral/slots/3/root/usr"))
        .unwrap();
    assert!(
        calls[bind_usr + 1].contains("MS_RDONLY") && calls[bind_usr + 1].contains("MS_REMOUNT")
    );
    assert!(calls[bind_usr + 1].contains("MS_NOSUID") && calls[bind_usr + 1].contains("MS_NODEV"));
    // Only the mask whose target exists is mounted.
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.contains("dev/null") && c.contains("proc/"))
            .count(),
        1
    );
    // The root is entered, the hostname set, then the input files are written into /box.
    let pivot = calls
        .iter()
        .position(|c| c.starts_with("pivot_root"))
        .unwrap();
    assert_eq!(pivot, calls.len() - 3);
    assert_eq!(calls[calls.len() - 1], "write /box/main.py 2 755");
}

#[test]
fn apply_stops_at_the_first_failure_and_names_the_step() {
    struct Failing(usize);
    impl Sys for Failing {
        fn mount(
            &mut self,
            _: Option<&Path>,
            _: &Path,
            _: Option<&str>,
            _: MsFlags,
            _: Option<&str>,
        ) -> nix::Result<()> {
            self.0 += 1;
            if self.0 == 2 {
                Err(nix::Error::EPERM)
            } else {
                Ok(())
            }
        }
        fn set_mount_attrs(&mut self, _: &Path, _: u64, _: u64) -> nix::Result<()> {
            Ok(())
        }
        fn mkdir(&mut self, _: &Path, _: u32, _: Option<(u32, u32)>) -> nix::Result<()> {
            Ok(())
        }
        fn write_file(&mut self, _: &Path, _: &[u8], _: u32, _: (u32, u32)) -> nix::Result<()> {
            Ok(())
        }
        fn mknod(&mut self, _: &Path, _: u64, _: u64) -> nix::Result<()> {
            Ok(())
        }
        fn symlink(&mut self, _: &str, _: &Path) -> nix::Result<()> {
            Ok(())
        }
        fn chdir(&mut self, _: &Path) -> nix::Result<()> {
            Ok(())
        }
        fn exists(&mut self, _: &Path) -> bool {
            true
        }
        fn pivot_root(&mut self, _: &Path) -> nix::Result<()> {
            panic!("must not pivot after a failure")
        }
        fn sethostname(&mut self, _: &str) -> nix::Result<()> {
            Ok(())
        }
    }
    let err = apply(&plan(&request()), &[b"hi".to_vec()], &mut Failing(0)).unwrap_err();
    assert!(matches!(*err.step, Step::Tmpfs { .. }));
    assert_eq!(err.errno, nix::Error::EPERM);
}

#[test]
fn in_a_user_namespace_devices_are_bound_and_overlay_keeps_user_xattrs() {
    let mut req = request();
    req.userns_root = Some(1_004_096);
    let steps = plan(&req);
    assert!(!steps.iter().any(|s| matches!(s, Step::Mknod { .. })));
    assert!(steps.contains(&Step::BindDevice {
        source: "/dev/null".into(),
        target: "/run/corral/slots/3/root/dev/null".into()
    }));
    let Step::Overlay { options, .. } =
        &steps[position(&steps, |s| matches!(s, Step::Overlay { .. }))]
    else {
        unreachable!()
    };
    assert!(
        options.ends_with(",redirect_dir=nofollow,userxattr"),
        "{options}"
    );
    // Without one, real device nodes and no userxattr.
    let plain = plan(&request());
    assert_eq!(
        count(&plain, |s| matches!(s, Step::Mknod { .. })),
        DEVICES.len()
    );
}

#[test]
fn dev_and_the_masks_are_binds_from_the_job_tmpfs_not_filesystems_of_their_own() {
    let steps = plan(&request());
    // One filesystem is created per job besides the overlay and proc: the job's tmpfs.
    assert_eq!(count(&steps, |s| matches!(s, Step::Tmpfs { .. })), 1);
    let bind = position(&steps, |s| matches!(s, Step::BindDir { .. }));
    assert_eq!(
        steps[bind],
        Step::BindDir {
            source: "/run/corral/slots/3/dev".into(),
            target: "/run/corral/slots/3/root/dev".into()
        }
    );
    // Every device node and link is made in the job's tmpfs before it is bound on /dev.
    let last_node = steps
        .iter()
        .rposition(|s| matches!(s, Step::Mknod { .. } | Step::Symlink { .. }))
        .unwrap();
    assert!(last_node < bind);

    let mut sys = Recorder {
        existing: vec!["/run/corral/slots/3/root/proc/acpi".into()],
        ..Default::default()
    };
    apply(&steps, &[], &mut sys).unwrap();
    // /dev: read-only, nosuid and noexec, and `nodev` (inherited from the job's tmpfs) cleared.
    let dev = format!(
        "setattr /run/corral/slots/3/root/dev set={:#x} clear={:#x}",
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC,
        MOUNT_ATTR_NODEV
    );
    assert!(sys.calls.contains(&dev), "{:#?}", sys.calls);
    // A masked directory: the empty directory, bound, then made read-only with every no* flag.
    let mask = sys
        .calls
        .iter()
        .position(|c| {
            c.contains("Some(\"/run/corral/slots/3/empty\") /run/corral/slots/3/root/proc/acpi")
        })
        .unwrap();
    let remount = &sys.calls[mask + 1];
    for flag in [
        "MS_REMOUNT",
        "MS_BIND",
        "MS_RDONLY",
        "MS_NOSUID",
        "MS_NODEV",
        "MS_NOEXEC",
    ] {
        assert!(remount.contains(flag), "{remount}");
    }
    assert!(sys
        .calls
        .contains(&"mkdir /run/corral/slots/3/empty 555".to_string()));
}
