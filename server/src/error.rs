//! Why the server refused to start: one error type for `Server::bind` and
//! what it builds (keys, sockets, backend TLS). Every variant names the file
//! or address. What it leaves to others: exit codes (`main.rs`).

use std::path::PathBuf;

use screengate_identity::IdentityError;
use screengate_token::AuthorityError;

/// Why the server refused to start. Each names the file or address.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The device identity could not be created or loaded.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Files are owned or permitted wrongly (every problem, one per line).
    #[error("refusing to start: unsafe file permissions:\n{}", .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Permissions(Vec<IdentityError>),
    /// A listener could not be bound.
    #[error("{what} {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Its address or path.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The gateway socket passed by the service manager is not one the
    /// server may serve on (or the variables are malformed).
    #[error("gateway socket from systemd (LISTEN_FDS, fd 3) refused: {0}; {fix}", fix = crate::listen_fds::FIX)]
    Inherited(String),
    /// The control socket path is unsafe to create or replace.
    #[error("{path}: {what}")]
    SocketPath {
        /// The socket path or its directory.
        path: PathBuf,
        /// What is wrong and how to fix it.
        what: String,
    },
    /// The TLS configuration was refused by rustls.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The token authority could not be built.
    #[error("token authority: {0}")]
    Token(#[from] AuthorityError),
    /// `[backend_tls]` could not be loaded (names the file, never its content).
    #[error(transparent)]
    BackendTls(#[from] crate::backend_tls::BackendTlsError),
}
