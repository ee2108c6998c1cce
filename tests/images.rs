//! Images end to end (root, as CI runs): the python image built from its recipe runs a job that
//! sees the image's python and not the host's, and an OCI tarball made here (two layers, a
//! whiteout, an opaque directory) is imported and its merged view checked from inside a sandbox.
//!
//! The python image is built into a fixed host directory outside the checkout
//! (`CORRAL_TEST_IMAGES`, default /var/cache/corral-test-images) and reused across CI runs while
//! its recipe hash is unchanged; the first build takes about two minutes.

#[allow(unused_imports)]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn corral(args: &[&str], data_dir: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("running corral");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// Unmount the store's layer mounts (a node keeps them; a test cleans up).
fn unmount_layers(data_dir: &Path) {
    let mnt = data_dir.join("images/mnt");
    for entry in std::fs::read_dir(&mnt).into_iter().flatten().flatten() {
        let _ = nix::mount::umount2(&entry.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

fn job(image: &str, data_dir: &Path, cmd: &[&str]) -> serde_json::Value {
    let data = data_dir.display().to_string();
    let run = common::cli::run_with(&["--image", image, "--data-dir", &data], cmd, &[]);
    assert!(run.leftovers.is_empty(), "{:?}", run.leftovers);
    let value = run.json().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(value["status"], "ok", "{value}");
    value
}

#[test]
fn python_image_from_its_recipe_runs_jobs_with_the_images_python() {
    common::require_root();
    let cache = PathBuf::from(
        std::env::var("CORRAL_TEST_IMAGES")
            .unwrap_or_else(|_| "/var/cache/corral-test-images".into()),
    );
    let (ok, _, err) = corral(&["image", "build", "python"], &cache);
    assert!(ok, "corral image build python failed:\n{err}");
    let (ok, ls, err) = corral(&["image", "ls", "--json"], &cache);
    assert!(ok, "{err}");
    let images: serde_json::Value = serde_json::from_str(&ls).unwrap();
    let python = images
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "python")
        .expect("python listed");
    let version = python["manifest"]["packages"]["python3"]
        .as_str()
        .expect("python3 version recorded")
        .to_string();
    let upstream = version.split(['-', '+']).next().unwrap().to_string();

    let out = job("python", &cache, &["/usr/bin/python3", "--version"]);
    assert_eq!(
        out["stdout"].as_str().unwrap().trim(),
        format!("Python {upstream}"),
        "manifest says python3 {version}"
    );
    let out = job("python", &cache, &["/bin/sh", "-c", "cat /etc/corral-image; test -e /usr/bin/mmdebstrap && echo host-visible || echo host-hidden"]);
    assert_eq!(out["stdout"], "python\nhost-hidden\n");
    let out = job(
        "python",
        &cache,
        &[
            "python3",
            "-c",
            "import os; print(os.environ.get('PYTHONDONTWRITEBYTECODE'))",
        ],
    );
    assert_eq!(out["stdout"], "1\n", "the image's env reaches the job");

    failed_builds_register_nothing(&cache);

    let data = cache.display().to_string();
    let run = common::cli::run_with(
        &["--image", "no-such-image", "--data-dir", &data],
        &["true"],
        &[],
    );
    assert!(
        !run.status.success(),
        "a missing image must fail, not fall back to the host"
    );
    assert_eq!(run.stderr.trim().lines().count(), 1, "{:?}", run.stderr);
    assert!(
        run.stderr.contains("no-such-image") && run.stderr.contains("not found"),
        "{}",
        run.stderr
    );
    unmount_layers(&cache);
}

/// Recipes stacked on the cached python image that fail in a command or in their self-test: the
/// build errors out, and the store has no new name, layer or staging directory afterwards.
fn failed_builds_register_nothing(cache: &Path) {
    let recipes = tempfile::tempdir().unwrap();
    std::fs::write(
        recipes.path().join("broken-cmd.toml"),
        "parent = \"python\"\ncommands = [\"echo partial > /partial && false\"]\n",
    )
    .unwrap();
    std::fs::write(
        recipes.path().join("broken-test.toml"),
        "parent = \"python\"\n[self_test]\ncommand = \"python3 -c 'print(41)'\"\nexpect = \"42\"\n",
    )
    .unwrap();
    let layers = |dir: &str| {
        std::fs::read_dir(cache.join("images").join(dir))
            .unwrap()
            .count()
    };
    let before = (layers("layers"), layers("manifests"), layers("refs"));
    // The cache directory outlives runs: a run killed mid-build may have left a staging directory.
    let staging_before = layers("tmp");
    let recipes_dir = recipes.path().to_str().unwrap();
    for (name, expect) in [
        ("broken-cmd", "failed"),
        ("broken-test", "self-test failed"),
    ] {
        let (ok, _, err) = corral(&["image", "build", name, "--recipes", recipes_dir], cache);
        assert!(!ok, "{name} must fail");
        assert!(err.contains(expect), "{name}: {err}");
        assert_eq!(
            (layers("layers"), layers("manifests"), layers("refs")),
            before,
            "{name} left something registered"
        );
        assert_eq!(
            layers("tmp"),
            staging_before,
            "{name} left its staging directory"
        );
    }
}

const PROBE: &str = r#"
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static int cmp(const void *a, const void *b) { return strcmp(*(char **)a, *(char **)b); }
int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        DIR *d = opendir(argv[i]);
        if (d) {
            char *names[64]; int n = 0; struct dirent *e;
            while ((e = readdir(d)) && n < 64)
                if (e->d_name[0] != '.') names[n++] = strdup(e->d_name);
            qsort(names, n, sizeof *names, cmp);
            printf("%s:", argv[i]);
            for (int j = 0; j < n; j++) printf(" %s", names[j]);
            printf("\n");
            continue;
        }
        FILE *f = fopen(argv[i], "r");
        if (!f) { printf("%s: missing\n", argv[i]); continue; }
        char buf[256]; size_t len = fread(buf, 1, sizeof buf - 1, f); buf[len] = 0;
        printf("%s= %s", argv[i], buf);
        fclose(f);
    }
    printf("GREETING=%s\n", getenv("GREETING") ? getenv("GREETING") : "(unset)");
    return 0;
}
"#;

/// An OCI layout tarball of `layers`, tagged `probe:1`, whose config sets GREETING.
fn oci_tarball(layers: &[Vec<u8>]) -> Vec<u8> {
    common::oci::tarball(
        layers,
        &["PATH=/bin", "GREETING=from-the-config"],
        "probe:1",
    )
}

#[test]
fn imported_oci_tarball_shows_its_merged_view_inside_the_sandbox() {
    common::require_root();
    let probe = common::compile_c("image_probe", PROBE);
    let lower = common::oci::layer(&[
        ("bin", None, 0o755),
        ("bin/probe", Some(&probe), 0o755),
        ("etc", None, 0o755),
        ("etc/a", Some(b"lower\n"), 0o644),
        ("gone.txt", Some(b"gone\n"), 0o644),
        ("d", None, 0o755),
        ("d/old1", Some(b"1"), 0o644),
        ("d/old2", Some(b"2"), 0o644),
    ]);
    let upper = common::oci::layer(&[
        (".wh.gone.txt", Some(b""), 0o644),
        ("d", None, 0o755),
        ("d/.wh..wh..opq", Some(b""), 0o644),
        ("d/new", Some(b"n"), 0o644),
        ("etc/a", Some(b"upper\n"), 0o644),
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let file = tmp.path().join("probe.tar");
    std::fs::write(&file, oci_tarball(&[lower, upper])).unwrap();
    let (ok, out, err) = corral(&["image", "import", file.to_str().unwrap()], &data);
    assert!(ok, "import failed: {err}");
    assert!(out.starts_with("probe:1 sha256:"), "{out}");

    let value = job(
        "probe:1",
        &data,
        &["/bin/probe", "/etc/a", "/gone.txt", "/d"],
    );
    assert_eq!(
        value["stdout"],
        "/etc/a= upper\n/gone.txt: missing\n/d: new\nGREETING=from-the-config\n"
    );

    let (ok, out, err) = corral(&["image", "rm", "probe:1"], &data);
    assert!(ok, "{err}");
    assert!(out.contains("probe:1"));
    let (ok, _, err) = corral(&["image", "rm", "probe:1"], &data);
    assert!(!ok && err.contains("not found"), "{err}");
    unmount_layers(&data);
}
