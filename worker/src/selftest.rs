//! The language self-test at start-up: each language's version probe runs through the executor
//! (so in the sandbox, on the language's image); the languages whose probe exits 0 and prints a
//! version are kept, with that version.

use std::sync::Arc;
use std::time::Duration;

use corral_images::language::{Language, LanguageSet};
use corral_protocol::LanguageInfo;
use corral_sandbox::spec::CancelToken;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::convert::wire_limits;
use crate::executor::{ExecRequest, Executor};

/// Limits of a version probe (JVMs need a few hundred MiB and dozens of threads).
fn probe_limits() -> corral_sandbox::Limits {
    corral_sandbox::Limits {
        cpu_time: Duration::from_secs(10),
        wall_time: Duration::from_secs(20),
        memory_bytes: 1 << 30,
        processes: 256,
        output_bytes: 64 << 10,
        ..corral_sandbox::Limits::default()
    }
}

/// Probe every language of `languages`, at most `concurrency` at once. Returns the ones that work
/// (sorted by id) with their versions.
pub async fn self_test(
    executor: Arc<dyn Executor>,
    languages: &LanguageSet,
    concurrency: usize,
) -> Vec<LanguageInfo> {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut probes = JoinSet::new();
    for language in languages.all() {
        let (executor, language, permits) = (executor.clone(), language.clone(), permits.clone());
        probes.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let id = language.id.clone();
            let found = tokio::task::spawn_blocking(move || probe(&*executor, &language))
                .await
                .unwrap_or_else(|e| Err(format!("the probe panicked: {e}")));
            (id, found)
        });
    }
    let mut working = Vec::new();
    while let Some(joined) = probes.join_next().await {
        let Ok((id, found)) = joined else { continue };
        match found {
            Ok(info) => {
                tracing::info!(language = %id, version = %info.version, "language self-test passed");
                working.push(info);
            }
            Err(why) => tracing::warn!(language = %id, reason = %why, "language self-test failed"),
        }
    }
    working.sort_by(|a, b| a.id.cmp(&b.id));
    working
}

/// Run one probe.
fn probe(executor: &dyn Executor, language: &Language) -> Result<LanguageInfo, String> {
    let request = ExecRequest {
        image: language.image().to_string(),
        argv: language.version.argv.clone(),
        files: Vec::new(),
        stdin: Vec::new(),
        limits: probe_limits(),
        network: false,
        collect: Vec::new(),
        collect_max_bytes: 0,
    };
    let cancel = CancelToken::new().map_err(|e| e.to_string())?;
    let outcome = executor
        .run(request, &cancel, &mut |_, _| {})
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&outcome.stdout);
    let stderr = String::from_utf8_lossy(&outcome.stderr);
    if outcome.status != corral_sandbox::Status::Ok {
        let excerpt: String = stderr.chars().take(200).collect();
        return Err(format!(
            "{:?} ended with {:?} (exit {:?}): {excerpt}",
            language.version.argv, outcome.status, outcome.exit_code
        ));
    }
    let version = language.parse_version(&stdout, &stderr).ok_or_else(|| {
        format!(
            "no version found in the output of {:?}",
            language.version.argv
        )
    })?;
    Ok(info(language, version))
}

/// What the coordinator learns about a working language.
pub fn info(language: &Language, version: String) -> LanguageInfo {
    LanguageInfo {
        id: language.id.clone(),
        name: language.name.clone(),
        version,
        aliases: language.aliases.clone(),
        source_file: language.source_file.clone(),
        compiled: language.compiled(),
        extensions: language.extensions.clone(),
        limits: wire_limits(&language.run.limits),
        compile_limits: language.compile.as_ref().map(|c| wire_limits(&c.limits)),
        image: Some(language.image().to_string()),
    }
}
