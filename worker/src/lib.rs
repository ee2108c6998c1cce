//! The node agent: owns sandbox slots and turns jobs into sandbox runs.
#![forbid(unsafe_code)]
