//! Wire types shared by the gateway, the balancer and the worker. No runtime dependencies.
#![forbid(unsafe_code)]
