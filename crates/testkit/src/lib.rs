//! Test support shared by the workspace's integration tests: real helper processes
//! (`redis-server`, `haproxy`, `nginx`) started on free loopback ports, killed on drop,
//! so that fault tests can stop and restart them.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Child;
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
    let start = Instant::now();
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening on {addr}: {status}");
        }
        assert!(
            start.elapsed() < START_WAIT,
            "{what} did not listen on {addr} in time"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub mod redis;
