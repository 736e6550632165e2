//! Why the server refused to start: one error type for `Server::bind` and
//! what it builds (keys, sockets, backend TLS). Every variant names the file
//! or address. Its exit codes are decided here too ([`ExitStatus`]); `main.rs` only
//! returns them.

use std::path::PathBuf;

use screengate_identity::IdentityError;
use screengate_token::AuthorityError;

use crate::exit::{ExitKind, ExitStatus};

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
        /// Unsafe (permission), taken by a live server (unavailable), or
        /// an OS failure.
        kind: ExitKind,
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

impl ExitStatus for ServerError {
    fn exit_kind(&self) -> ExitKind {
        match self {
            Self::Identity(e) => e.exit_kind(),
            Self::Permissions(_) => ExitKind::Permission,
            Self::Bind { source, .. } => ExitKind::of_io(source),
            Self::Inherited(_) | Self::Tls(_) => ExitKind::Config,
            Self::SocketPath { kind, .. } => *kind,
            Self::Token(_) => ExitKind::OsError,
            Self::BackendTls(e) => e.exit_kind(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{self, ErrorKind};

    use super::*;

    fn bind(k: ErrorKind) -> ServerError {
        ServerError::Bind {
            what: "gateway",
            addr: "127.0.0.1:8443".into(),
            source: io::Error::from(k),
        }
    }

    #[test]
    fn exit_codes_by_variant() {
        assert_eq!(bind(ErrorKind::AddrInUse).exit_code(), 69);
        assert_eq!(bind(ErrorKind::AddrNotAvailable).exit_code(), 69);
        assert_eq!(bind(ErrorKind::PermissionDenied).exit_code(), 77);
        assert_eq!(bind(ErrorKind::Other).exit_code(), 71);
        let perm = IdentityError::Permissions {
            path: "/s/device.key".into(),
            what: "mode 0644".into(),
            fix: "chmod 600 /s/device.key".into(),
        };
        assert_eq!(ServerError::Permissions(vec![perm]).exit_code(), 77);
        let busy = IdentityError::Busy {
            path: "/s".into(),
            what: "held".into(),
        };
        assert_eq!(ServerError::Identity(busy).exit_code(), 69);
        assert_eq!(ServerError::Inherited("not TCP".into()).exit_code(), 64);
        for kind in [
            ExitKind::Permission,
            ExitKind::Unavailable,
            ExitKind::OsError,
        ] {
            let e = ServerError::SocketPath {
                path: "/run/s/control.sock".into(),
                what: "x".into(),
                kind,
            };
            assert_eq!(e.exit_kind(), kind);
        }
        assert_eq!(
            ServerError::Tls(rustls::Error::General("x".into())).exit_code(),
            64
        );
        assert_eq!(ServerError::Token(AuthorityError::BadTtl).exit_code(), 71);
    }
}
