//! A real `redis-server` on a free loopback port with its own data directory, for tests
//! that need Redis and for fault tests that kill and restart it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::{free_port, wait_listening};

/// The binary the harness runs.
pub const REDIS_SERVER: &str = "/usr/bin/redis-server";
/// The command-line client, used to form clusters.
pub const REDIS_CLI: &str = "/usr/bin/redis-cli";

/// A `redis-server` process owned by a test; killed (SIGKILL) on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    persistence: bool,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server without persistence (no RDB snapshots, no AOF): a restart loses
    /// everything.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Starts a server; with `persistence` it writes an append-only file synced on every
    /// write (`appendfsync always`), so a SIGKILL loses nothing it acknowledged.
    pub fn start_with(persistence: bool) -> Self {
        Self::start_args(persistence, &[])
    }

    /// Starts a server with extra command-line arguments (kept for restarts).
    pub fn start_args(persistence: bool, extra: &[&str]) -> Self {
        // A port taken between free_port() and the bind shows as a failed start: retry.
        let mut last = String::new();
        for _ in 0..5 {
            let mut server = Self {
                child: None,
                port: free_port(),
                dir: tempfile::tempdir().expect("temporary directory for redis-server"),
                persistence,
                extra: extra.iter().map(|a| (*a).to_owned()).collect(),
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last = e,
            }
        }
        panic!("{last}")
    }

    /// Spawns the process on the server's port and directory and waits until it listens.
    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(REDIS_SERVER);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--save")
            .arg("")
            .arg("--daemonize")
            .arg("no")
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"))
            .arg("--appendonly")
            .arg(if self.persistence { "yes" } else { "no" });
        if self.persistence {
            cmd.arg("--appendfsync").arg("always");
        }
        cmd.args(&self.extra);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {REDIS_SERVER}: {e}"))?;
        let addr = self.addr();
        let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_listening(addr, &mut child, "redis-server")
        }));
        match waited {
            Ok(()) => {
                self.child = Some(child);
                Ok(())
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!(
                    "redis-server did not start on {addr}; log: {}",
                    std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
                ))
            }
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its socket address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Whether the process runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the process with SIGKILL (a crash: no shutdown save, no goodbye to clients)
    /// and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process gracefully (SIGTERM) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }

    /// Starts the process again on the same port and data directory (killing it first
    /// if it still runs).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn().unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of `redis-server` processes (primaries only), each on a free port.
pub struct RedisCluster {
    /// The nodes, in creation order.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `n` (at least 3) cluster-enabled servers, joins them with
    /// `redis-cli --cluster create` (slots spread evenly, no replicas) and waits until
    /// every node reports `cluster_state:ok`.
    pub fn start(n: usize) -> Self {
        let nodes: Vec<RedisServer> = (0..n)
            .map(|_| {
                RedisServer::start_args(
                    false,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "2000",
                    ],
                )
            })
            .collect();
        let mut create = Command::new(REDIS_CLI);
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port()));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Self { nodes };
        cluster.wait_ok();
        cluster
    }

    /// Waits until every running node reports `cluster_state:ok`.
    pub fn wait_ok(&self) {
        let start = std::time::Instant::now();
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            loop {
                let out = Command::new(REDIS_CLI)
                    .args(["-p", &node.port().to_string(), "cluster", "info"])
                    .output()
                    .expect("run redis-cli cluster info");
                if String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    start.elapsed() < crate::START_WAIT,
                    "the cluster did not become ok in time"
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }

    /// `redis://` URLs of every node (seeds for a cluster client).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}
