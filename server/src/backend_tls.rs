//! TLS to the SDK's IPC server (`wss://`): the rustls client config built
//! from `[backend_tls]`, the protection checks of its files, and the
//! classification of a failed handshake into an audit reason.
//!
//! Trust is either the SDK's CA (`ca`, webpki path validation, dates
//! checked: an expired SDK certificate is `backend_cert_expired`) or the
//! SDK's key (`spki_pin`, dates ignored, the handshake signature still
//! checked by the provider). The client key is read without following a
//! link, must be the service user's and 0600 (as screengate's own keys),
//! and is never logged: errors name the file only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, CertificateError, Error as TlsError};
use screengate_identity::IdentityError;
use screengate_identity::fsutil::{self, Kind};
use screengate_identity::verify::PinnedServerCert;

use crate::config::{BackendTlsConfig, BackendTrust};

/// Why a backend TLS configuration could not be built. Names the file,
/// never its content.
#[derive(Debug, thiserror::Error)]
pub enum BackendTlsError {
    /// A file is unprotected (owner, mode, link) or unreadable.
    #[error("[backend_tls] {0}")]
    File(#[from] IdentityError),
    /// Every protection problem found (one per line).
    #[error("[backend_tls] unsafe file permissions:\n{}", .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    Permissions(Vec<IdentityError>),
    /// A file holds no usable PEM of the expected kind.
    #[error("[backend_tls] {path}: {what}")]
    Content {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// rustls refused the configuration (e.g. key does not match chain).
    #[error("[backend_tls] {what}: {source}")]
    Rustls {
        /// Which part.
        what: String,
        /// rustls's reason.
        source: TlsError,
    },
}

impl crate::exit::ExitStatus for BackendTlsError {
    fn exit_kind(&self) -> crate::exit::ExitKind {
        match self {
            Self::File(e) => e.exit_kind(),
            Self::Permissions(_) => crate::exit::ExitKind::Permission,
            Self::Content { .. } | Self::Rustls { .. } => crate::exit::ExitKind::Config,
        }
    }
}

/// The classified cause of a failed backend TLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// Anything not below (protocol, no common version, EOF).
    Handshake,
    /// The SDK's certificate does not chain to `ca`, names another host,
    /// or does not carry the pinned key.
    CertUntrusted,
    /// The SDK's certificate is out of its validity period (`ca` only).
    CertExpired,
    /// The SDK refused our certificate (or its absence).
    ClientCertRefused,
}

impl TlsFailure {
    /// The audit reason.
    pub fn reason(self) -> &'static str {
        match self {
            TlsFailure::Handshake => "backend_tls_handshake",
            TlsFailure::CertUntrusted => "backend_cert_untrusted",
            TlsFailure::CertExpired => "backend_cert_expired",
            TlsFailure::ClientCertRefused => "backend_client_cert_refused",
        }
    }
}

/// Maps a rustls error to its cause.
pub fn classify(e: &TlsError) -> TlsFailure {
    match e {
        TlsError::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => TlsFailure::CertExpired,
        TlsError::InvalidCertificate(_) => TlsFailure::CertUntrusted,
        // What OpenSSL (the SDK's websocketpp/asio) sends for a missing or
        // unaccepted client certificate.
        TlsError::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::AccessDenied,
        ) => TlsFailure::ClientCertRefused,
        _ => TlsFailure::Handshake,
    }
}

/// Maps an I/O error from a TLS stream (rustls's error inside) to its cause.
pub fn classify_io(e: &std::io::Error) -> TlsFailure {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsError>())
        .map_or(TlsFailure::Handshake, classify)
}

/// Protection problems of the `[backend_tls]` files for service user `uid`:
/// the key as a secret (owner only), the chain and CA as protected files
/// (service user's or root's, not writable by others); none may be a link.
/// A missing file is a problem too.
pub fn check_files(t: &BackendTlsConfig, uid: u32) -> Vec<IdentityError> {
    let mut problems = Vec::new();
    for (path, kind) in files(t) {
        if std::fs::symlink_metadata(path).is_err() {
            problems.push(IdentityError::Permissions {
                path: path.to_owned(),
                what: "does not exist or cannot be read".into(),
                fix: "point the [backend_tls] setting at the SDK's file".into(),
            });
            continue;
        }
        // the same open, fstat and directory checks the server's read makes
        if let Err(p) = fsutil::read_checked(path, kind, uid) {
            problems.extend(p);
        }
    }
    problems
}

/// The `[backend_tls]` files and the rule each is read under.
fn files(t: &BackendTlsConfig) -> Vec<(&Path, Kind)> {
    let mut files: Vec<(&Path, Kind)> = Vec::new();
    if let BackendTrust::Ca(ca) = &t.trust {
        files.push((ca, Kind::Protected));
    }
    if let Some((cert, key)) = &t.client {
        files.push((cert, Kind::Protected));
        files.push((key, Kind::Secret));
    }
    files
}

/// Reads one file under its rule (checked on the open file itself).
fn read(path: &Path, kind: Kind, uid: u32) -> Result<zeroize::Zeroizing<Vec<u8>>, BackendTlsError> {
    fsutil::read_checked(path, kind, uid)
        .map(zeroize::Zeroizing::new)
        .map_err(BackendTlsError::Permissions)
}

fn certs(path: &Path, uid: u32) -> Result<Vec<CertificateDer<'static>>, BackendTlsError> {
    let pem = read(path, Kind::Protected, uid)?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    match certs {
        Ok(c) if !c.is_empty() => Ok(c),
        Ok(_) => Err(BackendTlsError::Content {
            path: path.to_owned(),
            what: "holds no PEM certificate".into(),
        }),
        Err(_) => Err(BackendTlsError::Content {
            path: path.to_owned(),
            what: "is not valid PEM".into(),
        }),
    }
}

/// Reads and checks every file and builds the connector with the server
/// name the SDK's certificate must carry.
pub fn connector(
    t: &BackendTlsConfig,
    uid: u32,
) -> Result<(tokio_rustls::TlsConnector, ServerName<'static>), BackendTlsError> {
    let problems = check_files(t, uid);
    if !problems.is_empty() {
        return Err(BackendTlsError::Permissions(problems));
    }
    let provider = screengate_identity::verify::provider();
    let rustls_err = |what: &str| {
        let what = what.to_owned();
        move |source| BackendTlsError::Rustls { what, source }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(rustls_err("protocol versions"))?;
    let builder = match &t.trust {
        BackendTrust::Ca(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca, uid)? {
                roots.add(c).map_err(|e| BackendTlsError::Content {
                    path: ca.clone(),
                    what: format!("not a usable trust anchor: {e}"),
                })?;
            }
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .map_err(|e| BackendTlsError::Content {
                path: ca.clone(),
                what: format!("no usable trust anchor: {e}"),
            })?;
            builder.with_webpki_verifier(verifier)
        }
        BackendTrust::Pin(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedServerCert::new_ignoring_chain(
                *pin,
                provider.clone(),
            ))),
    };
    let cfg = match &t.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = certs(cert, uid)?;
            let pem = read(key, Kind::Secret, uid)?;
            let key_der =
                PrivateKeyDer::from_pem_slice(&pem).map_err(|_| BackendTlsError::Content {
                    path: key.clone(),
                    what: "holds no PKCS#8, PKCS#1 or SEC1 PEM private key".into(),
                })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(rustls_err(&format!(
                    "client_cert {} with client_key {}",
                    cert.display(),
                    key.display()
                )))?
        }
    };
    let name =
        ServerName::try_from(t.server_name.clone()).map_err(|_| BackendTlsError::Content {
            path: PathBuf::new(),
            what: format!("server_name `{}` is not a DNS name or IP", t.server_name),
        })?;
    Ok((tokio_rustls::TlsConnector::from(Arc::new(cfg)), name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_their_reasons() {
        let cases = [
            (
                TlsError::InvalidCertificate(CertificateError::Expired),
                "backend_cert_expired",
            ),
            (
                TlsError::InvalidCertificate(CertificateError::UnknownIssuer),
                "backend_cert_untrusted",
            ),
            (
                TlsError::InvalidCertificate(CertificateError::NotValidForName),
                "backend_cert_untrusted",
            ),
            (
                TlsError::InvalidCertificate(CertificateError::ApplicationVerificationFailure),
                "backend_cert_untrusted",
            ),
            (
                TlsError::AlertReceived(AlertDescription::CertificateRequired),
                "backend_client_cert_refused",
            ),
            (
                TlsError::AlertReceived(AlertDescription::UnknownCA),
                "backend_client_cert_refused",
            ),
            (
                TlsError::AlertReceived(AlertDescription::ProtocolVersion),
                "backend_tls_handshake",
            ),
            (TlsError::DecryptError, "backend_tls_handshake"),
        ];
        for (e, want) in cases {
            assert_eq!(classify(&e).reason(), want, "{e:?}");
            let io = std::io::Error::new(std::io::ErrorKind::InvalidData, e);
            assert_eq!(classify_io(&io).reason(), want);
        }
        let plain = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(classify_io(&plain), TlsFailure::Handshake);
    }
}

#[cfg(test)]
mod file_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn cfg(dir: &Path) -> BackendTlsConfig {
        BackendTlsConfig {
            trust: BackendTrust::Ca(dir.join("ca.cert")),
            client: Some((dir.join("client.chain"), dir.join("client.key"))),
            server_name: "localhost".into(),
        }
    }

    fn put(dir: &Path, name: &str, mode: u32) {
        let p = dir.join(name);
        std::fs::write(&p, b"-----BEGIN X-----\n-----END X-----\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn uid() -> u32 {
        fsutil::euid()
    }

    #[test]
    fn protected_files_pass_the_checks() {
        let d = tempfile::tempdir().unwrap();
        put(d.path(), "ca.cert", 0o644);
        put(d.path(), "client.chain", 0o644);
        put(d.path(), "client.key", 0o600);
        assert!(check_files(&cfg(d.path()), uid()).is_empty());
    }

    #[test]
    fn a_readable_key_is_refused_naming_it() {
        let d = tempfile::tempdir().unwrap();
        put(d.path(), "ca.cert", 0o644);
        put(d.path(), "client.chain", 0o644);
        for mode in [0o644, 0o640, 0o604] {
            put(d.path(), "client.key", mode);
            let p = check_files(&cfg(d.path()), uid());
            assert_eq!(p.len(), 1, "{mode:o}");
            let m = p[0].to_string();
            assert!(
                m.contains("client.key") && m.contains(&format!("{mode:04o}")),
                "{m}"
            );
        }
    }

    #[test]
    fn writable_chain_or_ca_is_refused() {
        let d = tempfile::tempdir().unwrap();
        put(d.path(), "client.key", 0o600);
        put(d.path(), "ca.cert", 0o666);
        put(d.path(), "client.chain", 0o664);
        let p: Vec<String> = check_files(&cfg(d.path()), uid())
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p.iter().any(|m| m.contains("ca.cert")));
        assert!(p.iter().any(|m| m.contains("client.chain")));
    }

    #[test]
    fn links_and_missing_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        put(d.path(), "ca.cert", 0o644);
        put(d.path(), "client.chain", 0o644);
        put(d.path(), "real.key", 0o600);
        std::os::unix::fs::symlink(d.path().join("real.key"), d.path().join("client.key")).unwrap();
        let p = check_files(&cfg(d.path()), uid());
        assert!(p[0].to_string().contains("symbolic link"), "{}", p[0]);
        std::fs::remove_file(d.path().join("client.key")).unwrap();
        let p = check_files(&cfg(d.path()), uid());
        assert!(p[0].to_string().contains("client.key"), "{}", p[0]);
        // and the connector refuses before reading anything
        assert!(matches!(
            connector(&cfg(d.path()), uid()),
            Err(BackendTlsError::Permissions(_))
        ));
    }

    #[test]
    fn files_in_a_directory_others_can_write_are_refused() {
        // the review's swap: a folder others can write lets them rename
        // the SDK's CA away and put theirs in place between check and read
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("certs");
        std::fs::create_dir(&sub).unwrap();
        put(&sub, "ca.cert", 0o644);
        put(&sub, "client.chain", 0o644);
        put(&sub, "client.key", 0o600);
        assert!(check_files(&cfg(&sub), uid()).is_empty());
        for mode in [0o777, 0o775, 0o757] {
            std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(mode)).unwrap();
            let p = check_files(&cfg(&sub), uid());
            assert_eq!(p.len(), 3, "{mode:o}: {p:?}");
            for e in &p {
                let t = e.to_string();
                assert!(
                    t.contains("directory above") && t.contains(&sub.display().to_string()),
                    "{t}"
                );
            }
            assert!(matches!(
                connector(&cfg(&sub), uid()),
                Err(BackendTlsError::Permissions(_))
            ));
        }
        // sticky, as /tmp: nobody can rename another's file in it
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(check_files(&cfg(&sub), uid()).is_empty());
    }

    #[test]
    fn a_link_in_a_directory_others_can_write_is_refused() {
        // the link `shared/current -> real` can be repointed by anyone who
        // may write `shared`, though `real` itself is fine
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real");
        let shared = d.path().join("shared");
        std::fs::create_dir(&real).unwrap();
        std::fs::create_dir(&shared).unwrap();
        put(&real, "ca.cert", 0o644);
        put(&real, "client.chain", 0o644);
        put(&real, "client.key", 0o600);
        std::os::unix::fs::symlink(&real, shared.join("current")).unwrap();
        let via = shared.join("current");
        assert!(check_files(&cfg(&via), uid()).is_empty());
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let p = check_files(&cfg(&via), uid());
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(
            p.iter()
                .all(|e| e.to_string().contains(&shared.display().to_string())),
            "{p:?}"
        );
    }

    #[test]
    fn a_fifo_or_directory_in_place_of_a_file_is_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        put(d.path(), "ca.cert", 0o644);
        put(d.path(), "client.chain", 0o644);
        nix::unistd::mkfifo(
            &d.path().join("client.key"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        // opening a FIFO for reading would block until a writer came
        let (tx, rx) = std::sync::mpsc::channel();
        let c = cfg(d.path());
        std::thread::spawn(move || {
            let _ = tx.send(check_files(&c, uid()));
        });
        let p = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("check blocked on a FIFO");
        assert!(
            p.iter()
                .any(|e| e.to_string().contains("not a regular file")),
            "{p:?}"
        );
        assert!(
            !p.iter()
                .any(|e| e.to_string().contains("screengate init --force")),
            "{p:?}"
        );
        std::fs::remove_file(d.path().join("client.key")).unwrap();
        std::fs::create_dir(d.path().join("client.key")).unwrap();
        let p = check_files(&cfg(d.path()), uid());
        assert!(
            p.iter()
                .any(|e| e.to_string().contains("not a regular file")),
            "{p:?}"
        );
    }

    #[test]
    fn garbage_pem_is_refused_naming_the_file_not_its_content() {
        let d = tempfile::tempdir().unwrap();
        put(d.path(), "ca.cert", 0o644);
        put(d.path(), "client.chain", 0o644);
        std::fs::write(d.path().join("client.key"), b"SECRET-KEY-BYTES").unwrap();
        std::fs::set_permissions(
            d.path().join("client.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let Err(e) = connector(&cfg(d.path()), uid()) else {
            panic!("garbage accepted");
        };
        let e = e.to_string();
        assert!(!e.contains("SECRET-KEY-BYTES"), "{e}");
        assert!(e.contains("ca.cert") || e.contains("client"), "{e}");
    }
}
