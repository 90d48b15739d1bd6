//! What the bench reads from the server under test: its RSS and its metrics.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;

use crate::client::http_request;

/// `VmRSS` of process `pid`, in bytes (Linux `/proc/PID/status`).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    parse_vmrss(&status).context("no VmRSS line")
}

/// Parses the `VmRSS:   1234 kB` line.
pub fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Waits until RSS stops growing: three reads 500 ms apart none above the first by
/// more than `slack` bytes, at most `limit`. Returns the last reading and whether it
/// settled.
pub async fn settled_rss(pid: u32, slack: u64, limit: Duration) -> anyhow::Result<(u64, bool)> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut base = rss_bytes(pid)?;
    let mut stable = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = rss_bytes(pid)?;
        if now <= base + slack {
            stable += 1;
            if stable >= 3 {
                return Ok((now, true));
            }
        } else {
            base = now;
            stable = 0;
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok((now, false));
        }
    }
}

/// One value of the Prometheus text at `/metrics` (a series without labels).
pub async fn metric(addr: SocketAddr, name: &str) -> anyhow::Result<Option<f64>> {
    let (status, body) =
        http_request(addr, "GET", "/metrics", &[], b"", Duration::from_secs(10)).await?;
    anyhow::ensure!(status == 200, "GET /metrics: HTTP {status}");
    Ok(parse_metric(&String::from_utf8_lossy(&body), name))
}

/// Finds `name value` in Prometheus text.
pub fn parse_metric(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.split_once(char::is_whitespace)?;
        (n == name).then(|| v.trim().parse().ok())?
    })
}

/// The whole `/metrics` text.
pub async fn metrics_text(addr: SocketAddr) -> anyhow::Result<String> {
    let (status, body) =
        http_request(addr, "GET", "/metrics", &[], b"", Duration::from_secs(10)).await?;
    anyhow::ensure!(status == 200, "GET /metrics: HTTP {status}");
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The lines of `text` whose series name starts with one of `prefixes`, non-zero only.
pub fn nonzero_lines<'a>(text: &'a str, prefixes: &[&str]) -> Vec<&'a str> {
    text.lines()
        .filter(|l| !l.starts_with('#') && prefixes.iter().any(|p| l.starts_with(p)))
        .filter(|l| {
            l.rsplit_once(' ')
                .and_then(|(_, v)| v.parse::<f64>().ok())
                .is_some_and(|v| v != 0.0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmrss() {
        let s = "Name:\tstarling\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nThreads: 3\n";
        assert_eq!(parse_vmrss(s), Some(12345 * 1024));
        assert_eq!(parse_vmrss("Name: x\n"), None);
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn metrics_text() {
        let t = "# HELP starling_subscriptions x\n# TYPE starling_subscriptions gauge\n\
                 starling_subscriptions 20000\nstarling_subscriptions_total 5\n\
                 starling_connections 10000\n";
        assert_eq!(parse_metric(t, "starling_subscriptions"), Some(20000.0));
        assert_eq!(parse_metric(t, "starling_connections"), Some(10000.0));
        assert_eq!(parse_metric(t, "starling_nope"), None);
        let e = "starling_errors_total{code=\"4002\"} 3\nstarling_errors_total{code=\"other\"} 0\n";
        assert_eq!(
            nonzero_lines(e, &["starling_errors_total"]),
            vec!["starling_errors_total{code=\"4002\"} 3"]
        );
    }
}
