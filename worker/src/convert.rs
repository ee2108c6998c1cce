//! Mapping between wire types and sandbox types: limits in, outcomes out.

use std::time::Duration;

use corral_images::language::DefaultLimits;
use corral_protocol::{Bytes, Limits, RunResult, RunStatus, Verdict};
use corral_sandbox::{Outcome, Status, TimeLimitKind};

/// The sandbox limits of a run with the wire `limits`. Limits the wire does not carry keep the
/// sandbox's defaults, except the job's disk (its tmpfs), which is at least one file of the
/// largest allowed size.
pub fn sandbox_limits(limits: &Limits) -> corral_sandbox::Limits {
    let defaults = corral_sandbox::Limits::default();
    corral_sandbox::Limits {
        cpu_time: Duration::from_millis(limits.cpu_time_ms),
        wall_time: Duration::from_millis(limits.wall_time_ms),
        memory_bytes: limits.memory_bytes,
        processes: limits.processes,
        output_bytes: limits.output_bytes,
        file_size_bytes: limits.file_size_bytes,
        disk_bytes: defaults.disk_bytes.max(limits.file_size_bytes),
        ..defaults
    }
}

/// A language definition's default limits as wire limits.
pub fn wire_limits(limits: &DefaultLimits) -> Limits {
    Limits {
        cpu_time_ms: limits.cpu_time_ms,
        wall_time_ms: limits.wall_time_ms,
        memory_bytes: limits.memory_bytes,
        processes: limits.processes,
        output_bytes: limits.output_bytes,
        file_size_bytes: limits.file_size_bytes,
    }
}

/// The wire status of a sandbox outcome; `None` for a cancelled run (it has no result).
pub fn run_status(status: Status) -> Option<RunStatus> {
    Some(match status {
        Status::Ok => RunStatus::Ok,
        Status::RuntimeError => RunStatus::RuntimeError,
        Status::TimeLimit => RunStatus::TimeLimit,
        Status::MemoryLimit => RunStatus::MemoryLimit,
        Status::OutputLimit => RunStatus::OutputLimit,
        Status::InternalError => RunStatus::InternalError,
        Status::Cancelled => return None,
    })
}

/// A run's result from its outcome (the verdict is decided by the caller).
pub fn run_result(outcome: Outcome, status: RunStatus, verdict: Verdict) -> RunResult {
    RunResult {
        status,
        limit: outcome.limit.map(|l| {
            match l {
                TimeLimitKind::Cpu => "cpu",
                TimeLimitKind::Wall => "wall",
            }
            .to_string()
        }),
        verdict,
        exit_code: outcome.exit_code,
        signal: outcome.signal,
        cpu_time_ms: millis(outcome.cpu_time),
        wall_time_ms: millis(outcome.wall_time),
        memory_peak_bytes: outcome.memory_peak_bytes,
        stdout: Bytes(outcome.stdout),
        stderr: Bytes(outcome.stderr),
        stdout_truncated: outcome.stdout_truncated,
        stderr_truncated: outcome.stderr_truncated,
        error: outcome.error,
    }
}

/// A run Corral failed to carry out.
pub fn internal_error(message: String) -> RunResult {
    RunResult {
        status: RunStatus::InternalError,
        limit: None,
        verdict: Verdict::InternalError,
        exit_code: None,
        signal: None,
        cpu_time_ms: 0,
        wall_time_ms: 0,
        memory_peak_bytes: 0,
        stdout: Bytes::default(),
        stderr: Bytes::default(),
        stdout_truncated: false,
        stderr_truncated: false,
        error: Some(message),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            cpu_time_ms: 1500,
            wall_time_ms: 4000,
            memory_bytes: 128 << 20,
            processes: 7,
            output_bytes: 4096,
            file_size_bytes: 256 << 20,
        }
    }

    #[test]
    fn wire_limits_map_onto_sandbox_limits() {
        let l = sandbox_limits(&limits());
        assert_eq!(l.cpu_time, Duration::from_millis(1500));
        assert_eq!(l.wall_time, Duration::from_secs(4));
        assert_eq!(l.memory_bytes, 128 << 20);
        assert_eq!(l.processes, 7);
        assert_eq!(l.output_bytes, 4096);
        assert_eq!(l.file_size_bytes, 256 << 20);
        assert_eq!(l.disk_bytes, 256 << 20, "room for one largest file");
        let d = corral_sandbox::Limits::default();
        assert_eq!(l.open_files, d.open_files);
        assert_eq!(l.stack_bytes, d.stack_bytes);
        assert_eq!(l.cpu_quota_millicpus, None);
        let small = sandbox_limits(&Limits {
            file_size_bytes: 1,
            ..limits()
        });
        assert_eq!(small.disk_bytes, d.disk_bytes);
    }

    #[test]
    fn language_defaults_map_field_by_field() {
        let d = DefaultLimits {
            cpu_time_ms: 1,
            wall_time_ms: 2,
            memory_bytes: 3,
            processes: 4,
            output_bytes: 5,
            file_size_bytes: 6,
        };
        let w = wire_limits(&d);
        assert_eq!(
            (w.cpu_time_ms, w.wall_time_ms, w.memory_bytes, w.processes),
            (1, 2, 3, 4)
        );
        assert_eq!((w.output_bytes, w.file_size_bytes), (5, 6));
    }

    #[test]
    fn outcomes_map_onto_results() {
        let outcome = Outcome {
            status: Status::TimeLimit,
            limit: Some(TimeLimitKind::Wall),
            exit_code: None,
            signal: Some(9),
            cpu_time: Duration::from_micros(1999),
            wall_time: Duration::from_millis(3000),
            memory_peak_bytes: 42,
            stdout: b"out".to_vec(),
            stderr: b"err".to_vec(),
            stdout_truncated: true,
            stderr_truncated: false,
            files: Vec::new(),
            error: None,
        };
        let status = run_status(outcome.status).unwrap();
        let r = run_result(outcome, status, Verdict::TimeLimitExceeded);
        assert_eq!(r.status, RunStatus::TimeLimit);
        assert_eq!(r.limit.as_deref(), Some("wall"));
        assert_eq!((r.cpu_time_ms, r.wall_time_ms), (1, 3000));
        assert_eq!(r.signal, Some(9));
        assert_eq!(r.stdout.0, b"out");
        assert!(r.stdout_truncated && !r.stderr_truncated);
        assert_eq!(run_status(Status::Cancelled), None);
        assert_eq!(
            run_status(Status::MemoryLimit),
            Some(RunStatus::MemoryLimit)
        );
    }
}
