//! The node's image layers: its own store, the images.lock pins, and fetching the layers it
//! lacks from the gateway by digest before a job (or the start-up self-test) needs them.
//!
//! In `corral serve` the node's store is the data directory's, shared with the gateway, so it
//! never lacks a layer and no remote is configured. A node on another machine has a store of its
//! own and a [`Remote`]: the gateway's URL and the deployment's node token.
//!
//! # Fetching
//!
//! [`NodeLayers::ensure`] walks an image's chain from its top digest: a layer the store has is
//! used as is; for one it lacks, the manifest comes from `GET /v1/images/{digest}/manifest`
//! (checked to describe that digest) and names the parent to look at next. The missing layers are
//! then fetched lowest first with `GET /v1/images/{digest}`, hashed while they stream into a
//! temporary file under the store's `tmp/`, and registered only when the sha256 matches
//! ([`corral_images::fetch::fetch_layer`]): a refused, broken or truncated stream, or a gateway
//! that cannot be reached, leaves nothing registered and fails the job with an internal error
//! naming the layer; nothing falls back to another image. Jobs that need the same layer at the
//! same time fetch it once: the first holds the layer's flight lock, the others wait on it and
//! then find the layer stored (after a failure they try again themselves).
//!
//! # Authentication
//!
//! The node sends `Authorization: Bearer TOKEN` with the deployment's node token, the same secret
//! the gateway is started with (`corral serve --node-token`); a node never holds a tenant's key.
//! The transport is plain HTTP: nodes reach the gateway on the deployment's private network, and
//! every byte is checked against its digest whatever the network does.

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use corral_images::digest::Digest;
use corral_images::fetch::{fetch_layer, FetchError};
use corral_images::language::Language;
use corral_images::lock::Lock;
use corral_images::store::{Manifest, Store, StoreError};
use corral_protocol::ImageRef;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::executor::Executor;

/// Layers in one chain at most (as the store allows).
const MAX_CHAIN: usize = 64;
/// Largest manifest accepted from the gateway.
const MAX_MANIFEST_BYTES: usize = 1 << 20;

/// Where a node fetches the layers it lacks.
#[derive(Debug, Clone)]
pub struct Remote {
    /// The gateway's base URL (`http://gateway:8080`), without a trailing `/`.
    pub base_url: String,
    /// The deployment's node token.
    pub token: String,
    /// Largest layer accepted, in bytes.
    pub max_layer_bytes: u64,
    /// Longest wait for a connection, a response's head or the next chunk of a body.
    pub idle_timeout: Duration,
}

impl Remote {
    /// The gateway at `base_url`, with `token`, 16 GiB layers at most and a 60 s idle timeout.
    pub fn new(base_url: impl Into<String>, token: impl Into<String>) -> Remote {
        Remote {
            base_url: base_url.into().trim_end_matches('/').to_string(),
            token: token.into(),
            max_layer_bytes: 16 << 30,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Why an image's layers are not usable on this node.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// A name that is neither pinned nor in the store.
    #[error("image {0:?} is not in this node's image store")]
    NotFound(String),
    /// An assignment naming something that is not a digest.
    #[error("image {name}: {digest:?} is not a sha256 digest")]
    BadDigest {
        /// The image.
        name: String,
        /// What was sent.
        digest: String,
    },
    /// A layer the store lacks, without a gateway to fetch it from.
    #[error("image {name} needs layer {digest}{pin}, which this node's image store does not have, and no gateway is configured to fetch it from")]
    Missing {
        /// The image.
        name: String,
        /// The layer.
        digest: Digest,
        /// Says so when the digest comes from images.lock.
        pin: &'static str,
    },
    /// The gateway could not be asked, or answered with an error status.
    #[error("image {name}: fetching {what} of layer {digest} from {url}: {why}")]
    Fetch {
        /// The image.
        name: String,
        /// The layer.
        digest: Digest,
        /// `manifest` or `bytes`.
        what: &'static str,
        /// The request's URL.
        url: String,
        /// What went wrong.
        why: String,
    },
    /// The layer's bytes were refused (digest mismatch, broken stream, too large).
    #[error("image {name}: layer {digest} from {url} refused: {source}")]
    Refused {
        /// The image.
        name: String,
        /// The layer.
        digest: Digest,
        /// The request's URL.
        url: String,
        /// Why.
        source: Box<FetchError>,
    },
    /// The layers present do not form the chain the assignment names.
    #[error("image {name}: layer chain {actual:?} is not the assigned {expected:?}")]
    Chain {
        /// The image.
        name: String,
        /// What the assignment lists.
        expected: Vec<String>,
        /// What the manifests give.
        actual: Vec<String>,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A node's image store with its pins and, off the gateway's machine, a remote to fetch from.
#[derive(Debug)]
pub struct NodeLayers {
    /// The node's own store.
    store: Store,
    /// Names pinned to digests.
    lock: Lock,
    /// The gateway to fetch missing layers from (`None` in `corral serve`: a shared store).
    remote: Option<Remote>,
    /// One lock per layer being fetched, so concurrent jobs fetch it once.
    flights: Mutex<HashMap<Digest, Arc<Mutex<()>>>>,
    /// Chains (lowest first) of top digests known to be wholly stored: skips the walk next time.
    complete: Mutex<HashMap<Digest, Vec<Digest>>>,
    /// Layers fetched so far (for logs and tests).
    fetched: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl NodeLayers {
    /// `store` with the pins of `lock`, fetching nothing.
    pub fn new(store: Store, lock: Lock) -> NodeLayers {
        NodeLayers {
            store,
            lock,
            remote: None,
            flights: Mutex::default(),
            complete: Mutex::default(),
            fetched: AtomicU64::new(0),
        }
    }

    /// Fetch missing layers from `remote`.
    pub fn with_remote(self, remote: Remote) -> NodeLayers {
        NodeLayers {
            remote: Some(remote),
            ..self
        }
    }

    /// The node's store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether images.lock pins `name`.
    pub fn is_pinned(&self, name: &str) -> bool {
        self.lock.pinned(name).is_some()
    }

    /// Layers fetched from the gateway since this value was made.
    pub fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// The top digest a command on image `name` runs on, its layers stored (fetched if needed):
    /// a digest as given (`sha256:...`, from an assignment), a pinned name's pin, else what the
    /// name points at in the store.
    pub fn current(&self, name: &str) -> Result<Digest, LayerError> {
        if let Ok(digest) = Digest::parse(name) {
            if name.starts_with("sha256:") {
                self.ensure(name, &digest, false)?;
                return Ok(digest);
            }
        }
        if let Some(pin) = self.lock.pinned(name).cloned() {
            self.ensure(name, &pin, true)?;
            return Ok(pin);
        }
        match self.store.lookup(name) {
            Ok(Some(digest)) => Ok(digest),
            Ok(None) | Err(StoreError::BadName(_)) => Err(LayerError::NotFound(name.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    /// Make the assigned image runnable here: its layers stored (fetching those missing) and
    /// forming exactly the chain the assignment lists. Returns its top digest.
    pub fn ensure_image(&self, image: &ImageRef) -> Result<Digest, LayerError> {
        let parse = |d: &String| {
            Digest::parse(d).map_err(|_| LayerError::BadDigest {
                name: image.name.clone(),
                digest: d.clone(),
            })
        };
        let top = parse(&image.digest)?;
        let listed = image
            .layers
            .iter()
            .map(parse)
            .collect::<Result<Vec<_>, _>>()?;
        let pinned = self.lock.pinned(&image.name) == Some(&top);
        let actual = self.ensure(&image.name, &top, pinned)?;
        if !listed.is_empty() && actual != listed {
            return Err(LayerError::Chain {
                name: image.name.clone(),
                expected: image.layers.clone(),
                actual: actual.iter().map(Digest::to_string).collect(),
            });
        }
        Ok(top)
    }

    /// Store `top` and every layer under it, fetching the missing ones lowest first; returns the
    /// chain, lowest first.
    fn ensure(&self, name: &str, top: &Digest, pinned: bool) -> Result<Vec<Digest>, LayerError> {
        if let Some(chain) = lock(&self.complete).get(top) {
            return Ok(chain.clone());
        }
        let mut http = None;
        let mut missing = Vec::new();
        let mut next = Some(top.clone());
        while let Some(digest) = next {
            if missing.len() >= MAX_CHAIN {
                return Err(StoreError::NotFound(format!("{top} (parent chain too long)")).into());
            }
            next = match self.store.manifest(&digest)? {
                Some(m) => m.parent,
                None => {
                    if http.is_none() {
                        http = Some(self.connect(name, &digest, pinned)?);
                    }
                    let m = http.as_ref().expect("connected").manifest(name, &digest)?;
                    let parent = m.parent.clone();
                    missing.push(m);
                    parent
                }
            };
        }
        if let Some(http) = &http {
            for manifest in missing.into_iter().rev() {
                self.fetch_once(http, name, manifest)?;
            }
        }
        let chain = self.store.chain_digests(top)?;
        if chain.last() != Some(top) {
            return Err(StoreError::NotFound(top.to_string()).into());
        }
        lock(&self.complete).insert(top.clone(), chain.clone());
        Ok(chain)
    }

    /// A client to the remote; `Missing` without one.
    fn connect(&self, name: &str, digest: &Digest, pinned: bool) -> Result<Http, LayerError> {
        let Some(remote) = &self.remote else {
            return Err(LayerError::Missing {
                name: name.to_string(),
                digest: digest.clone(),
                pin: if pinned {
                    " (pinned in images.lock)"
                } else {
                    ""
                },
            });
        };
        Http::new(remote.clone()).map_err(|e| LayerError::Fetch {
            name: name.to_string(),
            digest: digest.clone(),
            what: "manifest",
            url: remote.base_url.clone(),
            why: format!("starting the HTTP client: {e}"),
        })
    }

    /// Fetch one layer unless another job is fetching or has fetched it.
    fn fetch_once(&self, http: &Http, name: &str, manifest: Manifest) -> Result<(), LayerError> {
        let digest = manifest.digest.clone();
        let flight = lock(&self.flights)
            .entry(digest.clone())
            .or_default()
            .clone();
        let result = {
            let _flying = lock(&flight);
            if self.store.manifest(&digest)?.is_some() {
                Ok(())
            } else {
                http.layer(name, manifest, &self.store).map(|m| {
                    self.fetched.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(image = name, digest = %m.digest, size = m.size, "layer fetched");
                })
            }
        };
        let mut flights = lock(&self.flights);
        if Arc::strong_count(&flight) == 2 {
            flights.remove(&digest); // nobody else waits on it
        }
        result
    }
}

/// Run `language` on the assigned image: its layers made runnable by the executor, and the
/// language's image replaced by what the executor runs (the top digest). Refuses an assignment
/// naming another image than the one this node chose for the language.
pub(crate) fn assigned_language(
    executor: &dyn Executor,
    language: &Language,
    image: &ImageRef,
) -> Result<Language, String> {
    if image.name != language.image() {
        return Err(format!(
            "the assignment runs {} on image {:?}, but this node runs it on {:?}",
            language.id,
            image.name,
            language.image()
        ));
    }
    let runnable = executor.prepare_image(image).map_err(|e| {
        tracing::warn!(image = %image.name, error = %e, "assigned image unusable");
        e.to_string()
    })?;
    let mut language = language.clone();
    language.images = vec![runnable];
    Ok(language)
}

/// A blocking HTTP client for one `ensure`: its own small runtime, driven only while it waits.
struct Http {
    /// Where and how to ask.
    remote: Remote,
    /// Drives the client while a request or a body read waits.
    runtime: tokio::runtime::Runtime,
    /// The client (one connection pool for the manifests and layers of one image).
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
}

impl Http {
    fn new(remote: Remote) -> io::Result<Http> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Http {
            remote,
            runtime,
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    /// `GET {base}{path}`: the response with a 200 status, or why not.
    fn get(&self, url: &str) -> Result<Incoming, String> {
        let request = hyper::Request::get(url)
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", self.remote.token),
            )
            .body(Empty::new())
            .map_err(|e| format!("bad request: {e}"))?;
        // Timers and connections need the runtime's context: made inside `block_on`.
        let sent = self.runtime.block_on(async {
            tokio::time::timeout(self.remote.idle_timeout, self.client.request(request)).await
        });
        let response = match sent {
            Err(_) => return Err("no response in time".into()),
            Ok(Err(e)) => return Err(error_chain(&e)),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if status != hyper::StatusCode::OK {
            return Err(format!("the gateway answered {status}"));
        }
        Ok(response.into_body())
    }

    /// The manifest of `digest`, checked to describe it.
    fn manifest(&self, name: &str, digest: &Digest) -> Result<Manifest, LayerError> {
        let url = format!("{}/v1/images/{digest}/manifest", self.remote.base_url);
        let failed = |why: String| LayerError::Fetch {
            name: name.to_string(),
            digest: digest.clone(),
            what: "manifest",
            url: url.clone(),
            why,
        };
        let body = self.get(&url).map_err(failed)?;
        let mut reader = BodyReader::new(self, body).take(MAX_MANIFEST_BYTES as u64 + 1);
        let mut json = Vec::new();
        reader
            .read_to_end(&mut json)
            .map_err(|e| failed(e.to_string()))?;
        if json.len() > MAX_MANIFEST_BYTES {
            return Err(failed("manifest too large".into()));
        }
        let m: Manifest =
            serde_json::from_slice(&json).map_err(|e| failed(format!("bad manifest: {e}")))?;
        if m.digest != *digest {
            return Err(failed(format!("the manifest describes {}", m.digest)));
        }
        Ok(m)
    }

    /// Stream layer `manifest.digest` into `store`, verified.
    fn layer(&self, name: &str, manifest: Manifest, store: &Store) -> Result<Manifest, LayerError> {
        let digest = manifest.digest.clone();
        let url = format!("{}/v1/images/{digest}", self.remote.base_url);
        let body = self.get(&url).map_err(|why| LayerError::Fetch {
            name: name.to_string(),
            digest: digest.clone(),
            what: "bytes",
            url: url.clone(),
            why,
        })?;
        let manifest = Manifest {
            source: "fetch".into(),
            ..manifest
        };
        let reader = BodyReader::new(self, body);
        fetch_layer(
            reader,
            &digest,
            manifest,
            store,
            self.remote.max_layer_bytes,
        )
        .map_err(|source| LayerError::Refused {
            name: name.to_string(),
            digest,
            url,
            source: Box::new(source),
        })
    }
}

/// An HTTP body read synchronously: each read drives the runtime until the next chunk arrives.
/// A body that ends early (the connection closed before its announced length or its last chunk)
/// is an error, never a short read that looks complete.
struct BodyReader<'h> {
    http: &'h Http,
    body: Incoming,
    chunk: Bytes,
}

impl<'h> BodyReader<'h> {
    fn new(http: &'h Http, body: Incoming) -> Self {
        BodyReader {
            http,
            body,
            chunk: Bytes::new(),
        }
    }
}

impl Read for BodyReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            let (http, body) = (self.http, &mut self.body);
            let next = http.runtime.block_on(async {
                tokio::time::timeout(http.remote.idle_timeout, body.frame()).await
            });
            match next {
                Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "stalled")),
                Ok(None) => return Ok(0),
                Ok(Some(Err(e))) => return Err(io::Error::other(error_chain(&e))),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.chunk = data;
                    }
                }
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// An error with its causes (hyper's top-level messages alone say little: "client error").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
#[path = "layers_tests.rs"]
mod tests;
