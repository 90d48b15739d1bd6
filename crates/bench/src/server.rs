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
    parse_kb_line(status, "VmRSS:")
}

/// The `<key> <n> kB` line of a /proc file, in bytes.
fn parse_kb_line(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The processes of one server (nginx: master and workers), written `PID[+PID...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PidGroup(Vec<u32>);

/// A `PID[+PID...]` that is not one.
#[derive(Debug, thiserror::Error)]
#[error("not a PID or PID+PID+...: {0:?}")]
pub struct BadPidGroup(String);

impl std::str::FromStr for PidGroup {
    type Err = BadPidGroup;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let pids = s
            .split('+')
            .map(|p| p.trim().parse::<u32>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| BadPidGroup(s.to_string()))?;
        if pids.is_empty() {
            return Err(BadPidGroup(s.to_string()));
        }
        Ok(PidGroup(pids))
    }
}

impl std::fmt::Display for PidGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text: Vec<String> = self.0.iter().map(u32::to_string).collect();
        f.write_str(&text.join("+"))
    }
}

impl PidGroup {
    /// Number of processes.
    pub fn count(&self) -> usize {
        self.0.len()
    }

    /// Sum of the processes' `VmRSS`, in bytes.
    pub fn rss(&self) -> anyhow::Result<u64> {
        self.0.iter().map(|&p| rss_bytes(p)).sum()
    }
}

/// Sum of the group's `Pss` (/proc/PID/smaps_rollup), in bytes: shared memory (nginx's
/// shared zone, touched by every worker) is counted once across the processes.
pub fn pss_bytes(group: &PidGroup) -> anyhow::Result<u64> {
    group
        .0
        .iter()
        .map(|&pid| {
            let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
                .with_context(|| format!("reading /proc/{pid}/smaps_rollup"))?;
            parse_kb_line(&text, "Pss:").context("no Pss line")
        })
        .sum()
}

/// Waits until the group's RSS stops growing: three reads 500 ms apart none above
/// the first by more than `slack` bytes, at most `limit`. Returns the last reading
/// and whether it settled.
pub async fn settled_rss(
    group: &PidGroup,
    slack: u64,
    limit: Duration,
) -> anyhow::Result<(u64, bool)> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut base = group.rss()?;
    let mut stable = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = group.rss()?;
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
    fn pid_groups() {
        let g: PidGroup = "12+13+ 14".parse().unwrap();
        assert_eq!(g, PidGroup(vec![12, 13, 14]));
        assert_eq!(g.to_string(), "12+13+14");
        assert_eq!(g.count(), 3);
        assert_eq!("7".parse::<PidGroup>().unwrap(), PidGroup(vec![7]));
        assert!("".parse::<PidGroup>().is_err());
        assert!("1++2".parse::<PidGroup>().is_err());
        assert!("x".parse::<PidGroup>().is_err());
        let me = PidGroup(vec![std::process::id(), std::process::id()]);
        assert!(me.rss().unwrap() > 0);
        assert!(pss_bytes(&me).unwrap() > 0);
    }

    #[test]
    fn kb_lines() {
        let rollup = "55d0-7ff [rollup]\nRss:     2048 kB\nPss:     1024 kB\nPss_Anon: 5 kB\n";
        assert_eq!(parse_kb_line(rollup, "Pss:"), Some(1024 * 1024));
        assert_eq!(parse_kb_line(rollup, "Swap:"), None);
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
