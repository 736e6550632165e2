//! The state directory: creating, rotating, loading, checking and
//! resetting a device identity.
//!
//! ```text
//! <state-dir>/                0700, owned by the service user
//!   current -> id.<16 hex>    the generation in force (`generation.rs`)
//!   id.<16 hex>/              0700
//!     device.key              32 raw bytes, 0600   (absent when a systemd credential provides it)
//!     server.key server.crt   PEM; key 0600, cert 0644
//!     client.key client.crt   PEM; key 0600, cert 0644
//! ```
//!
//! Versions before `rotate` kept the five files in the state dir itself
//! (the flat layout). Such a dir loads as it is and `init` completes it as
//! it always did; the first `rotate` (or `init --force`) writes a
//! generation, switches `current` to it, and only then removes the flat
//! files, which nothing reads once `current` exists.
//!
//! How generations are written, switched and removed is
//! `generation.rs`'s; atomic writes and permission rules are `fsutil`'s.

use std::path::{Path, PathBuf};

use rcgen::{KeyPair, PublicKeyData};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use screengate_token::{DEVICE_KEY_LEN, DeviceKey};
use zeroize::Zeroizing;

use crate::cert::{CertRole, cert_for_key, generate_cert};
use crate::error::IdentityError;
use crate::fsutil::{self, Kind, atomic_write, read_private};
use crate::generation::{self, CURRENT, LOCK, Removal, ServingLock};
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
/// Every identity file, in the order a generation writes them.
pub(crate) const FILES: [&str; 5] = [DEVICE_KEY, SERVER_KEY, SERVER_CRT, CLIENT_KEY, CLIENT_CRT];
/// The default control socket's name in the state dir: `reset` removes a
/// stale one (a socket, this user's) left by a killed server.
const CONTROL_SOCKET: &str = "control.sock";
/// Name of the systemd credential carrying the device key
/// (`LoadCredentialEncrypted=screengate-device-key:...`).
pub const CREDENTIAL_NAME: &str = "screengate-device-key";
/// How often a read of the identity in force is tried while a writer keeps
/// switching it ([`StateDir::load`]).
const READ_TRIES: u32 = 3;

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

/// Where the identity in force lives.
struct Files {
    /// The generation directory, or the state dir itself (flat layout).
    dir: PathBuf,
    /// The generation's name; `None` for the flat layout.
    generation: Option<String>,
}

impl Files {
    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A missing identity file, with what to do about it.
    fn missing(&self, path: PathBuf) -> IdentityError {
        let what = match &self.generation {
            None => "is missing; run `screengate init`".into(),
            Some(_) => "is missing from the identity in force; restore it from backup, or make a new identity with `screengate rotate`".into(),
        };
        IdentityError::Incomplete { path, what }
    }
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

    /// Where the identity in force lives: the generation `current` names,
    /// else (flat layout, or nothing yet) the state dir itself.
    fn files(&self) -> Result<Files, IdentityError> {
        Ok(match generation::current(&self.dir)? {
            Some(g) => Files {
                dir: self.dir.join(&g),
                generation: Some(g),
            },
            None => Files {
                dir: self.dir.clone(),
                generation: None,
            },
        })
    }

    /// Whether any file of the flat layout is there.
    fn has_flat(&self) -> bool {
        FILES
            .iter()
            .any(|n| std::fs::symlink_metadata(self.dir.join(n)).is_ok())
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
    /// overwritten; with it, everything is made anew (a new device identity,
    /// as [`StateDir::rotate`]). A fresh identity appears whole or not at
    /// all; a flat-layout one is completed file by file, as it always was.
    pub fn init(&self, force: bool) -> Result<InitOutcome, IdentityError> {
        fsutil::ensure_private_dir(&self.dir)?;
        let _lock = generation::lock_writers(&self.dir)?;
        let current = generation::current(&self.dir)?;
        generation::tidy(&self.dir, current.as_deref());
        if force {
            self.replace(current.as_deref())?;
            return Ok(InitOutcome::Created);
        }
        if current.is_some() {
            return Ok(InitOutcome::AlreadyPresent);
        }
        if self.has_flat() {
            return self.complete_flat();
        }
        self.replace(None)?;
        Ok(InitOutcome::Created)
    }

    /// A new device key (unless the systemd credential provides it) and
    /// new server and client keys and certificates, put in force as one
    /// step: a SIGKILL or power cut at any moment leaves the old identity
    /// or the new one, never a mix. The old one is then removed (key bytes
    /// overwritten); what was removed is returned. Refuses a dir without an
    /// identity: that is `init`'s job.
    pub fn rotate(&self) -> Result<Removal, IdentityError> {
        self.existing_dir("there is no identity to rotate")?;
        // New keys go only into a dir no one else can change (as `serve`
        // and `reset` insist): in a loose one another user could swap
        // generations or `current` around the new identity.
        if let Some(p) = fsutil::check_path(&self.dir, Kind::PrivateDir, fsutil::euid())
            .into_iter()
            .next()
        {
            return Err(p);
        }
        let _lock = generation::lock_writers(&self.dir)?;
        let current = generation::current(&self.dir)?;
        if current.is_none() && !self.has_flat() {
            return Err(IdentityError::Incomplete {
                path: self.dir.clone(),
                what: format!(
                    "holds no identity to rotate; run `screengate init --state-dir {}`",
                    self.dir.display()
                ),
            });
        }
        let mut r = generation::tidy(&self.dir, current.as_deref());
        let old = self.replace(current.as_deref())?;
        r.removed.extend(old.removed);
        r.left.extend(old.left);
        Ok(r)
    }

    /// `dir` must exist and be a directory (not a link to one).
    fn existing_dir(&self, otherwise: &str) -> Result<(), IdentityError> {
        match std::fs::symlink_metadata(&self.dir) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(IdentityError::Incomplete {
                path: self.dir.clone(),
                what: "is not a directory (a link to one is not followed)".into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(IdentityError::Incomplete {
                path: self.dir.clone(),
                what: format!("does not exist; {otherwise}"),
            }),
            Err(e) => Err(IdentityError::io(&self.dir, "stat", e)),
        }
    }

    /// Writes a whole new generation, switches `current` to it, then
    /// removes the identity it replaced (generation `old`, or the flat
    /// files). Under the writers' lock.
    fn replace(&self, old: Option<&str>) -> Result<Removal, IdentityError> {
        let device = (self.credential_path().is_none()).then(DeviceKey::generate);
        let server = generate_cert(CertRole::Server)?;
        let client = generate_cert(CertRole::Client)?;
        let mut parts: Vec<generation::Part<'_>> = Vec::with_capacity(5);
        if let Some(k) = &device {
            parts.push((DEVICE_KEY, k.expose_secret(), 0o600));
        }
        parts.push((SERVER_KEY, server.key_pem.as_bytes(), 0o600));
        parts.push((SERVER_CRT, server.cert_pem.as_bytes(), 0o644));
        parts.push((CLIENT_KEY, client.key_pem.as_bytes(), 0o600));
        parts.push((CLIENT_CRT, client.cert_pem.as_bytes(), 0o644));
        let name = generation::write(&self.dir, &parts)?;
        if let Err(e) = generation::switch(&self.dir, &name) {
            let _ = generation::remove_generation(&self.dir, &name, &mut Removal::default());
            return Err(e);
        }
        // Past the commit point: the old identity is garbage.
        let mut r = Removal::default();
        match old {
            Some(g) => {
                let _ = generation::remove_generation(&self.dir, g, &mut r);
            }
            None => {
                for n in FILES {
                    r.shred(&self.dir.join(n));
                }
            }
        }
        let _ = fsutil::sync_dir(&self.dir);
        Ok(r)
    }

    /// `init` of a flat-layout dir (versions before generations): each
    /// missing file made, a key whose certificate was lost kept and
    /// certified again (same pin), a certificate without its key refused.
    fn complete_flat(&self) -> Result<InitOutcome, IdentityError> {
        let file = |n: &str| self.dir.join(n);
        let mut made = Vec::new();
        let from_credential = self.credential_path().is_some();
        if !from_credential && !file(DEVICE_KEY).exists() {
            let key = DeviceKey::generate();
            atomic_write(&file(DEVICE_KEY), key.expose_secret(), 0o600)?;
            made.push(DEVICE_KEY.to_owned());
        }
        for (role, key_name, crt_name) in [
            (CertRole::Server, SERVER_KEY, SERVER_CRT),
            (CertRole::Client, CLIENT_KEY, CLIENT_CRT),
        ] {
            let (kp, cp) = (file(key_name), file(crt_name));
            if !kp.exists() && !cp.exists() {
                let g = generate_cert(role)?;
                // key first: a cut between the two leaves a key and no
                // certificate, which the next run completes below.
                atomic_write(&kp, g.key_pem.as_bytes(), 0o600)?;
                atomic_write(&cp, g.cert_pem.as_bytes(), 0o644)?;
                made.push(key_name.to_owned());
                made.push(crt_name.to_owned());
            } else if kp.exists() && !cp.exists() {
                let key_pem = read_key_pem(&kp, || IdentityError::Incomplete {
                    path: kp.clone(),
                    what: "is missing".into(),
                })?;
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
        Ok(match made.len() {
            0 => InitOutcome::AlreadyPresent,
            n if n >= 4 + usize::from(!from_credential) => InitOutcome::Created,
            _ => InitOutcome::Completed(made),
        })
    }

    /// Factory reset: removes every file screengate made in the state dir
    /// (the identity of either layout, leftovers of interrupted writes, the
    /// lock file, a stale control socket), overwriting key bytes first,
    /// never following a link, never leaving the dir; keeps the dir itself
    /// and anything it did not make, each reported. Refused when the dir
    /// does not exist, fails the state-dir permission check for `uid`, or
    /// a server is running on it. The identity goes as one step (the
    /// `current` link first); an interrupted reset is finished by running
    /// it again.
    pub fn reset(&self, uid: u32) -> Result<Removal, Vec<IdentityError>> {
        self.existing_dir("nothing to reset").map_err(|e| vec![e])?;
        let problems = fsutil::check_path(&self.dir, Kind::PrivateDir, uid);
        if !problems.is_empty() {
            return Err(problems);
        }
        let _writers = generation::lock_writers(&self.dir).map_err(|e| vec![e])?;
        let _no_server = generation::no_server(&self.dir).map_err(|e| vec![e])?;
        let mut r = Removal::default();
        let link = self.dir.join(CURRENT);
        if std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
            // flat files a generation replaced go before the link, so that
            // they never come back in force
            for n in FILES {
                r.shred(&self.dir.join(n));
            }
            r.shred(&link);
            let _ = fsutil::sync_dir(&self.dir);
        }
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| vec![IdentityError::io(&self.dir, "read directory", e)])?;
        for e in entries.flatten() {
            let n = e.file_name();
            let n = n.to_string_lossy();
            let path = e.path();
            let meta = std::fs::symlink_metadata(&path);
            if n == LOCK {
                continue;
            } else if FILES.contains(&n.as_ref()) || fsutil::is_temp_name(&n) {
                r.shred(&path);
            } else if generation::is_name(&n) {
                let _ = generation::remove_generation(&self.dir, &n, &mut r);
            } else if n == CONTROL_SOCKET
                && meta.as_ref().is_ok_and(|m| {
                    std::os::unix::fs::FileTypeExt::is_socket(&m.file_type())
                        && std::os::unix::fs::MetadataExt::uid(m) == uid
                })
            {
                match std::fs::remove_file(&path) {
                    Ok(()) => r.removed.push(path),
                    Err(e) => r.left.push((path, format!("unlink: {e}"))),
                }
            } else {
                r.left
                    .push((path, "not made by screengate; left as it is".into()));
            }
        }
        r.shred(&self.dir.join(LOCK));
        let _ = fsutil::sync_dir(&self.dir);
        Ok(r)
    }

    /// Held by a running server for its whole life: `reset` refuses while
    /// any holder lives (a SIGKILLed one releases it).
    pub fn hold_serving(&self) -> Result<ServingLock, IdentityError> {
        generation::lock_serving(&self.dir)
    }

    /// Loads and validates the identity in force. A truncated, corrupt or
    /// mismatched file is an error, never a reason to regenerate. Reads
    /// one generation only; one that a concurrent `rotate` switched away
    /// from (and removed) mid-read is read again from the new one.
    pub fn load(&self) -> Result<Identity, IdentityError> {
        self.settled(|files| self.load_from(files))
    }

    /// Runs `read` on the identity in force and keeps its result only if
    /// `current` still names the same generation afterwards; else reads
    /// again (at most [`READ_TRIES`] times). A writer removes a generation
    /// only after switching away from it, overwriting its files in place
    /// (`fsutil::shred`): a read that overlapped that could have taken a
    /// zeroed `device.key` beside intact certificates, a mix that parses.
    /// Unchanged `current` after the read proves no removal had begun.
    fn settled<T>(
        &self,
        mut read: impl FnMut(&Files) -> Result<T, IdentityError>,
    ) -> Result<T, IdentityError> {
        let mut tries = 0;
        loop {
            let files = self.files()?;
            let got = read(&files);
            if self.files()?.generation == files.generation {
                return got;
            }
            tries += 1;
            if tries >= READ_TRIES {
                return got.and_then(|_| {
                    Err(IdentityError::Busy {
                        path: self.dir.clone(),
                        what: format!(
                            "the identity in force changed during each of {READ_TRIES} reads (a `screengate rotate` running?); try again"
                        ),
                    })
                });
            }
        }
    }

    fn load_from(&self, files: &Files) -> Result<Identity, IdentityError> {
        let device_key = self.load_device_key(files)?;
        let (server_cert, server_key, server_pin) = load_pair(files, SERVER_KEY, SERVER_CRT)?;
        let (client_cert, client_key, client_pin) = load_pair(files, CLIENT_KEY, CLIENT_CRT)?;
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

    fn load_device_key(&self, files: &Files) -> Result<DeviceKey, IdentityError> {
        let path = self
            .credential_path()
            .unwrap_or_else(|| files.file(DEVICE_KEY));
        let bytes =
            Zeroizing::new(read_private(&path)?.ok_or_else(|| files.missing(path.clone()))?);
        DeviceKey::from_slice(&bytes).ok_or_else(|| IdentityError::Corrupt {
            path,
            what: format!(
                "is {} bytes; a device key is exactly {DEVICE_KEY_LEN}",
                bytes.len()
            ),
        })
    }

    /// The pin of the server (or client) certificate in force, from the
    /// cert alone.
    pub fn pin(&self, client: bool) -> Result<Pin, IdentityError> {
        self.settled(|files| cert_pin(files, if client { CLIENT_CRT } else { SERVER_CRT }))
    }

    /// Every ownership/permission problem of the state dir and the
    /// identity in force, for the service user `uid`.
    pub fn check_permissions(&self, uid: u32) -> Vec<IdentityError> {
        let mut problems = fsutil::check_path(&self.dir, Kind::PrivateDir, uid);
        match self.files() {
            Err(e) => problems.push(e),
            Ok(files) => {
                if files.generation.is_some() {
                    problems.extend(fsutil::check_path(&files.dir, Kind::PrivateDir, uid));
                }
                for name in [DEVICE_KEY, SERVER_KEY, CLIENT_KEY] {
                    problems.extend(fsutil::check_path(&files.file(name), Kind::Secret, uid));
                }
                for name in [SERVER_CRT, CLIENT_CRT] {
                    problems.extend(fsutil::check_path(&files.file(name), Kind::Protected, uid));
                }
            }
        }
        if let Some(c) = self.credential_path() {
            problems.extend(fsutil::check_path(&c, Kind::Secret, uid));
        }
        problems
    }
}

fn read_key_pem(
    path: &Path,
    missing: impl FnOnce() -> IdentityError,
) -> Result<Zeroizing<String>, IdentityError> {
    let bytes = Zeroizing::new(read_private(path)?.ok_or_else(missing)?);
    let text = std::str::from_utf8(&bytes).map_err(|_| IdentityError::Corrupt {
        path: path.to_owned(),
        what: "is not PEM text".into(),
    })?;
    Ok(Zeroizing::new(text.to_owned()))
}

fn load_pair(
    files: &Files,
    key_name: &str,
    crt_name: &str,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>, Pin), IdentityError> {
    let (kp, cp) = (files.file(key_name), files.file(crt_name));
    let key_pem = read_key_pem(&kp, || files.missing(kp.clone()))?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| IdentityError::Corrupt {
            path: kp.clone(),
            what: "is not a PEM private key".into(),
        })?;
    let kp_pair = KeyPair::from_pem(&key_pem).map_err(|e| IdentityError::Corrupt {
        path: kp.clone(),
        what: format!("is not a usable private key ({e})"),
    })?;
    let (cert, pin) = read_cert(files, &cp)?;
    if !pin.matches(&Pin::of_spki(&kp_pair.subject_public_key_info())) {
        return Err(IdentityError::Corrupt {
            path: cp,
            what: format!("does not belong to the key in {}", kp.display()),
        });
    }
    Ok((cert, key, pin))
}

fn read_cert(files: &Files, cp: &Path) -> Result<(CertificateDer<'static>, Pin), IdentityError> {
    let bytes = read_private(cp)?.ok_or_else(|| files.missing(cp.to_owned()))?;
    let cert = CertificateDer::from_pem_slice(&bytes).map_err(|_| IdentityError::Corrupt {
        path: cp.to_owned(),
        what: "is not a PEM certificate".into(),
    })?;
    let pin = spki_pin_of_cert(&cert).ok_or_else(|| IdentityError::Corrupt {
        path: cp.to_owned(),
        what: "is not a parsable X.509 certificate".into(),
    })?;
    Ok((cert, pin))
}

fn cert_pin(files: &Files, crt_name: &str) -> Result<Pin, IdentityError> {
    read_cert(files, &files.file(crt_name)).map(|(_, p)| p)
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

    impl StateDir {
        /// A file of the identity in force.
        fn file(&self, name: &str) -> PathBuf {
            self.files().unwrap().file(name)
        }
    }

    /// Turns an initialised dir into the flat layout of earlier versions.
    fn make_flat(s: &StateDir) {
        let g = s.files().unwrap().dir;
        for n in FILES {
            if g.join(n).exists() {
                std::fs::rename(g.join(n), s.path().join(n)).unwrap();
            }
        }
        std::fs::remove_file(s.path().join(CURRENT)).unwrap();
        std::fs::remove_dir(g).unwrap();
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn generations(s: &StateDir) -> Vec<String> {
        entries(s.path())
            .into_iter()
            .filter(|n| generation::is_name(n))
            .collect()
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
        make_flat(&s);
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
        make_flat(&s);
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

    /// A reader that looked at `current` just before a rotate switched
    /// it, reading while the rotate removes the old generation: the old
    /// `device.key` already overwritten with zeros (`fsutil::shred`, in
    /// directory order: creation order on btrfs, on ext4 without
    /// dir_index), its certificates not yet. Those parse and match; only
    /// the generation check after the read stops the zero key.
    /// The five identity files in `dir`, with the modes a writer gives
    /// them, ready for `generation::write` (through [`as_parts`]).
    fn identity_files(dir: &Path) -> Vec<(&'static str, Vec<u8>, u32)> {
        FILES
            .iter()
            .map(|n| {
                let mode = if n.ends_with(".crt") { 0o644 } else { 0o600 };
                (*n, std::fs::read(dir.join(n)).unwrap(), mode)
            })
            .collect()
    }

    fn as_parts<'a>(files: &'a [(&'static str, Vec<u8>, u32)]) -> Vec<generation::Part<'a>> {
        files
            .iter()
            .map(|(n, b, m)| (*n, b.as_slice(), *m))
            .collect()
    }

    #[test]
    fn a_read_overlapping_a_rotate_never_returns_a_half_removed_identity() {
        use std::io::Write as _;
        let (t, s) = fresh();
        s.init(false).unwrap();
        let other = StateDir::new(t.path().join("other"), None);
        other.init(false).unwrap();
        let theirs = other.load().unwrap();
        let bytes = identity_files(&other.files().unwrap().dir);
        let parts = as_parts(&bytes);
        let mut reads = 0;
        let id = s
            .settled(|files| {
                reads += 1;
                if reads == 1 {
                    let b = generation::write(s.path(), &parts).unwrap();
                    generation::switch(s.path(), &b).unwrap();
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .open(files.file(DEVICE_KEY))
                        .unwrap();
                    f.write_all(&[0u8; DEVICE_KEY_LEN]).unwrap();
                }
                s.load_from(files)
            })
            .unwrap();
        assert_eq!(
            reads, 2,
            "the read that overlapped the switch is done again"
        );
        assert_ne!(id.device_key.expose_secret(), &[0u8; DEVICE_KEY_LEN]);
        assert_eq!(
            id.device_key.expose_secret(),
            theirs.device_key.expose_secret()
        );
        assert_eq!(id.server_pin, theirs.server_pin);
        assert_eq!(id.client_pin, theirs.client_pin);
    }

    /// A writer that keeps switching: the reads give up, saying why,
    /// rather than return an identity no longer in force.
    #[test]
    fn reads_give_up_on_an_identity_that_keeps_changing() {
        let (_t, s) = fresh();
        s.init(false).unwrap();
        let mut reads = 0;
        let e = s
            .settled(|files| {
                reads += 1;
                let got = s.load_from(files);
                s.rotate().unwrap();
                got
            })
            .unwrap_err();
        assert_eq!(reads, READ_TRIES);
        assert!(matches!(e, IdentityError::Busy { .. }), "{e}");
        assert!(e.to_string().contains("changed during"), "{e}");
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

    // ---- rotate: one switch, leftovers cleaned, the flat layout migrated ----

    fn pins(s: &StateDir) -> (String, String) {
        let id = s.load().unwrap();
        (id.server_pin.to_string(), id.client_pin.to_string())
    }

    #[test]
    fn rotate_replaces_every_part_and_removes_the_old_generation() {
        let (_t, s) = fresh();
        s.init(false).unwrap();
        let before = pins(&s);
        let key = std::fs::read(s.file(DEVICE_KEY)).unwrap();
        let old = generations(&s);
        let r = s.rotate().unwrap();
        let after = pins(&s);
        assert_ne!(after.0, before.0);
        assert_ne!(after.1, before.1);
        assert_ne!(std::fs::read(s.file(DEVICE_KEY)).unwrap(), key);
        let now = generations(&s);
        assert_eq!(now.len(), 1);
        assert_ne!(now, old);
        assert!(r.removed.contains(&s.path().join(&old[0])), "{r:?}");
        assert!(r.left.is_empty(), "{r:?}");
        assert!(s.check_permissions(fsutil::euid()).is_empty());
        assert_eq!(s.pin(false).unwrap().to_string(), after.0);
    }

    #[test]
    fn rotate_refuses_a_missing_dir_and_an_empty_one() {
        let (_t, s) = fresh();
        let e = s.rotate().unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        assert!(!s.path().exists(), "rotate created the dir");
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .create(s.path())
            .unwrap();
        let e = s.rotate().unwrap_err().to_string();
        assert!(e.contains("no identity to rotate"), "{e}");
        assert!(generations(&s).is_empty());
    }

    #[test]
    fn a_half_written_generation_is_never_loaded_and_is_cleaned_up() {
        let (_t, s) = fresh();
        s.init(false).unwrap();
        let before = pins(&s);
        // a rotate killed before its switch: a generation with some files,
        // a staged temp file, a staged link
        let g = s.path().join("id.00112233445566aa");
        std::fs::create_dir(&g).unwrap();
        std::fs::write(g.join(DEVICE_KEY), [7u8; 32]).unwrap();
        std::fs::write(g.join(".server.key.tmp.0a0b0c"), b"half a key").unwrap();
        std::os::unix::fs::symlink("id.00112233445566aa", s.path().join(".current.tmp.0a0b0c"))
            .unwrap();
        assert_eq!(pins(&s), before);
        assert_eq!(s.pin(false).unwrap().to_string(), before.0);
        assert!(s.check_permissions(fsutil::euid()).is_empty());
        assert_eq!(s.init(false).unwrap(), InitOutcome::AlreadyPresent);
        assert!(!g.exists(), "init left the half-written generation");
        assert!(!s.path().join(".current.tmp.0a0b0c").exists());
        assert_eq!(generations(&s).len(), 1);
        assert_eq!(pins(&s), before);
    }

    #[test]
    fn a_generation_in_force_is_read_alone_never_mixed_with_another() {
        let (_t, s) = fresh();
        s.init(false).unwrap();
        let old = generations(&s).remove(0);
        // an incomplete generation in force (rotate never switches to one)
        let g = generation::write(
            s.path(),
            &[
                (DEVICE_KEY, &[3u8; 32], 0o600),
                (
                    SERVER_KEY,
                    generate_cert(CertRole::Server).unwrap().key_pem.as_bytes(),
                    0o600,
                ),
            ],
        )
        .unwrap();
        // incomplete on purpose: switching to it makes load fail, never mix
        generation::switch(s.path(), &g).unwrap();
        let e = s.load().unwrap_err().to_string();
        assert!(e.contains("server.crt") && e.contains(&g), "{e}");
        // never pieced together with the old one; a rotate replaces both
        s.rotate().unwrap();
        let now = generations(&s);
        assert_eq!(now.len(), 1, "{now:?}");
        assert!(!now.contains(&old) && !now.contains(&g));
        s.load().unwrap();
    }

    #[test]
    fn switch_then_kill_leaves_the_old_generation_to_the_next_writer() {
        let (_t, s) = fresh();
        s.init(false).unwrap();
        let old = generations(&s).remove(0);
        let other = fresh();
        other.1.init(false).unwrap();
        let new_pins = pins(&other.1);
        let parts = identity_files(&other.1.files().unwrap().dir);
        let refs = as_parts(&parts);
        let g = generation::write(s.path(), &refs).unwrap();
        generation::switch(s.path(), &g).unwrap();
        // killed here: both generations on disk, the new one in force
        assert_eq!(generations(&s).len(), 2);
        assert_eq!(pins(&s), new_pins);
        assert_eq!(s.init(false).unwrap(), InitOutcome::AlreadyPresent);
        assert_eq!(generations(&s), vec![g]);
        assert!(!s.path().join(old).exists());
        assert_eq!(pins(&s), new_pins);
    }

    #[test]
    fn the_flat_layout_loads_and_the_first_rotate_migrates_it() {
        let (_t, s) = fresh();
        s.init(false).unwrap();
        let before = pins(&s);
        make_flat(&s);
        assert_eq!(pins(&s), before, "a flat dir loads as before");
        assert!(s.check_permissions(fsutil::euid()).is_empty());
        assert_eq!(s.init(false).unwrap(), InitOutcome::AlreadyPresent);
        assert!(
            s.path().join(SERVER_KEY).exists(),
            "init moved the flat files"
        );
        let r = s.rotate().unwrap();
        assert_ne!(pins(&s).0, before.0);
        for n in FILES {
            assert!(!s.path().join(n).exists(), "{n} left in the state dir");
            assert!(r.removed.contains(&s.path().join(n)), "{n}: {r:?}");
        }
        assert_eq!(generations(&s).len(), 1);
    }

    #[test]
    fn flat_files_left_by_an_interrupted_migration_never_come_back() {
        let (_t, s) = fresh();
        s.init(false).unwrap();
        make_flat(&s);
        let flat = pins(&s);
        // a migration killed after its switch: flat files and a generation
        let g = generation::write(s.path(), &[]).unwrap();
        let fresh_ones = fresh();
        fresh_ones.1.init(false).unwrap();
        let src = fresh_ones.1.files().unwrap().dir;
        for n in FILES {
            std::fs::copy(src.join(n), s.path().join(&g).join(n)).unwrap();
        }
        generation::switch(s.path(), &g).unwrap();
        let new = pins(&s);
        assert_ne!(new, flat);
        s.init(false).unwrap();
        for n in FILES {
            assert!(!s.path().join(n).exists(), "{n}");
        }
        assert_eq!(pins(&s), new);
    }

    #[test]
    fn rotate_with_the_credential_keeps_its_device_key() {
        let t = tempfile::tempdir().unwrap();
        let creds = t.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        let cred = creds.join(CREDENTIAL_NAME);
        std::fs::write(&cred, [9u8; 32]).unwrap();
        std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = StateDir::new(t.path().join("state"), Some(creds));
        s.init(false).unwrap();
        let before = pins(&s);
        s.rotate().unwrap();
        assert!(!s.file(DEVICE_KEY).exists());
        let id = s.load().unwrap();
        assert_eq!(id.device_key.expose_secret(), &[9u8; 32]);
        assert_ne!(id.server_pin.to_string(), before.0);
    }

    #[test]
    fn current_pointing_outside_is_refused_everywhere() {
        let (t, s) = fresh();
        s.init(false).unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::remove_file(s.path().join(CURRENT)).unwrap();
        std::os::unix::fs::symlink(&outside, s.path().join(CURRENT)).unwrap();
        assert!(s.load().is_err());
        assert!(s.pin(false).is_err());
        assert!(!s.check_permissions(fsutil::euid()).is_empty());
        assert!(s.init(false).is_err());
        assert!(s.rotate().is_err());
        assert_eq!(
            generations(&s).len(),
            1,
            "a refused writer removed something"
        );
    }

    // ---- reset ----

    #[test]
    fn reset_removes_the_identity_and_leftovers_keeps_the_dir_and_strangers() {
        let (_t, s) = fresh();
        s.init(false).unwrap();
        let before = pins(&s);
        std::fs::write(s.path().join(".client.key.tmp.abcdef"), b"half").unwrap();
        std::fs::create_dir(s.path().join("id.ffffffffffffffff")).unwrap();
        std::fs::write(s.path().join("notes.txt"), b"the operator's").unwrap();
        let r = s.reset(fsutil::euid()).unwrap();
        assert_eq!(entries(s.path()), vec!["notes.txt".to_owned()]);
        assert_eq!(r.left.len(), 1, "{r:?}");
        assert!(r.left[0].0.ends_with("notes.txt"));
        assert!(r.removed.iter().any(|p| p.ends_with(SERVER_KEY)));
        assert!(r.removed.iter().any(|p| p.ends_with(CURRENT)));
        assert!(s.path().is_dir());
        assert!(s.load().is_err());
        assert_eq!(s.init(false).unwrap(), InitOutcome::Created);
        let after = pins(&s);
        assert_ne!(after.0, before.0);
        assert_ne!(after.1, before.1);
    }

    #[test]
    fn reset_removes_a_flat_identity_too() {
        let (_t, s) = fresh();
        s.init(false).unwrap();
        make_flat(&s);
        s.reset(fsutil::euid()).unwrap();
        assert!(entries(s.path()).is_empty(), "{:?}", entries(s.path()));
    }

    #[test]
    fn rotate_refuses_a_loose_dir_writing_nothing() {
        let (_t, s) = fresh();
        s.init(false).unwrap();
        let all = entries(s.path());
        let pin = s.pin(false).unwrap();
        for mode in [0o777, 0o770, 0o755, 0o711, 0o701] {
            std::fs::set_permissions(s.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            let e = s.rotate().unwrap_err().to_string();
            assert!(e.contains("chmod 700"), "{mode:o}: {e}");
            assert_eq!(entries(s.path()), all, "{mode:o}");
        }
        std::fs::set_permissions(s.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(s.pin(false).unwrap(), pin);
        s.rotate().unwrap();
        assert_ne!(s.pin(false).unwrap(), pin);
    }

    #[test]
    fn reset_refuses_a_missing_dir() {
        let (_t, s) = fresh();
        let e = s.reset(fsutil::euid()).unwrap_err();
        assert!(e[0].to_string().contains("does not exist"), "{}", e[0]);
        assert!(!s.path().exists());
    }

    #[test]
    fn reset_refuses_a_loose_or_foreign_dir_removing_nothing() {
        let (_t, s) = fresh();
        s.init(false).unwrap();
        let all = entries(s.path());
        std::fs::set_permissions(s.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = s.reset(fsutil::euid()).unwrap_err();
        assert!(e[0].to_string().contains("chmod 700"), "{}", e[0]);
        std::fs::set_permissions(s.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = s.reset(fsutil::euid().wrapping_add(4242)).unwrap_err();
        assert!(e[0].to_string().contains("owned by uid"), "{}", e[0]);
        assert_eq!(entries(s.path()), all);
        s.load().unwrap();
    }

    #[test]
    fn reset_refuses_a_state_dir_that_is_a_link() {
        let (t, s) = fresh();
        s.init(false).unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(s.path(), &link).unwrap();
        let e = StateDir::new(&link, None)
            .reset(fsutil::euid())
            .unwrap_err();
        assert!(e[0].to_string().contains("not a directory"), "{}", e[0]);
        s.load().unwrap();
    }

    #[test]
    fn reset_refuses_while_a_server_runs_on_the_dir() {
        let (_t, s) = fresh();
        s.init(false).unwrap();
        let serving = s.hold_serving().unwrap();
        let e = s.reset(fsutil::euid()).unwrap_err();
        assert!(e[0].to_string().contains("server is running"), "{}", e[0]);
        s.load().unwrap();
        drop(serving);
        s.reset(fsutil::euid()).unwrap();
    }

    #[test]
    fn reset_never_follows_a_planted_link() {
        let (t, s) = fresh();
        s.init(false).unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        for n in [SERVER_KEY, "victim"] {
            std::fs::write(outside.join(n), b"not screengate's").unwrap();
        }
        // a key in the generation replaced by a link to a file elsewhere
        let key = s.file(CLIENT_KEY);
        std::fs::remove_file(&key).unwrap();
        std::os::unix::fs::symlink(outside.join("victim"), &key).unwrap();
        // a flat name, a generation name and a temp name linking out
        std::os::unix::fs::symlink(outside.join(SERVER_KEY), s.path().join(SERVER_KEY)).unwrap();
        std::os::unix::fs::symlink(&outside, s.path().join("id.0123456789abcdef")).unwrap();
        std::os::unix::fs::symlink(outside.join("victim"), s.path().join(".x.tmp.1")).unwrap();
        std::os::unix::fs::symlink(&outside, s.path().join("control.sock")).unwrap();
        let r = s.reset(fsutil::euid()).unwrap();
        for n in [SERVER_KEY, "victim"] {
            assert_eq!(std::fs::read(outside.join(n)).unwrap(), b"not screengate's");
        }
        // only the link named like a socket (not a socket) is left, reported
        assert_eq!(entries(s.path()), vec!["control.sock".to_owned()]);
        assert_eq!(r.left.len(), 1, "{r:?}");
    }
}
