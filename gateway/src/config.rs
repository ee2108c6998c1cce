//! Server-side settings: defaults and maxima for everything a request can ask for.

use std::time::Duration;

use corral_protocol::Limits;

/// The gateway's settings. [`Config::default`] is what `corral serve` uses.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest request body, in bytes (checked before parsing).
    pub max_body_bytes: usize,
    /// Most test cases per job.
    pub max_tests: usize,
    /// Most files per job.
    pub max_files: usize,
    /// Longest file name, in bytes.
    pub max_file_name_bytes: usize,
    /// Largest standard input (of the job, and of each test), in bytes.
    pub max_stdin_bytes: usize,
    /// Largest expected output of a test, in bytes.
    pub max_expected_output_bytes: usize,
    /// Most extra arguments.
    pub max_args: usize,
    /// Longest argument, in bytes.
    pub max_arg_bytes: usize,
    /// Longest idempotency key and callback URL, in bytes.
    pub max_key_bytes: usize,
    /// Compile limits of languages that declare none (only used by compiled languages anyway).
    pub default_compile_limits: Limits,
    /// Largest value of each limit any tenant may ask for (a tenant's own quota may be lower).
    pub max_limits: Limits,
    /// How long `?wait=true` waits when no `timeout` is given.
    pub default_wait: Duration,
    /// Longest `?wait=true&timeout=`.
    pub max_wait: Duration,
    /// Most jobs per page of `GET /v1/jobs`.
    pub max_page: u32,
    /// Webhook attempts before giving up.
    pub webhook_attempts: u32,
    /// Delay before the first webhook retry (doubles each time).
    pub webhook_backoff: Duration,
    /// Timeout of one webhook request.
    pub webhook_timeout: Duration,
    /// Allow webhooks to loopback, private and link-local addresses (off: only public ones, so
    /// tenants cannot reach the gateway's own network through it).
    pub webhook_allow_private: bool,
    /// DER certificates trusted for `https://` webhooks besides Mozilla's roots (a private CA;
    /// tests trust their self-signed receiver this way). Certificates are always verified.
    pub webhook_extra_roots: Vec<Vec<u8>>,
    /// The shared secret worker nodes send as `Authorization: Bearer TOKEN` to fetch image layers
    /// (`GET /v1/images/...`) without a tenant's key; `None`: only tenant keys are accepted there.
    pub node_token: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        let mib = 1u64 << 20;
        Config {
            max_body_bytes: 10 << 20,
            max_tests: 256,
            max_files: 64,
            max_file_name_bytes: 128,
            max_stdin_bytes: 4 << 20,
            max_expected_output_bytes: 4 << 20,
            max_args: 64,
            max_arg_bytes: 4096,
            max_key_bytes: 2048,
            default_compile_limits: Limits {
                cpu_time_ms: 10_000,
                wall_time_ms: 20_000,
                memory_bytes: 512 * mib,
                processes: 64,
                output_bytes: mib,
                file_size_bytes: 64 * mib,
            },
            max_limits: Limits {
                cpu_time_ms: 60_000,
                wall_time_ms: 120_000,
                memory_bytes: 4096 * mib,
                processes: 512,
                output_bytes: 64 * mib,
                file_size_bytes: 256 * mib,
            },
            default_wait: Duration::from_secs(60),
            max_wait: Duration::from_secs(300),
            max_page: 100,
            webhook_attempts: 8,
            webhook_backoff: Duration::from_secs(1),
            webhook_timeout: Duration::from_secs(10),
            webhook_allow_private: false,
            webhook_extra_roots: Vec::new(),
            node_token: None,
        }
    }
}
