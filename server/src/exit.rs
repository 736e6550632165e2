//! Exit codes by error kind: what the process's status says about why it
//! stopped, decided here in the library (one [`ExitStatus`] impl per error
//! enum) so `main.rs` only maps an error to `ExitCode::from(e.exit_code())`.
//! What it leaves to others: the errors themselves and their messages
//! (`error.rs`, `config.rs`, `privilege.rs`, `commands.rs`, the identity and
//! control crates). The table is in docs/deployment.md; the reason in
//! docs/decisions.md.

use std::io::ErrorKind;

use screengate_control::client::ClientError;
use screengate_identity::IdentityError;

/// Why the process refused or failed, as the BSD `sysexits.h` codes say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// 64 (`EX_USAGE`): bad configuration or arguments; fix the config.
    Config,
    /// 69 (`EX_UNAVAILABLE`): something needed is taken or not there: the
    /// address is in use, a server runs on the state dir or socket, no
    /// server answers on the control socket.
    Unavailable,
    /// 71 (`EX_OSERR`): the OS refused in a way the config does not explain
    /// (a bind, an I/O or a system call failed).
    OsError,
    /// 77 (`EX_NOPERM`): unsafe file permissions, a file owned by the
    /// wrong user, root refused.
    Permission,
}

impl ExitKind {
    /// The process exit code.
    #[must_use]
    pub const fn code(self) -> u8 {
        match self {
            Self::Config => 64,
            Self::Unavailable => 69,
            Self::OsError => 71,
            Self::Permission => 77,
        }
    }

    /// An OS error's kind: permission denied is [`ExitKind::Permission`],
    /// an address in use or unavailable is [`ExitKind::Unavailable`], the
    /// rest [`ExitKind::OsError`].
    #[must_use]
    pub fn of_io(e: &std::io::Error) -> Self {
        match e.kind() {
            ErrorKind::PermissionDenied => Self::Permission,
            ErrorKind::AddrInUse | ErrorKind::AddrNotAvailable => Self::Unavailable,
            _ => Self::OsError,
        }
    }

    /// The worst of several: permission over unavailable over OS error
    /// over config (the one an operator must look at first).
    #[must_use]
    pub fn worst(kinds: impl IntoIterator<Item = Self>) -> Option<Self> {
        let rank = |k: &Self| match k {
            Self::Config => 0,
            Self::OsError => 1,
            Self::Unavailable => 2,
            Self::Permission => 3,
        };
        kinds.into_iter().max_by_key(rank)
    }
}

/// An error that knows the exit code it stops the process with.
pub trait ExitStatus {
    /// The kind of failure.
    fn exit_kind(&self) -> ExitKind;
    /// The process exit code ([`ExitKind::code`]).
    fn exit_code(&self) -> u8 {
        self.exit_kind().code()
    }
}

impl ExitStatus for IdentityError {
    fn exit_kind(&self) -> ExitKind {
        match self {
            Self::Io { source, .. } => ExitKind::of_io(source),
            Self::Permissions { .. } => ExitKind::Permission,
            Self::Busy { .. } => ExitKind::Unavailable,
            Self::CertGen(_) => ExitKind::OsError,
            Self::Corrupt { .. } | Self::Incomplete { .. } => ExitKind::Config,
        }
    }
}

impl ExitStatus for ClientError {
    fn exit_kind(&self) -> ExitKind {
        match self {
            Self::Unreachable { source, .. } => match source.kind() {
                ErrorKind::PermissionDenied => ExitKind::Permission,
                _ => ExitKind::Unavailable,
            },
            Self::Untrusted(_) => ExitKind::Permission,
            Self::Encode(_) => ExitKind::Config,
            Self::Timeout | Self::Reply(_) | Self::Refused(_) => ExitKind::Unavailable,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn codes_are_the_sysexits_ones() {
        assert_eq!(ExitKind::Config.code(), 64);
        assert_eq!(ExitKind::Unavailable.code(), 69);
        assert_eq!(ExitKind::OsError.code(), 71);
        assert_eq!(ExitKind::Permission.code(), 77);
    }

    #[test]
    fn io_errors_by_kind() {
        let k = |e: ErrorKind| ExitKind::of_io(&io::Error::from(e));
        assert_eq!(k(ErrorKind::PermissionDenied), ExitKind::Permission);
        assert_eq!(k(ErrorKind::AddrInUse), ExitKind::Unavailable);
        assert_eq!(k(ErrorKind::AddrNotAvailable), ExitKind::Unavailable);
        assert_eq!(k(ErrorKind::NotFound), ExitKind::OsError);
        assert_eq!(k(ErrorKind::Other), ExitKind::OsError);
    }

    #[test]
    fn worst_prefers_permission() {
        use ExitKind::*;
        assert_eq!(
            ExitKind::worst([Config, Permission, Unavailable]),
            Some(Permission)
        );
        assert_eq!(ExitKind::worst([Config, OsError]), Some(OsError));
        assert_eq!(ExitKind::worst([OsError, Unavailable]), Some(Unavailable));
        assert_eq!(ExitKind::worst([]), None);
    }

    #[test]
    fn identity_errors_by_variant() {
        let p = || PathBuf::from("/x");
        let io_err = |k| IdentityError::Io {
            path: p(),
            action: "read",
            source: io::Error::from(k),
        };
        assert_eq!(io_err(ErrorKind::PermissionDenied).exit_code(), 77);
        assert_eq!(io_err(ErrorKind::NotFound).exit_code(), 71);
        let perms = IdentityError::Permissions {
            path: p(),
            what: "mode 0644".into(),
            fix: "chmod 600".into(),
        };
        assert_eq!(perms.exit_code(), 77);
        let busy = IdentityError::Busy {
            path: p(),
            what: "a server runs on it".into(),
        };
        assert_eq!(busy.exit_code(), 69);
        assert_eq!(IdentityError::CertGen("x".into()).exit_code(), 71);
        let corrupt = IdentityError::Corrupt {
            path: p(),
            what: "not PEM".into(),
        };
        assert_eq!(corrupt.exit_code(), 64);
        let incomplete = IdentityError::Incomplete {
            path: p(),
            what: "no cert".into(),
        };
        assert_eq!(incomplete.exit_code(), 64);
    }

    #[test]
    fn control_client_errors_by_variant() {
        let unreachable = |k| ClientError::Unreachable {
            path: "/run/screengate/control.sock".into(),
            source: io::Error::from(k),
        };
        assert_eq!(unreachable(ErrorKind::NotFound).exit_code(), 69);
        assert_eq!(unreachable(ErrorKind::ConnectionRefused).exit_code(), 69);
        assert_eq!(unreachable(ErrorKind::PermissionDenied).exit_code(), 77);
        assert_eq!(ClientError::Untrusted("socket".into()).exit_code(), 77);
        assert_eq!(ClientError::Timeout.exit_code(), 69);
    }
}
