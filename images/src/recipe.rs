//! Image recipes (`images/recipes/<name>.toml`): parsing, validation and the recipe hash.
//!
//! A recipe starts from Debian bookworm minbase (`base = "debian:bookworm"`) or from another
//! recipe's image (`parent = "gcc"`), installs Debian packages, runs commands inside the new root,
//! sets the environment, and names a self-test (files plus a command whose output must contain an
//! expected string). The built-in recipes are compiled into the binary; a directory of recipes
//! can add to or override them.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::digest::Digest;

/// The recipes shipped with Corral, compiled in: (name, TOML).
pub const BUILTIN: &[(&str, &str)] = &[
    ("base", include_str!("../recipes/base.toml")),
    ("bash", include_str!("../recipes/bash.toml")),
    ("python", include_str!("../recipes/python.toml")),
    ("gcc", include_str!("../recipes/gcc.toml")),
    ("java", include_str!("../recipes/java.toml")),
    ("javascript", include_str!("../recipes/javascript.toml")),
    ("ruby", include_str!("../recipes/ruby.toml")),
    ("go", include_str!("../recipes/go.toml")),
    ("rust", include_str!("../recipes/rust.toml")),
    ("haskell", include_str!("../recipes/haskell.toml")),
];

/// The only base distribution recipes can start from.
pub const DEBIAN_BOOKWORM: &str = "debian:bookworm";

/// Debian's archive, as this machine's apt sources use it.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// A validated recipe.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// One line saying what the image is for.
    #[serde(default)]
    pub description: String,
    /// `debian:bookworm` for a root image (exclusive with `parent`).
    pub base: Option<String>,
    /// Debian mirror for a root image.
    pub mirror: Option<String>,
    /// The recipe whose image this one stacks on.
    pub parent: Option<String>,
    /// Debian packages to install (`name` or `name=version`).
    #[serde(default)]
    pub packages: Vec<String>,
    /// Shell commands run in order inside the new root (chroot, /proc mounted, as root).
    #[serde(default)]
    pub commands: Vec<String>,
    /// Environment for jobs (merged over the parent's).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Suggested working directory.
    pub workdir: Option<String>,
    /// The self-test a build must pass before it is registered.
    pub self_test: Option<SelfTest>,
}

/// Compile-and-run check of a built image.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfTest {
    /// Files written into the test's empty working directory: name → contents.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// Shell command run in that directory.
    pub command: String,
    /// A string its standard output must contain.
    pub expect: String,
}

/// A recipe that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// TOML that does not parse into a recipe (unknown field, wrong type, ...).
    #[error("recipe {name}: {source}")]
    Parse {
        /// Recipe name.
        name: String,
        /// Cause, with the line.
        source: toml::de::Error,
    },
    /// A recipe that parses but is not valid.
    #[error("recipe {name}: {reason}")]
    Invalid {
        /// Recipe name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// No recipe of that name.
    #[error("no recipe named {0:?} (built in: {1})")]
    NotFound(String, String),
    /// A recipe directory that cannot be read.
    #[error("reading recipe {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

fn invalid(name: &str, reason: impl Into<String>) -> RecipeError {
    RecipeError::Invalid {
        name: name.to_string(),
        reason: reason.into(),
    }
}

impl Recipe {
    /// Parse and validate the recipe `name` from TOML text.
    pub fn parse(name: &str, text: &str) -> Result<Recipe, RecipeError> {
        let recipe: Recipe = toml::from_str(text).map_err(|source| RecipeError::Parse {
            name: name.to_string(),
            source,
        })?;
        recipe.validate(name)?;
        Ok(recipe)
    }

    fn validate(&self, name: &str) -> Result<(), RecipeError> {
        crate::store::check_name(name).map_err(|e| invalid(name, e.to_string()))?;
        match (&self.base, &self.parent) {
            (Some(_), Some(_)) => {
                return Err(invalid(name, "set either `base` or `parent`, not both"))
            }
            (None, None) => {
                return Err(invalid(
                    name,
                    "set `base = \"debian:bookworm\"` or `parent = \"<recipe>\"`",
                ))
            }
            (Some(base), None) if base != DEBIAN_BOOKWORM => {
                return Err(invalid(
                    name,
                    format!("unsupported base {base:?} (supported: {DEBIAN_BOOKWORM})"),
                ))
            }
            (None, Some(parent)) if parent == name => {
                return Err(invalid(name, "a recipe cannot be its own parent"))
            }
            _ => {}
        }
        if self.mirror.is_some() && self.base.is_none() {
            return Err(invalid(name, "`mirror` only applies with `base`"));
        }
        if let Some(m) = &self.mirror {
            if !(m.starts_with("http://") || m.starts_with("https://"))
                || m.chars().any(char::is_whitespace)
            {
                return Err(invalid(name, format!("mirror {m:?} is not an http(s) URL")));
            }
        }
        for p in &self.packages {
            if !is_package(p) {
                return Err(invalid(
                    name,
                    format!("{p:?} is not a Debian package name (optionally name=version)"),
                ));
            }
        }
        if self.commands.iter().any(|c| c.trim().is_empty()) {
            return Err(invalid(name, "empty command"));
        }
        for (k, v) in &self.env {
            let key_ok = !k.is_empty()
                && !k.as_bytes()[0].is_ascii_digit()
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !key_ok || v.contains('\0') {
                return Err(invalid(name, format!("bad environment variable {k:?}")));
            }
        }
        if let Some(w) = &self.workdir {
            if !w.starts_with('/') || w.split('/').any(|c| c == "..") {
                return Err(invalid(
                    name,
                    format!("workdir {w:?} must be an absolute path without `..`"),
                ));
            }
        }
        if let Some(t) = &self.self_test {
            self.validate_self_test(name, t)?;
        }
        Ok(())
    }

    fn validate_self_test(&self, name: &str, t: &SelfTest) -> Result<(), RecipeError> {
        if t.command.trim().is_empty() || t.expect.is_empty() {
            return Err(invalid(
                name,
                "self_test needs a command and a non-empty expect",
            ));
        }
        for f in t.files.keys() {
            if f.is_empty() || f.contains('/') || f == "." || f == ".." || f.contains('\0') {
                return Err(invalid(
                    name,
                    format!("self_test file name {f:?} must be a plain name"),
                ));
            }
        }
        Ok(())
    }
}

fn is_package(p: &str) -> bool {
    let (name, version) = match p.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (p, None),
    };
    let name_ok = name.len() >= 2
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    let version_ok = version.is_none_or(|v| {
        !v.is_empty()
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.:~".contains(&b))
    });
    name_ok && version_ok
}

/// Where recipes come from: the built-in ones plus, optionally, a directory that overrides them.
#[derive(Debug, Clone, Default)]
pub struct RecipeBook {
    texts: BTreeMap<String, String>,
}

impl RecipeBook {
    /// The built-in recipes, then every `<name>.toml` in `dir` (if given) on top.
    pub fn load(dir: Option<&Path>) -> Result<RecipeBook, RecipeError> {
        let mut texts: BTreeMap<String, String> = BUILTIN
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        if let Some(dir) = dir {
            let read_err = |source| RecipeError::Read {
                path: dir.display().to_string(),
                source,
            };
            for entry in std::fs::read_dir(dir).map_err(read_err)? {
                let path = entry.map_err(read_err)?.path();
                let Some(name) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".toml"))
                else {
                    continue;
                };
                let text = std::fs::read_to_string(&path).map_err(|source| RecipeError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                texts.insert(name.to_string(), text);
            }
        }
        Ok(RecipeBook { texts })
    }

    /// Recipe names.
    pub fn names(&self) -> Vec<String> {
        self.texts.keys().cloned().collect()
    }

    /// The parsed recipe `name`.
    pub fn get(&self, name: &str) -> Result<Recipe, RecipeError> {
        let text = self
            .texts
            .get(name)
            .ok_or_else(|| RecipeError::NotFound(name.to_string(), self.names().join(", ")))?;
        Recipe::parse(name, text)
    }

    /// The recipe chain ending at `name`, root first.
    pub fn chain(&self, name: &str) -> Result<Vec<(String, Recipe)>, RecipeError> {
        let mut chain = vec![(name.to_string(), self.get(name)?)];
        while let Some(parent) = chain.last().and_then(|(_, r)| r.parent.clone()) {
            if chain.iter().any(|(n, _)| *n == parent) || chain.len() > 16 {
                return Err(invalid(name, format!("parent chain loops at {parent:?}")));
            }
            chain.push((parent.clone(), self.get(&parent)?));
        }
        chain.reverse();
        Ok(chain)
    }

    /// The hash identifying a build of `name`: its recipe text and those of all its parents. A
    /// stored image with the same hash is up to date.
    pub fn hash(&self, name: &str) -> Result<String, RecipeError> {
        let mut acc = String::from("corral-recipe-v1");
        for (n, _) in self.chain(name)? {
            let text = &self.texts[&n];
            acc = Digest::of_bytes(format!("{acc}\n{n}\n{text}").as_bytes()).to_string();
        }
        Ok(acc)
    }
}

#[cfg(test)]
mod tests;
