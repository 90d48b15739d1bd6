//! A TCP proxy on a free loopback port that a test can cut: between a node and Redis, it
//! plays the network failing loudly (connections reset) or silently (bytes vanish while
//! the connections stay open, the failure only a liveness probe finds).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::thread;
use std::time::Duration;

use std::sync::Mutex;

const PASS: u8 = 0;
const CUT: u8 = 1;
const BLACKHOLE: u8 = 2;

struct Shared {
    mode: AtomicU8,
    stop: AtomicBool,
    /// Both ends of every proxied connection, to reset them on a cut.
    streams: Mutex<Vec<TcpStream>>,
}

/// A proxy forwarding 127.0.0.1:`port` to a target; stopped on drop.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Starts forwarding a free loopback port to `target`.
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            mode: AtomicU8::new(PASS),
            stop: AtomicBool::new(false),
            streams: Mutex::new(Vec::new()),
        });
        let accept = shared.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                if accept.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if accept.mode.load(Ordering::SeqCst) == CUT {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone())
                    && let Ok(mut streams) = accept.streams.lock()
                {
                    streams.push(c);
                    streams.push(s);
                }
                pump(&accept, &client, &server);
                pump(&accept, &server, &client);
            }
        });
        Proxy { addr, shared }
    }

    /// Where clients connect (use it in place of the target's address).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Resets every proxied connection and refuses new ones (a loud failure).
    pub fn cut(&self) {
        self.shared.mode.store(CUT, Ordering::SeqCst);
        self.reset_all();
    }

    /// Keeps every connection open but forwards nothing either way (a silent failure:
    /// writes succeed, nothing ever arrives). New connections are accepted and go
    /// silent too.
    pub fn blackhole(&self) {
        self.shared.mode.store(BLACKHOLE, Ordering::SeqCst);
    }

    /// Forwards again (connections broken by a cut stay broken; new ones work).
    pub fn restore(&self) {
        self.shared.mode.store(PASS, Ordering::SeqCst);
    }

    fn reset_all(&self) {
        if let Ok(mut streams) = self.shared.streams.lock() {
            for s in streams.drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.reset_all();
        // Wake the accept loop so that it sees `stop`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// Copies `from` to `to` on a thread of its own until either side closes; in blackhole
/// mode the bytes are read and dropped.
fn pump(shared: &Arc<Shared>, from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    let shared = shared.clone();
    thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            match shared.mode.load(Ordering::SeqCst) {
                PASS => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                BLACKHOLE => {}
                _ => break,
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                thread::spawn(move || {
                    let mut stream = stream;
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    fn roundtrip(stream: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(msg)?;
        let mut buf = vec![0u8; msg.len()];
        stream.read_exact(&mut buf)?;
        Ok(buf)
    }

    #[test]
    fn forwards_goes_silent_and_cuts() {
        let proxy = Proxy::start(echo_server());
        let mut c = TcpStream::connect(proxy.addr()).expect("connect");
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        assert_eq!(roundtrip(&mut c, b"hello").expect("echo"), b"hello");
        proxy.blackhole();
        assert!(roundtrip(&mut c, b"lost").is_err(), "nothing comes back");
        proxy.restore();
        proxy.cut();
        let mut buf = [0u8; 8];
        let closed = matches!(c.read(&mut buf), Ok(0) | Err(_));
        assert!(closed, "a cut resets the connection");
        proxy.restore();
        let mut again = TcpStream::connect(proxy.addr()).expect("connect");
        assert_eq!(roundtrip(&mut again, b"back").expect("echo"), b"back");
    }
}
