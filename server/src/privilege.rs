//! Least privilege for the `screengate` commands: refuse root, or start as
//! root with `--user NAME`, prepare the directories that user needs, drop
//! to it for good and prove root cannot be regained; make the process
//! non-dumpable; refuse an executable the service user could rewrite.
//!
//! Lives in the command path (`main.rs` calls it before `run`), not in
//! `Server::bind`: the library is also run in-process by tests.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Group, Uid, User};

/// Why the process may not run as it is.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// Started as root without `--user`.
    #[error(
        "root execution is not permitted; run as the service user, or start as root with --user NAME (config: user = \"NAME\") to drop to it"
    )]
    Root,
    /// `--user` given but not started as root.
    #[error("--user {0} needs to start as root; already running as uid {1}: run without --user")]
    UserWithoutRoot(String, u32),
    /// The named user or group does not exist.
    #[error("{kind} `{name}` does not exist")]
    NoSuchName {
        /// "user" or "group".
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// The service user is root.
    #[error("--user {0} is root (uid 0); name an unprivileged service user")]
    RootUser(String),
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What we were doing.
        what: String,
        /// The error.
        source: nix::Error,
    },
    /// Root could be regained after the drop: abort rather than run.
    #[error("privilege drop did not stick ({0}); refusing to run")]
    NotDropped(String),
    /// A directory could not be prepared.
    #[error("{path}: {what}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// What failed.
        what: String,
    },
    /// The executable could be rewritten by the service user.
    #[error("{path}: {what}; a compromised service could persist by rewriting it; fix: {fix}")]
    WritableExe {
        /// The binary or its directory.
        path: PathBuf,
        /// Why it is writable.
        what: String,
        /// The fix.
        fix: String,
    },
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> PrivilegeError {
    let what = what.into();
    move |source| PrivilegeError::Sys { what, source }
}

/// Non-dumpable (no ptrace, no `/proc/PID/mem|environ|fd` for other
/// processes of the same uid, no core with keys) and a zero core limit.
/// Call at start and again after a uid change (which resets the flag).
pub fn harden_process() -> Result<(), PrivilegeError> {
    nix::sys::prctl::set_dumpable(false).map_err(sys("prctl(PR_SET_DUMPABLE, 0)"))?;
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0)
        .map_err(sys("setrlimit(RLIMIT_CORE, 0)"))?;
    Ok(())
}

/// A directory the service user needs, created before the drop.
#[derive(Debug, Clone)]
pub struct NeededDir {
    /// The path.
    pub path: PathBuf,
    /// Mode when created.
    pub mode: u32,
}

/// Who the process runs as after [`enforce`].
#[derive(Debug, Clone, Copy)]
pub struct RunningAs {
    /// The uid.
    pub uid: u32,
    /// Whether a drop happened.
    pub dropped: bool,
}

/// Applies the root rule. As root with `user`: creates `dirs` (owned by
/// the user), clears supplementary groups except `keep_groups` (the socket
/// groups the user must be able to give its sockets to), sets gid then uid
/// (real, effective and saved), and verifies root cannot be regained.
pub fn enforce(
    user: Option<&str>,
    dirs: &[NeededDir],
    keep_groups: &[String],
) -> Result<RunningAs, PrivilegeError> {
    let euid = nix::unistd::geteuid();
    match (euid.is_root(), user) {
        (false, None) => Ok(RunningAs {
            uid: euid.as_raw(),
            dropped: false,
        }),
        (false, Some(name)) => {
            let u = User::from_name(name).map_err(sys(format!("look up user {name}")))?;
            match u {
                Some(u) if u.uid == euid => Ok(RunningAs {
                    uid: euid.as_raw(),
                    dropped: false,
                }),
                _ => Err(PrivilegeError::UserWithoutRoot(
                    name.to_owned(),
                    euid.as_raw(),
                )),
            }
        }
        (true, None) => Err(PrivilegeError::Root),
        (true, Some(name)) => {
            let u = User::from_name(name)
                .map_err(sys(format!("look up user {name}")))?
                .ok_or_else(|| PrivilegeError::NoSuchName {
                    kind: "user",
                    name: name.to_owned(),
                })?;
            if u.uid.is_root() {
                return Err(PrivilegeError::RootUser(name.to_owned()));
            }
            for d in dirs {
                prepare_dir(d, u.uid, u.gid)?;
            }
            let mut groups = Vec::new();
            for g in keep_groups {
                let gr = Group::from_name(g)
                    .map_err(sys(format!("look up group {g}")))?
                    .ok_or_else(|| PrivilegeError::NoSuchName {
                        kind: "group",
                        name: g.clone(),
                    })?;
                groups.push(gr.gid);
            }
            nix::unistd::setgroups(&groups).map_err(sys("setgroups"))?;
            nix::unistd::setresgid(u.gid, u.gid, u.gid).map_err(sys("setresgid"))?;
            nix::unistd::setresuid(u.uid, u.uid, u.uid).map_err(sys("setresuid"))?;
            verify_dropped(u.uid, u.gid)?;
            Ok(RunningAs {
                uid: u.uid.as_raw(),
                dropped: true,
            })
        }
    }
}

fn verify_dropped(uid: Uid, gid: Gid) -> Result<(), PrivilegeError> {
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok()
        || nix::unistd::seteuid(Uid::from_raw(0)).is_ok()
    {
        return Err(PrivilegeError::NotDropped("setuid(0) succeeded".into()));
    }
    let r = nix::unistd::getresuid().map_err(sys("getresuid"))?;
    if r.real != uid || r.effective != uid || r.saved != uid {
        return Err(PrivilegeError::NotDropped("uids differ".into()));
    }
    let g = nix::unistd::getresgid().map_err(sys("getresgid"))?;
    if g.real != gid || g.effective != gid || g.saved != gid {
        return Err(PrivilegeError::NotDropped("gids differ".into()));
    }
    Ok(())
}

fn prepare_dir(d: &NeededDir, uid: Uid, gid: Gid) -> Result<(), PrivilegeError> {
    let err = |what: String| PrivilegeError::Dir {
        path: d.path.clone(),
        what,
    };
    if d.path.exists() {
        return Ok(()); // existing directories are checked, not changed
    }
    // Parents (if any are missing) stay root's, traversable (0755); only
    // the directory itself belongs to the service user.
    if let Some(parent) = d
        .path
        .parent()
        .filter(|p| !p.as_os_str().is_empty() && !p.exists())
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|e| err(format!("cannot create parent: {e}")))?;
    }
    // Made under a temporary name, given to the user, then renamed into
    // place: a kill at any moment leaves no directory at the final path, or
    // one that is complete. (The SIGKILL loop in e2e found a root-owned
    // directory left behind by a kill between mkdir and chown.)
    let name = d.path.file_name().and_then(|n| n.to_str()).unwrap_or("dir");
    let tmp = d
        .path
        .with_file_name(format!(".{name}.tmp.{}", std::process::id()));
    let _ = std::fs::remove_dir(&tmp);
    std::fs::DirBuilder::new()
        .mode(d.mode)
        .create(&tmp)
        .map_err(|e| err(format!("cannot create: {e}")))?;
    let prepared = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(d.mode))
        .map_err(|e| err(format!("chmod: {e}")))
        .and_then(|()| {
            std::os::unix::fs::chown(&tmp, Some(uid.as_raw()), Some(gid.as_raw()))
                .map_err(|e| err(format!("chown: {e}")))
        })
        .and_then(|()| {
            std::fs::rename(&tmp, &d.path).map_err(|e| err(format!("rename into place: {e}")))
        });
    if prepared.is_err() {
        let _ = std::fs::remove_dir(&tmp);
        if d.path.is_dir() {
            return Ok(()); // another process prepared it meanwhile
        }
    }
    prepared
}

/// Refuses when `/proc/self/exe` or its directory could be rewritten by the
/// uid we run as (owner, or write bits for a group we are in, or others).
pub fn check_executable() -> Result<(), PrivilegeError> {
    let exe = std::fs::read_link("/proc/self/exe").map_err(|e| PrivilegeError::Dir {
        path: PathBuf::from("/proc/self/exe"),
        what: format!("cannot resolve: {e}"),
    })?;
    check_not_writable(&exe)?;
    if let Some(dir) = exe.parent() {
        check_not_writable(dir)?;
    }
    Ok(())
}

fn check_not_writable(path: &Path) -> Result<(), PrivilegeError> {
    if cfg!(feature = "allow-owned-exe") {
        return Ok(());
    }
    let m = std::fs::metadata(path).map_err(|e| PrivilegeError::Dir {
        path: path.to_owned(),
        what: format!("cannot stat: {e}"),
    })?;
    let uid = nix::unistd::geteuid().as_raw();
    let mode = m.mode() & 0o7777;
    let in_group = nix::unistd::getgroups()
        .unwrap_or_default()
        .iter()
        .any(|g| g.as_raw() == m.gid())
        || nix::unistd::getegid().as_raw() == m.gid();
    let p = path.display();
    let what = if m.uid() == uid {
        Some(format!("is owned by the service user (uid {uid})"))
    } else if mode & 0o002 != 0 {
        Some(format!("is writable by everyone (mode {mode:04o})"))
    } else if mode & 0o020 != 0 && in_group {
        Some(format!(
            "is writable by group {} which the service user is in",
            m.gid()
        ))
    } else {
        None
    };
    match what {
        None => Ok(()),
        Some(what) => Err(PrivilegeError::WritableExe {
            path: path.to_owned(),
            what,
            fix: format!(
                "install it owned by root and not writable by others: chown root:root {p} && chmod go-w {p}"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_root_without_user_runs_as_itself() {
        if nix::unistd::geteuid().is_root() {
            assert!(matches!(enforce(None, &[], &[]), Err(PrivilegeError::Root)));
        } else {
            assert!(!enforce(None, &[], &[]).unwrap().dropped);
        }
    }

    #[test]
    fn unknown_user_is_named() {
        if nix::unistd::geteuid().is_root() {
            let e = enforce(Some("no-such-user-sg"), &[], &[])
                .unwrap_err()
                .to_string();
            assert!(e.contains("no-such-user-sg"), "{e}");
        }
    }

    #[test]
    fn root_as_service_user_is_refused() {
        if nix::unistd::geteuid().is_root() {
            assert!(matches!(
                enforce(Some("root"), &[], &[]),
                Err(PrivilegeError::RootUser(_))
            ));
        }
    }

    #[test]
    fn writable_paths_are_refused() {
        let d = tempfile::tempdir().unwrap();
        // our own directory: owned by us
        if !cfg!(feature = "allow-owned-exe") {
            assert!(check_not_writable(d.path()).is_err());
        }
    }
}
