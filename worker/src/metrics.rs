//! The worker's Prometheus metrics, registered on a registry the caller passes in (no globals).

use prometheus::{Gauge, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Histogram buckets for run times, in seconds (1 ms to 60 s).
const RUN_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Buckets for the sandbox's own overhead per run, in seconds (100 µs to 1 s).
const OVERHEAD_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// The worker's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// Per run: time spent by the executor outside the job's own wall time (container start,
    /// teardown and read-back), by language and step.
    pub sandbox_start: HistogramVec,
    /// Per run: the job's wall time, by language and step (`compile`, `run`, `probe`).
    pub run_time: HistogramVec,
    /// Runs by language, step and verdict.
    pub runs: IntCounterVec,
    /// Busy slots divided by all slots, 0 to 1.
    pub slot_utilization: Gauge,
    /// Busy slots.
    pub slots_busy: Gauge,
}

impl Metrics {
    /// Create the metrics and register them on `registry`.
    pub fn new(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let labels = &["language", "step"];
        let sandbox_start = HistogramVec::new(
            HistogramOpts::new(
                "corral_sandbox_start_seconds",
                "Sandbox overhead per run: executor time minus the job's wall time (start, teardown)",
            )
            .buckets(OVERHEAD_BUCKETS.to_vec()),
            labels,
        )?;
        let run_time = HistogramVec::new(
            HistogramOpts::new("corral_run_seconds", "Wall time of sandboxed runs")
                .buckets(RUN_BUCKETS.to_vec()),
            labels,
        )?;
        let runs = IntCounterVec::new(
            Opts::new("corral_worker_runs_total", "Sandboxed runs by verdict"),
            &["language", "step", "verdict"],
        )?;
        let slot_utilization = Gauge::new(
            "corral_worker_slot_utilization",
            "Busy sandbox slots divided by all slots",
        )?;
        let slots_busy = Gauge::new("corral_worker_slots_busy", "Busy sandbox slots")?;
        registry.register(Box::new(sandbox_start.clone()))?;
        registry.register(Box::new(run_time.clone()))?;
        registry.register(Box::new(runs.clone()))?;
        registry.register(Box::new(slot_utilization.clone()))?;
        registry.register(Box::new(slots_busy.clone()))?;
        Ok(Metrics {
            sandbox_start,
            run_time,
            runs,
            slot_utilization,
            slots_busy,
        })
    }
}
