//! Where the cgroup hierarchies are mounted and which of them the sandbox uses, and where this
//! process's own cgroups are. Parsing is a pure function of the text of `/proc/self/mountinfo` (or
//! `/proc/self/cgroup`) and a root directory, so tests run it on both layouts over fixture trees;
//! [`Layout::probe`] reads the real files with root `/`.

use std::path::{Path, PathBuf};

use super::{files, CgroupError, Version};

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CgroupMount {
    /// Where it is mounted (under the root given to the parser).
    pub point: PathBuf,
    /// The directory of the hierarchy mounted there: `/` unless a subtree is bind-mounted.
    pub root: PathBuf,
    /// Its super options; for v1 these name the controllers bound to it (`rw,cpu,cpuacct`).
    pub options: Vec<String>,
    /// cgroup2 rather than cgroup.
    pub unified: bool,
}

impl CgroupMount {
    fn has(&self, controller: &str) -> bool {
        self.options.iter().any(|o| o == controller)
    }
}

/// The v1 hierarchies the slot cgroups use. Co-mounted controllers (`cpu,cpuacct`) share a mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct V1Mounts {
    pub memory: CgroupMount,
    pub pids: CgroupMount,
    pub cpuacct: CgroupMount,
    pub freezer: CgroupMount,
    /// Only needed for CPU quotas.
    pub cpu: Option<CgroupMount>,
}

impl V1Mounts {
    fn find(mounts: &[CgroupMount]) -> Result<V1Mounts, String> {
        let find = |c: &str| mounts.iter().find(|m| !m.unified && m.has(c)).cloned();
        let (memory, pids, cpuacct, freezer) = (
            find("memory"),
            find("pids"),
            find("cpuacct"),
            find("freezer"),
        );
        match (memory, pids, cpuacct, freezer) {
            (Some(memory), Some(pids), Some(cpuacct), Some(freezer)) => Ok(V1Mounts {
                memory,
                pids,
                cpuacct,
                freezer,
                cpu: find("cpu"),
            }),
            _ => {
                let missing: Vec<&str> = ["memory", "pids", "cpuacct", "freezer"]
                    .into_iter()
                    .filter(|c| find(c).is_none())
                    .collect();
                Err(format!("no v1 hierarchy for {}", missing.join(", ")))
            }
        }
    }

    /// Each mount once, in a fixed order.
    pub fn unique(&self) -> Vec<&CgroupMount> {
        let all = [
            Some(&self.memory),
            Some(&self.pids),
            Some(&self.cpuacct),
            self.cpu.as_ref(),
            Some(&self.freezer),
        ];
        let mut unique: Vec<&CgroupMount> = Vec::new();
        for m in all.into_iter().flatten() {
            if !unique.iter().any(|u| u.point == m.point) {
                unique.push(m);
            }
        }
        unique
    }
}

/// The hierarchies the sandbox uses on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Layout {
    V1(Box<V1Mounts>),
    /// The unified hierarchy, with memory and pids available.
    V2(CgroupMount),
}

impl Layout {
    /// The layout of this host (of `want`, if given).
    pub fn probe(want: Option<Version>) -> Result<Layout, CgroupError> {
        let text = super::files::read_text(Path::new(MOUNTINFO)).map_err(|source| {
            CgroupError::ReadMounts {
                path: MOUNTINFO.into(),
                source,
            }
        })?;
        Layout::find(&text, Path::new("/"), want)
    }

    /// The layout described by mountinfo `text`, with mount points under `fs_root`: v2 when a
    /// cgroup2 mount has the memory and pids controllers available (unless `want` is v1), else
    /// v1 when memory, pids, cpuacct and freezer are mounted (unless `want` is v2).
    pub fn find(text: &str, fs_root: &Path, want: Option<Version>) -> Result<Layout, CgroupError> {
        let mounts = parse_mountinfo(text, fs_root);
        let v2 = match want {
            Some(Version::V1) => Err("v1 was asked for".to_string()),
            _ => usable_v2(&mounts),
        };
        let v1 = match want {
            Some(Version::V2) => Err("v2 was asked for".to_string()),
            _ => V1Mounts::find(&mounts),
        };
        match (v2, v1) {
            (Ok(unified), _) => Ok(Layout::V2(unified)),
            (Err(_), Ok(v1)) => Ok(Layout::V1(Box::new(v1))),
            (Err(v2), Err(v1)) => Err(CgroupError::NoHierarchy {
                reason: format!("{v2}; {v1}"),
            }),
        }
    }

    pub fn version(&self) -> Version {
        match self {
            Layout::V1(_) => Version::V1,
            Layout::V2(_) => Version::V2,
        }
    }

    /// Every hierarchy the slot cgroups live in.
    pub fn mounts(&self) -> Vec<&CgroupMount> {
        match self {
            Layout::V1(m) => m.unique(),
            Layout::V2(m) => vec![m],
        }
    }

    /// Names of the child cgroups of `parent` in any of the hierarchies, sorted.
    pub fn children(&self, parent: &Path) -> Result<Vec<String>, CgroupError> {
        let mut names = Vec::new();
        for mount in self.mounts() {
            let dir = mount.point.join(parent);
            let read_err = |source| CgroupError::Read {
                path: dir.clone(),
                source,
            };
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(read_err(e)),
            };
            for entry in entries {
                let entry = entry.map_err(read_err)?;
                if entry.file_type().map_err(read_err)?.is_dir() {
                    names.push(entry.file_name().to_string_lossy().into_owned());
                }
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }
}

fn usable_v2(mounts: &[CgroupMount]) -> Result<CgroupMount, String> {
    let mut reasons = Vec::new();
    for m in mounts.iter().filter(|m| m.unified) {
        let file = m.point.join("cgroup.controllers");
        match files::read(&file) {
            Ok(text) => {
                let has = |c| text.split_whitespace().any(|x| x == c);
                if has("memory") && has("pids") {
                    return Ok(m.clone());
                }
                reasons.push(format!(
                    "the unified hierarchy at {} lacks the memory or pids controller (it has {:?})",
                    m.point.display(),
                    text.trim()
                ));
            }
            Err(e) => reasons.push(e.to_string()),
        }
    }
    if reasons.is_empty() {
        reasons.push("no cgroup2 mount".into());
    }
    Err(reasons.join("; "))
}

/// The cgroup and cgroup2 mounts in mountinfo `text`, mount points moved under `fs_root`.
pub(super) fn parse_mountinfo(text: &str, fs_root: &Path) -> Vec<CgroupMount> {
    text.lines()
        .filter_map(|line| parse_line(line, fs_root))
        .collect()
}

/// `36 25 0:32 / /sys/fs/cgroup/memory rw,relatime shared:14 - cgroup cgroup rw,memory`: fields
/// 4 and 5 are the mount's root and point; after the ` - ` separator come the type, the source
/// and the super options.
fn parse_line(line: &str, fs_root: &Path) -> Option<CgroupMount> {
    let (left, right) = line.split_once(" - ")?;
    let mut left = left.split(' ');
    let root = unescape(left.nth(3)?);
    let point = unescape(left.next()?);
    let mut right = right.split(' ');
    let unified = match right.next()? {
        "cgroup2" => true,
        "cgroup" => false,
        _ => return None,
    };
    let options = right.nth(1)?.split(',').map(String::from).collect();
    Some(CgroupMount {
        point: fs_root.join(point.strip_prefix('/').unwrap_or(&point)),
        root: PathBuf::from(root),
        options,
        unified,
    })
}

/// Undo mountinfo's octal escapes (`\040` for a space, `\134` for a backslash...).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| {
            (b'0'..=b'3').contains(&d[0]) && d[1..].iter().all(|b| (b'0'..=b'7').contains(b))
        });
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
