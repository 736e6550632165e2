//! The proof that the backend connected and authenticated, and the only
//! way to build one: [`BackendConnected::new`] is `pub(in crate::backend)`,
//! so outside `backend.rs` (and its children) it does not resolve.
//!
//! Why it lives here and not in `gate/`: Rust's `pub(in path)` may only
//! name an *ancestor* of the item's module, so a constructor that only the
//! backend may call has to sit inside the backend's module tree. The file
//! is pure (no import at all, a tidy test keeps it so) and generic over
//! the stream, so the gate can name the type (`crate::gate` re-exports it)
//! without depending on anything that does I/O. What it leaves to others:
//! connecting (`backend.rs`), spending the token against it (`gate`).

/// A backend connection that got through `Backend::connect`: transport,
/// `backend_uid`, TLS and the WebSocket upgrade all passed. Private field,
/// no `Clone`, no `Default`: holding one is the evidence.
#[derive(Debug)]
pub(crate) struct BackendConnected<S> {
    stream: S,
}

impl<S> BackendConnected<S> {
    /// Only `crate::backend` resolves this path (`pub(in crate::backend)`).
    pub(in crate::backend) fn new(stream: S) -> BackendConnected<S> {
        BackendConnected { stream }
    }

    /// The connection; the evidence is gone with it (only the gate's
    /// `Admission::consume` should need this).
    pub(crate) fn into_stream(self) -> S {
        self.stream
    }
}

#[cfg(test)]
impl<S> BackendConnected<S> {
    /// For the gate's unit tests (no socket); absent from every real build.
    pub(crate) fn for_test(stream: S) -> BackendConnected<S> {
        BackendConnected { stream }
    }
}
