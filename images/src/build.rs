//! Building a recipe into a registered layer.
//!
//! A root recipe is bootstrapped with `mmdebstrap --variant=minbase` from Debian's archive; a
//! child recipe runs in an overlay over its parent's mounted layers and its layer is the overlay's
//! upper directory (only what it added, changed or deleted). Either way the packages are
//! installed and the commands run by chroot with /proc mounted, the self-test runs in a
//! throw-away overlay over the finished layer stack, and only then is the layer registered.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::chroot::{self, Mounts};
use crate::recipe::{Recipe, RecipeBook, RecipeError, DEFAULT_MIRROR};
use crate::store::{Manifest, Store, StoreError};

/// Why a build failed. Nothing was registered.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The recipe is not usable.
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A mount the build needs failed.
    #[error("mounting {what} at {target}: {source}")]
    Mount {
        /// What was mounted.
        what: String,
        /// Where.
        target: PathBuf,
        /// Errno.
        source: nix::Error,
    },
    /// A command inside the root (or mmdebstrap) failed.
    #[error("`{command}` failed ({status}); last output:\n{tail}")]
    Command {
        /// The command.
        command: String,
        /// Its exit status.
        status: String,
        /// Its last lines of output.
        tail: String,
    },
    /// The self-test's output did not contain the expected string.
    #[error("self-test failed: `{command}` printed {output:?}, expected it to contain {expect:?}")]
    SelfTest {
        /// The command.
        command: String,
        /// What it printed.
        output: String,
        /// What was expected.
        expect: String,
    },
    /// A parent image that would make the build unsafe (e.g. /proc a symlink).
    #[error("unsafe parent image: {0}")]
    Unsafe(String),
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

impl BuildError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> BuildError {
        BuildError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A build's staging directory; on drop, anything still mounted below it is detached before the
/// directory is removed.
struct Staging(tempfile::TempDir);

impl Staging {
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        crate::layer::unmount_beneath(self.0.path());
    }
}

/// What a build did.
#[derive(Debug, Clone)]
pub struct Built {
    /// The image's manifest.
    pub manifest: Manifest,
    /// True when the store already had this recipe's image and nothing was built.
    pub reused: bool,
}

/// Builds recipes into a store, reporting each step through `on_step`.
pub struct Builder<'a> {
    /// Where layers go.
    pub store: &'a Store,
    /// Where recipes come from.
    pub book: &'a RecipeBook,
    /// Called with a one-line description at the start of each step.
    pub on_step: &'a mut dyn FnMut(&str),
    /// Rebuild even when the store has an image of the same recipe hash.
    pub force: bool,
}

const BUILD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl Builder<'_> {
    /// Build `name` (and any parent whose image is missing or out of date).
    pub fn build(&mut self, name: &str) -> Result<Built, BuildError> {
        let hash = self.book.hash(name)?;
        if !self.force {
            if let Some(m) = self.up_to_date(name, &hash)? {
                (self.on_step)(&format!("{name}: up to date ({})", m.digest));
                return Ok(Built {
                    manifest: m,
                    reused: true,
                });
            }
        }
        let recipe = self.book.get(name)?;
        let parent = match &recipe.parent {
            Some(p) => Some(self.parent(p)?),
            None => None,
        };
        let staging = Staging(self.store.staging()?);
        let log = staging.path().join("build.log");
        let (layer_dir, packages) = match &parent {
            None => self.bootstrap(name, &recipe, staging.path(), &log)?,
            Some(parent) => self.stack(name, &recipe, parent, staging.path(), &log)?,
        };
        let mut env: BTreeMap<String, String> =
            parent.as_ref().map(|p| p.env.clone()).unwrap_or_default();
        env.extend(recipe.env.clone());
        env.entry("PATH".into())
            .or_insert_with(|| BUILD_PATH.into());
        if let Some(test) = &recipe.self_test {
            (self.on_step)(&format!("{name}: self-test `{}`", test.command));
            self.self_test(
                &recipe,
                &layer_dir,
                parent.as_ref(),
                &env,
                staging.path(),
                &log,
            )?;
        }
        (self.on_step)(
            &format!("{name}: registering layer ({:?})", self.store.format()).to_lowercase(),
        );
        let meta = Manifest {
            packages,
            env,
            workdir: recipe
                .workdir
                .clone()
                .or_else(|| parent.as_ref().and_then(|p| p.workdir.clone())),
            recipe_hash: Some(hash),
            ..Manifest::new_layer(
                parent.as_ref().map(|p| p.digest.clone()),
                format!("recipe:{name}"),
            )
        };
        let manifest = self.store.register(name, &layer_dir, meta)?;
        Ok(Built {
            manifest,
            reused: false,
        })
    }

    fn up_to_date(&self, name: &str, hash: &str) -> Result<Option<Manifest>, BuildError> {
        let Some(digest) = self.store.lookup(name)? else {
            return Ok(None);
        };
        Ok(self
            .store
            .manifest(&digest)?
            .filter(|m| m.recipe_hash.as_deref() == Some(hash)))
    }

    fn parent(&mut self, parent: &str) -> Result<Manifest, BuildError> {
        Ok(self.build(parent)?.manifest)
    }

    fn build_env(&self, recipe: &Recipe) -> Vec<(String, String)> {
        let mut env: BTreeMap<String, String> = [
            ("PATH", BUILD_PATH),
            ("DEBIAN_FRONTEND", "noninteractive"),
            ("LANG", "C.UTF-8"),
            ("HOME", "/root"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        env.extend(recipe.env.clone());
        env.into_iter().collect()
    }

    /// A root recipe: mmdebstrap into `staging/root`, then the commands.
    fn bootstrap(
        &mut self,
        name: &str,
        recipe: &Recipe,
        staging: &Path,
        log: &Path,
    ) -> Result<(PathBuf, BTreeMap<String, String>), BuildError> {
        let root = staging.join("root");
        let mirror = recipe
            .mirror
            .as_deref()
            .unwrap_or(DEFAULT_MIRROR)
            .trim_end_matches('/');
        (self.on_step)(&format!(
            "{name}: mmdebstrap bookworm minbase from {mirror}"
        ));
        mmdebstrap(recipe, mirror, &root, log)?;
        empty_dev(&root)?;
        let mut mounts = Mounts::default();
        mounts.enter(&root)?;
        let env = self.build_env(recipe);
        for command in &recipe.commands {
            (self.on_step)(&format!("{name}: run `{command}`"));
            chroot::run_in(&root, command, &env, log)?;
        }
        let packages = installed(&root, &env, log);
        drop(mounts);
        Ok((root, packages))
    }

    /// A child recipe: an overlay over the parent's layers; the layer is the upper directory.
    fn stack(
        &mut self,
        name: &str,
        recipe: &Recipe,
        parent: &Manifest,
        staging: &Path,
        log: &Path,
    ) -> Result<(PathBuf, BTreeMap<String, String>), BuildError> {
        let resolved = self.store.resolve(&parent.digest.to_string())?;
        let (upper, work, merged) = (
            staging.join("upper"),
            staging.join("work"),
            staging.join("merged"),
        );
        for dir in [&upper, &work, &merged] {
            std::fs::create_dir(dir).map_err(|e| BuildError::io("creating", dir, e))?;
        }
        let lowers: Vec<PathBuf> = resolved.layers.iter().rev().cloned().collect();
        let mut mounts = Mounts::default();
        mounts.overlay(&lowers, &upper, &work, &merged)?;
        mounts.enter(&merged)?;
        let env = self.build_env(recipe);
        let before = installed(&merged, &env, log);
        if !recipe.packages.is_empty() {
            (self.on_step)(&format!(
                "{name}: apt-get install {}",
                recipe.packages.join(" ")
            ));
            let script = format!(
                "apt-get update -qq && apt-get install -y -qq --no-install-recommends {} && apt-get clean && rm -rf /var/lib/apt/lists/*",
                recipe.packages.join(" ")
            );
            chroot::run_in(&merged, &script, &env, log)?;
        }
        for command in &recipe.commands {
            (self.on_step)(&format!("{name}: run `{command}`"));
            chroot::run_in(&merged, command, &env, log)?;
        }
        let after = installed(&merged, &env, log);
        drop(mounts);
        let _ = std::fs::remove_dir_all(&work);
        crate::layer::finish_upper(&upper).map_err(StoreError::from)?;
        let added = after
            .into_iter()
            .filter(|(p, v)| before.get(p) != Some(v))
            .collect();
        Ok((upper, added))
    }

    fn self_test(
        &mut self,
        recipe: &Recipe,
        layer: &Path,
        parent: Option<&Manifest>,
        env: &BTreeMap<String, String>,
        staging: &Path,
        log: &Path,
    ) -> Result<(), BuildError> {
        let Some(test) = &recipe.self_test else {
            return Ok(());
        };
        let mut lowers = vec![layer.to_path_buf()];
        if let Some(parent) = parent {
            lowers.extend(
                self.store
                    .resolve(&parent.digest.to_string())?
                    .layers
                    .into_iter()
                    .rev(),
            );
        }
        let (upper, work, merged) = (
            staging.join("t-upper"),
            staging.join("t-work"),
            staging.join("t-merged"),
        );
        for dir in [&upper, &work, &merged] {
            std::fs::create_dir(dir).map_err(|e| BuildError::io("creating", dir, e))?;
        }
        let mut mounts = Mounts::default();
        mounts.overlay(&lowers, &upper, &work, &merged)?;
        mounts.enter(&merged)?;
        let dir = merged.join("tmp/corral-self-test");
        std::fs::create_dir_all(&dir).map_err(|e| BuildError::io("creating", &dir, e))?;
        for (file, contents) in &test.files {
            std::fs::write(dir.join(file), contents)
                .map_err(|e| BuildError::io("writing", &dir.join(file), e))?;
        }
        let mut env: Vec<(String, String)> = env.clone().into_iter().collect();
        env.push(("HOME".into(), "/tmp".into()));
        let output = chroot::run_in(
            &merged,
            &format!("cd /tmp/corral-self-test && {}", test.command),
            &env,
            log,
        )?;
        if !output.contains(&test.expect) {
            return Err(BuildError::SelfTest {
                command: test.command.clone(),
                output,
                expect: test.expect.clone(),
            });
        }
        Ok(())
    }
}

/// Installed Debian packages and versions in `root` (empty when it has no dpkg).
fn installed(root: &Path, env: &[(String, String)], log: &Path) -> BTreeMap<String, String> {
    let script = "command -v dpkg-query >/dev/null && dpkg-query -W -f '${db:Status-Abbrev}\\t${Package}\\t${Version}\\n' || true";
    let Ok(out) = chroot::run_in(root, script, env, log) else {
        return BTreeMap::new();
    };
    out.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let (status, name, version) = (f.next()?, f.next()?, f.next()?);
            status
                .starts_with("ii")
                .then(|| (name.to_string(), version.to_string()))
        })
        .collect()
}

/// Bootstrap Debian bookworm minbase (plus the recipe's packages) into `root`.
fn mmdebstrap(recipe: &Recipe, mirror: &str, root: &Path, log: &Path) -> Result<(), BuildError> {
    let mut cmd = Command::new("mmdebstrap");
    cmd.args([
        "--variant=minbase",
        "--mode=root",
        "--format=directory",
        "--quiet",
    ]);
    cmd.arg("--aptopt=Acquire::Retries \"3\"");
    if !recipe.packages.is_empty() {
        cmd.arg(format!("--include={}", recipe.packages.join(",")));
    }
    cmd.args(["bookworm", &root.display().to_string()]);
    cmd.arg(format!("deb {mirror} bookworm main"));
    cmd.arg(format!("deb {mirror} bookworm-updates main"));
    if let Some(security) = mirror.strip_suffix("/debian") {
        cmd.arg(format!(
            "deb {security}/debian-security bookworm-security main"
        ));
    }
    let out = cmd.output().map_err(|e| {
        BuildError::io(
            "running mmdebstrap (Debian package mmdebstrap) for",
            root,
            e,
        )
    })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    chroot::append_log(log, "mmdebstrap", &text);
    if !out.status.success() {
        return Err(BuildError::Command {
            command: "mmdebstrap".into(),
            status: out.status.to_string(),
            tail: chroot::tail(&text, 15),
        });
    }
    Ok(())
}

/// Device nodes never ship in a layer: the sandbox gives each job its own /dev.
fn empty_dev(root: &Path) -> Result<(), BuildError> {
    let dev = root.join("dev");
    for entry in std::fs::read_dir(&dev)
        .map_err(|e| BuildError::io("listing", &dev, e))?
        .flatten()
    {
        let path = entry.path();
        let res = if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        res.map_err(|e| BuildError::io("removing", &path, e))?;
    }
    Ok(())
}
