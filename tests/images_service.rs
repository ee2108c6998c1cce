//! Images through the service, end to end (root, as CI runs): `corral image build python`, then a
//! python job through the API of a real `corral serve` runs on the python image (not the host's
//! python), `GET /v1/languages` says so, ruby and go (no host toolchain) run on their images, a layer fetched over HTTP with `fetch_layer` lands in a
//! second store with its digest verified (a tampered stream is refused), and a job whose image
//! was removed after start-up fails instead of falling back to the host.
//!
//! The python image is built (or reused while its recipe is unchanged) in the same cached store as
//! tests/images.rs (`CORRAL_TEST_IMAGES`, default /var/cache/corral-test-images). The server's data
//! directory gets its own `images/` whose `layers/` and `manifests/` link to that cache and whose
//! `refs/` are copies, so removing a name here never touches the cache; its layers are mounted
//! under the data directory's own `images/mnt/` and unmounted at the end.

#[path = "common/http.rs"]
mod http;
// Shared with tests/service.rs; this test uses part of it.
#[allow(dead_code)]
#[path = "service/server.rs"]
mod server;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context};
use axum::body::Bytes;
use corral_images::digest::Digest;
use corral_images::fetch::{fetch_layer, FetchError};
use corral_images::layer::LayerFormat;
use corral_images::store::{Manifest, Store};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use server::{Server, BIN};

fn cache() -> PathBuf {
    PathBuf::from(
        std::env::var("CORRAL_TEST_IMAGES")
            .unwrap_or_else(|_| "/var/cache/corral-test-images".into()),
    )
}

/// `corral image build NAME` in the cache (a no-op while its recipe is unchanged).
fn build(cache: &Path, name: &str) -> anyhow::Result<()> {
    let out = Command::new(BIN)
        .args(["image", "build", name, "--data-dir"])
        .arg(cache)
        .output()?;
    ensure!(
        out.status.success(),
        "corral image build {name} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Replace `data/images` with links to the cache's layers and manifests and copies of its names.
fn share_cached_images(data: &Path, cache: &Path) -> anyhow::Result<()> {
    let images = data.join("images");
    std::fs::remove_dir_all(&images)?;
    for sub in ["refs", "mnt", "tmp"] {
        std::fs::create_dir_all(images.join(sub))?;
    }
    for sub in ["layers", "manifests"] {
        std::os::unix::fs::symlink(cache.join("images").join(sub), images.join(sub))?;
    }
    for entry in std::fs::read_dir(cache.join("images/refs"))? {
        let entry = entry?;
        std::fs::copy(entry.path(), images.join("refs").join(entry.file_name()))?;
    }
    Ok(())
}

fn unmount_layers(data: &Path) {
    for entry in std::fs::read_dir(data.join("images/mnt"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = nix::mount::umount2(&entry.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A GET with `key`: (status, body bytes).
fn get_bytes(url: &str, path: &str, key: Option<&str>) -> anyhow::Result<(u16, Vec<u8>)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let mut req = axum::http::Request::get(format!("{url}{path}"));
        if let Some(key) = key {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        let response = client.request(req.body(Full::new(Bytes::new()))?).await?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok((status, bytes.to_vec()))
    })
}

#[test]
fn python_image_built_then_a_python_job_through_the_api_runs_on_it() -> anyhow::Result<()> {
    server::require_root()?;
    let cache = cache();
    // ruby (~15 s) and go (~30 s, 440 MB) the first time: languages with no host toolchain.
    for name in ["python", "ruby", "go"] {
        build(&cache, name)?;
    }
    let mut server = Server::start(0)?;
    let data = server.dir.path().join("data");
    server.stop()?;
    let mut guard = Unmount { server, data };
    share_cached_images(&guard.data, &cache)?;
    run_checks(&mut guard.server, &guard.data)
}

/// Stops the server, then unmounts the layers it mounted (even when a check panics), before the
/// data directory is removed.
struct Unmount {
    server: Server,
    data: PathBuf,
}

impl Drop for Unmount {
    fn drop(&mut self) {
        if let Err(e) = self.server.stop() {
            eprintln!("warning: stopping the server: {e}");
        }
        unmount_layers(&self.data);
    }
}

fn run_checks(server: &mut Server, data: &Path) -> anyhow::Result<()> {
    server.spawn()?;
    let (status, doc) = server.call("GET", "/v1/languages", None)?;
    ensure!(status == 200, "{status}: {doc}");
    let languages = doc["languages"].as_array().context("languages")?;
    let image_of = |id: &str| {
        languages
            .iter()
            .find(|l| l["id"] == id)
            .map(|l| l["image"].clone())
    };
    for id in ["python", "ruby", "go"] {
        assert_eq!(image_of(id), Some(json!(id)), "{doc}");
    }
    image_only_languages_run(server)?;

    let source =
        "import sys\nprint(open('/etc/corral-image').read().strip())\nprint(sys.version)\n";
    let body = json!({"language": "python", "source": source});
    let (status, job) = server.call("POST", "/v1/jobs?wait=true", Some(&body))?;
    ensure!(status == 200, "{status}: {job}");
    assert_eq!(job["verdict"], "accepted", "{job}");
    let stdout = job["runs"][0]["stdout"].as_str().context("stdout")?;
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("python"), "{stdout}");
    let store = Store::open(data)?;
    let digest = store.lookup("python")?.context("python ref")?;
    let manifest = store.manifest(&digest)?.context("python manifest")?;
    let packaged = &manifest.packages["python3"];
    let upstream = packaged.split(['-', '+']).next().unwrap_or_default();
    let version = lines.next().unwrap_or_default();
    assert!(
        version.starts_with(upstream),
        "sys.version {version:?}, image has python3 {packaged}"
    );

    fetch_over_http(server, &digest)?;

    // The name goes away after start-up: the job fails, it does not run on the host's python.
    std::fs::remove_file(data.join("images/refs/python"))?;
    let (status, job) = server.call("POST", "/v1/jobs?wait=true", Some(&body))?;
    ensure!(status == 200, "{status}: {job}");
    assert_eq!(job["verdict"], "internal_error", "{job}");
    assert_eq!(job["runs"][0]["stdout"], "", "{job}");
    Ok(())
}

/// Ruby, and Go with two files compiled together, on their images only.
fn image_only_languages_run(server: &Server) -> anyhow::Result<()> {
    let ruby = json!({"language": "ruby", "source": "puts \"hello, #{gets.strip}\" + RUBY_VERSION[0]", "stdin": "ruby"});
    let go = json!({"language": "go", "files": [
        {"name": "main.go", "content": "package main\n\nimport \"fmt\"\n\nfunc main() { var s string; fmt.Scan(&s); fmt.Println(greet(s)) }\n"},
        {"name": "greet.go", "content": "package main\n\nfunc greet(s string) string { return \"hello, \" + s }\n"},
    ], "stdin": "go"});
    for (body, expect) in [(ruby, "hello, ruby3\n"), (go, "hello, go\n")] {
        let (status, job) = server.call("POST", "/v1/jobs?wait=true", Some(&body))?;
        ensure!(status == 200, "{status}: {job}");
        assert_eq!(job["verdict"], "accepted", "{job}");
        assert_eq!(job["runs"][0]["stdout"], expect, "{job}");
    }
    Ok(())
}

/// The layer and its manifest over HTTP into a second store, verified; a tampered copy refused.
fn fetch_over_http(server: &Server, digest: &Digest) -> anyhow::Result<()> {
    let path = format!("/v1/images/{digest}");
    let (status, _) = get_bytes(&server.url, &path, None)?;
    assert_eq!(status, 401, "image layers need an API key");
    let missing = format!("/v1/images/sha256:{}", "0".repeat(64));
    assert_eq!(get_bytes(&server.url, &missing, Some(&server.key))?.0, 404);
    let bad = get_bytes(&server.url, "/v1/images/nope", Some(&server.key))?.0;
    assert_eq!(bad, 422, "not a digest");

    let (status, json) = get_bytes(&server.url, &format!("{path}/manifest"), Some(&server.key))?;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&json));
    let manifest: Manifest = serde_json::from_slice(&json)?;
    assert_eq!(&manifest.digest, digest);
    let started = std::time::Instant::now();
    let (status, layer) = get_bytes(&server.url, &path, Some(&server.key))?;
    assert_eq!(status, 200);
    eprintln!("fetched {} bytes in {:?}", layer.len(), started.elapsed());
    let erofs = manifest.format == LayerFormat::Erofs;
    if erofs {
        assert_eq!(
            layer.len() as u64,
            manifest.size,
            "an EROFS layer ships as its file"
        );
    }

    let second = tempfile::tempdir()?;
    let store = Store::open_with_format(second.path(), manifest.format)?;
    let mut tampered = layer.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x01;
    let refused = fetch_layer(
        tampered.as_slice(),
        digest,
        manifest.clone(),
        &store,
        1 << 34,
    );
    assert!(
        matches!(refused, Err(FetchError::Mismatch { .. })),
        "{refused:?}"
    );
    assert!(
        store.manifest(digest)?.is_none(),
        "a tampered layer was registered"
    );

    let got = fetch_layer(layer.as_slice(), digest, manifest, &store, 1 << 34)?;
    assert_eq!(&got.digest, digest);
    assert!(store.manifest(digest)?.is_some());
    if erofs {
        let copy = std::fs::read(store.layer_path(digest, got.format))?;
        assert_eq!(
            &Digest::of_bytes(&copy),
            digest,
            "the stored copy hashes to its digest"
        );
    }
    Ok(())
}
