//! `corral submit FILE`: send one program to a Corral server and print what happened.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use axum::body::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

/// `corral submit` flags.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The program's source file.
    pub file: PathBuf,
    /// Language id or alias (default: guessed from the file's extension).
    #[arg(long)]
    pub language: Option<String>,
    /// File to use as standard input.
    #[arg(long)]
    pub stdin: Option<PathBuf>,
    /// The server's base URL (http:// only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// API key (default: $CORRAL_KEY).
    #[arg(long, env = "CORRAL_KEY", hide_env_values = true)]
    pub key: String,
    /// Print the job document as JSON.
    #[arg(long)]
    pub json: bool,
    /// Longest wait for the result, in seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u32,
}

/// Submits the file and prints the result; exit code 0 when accepted, 1 otherwise.
pub fn run(args: SubmitArgs) -> anyhow::Result<i32> {
    let body = request_body(&args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let uri = format!(
        "{}/v1/jobs?wait=true&timeout={}",
        args.server.trim_end_matches('/'),
        args.timeout
    );
    let (status, doc) = runtime.block_on(post(&uri, &args.key, body))?;
    if !status.is_success() {
        let code = doc["error"]["code"].as_str().unwrap_or("?");
        let message = doc["error"]["message"].as_str().unwrap_or("");
        bail!("server answered {status}: {code}: {message}");
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print_human(&doc);
    }
    Ok(if doc["verdict"] == "accepted" { 0 } else { 1 })
}

fn request_body(args: &SubmitArgs) -> anyhow::Result<Value> {
    let content =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let name = args
        .file
        .file_name()
        .and_then(|n| n.to_str())
        .context("the file name is not UTF-8")?
        .to_string();
    let language = match &args.language {
        Some(l) => l.clone(),
        None => corral_images::language::LanguageSet::builtin()
            .by_file_name(&name)
            .map(|l| l.id.clone())
            .with_context(|| format!("cannot guess the language of {name}; use --language"))?,
    };
    let (content, encoding) = match String::from_utf8(content) {
        Ok(text) => (text, "utf8"),
        Err(e) => {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD.encode(e.into_bytes());
            (b64, "base64")
        }
    };
    let mut body = json!({
        "language": language,
        "files": [{"name": name, "content": content, "encoding": encoding}],
    });
    if let Some(path) = &args.stdin {
        let stdin = std::fs::read_to_string(path)
            .with_context(|| format!("reading {} (stdin must be UTF-8)", path.display()))?;
        body["stdin"] = Value::String(stdin);
    }
    Ok(body)
}

async fn post(
    uri: &str,
    key: &str,
    body: Value,
) -> anyhow::Result<(axum::http::StatusCode, Value)> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = axum::http::Request::post(uri)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .with_context(|| format!("invalid server URL {uri}"))?;
    let response = client
        .request(request)
        .await
        .with_context(|| format!("connecting to {uri}"))?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    let doc = serde_json::from_slice(&bytes)
        .with_context(|| format!("the server's answer ({status}) is not JSON"))?;
    Ok((status, doc))
}

fn print_human(doc: &Value) {
    let verdict = doc["verdict"].as_str().unwrap_or("-");
    println!(
        "job {}  {} {}  state {}  verdict {}",
        doc["id"].as_str().unwrap_or("?"),
        doc["language"].as_str().unwrap_or("?"),
        doc["version"].as_str().unwrap_or(""),
        doc["state"].as_str().unwrap_or("?"),
        verdict
    );
    if doc["compile"].is_object() {
        print_run("compile", &doc["compile"]);
    }
    for (i, run) in doc["runs"].as_array().into_iter().flatten().enumerate() {
        print_run(&format!("run {i}"), run);
    }
}

fn print_run(label: &str, run: &Value) {
    println!(
        "{label}: {}  exit {}  signal {}  cpu {} ms  wall {} ms  memory {} KiB",
        run["verdict"].as_str().unwrap_or("?"),
        run["exit_code"],
        run["signal"],
        run["cpu_time_ms"],
        run["wall_time_ms"],
        run["memory_peak_bytes"].as_u64().unwrap_or(0) / 1024
    );
    for stream in ["stdout", "stderr"] {
        let text = run[stream].as_str().unwrap_or("");
        if text.is_empty() {
            continue;
        }
        let encoding = run[format!("{stream}_encoding")].as_str().unwrap_or("utf8");
        let truncated = run[format!("{stream}_truncated")] == true;
        println!(
            "--- {stream}{}{}",
            if encoding == "base64" {
                " (base64)"
            } else {
                ""
            },
            if truncated { " (truncated)" } else { "" }
        );
        print!("{text}");
        if !text.ends_with('\n') {
            println!();
        }
    }
}
