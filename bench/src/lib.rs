//! Benchmark harness: run variants interleaved (every round runs each variant once, in a shuffled
//! order), then report min, median and p99 of
//! each beside the baseline and the ratio of medians. Benchmarks are never timed tests: nothing here
//! passes or fails on a time.
//!
//! # Layout
//!
//! - this file: [`Samples`], [`interleave`] and the report table.
//! - `src/bin/sandbox_latency.rs`: the sandbox start-to-exit benchmark (issue 2).
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

/// Durations measured for one variant.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    /// Variant name.
    pub name: String,
    /// One entry per run.
    pub runs: Vec<Duration>,
}

impl Samples {
    /// The q-quantile (0.0..=1.0) by nearest rank.
    pub fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.runs.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    /// Smallest run.
    pub fn min(&self) -> Duration {
        self.runs.iter().copied().min().unwrap_or_default()
    }

    /// Median run.
    pub fn median(&self) -> Duration {
        self.quantile(0.5)
    }

    /// 99th percentile.
    pub fn p99(&self) -> Duration {
        self.quantile(0.99)
    }
}

/// The median of `values` (the lower middle one of an even count; 0 for none).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
        .get(sorted.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(0.0)
}

/// Run every variant `rounds` times, interleaved, after `warmup` unmeasured rounds.
///
/// Each round runs the variants in a fresh random order (the same sequence every run): work the
/// kernel finishes after a command has exited (bubblewrap's network namespace is torn down by a
/// kernel worker, on the other core) then slows every variant alike, instead of always the one
/// that follows it.
pub fn interleave(
    variants: &mut [(&str, &mut dyn FnMut() -> anyhow::Result<()>)],
    warmup: usize,
    rounds: usize,
) -> anyhow::Result<Vec<Samples>> {
    let mut samples: Vec<Samples> = variants
        .iter()
        .map(|(name, _)| Samples {
            name: (*name).to_string(),
            runs: Vec::with_capacity(rounds),
        })
        .collect();
    let mut order: Vec<usize> = (0..variants.len()).collect();
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    for round in 0..warmup + rounds {
        shuffle(&mut order, &mut rng);
        for &i in &order {
            let run = &mut variants[i].1;
            let start = Instant::now();
            run()?;
            let took = start.elapsed();
            if round >= warmup {
                samples[i].runs.push(took);
            }
        }
    }
    Ok(samples)
}

/// Fisher-Yates shuffle driven by a xorshift64 generator (no dependency for a benchmark's order).
fn shuffle(order: &mut [usize], state: &mut u64) {
    for i in (1..order.len()).rev() {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let j = (*state % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
}

fn micros(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

/// A Markdown table: one row per variant, ratio of medians against the first (the baseline).
pub fn table(title: &str, samples: &[Samples]) -> String {
    let mut out = format!("### {title}\n\n| variant | runs | min µs | median µs | p99 µs | median / baseline |\n|---|---|---|---|---|---|\n");
    let base = samples.first().map(Samples::median).unwrap_or_default();
    for s in samples {
        let ratio = s.median().as_secs_f64() / base.as_secs_f64().max(1e-9);
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.2}× |\n",
            s.name,
            s.runs.len(),
            micros(s.min()),
            micros(s.median()),
            micros(s.p99()),
            ratio
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let s = Samples {
            name: "x".into(),
            runs: (1..=100).map(Duration::from_millis).collect(),
        };
        assert_eq!(s.min(), Duration::from_millis(1));
        assert_eq!(s.median(), Duration::from_millis(50));
        assert_eq!(s.p99(), Duration::from_millis(99));
        assert_eq!(Samples::default().median(), Duration::ZERO);
    }

    #[test]
    fn interleave_runs_each_variant_once_per_round_in_shuffled_orders_and_skips_warmup() {
        let order = std::cell::RefCell::new(Vec::new());
        let mut a = || -> anyhow::Result<()> {
            order.borrow_mut().push('a');
            Ok(())
        };
        let mut b = || -> anyhow::Result<()> {
            order.borrow_mut().push('b');
            Ok(())
        };
        let mut c = || -> anyhow::Result<()> {
            order.borrow_mut().push('c');
            Ok(())
        };
        let samples =
            interleave(&mut [("a", &mut a), ("b", &mut b), ("c", &mut c)], 2, 10).unwrap();
        let order: String = order.borrow().iter().collect();
        assert_eq!(order.len(), 3 * 12);
        let rounds: Vec<&str> = (0..12).map(|r| &order[r * 3..r * 3 + 3]).collect();
        for round in &rounds {
            let mut sorted: Vec<char> = round.chars().collect();
            sorted.sort_unstable();
            assert_eq!(sorted, ['a', 'b', 'c'], "round {round} of {order}");
        }
        // Not one fixed order: the variant after another changes from round to round.
        let distinct: std::collections::HashSet<&&str> = rounds.iter().collect();
        assert!(distinct.len() >= 3, "{order}");
        for s in &samples {
            assert_eq!(s.runs.len(), 10);
        }
        assert!(table("t", &samples).contains("| a | 10 |"));
    }
}
