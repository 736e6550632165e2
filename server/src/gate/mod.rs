//! The gate: every decision about a WebSocket upgrade, and no I/O. Pure:
//! no tokio, axum, hyper, rustls or tungstenite (a tidy test in
//! `xtask/src/tidy.rs` refuses the import), no socket, no clock of its own.
//!
//! In: parsed request facts (`http` header maps and URIs, which are plain
//! data), the kernel's answers (peer uid), evidence. Out: a decision — a
//! [`Refusal`] (with [`Malformed`] for the 400s), or an [`Admission`] that
//! becomes a [`Session`] only against a [`BackendConnected`].
//!
//! Evidence types are built where the evidence is, never here:
//! [`ClientCertPinned`] by `tls.rs` from a finished handshake,
//! [`BackendConnected`] by `backend.rs` after a connect; each has a
//! constructor visible only inside its producer's module (see
//! `backend/proof.rs` for the visibility rule that makes this a compile-time
//! fact). The order in which checks and effects happen is `session.rs`'s.
//!
//! What it leaves to others: reading sockets and kernel tables (listeners,
//! `peer_uid.rs`), connecting (`backend.rs`), the wire response and the
//! audit log (`session.rs`), moving frames (`proxy.rs`).

mod admission;
mod claims;
mod peer;
mod refusal;
mod request;
mod throttle;

pub(crate) use crate::backend::proof::BackendConnected;
pub(crate) use crate::tls::proof::ClientCertPinned;
pub(crate) use admission::{Admission, Session};
pub(crate) use claims::Claims;
pub(crate) use peer::{Conn, Peer};
pub(crate) use refusal::{Malformed, Refusal};
pub(crate) use request::{
    Policy, check_native_request, check_request, peer_uid_verdict, uid_allowed,
};
pub(crate) use throttle::LogWindow;
