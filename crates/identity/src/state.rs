//! The state directory: creating, loading and checking a device identity.
//!
//! ```text
//! <state-dir>/            0700, owned by the service user
//!   device.key            32 raw bytes, 0600   (absent when a systemd credential provides it)
//!   server.key server.crt PEM; key 0600, cert 0644
//!   client.key client.crt PEM; key 0600, cert 0644
//! ```

use std::path::{Path, PathBuf};

use rcgen::{KeyPair, PublicKeyData};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use screengate_token::{DEVICE_KEY_LEN, DeviceKey};
use zeroize::Zeroizing;

use crate::cert::{CertRole, cert_for_key, generate_cert};
use crate::error::IdentityError;
use crate::fsutil::{self, Kind, atomic_write, read_private};
use crate::pin::{Pin, spki_pin_of_cert};

/// The device key file.
pub const DEVICE_KEY: &str = "device.key";
/// The gateway's private key.
pub const SERVER_KEY: &str = "server.key";
/// The gateway's certificate.
pub const SERVER_CRT: &str = "server.crt";
/// The native client's private key.
pub const CLIENT_KEY: &str = "client.key";
/// The native client's certificate.
pub const CLIENT_CRT: &str = "client.crt";
/// Name of the systemd credential carrying the device key
/// (`LoadCredentialEncrypted=screengate-device-key:...`).
pub const CREDENTIAL_NAME: &str = "screengate-device-key";

/// What `init` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitOutcome {
    /// Everything was created (or re-created with `--force`).
    Created,
    /// A complete identity was already there; nothing was written.
    AlreadyPresent,
    /// Some parts were missing and were created; the rest was kept.
    Completed(Vec<String>),
}

/// A state directory path and where the device key comes from.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
    credentials_dir: Option<PathBuf>,
}

/// A loaded device identity. Secrets zeroize on drop and never print.
pub struct Identity {
    /// The per-device HMAC key.
    pub device_key: DeviceKey,
    /// The gateway certificate.
    pub server_cert: CertificateDer<'static>,
    /// The gateway key (PKCS#8 DER).
    pub server_key: PrivateKeyDer<'static>,
    /// SPKI pin of the gateway certificate.
    pub server_pin: Pin,
    /// The native client certificate.
    pub client_cert: CertificateDer<'static>,
    /// The native client key.
    pub client_key: PrivateKeyDer<'static>,
    /// SPKI pin of the native client certificate.
    pub client_pin: Pin,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("server_pin", &self.server_pin)
            .field("client_pin", &self.client_pin)
            .finish_non_exhaustive()
    }
}

impl StateDir {
    /// A state dir at `dir`; `credentials_dir` is `$CREDENTIALS_DIRECTORY`
    /// when running under systemd with credentials.
    pub fn new(dir: impl Into<PathBuf>, credentials_dir: Option<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            credentials_dir,
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Whether the device key comes from the systemd credential.
    pub fn device_key_from_credential(&self) -> bool {
        self.credential_path().is_some()
    }

    fn credential_path(&self) -> Option<PathBuf> {
        let p = self.credentials_dir.as_ref()?.join(CREDENTIAL_NAME);
        p.exists().then_some(p)
    }

    /// Creates whatever is missing. Without `force` nothing existing is ever
    /// overwritten; with it, everything is made anew (a new device identity).
    pub fn init(&self, force: bool) -> Result<InitOutcome, IdentityError> {
        fsutil::ensure_private_dir(&self.dir)?;
        fsutil::remove_stale_temps(&self.dir);
        let mut made = Vec::new();
        let from_credential = self.credential_path().is_some();
        if !from_credential && (force || !self.file(DEVICE_KEY).exists()) {
            let key = DeviceKey::generate();
            atomic_write(&self.file(DEVICE_KEY), key.expose_secret(), 0o600)?;
            made.push(DEVICE_KEY.to_owned());
        }
        for (role, key_name, crt_name) in [
            (CertRole::Server, SERVER_KEY, SERVER_CRT),
            (CertRole::Client, CLIENT_KEY, CLIENT_CRT),
        ] {
            let (kp, cp) = (self.file(key_name), self.file(crt_name));
            if force || (!kp.exists() && !cp.exists()) {
                let g = generate_cert(role)?;
                // key first: a cut between the two leaves a key and no
                // certificate, which the next run completes below.
                atomic_write(&kp, g.key_pem.as_bytes(), 0o600)?;
                atomic_write(&cp, g.cert_pem.as_bytes(), 0o644)?;
                made.push(key_name.to_owned());
                made.push(crt_name.to_owned());
            } else if kp.exists() && !cp.exists() {
                let key_pem = self.read_key_pem(&kp)?;
                let key = KeyPair::from_pem(&key_pem).map_err(|e| IdentityError::Corrupt {
                    path: kp.clone(),
                    what: format!("not a usable private key ({e})"),
                })?;
                atomic_write(&cp, cert_for_key(role, &key)?.as_bytes(), 0o644)?;
                made.push(crt_name.to_owned());
            } else if !kp.exists() {
                return Err(IdentityError::Incomplete {
                    path: kp,
                    what: format!(
                        "is missing but {crt_name} exists; a certificate without its key is useless: remove {} and run init again",
                        cp.display()
                    ),
                });
            }
        }
        Ok(match (force, made.len()) {
            (_, 0) => InitOutcome::AlreadyPresent,
            (true, _) => InitOutcome::Created,
            (false, n) if n >= 4 + usize::from(!from_credential) => InitOutcome::Created,
            _ => InitOutcome::Completed(made),
        })
    }

    fn read_key_pem(&self, path: &Path) -> Result<Zeroizing<String>, IdentityError> {
        let bytes = read_private(path)?.ok_or_else(|| IdentityError::Incomplete {
            path: path.to_owned(),
            what: "is missing; run `screengate init`".into(),
        })?;
        let bytes = Zeroizing::new(bytes);
        let text = std::str::from_utf8(&bytes).map_err(|_| IdentityError::Corrupt {
            path: path.to_owned(),
            what: "is not PEM text".into(),
        })?;
        Ok(Zeroizing::new(text.to_owned()))
    }

    /// Loads and validates the identity. A truncated, corrupt or mismatched
    /// file is an error, never a reason to regenerate.
    pub fn load(&self) -> Result<Identity, IdentityError> {
        let device_key = self.load_device_key()?;
        let (server_cert, server_key, server_pin) = self.load_pair(SERVER_KEY, SERVER_CRT)?;
        let (client_cert, client_key, client_pin) = self.load_pair(CLIENT_KEY, CLIENT_CRT)?;
        Ok(Identity {
            device_key,
            server_cert,
            server_key,
            server_pin,
            client_cert,
            client_key,
            client_pin,
        })
    }

    fn load_device_key(&self) -> Result<DeviceKey, IdentityError> {
        let path = self
            .credential_path()
            .unwrap_or_else(|| self.file(DEVICE_KEY));
        let bytes =
            Zeroizing::new(
                read_private(&path)?.ok_or_else(|| IdentityError::Incomplete {
                    path: path.clone(),
                    what: "is missing; run `screengate init`".into(),
                })?,
            );
        DeviceKey::from_slice(&bytes).ok_or_else(|| IdentityError::Corrupt {
            path,
            what: format!(
                "is {} bytes; a device key is exactly {DEVICE_KEY_LEN}",
                bytes.len()
            ),
        })
    }

    fn load_pair(
        &self,
        key_name: &str,
        crt_name: &str,
    ) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>, Pin), IdentityError> {
        let (kp, cp) = (self.file(key_name), self.file(crt_name));
        let key_pem = self.read_key_pem(&kp)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| {
            IdentityError::Corrupt {
                path: kp.clone(),
                what: "is not a PEM private key".into(),
            }
        })?;
        let kp_pair = KeyPair::from_pem(&key_pem).map_err(|e| IdentityError::Corrupt {
            path: kp.clone(),
            what: format!("is not a usable private key ({e})"),
        })?;
        let crt_bytes = read_private(&cp)?.ok_or_else(|| IdentityError::Incomplete {
            path: cp.clone(),
            what: "is missing; run `screengate init`".into(),
        })?;
        let cert =
            CertificateDer::from_pem_slice(&crt_bytes).map_err(|_| IdentityError::Corrupt {
                path: cp.clone(),
                what: "is not a PEM certificate".into(),
            })?;
        let pin = spki_pin_of_cert(&cert).ok_or_else(|| IdentityError::Corrupt {
            path: cp.clone(),
            what: "is not a parsable X.509 certificate".into(),
        })?;
        if !pin.matches(&Pin::of_spki(&kp_pair.subject_public_key_info())) {
            return Err(IdentityError::Corrupt {
                path: cp,
                what: format!("does not belong to the key in {}", kp.display()),
            });
        }
        Ok((cert, key, pin))
    }

    /// The pin of the server (or client) certificate, from the cert alone.
    pub fn pin(&self, client: bool) -> Result<Pin, IdentityError> {
        let cp = self.file(if client { CLIENT_CRT } else { SERVER_CRT });
        let bytes = read_private(&cp)?.ok_or_else(|| IdentityError::Incomplete {
            path: cp.clone(),
            what: "is missing; run `screengate init`".into(),
        })?;
        let cert = CertificateDer::from_pem_slice(&bytes).map_err(|_| IdentityError::Corrupt {
            path: cp.clone(),
            what: "is not a PEM certificate".into(),
        })?;
        spki_pin_of_cert(&cert).ok_or_else(|| IdentityError::Corrupt {
            path: cp,
            what: "is not a parsable X.509 certificate".into(),
        })
    }

    /// Every ownership/permission problem of the state dir and its files,
    /// for the service user `uid`.
    pub fn check_permissions(&self, uid: u32) -> Vec<IdentityError> {
        let mut problems = fsutil::check_path(&self.dir, Kind::PrivateDir, uid);
        for name in [DEVICE_KEY, SERVER_KEY, CLIENT_KEY] {
            problems.extend(fsutil::check_path(&self.file(name), Kind::Secret, uid));
        }
        for name in [SERVER_CRT, CLIENT_CRT] {
            problems.extend(fsutil::check_path(&self.file(name), Kind::Protected, uid));
        }
        if let Some(c) = self.credential_path() {
            problems.extend(fsutil::check_path(&c, Kind::Secret, uid));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn fresh() -> (tempfile::TempDir, StateDir) {
        let t = tempfile::tempdir().unwrap();
        let s = StateDir::new(t.path().join("state"), None);
        (t, s)
    }

    #[test]
    fn init_then_load_round_trips() {
        let (_t, s) = fresh();
        assert_eq!(s.init(false).unwrap(), InitOutcome::Created);
        let id = s.load().unwrap();
        assert_eq!(id.server_pin, s.pin(false).unwrap());
        assert_eq!(id.client_pin, s.pin(true).unwrap());
        assert_ne!(id.server_pin, id.client_pin);
        assert!(s.check_permissions(fsutil::euid()).is_empty());
        let mode = std::fs::metadata(s.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn init_never_overwrites_without_force() {
        let (_t, s) = fresh();
        s.init(false).unwrap();
        let before = std::fs::read(s.file(DEVICE_KEY)).unwrap();
        let pin = s.pin(false).unwrap();
        assert_eq!(s.init(false).unwrap(), InitOutcome::AlreadyPresent);
        assert_eq!(std::fs::read(s.file(DEVICE_KEY)).unwrap(), before);
        assert_eq!(s.pin(false).unwrap(), pin);
        assert_eq!(s.init(true).unwrap(), InitOutcome::Created);
        assert_ne!(std::fs::read(s.file(DEVICE_KEY)).unwrap(), before);
        assert_ne!(s.pin(false).unwrap(), pin);
    }

    #[test]
    fn init_completes_a_key_without_its_cert_keeping_the_key() {
        let (_t, s) = fresh();
        s.init(false).unwrap();
        let pin = s.pin(false).unwrap();
        std::fs::remove_file(s.file(SERVER_CRT)).unwrap();
        assert_eq!(
            s.init(false).unwrap(),
            InitOutcome::Completed(vec![SERVER_CRT.into()])
        );
        assert_eq!(s.pin(false).unwrap(), pin);
        s.load().unwrap();
    }

    #[test]
    fn init_refuses_cert_without_key() {
        let (_t, s) = fresh();
        s.init(false).unwrap();
        std::fs::remove_file(s.file(CLIENT_KEY)).unwrap();
        assert!(matches!(
            s.init(false),
            Err(IdentityError::Incomplete { .. })
        ));
    }

    #[test]
    fn load_refuses_truncated_device_key() {
        let (_t, s) = fresh();
        s.init(false).unwrap();
        std::fs::write(s.file(DEVICE_KEY), [1u8; 31]).unwrap();
        let e = s.load().unwrap_err();
        assert!(matches!(e, IdentityError::Corrupt { .. }));
        assert!(e.to_string().contains("device.key"));
    }

    #[test]
    fn load_refuses_oversized_device_key() {
        let (_t, s) = fresh();
        s.init(false).unwrap();
        std::fs::write(s.file(DEVICE_KEY), [1u8; 33]).unwrap();
        assert!(matches!(s.load(), Err(IdentityError::Corrupt { .. })));
    }

    #[test]
    fn load_refuses_corrupt_key_pem() {
        let (_t, s) = fresh();
        s.init(false).unwrap();
        std::fs::write(
            s.file(SERVER_KEY),
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = s.load().unwrap_err();
        assert!(e.to_string().contains("server.key"), "{e}");
    }

    #[test]
    fn load_refuses_truncated_cert() {
        let (_t, s) = fresh();
        s.init(false).unwrap();
        let c = std::fs::read(s.file(SERVER_CRT)).unwrap();
        std::fs::write(s.file(SERVER_CRT), &c[..c.len() / 2]).unwrap();
        assert!(matches!(s.load(), Err(IdentityError::Corrupt { .. })));
    }

    #[test]
    fn load_refuses_mismatched_pair() {
        let (_t, s) = fresh();
        s.init(false).unwrap();
        std::fs::copy(s.file(CLIENT_CRT), s.file(SERVER_CRT)).unwrap();
        let e = s.load().unwrap_err();
        assert!(e.to_string().contains("does not belong"), "{e}");
    }

    #[test]
    fn device_key_from_credential_dir_is_used_and_not_written() {
        let t = tempfile::tempdir().unwrap();
        let creds = t.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        let cred = creds.join(CREDENTIAL_NAME);
        std::fs::write(&cred, [9u8; 32]).unwrap();
        std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = StateDir::new(t.path().join("state"), Some(creds));
        s.init(false).unwrap();
        assert!(!s.file(DEVICE_KEY).exists());
        let id = s.load().unwrap();
        assert_eq!(id.device_key.expose_secret(), &[9u8; 32]);
    }

    #[test]
    fn identity_debug_is_redacted() {
        let (_t, s) = fresh();
        s.init(false).unwrap();
        let id = s.load().unwrap();
        let dbg = format!("{id:?}");
        assert!(!dbg.contains("PRIVATE"));
        assert!(!dbg.contains("device_key"));
    }
}
