//! Test support shared by the workspace's integration tests: real helper processes
//! (`redis-server`, `postgres`, `haproxy`, `nginx`) started on free loopback ports, killed on drop,
//! so that fault tests can stop and restart them.

pub mod haproxy;
pub mod nginx;
pub mod postgres;
pub mod proxy;
pub mod redis;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Upper bound for a helper process to start listening: a failure, not a synchronisation.
pub const START_WAIT: Duration = Duration::from_secs(10);

/// A free TCP port on 127.0.0.1 (the kernel picks it; another process could take it
/// before the caller binds, which the start helpers detect and report).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// Waits until `addr` accepts TCP connections, or panics after [`START_WAIT`]; while
/// waiting, fails early if `child` exited.
pub fn wait_listening(addr: SocketAddr, child: &mut Child, what: &str) {
    wait_listening_logged(addr, child, what, None);
}

/// [`wait_listening`] for a helper that writes its output to `log`: a failure message
/// quotes the log.
pub fn wait_listening_logged(addr: SocketAddr, child: &mut Child, what: &str, log: Option<&Path>) {
    let start = Instant::now();
    let quote = || log.map(log_text).unwrap_or_default();
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited before listening on {addr}: {status}\n{}",
                quote()
            );
        }
        assert!(
            start.elapsed() < START_WAIT,
            "{what} did not listen on {addr} in time\n{}",
            quote()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How a balancer spreads connections over the nodes: the variants that the shipped
/// configurations in `deploy/` offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balance {
    /// Every node serves any client, in turn (the default of both configurations).
    RoundRobin,
    /// Consistent hashing on the `user` query parameter.
    ByUser,
    /// Consistent hashing on the `X-Region` request header.
    ByRegion,
}

/// What tests need of either balancer ([`haproxy::Haproxy`], [`nginx::Nginx`]).
pub trait Balancer {
    /// Where clients connect.
    fn addr(&self) -> SocketAddr;
    /// What the balancer logged so far, for failure messages.
    fn log(&self) -> String;
}

impl Balance {
    /// The backend (haproxy) or upstream (nginx) of the shipped files for this variant.
    pub fn group(self) -> &'static str {
        match self {
            Balance::RoundRobin => "starling",
            Balance::ByUser => "starling_by_user",
            Balance::ByRegion => "starling_by_region",
        }
    }
}

/// The node addresses of the shipped files, replaced by the test nodes' addresses.
const SHIPPED_NODES: [&str; 3] = ["10.0.0.11:8000", "10.0.0.12:8000", "10.0.0.13:8000"];

/// What starting a balancer on a shipped file needs before its own replacements.
struct Setup {
    /// The program.
    binary: PathBuf,
    /// Its temporary folder (configuration, logs, sockets).
    dir: tempfile::TempDir,
    /// A free port for its public listener.
    port: u16,
    /// The shipped node addresses with their replacements.
    nodes: Vec<(&'static str, String)>,
}

impl Setup {
    /// Finds `program` and makes its folder; `backends` replace the shipped three nodes.
    fn new(program: &str, backends: &[SocketAddr]) -> Setup {
        assert_eq!(
            backends.len(),
            3,
            "the shipped {program} file has three nodes"
        );
        let binary = find_program(program);
        let dir = tempfile::Builder::new()
            .prefix(&format!("starling-{program}-"))
            .tempdir()
            .expect("temporary folder");
        let nodes = SHIPPED_NODES
            .into_iter()
            .zip(backends.iter().map(ToString::to_string))
            .collect();
        Setup {
            binary,
            dir,
            port: free_port(),
            nodes,
        }
    }

    /// Renders `shipped` (a `deploy/` path) with `replacements`, then the node
    /// addresses, then `extra`, into `file` in the folder; returns its path.
    fn write_config(
        &self,
        shipped: &str,
        file: &str,
        replacements: &[(&str, &str)],
        extra: &[(&str, &str)],
    ) -> PathBuf {
        let mut all = replacements.to_vec();
        all.extend(self.nodes.iter().map(|(from, to)| (*from, to.as_str())));
        all.extend_from_slice(extra);
        let text = render(deploy_file(shipped), &all, shipped);
        let path = self.dir.path().join(file);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }
}

/// A file of the repository's `deploy/` folder, read whole.
pub fn deploy_file(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Replaces every occurrence of each `(from, to)` pair in `text`, in order. A `from`
/// that is not there panics naming it: the shipped file changed and the test kit must
/// follow, rather than silently testing something else.
pub fn render(mut text: String, replacements: &[(&str, &str)], what: &str) -> String {
    for (from, to) in replacements {
        assert!(
            text.contains(from),
            "{what}: `{from}` is not in the shipped file any more; update the test kit"
        );
        text = text.replace(from, to);
    }
    text
}

/// The path of a helper program (`haproxy`, `nginx`): on `PATH` or in the sbin folders
/// Debian installs it to. A missing program panics with how to install it.
pub fn find_program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed: the balancer tests need it \
                 (`apt-get install -y {name}`; scripts/test installs it when run as root)"
            )
        })
}

/// Runs a configuration check (`haproxy -c`, `nginx -t`) and panics with its output
/// and the rendered file when it fails.
pub fn check_config(mut cmd: Command, config: &Path, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {what}: {e}"));
    if !out.status.success() {
        let text = std::fs::read_to_string(config).unwrap_or_default();
        panic!(
            "{what} rejects the rendered configuration {}:\n{}{}\n--- configuration ---\n{text}",
            config.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
    }
}

/// Whether this process runs as root (the owner of `/proc/self`).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Asks `child` to stop with `signal` (e.g. `TERM`), waits up to [`START_WAIT`] for it
/// to exit, then kills it.
pub fn stop(child: &mut Child, signal: &str) {
    let _ = Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status();
    let start = Instant::now();
    while start.elapsed() < START_WAIT {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The text of a helper's log file, for failure messages.
pub fn log_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("({}: {e})", path.display()))
}
