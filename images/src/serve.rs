//! The gateway's side of layer distribution, over one store and its lock: manifests as JSON and
//! layer bytes by digest (what `GET /v1/images/{digest}[/manifest]` serves), and the exact layer
//! chain of an image name for a job's assignment (pins first, see [`crate::lock`]).
//!
//! Chains are cached by top digest: a digest's chain never changes (its manifest names its
//! parent, by digest), so only a name's current digest is read per assignment.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;

use crate::digest::Digest;
use crate::fetch::open_layer;
use crate::lock::Lock;
use crate::store::{Store, StoreError};

/// Serves one store's layers and resolves image names for assignments.
#[derive(Debug)]
pub struct LayerServer {
    /// The store layers come from.
    store: Store,
    /// Pins applied when resolving names.
    lock: Lock,
    /// Complete chains by top digest (immutable once known).
    chains: Mutex<HashMap<Digest, Vec<Digest>>>,
}

impl LayerServer {
    /// Serve `store`, resolving names through `lock`.
    pub fn new(store: Store, lock: Lock) -> LayerServer {
        LayerServer {
            store,
            lock,
            chains: Mutex::default(),
        }
    }

    /// The manifest of layer `digest` as JSON, `None` when it is not stored.
    pub fn manifest_json(&self, digest: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(m) = self.store.manifest(digest)? else {
            return Ok(None);
        };
        serde_json::to_vec(&m)
            .map(Some)
            .map_err(|e| StoreError::Io {
                op: "encoding manifest of",
                path: self.store.root().join(digest.hex()),
                source: std::io::Error::other(e),
            })
    }

    /// The bytes of layer `digest` and their length when known, `None` when it is not stored.
    #[allow(clippy::type_complexity)]
    pub fn open(
        &self,
        digest: &Digest,
    ) -> Result<Option<(Box<dyn Read + Send>, Option<u64>)>, StoreError> {
        match open_layer(&self.store, digest) {
            Ok(opened) => Ok(Some(opened)),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The image a job on `name` runs on: its top digest and chain lowest first (empty when
    /// this store lacks part of it); `None` when `name` is neither pinned nor stored.
    pub fn image(&self, name: &str) -> Result<Option<(Digest, Vec<Digest>)>, StoreError> {
        let top = match self.lock.pinned(name) {
            Some(pin) => pin.clone(),
            None => match self.store.lookup(name) {
                Ok(Some(digest)) => digest,
                Ok(None) | Err(StoreError::BadName(_)) => return Ok(None),
                Err(e) => return Err(e),
            },
        };
        let cached = self.lock_chains().get(&top).cloned();
        if let Some(chain) = cached {
            return Ok(Some((top, chain)));
        }
        let chain = self.store.chain_digests(&top)?;
        if !chain.is_empty() {
            self.lock_chains().insert(top.clone(), chain.clone());
        }
        Ok(Some((top, chain)))
    }

    fn lock_chains(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Vec<Digest>>> {
        self.chains.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::layer::LayerFormat;
    use crate::store::Manifest;

    #[test]
    fn images_follow_pins_and_chains_are_served_lowest_first() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open_with_format(tmp.path(), LayerFormat::Dir).unwrap();
        let mut meta = Manifest::new_layer(None, "test");
        let mut chain = Vec::new();
        for (name, content) in [("base", "1"), ("img", "2")] {
            let stage = store.staging().unwrap();
            std::fs::write(stage.path().join(name), content).unwrap();
            let m = store.register(name, stage.path(), meta.clone()).unwrap();
            meta.parent = Some(m.digest.clone());
            chain.push(m.digest);
        }
        let server = LayerServer::new(store.clone(), Lock::default());
        let top = chain[1].clone();
        assert_eq!(
            server.image("img").unwrap(),
            Some((top.clone(), chain.clone()))
        );
        assert_eq!(server.image("none").unwrap(), None);
        assert_eq!(server.image("Not/A/Name").unwrap(), None);
        let json = server.manifest_json(&top).unwrap().unwrap();
        let m: Manifest = serde_json::from_slice(&json).unwrap();
        assert_eq!((m.digest, m.parent), (top.clone(), Some(chain[0].clone())));
        let (mut reader, _) = server.open(&chain[0]).unwrap().unwrap();
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes).unwrap();
        assert_eq!(
            Digest::of_bytes(&bytes),
            chain[0],
            "the bytes its digest covers"
        );
        assert!(server.open(&Digest::of_bytes(b"no")).unwrap().is_none());

        let lock = Lock::parse(&format!("[images.img]\ndigest = \"{}\"\n", chain[0])).unwrap();
        let pinned = LayerServer::new(store, lock);
        assert_eq!(
            pinned.image("img").unwrap(),
            Some((chain[0].clone(), vec![chain[0].clone()])),
            "the pin, not the name"
        );
    }
}
