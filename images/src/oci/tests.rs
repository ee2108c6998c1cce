//! Import, export and fetch tests on a directory-format store in a temporary data directory.
//! They create files owned by root and overlay whiteouts, so they need root (CI runs as root).

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::*;
use crate::extract::Caps;
use crate::fetch;
use crate::layer::LayerFormat;
use crate::tarball::{write_tree, TarForm};

fn need_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root: extraction sets owners and creates whiteouts"
    );
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with_format(dir.path(), LayerFormat::Dir).unwrap();
    (dir, store)
}

/// A tar entry; `name` is written raw into the header (so `..` and `/` paths can be made).
enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Sym(&'a str, &'a str),
    Hard(&'a str, &'a str),
    /// A file header claiming this size, with no data behind it.
    Huge(&'a str, u64),
}

fn raw_header(name: &str, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_old();
    let bytes = name.as_bytes();
    h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
    h.set_entry_type(kind);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_size(size);
    h
}

fn layer(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            E::Dir(n) => {
                let mut h = raw_header(n, tar::EntryType::Directory, 0);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            E::File(n, data) => {
                let mut h = raw_header(n, tar::EntryType::Regular, data.len() as u64);
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
            E::Sym(n, t) | E::Hard(n, t) => {
                let kind = if matches!(e, E::Sym(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                };
                let mut h = raw_header(n, kind, 0);
                h.as_old_mut().linkname[..t.len()].copy_from_slice(t.as_bytes());
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            }
            E::Huge(n, size) => {
                let mut h = raw_header(n, tar::EntryType::Regular, *size);
                h.set_cksum();
                b.get_mut().extend_from_slice(h.as_bytes());
            }
        }
    }
    b.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn config(layers: &[Vec<u8>]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| Digest::of_bytes(l).to_string())
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin", "GREETING=hi=there"], "WorkingDir": "/work"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

fn outer(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// An OCI layout tarball of these (uncompressed) layers; blobs may be given gzipped.
fn oci(layers: &[Vec<u8>], gz: bool, tag: &str) -> Vec<u8> {
    let config = config(layers);
    let blobs: Vec<Vec<u8>> = layers
        .iter()
        .map(|l| if gz { gzip(l) } else { l.clone() })
        .collect();
    let kind = if gz {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    } else {
        "application/vnd.oci.image.layer.v1.tar"
    };
    let descs: Vec<_> = blobs.iter().map(|b| serde_json::json!({"mediaType": kind, "digest": Digest::of_bytes(b).to_string(), "size": b.len()})).collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": Digest::of_bytes(&config).to_string(), "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": Digest::of_bytes(&manifest).to_string(),
        "size": manifest.len(), "annotations": {"io.containerd.image.name": tag}}]}))
    .unwrap();
    let mut members = vec![
        (
            "oci-layout".to_string(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".to_string(), index),
    ];
    for blob in [manifest, config].into_iter().chain(blobs) {
        members.push((
            format!("blobs/sha256/{}", Digest::of_bytes(&blob).hex()),
            blob,
        ));
    }
    outer(&members)
}

fn two_layers() -> Vec<Vec<u8>> {
    let lower = layer(&[
        E::Dir("a"),
        E::File("a/gone", b"x"),
        E::File("a/stays", b"y"),
        E::Dir("b"),
        E::File("b/old", b"o"),
        E::Dir("b/sub"),
        E::File("b/sub/deep", b"d"),
        E::File("c", b"one"),
        E::Sym("a/link", "/a/stays"),
    ]);
    let upper = layer(&[
        E::File("a/.wh.gone", b""),
        E::Dir("b"),
        E::File("b/.wh..wh..opq", b""),
        E::File("b/new", b"n"),
        E::File("c", b"two"),
    ]);
    vec![lower, upper]
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
                out.push(format!("{rel}/"));
            } else if ft.is_symlink() {
                out.push(format!(
                    "{rel} -> {}",
                    std::fs::read_link(e.path()).unwrap().display()
                ));
            } else {
                out.push(format!(
                    "{rel} = {}",
                    String::from_utf8_lossy(&std::fs::read(e.path()).unwrap())
                ));
            }
        }
    }
    out.sort();
    out
}

const MERGED: &[&str] = &[
    "a/",
    "a/link -> /a/stays",
    "a/stays = y",
    "b/",
    "b/new = n",
    "c = two",
];

fn assert_store_empty(store: &Store) {
    assert!(store.list().unwrap().is_empty());
    for sub in ["layers", "manifests", "refs", "tmp"] {
        let n = std::fs::read_dir(store.root().join(sub)).unwrap().count();
        assert_eq!(n, 0, "{sub} should be empty");
    }
}

#[test]
fn oci_layout_import_applies_whiteouts_and_opaque_dirs_and_takes_the_config() {
    need_root();
    let (tmp, store) = store();
    for gz in [false, true] {
        let file = write(
            tmp.path(),
            "img.tar",
            &oci(&two_layers(), gz, "docker.io/library/demo:1.0"),
        );
        let m = import(&store, &file, None, &ImportOptions::default()).unwrap();
        assert_eq!(m.name, "demo:1.0");
        assert_eq!(m.env.get("GREETING").map(String::as_str), Some("hi=there"));
        assert_eq!(m.workdir.as_deref(), Some("/work"));
        let r = store.resolve("demo:1.0").unwrap();
        assert_eq!(r.layers.len(), 1);
        assert_eq!(listing(&r.layers[0]), MERGED, "gz={gz}");
        for path in ["c", "b", "a", "a/link"] {
            let meta = std::fs::symlink_metadata(r.layers[0].join(path)).unwrap();
            assert_eq!(meta.mtime(), 0, "{path} keeps the archive's mtime");
        }
        store.remove("demo:1.0").unwrap();
    }
}

#[test]
fn docker_save_import_checks_diff_ids_and_uses_repo_tags() {
    need_root();
    let (tmp, store) = store();
    let layers = two_layers();
    let config = config(&layers);
    let config_name = format!("{}.json", Digest::of_bytes(&config).hex());
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name, "RepoTags": ["saved:latest"], "Layers": ["l1/layer.tar", "l2/layer.tar"]}]))
    .unwrap();
    let members = vec![
        ("manifest.json".to_string(), manifest),
        (config_name, config),
        ("l1/layer.tar".to_string(), layers[0].clone()),
        ("l2/layer.tar".to_string(), gzip(&layers[1])),
    ];
    let file = write(tmp.path(), "saved.tar", &outer(&members));
    let m = import(&store, &file, None, &ImportOptions::default()).unwrap();
    assert_eq!(m.name, "saved:latest");
    assert_eq!(
        listing(&store.resolve("saved:latest").unwrap().layers[0]),
        MERGED
    );
    let m2 = import(&store, &file, Some("renamed"), &ImportOptions::default()).unwrap();
    assert_eq!(m2.digest, m.digest, "the same tree is the same layer");
}

#[test]
fn digest_mismatch_and_truncation_are_errors_and_leave_the_store_unchanged() {
    need_root();
    let (tmp, store) = store();
    let mut good = oci(&two_layers(), false, "x:1");
    // Flip one byte inside the last blob (the upper layer's data), keeping the tar valid.
    let pos = good.windows(3).rposition(|w| w == b"two").unwrap();
    good[pos] = b'T';
    let file = write(tmp.path(), "bad.tar", &good);
    let e = import(&store, &file, None, &ImportOptions::default()).unwrap_err();
    assert!(matches!(e, ImportError::DigestMismatch { .. }), "{e}");
    assert!(e.to_string().contains("digest mismatch"), "{e}");
    assert_store_empty(&store);
    let full = oci(&two_layers(), false, "x:1");
    let file = write(tmp.path(), "cut.tar", &full[..full.len() - 2048 - 700]);
    let e = import(&store, &file, None, &ImportOptions::default()).unwrap_err();
    assert_store_empty(&store);
    assert!(!e.to_string().is_empty());
    let file = write(tmp.path(), "junk.tar", b"not a tarball at all");
    assert!(import(&store, &file, None, &ImportOptions::default()).is_err());
    assert_store_empty(&store);
}

#[test]
fn malicious_layers_are_refused_with_clear_errors() {
    need_root();
    let (tmp, store) = store();
    let cases: Vec<(Vec<E>, &str)> = vec![
        (vec![E::File("../evil", b"x")], "escapes the root"),
        (vec![E::File("a/../../evil", b"x")], "escapes the root"),
        (vec![E::File("/etc/evil", b"x")], "escapes the root"),
        (
            vec![E::Sym("l", "/etc"), E::File("l/passwd", b"x")],
            "through a symlink",
        ),
        (
            vec![
                E::Sym("l", "."),
                E::Dir("d"),
                E::Sym("d/up", "../.."),
                E::File("d/up/x", b"x"),
            ],
            "escapes the root",
        ),
        (
            vec![E::Hard("h", "../../etc/passwd")],
            "points outside the root",
        ),
        (vec![E::Hard("h", "/etc/passwd")], "points outside the root"),
        (vec![E::Hard("h", "missing")], "points outside the root"),
        (vec![E::Sym("s", "../../../etc/shadow")], "escapes the root"),
        (vec![E::Huge("big", 1 << 40)], "above the cap"),
    ];
    let opts = ImportOptions {
        caps: Caps {
            entry_bytes: 1 << 20,
            total_bytes: 4 << 20,
            entries: 100,
        },
        ..Default::default()
    };
    for (entries, expect) in cases {
        let file = write(
            tmp.path(),
            "evil.tar",
            &oci(&[layer(&entries)], false, "evil:1"),
        );
        let e = import(&store, &file, None, &opts).unwrap_err().to_string();
        assert!(e.contains(expect), "expected {expect:?} in {e:?}");
        assert_store_empty(&store);
    }
    assert!(!Path::new("/etc/evil").exists() && !Path::new("/evil").exists());
    // A symlink inside the root is fine, and later entries may replace it without following it.
    let file = write(
        tmp.path(),
        "ok.tar",
        &oci(
            &[layer(&[E::Sym("l", "/etc"), E::File("l", b"plain")])],
            false,
            "ok:1",
        ),
    );
    import(&store, &file, None, &opts).unwrap();
    assert_eq!(
        listing(&store.resolve("ok:1").unwrap().layers[0]),
        ["l = plain"]
    );
    // Where the sandbox mounts (/proc, /dev, /tmp, /box), an image must have a directory or nothing.
    let file = write(
        tmp.path(),
        "proc.tar",
        &oci(&[layer(&[E::Sym("proc", "/etc")])], false, "proc:1"),
    );
    import(&store, &file, None, &opts).unwrap();
    let e = store.resolve("proc:1").unwrap_err().to_string();
    assert!(e.contains("/proc is not a directory"), "{e}");
}

#[test]
fn raw_and_oci_tar_forms_convert_whiteouts_and_opaque_dirs() {
    need_root();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("layer");
    std::fs::create_dir_all(root.join("opq")).unwrap();
    std::fs::write(root.join("opq/f"), b"f").unwrap();
    xattr::set(root.join("opq"), "trusted.overlay.opaque", b"y").unwrap();
    nix::sys::stat::mknod(
        &root.join("gone"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        0,
    )
    .unwrap();
    let oci = write_tree(&root, TarForm::Oci, Vec::new()).unwrap();
    let names: Vec<String> = tar::Archive::new(&oci[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert_eq!(names, [".wh.gone", "opq", "opq/.wh..wh..opq", "opq/f"]);
    let raw = write_tree(&root, TarForm::Raw, Vec::new()).unwrap();
    assert_eq!(
        raw,
        write_tree(&root, TarForm::Raw, Vec::new()).unwrap(),
        "deterministic"
    );
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    crate::extract::extract(
        &raw[..],
        &out,
        Whiteouts::Keep,
        &Caps::default(),
        &mut Default::default(),
    )
    .unwrap();
    let wh = std::fs::symlink_metadata(out.join("gone")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    assert!(crate::tarball::is_opaque(&out.join("opq")));
    assert_eq!(
        crate::store::dir_digest(&out).unwrap(),
        crate::store::dir_digest(&root).unwrap()
    );
}

#[test]
fn export_round_trips_and_fetch_verifies_the_digest() {
    need_root();
    let (tmp, store) = store();
    let file = write(tmp.path(), "img.tar", &oci(&two_layers(), true, "demo:1"));
    let m = import(&store, &file, None, &ImportOptions::default()).unwrap();
    let exported = crate::export::export(&store, "demo:1", Vec::new()).unwrap();
    let file = write(tmp.path(), "exported.tar", &exported);
    let again = import(&store, &file, Some("again"), &ImportOptions::default()).unwrap();
    assert_eq!(listing(&store.resolve("again").unwrap().layers[0]), MERGED);
    assert_eq!(again.env, m.env);
    assert_eq!(again.workdir, m.workdir);

    let (_tmp2, other) = self::store();
    let (mut reader, _) = fetch::open_layer(&store, &m.digest).unwrap();
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).unwrap();
    let wrong = Digest::of_bytes(b"something else");
    let e = fetch::fetch_layer(
        &bytes[..],
        &wrong,
        Manifest {
            digest: wrong.clone(),
            ..m.clone()
        },
        &other,
        1 << 30,
    )
    .unwrap_err();
    assert!(e.to_string().contains("mismatch"), "{e}");
    assert_store_empty(&other);
    let e = fetch::fetch_layer(&bytes[..], &m.digest, m.clone(), &other, 100).unwrap_err();
    assert!(e.to_string().contains("cap"), "{e}");
    let got = fetch::fetch_layer(&bytes[..], &m.digest, m.clone(), &other, 1 << 30).unwrap();
    assert_eq!(got.digest, m.digest);
    other.set_ref("demo:1", &m.digest).unwrap();
    assert_eq!(listing(&other.resolve("demo:1").unwrap().layers[0]), MERGED);
}

#[test]
fn rm_refuses_a_layer_another_image_stacks_on() {
    need_root();
    let (tmp, store) = store();
    let file = write(tmp.path(), "img.tar", &oci(&two_layers(), false, "demo:1"));
    let base = import(&store, &file, None, &ImportOptions::default()).unwrap();
    let child_dir = store.staging().unwrap();
    std::fs::write(child_dir.path().join("extra"), b"e").unwrap();
    let child = store
        .register(
            "child",
            child_dir.path(),
            Manifest {
                parent: Some(base.digest.clone()),
                ..base.clone()
            },
        )
        .unwrap();
    assert_eq!(store.resolve("child").unwrap().layers.len(), 2);
    let e = store.remove("demo:1").unwrap_err().to_string();
    assert!(e.contains("child") && e.contains("stack on it"), "{e}");
    store.remove(&child.digest.to_string()).unwrap();
    store.remove("demo:1").unwrap();
    assert!(matches!(
        store.resolve("demo:1"),
        Err(StoreError::NotFound(_))
    ));
    assert!(store.list().unwrap().is_empty());
}
