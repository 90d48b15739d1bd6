//! Helpers for the unit tests of this crate.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

/// Both ends of one loopback TCP connection, and the address the server end listened on.
pub(crate) struct TcpPair {
    pub client: TcpStream,
    pub server: TcpStream,
    /// The listening address (a node's own address, for `AppState::new`).
    pub listen: SocketAddr,
    /// The client's address as the server end sees it.
    pub peer: SocketAddr,
}

/// A fresh loopback connection on a free port.
pub(crate) async fn tcp_pair() -> TcpPair {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let listen = listener.local_addr().expect("addr");
    let client = TcpStream::connect(listen).await.expect("connect");
    let (server, peer) = listener.accept().await.expect("accept");
    TcpPair {
        client,
        server,
        listen,
        peer,
    }
}
