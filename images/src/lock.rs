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

use std::collections::BTreeMap;

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
            name: String::new(),
            digest: Digest::of_bytes(b""),
            parent: None,
            format: LayerFormat::Dir,
            size: 0,
            packages: BTreeMap::new(),
            created: 0,
            env: BTreeMap::new(),
            workdir: None,
            recipe_hash: Some("h1".into()),
            source: "test".into(),
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
