//! `images/images.lock`: image names pinned to layer digests once built, so every node and every
//! restart runs exactly the same bytes, whatever a name points at in a store later.
//!
//! ```toml
//! [images.python]
//! digest = "sha256:…"
//! recipe_hash = "sha256:…"   # absent for imported images
//! ```
//!
//! `corral image lock` writes it from a store; [`Lock::resolve`] resolves a pinned name by its
//! digest and fails clearly when the store lacks it (the node must build or fetch it first).
//!
//! Which lock applies: the repository's `images/images.lock`, compiled in ([`Lock::builtin`]),
//! overlaid by `<data-dir>/images.lock` when that file exists ([`Lock::load`]): a pin there wins
//! over the compiled-in pin of the same name. A language whose image is pinned runs on exactly the
//! pinned digest, never on whatever the name points at in the store.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::store::{Resolved, Store, StoreError};

/// The lock file's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    /// Pinned images by name.
    #[serde(default)]
    pub images: BTreeMap<String, Pin>,
}

/// One pinned image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    /// The top layer's digest.
    pub digest: Digest,
    /// The recipe hash it was built from (absent for imported images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe_hash: Option<String>,
}

/// A lock file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// TOML that does not parse into a lock.
    #[error("images.lock: {0}")]
    Parse(#[from] toml::de::Error),
    /// The data directory's lock file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Writing TOML failed.
    #[error("images.lock: {0}")]
    Write(#[from] toml::ser::Error),
    /// A pinned digest the store does not have.
    #[error("image {name} is pinned to {digest} in images.lock, which this node's store does not have (build, import or fetch it)")]
    Missing {
        /// Name.
        name: String,
        /// Pinned digest.
        digest: Digest,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Lock {
    /// Parse a lock file.
    pub fn parse(text: &str) -> Result<Lock, LockError> {
        let lock: Lock = toml::from_str(text)?;
        for name in lock.images.keys() {
            crate::store::check_name(name)?;
        }
        Ok(lock)
    }

    /// The lock compiled into Corral (the repository's `images/images.lock`).
    pub fn builtin() -> Lock {
        Lock::parse(include_str!("../images.lock")).expect("the shipped images.lock parses")
    }

    /// The compiled-in lock overlaid by `<data-dir>/images.lock` when that file exists.
    pub fn load(data_dir: &Path) -> Result<Lock, LockError> {
        let mut lock = Lock::builtin();
        let path = data_dir.join("images.lock");
        match std::fs::read_to_string(&path) {
            Ok(text) => lock.images.extend(Lock::parse(&text)?.images),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(LockError::Read { path, source }),
        }
        Ok(lock)
    }

    /// The digest `name` is pinned to, if any.
    pub fn pinned(&self, name: &str) -> Option<&Digest> {
        self.images.get(name).map(|pin| &pin.digest)
    }

    /// The image a job on `name` runs on: its top digest (the pin, else what the name points at
    /// in `store`) and its layer chain lowest first, empty when `store` lacks the pinned layer or
    /// one of its parents. `Ok(None)` when the name is neither pinned nor in `store`.
    pub fn image_chain(
        &self,
        store: &Store,
        name: &str,
    ) -> Result<Option<(Digest, Vec<Digest>)>, StoreError> {
        let top = match self.pinned(name) {
            Some(pin) => pin.clone(),
            None => match store.lookup(name)? {
                Some(digest) => digest,
                None => return Ok(None),
            },
        };
        let chain = store.chain_digests(&top)?;
        Ok(Some((top, chain)))
    }

    /// The lock file text.
    pub fn to_toml(&self) -> Result<String, LockError> {
        Ok(format!(
            "# Written by `corral image lock`: image names pinned to layer digests.\n{}",
            toml::to_string(self)?
        ))
    }

    /// Pins for every image in `store`.
    pub fn from_store(store: &Store) -> Result<Lock, LockError> {
        let images = store
            .list()?
            .into_iter()
            .map(|(name, m)| {
                (
                    name,
                    Pin {
                        digest: m.digest,
                        recipe_hash: m.recipe_hash,
                    },
                )
            })
            .collect();
        Ok(Lock { images })
    }

    /// Resolve `name` in `store`: by its pinned digest when the lock pins it, else by name.
    pub fn resolve(&self, store: &Store, name: &str) -> Result<Resolved, LockError> {
        let Some(pin) = self.images.get(name) else {
            return Ok(store.resolve(name)?);
        };
        match store.resolve(&pin.digest.to_string()) {
            Ok(mut r) => {
                r.name = name.to_string();
                Ok(r)
            }
            Err(StoreError::NotFound(_)) => Err(LockError::Missing {
                name: name.to_string(),
                digest: pin.digest.clone(),
            }),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::LayerFormat;
    use crate::store::Manifest;

    fn manifest() -> Manifest {
        Manifest {
            recipe_hash: Some("h1".into()),
            ..Manifest::new_layer(None, "test")
        }
    }

    #[test]
    fn pins_resolve_by_digest_and_missing_pins_are_clear_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open_with_format(tmp.path(), LayerFormat::Dir).unwrap();
        let a = store.staging().unwrap();
        std::fs::write(a.path().join("v"), b"1").unwrap();
        let first = store.register("img", a.path(), manifest()).unwrap();
        let lock = Lock::parse(&Lock::from_store(&store).unwrap().to_toml().unwrap()).unwrap();
        assert_eq!(lock.images["img"].digest, first.digest);
        assert_eq!(lock.images["img"].recipe_hash.as_deref(), Some("h1"));
        // The name moves to a new build; the lock keeps resolving the pinned one.
        let b = store.staging().unwrap();
        std::fs::write(b.path().join("v"), b"2").unwrap();
        let second = store.register("img", b.path(), manifest()).unwrap();
        assert_ne!(first.digest, second.digest);
        assert_eq!(lock.resolve(&store, "img").unwrap().digest, first.digest);
        assert_eq!(
            Lock::default().resolve(&store, "img").unwrap().digest,
            second.digest
        );
        let gone = Lock::parse(&format!(
            "[images.img]\ndigest = \"{}\"\n",
            Digest::of_bytes(b"x")
        ))
        .unwrap();
        let e = gone.resolve(&store, "img").unwrap_err().to_string();
        assert!(
            e.contains("pinned to") && e.contains("does not have"),
            "{e}"
        );
        assert!(Lock::parse("[images.img]\ndigest = \"sha256:zz\"\n").is_err());
        assert!(Lock::parse(&format!(
            "[images.img]\ndigest = \"{}\"\nextra = 1\n",
            first.digest
        ))
        .is_err());
        assert!(Lock::parse(&format!(
            "[images.\"Bad/Name\"]\ndigest = \"{}\"\n",
            first.digest
        ))
        .is_err());
    }

    #[test]
    fn the_data_dirs_lock_overlays_the_builtin_one_and_chains_follow_pins() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(Lock::load(tmp.path()).unwrap(), Lock::builtin());
        let store = Store::open_with_format(tmp.path(), LayerFormat::Dir).unwrap();
        let a = store.staging().unwrap();
        std::fs::write(a.path().join("v"), b"1").unwrap();
        let base = store.register("base", a.path(), manifest()).unwrap();
        let b = store.staging().unwrap();
        std::fs::write(b.path().join("w"), b"2").unwrap();
        let child = Manifest {
            parent: Some(base.digest.clone()),
            ..manifest()
        };
        let top = store.register("img", b.path(), child).unwrap();
        let absent = Digest::of_bytes(b"absent");
        std::fs::write(
            tmp.path().join("images.lock"),
            format!(
                "[images.img]\ndigest = \"{}\"\n[images.gone]\ndigest = \"{absent}\"\n",
                base.digest
            ),
        )
        .unwrap();
        let lock = Lock::load(tmp.path()).unwrap();
        assert_eq!(lock.pinned("img"), Some(&base.digest));
        // The pin wins over the name's current digest.
        assert_eq!(
            lock.image_chain(&store, "img").unwrap(),
            Some((base.digest.clone(), vec![base.digest.clone()]))
        );
        assert_eq!(
            Lock::default().image_chain(&store, "img").unwrap(),
            Some((
                top.digest.clone(),
                vec![base.digest.clone(), top.digest.clone()]
            ))
        );
        // A pin the store lacks: the digest without its chain (the node must fetch or fail).
        assert_eq!(
            lock.image_chain(&store, "gone").unwrap(),
            Some((absent, Vec::new()))
        );
        assert_eq!(lock.image_chain(&store, "nothing").unwrap(), None);
        std::fs::write(tmp.path().join("images.lock"), "[images.x]\n").unwrap();
        assert!(Lock::load(tmp.path()).is_err());
    }

    #[test]
    fn the_shipped_lock_file_parses() {
        let lock = Lock::parse(include_str!("../images.lock")).unwrap();
        for name in lock.images.keys() {
            assert!(
                crate::recipe::BUILTIN.iter().any(|(n, _)| n == name),
                "{name}"
            );
        }
    }
}
