use super::*;

const MINIMAL: &str = r#"
id = "py"
name = "Py"
extensions = ["py"]
image = "host"
source_file = "main.py"
[version]
argv = ["python3", "--version"]
regex = 'Python (\S+)'
[run]
argv = ["python3", "{main}", "{args}"]
[run.limits]
cpu_time_ms = 1
wall_time_ms = 1
memory_bytes = 1
processes = 1
output_bytes = 1
file_size_bytes = 1
"#;

fn parse_err(text: &str) -> String {
    Language::parse("t.toml", text).unwrap_err().to_string()
}

#[test]
fn builtin_set_has_the_shipped_languages() {
    let set = LanguageSet::builtin();
    let ids: Vec<&str> = set.all().iter().map(|l| l.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "bash",
            "c",
            "cpp",
            "go",
            "haskell",
            "java",
            "javascript",
            "python",
            "ruby",
            "rust"
        ]
    );
    assert_eq!(set.resolve("py").unwrap().id, "python");
    assert_eq!(set.resolve("node").unwrap().id, "javascript");
    assert_eq!(set.resolve("c++").unwrap().id, "cpp");
    assert!(set.get("py").is_none(), "get takes ids only");
    assert_eq!(set.by_file_name("x.cc").unwrap().id, "cpp");
    assert_eq!(set.by_file_name("Main.java").unwrap().id, "java");
    assert!(set.by_file_name("README").is_none());
    assert!(set.get("c").unwrap().compiled());
    assert!(!set.get("python").unwrap().compiled());
}

#[test]
fn builtin_files_match_the_directory() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("languages");
    let loaded = LanguageSet::load_dir(&dir).unwrap();
    let builtin = LanguageSet::builtin();
    let ids = |s: &LanguageSet| s.all().iter().map(|l| l.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&loaded), ids(&builtin), "BUILTIN misses a file");
}

#[test]
fn version_regexes_extract_real_banners() {
    let set = LanguageSet::builtin();
    let v = |id: &str, out: &str, err: &str| set.get(id).unwrap().parse_version(out, err);
    assert_eq!(v("python", "Python 3.11.2\n", "").unwrap(), "3.11.2");
    assert_eq!(
        v(
            "c",
            "gcc (Debian 12.2.0-14+deb12u1) 12.2.0\nCopyright (C) 2022\n",
            ""
        )
        .unwrap(),
        "12.2.0"
    );
    assert_eq!(
        v("cpp", "g++ (Debian 12.2.0-14+deb12u1) 12.2.0\n", "").unwrap(),
        "12.2.0"
    );
    assert_eq!(v("javascript", "v20.20.2\n", "").unwrap(), "20.20.2");
    assert_eq!(v("java", "", "javac 17.0.15\n").unwrap(), "17.0.15");
    assert_eq!(
        v(
            "bash",
            "GNU bash, version 5.2.15(1)-release (x86_64-pc-linux-gnu)\n",
            ""
        )
        .unwrap(),
        "5.2.15"
    );
    assert!(v("python", "command not found", "").is_none());
}

/// ASCII case-insensitive matching needs no Unicode table: `(?i-u:...)` around ASCII text.
#[test]
fn ascii_case_insensitive_version_regex() {
    let text = MINIMAL.replace("'Python (\\S+)'", "'(?i-u:python) (\\S+)'");
    let lang = Language::parse("t.toml", &text).unwrap();
    assert_eq!(lang.parse_version("Python 3.11.2\n", "").unwrap(), "3.11.2");
}

#[test]
fn placeholders_are_whole_argv_elements() {
    let set = LanguageSet::builtin();
    let args = vec![
        "a b".to_string(),
        "{main}".to_string(),
        "$(rm -rf /)".to_string(),
    ];
    let files = ["prog.py", "helper.py"];
    let py = set.get("python").unwrap();
    let cmd = py.command(
        &py.run.argv,
        Vars {
            files: &files,
            args: &args,
        },
    );
    // Arguments are data: not split, not substituted again, not interpreted.
    assert_eq!(
        cmd,
        ["python3", "-B", "prog.py", "a b", "{main}", "$(rm -rf /)"]
    );
    let no_args = py.command(
        &py.run.argv,
        Vars {
            files: &files,
            args: &[],
        },
    );
    assert_eq!(no_args, ["python3", "-B", "prog.py"]);
}

#[test]
fn sources_are_main_first_then_matching_files() {
    let set = LanguageSet::builtin();
    let c = set.get("c").unwrap();
    let files = ["prog", "util.c", "util.h", "data.txt", "x.c"];
    let cmd = c.command(
        &c.compile.as_ref().unwrap().argv,
        Vars {
            files: &files,
            args: &["ignored".into()],
        },
    );
    assert_eq!(
        cmd,
        [
            "gcc",
            "-O2",
            "-std=gnu17",
            "-pipe",
            "-o",
            "a.out",
            "prog",
            "util.c",
            "x.c",
            "-lm"
        ]
    );
    let java = set.get("java").unwrap();
    let run = java.command(
        &java.run.argv,
        Vars {
            files: &["Solution.java"],
            args: &[],
        },
    );
    assert_eq!(run.last().unwrap(), "Solution");
}

#[test]
fn minimal_definition_parses() {
    let lang = Language::parse("t.toml", MINIMAL).unwrap();
    assert!(lang.aliases.is_empty());
    assert!(lang.compile.is_none());
}

#[test]
fn unknown_fields_are_refused_with_the_file_name() {
    let text = MINIMAL.replace("image = \"host\"", "image = \"host\"\nimgae = \"x\"");
    let err = parse_err(&text);
    assert!(err.contains("t.toml") && err.contains("imgae"), "{err}");
    let text = MINIMAL.replace("processes = 1", "processes = 1\nthreads = 2");
    assert!(parse_err(&text).contains("threads"));
}

#[test]
fn invalid_definitions_are_refused_clearly() {
    let cases = [
        (
            "argv = [\"python3\", \"{main}\", \"{args}\"]",
            "argv = []",
            "run.argv is empty",
        ),
        (
            "argv = [\"python3\", \"{main}\", \"{args}\"]",
            "argv = [\"{main}\"]",
            "must name a program",
        ),
        ("\"{args}\"]", "\"{arg}\"]", "not a placeholder"),
        ("\"{args}\"]", "\"--x={main}\"]", "not a placeholder"),
        ("'Python (\\S+)'", "'Python \\S+'", "capture group"),
        ("'Python (\\S+)'", "'Python (\\S+'", "does not compile"),
        // Only the Perl classes of Unicode are built in (`regex` features in Cargo.toml).
        (
            "'Python (\\S+)'",
            "'Python (\\p{Greek}+)'",
            "does not compile",
        ),
        ("'Python (\\S+)'", "'(?i)python (\\S+)'", "does not compile"),
        ("id = \"py\"", "id = \"Py Thon\"", "id \"Py Thon\""),
        (
            "source_file = \"main.py\"",
            "source_file = \"../x\"",
            "plain file name",
        ),
        (
            "extensions = [\"py\"]",
            "extensions = [\".py\"]",
            "plain suffix",
        ),
        (
            "wall_time_ms = 1",
            "wall_time_ms = 0",
            "run.limits.wall_time_ms",
        ),
        ("processes = 1", "processes = -1", "processes"),
    ];
    for (from, to, want) in cases {
        assert!(MINIMAL.contains(from), "{from}");
        let err = parse_err(&MINIMAL.replacen(from, to, 1));
        assert!(err.contains(want), "{to}: {err}");
    }
}

#[test]
fn placeholders_in_version_probe_are_refused() {
    let text = MINIMAL.replace("[\"python3\", \"--version\"]", "[\"python3\", \"{main}\"]");
    assert!(parse_err(&text).contains("version.argv"));
}

#[test]
fn compile_step_needs_artifacts_and_no_args() {
    let compile = r#"
[compile]
argv = ["cc", "{sources}"]
artifacts = []
[compile.limits]
cpu_time_ms = 1
wall_time_ms = 1
memory_bytes = 1
processes = 1
output_bytes = 1
file_size_bytes = 1
"#;
    let text = format!("{MINIMAL}{compile}");
    assert!(parse_err(&text).contains("artifacts is empty"));
    let text = text.replace("artifacts = []", "artifacts = [\"a/b\"]");
    assert!(parse_err(&text).contains("plain file name"));
    let text = text
        .replace("artifacts = [\"a/b\"]", "artifacts = [\"a.out\"]")
        .replace("[\"cc\", \"{sources}\"]", "[\"cc\", \"{args}\"]");
    assert!(parse_err(&text).contains("compile.argv"));
}

#[test]
fn ids_and_aliases_must_be_unique_across_languages() {
    let a = Language::parse("a.toml", MINIMAL).unwrap();
    let mut b = a.clone();
    b.id = "other".into();
    b.aliases = vec!["py".into()];
    let err = LanguageSet::new(vec![a.clone(), b])
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"py\"") && err.contains("other"), "{err}");
    let err = LanguageSet::new(vec![a.clone(), a])
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"py\""), "{err}");
}

#[test]
fn load_dir_reports_the_broken_file_and_empty_dirs() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        LanguageSet::load_dir(dir.path()),
        Err(LanguageError::Empty(_))
    ));
    std::fs::write(dir.path().join("good.toml"), MINIMAL).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    assert_eq!(LanguageSet::load_dir(dir.path()).unwrap().all().len(), 1);
    std::fs::write(dir.path().join("bad.toml"), "id = ").unwrap();
    let err = LanguageSet::load_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("bad.toml"), "{err}");
}

#[test]
fn retain_keeps_aliases_of_what_is_left() {
    let mut set = LanguageSet::builtin();
    set.retain(|l| l.id == "python");
    assert_eq!(set.all().len(), 1);
    assert_eq!(set.resolve("py").unwrap().id, "python");
    assert!(set.resolve("node").is_none());
}

#[test]
fn extension_and_stem() {
    assert_eq!(extension("a.tar.gz"), Some("gz"));
    assert_eq!(extension(".bashrc"), None);
    assert_eq!(extension("Makefile"), None);
    assert_eq!(stem("Main.java"), "Main");
    assert_eq!(stem(".hidden"), ".hidden");
}

#[test]
fn images_list_and_the_legacy_single_image() {
    let legacy = Language::parse("t.toml", MINIMAL).unwrap();
    assert_eq!(legacy.images, ["host"]);
    assert_eq!(legacy.image(), "host");
    let listed = MINIMAL.replace("image = \"host\"", "images = [\"python\", \"host\"]");
    let lang = Language::parse("t.toml", &listed).unwrap();
    assert_eq!(lang.images, ["python", "host"]);
    assert_eq!(lang.image(), "python");
    assert_eq!(lang.choose_image(|i| i == "host"), Some("host"));
    assert_eq!(lang.choose_image(|_| true), Some("python"));
    assert_eq!(lang.choose_image(|_| false), None);

    let both = MINIMAL.replace("image = \"host\"", "image = \"host\"\nimages = [\"host\"]");
    assert!(
        parse_err(&both).contains("either image or images"),
        "{}",
        parse_err(&both)
    );
    let none = MINIMAL.replace("image = \"host\"\n", "");
    assert!(
        parse_err(&none).contains("images is missing"),
        "{}",
        parse_err(&none)
    );
    let empty = MINIMAL.replace("image = \"host\"", "images = []");
    assert!(
        parse_err(&empty).contains("images is missing"),
        "{}",
        parse_err(&empty)
    );
    let twice = MINIMAL.replace("image = \"host\"", "images = [\"host\", \"host\"]");
    assert!(
        parse_err(&twice).contains("listed twice"),
        "{}",
        parse_err(&twice)
    );
    let blank = MINIMAL.replace("image = \"host\"", "images = [\" \"]");
    assert!(parse_err(&blank).contains("empty"), "{}", parse_err(&blank));
}

#[test]
fn shipped_languages_prefer_their_built_image_and_image_only_ones_need_it() {
    let set = LanguageSet::builtin();
    let images = |id: &str| set.get(id).unwrap().images.clone();
    assert_eq!(images("python"), ["python", "host"]);
    assert_eq!(images("c"), ["gcc", "host"]);
    assert_eq!(images("cpp"), ["gcc", "host"]);
    assert_eq!(images("java"), ["java", "host"]);
    assert_eq!(images("javascript"), ["javascript", "host"]);
    assert_eq!(images("bash"), ["bash", "host"]);
    for id in ["ruby", "go", "rust", "haskell"] {
        assert_eq!(
            images(id),
            [id],
            "{id} has no host toolchain to fall back to"
        );
    }
}

#[test]
fn choose_images_narrows_to_the_first_present_and_drops_the_rest() {
    let mut set = LanguageSet::builtin();
    let present = ["host", "python", "rust"];
    let dropped = set.choose_images(|image| present.contains(&image));
    let chosen: Vec<(&str, &str)> = set
        .all()
        .iter()
        .map(|l| (l.id.as_str(), l.image()))
        .collect();
    assert_eq!(
        chosen,
        [
            ("bash", "host"),
            ("c", "host"),
            ("cpp", "host"),
            ("java", "host"),
            ("javascript", "host"),
            ("python", "python"),
            ("rust", "rust"),
        ]
    );
    assert!(set.all().iter().all(|l| l.images.len() == 1));
    let mut dropped_ids: Vec<&str> = dropped.iter().map(|(id, _)| id.as_str()).collect();
    dropped_ids.sort();
    assert_eq!(dropped_ids, ["go", "haskell", "ruby"]);
    assert!(dropped.contains(&("go".to_string(), vec!["go".to_string()])));
    assert!(set.resolve("rs").is_some() && set.resolve("golang").is_none());
}

#[test]
fn new_languages_substitute_their_commands() {
    let set = LanguageSet::builtin();
    let files = ["main.go", "util.go", "notes.txt"];
    let vars = Vars {
        files: &files,
        args: &[],
    };
    let go = set.get("go").unwrap();
    let compile = go.compile.as_ref().unwrap();
    assert_eq!(
        go.command(&compile.argv, vars),
        ["go", "build", "-o", "a.out", "main.go", "util.go"]
    );
    let rust = set.get("rust").unwrap();
    let files = ["main.rs", "util.rs"];
    let vars = Vars {
        files: &files,
        args: &[],
    };
    assert_eq!(
        rust.command(&rust.compile.as_ref().unwrap().argv, vars),
        ["rustc", "-O", "-o", "a.out", "main.rs"]
    );
    let v = |id: &str, out: &str| set.get(id).unwrap().parse_version(out, "");
    assert_eq!(
        v("go", "go version go1.19.8 linux/amd64\n").unwrap(),
        "1.19.8"
    );
    assert_eq!(v("rust", "rustc 1.63.0\n").unwrap(), "1.63.0");
    assert_eq!(v("haskell", "9.0.2\n").unwrap(), "9.0.2");
    assert_eq!(
        v(
            "ruby",
            "ruby 3.1.2p20 (2022-04-12 revision 4491bb740a) [x86_64-linux-gnu]\n"
        )
        .unwrap(),
        "3.1.2"
    );
}
