//! Judging: comparing a run's output with the expected output, and verdicts of runs and jobs.
//!
//! Every comparison is linear in the size of its inputs (outputs are already capped by the run's
//! output limit) and never allocates more than a list of token slices.

use corral_protocol::{Compare, RunResult, RunStatus, Verdict};

/// Whether `actual` matches `expected` under `mode`.
pub fn matches(mode: Compare, expected: &[u8], actual: &[u8]) -> bool {
    match mode {
        Compare::Exact => expected == actual,
        Compare::TrailingWhitespace => trimmed_lines(expected).eq(trimmed_lines(actual)),
        Compare::Tokens => tokens(expected).eq(tokens(actual)),
        Compare::Float { tolerance } => {
            let mut e = tokens(expected);
            let mut a = tokens(actual);
            loop {
                match (e.next(), a.next()) {
                    (None, None) => return true,
                    (Some(x), Some(y)) if token_matches(x, y, tolerance) => {}
                    _ => return false,
                }
            }
        }
    }
}

/// ASCII whitespace, as C's `isspace` sees it (includes `\r`, `\v`, `\f`).
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn trim_end(line: &[u8]) -> &[u8] {
    let end = line
        .iter()
        .rposition(|&b| !is_space(b))
        .map_or(0, |i| i + 1);
    &line[..end]
}

/// Lines with trailing whitespace (and `\r`) removed, without the trailing empty lines.
fn trimmed_lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let body = trim_end(text);
    let lines = body.split(|&b| b == b'\n').map(trim_end);
    // An empty (or all-whitespace) text has no lines at all, not one empty line.
    lines.take(if body.is_empty() { 0 } else { usize::MAX })
}

fn tokens(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    text.split(|&b| is_space(b)).filter(|t| !t.is_empty())
}

/// Tokens equal, or both numbers within `tolerance` (absolute or relative). NaN matches only NaN,
/// an infinity only the same infinity. A negative or NaN tolerance accepts equal tokens only.
fn token_matches(expected: &[u8], actual: &[u8], tolerance: f64) -> bool {
    if expected == actual {
        return true;
    }
    let (Some(e), Some(a)) = (number(expected), number(actual)) else {
        return false;
    };
    if e.is_nan() || a.is_nan() {
        return e.is_nan() && a.is_nan();
    }
    if e.is_infinite() || a.is_infinite() {
        return e == a;
    }
    let diff = (e - a).abs();
    diff <= tolerance || diff <= tolerance * e.abs().max(a.abs())
}

/// A token as a floating-point number, if it is one (decimal or scientific notation).
fn number(token: &[u8]) -> Option<f64> {
    // Bound the work: no real number needs more digits than this to be compared.
    if token.len() > 4096 {
        return None;
    }
    std::str::from_utf8(token).ok()?.parse().ok()
}

/// The verdict of one test run.
pub fn run_verdict(
    status: RunStatus,
    stdout: &[u8],
    expected: Option<&[u8]>,
    mode: Compare,
) -> Verdict {
    match status {
        RunStatus::Ok => match expected {
            Some(expected) if !matches(mode, expected, stdout) => Verdict::WrongAnswer,
            _ => Verdict::Accepted,
        },
        RunStatus::RuntimeError => Verdict::RuntimeError,
        RunStatus::TimeLimit => Verdict::TimeLimitExceeded,
        RunStatus::MemoryLimit => Verdict::MemoryLimitExceeded,
        RunStatus::OutputLimit => Verdict::OutputLimitExceeded,
        RunStatus::InternalError => Verdict::InternalError,
    }
}

/// The verdict of the compile step: anything but a clean exit is a compilation error (a compiler
/// running out of time or memory included), except Corral's own failures.
pub fn compile_verdict(status: RunStatus) -> Verdict {
    match status {
        RunStatus::Ok => Verdict::Accepted,
        RunStatus::InternalError => Verdict::InternalError,
        _ => Verdict::CompilationError,
    }
}

/// The job's verdict: the first non-accepted one, the compile step first, else `accepted`.
pub fn job_verdict(compile: Option<&RunResult>, runs: &[RunResult]) -> Verdict {
    compile
        .into_iter()
        .chain(runs)
        .map(|r| r.verdict)
        .find(|v| *v != Verdict::Accepted)
        .unwrap_or(Verdict::Accepted)
}

#[cfg(test)]
#[path = "judge_tests.rs"]
mod tests;
