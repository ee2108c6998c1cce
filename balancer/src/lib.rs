//! Placement: which worker runs which job, from live node utilization.
#![forbid(unsafe_code)]
