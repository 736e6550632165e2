//! The identity as one set: generation directories and the one switch
//! between them, the locks that keep writers apart and tell a running
//! server, and the removal of what is no longer in force.
//!
//! ```text
//! <state-dir>/
//!   current -> id.<16 hex>   symbolic link: the generation in force
//!   id.<16 hex>/             0700: device.key server.key server.crt client.key client.crt
//!   .lock                    0600, empty: init, rotate and reset hold it (flock)
//! ```
//!
//! A new identity is written whole into a fresh `id.*` directory (each
//! file through [`fsutil::atomic_write`], then the directory and the state
//! dir fsynced) before `current` is switched to it by one `rename(2)` of a
//! new link over the old one: the commit point. A SIGKILL or power cut
//! before it leaves the old identity in force, after it the new one; a
//! reader follows `current` once and reads one directory, so it never sees
//! a mix. Whatever is not `current`'s target is garbage: the next writer
//! removes it (overwriting key bytes first).
//!
//! What the files hold and how they are loaded is `state.rs`'s; atomic
//! writes and permission rules are `fsutil`'s.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use rand::RngCore;

use crate::error::IdentityError;
use crate::fsutil;

/// The link naming the generation in force.
pub const CURRENT: &str = "current";
/// The writers' lock file.
pub const LOCK: &str = ".lock";
/// How a generation directory's name starts.
const PREFIX: &str = "id.";
/// How long a writer waits for another writer (init, rotate, reset are
/// each well under a second); then it gives up and says who holds it.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// A fresh generation name: `id.` and 16 random hex digits.
fn new_name() -> String {
    let mut b = [0u8; 8];
    rand::rng().fill_bytes(&mut b);
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{PREFIX}{hex}")
}

/// Whether `name` is a generation directory's name.
pub(crate) fn is_name(name: &str) -> bool {
    name.strip_prefix(PREFIX).is_some_and(|h| {
        h.len() == 16
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The generation `current` names, `None` when there is no `current`
/// (a fresh dir, or the flat layout of versions before generations). A
/// `current` that is not a link to a generation directory of this state
/// dir is an error, never followed.
pub(crate) fn current(dir: &Path) -> Result<Option<String>, IdentityError> {
    let link = dir.join(CURRENT);
    match std::fs::symlink_metadata(&link) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(IdentityError::io(&link, "stat", e)),
        Ok(m) if !m.file_type().is_symlink() => {
            return Err(IdentityError::Corrupt {
                path: link,
                what: "is not a symbolic link to a generation directory".into(),
            });
        }
        Ok(_) => {}
    }
    let target = std::fs::read_link(&link).map_err(|e| IdentityError::io(&link, "readlink", e))?;
    let name = target
        .to_str()
        .filter(|t| is_name(t))
        .ok_or_else(|| IdentityError::Corrupt {
            path: link.clone(),
            what: format!(
                "points to {}, not to a generation directory of this state directory",
                target.display()
            ),
        })?;
    let gen_dir = dir.join(name);
    match std::fs::symlink_metadata(&gen_dir) {
        Ok(m) if m.is_dir() => Ok(Some(name.to_owned())),
        Ok(_) => Err(IdentityError::Corrupt {
            path: gen_dir,
            what: "is not a directory".into(),
        }),
        Err(e) => Err(IdentityError::io(&gen_dir, "stat", e)),
    }
}

/// Takes the writers' lock of `dir` (init, rotate and reset hold it while
/// they change anything), waiting at most [`LOCK_WAIT`]. Released when
/// the returned value drops, or when the process dies (SIGKILL included).
pub(crate) fn lock_writers(dir: &Path) -> Result<Flock<File>, IdentityError> {
    let p = dir.join(LOCK);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(OFlag::O_NOFOLLOW.bits() | OFlag::O_CLOEXEC.bits())
        .open(&p)
        .map_err(|e| IdentityError::io(&p, "open lock file", e))?;
    flock(f, FlockArg::LockExclusiveNonblock, LOCK_WAIT).map_err(|e| match e {
        Errno::EWOULDBLOCK => IdentityError::Busy {
            path: dir.to_owned(),
            what: format!(
                "another `screengate init`, `rotate` or `reset` has held it for {} s; try again when it is done",
                LOCK_WAIT.as_secs()
            ),
        },
        e => IdentityError::io(&p, "flock", std::io::Error::from(e)),
    })
}

/// Held by a running server for its whole life: a shared lock on the
/// state directory itself. `reset` takes it exclusively ([`no_server`]),
/// so it sees a server of this version that runs on the dir, whatever
/// user, socket or config it runs with, and a dead one releases it.
#[derive(Debug)]
pub struct ServingLock(#[allow(dead_code)] Flock<File>); // held, never read

pub(crate) fn lock_serving(dir: &Path) -> Result<ServingLock, IdentityError> {
    let f = open_dir(dir)?;
    flock(f, FlockArg::LockSharedNonblock, Duration::ZERO)
        .map(ServingLock)
        .map_err(|e| match e {
            Errno::EWOULDBLOCK => IdentityError::Busy {
                path: dir.to_owned(),
                what: "a `screengate reset` is removing this state directory's identity".into(),
            },
            e => IdentityError::io(dir, "flock", std::io::Error::from(e)),
        })
}

/// Refuses while a server holds its [`ServingLock`] on `dir`; holds the
/// dir exclusively until dropped, so no server starts meanwhile.
pub(crate) fn no_server(dir: &Path) -> Result<Flock<File>, IdentityError> {
    let f = open_dir(dir)?;
    flock(f, FlockArg::LockExclusiveNonblock, Duration::ZERO).map_err(|e| match e {
        Errno::EWOULDBLOCK => IdentityError::Busy {
            path: dir.to_owned(),
            what: "a screengate server is running on this state directory; stop it first (systemctl stop screengate)".into(),
        },
        e => IdentityError::io(dir, "flock", std::io::Error::from(e)),
    })
}

fn open_dir(dir: &Path) -> Result<File, IdentityError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(
            OFlag::O_DIRECTORY.bits() | OFlag::O_NOFOLLOW.bits() | OFlag::O_CLOEXEC.bits(),
        )
        .open(dir)
        .map_err(|e| IdentityError::io(dir, "open directory", e))
}

/// `flock` without blocking, retried every 20 ms for at most `wait`.
fn flock(mut f: File, arg: FlockArg, wait: Duration) -> Result<Flock<File>, Errno> {
    let deadline = Instant::now() + wait;
    loop {
        match Flock::lock(f, arg) {
            Ok(l) => return Ok(l),
            Err((back, Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                f = back;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err((_, e)) => return Err(e),
        }
    }
}

/// One file of a generation: name, bytes, mode.
pub(crate) type Part<'a> = (&'static str, &'a [u8], u32);

/// Writes `parts` into a fresh generation directory of `dir` and makes it
/// durable; returns its name. Not in force until [`switch`]. On an error
/// the partial directory is removed.
pub(crate) fn write(dir: &Path, parts: &[Part<'_>]) -> Result<String, IdentityError> {
    let name = new_name();
    let g = dir.join(&name);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&g) // not recursive: the name must be new
        .map_err(|e| IdentityError::io(&g, "create directory", e))?;
    let written = (|| {
        std::fs::set_permissions(&g, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| IdentityError::io(&g, "chmod", e))?;
        for (file, data, mode) in parts {
            fsutil::atomic_write(&g.join(file), data, *mode)?;
        }
        fsutil::sync_dir(&g)?;
        fsutil::sync_dir(dir)
    })();
    if let Err(e) = written {
        let _ = remove_generation(dir, &name, &mut Removal::default());
        return Err(e);
    }
    Ok(name)
}

/// Puts generation `name` in force: a new link renamed over `current`
/// (one `rename(2)`: the commit point), then the state dir fsynced.
pub(crate) fn switch(dir: &Path, name: &str) -> Result<(), IdentityError> {
    let tmp = fsutil::temp_path(dir, CURRENT);
    std::os::unix::fs::symlink(name, &tmp)
        .map_err(|e| IdentityError::io(&tmp, "create link", e))?;
    let link = dir.join(CURRENT);
    if let Err(e) = std::fs::rename(&tmp, &link) {
        let _ = std::fs::remove_file(&tmp);
        return Err(IdentityError::io(&link, "rename into place", e));
    }
    fsutil::sync_dir(dir)
}

/// What a removal did: each path removed, each one left with why.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Removal {
    /// Removed (regular files overwritten first).
    pub removed: Vec<PathBuf>,
    /// Left in place, with the reason.
    pub left: Vec<(PathBuf, String)>,
}

impl Removal {
    pub(crate) fn shred(&mut self, path: &Path) {
        match fsutil::shred(path) {
            Ok(true) => self.removed.push(path.to_owned()),
            Ok(false) => {}
            Err(e) => self.left.push((path.to_owned(), e.to_string())),
        }
    }
}

/// Removes generation `name`: the identity files and staged temp files in
/// it (overwritten first), then the directory. A link named like a
/// generation is unlinked, never followed; a name screengate does not
/// make is left and reported.
pub(crate) fn remove_generation(dir: &Path, name: &str, r: &mut Removal) -> Result<(), ()> {
    let g = dir.join(name);
    let meta = match std::fs::symlink_metadata(&g) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            r.left.push((g, format!("stat: {e}")));
            return Err(());
        }
    };
    if !meta.is_dir() {
        // a link (or file) where a generation would be: the name itself goes
        r.shred(&g);
        return Ok(());
    }
    if meta.uid() != fsutil::euid() {
        r.left
            .push((g, format!("owned by uid {}, not this user", meta.uid())));
        return Err(());
    }
    let entries = match std::fs::read_dir(&g) {
        Ok(e) => e,
        Err(e) => {
            r.left.push((g, format!("read directory: {e}")));
            return Err(());
        }
    };
    for e in entries.flatten() {
        let n = e.file_name();
        let n = n.to_string_lossy();
        if crate::state::FILES.contains(&n.as_ref()) || fsutil::is_temp_name(&n) {
            r.shred(&e.path());
        } else {
            r.left.push((
                e.path(),
                "not a file screengate makes; left as it is".into(),
            ));
        }
    }
    match std::fs::remove_dir(&g) {
        Ok(()) => {
            r.removed.push(g);
            Ok(())
        }
        Err(e) => {
            r.left.push((g, format!("rmdir: {e}")));
            Err(())
        }
    }
}

/// Removes what an interrupted writer left in `dir`, given the generation
/// in force: staged temp files and links, every other generation, and
/// (once a generation is in force) the flat-layout files it replaced.
/// Only under the writers' lock: another writer's unfinished generation
/// looks exactly like a leftover.
pub(crate) fn tidy(dir: &Path, current: Option<&str>) -> Removal {
    let mut r = Removal::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return r;
    };
    for e in entries.flatten() {
        let n = e.file_name();
        let n = n.to_string_lossy();
        if fsutil::is_temp_name(&n) {
            r.shred(&e.path());
        } else if is_name(&n) && Some(n.as_ref()) != current {
            let _ = remove_generation(dir, &n, &mut r);
        } else if current.is_some() && crate::state::FILES.contains(&n.as_ref()) {
            r.shred(&e.path());
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_recognised_exactly() {
        let n = new_name();
        assert!(is_name(&n), "{n}");
        assert_ne!(n, new_name());
        for bad in [
            "id.",
            "id.0123456789abcdef0",
            "id.0123456789abcdeF",
            "id.0123456789abcdeg",
            "../id.0123456789abcdef",
            "id.0123456789abcde/",
            "/tmp",
            "current",
        ] {
            assert!(!is_name(bad), "{bad}");
        }
    }

    #[test]
    fn current_refuses_a_link_out_of_the_state_dir() {
        let d = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(other.path(), d.path().join(CURRENT)).unwrap();
        let e = current(d.path()).unwrap_err().to_string();
        assert!(e.contains("not to a generation directory"), "{e}");
    }

    #[test]
    fn current_refuses_a_generation_that_is_a_link() {
        let d = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let n = new_name();
        std::os::unix::fs::symlink(other.path(), d.path().join(&n)).unwrap();
        std::os::unix::fs::symlink(&n, d.path().join(CURRENT)).unwrap();
        assert!(
            current(d.path())
                .unwrap_err()
                .to_string()
                .contains("not a directory")
        );
    }

    #[test]
    fn current_refuses_a_regular_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(CURRENT), "id.0123456789abcdef").unwrap();
        assert!(matches!(
            current(d.path()),
            Err(IdentityError::Corrupt { .. })
        ));
    }

    #[test]
    fn switch_replaces_the_link_in_one_step_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let a = write(d.path(), &[("server.crt", b"a", 0o644)]).unwrap();
        switch(d.path(), &a).unwrap();
        assert_eq!(current(d.path()).unwrap().as_deref(), Some(a.as_str()));
        let b = write(d.path(), &[("server.crt", b"b", 0o644)]).unwrap();
        assert_eq!(current(d.path()).unwrap().as_deref(), Some(a.as_str()));
        switch(d.path(), &b).unwrap();
        assert_eq!(current(d.path()).unwrap().as_deref(), Some(b.as_str()));
        assert_eq!(
            std::fs::read(d.path().join(CURRENT).join("server.crt")).unwrap(),
            b"b"
        );
        let temps = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .filter(|e| fsutil::is_temp_name(&e.file_name().to_string_lossy()))
            .count();
        assert_eq!(temps, 0);
    }

    #[test]
    fn tidy_removes_other_generations_temps_and_replaced_flat_files_only() {
        let d = tempfile::tempdir().unwrap();
        let keep = write(d.path(), &[("server.key", b"new", 0o600)]).unwrap();
        let old = write(d.path(), &[("server.key", b"old", 0o600)]).unwrap();
        switch(d.path(), &keep).unwrap();
        std::fs::write(d.path().join("server.key"), b"flat").unwrap();
        std::fs::write(d.path().join(".server.key.tmp.abcdef"), b"half").unwrap();
        std::fs::write(d.path().join("unrelated"), b"mine").unwrap();
        let r = tidy(d.path(), Some(&keep));
        assert!(!d.path().join(&old).exists());
        assert!(!d.path().join("server.key").exists());
        assert!(!d.path().join(".server.key.tmp.abcdef").exists());
        assert_eq!(
            std::fs::read(d.path().join(&keep).join("server.key")).unwrap(),
            b"new"
        );
        assert!(d.path().join("unrelated").exists());
        assert!(r.left.is_empty(), "{r:?}");
        // without a generation in force, flat files are the identity: kept
        std::fs::write(d.path().join("device.key"), [1u8; 32]).unwrap();
        tidy(d.path(), None);
        assert!(d.path().join("device.key").exists());
    }

    #[test]
    fn removing_a_generation_never_follows_links() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("precious");
        std::fs::write(&target, b"keep me").unwrap();
        let g = write(d.path(), &[("server.key", b"k", 0o600)]).unwrap();
        std::fs::remove_file(d.path().join(&g).join("server.key")).unwrap();
        std::os::unix::fs::symlink(&target, d.path().join(&g).join("server.key")).unwrap();
        // a generation name that is a link to a directory elsewhere
        let fake = new_name();
        std::fs::write(outside.path().join("client.key"), b"keep me too").unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join(&fake)).unwrap();
        let r = tidy(d.path(), None);
        assert!(r.left.is_empty(), "{r:?}");
        assert!(!d.path().join(&g).exists());
        assert!(std::fs::symlink_metadata(d.path().join(&fake)).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
        assert_eq!(
            std::fs::read(outside.path().join("client.key")).unwrap(),
            b"keep me too"
        );
    }

    #[test]
    fn shred_overwrites_before_unlinking_but_not_a_shared_inode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        std::fs::write(&p, b"secret").unwrap();
        // a second name on the same inode sees the overwrite
        let twin = d.path().join("twin");
        std::fs::hard_link(&p, &twin).unwrap();
        assert!(fsutil::shred(&p).unwrap());
        assert_eq!(
            std::fs::read(&twin).unwrap(),
            b"secret",
            "shared inode kept"
        );
        let q = d.path().join("q");
        std::fs::write(&q, b"secret").unwrap();
        let f = File::open(&q).unwrap();
        assert!(fsutil::shred(&q).unwrap());
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut &f, &mut back).unwrap();
        assert_eq!(
            back, [0u8; 6],
            "the bytes were overwritten before the unlink"
        );
        assert!(!fsutil::shred(&q).unwrap());
    }

    #[test]
    fn a_second_writer_waits_and_a_server_blocks_reset() {
        let d = tempfile::tempdir().unwrap();
        let l = lock_writers(d.path()).unwrap();
        let dir = d.path().to_owned();
        let h = std::thread::spawn(move || lock_writers(&dir).map(drop));
        std::thread::sleep(Duration::from_millis(100));
        drop(l);
        h.join().unwrap().unwrap();
        let s = lock_serving(d.path()).unwrap();
        let e = no_server(d.path()).unwrap_err().to_string();
        assert!(e.contains("server is running"), "{e}");
        let s2 = lock_serving(d.path()).unwrap(); // servers share it
        drop((s, s2));
        let r = no_server(d.path()).unwrap();
        assert!(lock_serving(d.path()).is_err());
        drop(r);
    }
}
