//! The built-in `host` image: a small skeleton layer (symlinks for merged /usr, a minimal /etc) with
//! the host's /usr and the few /etc directories toolchains need bind-mounted read-only on top, so the
//! host's python3, gcc, g++, node and java run with zero set-up.

use std::path::{Path, PathBuf};

use crate::spec::Image;
use crate::Error;

/// Name of the built-in image.
pub const HOST_IMAGE: &str = "host";

/// Host directories bind-mounted read-only, when they exist.
const HOST_BINDS: &[&str] = &["/usr", "/etc/alternatives"];
/// Host /etc files copied into the skeleton when they exist (no secrets among them).
const ETC_COPIES: &[&str] = &[
    "ld.so.cache",
    "ld.so.conf",
    "localtime",
    "mime.types",
    "protocols",
    "services",
];

/// Create or refresh the skeleton in `dir` and describe the image. `uids` get passwd entries.
///
/// The refresh is skipped when a stamp beside `dir` records the same uids and the same modification
/// times of /etc and of the host files it copies; the stamp also lists the host directories to
/// bind, so a one-shot command pays a few stats, not a rewrite or a listing of /etc (an entry
/// added to or removed from /etc changes its modification time).
pub fn prepare(dir: &Path, uids: std::ops::Range<u32>) -> Result<Image, Error> {
    let stamp = stamp(&uids);
    // Beside the layer, not in it: jobs see the layer's files.
    let stamp_path = dir.with_extension("stamp");
    let stored = std::fs::read_to_string(&stamp_path).unwrap_or_default();
    let host_binds = match stored.split_once('\n') {
        Some((line, binds)) if line == stamp => binds.lines().map(PathBuf::from).collect(),
        _ => {
            let java = java_conf_dirs();
            write_skeleton(dir, uids.clone(), &java)?;
            // Where earlier versions kept the stamp, visible to jobs.
            let _ = std::fs::remove_file(dir.join(".corral-stamp"));
            let mut binds: Vec<PathBuf> = HOST_BINDS
                .iter()
                .map(PathBuf::from)
                .filter(|p| p.is_dir())
                .collect();
            binds.extend(java);
            let mut text = stamp;
            for bind in &binds {
                text.push('\n');
                text.push_str(&bind.to_string_lossy());
            }
            write_if_changed(&stamp_path, text.as_bytes()).map_err(|source| Error::StateDir {
                path: stamp_path,
                source,
            })?;
            binds
        }
    };
    Ok(Image {
        name: HOST_IMAGE.to_string(),
        layers: vec![dir.to_path_buf()],
        host_binds,
        env: vec![
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            ("LANG".into(), "C.UTF-8".into()),
            ("HOME".into(), "/box".into()),
            ("TMPDIR".into(), "/tmp".into()),
        ],
    })
}

/// What the skeleton and the binds depend on: the uids, /etc's entries and the files copied.
fn stamp(uids: &std::ops::Range<u32>) -> String {
    use std::os::unix::fs::MetadataExt;
    let mut stamp = format!("v2 uids={}..{}", uids.start, uids.end);
    let etc = std::fs::metadata("/etc").ok();
    stamp.push_str(&format!(
        " /etc={:?}",
        etc.map(|m| (m.mtime(), m.mtime_nsec()))
    ));
    for name in ETC_COPIES {
        let meta = std::fs::metadata(Path::new("/etc").join(name)).ok();
        stamp.push_str(&format!(
            " {name}={:?}",
            meta.map(|m| (m.mtime(), m.mtime_nsec(), m.size()))
        ));
    }
    stamp
}

fn write_skeleton(dir: &Path, uids: std::ops::Range<u32>, java: &[PathBuf]) -> Result<(), Error> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::StateDir { path, source }
    };
    // Mount points exist in the skeleton, so the job's root needs no directory created (and copied
    // up into the job's upper layer) before each mount.
    let mut subs = vec![
        "usr",
        "etc",
        "etc/alternatives",
        "tmp",
        "proc",
        "dev",
        "box",
        "root",
        "home",
    ];
    let java: Vec<String> = java
        .iter()
        .map(|d| d.display().to_string()[1..].to_string())
        .collect();
    subs.extend(java.iter().map(String::as_str));
    for sub in subs {
        std::fs::create_dir_all(dir.join(sub)).map_err(err(&dir.join(sub)))?;
    }
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        let path = dir.join(link);
        if path.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(target, &path).map_err(err(&path))?;
        }
    }
    let mut passwd = String::from(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    );
    let mut group = String::from("root:x:0:\nnogroup:x:65534:\n");
    for uid in uids {
        passwd.push_str(&format!("corral:x:{uid}:{uid}:corral job:/box:/bin/sh\n"));
        group.push_str(&format!("corral:x:{uid}:\n"));
    }
    let etc = dir.join("etc");
    let files = [
        ("passwd", passwd.into_bytes()),
        ("group", group.into_bytes()),
        (
            "hosts",
            b"127.0.0.1 localhost corral\n::1 localhost\n".to_vec(),
        ),
        ("hostname", b"corral\n".to_vec()),
        (
            "nsswitch.conf",
            b"passwd: files\ngroup: files\nhosts: files\n".to_vec(),
        ),
    ];
    for (name, contents) in files {
        write_if_changed(&etc.join(name), &contents).map_err(err(&etc.join(name)))?;
    }
    for name in ETC_COPIES {
        if let Ok(contents) = std::fs::read(Path::new("/etc").join(name)) {
            write_if_changed(&etc.join(name), &contents).map_err(err(&etc.join(name)))?;
        }
    }
    Ok(())
}

/// Debian's OpenJDK keeps its configuration under /etc/java-N-openjdk.
fn java_conf_dirs() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/etc") else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("java-"))
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn write_if_changed(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    if std::fs::read(path).ok().as_deref() == Some(contents) {
        return Ok(());
    }
    let tmp = path.with_extension("corral-tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}
