//! CPU time of a process over a run, from `/proc/PID/stat` (`utime` + `stime`), as a
//! percentage of one core: 100 % is one core busy for the whole run.

use std::time::{Duration, Instant};

/// Clock ticks per second of `/proc/PID/stat` times: Linux reports them in
/// `USER_HZ`, which the kernel's ABI fixes at 100 on every architecture.
const TICKS_PER_S: f64 = 100.0;

/// Why a process's CPU time could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// `/proc/PID/stat` could not be read (no such process).
    #[error("reading /proc/{0}/stat: {1}")]
    Read(u32, std::io::Error),
    /// Its text is not as expected.
    #[error("unexpected /proc/{0}/stat")]
    Parse(u32),
}

/// User + system CPU seconds in the text of a `/proc/PID/stat` file.
pub fn parse_stat_cpu_s(stat: &str) -> Option<f64> {
    // The command name (field 2) is in parentheses and may hold spaces: count the
    // fields after its closing one. Field 3 (state) is the first there, so utime
    // (field 14) and stime (field 15) are the 12th and 13th.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_S)
}

/// CPU seconds used by process `pid` so far (all its threads).
pub fn cpu_seconds(pid: u32) -> Result<f64, CpuError> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| CpuError::Read(pid, e))?;
    parse_stat_cpu_s(&stat).ok_or(CpuError::Parse(pid))
}

/// A process's CPU time at the start of a measured interval.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    pid: u32,
    cpu_s: f64,
    at: Instant,
}

impl CpuMark {
    /// Reads the CPU time of `pid` now.
    pub fn now(pid: u32) -> Result<CpuMark, CpuError> {
        Ok(CpuMark {
            pid,
            cpu_s: cpu_seconds(pid)?,
            at: Instant::now(),
        })
    }

    /// CPU used since the mark: `(CPU seconds, percent of one core)`.
    pub fn since(&self) -> Result<(f64, f64), CpuError> {
        let used = cpu_seconds(self.pid)? - self.cpu_s;
        Ok((used, percent_of_core(used, self.at.elapsed())))
    }
}

/// What one process used over a run: CPU seconds and percent of one core, or `None`
/// when its `/proc` entry could not be read (at the start or the end).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcCpu {
    /// The process.
    pub pid: u32,
    /// `(CPU seconds, percent of one core)`.
    pub used: Option<(f64, f64)>,
}

/// The CPU time of the server processes (`--server-pid`) from the start of a run.
#[derive(Debug, Clone)]
pub struct CpuWatch(Vec<(u32, Option<CpuMark>)>);

impl CpuWatch {
    /// Marks the start for each of `pids`.
    pub fn start(pids: &[u32]) -> CpuWatch {
        CpuWatch(
            pids.iter()
                .map(|&pid| (pid, CpuMark::now(pid).ok()))
                .collect(),
        )
    }

    /// What each process used since the start.
    pub fn finish(&self) -> Vec<ProcCpu> {
        self.0
            .iter()
            .map(|(pid, mark)| ProcCpu {
                pid: *pid,
                used: mark.and_then(|m| m.since().ok()),
            })
            .collect()
    }
}

/// The processes' percentages added up (a cluster's servers in all); `None` when there
/// are none or one could not be read.
pub fn total_percent(procs: &[ProcCpu]) -> Option<f64> {
    if procs.is_empty() {
        return None;
    }
    procs.iter().map(|p| p.used.map(|(_, pct)| pct)).sum()
}

/// One human-readable line per process.
pub fn lines(procs: &[ProcCpu]) -> Vec<String> {
    procs
        .iter()
        .map(|p| match p.used {
            Some((secs, pct)) => {
                format!("server {} CPU: {secs:.2} s = {pct:.0} % of one core", p.pid)
            }
            None => format!("server {} CPU: could not read /proc/{}/stat", p.pid, p.pid),
        })
        .collect()
}

/// The processes as a JSON array (`pid`, `cpu_s`, `percent_of_core`).
pub fn procs_json(procs: &[ProcCpu]) -> serde_json::Value {
    procs
        .iter()
        .map(|p| {
            serde_json::json!({
                "pid": p.pid,
                "cpu_s": p.used.map(|(s, _)| s),
                "percent_of_core": p.used.map(|(_, pct)| pct),
            })
        })
        .collect()
}

/// CPU seconds over a wall-clock interval, as a percentage of one core.
pub fn percent_of_core(cpu_s: f64, over: Duration) -> f64 {
    let wall = over.as_secs_f64();
    if wall <= 0.0 {
        0.0
    } else {
        100.0 * cpu_s / wall
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt
        // cmajflt utime stime ...
        let stat = "4242 (star ling) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 130 0 0 20 0 3 0";
        assert_eq!(parse_stat_cpu_s(stat), Some(3.8));
        assert_eq!(parse_stat_cpu_s("4242 (x) S 1 2"), None);
        assert_eq!(parse_stat_cpu_s("no parenthesis"), None);
        assert!(cpu_seconds(std::process::id()).is_ok());
        assert!(matches!(cpu_seconds(u32::MAX), Err(CpuError::Read(..))));
    }

    #[test]
    fn several_processes() {
        let procs = [
            ProcCpu {
                pid: 1,
                used: Some((1.0, 50.0)),
            },
            ProcCpu {
                pid: 2,
                used: Some((0.5, 25.0)),
            },
        ];
        assert_eq!(total_percent(&procs), Some(75.0));
        assert_eq!(total_percent(&[]), None);
        let unread = [procs[0], ProcCpu { pid: 3, used: None }];
        assert_eq!(total_percent(&unread), None);
        assert_eq!(
            lines(&unread),
            vec![
                "server 1 CPU: 1.00 s = 50 % of one core",
                "server 3 CPU: could not read /proc/3/stat"
            ]
        );
        let json = procs_json(&unread);
        assert_eq!(json[0]["percent_of_core"], 50.0);
        assert!(json[1]["cpu_s"].is_null());
        let watch = CpuWatch::start(&[std::process::id(), u32::MAX]);
        let done = watch.finish();
        assert!(done[0].used.is_some());
        assert_eq!(done[1].used, None);
    }

    #[test]
    fn percentages() {
        assert_eq!(percent_of_core(1.5, Duration::from_secs(3)), 50.0);
        assert_eq!(percent_of_core(3.0, Duration::from_secs(2)), 150.0);
        assert_eq!(percent_of_core(1.0, Duration::ZERO), 0.0);
    }
}
