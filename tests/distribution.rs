//! Layer distribution end to end (root, as CI runs). A gateway serves a small image's layers over
//! a real HTTP server on port 0 with a node token; a worker node on the real sandbox, with an
//! empty image store of its own, fetches the layers its pinned image needs at start-up, runs jobs
//! on them, then fetches a newer image named in the assignments of two concurrent jobs once, runs
//! on the gateway's pin rather than the name's current image, and fails a job whose pinned image
//! nobody has with an internal error, its store unchanged.
//!
//! Fetches that must fail, against a hand-written HTTP server: a tampered layer, a truncated
//! stream, a manifest for another digest, a server that is down, and a pin without a gateway:
//! each a clear error naming the layer, with nothing registered. And a pinned image the node
//! lacks without a gateway keeps its language on it (never on the host image) and fails clearly.
//!
//! The image is made here: a static probe binary in a base layer imported from an OCI tarball,
//! and a layer stacked on it holding a marker file.

#[allow(unused_imports)]
mod common;
#[path = "distribution/support.rs"]
mod support;

use std::sync::Arc;

use anyhow::{ensure, Context};
use common::http::call;
use corral_images::digest::Digest;
use corral_images::lock::Lock;
use corral_images::serve::LayerServer;
use corral_images::store::Store;
use corral_protocol::ImageRef;
use corral_worker::{LayerError, NodeLayers, Remote};
use serde_json::json;
use support::{import_probe, snapshot, start_gateway, start_node, Fake, TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_an_empty_store_fetches_layers_from_the_gateway_and_runs_jobs_on_them(
) -> anyhow::Result<()> {
    common::require_root();
    let gateway = start_gateway().await?;
    let first = import_probe(&gateway.images, "v1")?;
    auth_of_the_image_routes(&gateway, &first.digest).await?;

    // The node pins `probe` to the first image, has none of its layers, and fetches them at
    // start-up (its self-test runs on the image).
    let pin = Lock::parse(&format!("[images.probe]\ndigest = \"{}\"\n", first.digest))?;
    let node = start_node(1, &gateway, pin).await?;
    let result = async {
        let chain = gateway.images.chain_digests(&first.digest)?;
        ensure!(chain.len() == 2, "two layers: {chain:?}");
        assert_eq!(node.layers.fetched(), 2, "both layers fetched");
        for digest in &chain {
            let m = node.layers.store().manifest(digest)?.context("fetched")?;
            assert_eq!(m.source, "fetch");
        }
        let doc = run_probe(&gateway, "hello\n").await?;
        assert_eq!(doc["verdict"], "accepted", "{doc}");
        assert_eq!(doc["runs"][0]["stdout"], "v1\nhello\n", "{doc}");
        assert_eq!(node.layers.fetched(), 2, "nothing fetched twice");

        assigned_images_are_fetched_once(&gateway, &node).await?;
        pins_decide_the_image(&gateway, &first.digest).await?;
        pinned_but_absent_fails_the_job(&gateway, &node).await
    }
    .await;
    node.stop().await?;
    result
}

/// The image routes take the node token or a tenant key, nothing else.
async fn auth_of_the_image_routes(gateway: &support::Gw, digest: &Digest) -> anyhow::Result<()> {
    let path = format!("/v1/images/{digest}/manifest");
    let (status, doc) = call(&gateway.url, "GET", &path, Some(TOKEN), None).await?;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["digest"], digest.to_string());
    for (key, expect) in [
        (Some(gateway.key.as_str()), 200),
        (Some("not-the-token"), 401),
        (None, 401),
    ] {
        let (status, _) = call(&gateway.url, "GET", &path, key, None).await?;
        assert_eq!(status, expect, "key {key:?}");
    }
    // The node token opens the image routes only.
    let (status, _) = call(&gateway.url, "GET", "/v1/jobs", Some(TOKEN), None).await?;
    assert_eq!(status, 401, "the node token is not a tenant key");
    Ok(())
}

/// A newer image under the same name: assignments name its exact layers, the node fetches the
/// ones it lacks before the jobs run, once for two jobs running at the same time.
async fn assigned_images_are_fetched_once(
    gateway: &support::Gw,
    node: &support::TestNode,
) -> anyhow::Result<()> {
    let second = import_probe(&gateway.images, "v2")?;
    let chain = gateway.images.chain_digests(&second.digest)?;
    let lacking = chain
        .iter()
        .filter(|d| matches!(node.layers.store().manifest(d), Ok(None)))
        .count();
    ensure!(lacking >= 1, "the new top layer is not on the node yet");
    let before = node.layers.fetched();
    let (a, b) = tokio::join!(run_probe(gateway, "again\n"), run_probe(gateway, "again\n"));
    for doc in [a?, b?] {
        assert_eq!(doc["verdict"], "accepted", "{doc}");
        assert_eq!(doc["runs"][0]["stdout"], "v2\nagain\n", "{doc}");
    }
    assert_eq!(
        node.layers.fetched() - before,
        lacking as u64,
        "each missing layer fetched exactly once"
    );
    Ok(())
}

/// The gateway's lock pins `probe` to the first image while the name points at the second: jobs
/// run on exactly the pinned digest.
async fn pins_decide_the_image(gateway: &support::Gw, first: &Digest) -> anyhow::Result<()> {
    let lock = Lock::parse(&format!("[images.probe]\ndigest = \"{first}\"\n"))?;
    gateway
        .layers
        .set(LayerServer::new(gateway.images.clone(), lock));
    let doc = run_probe(gateway, "pinned\n").await?;
    assert_eq!(doc["runs"][0]["stdout"], "v1\npinned\n", "{doc}");
    Ok(())
}

/// The gateway's lock pins `probe` to a digest nobody has: the job fails with an internal error
/// (the layer cannot be fetched), it does not run on another image, and the node's store is as it
/// was.
async fn pinned_but_absent_fails_the_job(
    gateway: &support::Gw,
    node: &support::TestNode,
) -> anyhow::Result<()> {
    let absent = Digest::of_bytes(b"a layer nobody built");
    let lock = Lock::parse(&format!("[images.probe]\ndigest = \"{absent}\"\n"))?;
    gateway
        .layers
        .set(LayerServer::new(gateway.images.clone(), lock));
    let before = snapshot(node.layers.store());
    let doc = run_probe(gateway, "never\n").await?;
    assert_eq!(doc["verdict"], "internal_error", "{doc}");
    assert_eq!(doc["runs"][0]["stdout"], "", "{doc}");
    assert_eq!(snapshot(node.layers.store()), before, "the store changed");
    // What the node reports for it, through the layer module itself.
    let image = ImageRef {
        name: "probe".into(),
        digest: absent.to_string(),
        layers: Vec::new(),
    };
    let layers = node.layers.clone();
    let e = tokio::task::spawn_blocking(move || layers.ensure_image(&image))
        .await?
        .unwrap_err()
        .to_string();
    assert!(e.contains(&absent.to_string()) && e.contains("404"), "{e}");
    Ok(())
}

/// The image as an assignment names it.
fn image_ref(store: &Store, top: &Digest) -> anyhow::Result<ImageRef> {
    Ok(ImageRef {
        name: "probe".into(),
        digest: top.to_string(),
        layers: store
            .chain_digests(top)?
            .iter()
            .map(Digest::to_string)
            .collect(),
    })
}

/// A node store fetching from `url`, in its own temporary directory.
fn node_store(url: &str) -> anyhow::Result<(tempfile::TempDir, NodeLayers)> {
    let dir = tempfile::tempdir()?;
    let layers = NodeLayers::new(Store::open(dir.path())?, Lock::default())
        .with_remote(Remote::new(url, TOKEN));
    Ok((dir, layers))
}

#[test]
fn refused_fetches_are_clear_errors_and_leave_the_store_unchanged() -> anyhow::Result<()> {
    common::require_root();
    let source = tempfile::tempdir()?;
    let images = Store::open(source.path())?;
    let top = import_probe(&images, "v1")?.digest;
    let image = image_ref(&images, &top)?;
    let lowest = Digest::parse(&image.layers[0])?;
    let served = Arc::new(LayerServer::new(images.clone(), Lock::default()));

    for (fake, expect) in [
        (Fake::Tamper, "digest mismatch"),
        (Fake::Truncate, "receiving layer"),
        (Fake::WrongManifest, "describes"),
    ] {
        let server = support::FakeServer::start(served.clone(), fake, lowest.clone())?;
        let (_dir, layers) = node_store(&server.url)?;
        let before = snapshot(layers.store());
        let e = layers.ensure_image(&image).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(expect) && text.contains(&lowest.to_string()),
            "{fake:?}: {text}"
        );
        match fake {
            Fake::WrongManifest => assert!(matches!(e, LayerError::Fetch { .. }), "{e:?}"),
            _ => assert!(matches!(e, LayerError::Refused { .. }), "{e:?}"),
        }
        assert_eq!(
            snapshot(layers.store()),
            before,
            "{fake:?} changed the store"
        );
        assert!(
            server.saw_only_the_node_token(),
            "{fake:?}: the node sends its token"
        );
    }

    // The same server, honest: the layers land and the chain is the assigned one.
    let server = support::FakeServer::start(served, Fake::Honest, lowest.clone())?;
    let (_dir, layers) = node_store(&server.url)?;
    assert_eq!(layers.ensure_image(&image)?, top);
    assert_eq!(layers.fetched(), 2);
    // A wrong chain in the assignment is refused even with every layer present.
    let mut reordered = image.clone();
    reordered.layers.reverse();
    let e = layers.ensure_image(&reordered).unwrap_err();
    assert!(matches!(e, LayerError::Chain { .. }), "{e:?}");

    // The gateway is down: a clear error, nothing registered.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let (_dir, layers) = node_store(&format!("http://127.0.0.1:{port}"))?;
    let before = snapshot(layers.store());
    let e = layers.ensure_image(&image).unwrap_err();
    assert!(matches!(e, LayerError::Fetch { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains(&top.to_string()) && text.contains("onnect"),
        "{text}"
    );
    assert_eq!(snapshot(layers.store()), before);

    // A pinned image without a gateway to fetch from: the pin is named in the error.
    let dir = tempfile::tempdir()?;
    let pin = Lock::parse(&format!("[images.probe]\ndigest = \"{top}\"\n"))?;
    let layers = NodeLayers::new(Store::open(dir.path())?, pin);
    let e = layers.current("probe").unwrap_err().to_string();
    assert!(
        e.contains("pinned in images.lock") && e.contains(&top.to_string()),
        "{e}"
    );
    Ok(())
}

/// A pinned image the node lacks and cannot fetch: the language stays on it (it does not move to
/// the host image listed after it), its self-test fails so it is not offered, and a command on
/// it fails with an error naming the pin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_pinned_image_is_not_replaced_by_the_host_image() -> anyhow::Result<()> {
    use corral_images::language::{Language, LanguageSet};
    use corral_worker::{ExecRequest, Executor, SandboxExecutor};

    common::require_root();
    let (sandbox, mut cleanup) = support::test_sandbox(2)?;
    let dir = tempfile::tempdir()?;
    let absent = Digest::of_bytes(b"never built");
    let pin = Lock::parse(&format!("[images.probe]\ndigest = \"{absent}\"\n"))?;
    let layers = Arc::new(NodeLayers::new(Store::open(dir.path())?, pin));
    cleanup.dir = Some(dir);
    let executor = Arc::new(SandboxExecutor::with_layers(sandbox, layers));
    let text = support::LANGUAGE.replace(r#"images = ["probe"]"#, r#"images = ["probe", "host"]"#);
    let mut languages = LanguageSet::new(vec![Language::parse("probe.toml", &text)?])?;
    let chooser = executor.clone();
    let (languages, dropped) = tokio::task::spawn_blocking(move || {
        let dropped = languages.choose_images(|image| chooser.has_image(image));
        (languages, dropped)
    })
    .await?;
    assert!(dropped.is_empty(), "{dropped:?}");
    assert_eq!(languages.get("probe").context("probe")?.image(), "probe");
    let offered = corral_worker::selftest::self_test(executor.clone(), &languages, 1).await;
    assert!(offered.is_empty(), "{offered:?}");
    let request = ExecRequest {
        image: "probe".into(),
        argv: vec!["/bin/true".into()],
        files: Vec::new(),
        stdin: Vec::new(),
        limits: corral_sandbox::Limits::default(),
        network: false,
        collect: Vec::new(),
        collect_max_bytes: 0,
    };
    let run = tokio::task::spawn_blocking(move || {
        let cancel = corral_worker::CancelToken::new().expect("cancel token");
        executor.run(request, &cancel, &mut |_, _| {}).map(|_| ())
    })
    .await?;
    let e = run.unwrap_err().to_string();
    assert!(
        e.contains("pinned in images.lock") && e.contains(&absent.to_string()),
        "{e}"
    );
    Ok(())
}

/// A `probe` job with `source` through `POST /v1/jobs?wait=true`: the finished job document.
async fn run_probe(gateway: &support::Gw, source: &str) -> anyhow::Result<serde_json::Value> {
    let job = json!({"language": "probe", "source": source});
    let (status, doc) = call(
        &gateway.url,
        "POST",
        "/v1/jobs?wait=true",
        Some(&gateway.key),
        Some(&job),
    )
    .await?;
    ensure!(status == 200, "{status}: {doc}");
    Ok(doc)
}
