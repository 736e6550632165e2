//! The proof that the peer presented the device client certificate and
//! rustls verified it by exact SPKI pin during this connection's handshake.
//! [`ClientCertPinned::new`] is `pub(in crate::tls)`: only `tls.rs`, which
//! reads it off the finished handshake (`client_cert_pinned`), can build
//! one; a config flag cannot.
//!
//! It lives under `tls` for the reason `backend/proof.rs` gives: `pub(in
//! path)` names ancestors only. Pure (no import; a tidy test keeps it so);
//! the gate re-exports the type. What it leaves to others: the verifier
//! (`screengate_identity::verify::PinnedClientCert`), what a session does
//! with it (`gate::Admission`).

/// Evidence, per connection, of a verified pinned client certificate.
/// `Clone` so that it can ride in the request extensions of each request on
/// its (keep-alive) connection; it cannot be made from nothing.
#[derive(Debug, Clone)]
pub(crate) struct ClientCertPinned {
    _seal: (),
}

impl ClientCertPinned {
    /// Only `crate::tls` resolves this path (`pub(in crate::tls)`).
    pub(in crate::tls) fn new() -> ClientCertPinned {
        ClientCertPinned { _seal: () }
    }
}

#[cfg(test)]
impl ClientCertPinned {
    /// For the gate's unit tests (no handshake); absent from every real build.
    pub(crate) fn for_test() -> ClientCertPinned {
        ClientCertPinned { _seal: () }
    }
}
