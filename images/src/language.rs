//! Language definitions: one TOML file per language (`images/languages/*.toml`), parsed strictly
//! (`deny_unknown_fields`) and validated as a set (ids and aliases unique, every argv non-empty,
//! placeholders known, version regexes compiled).
//!
//! A language names the images it can run on in order of preference (`images = ["python",
//! "host"]`); each worker picks the first one it has ([`LanguageSet::choose_images`]) and offers
//! the language only if it has one. Languages without a host toolchain (ruby, go, rust, haskell)
//! name only their own image.
//!
//! A command is an argv template. An element that is exactly one of these placeholders is replaced
//! by data, as whole argv elements (never through a shell, never inside a larger string):
//!
//! - `{main}`: the job's main file name (its first file), e.g. `main.py`.
//! - `{main_stem}`: the main file name without its last extension, e.g. `Main` (Java's class).
//! - `{sources}`: the main file, then every other job file whose extension is one of the
//!   language's `extensions`, in job order (one or more elements).
//! - `{args}`: the job's extra arguments (zero or more elements; run commands only).
//!
//! Any other element containing `{` or `}` is refused at load time, so a typo cannot turn into a
//! literal argument silently.
//!
//! The shipped definitions are compiled in ([`LanguageSet::builtin`]); an operator may load a
//! directory of their own instead ([`LanguageSet::load_dir`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use regex::Regex;
use serde::Deserialize;

/// The definitions shipped with Corral (`images/languages/*.toml`), compiled into the binary.
const BUILTIN: &[(&str, &str)] = &[
    ("bash.toml", include_str!("../languages/bash.toml")),
    ("c.toml", include_str!("../languages/c.toml")),
    ("cpp.toml", include_str!("../languages/cpp.toml")),
    ("java.toml", include_str!("../languages/java.toml")),
    (
        "javascript.toml",
        include_str!("../languages/javascript.toml"),
    ),
    ("python.toml", include_str!("../languages/python.toml")),
    ("go.toml", include_str!("../languages/go.toml")),
    ("haskell.toml", include_str!("../languages/haskell.toml")),
    ("ruby.toml", include_str!("../languages/ruby.toml")),
    ("rust.toml", include_str!("../languages/rust.toml")),
];

/// Why a language definition or a set of them was refused.
#[derive(Debug, thiserror::Error)]
pub enum LanguageError {
    /// The definitions directory could not be read.
    #[error("reading language definitions {path}: {source}")]
    Read {
        /// File or directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A file is not valid TOML or does not match the schema.
    #[error("language definition {file}: {source}")]
    Parse {
        /// The file name.
        file: String,
        /// The parser's message (with line and column).
        source: Box<toml::de::Error>,
    },
    /// A definition is well-formed but not usable.
    #[error("language definition {file}: {message}")]
    Invalid {
        /// The file name.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// Two definitions claim the same id or alias.
    #[error("language name {name:?} is used by both {first} and {second}")]
    Duplicate {
        /// The id or alias.
        name: String,
        /// Id of the first language using it.
        first: String,
        /// Id of the second.
        second: String,
    },
    /// No definitions at all.
    #[error("no language definitions found in {0}")]
    Empty(PathBuf),
}

/// Default limits of a run or compile step, in the units of the wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultLimits {
    /// CPU time of all processes and threads, in milliseconds.
    pub cpu_time_ms: u64,
    /// Wall-clock time, in milliseconds.
    pub wall_time_ms: u64,
    /// Memory (RAM + swap), in bytes.
    pub memory_bytes: u64,
    /// Processes and threads at once.
    pub processes: u32,
    /// Bytes kept per output stream.
    pub output_bytes: u64,
    /// Largest file written, in bytes.
    pub file_size_bytes: u64,
}

/// How the toolchain's version is found at start-up (the language's self-test).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionProbe {
    /// Command to run (no placeholders), e.g. `["python3", "--version"]`.
    pub argv: Vec<String>,
    /// Regex with one capture group, applied to stdout and then stderr; the first match's group
    /// is the version. The `regex` crate's syntax with Unicode's Perl classes (`\d`, `\s`, `\w`)
    /// and none of its other Unicode tables: `\p{...}` classes and Unicode-aware `(?i)` are
    /// refused when the definition is loaded (`(?i-u:python)` matches ASCII case-insensitively).
    pub regex: String,
}

/// The compile step of a compiled language.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompileStep {
    /// Command template (`{main}`, `{main_stem}`, `{sources}`).
    pub argv: Vec<String>,
    /// Files the compile step leaves in the working directory, read back after it and given to
    /// every run (e.g. `a.out`, `main.jar`). Each must exist after a successful compile.
    pub artifacts: Vec<String>,
    /// Default limits of the compile step.
    pub limits: DefaultLimits,
}

/// The run step.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunStep {
    /// Command template (`{main}`, `{main_stem}`, `{sources}`, `{args}`).
    pub argv: Vec<String>,
    /// Default limits of each run.
    pub limits: DefaultLimits,
}

/// One language, as written in its TOML file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Language {
    /// Stable id used in the API (`python`).
    pub id: String,
    /// Display name (`Python`).
    pub name: String,
    /// Other names accepted for it (`py`, `python3`).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// File extensions without the dot (`py`), for guessing a file's language and for `{sources}`.
    pub extensions: Vec<String>,
    /// Images the steps may run on, in order of preference (`["python", "host"]`). A worker runs
    /// the language on the first of them it has (`host` always exists; any other must be in the
    /// node's image store) and does not offer the language when it has none; see
    /// [`LanguageSet::choose_images`]. After that choice this list holds only the chosen image.
    #[serde(default)]
    pub images: Vec<String>,
    /// The older single-image form, `image = "host"`: read as `images = ["host"]` by
    /// [`Language::parse`] (giving both is refused). Always `None` after parsing.
    #[serde(default, rename = "image")]
    legacy_image: Option<String>,
    /// Name of the main file when a job gives only a source text (`main.py`, `Main.java`).
    pub source_file: String,
    /// The version probe.
    pub version: VersionProbe,
    /// The compile step, for compiled languages.
    pub compile: Option<CompileStep>,
    /// The run step.
    pub run: RunStep,
}

/// What the placeholders of a command stand for in one job.
#[derive(Debug, Clone, Copy)]
pub struct Vars<'a> {
    /// File names of the job, the main file first.
    pub files: &'a [&'a str],
    /// The job's extra arguments.
    pub args: &'a [String],
}

const PLACEHOLDERS: &[&str] = &["{main}", "{main_stem}", "{sources}", "{args}"];

impl Language {
    /// Parse and check one definition; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Language, LanguageError> {
        let mut lang: Language = toml::from_str(text).map_err(|e| LanguageError::Parse {
            file: file.to_string(),
            source: Box::new(e),
        })?;
        if let Some(image) = lang.legacy_image.take() {
            if !lang.images.is_empty() {
                return Err(LanguageError::Invalid {
                    file: file.to_string(),
                    message: "give either image or images, not both".into(),
                });
            }
            lang.images = vec![image];
        }
        lang.validate().map_err(|message| LanguageError::Invalid {
            file: file.to_string(),
            message,
        })?;
        Ok(lang)
    }

    /// The image the steps run on: the first of [`Language::images`] (after a worker's
    /// [`LanguageSet::choose_images`], the one it chose).
    pub fn image(&self) -> &str {
        &self.images[0]
    }

    /// The first of the language's images that `present` accepts.
    pub fn choose_image(&self, mut present: impl FnMut(&str) -> bool) -> Option<&str> {
        self.images
            .iter()
            .map(String::as_str)
            .find(|image| present(image))
    }

    /// Whether the language has a compile step.
    pub fn compiled(&self) -> bool {
        self.compile.is_some()
    }

    /// The compiled version regex (checked at load).
    pub fn version_regex(&self) -> Regex {
        Regex::new(&self.version.regex).expect("version regex was validated at load")
    }

    /// Extract the version from the probe's output: the regex's first group in stdout, else
    /// stderr.
    pub fn parse_version(&self, stdout: &str, stderr: &str) -> Option<String> {
        let re = self.version_regex();
        [stdout, stderr]
            .iter()
            .find_map(|text| re.captures(text)?.get(1).map(|m| m.as_str().to_string()))
    }

    /// Whether `file` has one of the language's extensions.
    pub fn is_source(&self, file: &str) -> bool {
        extension(file).is_some_and(|ext| self.extensions.iter().any(|e| e == ext))
    }

    /// Substitute placeholders in `argv` for a job with `vars`.
    pub fn command(&self, argv: &[String], vars: Vars<'_>) -> Vec<String> {
        let main = vars
            .files
            .first()
            .copied()
            .unwrap_or(self.source_file.as_str());
        let mut out = Vec::with_capacity(argv.len() + vars.args.len());
        for element in argv {
            match element.as_str() {
                "{main}" => out.push(main.to_string()),
                "{main_stem}" => out.push(stem(main).to_string()),
                "{sources}" => {
                    out.push(main.to_string());
                    let rest = vars.files.iter().skip(1).filter(|f| self.is_source(f));
                    out.extend(rest.map(|f| f.to_string()));
                }
                "{args}" => out.extend(vars.args.iter().cloned()),
                _ => out.push(element.clone()),
            }
        }
        out
    }

    fn validate(&self) -> Result<(), String> {
        check_name("id", &self.id)?;
        for alias in &self.aliases {
            check_name("alias", alias)?;
        }
        if self.name.trim().is_empty() {
            return Err("name is empty".into());
        }
        if self.images.is_empty() {
            return Err(
                "images is missing or empty: name at least one image (e.g. \"host\")".into(),
            );
        }
        for (i, image) in self.images.iter().enumerate() {
            if image.trim().is_empty() {
                return Err("an image name is empty".into());
            }
            if self.images[..i].contains(image) {
                return Err(format!("image {image:?} is listed twice"));
            }
        }
        check_file_name("source_file", &self.source_file)?;
        for ext in &self.extensions {
            if ext.is_empty() || ext.contains(['.', '/']) {
                return Err(format!(
                    "extension {ext:?} must be a plain suffix without '.'"
                ));
            }
        }
        check_argv("version.argv", &self.version.argv, &[])?;
        let re = Regex::new(&self.version.regex)
            .map_err(|e| format!("version.regex does not compile: {e}"))?;
        if re.captures_len() < 2 {
            return Err("version.regex needs a capture group for the version".into());
        }
        if let Some(compile) = &self.compile {
            check_argv("compile.argv", &compile.argv, &PLACEHOLDERS[..3])?;
            if compile.artifacts.is_empty() {
                return Err("compile.artifacts is empty: a run would get nothing".into());
            }
            for artifact in &compile.artifacts {
                check_file_name("compile.artifacts", artifact)?;
            }
            check_limits("compile.limits", &compile.limits)?;
        }
        check_argv("run.argv", &self.run.argv, PLACEHOLDERS)?;
        check_limits("run.limits", &self.run.limits)
    }
}

/// The last extension of a file name, without the dot (`None` for none or a leading-dot name).
pub fn extension(file: &str) -> Option<&str> {
    match file.rfind('.') {
        Some(0) | None => None,
        Some(i) => Some(&file[i + 1..]),
    }
}

/// The file name without its last extension.
fn stem(file: &str) -> &str {
    match file.rfind('.') {
        Some(0) | None => file,
        Some(i) => &file[..i],
    }
}

fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {name:?} must be 1 to 32 characters of a-z, 0-9, '+', '-', '_', '.'"
        ))
    }
}

fn check_file_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(format!("{what} {name:?} must be a plain file name"));
    }
    Ok(())
}

fn check_argv(what: &str, argv: &[String], allowed: &[&str]) -> Result<(), String> {
    let Some(first) = argv.first() else {
        return Err(format!("{what} is empty"));
    };
    if first.is_empty() || first.starts_with('{') {
        return Err(format!(
            "{what}[0] must name a program, not {first:?} (a placeholder or empty)"
        ));
    }
    for element in argv {
        if element.contains('\0') {
            return Err(format!("{what} element {element:?} contains NUL"));
        }
        if element.contains(['{', '}']) && !allowed.contains(&element.as_str()) {
            return Err(format!(
                "{what} element {element:?} is not a placeholder allowed here (allowed: {})",
                if allowed.is_empty() {
                    "none".to_string()
                } else {
                    allowed.join(", ")
                }
            ));
        }
    }
    Ok(())
}

fn check_limits(what: &str, l: &DefaultLimits) -> Result<(), String> {
    let zero = [
        ("cpu_time_ms", l.cpu_time_ms == 0),
        ("wall_time_ms", l.wall_time_ms == 0),
        ("memory_bytes", l.memory_bytes == 0),
        ("processes", l.processes == 0),
        ("output_bytes", l.output_bytes == 0),
        ("file_size_bytes", l.file_size_bytes == 0),
    ];
    match zero.iter().find(|(_, z)| *z) {
        Some((field, _)) => Err(format!("{what}.{field} must be above 0")),
        None => Ok(()),
    }
}

/// A validated set of languages: ids and aliases unique across all of them.
#[derive(Debug, Clone)]
pub struct LanguageSet {
    /// Sorted by id.
    languages: Vec<Language>,
    /// Id or alias → index in `languages`.
    names: HashMap<String, usize>,
}

impl LanguageSet {
    /// The definitions shipped with Corral.
    pub fn builtin() -> LanguageSet {
        let parsed = BUILTIN
            .iter()
            .map(|(file, text)| Language::parse(file, text))
            .collect::<Result<Vec<_>, _>>()
            .expect("shipped language definitions are valid (tested)");
        LanguageSet::new(parsed).expect("shipped language definitions are consistent (tested)")
    }

    /// Every `*.toml` file in `dir`.
    pub fn load_dir(dir: &Path) -> Result<LanguageSet, LanguageError> {
        let read_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LanguageError::Read { path, source }
        };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read_err(dir))? {
            let path = entry.map_err(read_err(dir))?.path();
            if path.extension().is_some_and(|e| e == "toml") {
                paths.push(path);
            }
        }
        if paths.is_empty() {
            return Err(LanguageError::Empty(dir.to_path_buf()));
        }
        paths.sort();
        let mut languages = Vec::new();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(read_err(&path))?;
            languages.push(Language::parse(&path.display().to_string(), &text)?);
        }
        LanguageSet::new(languages)
    }

    /// Check that ids and aliases are unique across `languages`.
    pub fn new(mut languages: Vec<Language>) -> Result<LanguageSet, LanguageError> {
        languages.sort_by(|a, b| a.id.cmp(&b.id));
        let mut names: HashMap<String, usize> = HashMap::new();
        for (i, lang) in languages.iter().enumerate() {
            for name in std::iter::once(&lang.id).chain(&lang.aliases) {
                if let Some(&j) = names.get(name) {
                    return Err(LanguageError::Duplicate {
                        name: name.clone(),
                        first: languages[j].id.clone(),
                        second: lang.id.clone(),
                    });
                }
                names.insert(name.clone(), i);
            }
        }
        Ok(LanguageSet { languages, names })
    }

    /// All languages, sorted by id.
    pub fn all(&self) -> &[Language] {
        &self.languages
    }

    /// The language with this id (not an alias).
    pub fn get(&self, id: &str) -> Option<&Language> {
        self.resolve(id).filter(|l| l.id == id)
    }

    /// The language with this id or alias.
    pub fn resolve(&self, name: &str) -> Option<&Language> {
        self.names.get(name).map(|&i| &self.languages[i])
    }

    /// The language whose extensions include `file`'s extension (the first by id).
    pub fn by_file_name(&self, file: &str) -> Option<&Language> {
        let ext = extension(file)?;
        self.languages
            .iter()
            .find(|l| l.extensions.iter().any(|e| e == ext))
    }

    /// Run each language on the first of its images that `present` accepts (narrowing its
    /// [`Language::images`] to that one) and drop the languages with none present. Returns the
    /// dropped ones as (id, images wanted).
    pub fn choose_images(
        &mut self,
        mut present: impl FnMut(&str) -> bool,
    ) -> Vec<(String, Vec<String>)> {
        let mut kept = Vec::new();
        let mut dropped = Vec::new();
        for mut lang in std::mem::take(&mut self.languages) {
            match lang.choose_image(&mut present).map(str::to_string) {
                Some(image) => {
                    lang.images = vec![image];
                    kept.push(lang);
                }
                None => dropped.push((lang.id.clone(), lang.images.clone())),
            }
        }
        *self = LanguageSet::new(kept).expect("a subset of a valid set is valid");
        dropped
    }

    /// Keep only the languages `keep` accepts (e.g. those that passed their self-test).
    pub fn retain(&mut self, mut keep: impl FnMut(&Language) -> bool) {
        let languages = std::mem::take(&mut self.languages)
            .into_iter()
            .filter(|l| keep(l))
            .collect();
        *self = LanguageSet::new(languages).expect("a subset of a valid set is valid");
    }
}

#[cfg(test)]
#[path = "language_tests.rs"]
mod tests;
