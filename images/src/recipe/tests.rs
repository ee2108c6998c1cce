use super::*;

fn err(name: &str, text: &str) -> String {
    Recipe::parse(name, text).unwrap_err().to_string()
}

#[test]
fn every_builtin_recipe_parses_and_chains_to_base() {
    let book = RecipeBook::load(None).unwrap();
    for (name, _) in BUILTIN {
        let chain = book.chain(name).unwrap();
        assert_eq!(chain[0].0, "base", "{name}");
        assert_eq!(chain[0].1.base.as_deref(), Some(DEBIAN_BOOKWORM));
        if *name != "base" {
            assert!(
                book.get(name).unwrap().self_test.is_some(),
                "{name} has no self-test"
            );
        }
    }
    assert_eq!(
        book.chain("rust")
            .unwrap()
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        ["base", "gcc", "rust"]
    );
}

#[test]
fn unknown_fields_and_wrong_types_are_refused_with_the_line() {
    let e = err("x", "parent = \"base\"\npackagez = [\"a\"]\n");
    assert!(e.contains("unknown field `packagez`"), "{e}");
    assert!(e.starts_with("recipe x:"), "{e}");
    let e = err("x", "parent = \"base\"\npackages = \"python3\"\n");
    assert!(e.contains("line 2"), "{e}");
    let e = err(
        "x",
        "parent = \"base\"\n[self_test]\ncommand = \"true\"\nexpect = \"x\"\nextra = 1\n",
    );
    assert!(e.contains("unknown field `extra`"), "{e}");
}

#[test]
fn base_and_parent_rules() {
    assert!(err("x", "").contains("set `base"));
    assert!(err("x", "base = \"debian:bookworm\"\nparent = \"base\"\n").contains("not both"));
    assert!(err("x", "base = \"ubuntu:noble\"\n").contains("unsupported base"));
    assert!(err("x", "parent = \"x\"\n").contains("own parent"));
    assert!(
        err("x", "parent = \"base\"\nmirror = \"http://m\"\n").contains("only applies with `base`")
    );
    assert!(err("x", "base = \"debian:bookworm\"\nmirror = \"ftp://m\"\n").contains("not an http"));
}

#[test]
fn packages_env_workdir_and_self_test_are_checked() {
    assert!(err(
        "x",
        "parent = \"base\"\npackages = [\"python3; rm -rf /\"]\n"
    )
    .contains("not a Debian package"));
    assert!(err("x", "parent = \"base\"\npackages = [\"-o\"]\n").contains("not a Debian package"));
    assert!(Recipe::parse(
        "x",
        "parent = \"base\"\npackages = [\"g++\", \"gcc=4:12.2.0-3\"]\n"
    )
    .is_ok());
    assert!(err("x", "parent = \"base\"\n[env]\n\"A=B\" = \"1\"\n")
        .contains("bad environment variable"));
    assert!(err("x", "parent = \"base\"\nworkdir = \"box\"\n").contains("absolute"));
    assert!(err("x", "parent = \"base\"\ncommands = [\" \"]\n").contains("empty command"));
    let e = err("x", "parent = \"base\"\n[self_test]\nfiles = { \"../a\" = \"\" }\ncommand = \"true\"\nexpect = \"x\"\n");
    assert!(e.contains("plain name"), "{e}");
    assert!(err(
        "x",
        "parent = \"base\"\n[self_test]\ncommand = \"true\"\nexpect = \"\"\n"
    )
    .contains("non-empty expect"));
    assert!(err("Bad/Name", "parent = \"base\"\n").contains("invalid image name"));
}

#[test]
fn hash_changes_with_the_recipe_and_its_parents() {
    let dir = tempfile::tempdir().unwrap();
    let book = RecipeBook::load(None).unwrap();
    let (python, rust) = (book.hash("python").unwrap(), book.hash("rust").unwrap());
    assert_eq!(python, book.hash("python").unwrap());
    std::fs::write(
        dir.path().join("gcc.toml"),
        "parent = \"base\"\npackages = [\"gcc\"]\n",
    )
    .unwrap();
    let changed = RecipeBook::load(Some(dir.path())).unwrap();
    assert_eq!(
        changed.hash("python").unwrap(),
        python,
        "a sibling's change must not matter"
    );
    assert_ne!(
        changed.hash("rust").unwrap(),
        rust,
        "a parent's change must"
    );
    std::fs::write(dir.path().join("loop.toml"), "parent = \"loop2\"\n").unwrap();
    std::fs::write(dir.path().join("loop2.toml"), "parent = \"loop\"\n").unwrap();
    let looped = RecipeBook::load(Some(dir.path())).unwrap();
    assert!(looped
        .chain("loop")
        .unwrap_err()
        .to_string()
        .contains("loops"));
    assert!(looped
        .get("nope")
        .unwrap_err()
        .to_string()
        .contains("no recipe named"));
}
