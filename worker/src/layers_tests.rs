use corral_images::language::LanguageSet;
use corral_images::layer::LayerFormat;

use super::*;
use crate::process::ProcessExecutor;

fn meta(parent: Option<Digest>) -> Manifest {
    Manifest::new_layer(parent, "test")
}

/// A directory-layer store with `img` registered twice (the name points at the second).
fn two_builds(dir: &std::path::Path) -> (Store, Digest, Digest) {
    let store = Store::open_with_format(dir, LayerFormat::Dir).unwrap();
    let mut digests = Vec::new();
    for content in ["1", "2"] {
        let stage = store.staging().unwrap();
        std::fs::write(stage.path().join("v"), content).unwrap();
        digests.push(
            store
                .register("img", stage.path(), meta(None))
                .unwrap()
                .digest,
        );
    }
    let second = digests.pop().unwrap();
    (store, digests.pop().unwrap(), second)
}

#[test]
fn pins_win_over_names_and_digests_are_taken_as_given() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, first, second) = two_builds(tmp.path());
    let unpinned = NodeLayers::new(store.clone(), Lock::default());
    assert_eq!(unpinned.current("img").unwrap(), second);
    assert_eq!(unpinned.current(&first.to_string()).unwrap(), first);
    assert!(matches!(
        unpinned.current("other"),
        Err(LayerError::NotFound(_))
    ));
    let lock = Lock::parse(&format!("[images.img]\ndigest = \"{first}\"\n")).unwrap();
    let pinned = NodeLayers::new(store, lock);
    assert_eq!(
        pinned.current("img").unwrap(),
        first,
        "the pin, not the name"
    );
    assert_eq!(pinned.fetched(), 0);
}

#[test]
fn missing_layers_without_a_remote_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, first, _) = two_builds(tmp.path());
    let absent = Digest::of_bytes(b"absent");
    let lock = Lock::parse(&format!("[images.img]\ndigest = \"{absent}\"\n")).unwrap();
    let layers = NodeLayers::new(store.clone(), lock);
    let e = layers.current("img").unwrap_err().to_string();
    assert!(
        e.contains(&absent.to_string()) && e.contains("pinned in images.lock"),
        "{e}"
    );
    let image = |digest: String, layers: Vec<String>| ImageRef {
        name: "img".into(),
        digest,
        layers,
    };
    let e = layers
        .ensure_image(&image(absent.to_string(), vec![]))
        .unwrap_err();
    assert!(matches!(e, LayerError::Missing { .. }), "{e:?}");
    let e = layers
        .ensure_image(&image("sha256:nope".into(), vec![]))
        .unwrap_err();
    assert!(matches!(e, LayerError::BadDigest { .. }), "{e:?}");
    // Present, but not the chain the assignment lists.
    let e = layers
        .ensure_image(&image(
            first.to_string(),
            vec![absent.to_string(), first.to_string()],
        ))
        .unwrap_err();
    assert!(matches!(e, LayerError::Chain { .. }), "{e:?}");
    assert_eq!(
        layers
            .ensure_image(&image(first.to_string(), vec![first.to_string()]))
            .unwrap(),
        first
    );
}

#[test]
fn an_assignment_on_another_image_than_the_nodes_choice_is_refused() {
    let languages = LanguageSet::builtin();
    let python = languages.get("python").unwrap();
    let executor = ProcessExecutor::new(1);
    let image = |name: &str| ImageRef {
        name: name.into(),
        digest: Digest::of_bytes(b"x").to_string(),
        layers: Vec::new(),
    };
    let e = assigned_language(&executor, python, &image("ruby")).unwrap_err();
    assert!(e.contains("ruby") && e.contains("python"), "{e}");
    let on = assigned_language(&executor, python, &image(python.image())).unwrap();
    assert_eq!(
        on.image(),
        python.image(),
        "process executors keep the name"
    );
}
