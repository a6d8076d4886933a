//! The HTTP server's knobs, read from the container's environment (the
//! pod spec's `env`), each with a default that suits a small API.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::shared::launch_plan::env_value;

/// Address and port to listen on.
pub const ADDR_ENV: &str = "WASMLET_HTTP_ADDR";
pub const DEFAULT_ADDR: &str = "0.0.0.0:8080";
/// Seconds a request may take, from arrival until its handler returns,
/// before it is cut with 504 (a decimal number: `0.5`, `30`).
pub const TIMEOUT_ENV: &str = "WASMLET_HTTP_TIMEOUT";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests handled at once; more wait for a free slot (within their timeout).
pub const CONCURRENCY_ENV: &str = "WASMLET_HTTP_CONCURRENCY";
pub const DEFAULT_CONCURRENCY: u32 = 100;
/// Each request slot reserves address space for its memories (4 GiB each).
pub const MAX_CONCURRENCY: u32 = 1000;
/// Threads serving requests; by default one per CPU the pod's cgroup allows.
pub const WORKERS_ENV: &str = "WASMLET_HTTP_WORKERS";
pub const MAX_WORKERS: u32 = 256;
/// `off` silences the request log on stdout.
pub const LOG_ENV: &str = "WASMLET_HTTP_LOG";

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub addr: SocketAddr,
    pub timeout: Duration,
    pub concurrency: u32,
    /// None: one per CPU.
    pub workers: Option<usize>,
    pub log_requests: bool,
}

impl Settings {
    /// The settings from `K=V` environment entries; a bad value is an error
    /// that names its variable.
    pub fn from_env(env: &[String]) -> Result<Settings> {
        let addr = env_value(env, ADDR_ENV).unwrap_or(DEFAULT_ADDR);
        let addr = addr.parse().with_context(|| format!("{ADDR_ENV}={addr} is not an address and port"))?;
        let timeout = match env_value(env, TIMEOUT_ENV) {
            None => DEFAULT_TIMEOUT,
            Some(text) => parse_seconds(text).with_context(|| format!("{TIMEOUT_ENV}={text}"))?,
        };
        let concurrency = count(env, CONCURRENCY_ENV, MAX_CONCURRENCY, "requests")?.unwrap_or(DEFAULT_CONCURRENCY);
        let workers = count(env, WORKERS_ENV, MAX_WORKERS, "threads")?.map(|n| n as usize);
        let log_requests = env_value(env, LOG_ENV) != Some("off");
        Ok(Settings { addr, timeout, concurrency, workers, log_requests })
    }
}

/// The variable `name` as a number from 1 to `max` of `what`, if it is set.
fn count(env: &[String], name: &str, max: u32, what: &str) -> Result<Option<u32>> {
    let Some(text) = env_value(env, name) else { return Ok(None) };
    match text.parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(Some(n)),
        _ => bail!("{name}={text} is not a number of {what} from 1 to {max}"),
    }
}

fn parse_seconds(text: &str) -> Result<Duration> {
    let seconds: f64 = text.parse().ok().filter(|s: &f64| s.is_finite() && *s > 0.0).context("not a positive number of seconds")?;
    Duration::try_from_secs_f64(seconds).context("too many seconds")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(env: &[&str]) -> Result<Settings> {
        Settings::from_env(&env.iter().map(|kv| kv.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn defaults_apply_without_variables() {
        let defaults = settings(&["PATH=/"]).unwrap();
        assert_eq!(defaults.addr, DEFAULT_ADDR.parse().unwrap());
        assert_eq!((defaults.timeout, defaults.concurrency, defaults.workers, defaults.log_requests), (DEFAULT_TIMEOUT, DEFAULT_CONCURRENCY, None, true));
    }

    #[test]
    fn variables_override_defaults() {
        let set = settings(&["WASMLET_HTTP_ADDR=127.0.0.1:9000", "WASMLET_HTTP_TIMEOUT=0.25", "WASMLET_HTTP_CONCURRENCY=4", "WASMLET_HTTP_WORKERS=3", "WASMLET_HTTP_LOG=off"]).unwrap();
        assert_eq!(set.addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!((set.timeout, set.concurrency, set.workers, set.log_requests), (Duration::from_millis(250), 4, Some(3), false));
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (env, expected) in [
            ("WASMLET_HTTP_ADDR=localhost", "WASMLET_HTTP_ADDR=localhost is not an address and port: invalid socket address syntax"),
            ("WASMLET_HTTP_TIMEOUT=0", "WASMLET_HTTP_TIMEOUT=0: not a positive number of seconds"),
            ("WASMLET_HTTP_TIMEOUT=soon", "WASMLET_HTTP_TIMEOUT=soon: not a positive number of seconds"),
            ("WASMLET_HTTP_CONCURRENCY=0", "WASMLET_HTTP_CONCURRENCY=0 is not a number of requests from 1 to 1000"),
            ("WASMLET_HTTP_WORKERS=many", "WASMLET_HTTP_WORKERS=many is not a number of threads from 1 to 256"),
        ] {
            assert_eq!(format!("{:#}", settings(&[env]).unwrap_err()), expected);
        }
    }
}
