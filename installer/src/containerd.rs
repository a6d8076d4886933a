//! Restarting the node's containerd and seeing it serve again.

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tracing::info;

use crate::distro::{Node, Restart};
use crate::host::Host;

/// Restarts containerd the node's way and waits until its socket answers.
pub fn restart(host: &Host, node: &Node, timeout: Duration) -> Result<()> {
    match &node.restart {
        Restart::Unit(unit) => {
            info!(unit, "restarting containerd");
            let output = host.run("systemctl", &["restart", unit])?;
            if !output.status.success() {
                bail!(
                    "`systemctl restart {unit}` failed ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
        }
        Restart::ByDistribution => info!(distribution = %node.distribution, "the distribution restarts containerd when its config changes"),
    }
    wait_serving(host, node.socket, timeout)
}

/// Waits until something accepts connections on containerd's socket:
/// containerd listens only once its plugins are loaded.
fn wait_serving(host: &Host, socket: &str, timeout: Duration) -> Result<()> {
    let path = host.path(socket);
    let deadline = Instant::now() + timeout;
    loop {
        let error = match UnixStream::connect(&path) {
            Ok(_) => return Ok(()),
            Err(err) => err,
        };
        if Instant::now() >= deadline {
            bail!("containerd did not come back within {}s: connecting to {socket} fails: {error}", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The (major, minor) version of the host's containerd, from `containerd
/// --version` ("containerd github.com/containerd/containerd v1.7.24 ...").
pub fn version(host: &Host) -> Result<(u64, u64)> {
    let output = host.run("containerd", &["--version"])?;
    let text = String::from_utf8_lossy(&output.stdout);
    parse_version(&text).with_context(|| format!("`containerd --version` printed no version: {}", text.trim()))
}

fn parse_version(text: &str) -> Option<(u64, u64)> {
    text.split_whitespace().skip(1).find_map(|word| {
        let mut parts = word.trim_start_matches('v').split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()?;
        Some((major, minor))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_version_of_each_packaging() {
        assert_eq!(parse_version("containerd github.com/containerd/containerd v1.7.24 88bf19b2"), Some((1, 7)));
        assert_eq!(parse_version("containerd containerd.io 2.1.9 abc"), Some((2, 1)));
        assert_eq!(parse_version("containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+b1"), Some((1, 6)));
        assert_eq!(parse_version("no version here"), None);
    }
}
