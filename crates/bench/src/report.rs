//! Where the figures go: human-readable lines on stdout (or on stderr when `--json`
//! keeps stdout for the one JSON document), and a live progress line on stderr.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::stats::Percentiles;

/// Human-readable lines go to stderr (set by `--json`).
static HUMAN_TO_STDERR: AtomicBool = AtomicBool::new(false);

/// Sends the human-readable lines to stderr from now on (`--json`).
pub fn human_to_stderr() {
    HUMAN_TO_STDERR.store(true, Ordering::Relaxed);
}

/// Prints one human-readable line (stdout, or stderr under `--json`).
pub fn line(args: std::fmt::Arguments<'_>) {
    if HUMAN_TO_STDERR.load(Ordering::Relaxed) {
        eprintln!("{args}");
    } else {
        println!("{args}");
    }
}

/// `println!` for the human-readable figures (see [`line`]).
macro_rules! say {
    ($($t:tt)*) => { $crate::report::line(format_args!($($t)*)) };
}
pub(crate) use say;

/// Percentiles as a JSON object (µs).
pub fn percentiles_json(p: &Percentiles) -> Value {
    json!({"count": p.count, "p50": p.p50, "p90": p.p90, "p99": p.p99, "p999": p.p999, "max": p.max})
}

/// A progress line on stderr, redrawn in place on a terminal (every 0.5 s) and
/// printed as a new line every 2 s otherwise (logs). Stops when dropped.
pub struct Progress {
    task: tokio::task::JoinHandle<()>,
    tty: bool,
}

impl Progress {
    /// Starts printing `status(seconds since start)`.
    pub fn start(mut status: impl FnMut(f64) -> String + Send + 'static) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let every = if tty {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(2)
        };
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                let text = status(started.elapsed().as_secs_f64());
                let mut err = std::io::stderr().lock();
                let _ = if tty {
                    write!(err, "\r\x1b[2K{text}")
                } else {
                    writeln!(err, "  {text}")
                };
                let _ = err.flush();
            }
        });
        Progress { task, tty }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
        if self.tty {
            eprintln!();
        }
    }
}

/// Events per second over the last interval, from a running total.
#[derive(Debug)]
pub struct Rate {
    last: (Instant, u64),
}

impl Default for Rate {
    fn default() -> Self {
        Rate {
            last: (Instant::now(), 0),
        }
    }
}

impl Rate {
    /// The rate since the previous call (since creation for the first).
    pub fn update(&mut self, total: u64) -> f64 {
        let now = Instant::now();
        let (at, before) = self.last;
        self.last = (now, total);
        crate::stats::per_second(total.saturating_sub(before), now.duration_since(at))
    }
}
