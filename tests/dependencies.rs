//! The workspace's dependency policy (DESIGN.md), checked from `cargo metadata` so that it cannot go
//! stale: the balancer depends only on protocol, the gateway on protocol and the balancer (its
//! dispatcher calls the balancer's pure placement functions); the worker on protocol, images and
//! sandbox; sandbox, images and protocol on no workspace crate. The gateway never reaches the
//! sandbox, the images or the worker: `corral serve` wires them together. And `unsafe` is forbidden
//! in every crate but the sandbox.

use std::collections::BTreeMap;
use std::process::Command;

/// Workspace crates each crate may depend on (normal dependencies; dev-dependencies are free).
const ALLOWED: &[(&str, &[&str])] = &[
    ("corral-sandbox", &[]),
    ("corral-protocol", &[]),
    ("corral-images", &[]),
    ("corral-balancer", &["corral-protocol"]),
    ("corral-gateway", &["corral-protocol", "corral-balancer"]),
    (
        "corral-worker",
        &["corral-protocol", "corral-images", "corral-sandbox"],
    ),
];

/// Normal workspace dependencies of every workspace package.
fn workspace_dependencies() -> BTreeMap<String, Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let packages = meta["packages"].as_array().expect("packages");
    let names: Vec<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|d| d["kind"].is_null())
                .filter_map(|d| d["name"].as_str())
                .filter(|d| names.contains(d))
                .map(String::from)
                .collect();
            (p["name"].as_str().unwrap_or_default().to_string(), deps)
        })
        .collect()
}

#[test]
fn crates_depend_only_in_the_designed_direction() {
    let deps = workspace_dependencies();
    for (krate, allowed) in ALLOWED {
        let actual = deps
            .get(*krate)
            .unwrap_or_else(|| panic!("{krate} is not in the workspace"));
        let extra: Vec<&String> = actual
            .iter()
            .filter(|d| !allowed.contains(&d.as_str()))
            .collect();
        assert!(
            extra.is_empty(),
            "{krate} depends on {extra:?}; allowed: {allowed:?}"
        );
    }
}

#[test]
fn unsafe_is_forbidden_outside_the_sandbox() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for entry in [
        "protocol/src/lib.rs",
        "gateway/src/lib.rs",
        "balancer/src/lib.rs",
        "worker/src/lib.rs",
        "images/src/lib.rs",
        "bench/src/lib.rs",
        "src/main.rs",
    ] {
        let text = std::fs::read_to_string(root.join(entry)).expect(entry);
        assert!(
            text.contains("#![forbid(unsafe_code)]"),
            "{entry} must forbid unsafe code"
        );
    }
}
