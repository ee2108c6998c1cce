//! Small OCI layout tarballs made by the tests themselves (for `corral image import` and
//! `corral_images::oci::import`): tar layers from entry lists, and the layout around them.

use corral_images::digest::Digest;

/// A tar layer of `(path, contents or None for a directory, mode)` entries, in order.
pub fn layer(entries: &[(&str, Option<&[u8]>, u32)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data, mode) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(*mode);
        match data {
            Some(bytes) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(bytes.len() as u64);
                b.append_data(&mut h, name, *bytes).unwrap();
            }
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, name, &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// An OCI image layout tarball of `layers` (lowest first) with config `env`, tagged `tag`.
pub fn tarball(layers: &[Vec<u8>], env: &[&str], tag: &str) -> Vec<u8> {
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| Digest::of_bytes(l).to_string())
        .collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": env, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}}))
    .unwrap();
    let descs: Vec<_> = layers.iter().map(|l| serde_json::json!({
        "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": Digest::of_bytes(l).to_string(), "size": l.len()})).collect();
    let manifest = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": Digest::of_bytes(&config).to_string(), "size": config.len()},
        "layers": descs})).unwrap();
    let index = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": Digest::of_bytes(&manifest).to_string(),
        "size": manifest.len(), "annotations": {"org.opencontainers.image.ref.name": tag}}]})).unwrap();
    let mut members = vec![
        (
            "oci-layout".to_string(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".into(), index),
    ];
    for blob in [manifest, config].into_iter().chain(layers.iter().cloned()) {
        members.push((
            format!("blobs/sha256/{}", Digest::of_bytes(&blob).hex()),
            blob,
        ));
    }
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}
