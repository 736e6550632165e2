//! The identity crate's one error type. Messages name the file concerned and
//! never carry key material.

use std::path::PathBuf;

/// Why an identity operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// An I/O operation on a named file failed.
    #[error("{path}: {action}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// What we were doing ("read", "create", "rename", ...).
        action: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A key or certificate file exists but is not usable. Never fixed by
    /// silently regenerating: that would change the device's identity.
    #[error(
        "{path}: {what}; refusing to start (regenerating would change the device identity: restore it from backup or remove it and run `screengate init --force`)"
    )]
    Corrupt {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// A file or directory is owned or permitted wrongly.
    #[error("{path}: {what}; fix: {fix}")]
    Permissions {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong.
        what: String,
        /// The command that fixes it.
        fix: String,
    },
    /// Certificate generation failed in rcgen.
    #[error("certificate generation failed: {0}")]
    CertGen(String),
    /// Another process holds the state directory: a server running on it
    /// (for `reset`), or another `init`/`rotate`/`reset` past the wait.
    #[error("{path}: {what}")]
    Busy {
        /// The state directory.
        path: PathBuf,
        /// Who holds it and what to do.
        what: String,
    },
    /// The identity is incomplete in a way we will not repair on our own.
    #[error("{path}: {what}")]
    Incomplete {
        /// The file concerned.
        path: PathBuf,
        /// What is missing.
        what: String,
    },
}

impl IdentityError {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        action: &'static str,
        source: std::io::Error,
    ) -> Self {
        IdentityError::Io {
            path: path.into(),
            action,
            source,
        }
    }
}
