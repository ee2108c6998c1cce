//! Benchmark harness helpers: interleaved runs, min/median/p99 and ratios against a baseline.
#![forbid(unsafe_code)]
