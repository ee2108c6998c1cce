//! Prometheus metrics of the gateway and dispatcher, registered in a registry passed in.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// What went wrong registering metrics (a name registered twice in the same registry).
pub type MetricsError = prometheus::Error;

/// The gateway's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// Where they are registered; `/metrics` encodes it.
    pub registry: Registry,
    /// Jobs accepted, by tenant and language.
    pub jobs_submitted: IntCounterVec,
    /// Jobs that ended, by tenant, language, final state and verdict.
    pub jobs_finished: IntCounterVec,
    /// Stored jobs by state (refreshed from the store on every scrape).
    pub jobs: IntGaugeVec,
    /// Jobs waiting for a slot in the dispatcher.
    pub queue_depth: IntGauge,
    /// Sandbox slots of all connected nodes.
    pub slots: IntGauge,
    /// Slots running a job.
    pub slots_busy: IntGauge,
    /// Seconds from being queued to being assigned.
    pub queue_wait: Histogram,
    /// Seconds from assignment to result, by language.
    pub job_duration: HistogramVec,
    /// API responses by status class and error code.
    pub http_errors: IntCounterVec,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: Registry) -> Result<Self, MetricsError> {
        let buckets = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ];
        let m = Metrics {
            jobs_submitted: IntCounterVec::new(
                Opts::new("corral_jobs_submitted_total", "Jobs accepted"),
                &["tenant", "language"],
            )?,
            jobs_finished: IntCounterVec::new(
                Opts::new("corral_jobs_finished_total", "Jobs that ended"),
                &["tenant", "language", "state", "verdict"],
            )?,
            jobs: IntGaugeVec::new(Opts::new("corral_jobs", "Stored jobs by state"), &["state"])?,
            queue_depth: IntGauge::new("corral_queue_depth", "Jobs waiting for a slot")?,
            slots: IntGauge::new("corral_slots", "Sandbox slots of connected nodes")?,
            slots_busy: IntGauge::new("corral_slots_busy", "Slots running a job")?,
            queue_wait: Histogram::with_opts(
                HistogramOpts::new("corral_queue_wait_seconds", "Queued to assigned")
                    .buckets(buckets.clone()),
            )?,
            job_duration: HistogramVec::new(
                HistogramOpts::new("corral_job_duration_seconds", "Assigned to result")
                    .buckets(buckets),
                &["language"],
            )?,
            http_errors: IntCounterVec::new(
                Opts::new("corral_http_errors_total", "Error responses by code"),
                &["status", "code"],
            )?,
            registry,
        };
        m.registry.register(Box::new(m.jobs_submitted.clone()))?;
        m.registry.register(Box::new(m.jobs_finished.clone()))?;
        m.registry.register(Box::new(m.jobs.clone()))?;
        m.registry.register(Box::new(m.queue_depth.clone()))?;
        m.registry.register(Box::new(m.slots.clone()))?;
        m.registry.register(Box::new(m.slots_busy.clone()))?;
        m.registry.register(Box::new(m.queue_wait.clone()))?;
        m.registry.register(Box::new(m.job_duration.clone()))?;
        m.registry.register(Box::new(m.http_errors.clone()))?;
        Ok(m)
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) =
            prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out)
        {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }
}
