//! A real PostgreSQL server (`initdb` + `postgres`) on a free loopback port with its own
//! data directory, for tests that need PostgreSQL and for fault tests that kill and
//! restart it.
//!
//! `initdb` and `postgres` refuse to run as root. When the tests run as root (CI, the
//! development machines) both run as the `postgres` system user through `setpriv`, which
//! `exec`s (no intermediate process, unlike `runuser`/`su`), so the child's pid is the
//! postmaster's; the temporary directory is handed to that user with `chown`. As any other
//! user they run as that user.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, is_root, log_text};

/// Where Debian's `postgresql-15` package installs the server programs.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Upper bound for the server to accept connections (crash recovery included): a
/// failure, not a synchronisation.
pub const READY_WAIT: Duration = Duration::from_secs(30);

/// The settings every test instance gets unless [`PostgresServer::start_args`] overrides
/// them: `fsync=off` (a SIGKILL of the server loses nothing written to the kernel, which
/// is what the fault tests do; the machine does not crash) keeps the shared disk quiet.
pub const TEST_SETTINGS: &[&str] = &["fsync=off", "full_page_writes=off"];

/// A PostgreSQL server owned by a test; its whole process group is killed (SIGKILL) on
/// drop.
pub struct PostgresServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    settings: Vec<String>,
}

impl PostgresServer {
    /// Starts a fresh cluster with [`TEST_SETTINGS`].
    pub fn start() -> Self {
        Self::start_args(TEST_SETTINGS)
    }

    /// Starts a fresh cluster with `settings` (`name=value`, passed as `-c`; kept for
    /// restarts). An empty slice runs PostgreSQL's defaults (`fsync=on`).
    pub fn start_args(settings: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("starling-postgres-")
            .tempdir()
            .expect("temporary directory for postgres");
        if is_root() {
            let status = Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path())
                .status()
                .expect("run chown");
            assert!(
                status.success(),
                "chown postgres {}: is there a `postgres` user?",
                dir.path().display()
            );
        }
        let mut server = Self {
            child: None,
            port: 0,
            dir,
            settings: settings.iter().map(|s| (*s).to_owned()).collect(),
        };
        server.initdb();
        // A port taken between free_port() and the bind shows as a failed start: retry.
        let mut last = String::new();
        for _ in 0..5 {
            server.port = free_port();
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last = e,
            }
        }
        panic!("{last}")
    }

    /// A command for a PostgreSQL program, run as `postgres` when we are root.
    fn command(&self, program: &str) -> Command {
        let path = Path::new(PG_BIN).join(program);
        assert!(
            path.is_file(),
            "{} is missing: the archive tests need PostgreSQL 15 \
             (`apt-get install -y postgresql-15`)",
            path.display()
        );
        let mut cmd = if is_root() {
            let mut cmd = Command::new("setpriv");
            cmd.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(path);
            cmd
        } else {
            Command::new(path)
        };
        // The postgres user may not enter the caller's working directory.
        cmd.current_dir(self.dir.path());
        cmd
    }

    fn initdb(&self) {
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Spawns the postmaster on the server's port and data directory, in a process group
    /// of its own, and waits until it accepts connections.
    fn spawn(&mut self) -> Result<(), String> {
        use std::os::unix::process::CommandExt;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("postgres log file: {e}"))?;
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"]);
        for setting in &self.settings {
            cmd.arg("-c").arg(setting);
        }
        let mut child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run postgres: {e}"))?;
        match self.wait_ready(&mut child) {
            Ok(()) => {
                self.child = Some(child);
                Ok(())
            }
            Err(e) => {
                kill_group(&mut child);
                Err(format!("{e}\n{}", log_text(&self.log_path())))
            }
        }
    }

    /// Polls `pg_isready` (which fails while the server starts or recovers) until it
    /// succeeds, the child exits, or [`READY_WAIT`] passes.
    fn wait_ready(&self, child: &mut Child) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let ready = Command::new(Path::new(PG_BIN).join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-U", "postgres", "-d", "postgres"])
                .stdin(Stdio::null())
                .status()
                .map_err(|e| format!("cannot run pg_isready: {e}"))?;
            if ready.success() {
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "postgres exited before accepting connections on port {}: {status}",
                    self.port
                ));
            }
            if start.elapsed() > READY_WAIT {
                return Err(format!(
                    "postgres did not accept connections on port {} in time",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The port it listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its socket address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A libpq-style connection string for `dbname` (user `postgres`, trust
    /// authentication, loopback TCP).
    pub fn conninfo(&self, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={dbname}",
            self.port
        )
    }

    /// Runs `sql` with `psql` on `dbname` and returns its unaligned output (panics with
    /// psql's error on failure). For setup: `CREATE DATABASE` and the like.
    pub fn psql(&self, dbname: &str, sql: &str) -> String {
        let out = Command::new(Path::new(PG_BIN).join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", dbname, "-c", sql])
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql `{sql}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates a database (a fresh one per test keeps tests on one server apart).
    pub fn create_database(&self, name: &str) {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
    }

    /// Its data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Its log file (stdout and stderr of every run).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// What it logged so far, for failure messages.
    pub fn log(&self) -> String {
        log_text(&self.log_path())
    }

    /// Whether the process runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the postmaster and every backend at once with SIGKILL (a crash: no
    /// checkpoint, connections cut without a goodbye) and reaps the postmaster.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
        }
    }

    /// Stops the server with a fast shutdown (SIGINT: clients disconnected, checkpoint).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::stop(&mut child, "INT");
        }
    }

    /// Starts the server again on the same port and data directory (killing it first if
    /// it still runs); returns once it accepts connections (after crash recovery).
    pub fn restart(&mut self) {
        self.kill();
        // A backend of the killed run that has not quite exited yet still holds the old
        // shared memory, which the new postmaster refuses: try again, boundedly.
        let mut last = String::new();
        for _ in 0..5 {
            match self.spawn() {
                Ok(()) => return,
                Err(e) => last = e,
            }
        }
        panic!("{last}")
    }
}

/// SIGKILL to the child's process group (the postmaster and its backends), then reap.
fn kill_group(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.kill();
    }
}
