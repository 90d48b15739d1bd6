//! A real `nginx` running the shipped `deploy/nginx/nginx.conf` in front of test nodes:
//! the file is rendered into a temporary folder that is also nginx's prefix (pid, logs
//! and temporary files there, a loopback port) and run in the foreground, stopped on
//! drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::Balance;

/// A running nginx, stopped on drop (with its temporary folder).
pub struct Nginx {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx in front of exactly three `backends`, spreading connections as
    /// `balance` says.
    pub fn start(backends: &[SocketAddr], balance: Balance) -> Nginx {
        Nginx::start_with(backends, balance, &[])
    }

    /// Like [`Nginx::start`], with more literal replacements in the shipped file (e.g.
    /// shorter timeouts); each `from` must be in it.
    pub fn start_with(
        backends: &[SocketAddr],
        balance: Balance,
        replacements: &[(&str, &str)],
    ) -> Nginx {
        let setup = crate::Setup::new("nginx", backends);
        let dir = setup.dir.path();
        let root = dir.display().to_string();
        // As root, workers would switch to www-data and could not use the temporary
        // folder; as anyone else nginx cannot switch users at all.
        let user = if crate::is_root() { "user root;\n" } else { "" };
        let pid = format!("pid {root}/nginx.pid;");
        let error_log = format!("error_log {root}/error.log ");
        let access_log = format!("access_log {root}/access.log;");
        // Debian's build puts temporary files under /var/lib/nginx: keep them here.
        let temp_paths = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
            .map(|kind| format!("    {kind}_temp_path {root}/{kind}_temp;\n"))
            .concat();
        let http = format!("http {{\n{temp_paths}");
        let listen = format!("listen 127.0.0.1:{};", setup.port);
        let proxy_pass = format!("proxy_pass http://{};", balance.group());
        let own = [
            ("user www-data;\n", user),
            ("pid /run/nginx-starling.pid;", &pid),
            ("error_log /var/log/nginx/starling-error.log ", &error_log),
            (
                "access_log /var/log/nginx/starling-access.log;",
                &access_log,
            ),
            ("http {\n", &http),
            ("listen 80;", &listen),
            ("proxy_pass http://starling;", &proxy_pass),
        ];
        let config = setup.write_config("nginx/nginx.conf", "nginx.conf", &own, replacements);
        let binary = &setup.binary;
        let log = dir.join("error.log");
        // `-e`: the log of the start itself, before the configuration is read (the
        // compiled-in default is under /var/log).
        let args = |cmd: &mut Command| {
            cmd.arg("-p")
                .arg(format!("{root}/"))
                .arg("-e")
                .arg(&log)
                .arg("-c")
                .arg(&config);
        };

        let mut check = Command::new(binary);
        args(&mut check);
        check.arg("-t");
        crate::check_config(check, &config, "nginx -t");

        let mut cmd = Command::new(binary);
        args(&mut cmd);
        let mut child = cmd
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let addr = SocketAddr::from(([127, 0, 0, 1], setup.port));
        crate::wait_listening_logged(addr, &mut child, "nginx", Some(&log));
        Nginx {
            child,
            addr,
            log,
            _dir: setup.dir,
        }
    }
}

impl crate::Balancer for Nginx {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn log(&self) -> String {
        crate::log_text(&self.log)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // The master stops its workers on TERM; a killed master would leave them running.
        crate::stop(&mut self.child, "TERM");
    }
}
