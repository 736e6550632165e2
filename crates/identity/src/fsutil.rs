//! File rules: atomic writes and OpenSSH-style ownership/permission checks.
//!
//! Atomic write: a temp file created `0600` with `O_EXCL` in the same
//! directory, written, fsynced, renamed over the target, and the directory
//! fsynced, so a power cut leaves the old file or the new one, never half.
//!
//! Checks return every problem found, each naming the path, what is wrong
//! and the exact command that fixes it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use rand::RngCore;

use crate::error::IdentityError;

/// Largest file we will read as a key or certificate; anything bigger is not
/// one of ours and is refused rather than read into memory.
pub const MAX_IDENTITY_FILE: u64 = 64 * 1024;

/// Writes `data` to `path` atomically with mode `mode`.
pub fn atomic_write(path: &Path, data: &[u8], mode: u32) -> Result<(), IdentityError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = temp_path(dir, name);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true) // O_CREAT | O_EXCL
            .mode(0o600)
            .custom_flags(OFlag::O_NOFOLLOW.bits() | OFlag::O_CLOEXEC.bits())
            .open(&tmp)
            .map_err(|e| IdentityError::io(&tmp, "create temp file", e))?;
        f.write_all(data)
            .map_err(|e| IdentityError::io(&tmp, "write", e))?;
        if mode != 0o600 {
            f.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(|e| IdentityError::io(&tmp, "chmod", e))?;
        }
        f.sync_all()
            .map_err(|e| IdentityError::io(&tmp, "fsync", e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| IdentityError::io(path, "rename into place", e))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `DIR/.NAME.tmp.<12 random hex>`: where an atomic write of `DIR/NAME`
/// stages its bytes ([`is_temp_name`] recognises it).
pub(crate) fn temp_path(dir: &Path, name: &str) -> PathBuf {
    let mut suffix = [0u8; 6];
    rand::rng().fill_bytes(&mut suffix);
    let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    dir.join(format!(".{name}.tmp.{suffix}"))
}

/// Whether `name` is a [`temp_path`] left by an interrupted write.
pub(crate) fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp.")
}

/// Overwrites the regular file at `path` with zeros, fsyncs it, then
/// unlinks it: key bytes do not linger in freed blocks, where the
/// filesystem writes in place (ext4, xfs; not a copy-on-write filesystem
/// or a flash translation layer, which may keep the old blocks). Never
/// follows a link: a symbolic link (or anything but a regular file) is
/// unlinked itself, its target untouched. A file with other hard links,
/// or owned by another uid, is not overwritten: it is not only ours.
/// `Ok(false)` when nothing was there.
pub fn shred(path: &Path) -> Result<bool, IdentityError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(IdentityError::io(path, "stat", e)),
    };
    if meta.is_file() && meta.nlink() == 1 && meta.uid() == euid() {
        let mut f = OpenOptions::new()
            .write(true)
            .custom_flags(
                OFlag::O_NOFOLLOW.bits() | OFlag::O_CLOEXEC.bits() | OFlag::O_NONBLOCK.bits(),
            )
            .open(path)
            .map_err(|e| IdentityError::io(path, "open to overwrite", e))?;
        let m = f
            .metadata()
            .map_err(|e| IdentityError::io(path, "stat", e))?;
        // the file opened is the one looked at (no swap in between)
        if m.is_file() && m.ino() == meta.ino() && m.dev() == meta.dev() {
            let zeros = [0u8; 4096];
            // bounded: ours are a few KiB; anything huge is not a key
            let len = usize::try_from(m.len().min(MAX_IDENTITY_FILE * 16)).unwrap_or(0);
            for chunk in (0..len).step_by(zeros.len()) {
                let n = (len - chunk).min(zeros.len());
                f.write_all(&zeros[..n])
                    .map_err(|e| IdentityError::io(path, "overwrite", e))?;
            }
            f.sync_all()
                .map_err(|e| IdentityError::io(path, "fsync", e))?;
        }
    }
    std::fs::remove_file(path).map_err(|e| IdentityError::io(path, "unlink", e))?;
    Ok(true)
}

/// Removes leftover `.NAME.tmp.*` files from an interrupted atomic write
/// (overwritten first: a staged key is a key).
pub fn remove_stale_temps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if is_temp_name(&e.file_name().to_string_lossy()) {
            let _ = shred(&e.path());
        }
    }
}

/// fsyncs the directory `dir`, so the names just made in it survive a
/// power cut.
pub fn sync_dir(dir: &Path) -> Result<(), IdentityError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| IdentityError::io(dir, "fsync directory", e))
}

/// Creates `dir` (and parents) if missing, the last component with mode 0700.
pub fn ensure_private_dir(dir: &Path) -> Result<(), IdentityError> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| IdentityError::io(dir, "create directory", e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| IdentityError::io(dir, "chmod", e))?;
    }
    Ok(())
}

/// Reads a small regular file without following a symlink in its last
/// component; `Ok(None)` when it does not exist. Opened `O_NONBLOCK`: a
/// FIFO in a file's place is refused as not a regular file instead of
/// blocking the open until a writer comes (`load`, so `serve`, `check`
/// and `pin`, would hang).
pub fn read_private(path: &Path) -> Result<Option<Vec<u8>>, IdentityError> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(
            OFlag::O_NOFOLLOW.bits()
                | OFlag::O_CLOEXEC.bits()
                | OFlag::O_NONBLOCK.bits()
                | OFlag::O_NOCTTY.bits(),
        )
        .open(path);
    let f = match f {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => return Err(link_refused(path)),
        Err(e) => return Err(IdentityError::io(path, "open", e)),
    };
    let meta = f
        .metadata()
        .map_err(|e| IdentityError::io(path, "stat", e))?;
    if !meta.is_file() {
        return Err(IdentityError::Corrupt {
            path: path.to_owned(),
            what: "is not a regular file".into(),
        });
    }
    if meta.len() > MAX_IDENTITY_FILE {
        return Err(IdentityError::Corrupt {
            path: path.to_owned(),
            what: format!("is {} bytes, larger than any identity file", meta.len()),
        });
    }
    let mut buf = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    f.take(MAX_IDENTITY_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| IdentityError::io(path, "read", e))?;
    Ok(Some(buf))
}

/// An `O_NOFOLLOW` open met a link: refused, with the command that fixes it.
fn link_refused(path: &Path) -> IdentityError {
    IdentityError::Permissions {
        path: path.to_owned(),
        what: "is a symbolic link".into(),
        fix: format!(
            "replace it with the real file: cp --remove-destination \"$(readlink -f {0})\" {0}",
            path.display()
        ),
    }
}

/// What a checked path is, which decides the rule applied to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Private key material: regular file, owner only, mode 0600 or stricter.
    Secret,
    /// Public but integrity-relevant (certificates, config): regular file,
    /// owned by the service user or root, not writable by group or others.
    Protected,
    /// A state directory: owned by the service user, mode 0700.
    PrivateDir,
}

/// Checks one path against the rule for `kind`, for the service user `uid`.
/// A missing path is not a problem here (callers decide that).
pub fn check_path(path: &Path, kind: Kind, uid: u32) -> Vec<IdentityError> {
    let mut problems = Vec::new();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return problems,
        Err(e) => {
            problems.push(IdentityError::io(path, "stat", e));
            return problems;
        }
    };
    let p = path.display();
    let perm = |what: String, fix: String| IdentityError::Permissions {
        path: path.to_owned(),
        what,
        fix,
    };
    if meta.file_type().is_symlink() {
        problems.push(perm(
            "is a symbolic link; screengate does not follow links for protected files".into(),
            format!("replace the link with the file itself: cp --remove-destination \"$(readlink -f {p})\" {p}"),
        ));
        return problems;
    }
    problems.extend(check_meta(path, &meta, kind, uid));
    problems
}

/// The rule for `kind` applied to `meta` (from `lstat` of the path, or
/// `fstat` of an open file, which is what is actually read).
pub fn check_meta(
    path: &Path,
    meta: &std::fs::Metadata,
    kind: Kind,
    uid: u32,
) -> Vec<IdentityError> {
    let mut problems = Vec::new();
    let p = path.display();
    let perm = |what: String, fix: String| IdentityError::Permissions {
        path: path.to_owned(),
        what,
        fix,
    };
    let mode = meta.mode() & 0o7777;
    match kind {
        Kind::PrivateDir => {
            if !meta.is_dir() {
                problems.push(perm(
                    "is not a directory".into(),
                    format!("mv {p} {p}.bak && mkdir -m 700 {p}"),
                ));
                return problems;
            }
            if meta.uid() != uid {
                problems.push(perm(
                    format!(
                        "is owned by uid {}, not the service user (uid {uid})",
                        meta.uid()
                    ),
                    format!("chown {uid} {p}"),
                ));
            }
            if mode & 0o077 != 0 {
                problems.push(perm(
                    format!("has mode {mode:04o}; must be 0700 (no access for group or others)"),
                    format!("chmod 700 {p}"),
                ));
            }
        }
        Kind::Secret => {
            if !meta.is_file() {
                problems.push(perm(
                    "is not a regular file".into(),
                    format!("replace {p} with the key file itself (screengate's own keys: remove it and run `screengate init`)"),
                ));
                return problems;
            }
            if meta.uid() != uid {
                problems.push(perm(
                    format!(
                        "is owned by uid {}, not the service user (uid {uid})",
                        meta.uid()
                    ),
                    format!("chown {uid} {p}"),
                ));
            }
            if mode & 0o077 != 0 {
                problems.push(perm(
                    format!(
                        "has mode {mode:04o}; a private key must be readable by its owner only"
                    ),
                    format!("chmod 600 {p}"),
                ));
            }
        }
        Kind::Protected => {
            if !meta.is_file() {
                problems.push(perm(
                    "is not a regular file".into(),
                    format!("replace {p} with a regular file"),
                ));
                return problems;
            }
            if meta.uid() != uid && meta.uid() != 0 {
                problems.push(perm(
                    format!(
                        "is owned by uid {}, neither the service user (uid {uid}) nor root",
                        meta.uid()
                    ),
                    format!("chown {uid} {p}"),
                ));
            }
            if mode & 0o022 != 0 {
                problems.push(perm(
                    format!("has mode {mode:04o}; must not be writable by group or others"),
                    format!("chmod go-w {p}"),
                ));
            }
        }
    }
    problems
}

/// Reads a file another program provides (e.g. the SDK's certificates
/// and client key) under the rule for `kind`: no link in the last
/// component, `O_NONBLOCK` (a FIFO swapped in never blocks the start),
/// the rule checked on the open file (`fstat`, so a swap after a path
/// check is caught), at most [`MAX_IDENTITY_FILE`] bytes, and every
/// directory above it owned by root or `uid` and not writable by group or
/// others unless sticky ([`check_parents`]).
pub fn read_checked(path: &Path, kind: Kind, uid: u32) -> Result<Vec<u8>, Vec<IdentityError>> {
    let parents = check_parents(path, uid);
    if !parents.is_empty() {
        return Err(parents);
    }
    // Open through the directories just checked (links resolved), not the
    // path as given: a link in it lives in a directory nobody checked.
    let real = match (resolved_dir(path), path.file_name()) {
        (Ok(dir), Some(name)) => dir.join(name),
        (Err(e), _) => return Err(vec![e]),
        (_, None) => path.to_owned(),
    };
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(
            OFlag::O_NOFOLLOW.bits()
                | OFlag::O_CLOEXEC.bits()
                | OFlag::O_NONBLOCK.bits()
                | OFlag::O_NOCTTY.bits(),
        )
        .open(&real)
        .map_err(|e| {
            vec![if e.raw_os_error() == Some(nix::libc::ELOOP) {
                link_refused(path)
            } else {
                IdentityError::io(path, "open", e)
            }]
        })?;
    let meta = f
        .metadata()
        .map_err(|e| vec![IdentityError::io(path, "stat", e)])?;
    let problems = check_meta(path, &meta, kind, uid);
    if !problems.is_empty() {
        return Err(problems);
    }
    if meta.len() > MAX_IDENTITY_FILE {
        return Err(vec![IdentityError::Permissions {
            path: path.to_owned(),
            what: format!(
                "is {} bytes, larger than any certificate or key file ({MAX_IDENTITY_FILE})",
                meta.len()
            ),
            fix: format!(
                "point the setting at the right file instead of {}",
                path.display()
            ),
        }]);
    }
    let mut buf = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    f.take(MAX_IDENTITY_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| vec![IdentityError::io(path, "read", e)])?;
    Ok(buf)
}

/// Every directory above `path` (resolved) must be owned by root or `uid`
/// and not writable by group or others unless sticky: otherwise another
/// uid could rename the file away and put its own in place between our
/// check and our read, or at the next start.
pub fn check_parents(path: &Path, uid: u32) -> Vec<IdentityError> {
    let dir = match resolved_dir(path) {
        Ok(d) => d,
        Err(e) => return vec![e],
    };
    // The directories the path names as written (a link among them lives
    // in the one above it, which whoever may write it could repoint) and
    // those it resolves to.
    let mut dirs: Vec<PathBuf> = Vec::new();
    if path.is_absolute() {
        for a in path.ancestors().skip(1) {
            let is_dir = std::fs::symlink_metadata(a).is_ok_and(|m| m.is_dir());
            if is_dir && !dirs.iter().any(|d| d == a) {
                dirs.push(a.to_owned());
            }
        }
    }
    for a in dir.ancestors() {
        if !dirs.iter().any(|d| d == a) {
            dirs.push(a.to_owned());
        }
    }
    let mut problems = Vec::new();
    for a in dirs.iter().map(PathBuf::as_path) {
        let meta = match std::fs::symlink_metadata(a) {
            Ok(m) => m,
            Err(e) => {
                problems.push(IdentityError::io(a, "stat", e));
                continue;
            }
        };
        let mode = meta.mode() & 0o7777;
        if meta.uid() != 0 && meta.uid() != uid {
            problems.push(IdentityError::Permissions {
                path: a.to_owned(),
                what: format!(
                    "(a directory above {}) is owned by uid {}, neither the service user (uid {uid}) nor root",
                    path.display(),
                    meta.uid()
                ),
                fix: format!("chown root {}", a.display()),
            });
        }
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            problems.push(IdentityError::Permissions {
                path: a.to_owned(),
                what: format!(
                    "(a directory above {}) has mode {mode:04o}: others could swap the file",
                    path.display()
                ),
                fix: format!("chmod go-w {}", a.display()),
            });
        }
    }
    problems
}

/// The directory holding `path`, with every link resolved.
fn resolved_dir(path: &Path) -> Result<PathBuf, IdentityError> {
    let dir = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(d) => d,
        None => Path::new("."),
    };
    std::fs::canonicalize(dir).map_err(|e| IdentityError::io(dir, "resolve directory", e))
}

/// The effective uid of this process.
pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// A path joined for messages.
pub fn join(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_creates_with_mode_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        atomic_write(&p, b"hello", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"hello");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        atomic_write(&p, b"world", 0o644).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"world");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o644);
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn check_flags_loose_secret_with_fix() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        std::fs::write(&p, b"x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let probs = check_path(&p, Kind::Secret, euid());
        assert_eq!(probs.len(), 1);
        let msg = probs[0].to_string();
        assert!(msg.contains("chmod 600"), "{msg}");
        assert!(msg.contains(&p.display().to_string()));
    }

    #[test]
    fn check_flags_wrong_owner() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        std::fs::write(&p, b"x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let probs = check_path(&p, Kind::Secret, euid().wrapping_add(4242));
        assert!(probs.iter().any(|e| e.to_string().contains("chown")));
    }

    #[test]
    fn check_flags_symlinked_secret() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real");
        std::fs::write(&real, b"x").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let probs = check_path(&link, Kind::Secret, euid());
        assert!(probs[0].to_string().contains("symbolic link"));
        assert!(matches!(
            read_private(&link),
            Err(IdentityError::Permissions { .. })
        ));
    }

    #[test]
    fn a_fifo_in_a_files_place_is_refused_not_waited_on() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("server.crt");
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(read_private(&p).map(|_| ()).map_err(|e| e.to_string()));
        });
        // a hang guard, not a timing claim: the open must not wait for a writer
        let got = finished
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("read_private blocked on a FIFO");
        let e = got.unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn check_flags_open_state_dir_and_group_writable_config() {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
        let probs = check_path(d.path(), Kind::PrivateDir, euid());
        assert!(probs[0].to_string().contains("chmod 700"));
        let c = d.path().join("c.toml");
        std::fs::write(&c, b"").unwrap();
        std::fs::set_permissions(&c, std::fs::Permissions::from_mode(0o664)).unwrap();
        let probs = check_path(&c, Kind::Protected, euid());
        assert!(probs[0].to_string().contains("chmod go-w"));
    }

    #[test]
    fn strict_paths_pass() {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(check_path(d.path(), Kind::PrivateDir, euid()).is_empty());
        let p = d.path().join("k");
        atomic_write(&p, b"x", 0o600).unwrap();
        assert!(check_path(&p, Kind::Secret, euid()).is_empty());
    }
}
