//! A real `haproxy` running the shipped `deploy/haproxy/haproxy.cfg` in front of test
//! nodes: the file is rendered into a temporary folder (loopback ports, an admin socket
//! there, no chroot or user switch) and run in the foreground, killed on drop.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Balance, Balancer, START_WAIT, free_port};

/// The server names of the shipped file, in the order of the node addresses.
pub const SERVERS: [&str; 3] = ["rt-1", "rt-2", "rt-3"];
/// The backend that runs the health checks (the others track it).
pub const CHECKED_BACKEND: &str = "starling";

/// A running haproxy, killed on drop (with its temporary folder).
pub struct Haproxy {
    child: Child,
    addr: SocketAddr,
    socket: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// Starts haproxy in front of exactly three `backends` (`rt-1`..`rt-3` in that
    /// order), spreading connections as `balance` says.
    pub fn start(backends: &[SocketAddr], balance: Balance) -> Haproxy {
        Haproxy::start_with(backends, balance, &[])
    }

    /// Like [`Haproxy::start`], with more literal replacements in the shipped file
    /// (e.g. shorter timeouts); each `from` must be in it.
    pub fn start_with(
        backends: &[SocketAddr],
        balance: Balance,
        replacements: &[(&str, &str)],
    ) -> Haproxy {
        let setup = crate::Setup::new("haproxy", backends);
        let dir = setup.dir.path();
        let stats_port = free_port();
        let socket = dir.join("admin.sock");
        let bind = format!("bind 127.0.0.1:{}\n", setup.port);
        let stats_bind = format!("bind 127.0.0.1:{stats_port}\n");
        let stats_socket = format!("stats socket {}", socket.display());
        let default_backend = format!("default_backend {}\n", balance.group());
        let own = [
            ("bind :80\n", bind.as_str()),
            ("bind 127.0.0.1:8404\n", &stats_bind),
            ("stats socket /run/haproxy/admin.sock", &stats_socket),
            // Logs (server state changes) go to the log file below.
            ("log /dev/log local0", "log stderr format short local0"),
            // Tests run as whoever runs cargo, outside any chroot.
            ("    chroot /var/lib/haproxy\n", ""),
            ("    user haproxy\n", ""),
            ("    group haproxy\n", ""),
            ("default_backend starling\n", &default_backend),
            // The shipped limit needs 200,000 descriptors; 1,000 connections need about
            // 2,000, within the hard limit of most machines (also for non-root users).
            ("maxconn 100000", "maxconn 1000"),
        ];
        let config = setup.write_config("haproxy/haproxy.cfg", "haproxy.cfg", &own, replacements);
        let binary = &setup.binary;

        let mut check = Command::new(binary);
        check.arg("-c").arg("-f").arg(&config);
        crate::check_config(check, &config, "haproxy -c");

        let log = dir.join("haproxy.log");
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut child = Command::new(binary)
            .arg("-f")
            .arg(&config)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let addr = SocketAddr::from(([127, 0, 0, 1], setup.port));
        crate::wait_listening_logged(addr, &mut child, "haproxy", Some(&log));
        let haproxy = Haproxy {
            child,
            addr,
            socket,
            log,
            _dir: setup.dir,
        };
        haproxy.wait_socket();
        haproxy
    }

    /// Sends one command to the admin socket and returns the answer.
    pub fn command(&self, command: &str) -> String {
        let mut stream = UnixStream::connect(&self.socket)
            .unwrap_or_else(|e| panic!("haproxy admin socket {}: {e}", self.socket.display()));
        stream
            .set_read_timeout(Some(START_WAIT))
            .expect("socket timeout");
        stream
            .write_all(format!("{command}\n").as_bytes())
            .expect("write to the admin socket");
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .expect("read the admin socket");
        answer
    }

    /// The status (`UP`, `DOWN`, `DOWN 1/2`, `DRAIN`, `MAINT`, ...) of `server` in the
    /// checked backend, from `show stat`.
    pub fn server_status(&self, server: &str) -> String {
        self.server_status_in(CHECKED_BACKEND, server)
    }

    /// The status of `server` in `backend` (e.g. a sharding backend that tracks the
    /// checked one), from `show stat`.
    pub fn server_status_in(&self, backend: &str, server: &str) -> String {
        let stat = self.command("show stat");
        let mut lines = stat.lines();
        let header: Vec<&str> = lines
            .next()
            .and_then(|h| h.strip_prefix("# "))
            .unwrap_or_else(|| panic!("no header in `show stat`: {stat}"))
            .split(',')
            .collect();
        let column = |name: &str| {
            header
                .iter()
                .position(|c| *c == name)
                .unwrap_or_else(|| panic!("no column {name} in `show stat`: {stat}"))
        };
        let (px, sv, status) = (column("pxname"), column("svname"), column("status"));
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.get(px) == Some(&backend) && f.get(sv) == Some(&server))
            .and_then(|f| f.get(status).map(|s| (*s).to_string()))
            .unwrap_or_else(|| panic!("no server {backend}/{server} in `show stat`: {stat}"))
    }

    /// Waits until `server`'s status is exactly `status`, or panics after `limit` with
    /// the last status and haproxy's log.
    pub fn wait_server_status(&self, server: &str, status: &str, limit: Duration) {
        let start = Instant::now();
        loop {
            let now = self.server_status(server);
            if now == status {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "haproxy: {server} is {now}, not {status}, after {limit:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_socket(&self) {
        let start = Instant::now();
        while !Path::new(&self.socket).exists() {
            assert!(
                start.elapsed() < START_WAIT,
                "haproxy created no admin socket\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl crate::Balancer for Haproxy {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn log(&self) -> String {
        crate::log_text(&self.log)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
