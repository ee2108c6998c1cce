//! `POST /v1/jobs` bodies and their validation into a [`JobSpec`]: every check happens here,
//! before anything is stored.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use corral_protocol::{Bytes, Compare, JobId, JobSpec, LanguageInfo, Limits, SourceFile, TestCase};
use serde::Deserialize;

use crate::config::Config;
use crate::error::ApiError;
use crate::store::Tenant;

/// The body of `POST /v1/jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// Language id or alias.
    pub language: String,
    /// Required language version (must match the installed one).
    #[serde(default)]
    pub version: Option<String>,
    /// Source files; the first is the main file.
    #[serde(default)]
    pub files: Option<Vec<FileRequest>>,
    /// Shorthand for one main file with the language's file name.
    #[serde(default)]
    pub source: Option<String>,
    /// Standard input (UTF-8).
    #[serde(default)]
    pub stdin: Option<String>,
    /// Extra arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Limits of each run.
    #[serde(default)]
    pub limits: Option<LimitsRequest>,
    /// Limits of the compile step.
    #[serde(default)]
    pub compile_limits: Option<LimitsRequest>,
    /// Judge tests.
    #[serde(default)]
    pub tests: Vec<TestRequest>,
    /// `exact`, `trailing_whitespace` (default), `tokens` or `float:<tolerance>`.
    #[serde(default)]
    pub compare: Option<String>,
    /// Stop at the first test not accepted.
    #[serde(default)]
    pub stop_on_first_failure: bool,
    /// Network access (only for tenants allowed it).
    #[serde(default)]
    pub network: bool,
    /// `http://` URL to POST the job document to when it ends.
    #[serde(default)]
    pub callback_url: Option<String>,
    /// Repeating a key returns the first job instead of creating another.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// A file in a request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRequest {
    /// Plain file name.
    pub name: String,
    /// Contents, as `encoding` says.
    pub content: String,
    /// `utf8` (default) or `base64`.
    #[serde(default)]
    pub encoding: Encoding,
}

/// How a file's content is written.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// As is.
    #[default]
    Utf8,
    /// Standard base64.
    Base64,
}

/// Limits in a request; missing ones take the language's defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    /// CPU time, ms.
    pub cpu_time_ms: Option<u64>,
    /// Wall time, ms.
    pub wall_time_ms: Option<u64>,
    /// Memory, bytes.
    pub memory_bytes: Option<u64>,
    /// Processes and threads.
    pub processes: Option<u64>,
    /// Output per stream, bytes.
    pub output_bytes: Option<u64>,
    /// Largest written file, bytes.
    pub file_size_bytes: Option<u64>,
}

/// A judge test.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestRequest {
    /// Standard input.
    #[serde(default)]
    pub stdin: String,
    /// Expected standard output; absent: accepted when it exits 0 within limits.
    #[serde(default)]
    pub expected_output: Option<String>,
}

/// A validated request.
pub struct Validated {
    /// What the worker runs.
    pub spec: JobSpec,
    /// The language's version.
    pub version: String,
    /// Callback.
    pub callback_url: Option<String>,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
}

/// Checks a request against the server's maxima, the tenant's quotas and the languages known.
pub fn validate(
    req: JobRequest,
    tenant: &Tenant,
    languages: &[LanguageInfo],
    config: &Config,
) -> Result<Validated, ApiError> {
    let lang = find_language(languages, &req.language)?;
    if let Some(v) = &req.version {
        if *v != lang.version {
            return Err(ApiError::invalid(
                "unknown_version",
                format!(
                    "{} {v} is not available (installed: {})",
                    lang.id, lang.version
                ),
            ));
        }
    }
    if req.network && !tenant.quota.network_allowed {
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "network_not_allowed",
            "this tenant may not give jobs network access",
        ));
    }
    let files = files(req.files, req.source, lang, config)?;
    let run_defaults = lang.limits;
    let compile_defaults = lang.compile_limits.unwrap_or(config.default_compile_limits);
    let max = tenant_max(tenant, config);
    let run_limits = limits("limits", req.limits, run_defaults, &max)?;
    let compile_limits = limits("compile_limits", req.compile_limits, compile_defaults, &max)?;
    check_args(&req.args, config)?;
    let stdin = req.stdin.unwrap_or_default();
    check_size("stdin", stdin.len(), config.max_stdin_bytes)?;
    let tests = tests(req.tests, config)?;
    let compare = compare(req.compare.as_deref())?;
    let callback_url = req.callback_url.map(|u| callback(u, config)).transpose()?;
    check_idempotency_key(req.idempotency_key.as_deref())?;
    Ok(Validated {
        spec: JobSpec {
            id: JobId::new(),
            tenant: tenant.name.clone(),
            language: lang.id.clone(),
            files,
            args: req.args,
            stdin: Bytes(stdin.into_bytes()),
            limits: run_limits,
            compile_limits,
            tests,
            compare,
            stop_on_first_failure: req.stop_on_first_failure,
            network: req.network,
        },
        version: lang.version.clone(),
        callback_url,
        idempotency_key: req.idempotency_key,
    })
}

fn find_language<'a>(
    languages: &'a [LanguageInfo],
    name: &str,
) -> Result<&'a LanguageInfo, ApiError> {
    if languages.is_empty() {
        return Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "no_workers",
            "no worker node is connected; try again shortly",
        )
        .retry_after(5));
    }
    let name = name.to_ascii_lowercase();
    languages
        .iter()
        .find(|l| l.id == name)
        .or_else(|| languages.iter().find(|l| l.aliases.contains(&name)))
        .ok_or_else(|| {
            let known: Vec<&str> = languages.iter().map(|l| l.id.as_str()).collect();
            ApiError::invalid(
                "unknown_language",
                format!("unknown language; available: {}", known.join(", ")),
            )
        })
}

fn check_args(args: &[String], config: &Config) -> Result<(), ApiError> {
    check_count("args", args.len(), config.max_args)?;
    for a in args {
        check_size("an argument", a.len(), config.max_arg_bytes)?;
        if a.contains('\0') {
            return Err(ApiError::invalid(
                "invalid_argument",
                "arguments may not contain NUL",
            ));
        }
    }
    Ok(())
}

fn check_idempotency_key(key: Option<&str>) -> Result<(), ApiError> {
    match key {
        Some(k) if k.is_empty() || k.len() > 256 => Err(ApiError::invalid(
            "invalid_idempotency_key",
            "idempotency_key must have 1 to 256 bytes",
        )),
        _ => Ok(()),
    }
}

fn check_count(what: &str, n: usize, max: usize) -> Result<(), ApiError> {
    if n > max {
        return Err(ApiError::invalid(
            "too_many",
            format!("{n} {what} is more than the maximum {max}"),
        ));
    }
    Ok(())
}

fn check_size(what: &str, n: usize, max: usize) -> Result<(), ApiError> {
    if n > max {
        return Err(ApiError::invalid(
            "too_large",
            format!("{what} has {n} bytes, more than the maximum {max}"),
        ));
    }
    Ok(())
}

fn files(
    files: Option<Vec<FileRequest>>,
    source: Option<String>,
    lang: &LanguageInfo,
    config: &Config,
) -> Result<Vec<SourceFile>, ApiError> {
    let files = match (files, source) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "invalid_request",
                "give either `files` or `source`, not both",
            ))
        }
        (None, None) => {
            return Err(ApiError::invalid(
                "missing_source",
                "give `files` or `source`",
            ))
        }
        (None, Some(source)) => {
            return Ok(vec![SourceFile {
                name: lang.source_file.clone(),
                content: Bytes(source.into_bytes()),
            }])
        }
        (Some(files), None) => files,
    };
    if files.is_empty() {
        return Err(ApiError::invalid("missing_source", "`files` is empty"));
    }
    check_count("files", files.len(), config.max_files)?;
    let mut out: Vec<SourceFile> = Vec::with_capacity(files.len());
    for f in files {
        check_file_name(&f.name, config)?;
        if out.iter().any(|o| o.name == f.name) {
            return Err(ApiError::invalid(
                "invalid_file_name",
                format!("file {:?} appears twice", f.name),
            ));
        }
        let content = match f.encoding {
            Encoding::Utf8 => f.content.into_bytes(),
            Encoding::Base64 => STANDARD.decode(f.content.as_bytes()).map_err(|e| {
                ApiError::invalid(
                    "invalid_base64",
                    format!("file {:?} is not valid base64: {e}", f.name),
                )
            })?,
        };
        out.push(SourceFile {
            name: f.name,
            content: Bytes(content),
        });
    }
    Ok(out)
}

fn check_file_name(name: &str, config: &Config) -> Result<(), ApiError> {
    let bad =
        |why: &str| ApiError::invalid("invalid_file_name", format!("file name {name:?} {why}"));
    if name.is_empty() || name == "." {
        return Err(bad("is empty"));
    }
    if name.len() > config.max_file_name_bytes {
        return Err(bad("is too long"));
    }
    if name.contains('/') || name.contains('\\') || name.contains("..") {
        return Err(bad("may not contain `/`, `\\` or `..`"));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(bad("may not contain control characters"));
    }
    Ok(())
}

/// The largest limits this tenant may ask for.
fn tenant_max(tenant: &Tenant, config: &Config) -> Limits {
    let mut max = config.max_limits;
    max.cpu_time_ms = max.cpu_time_ms.min(tenant.quota.max_cpu_time_ms);
    max.memory_bytes = max.memory_bytes.min(tenant.quota.max_memory_bytes);
    max
}

/// Request values checked against `max`; missing ones are the defaults (lowered to `max`).
fn limits(
    what: &str,
    req: Option<LimitsRequest>,
    defaults: Limits,
    max: &Limits,
) -> Result<Limits, ApiError> {
    let r = req.unwrap_or_default();
    let one = |name: &str, value: Option<u64>, default: u64, max: u64| -> Result<u64, ApiError> {
        match value {
            None => Ok(default.min(max)),
            Some(0) => Err(ApiError::invalid(
                "invalid_limit",
                format!("{what}.{name} must be more than 0"),
            )),
            Some(v) if v > max => Err(ApiError::invalid(
                "limit_too_high",
                format!("{what}.{name} is {v}; the maximum allowed is {max}"),
            )),
            Some(v) => Ok(v),
        }
    };
    Ok(Limits {
        cpu_time_ms: one(
            "cpu_time_ms",
            r.cpu_time_ms,
            defaults.cpu_time_ms,
            max.cpu_time_ms,
        )?,
        wall_time_ms: one(
            "wall_time_ms",
            r.wall_time_ms,
            defaults.wall_time_ms,
            max.wall_time_ms,
        )?,
        memory_bytes: one(
            "memory_bytes",
            r.memory_bytes,
            defaults.memory_bytes,
            max.memory_bytes,
        )?,
        processes: one(
            "processes",
            r.processes,
            u64::from(defaults.processes),
            u64::from(max.processes),
        )? as u32,
        output_bytes: one(
            "output_bytes",
            r.output_bytes,
            defaults.output_bytes,
            max.output_bytes,
        )?,
        file_size_bytes: one(
            "file_size_bytes",
            r.file_size_bytes,
            defaults.file_size_bytes,
            max.file_size_bytes,
        )?,
    })
}

fn tests(tests: Vec<TestRequest>, config: &Config) -> Result<Vec<TestCase>, ApiError> {
    check_count("tests", tests.len(), config.max_tests)?;
    tests
        .into_iter()
        .map(|t| {
            check_size("a test's stdin", t.stdin.len(), config.max_stdin_bytes)?;
            if let Some(e) = &t.expected_output {
                check_size(
                    "an expected output",
                    e.len(),
                    config.max_expected_output_bytes,
                )?;
            }
            Ok(TestCase {
                stdin: Bytes(t.stdin.into_bytes()),
                expected_output: t.expected_output.map(|e| Bytes(e.into_bytes())),
            })
        })
        .collect()
}

/// Parses `exact`, `trailing_whitespace`, `tokens` or `float:<tolerance>`.
pub fn compare(text: Option<&str>) -> Result<Compare, ApiError> {
    let bad = || {
        ApiError::invalid(
            "invalid_compare",
            "compare must be `exact`, `trailing_whitespace`, `tokens` or `float:<tolerance>`",
        )
    };
    Ok(match text {
        None | Some("trailing_whitespace") => Compare::TrailingWhitespace,
        Some("exact") => Compare::Exact,
        Some("tokens") => Compare::Tokens,
        Some(other) => {
            let tol: f64 = other
                .strip_prefix("float:")
                .ok_or_else(bad)?
                .parse()
                .map_err(|_| bad())?;
            if !(tol.is_finite() && tol >= 0.0) {
                return Err(bad());
            }
            Compare::Float { tolerance: tol }
        }
    })
}

fn callback(url: String, config: &Config) -> Result<String, ApiError> {
    let bad = |why: &str| ApiError::invalid("invalid_callback_url", why.to_string());
    if url.len() > config.max_key_bytes {
        return Err(bad("callback_url is too long"));
    }
    let uri: axum::http::Uri = url.parse().map_err(|_| bad("callback_url is not a URL"))?;
    let web = matches!(uri.scheme_str(), Some("http" | "https"));
    let Some(host) = uri.host().filter(|_| web) else {
        return Err(bad(
            "callback_url must be an http:// or https:// URL with a host",
        ));
    };
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<std::net::IpAddr>() {
        if !config.webhook_allow_private && !crate::webhook::is_public(ip) {
            return Err(bad("callback_url must be a public address"));
        }
    }
    Ok(url)
}
