//! Least privilege for the `screengate` commands: refuse root, or start as
//! root with `--user NAME`, check the socket groups are the user's own,
//! prepare the directories that user needs (only under parents nobody but
//! root can write), drop to it for good (groups, gid, uid, an empty
//! capability bounding set, no-new-privs) and prove root cannot be
//! regained; make the process non-dumpable; refuse an executable the
//! service user could rewrite.
//!
//! Nothing here reads the config: `main.rs` reads it first, under
//! `config::Trust::RootOnly` when root, and passes only what it needs.
//!
//! Lives in the command path (`main.rs` calls it before `run`), not in
//! `Server::bind`: the library is also run in-process by tests.

use std::ffi::CString;
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
    /// A socket group the service user is not a member of: keeping it
    /// would give the user a group it does not have (e.g. `disk`).
    #[error(
        "group `{group}`: user {user} is not a member; a socket group must be one of the service user's own groups (usermod -aG {group} {user}, or choose another group)"
    )]
    NotMember {
        /// The group.
        group: String,
        /// The service user.
        user: String,
    },
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

impl crate::exit::ExitStatus for PrivilegeError {
    fn exit_kind(&self) -> crate::exit::ExitKind {
        use crate::exit::ExitKind;
        match self {
            // root refused, unsafe directories, a rewritable binary
            Self::Root | Self::RootUser(_) | Self::WritableExe { .. } | Self::Dir { .. } => {
                ExitKind::Permission
            }
            // a flag or config value that names the wrong thing
            Self::UserWithoutRoot(..) | Self::NotMember { .. } | Self::NoSuchName { .. } => {
                ExitKind::Config
            }
            Self::Sys { .. } | Self::NotDropped(_) => ExitKind::OsError,
        }
    }
}

#[cfg(test)]
mod exit_tests {
    use super::PrivilegeError as E;
    use crate::exit::ExitStatus as _;

    #[test]
    fn exit_codes_by_variant() {
        assert_eq!(E::Root.exit_code(), 77);
        assert_eq!(E::RootUser("root".into()).exit_code(), 77);
        let exe = E::WritableExe {
            path: "/usr/bin/screengate".into(),
            what: "owned by the service user".into(),
            fix: "chown root".into(),
        };
        assert_eq!(exe.exit_code(), 77);
        let dir = E::Dir {
            path: "/run/x".into(),
            what: "writable by others".into(),
        };
        assert_eq!(dir.exit_code(), 77);
        assert_eq!(E::UserWithoutRoot("sg".into(), 1000).exit_code(), 64);
        let member = E::NotMember {
            group: "disk".into(),
            user: "sg".into(),
        };
        assert_eq!(member.exit_code(), 64);
        let name = E::NoSuchName {
            kind: "user",
            name: "nobody-here".into(),
        };
        assert_eq!(name.exit_code(), 64);
        let sys = E::Sys {
            what: "setuid".into(),
            source: nix::Error::EPERM,
        };
        assert_eq!(sys.exit_code(), 71);
        assert_eq!(E::NotDropped("setuid(0) worked".into()).exit_code(), 71);
    }
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeededDir {
    /// The path.
    pub path: PathBuf,
    /// Mode when created.
    pub mode: u32,
}

/// What [`enforce`] needs to start `serve` on a config: the user to drop
/// to, the directories to prepare for it, the socket groups to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivilegePlan {
    /// The service user (`--user`, `user =`), if any.
    pub user: Option<String>,
    /// The state dir (0700) and the socket directories (0711).
    pub dirs: Vec<NeededDir>,
    /// The control and native socket groups, without repeats.
    pub groups: Vec<String>,
}

impl crate::config::Config {
    /// The privilege plan of `serve` on this config: the state dir (0700),
    /// the control and native sockets' directories (0711), their groups.
    #[must_use]
    pub fn privilege_plan(&self) -> PrivilegePlan {
        let mut dirs = vec![NeededDir {
            path: self.state_dir.clone(),
            mode: 0o700,
        }];
        let sockets = std::iter::once(self.control_socket.as_path())
            .chain(self.native.as_ref().map(|n| n.socket.as_path()));
        for parent in sockets.filter_map(Path::parent) {
            if !parent.as_os_str().is_empty() {
                dirs.push(NeededDir {
                    path: parent.to_owned(),
                    mode: 0o711,
                });
            }
        }
        let mut groups: Vec<String> = Vec::new();
        for g in self
            .control_group
            .iter()
            .chain(self.native.as_ref().and_then(|n| n.group.as_ref()))
        {
            if !groups.contains(g) {
                groups.push(g.clone());
            }
        }
        PrivilegePlan {
            user: self.user.clone(),
            dirs,
            groups,
        }
    }
}

/// Who the process runs as after [`enforce`].
#[derive(Debug, Clone, Copy)]
pub struct RunningAs {
    /// The uid.
    pub uid: u32,
    /// Whether a drop happened.
    pub dropped: bool,
}

/// Applies the root rule. As root with `user`: refuses a `keep_groups`
/// entry the user is not a member of (`getgrouplist`), creates `dirs`
/// (owned by the user, only under root-owned parents nobody else can
/// write; under a parent the user owns it is left for the user to create
/// after the drop), sets the supplementary groups to exactly
/// `keep_groups`, empties the capability bounding set and the ambient set
/// (while still privileged), sets gid then uid (real, effective and saved),
/// sets no-new-privs, and verifies root cannot be regained.
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
            let groups = member_groups(name, u.gid, keep_groups)?;
            for d in dirs {
                prepare_dir(d, u.uid, u.gid)?;
            }
            nix::unistd::setgroups(&groups).map_err(sys("setgroups"))?;
            drop_capability_bounding_set()?;
            nix::unistd::setresgid(u.gid, u.gid, u.gid).map_err(sys("setresgid"))?;
            nix::unistd::setresuid(u.uid, u.uid, u.uid).map_err(sys("setresuid"))?;
            rustix::thread::set_no_new_privs(true).map_err(|e| PrivilegeError::Sys {
                what: "prctl(PR_SET_NO_NEW_PRIVS, 1)".into(),
                source: nix::Error::from_raw(e.raw_os_error()),
            })?;
            verify_dropped(u.uid, u.gid)?;
            Ok(RunningAs {
                uid: u.uid.as_raw(),
                dropped: true,
            })
        }
    }
}

/// The gids of `keep_groups`, each checked to be one of `user`'s groups
/// (primary or supplementary, as `getgrouplist` reports them).
fn member_groups(user: &str, gid: Gid, keep_groups: &[String]) -> Result<Vec<Gid>, PrivilegeError> {
    if keep_groups.is_empty() {
        return Ok(Vec::new());
    }
    let cname = CString::new(user).map_err(|_| PrivilegeError::NoSuchName {
        kind: "user",
        name: user.to_owned(),
    })?;
    let member =
        nix::unistd::getgrouplist(&cname, gid).map_err(sys(format!("getgrouplist({user})")))?;
    let mut groups = Vec::new();
    for g in keep_groups {
        let gr = Group::from_name(g)
            .map_err(sys(format!("look up group {g}")))?
            .ok_or_else(|| PrivilegeError::NoSuchName {
                kind: "group",
                name: g.clone(),
            })?;
        if !member.contains(&gr.gid) {
            return Err(PrivilegeError::NotMember {
                group: g.clone(),
                user: user.to_owned(),
            });
        }
        groups.push(gr.gid);
    }
    groups.dedup();
    Ok(groups)
}

/// Highest capability number tried; the kernel refuses (EINVAL) numbers
/// past its last capability, which ends the loop earlier.
const MAX_CAP: u32 = 63;

fn capability(n: u32) -> rustix::thread::CapabilitySet {
    rustix::thread::CapabilitySet::from_bits_retain(1u64 << n)
}

/// Empties the bounding set (needs CAP_SETPCAP, so before the uid change)
/// and the ambient set: no later execve can gain a capability back.
fn drop_capability_bounding_set() -> Result<(), PrivilegeError> {
    let err = |what: String| {
        move |e: rustix::io::Errno| PrivilegeError::Sys {
            what,
            source: nix::Error::from_raw(e.raw_os_error()),
        }
    };
    for n in 0..=MAX_CAP {
        match rustix::thread::remove_capability_from_bounding_set(capability(n)) {
            Ok(()) => {}
            Err(rustix::io::Errno::INVAL) => break,
            Err(e) => return Err(err(format!("prctl(PR_CAPBSET_DROP, {n})"))(e)),
        }
    }
    match rustix::thread::clear_ambient_capability_set() {
        Ok(()) | Err(rustix::io::Errno::INVAL) => Ok(()), // INVAL: kernel without ambient caps
        Err(e) => Err(err("prctl(PR_CAP_AMBIENT_CLEAR_ALL)".into())(e)),
    }
}

/// No capability left: bounding set empty, no effective, permitted or
/// inheritable one, and no-new-privs set.
fn verify_no_capabilities() -> Result<(), PrivilegeError> {
    for n in 0..=MAX_CAP {
        match rustix::thread::capability_is_in_bounding_set(capability(n)) {
            Ok(false) => {}
            Ok(true) => {
                return Err(PrivilegeError::NotDropped(format!(
                    "capability {n} still in the bounding set"
                )));
            }
            Err(_) => break,
        }
    }
    let sets = rustix::thread::capabilities(None)
        .map_err(|e| PrivilegeError::NotDropped(format!("capget: {e}")))?;
    if !(sets.effective.is_empty() && sets.permitted.is_empty() && sets.inheritable.is_empty()) {
        return Err(PrivilegeError::NotDropped("capabilities left".into()));
    }
    if !rustix::thread::no_new_privs().unwrap_or(false) {
        return Err(PrivilegeError::NotDropped("no-new-privs not set".into()));
    }
    Ok(())
}

fn verify_dropped(uid: Uid, gid: Gid) -> Result<(), PrivilegeError> {
    verify_no_capabilities()?;
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

/// The first of `dir` and the directories above it that someone other
/// than root could change, with why; `None` when all are root's and not
/// writable by group or others. A sticky root-owned directory (`/tmp`) is
/// accepted above `dir`, and as `dir` itself when `sticky_ok_for_dir`:
/// others can add names there but cannot rename or remove root's.
/// `dir` should be canonical (no symbolic links).
pub fn unsafe_ancestor(dir: &Path, sticky_ok_for_dir: bool) -> Option<(PathBuf, String)> {
    for (i, a) in dir.ancestors().enumerate() {
        let m = match std::fs::metadata(a) {
            Ok(m) => m,
            Err(e) => return Some((a.to_owned(), format!("cannot stat: {e}"))),
        };
        let mode = m.mode() & 0o7777;
        if m.uid() != 0 {
            return Some((
                a.to_owned(),
                format!("is owned by uid {}, not root", m.uid()),
            ));
        }
        let sticky = mode & 0o1000 != 0;
        if mode & 0o022 != 0 && !(sticky && (i > 0 || sticky_ok_for_dir)) {
            return Some((
                a.to_owned(),
                format!("has mode {mode:04o}: writable by group or others"),
            ));
        }
    }
    None
}

/// The first symbolic link on the way to `path` (each prefix as written,
/// looked at with `lstat`) that anyone but root could have placed or could
/// replace: owned by another uid, or in a directory that is not root's or
/// that others can write (sticky root-owned directories excepted, where
/// only root can replace root's link). Links root made in root's closed
/// directories, such as `/var/run`, pass.
fn untrusted_link(path: &Path) -> Option<(PathBuf, String)> {
    let mut prefix = PathBuf::new();
    for c in path.components() {
        prefix.push(c);
        let Ok(m) = std::fs::symlink_metadata(&prefix) else {
            continue;
        };
        if !m.file_type().is_symlink() {
            continue;
        }
        if m.uid() != 0 {
            return Some((
                prefix,
                format!("is a symbolic link owned by uid {}, not root", m.uid()),
            ));
        }
        let dir = prefix.parent().unwrap_or(Path::new("/"));
        let canon = match std::fs::canonicalize(dir) {
            Ok(c) => c,
            Err(e) => return Some((prefix, format!("cannot resolve its directory: {e}"))),
        };
        if let Some((p, what)) = unsafe_ancestor(&canon, true) {
            return Some((
                prefix,
                format!("is a symbolic link in {}, which {what}", p.display()),
            ));
        }
    }
    None
}

/// Creates each missing component of `dir` with `mode` (set explicitly,
/// whatever the umask), as the current user.
pub(crate) fn create_dirs(dir: &Path, mode: u32) -> std::io::Result<()> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
        .collect();
    for d in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(mode).create(d) {
            Ok(()) => std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(e),
        }
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
    // The nearest directory that exists decides: the service user's own →
    // nothing is made as root (the user makes the rest after the drop);
    // root's and nobody else's → root makes the missing parents (0755) and
    // the directory; anything else → refused, naming it.
    let nearest = d
        .path
        .ancestors()
        .skip(1)
        .find(|a| !a.as_os_str().is_empty() && a.exists())
        .unwrap_or(Path::new("."));
    // The path as given, not only where it resolves: a link on the way that
    // someone else could have placed (review of issue 14: the service user
    // linked its own directory to a root-only one, and root created the
    // state directory there) refuses the lot.
    if let Some((p, what)) = untrusted_link(nearest) {
        return Err(PrivilegeError::Dir {
            path: p,
            what: format!(
                "{what}; refusing to prepare {} through it",
                d.path.display()
            ),
        });
    }
    let canon = std::fs::canonicalize(nearest)
        .map_err(|e| err(format!("cannot resolve {}: {e}", nearest.display())))?;
    let m = std::fs::metadata(&canon)
        .map_err(|e| err(format!("cannot stat {}: {e}", canon.display())))?;
    if m.uid() == uid.as_raw() {
        let above = canon.parent().and_then(|p| unsafe_ancestor(p, true));
        return match above {
            None => Ok(()),
            Some((p, what)) => Err(PrivilegeError::Dir {
                path: p,
                what: format!("{what}; refusing to prepare {} below it", d.path.display()),
            }),
        };
    }
    if let Some((p, what)) = unsafe_ancestor(&canon, false) {
        return Err(PrivilegeError::Dir {
            path: p.clone(),
            what: format!(
                "{what}; root creates {} only below directories nobody else can change; fix: chown root {} && chmod go-w {}, or create the directory for the service user yourself",
                d.path.display(),
                p.display(),
                p.display()
            ),
        });
    }
    if let Some(parent) = d.path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dirs(parent, 0o755).map_err(|e| err(format!("cannot create parent: {e}")))?;
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

    fn plan(o: crate::config::Overrides) -> PrivilegePlan {
        crate::config::Config::resolve(None, crate::config::FileConfig::default(), o)
            .unwrap()
            .privilege_plan()
    }

    #[test]
    fn the_plan_prepares_the_state_and_socket_dirs() {
        let p = plan(crate::config::Overrides {
            state_dir: Some("/var/lib/sg".into()),
            control: Some("/run/sg/control.sock".into()),
            native_socket: Some("/run/sg-native/native.sock".into()),
            user: Some("sg".into()),
            ..Default::default()
        });
        assert_eq!(p.user.as_deref(), Some("sg"));
        let dirs: Vec<(&str, u32)> = p
            .dirs
            .iter()
            .map(|d| (d.path.to_str().unwrap(), d.mode))
            .collect();
        assert_eq!(
            dirs,
            [
                ("/var/lib/sg", 0o700),
                ("/run/sg", 0o711),
                ("/run/sg-native", 0o711)
            ]
        );
        assert!(p.groups.is_empty());
    }

    #[test]
    fn the_plan_without_native_has_no_native_dir() {
        let p = plan(crate::config::Overrides {
            state_dir: Some("/var/lib/sg".into()),
            control: Some("/run/sg/control.sock".into()),
            ..Default::default()
        });
        assert_eq!(p.user, None);
        assert_eq!(p.dirs.len(), 2, "{:?}", p.dirs);
    }

    #[test]
    fn the_plan_keeps_each_socket_group_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sg.toml");
        std::fs::write(
            &file,
            "[control]\ngroup = \"video\"\n[native]\nsocket = \"/run/n/n.sock\"\ngroup = \"video\"\n",
        )
        .unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        let parsed: crate::config::FileConfig = toml::from_str(&text).unwrap();
        let cfg = crate::config::Config::resolve(
            Some(&file),
            parsed,
            crate::config::Overrides::default(),
        )
        .unwrap();
        assert_eq!(cfg.privilege_plan().groups, ["video"]);
    }

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

    fn dir_with(parent: &Path, name: &str, mode: u32) -> PathBuf {
        let d = parent.join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
        d
    }

    #[test]
    fn unsafe_ancestor_names_the_first_changeable_directory() {
        let t = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(t.path()).unwrap();
        let root = nix::unistd::geteuid().is_root();
        let closed = dir_with(&base, "closed", 0o755);
        let open = dir_with(&base, "open", 0o777);
        let group = dir_with(&base, "group", 0o775);
        let sticky = dir_with(&base, "sticky", 0o1777);
        let below_open = dir_with(&open, "inner", 0o755);
        if root {
            assert_eq!(unsafe_ancestor(&closed, false), None);
            assert_eq!(unsafe_ancestor(&open, false).unwrap().0, open);
            assert_eq!(unsafe_ancestor(&group, false).unwrap().0, group);
            // a closed directory below an open one is no safer
            assert_eq!(unsafe_ancestor(&below_open, false).unwrap().0, open);
            // sticky: fine above, refused as the directory itself unless allowed
            assert_eq!(unsafe_ancestor(&sticky, false).unwrap().0, sticky);
            assert_eq!(unsafe_ancestor(&sticky, true), None);
            let in_sticky = dir_with(&sticky, "d", 0o755);
            assert_eq!(unsafe_ancestor(&in_sticky, false), None);
            // owned by another uid
            let foreign = dir_with(&base, "foreign", 0o755);
            std::os::unix::fs::chown(&foreign, Some(4_242_424), None).unwrap();
            let (p, what) = unsafe_ancestor(&foreign, false).unwrap();
            assert_eq!(p, foreign);
            assert!(what.contains("4242424"), "{what}");
        } else {
            // our own temp dir is not root's
            assert!(unsafe_ancestor(&closed, false).is_some());
        }
        let (p, _) = unsafe_ancestor(&base.join("missing"), false).unwrap();
        assert_eq!(p, base.join("missing"));
    }

    #[test]
    fn create_dirs_sets_the_mode_whatever_the_umask() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b/c");
        create_dirs(&d, 0o711).unwrap();
        for p in [t.path().join("a"), t.path().join("a/b"), d.clone()] {
            assert_eq!(
                std::fs::metadata(&p).unwrap().mode() & 0o777,
                0o711,
                "{}",
                p.display()
            );
        }
        create_dirs(&d, 0o711).unwrap(); // existing: fine
        let f = t.path().join("file");
        std::fs::write(&f, "").unwrap();
        assert!(create_dirs(&f.join("x"), 0o700).is_err());
    }

    #[test]
    fn groups_the_user_is_not_in_are_refused() {
        // root is a member of group root (its primary) and of no `nogroup`-like foreign group
        let e = member_groups("root", Gid::from_raw(0), &["no-such-group-sg".into()]).unwrap_err();
        assert!(e.to_string().contains("no-such-group-sg"), "{e}");
        assert_eq!(
            member_groups("root", Gid::from_raw(0), &["root".into()]).unwrap(),
            vec![Gid::from_raw(0)]
        );
        assert!(
            member_groups("root", Gid::from_raw(0), &[])
                .unwrap()
                .is_empty()
        );
        if let Ok(Some(g)) = Group::from_name("nogroup")
            && !g.mem.iter().any(|m| m == "root")
        {
            let e = member_groups("root", Gid::from_raw(0), &["nogroup".into()]).unwrap_err();
            assert!(matches!(e, PrivilegeError::NotMember { .. }), "{e}");
            assert!(e.to_string().contains("nogroup"), "{e}");
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
