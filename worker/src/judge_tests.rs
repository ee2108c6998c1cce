use super::*;
use corral_protocol::Bytes;

const TW: Compare = Compare::TrailingWhitespace;

fn float(tolerance: f64) -> Compare {
    Compare::Float { tolerance }
}

#[test]
fn exact_is_byte_for_byte() {
    assert!(matches(Compare::Exact, b"1 2\n", b"1 2\n"));
    assert!(!matches(Compare::Exact, b"1 2\n", b"1 2"));
    assert!(!matches(Compare::Exact, b"1 2\n", b"1 2\r\n"));
    assert!(matches(Compare::Exact, b"", b""));
    assert!(matches(Compare::Exact, b"\xff\x00", b"\xff\x00"));
}

#[test]
fn trailing_whitespace_ignores_line_ends_and_final_blank_lines() {
    assert!(matches(TW, b"1 2\n", b"1 2"));
    assert!(matches(TW, b"1 2", b"1 2\n\n\n"));
    assert!(matches(TW, b"a\nb\n", b"a  \t\nb\r\n"));
    assert!(matches(TW, b"a\r\nb\r\n", b"a\nb"));
    assert!(matches(TW, b"", b"\n \n\t\n"));
    assert!(matches(TW, b"", b""));
    assert!(matches(TW, b"a\n\nb", b"a \n \nb"));
}

#[test]
fn trailing_whitespace_keeps_everything_else() {
    assert!(!matches(TW, b"1 2", b"1  2"), "inner spaces count");
    assert!(
        !matches(TW, b"a\nb", b"\na\nb"),
        "leading blank lines count"
    );
    assert!(!matches(TW, b"a\nb", b"a\n\nb"), "inner blank lines count");
    assert!(!matches(TW, b"a", b" a"), "leading spaces count");
    assert!(!matches(TW, b"", b"x"));
    assert!(!matches(TW, b"ab", b"a"));
}

#[test]
fn tokens_ignore_all_whitespace_layout() {
    let t = Compare::Tokens;
    assert!(matches(t, b"1 2 3\n", b"1\n2\t\t3"));
    assert!(matches(t, b"  a  b ", b"a\r\nb"));
    assert!(matches(t, b"", b" \n\n "));
    assert!(!matches(t, b"1 2 3", b"1 2"));
    assert!(!matches(t, b"1 2", b"1 2 3"));
    assert!(!matches(t, b"12", b"1 2"));
    assert!(!matches(t, b"1.0", b"1"), "tokens compare as text");
}

#[test]
fn huge_tokens_compare_in_linear_time() {
    let big = vec![b'7'; 2_000_000];
    let mut other = big.clone();
    assert!(matches(Compare::Tokens, &big, &other));
    assert!(matches(float(1e-9), &big, &other));
    *other.last_mut().unwrap() = b'8';
    assert!(!matches(Compare::Tokens, &big, &other));
    // Too long to be a sensible number: compared as text, so different.
    assert!(!matches(float(1.0), &big, &other));
}

#[test]
fn float_accepts_absolute_or_relative_difference() {
    let f = float(1e-6);
    assert!(matches(f, b"3.1415926", b"3.1415930"));
    assert!(!matches(f, b"3.1415926", b"3.1416"));
    assert!(matches(f, b"1000000000", b"1000000500"), "relative");
    assert!(!matches(f, b"1000000000", b"1000002000"));
    assert!(matches(f, b"0", b"-0.0000001"), "absolute near zero");
    assert!(matches(f, b"1e3", b"1000.0000001"));
    assert!(matches(f, b"answer: 0.5\n", b"answer:   0.50000001"));
    assert!(
        !matches(f, b"answer: 0.5", b"Answer: 0.5"),
        "words are exact"
    );
    assert!(!matches(f, b"0.5", b"0.5 0.5"), "token counts must match");
    assert!(!matches(f, b"0.5", b"abc"));
}

#[test]
fn float_handles_nan_and_infinities() {
    let f = float(1e-6);
    assert!(matches(f, b"nan", b"NaN"));
    assert!(!matches(f, b"nan", b"0"));
    assert!(!matches(f, b"0", b"nan"), "NaN never passes as a number");
    assert!(matches(f, b"inf", b"infinity"));
    assert!(!matches(f, b"inf", b"-inf"));
    assert!(!matches(f, b"1e308", b"inf"));
    assert!(!matches(float(f64::INFINITY), b"1", b"inf"));
}

#[test]
fn float_with_a_bad_tolerance_accepts_only_equal_tokens() {
    assert!(matches(float(f64::NAN), b"1.5", b"1.5"));
    assert!(!matches(float(f64::NAN), b"1.5", b"1.50"));
    assert!(!matches(float(-1.0), b"1.5", b"1.50001"));
    assert!(matches(float(0.0), b"1.5", b"1.50"), "numerically equal");
}

#[test]
fn run_verdicts_follow_status_then_comparison() {
    let v = |status, out: &[u8], exp: Option<&[u8]>| run_verdict(status, out, exp, TW);
    assert_eq!(v(RunStatus::Ok, b"x\n", None), Verdict::Accepted);
    assert_eq!(v(RunStatus::Ok, b"x\n", Some(b"x")), Verdict::Accepted);
    assert_eq!(v(RunStatus::Ok, b"y\n", Some(b"x")), Verdict::WrongAnswer);
    // A failed run is judged by how it failed, whatever it printed.
    assert_eq!(
        v(RunStatus::RuntimeError, b"x", Some(b"x")),
        Verdict::RuntimeError
    );
    assert_eq!(
        v(RunStatus::TimeLimit, b"", None),
        Verdict::TimeLimitExceeded
    );
    assert_eq!(
        v(RunStatus::MemoryLimit, b"", None),
        Verdict::MemoryLimitExceeded
    );
    assert_eq!(
        v(RunStatus::OutputLimit, b"x", Some(b"x")),
        Verdict::OutputLimitExceeded
    );
    assert_eq!(
        v(RunStatus::InternalError, b"", None),
        Verdict::InternalError
    );
}

#[test]
fn compile_verdicts() {
    assert_eq!(compile_verdict(RunStatus::Ok), Verdict::Accepted);
    assert_eq!(
        compile_verdict(RunStatus::RuntimeError),
        Verdict::CompilationError
    );
    assert_eq!(
        compile_verdict(RunStatus::TimeLimit),
        Verdict::CompilationError
    );
    assert_eq!(
        compile_verdict(RunStatus::InternalError),
        Verdict::InternalError
    );
}

fn result(verdict: Verdict) -> RunResult {
    RunResult {
        status: RunStatus::Ok,
        limit: None,
        verdict,
        exit_code: Some(0),
        signal: None,
        cpu_time_ms: 0,
        wall_time_ms: 0,
        memory_peak_bytes: 0,
        stdout: Bytes::default(),
        stderr: Bytes::default(),
        stdout_truncated: false,
        stderr_truncated: false,
        error: None,
    }
}

#[test]
fn job_verdict_is_the_first_non_accepted_compile_first() {
    use Verdict::*;
    let runs = |vs: &[Verdict]| vs.iter().map(|v| result(*v)).collect::<Vec<_>>();
    assert_eq!(job_verdict(None, &[]), Accepted);
    assert_eq!(job_verdict(None, &runs(&[Accepted, Accepted])), Accepted);
    assert_eq!(
        job_verdict(None, &runs(&[Accepted, WrongAnswer, TimeLimitExceeded])),
        WrongAnswer
    );
    assert_eq!(
        job_verdict(None, &runs(&[TimeLimitExceeded, WrongAnswer])),
        TimeLimitExceeded
    );
    assert_eq!(
        job_verdict(Some(&result(Accepted)), &runs(&[RuntimeError])),
        RuntimeError
    );
    assert_eq!(
        job_verdict(Some(&result(CompilationError)), &runs(&[WrongAnswer])),
        CompilationError
    );
}
