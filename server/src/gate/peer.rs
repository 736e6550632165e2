//! Who is on the other end of a connection, as the listener found it: the
//! facts a listener hands on with every request. What it leaves to others:
//! finding them out (gateway.rs, native.rs, tls.rs).

use std::net::SocketAddr;

use super::ClientCertPinned;

/// Who is on the other end.
#[derive(Debug, Clone)]
pub(crate) enum Peer {
    /// A TCP peer on the TLS listener.
    Tcp(SocketAddr),
    /// A native client on the Unix socket (the kernel's SO_PEERCRED).
    Unix {
        /// Peer uid.
        uid: u32,
        /// Peer pid, when known.
        pid: Option<i32>,
    },
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(a) => write!(f, "{a}"),
            Peer::Unix { uid, pid: Some(p) } => write!(f, "uid {uid} pid {p}"),
            Peer::Unix { uid, pid: None } => write!(f, "uid {uid}"),
        }
    }
}

/// One connection's facts, inserted into every request's extensions.
#[derive(Debug, Clone)]
pub(crate) struct Conn {
    /// Who.
    pub peer: Peer,
    /// Whether its TLS handshake verified the pinned device client
    /// certificate (only `tls.rs` can say so).
    pub client_cert: Option<ClientCertPinned>,
}
