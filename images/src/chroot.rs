//! Mounts for building inside a root: an overlay over the parent's layers, /proc, /dev and the
//! host's resolv.conf, all undone (lazily, in reverse order) when the guard is dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::build::BuildError;

/// Mounts made for a build; dropped in reverse order.
#[derive(Debug, Default)]
pub struct Mounts {
    /// Mount points, in the order they were mounted.
    points: Vec<PathBuf>,
    /// Files created only to be bind-mount targets, removed after unmounting.
    created: Vec<PathBuf>,
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for point in self.points.drain(..).rev() {
            if let Err(e) = umount2(&point, MntFlags::MNT_DETACH) {
                tracing::warn!(point = %point.display(), error = %e, "unmounting build mount");
            }
        }
        for file in self.created.drain(..) {
            let _ = std::fs::remove_file(file);
        }
    }
}

fn mount_err(what: &str, target: &Path, e: nix::Error) -> BuildError {
    BuildError::Mount {
        what: what.to_string(),
        target: target.to_path_buf(),
        source: e,
    }
}

/// A path inside the root that must be a real directory (never a symlink: mounting on one would
/// follow it, possibly out of the root).
fn real_dir(root: &Path, rel: &str) -> Result<PathBuf, BuildError> {
    let path = root.join(rel);
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => Ok(path),
        Ok(_) => Err(BuildError::Unsafe(format!(
            "/{rel} in the image is not a directory"
        ))),
        Err(_) => {
            std::fs::create_dir(&path).map_err(|e| BuildError::io("creating", &path, e))?;
            Ok(path)
        }
    }
}

impl Mounts {
    /// Mount an overlay at `merged` over `lowers` (top first), writing into `upper`. Redirects,
    /// metacopy, index and xino are off, so the upper holds only plain files, whiteouts and
    /// opaque markers: a self-contained layer.
    pub fn overlay(
        &mut self,
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        merged: &Path,
    ) -> Result<(), BuildError> {
        let lower: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
        let options = format!(
            "lowerdir={},upperdir={},workdir={},index=off,metacopy=off,redirect_dir=off,xino=off",
            lower.join(":"),
            upper.display(),
            work.display()
        );
        mount(
            Some("overlay"),
            merged,
            Some("overlay"),
            MsFlags::empty(),
            Some(options.as_str()),
        )
        .map_err(|e| mount_err("overlay", merged, e))?;
        self.points.push(merged.to_path_buf());
        Ok(())
    }

    /// Prepare `root` for running commands in it: /proc, the host's /dev (recursively) and, for
    /// package downloads, the host's resolv.conf.
    pub fn enter(&mut self, root: &Path) -> Result<(), BuildError> {
        let proc_dir = real_dir(root, "proc")?;
        mount(
            Some("proc"),
            &proc_dir,
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|e| mount_err("proc", &proc_dir, e))?;
        self.points.push(proc_dir);
        let dev = real_dir(root, "dev")?;
        mount(
            Some("/dev"),
            &dev,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| mount_err("/dev", &dev, e))?;
        self.points.push(dev);
        let etc = real_dir(root, "etc")?;
        let resolv = etc.join("resolv.conf");
        match std::fs::symlink_metadata(&resolv) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Ok(()), // a symlink: leave name resolution to the image
            Err(_) => {
                std::fs::write(&resolv, b"").map_err(|e| BuildError::io("creating", &resolv, e))?;
                self.created.push(resolv.clone());
            }
        }
        if Path::new("/etc/resolv.conf").exists() {
            mount(
                Some("/etc/resolv.conf"),
                &resolv,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| mount_err("resolv.conf", &resolv, e))?;
            self.points.push(resolv);
        }
        Ok(())
    }
}

/// Run `script` with /bin/sh inside `root` (chroot) with exactly `env`; its output is appended to
/// `log`. A non-zero exit is an error carrying the output's last lines.
pub fn run_in(
    root: &Path,
    script: &str,
    env: &[(String, String)],
    log: &Path,
) -> Result<String, BuildError> {
    let out = Command::new("chroot")
        .arg(root)
        .args(["/bin/sh", "-c", script])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BuildError::io("running chroot in", root, e))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    append_log(log, script, &text);
    if !out.status.success() {
        return Err(BuildError::Command {
            command: script.to_string(),
            status: out.status.to_string(),
            tail: tail(&text, 15),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Append a command and its output to the build log (best effort: the log is for people).
pub fn append_log(log: &Path, what: &str, output: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = writeln!(f, "$ {what}\n{output}");
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
