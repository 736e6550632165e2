//! Server assembly: resolve identity, check permissions, bind the TLS and
//! control listeners, run the accept loops, and shut down cleanly.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use http::HeaderValue;
use screengate_identity::StateDir;
use screengate_identity::fsutil::{self, Kind};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::info;

use crate::config::Config;
use crate::control::RateLimiter;
use crate::error::ServerError;
use crate::exit::ExitKind;
use crate::limits::SHUTDOWN_GRACE;
use crate::live::{Keys, Live, Outcome, Reloader, Swap};
use crate::pending::Pending;
use crate::state::{Native, Shared, Upgrade};

/// A bound, not yet serving, server.
pub struct Server {
    shared: Arc<Shared>,
    tcp: TcpListener,
    control: UnixListener,
    native: Option<UnixListener>,
    shutdown_tx: watch::Sender<bool>,
    reload: Option<(Reloader, mpsc::Receiver<()>)>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("port", &self.shared.port)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Loads (creating if absent) the identity, checks every protected file,
    /// and binds both listeners. Nothing is served yet.
    pub async fn bind(cfg: Config) -> Result<Server, ServerError> {
        let uid = fsutil::euid();
        let state = StateDir::new(&cfg.state_dir, cfg.credentials_dir.clone());
        let mut problems = Vec::new();
        if let Some(file) = &cfg.file {
            problems.extend(fsutil::check_path(file, Kind::Protected, uid));
        }
        if state.path().exists() {
            problems.extend(state.check_permissions(uid));
        }
        if !problems.is_empty() {
            return Err(ServerError::Permissions(problems));
        }
        let outcome = state.init(false)?;
        if outcome != screengate_identity::InitOutcome::AlreadyPresent {
            info!(state_dir = %cfg.state_dir.display(), ?outcome, "device identity created");
        }
        let problems = state.check_permissions(uid);
        if !problems.is_empty() {
            return Err(ServerError::Permissions(problems));
        }
        // Held for the server's life: `screengate reset` refuses meanwhile.
        let serving = state.hold_serving()?;
        let identity = state.load()?;
        let source = if state.device_key_from_credential() {
            "systemd credential"
        } else {
            "state dir"
        };
        info!(device_key_source = source, "device identity loaded");
        let keys = Keys::new(&identity, &cfg)?;
        drop(identity);
        let backend = crate::backend::build(&cfg, uid)?;

        // The socket screengate.socket passed (LISTEN_FDS), checked
        // against `listen`; else our own.
        let (tcp, from) = match crate::listen_fds::inherited() {
            Ok(Some(l)) => (
                crate::listen_fds::adopt(l, cfg.listen).map_err(ServerError::Inherited)?,
                "systemd (LISTEN_FDS)",
            ),
            Ok(None) => (
                bind_tcp(cfg.listen).map_err(|source| ServerError::Bind {
                    what: "gateway listener",
                    addr: cfg.listen.to_string(),
                    source,
                })?,
                "bound here",
            ),
            Err(why) => return Err(ServerError::Inherited(why)),
        };
        let local: SocketAddr = tcp.local_addr().map_err(|source| ServerError::Bind {
            what: "gateway listener",
            addr: cfg.listen.to_string(),
            source,
        })?;
        let control = bind_private_socket(&cfg.control_socket, cfg.control_group.as_deref(), uid)?;
        let native_listener = match &cfg.native {
            None => None,
            Some(n) => Some(bind_private_socket(&n.socket, n.group.as_deref(), uid)?),
        };
        let native = cfg.native.as_ref().map(|n| Native {
            require_token: n.auth.token(),
        });

        let port = local.port();
        let live = Live::new(&cfg, uid, port);
        let csp = HeaderValue::from_str(&format!(
            "default-src 'self'; connect-src wss://localhost:{port}; frame-ancestors 'none'; \
             frame-src 'none'; object-src 'none'; base-uri 'none'"
        ))
        .map_err(|_| ServerError::SocketPath {
            path: PathBuf::new(),
            what: "CSP".into(),
            kind: ExitKind::OsError,
        })?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let token_header_display = display_header(cfg.token_header.as_str());
        info!(
            listen = %local,
            listener = %format!("from {from}"),
            control = %cfg.control_socket.display(),
            backend = %cfg.backend,
            run = ?keys.authority.run_id(),
            ttl = %humantime::format_duration(cfg.token_ttl),
            "screengate bound"
        );
        let shared = Arc::new(Shared {
            sessions: Arc::new(Semaphore::new(cfg.max_sessions)),
            live: Swap::new(live),
            keys: Swap::new(keys),
            log_level: Swap::new(cfg.log_level),
            port,
            listen_ip: local.ip(),
            token_header_display,
            shutdown: shutdown_rx,
            revoked_all: watch::channel(0).0,
            pending: Arc::new(Pending::default()),
            native_pending: Arc::new(Pending::default()),
            rate: Mutex::new(RateLimiter {
                buckets: HashMap::new(),
            }),
            site: Arc::new(crate::web::Site {
                csp,
                web_root: cfg.web_root.clone(),
                ws_path: cfg.path.clone(),
            }),
            native,
            upgrade: Upgrade {
                path: cfg.path.clone(),
                token_header: cfg.token_header.clone(),
                max_message_size: cfg.max_message_size,
                gateway_require_token: cfg.gateway_auth.token(),
            },
            backend,
            roster: Arc::new(crate::roster::Roster::default()),
            claims: Arc::new(crate::gate::Claims::default()),
            _serving: serving,
            cfg,
        });
        Ok(Server {
            shared,
            tcp,
            control,
            native: native_listener,
            shutdown_tx,
            reload: None,
        })
    }

    /// The gateway's bound address.
    pub fn local_addr(&self) -> SocketAddr {
        SocketAddr::new(self.shared.listen_ip, self.shared.port)
    }

    /// The control socket path.
    pub fn control_path(&self) -> &Path {
        &self.shared.cfg.control_socket
    }

    /// The native socket path, if configured.
    pub fn native_path(&self) -> Option<&Path> {
        self.shared.cfg.native.as_ref().map(|n| n.socket.as_path())
    }

    /// The gateway certificate's SPKI pin (of the identity in force).
    pub fn server_pin(&self) -> String {
        self.shared.keys().server_pin.clone()
    }

    /// Reloads the configuration with `reloader` each time `requests`
    /// yields (SIGHUP, in `main`), while serving. Without it, nothing
    /// reloads.
    pub fn reloading(mut self, reloader: Reloader, requests: mpsc::Receiver<()>) -> Server {
        self.reload = Some((reloader, requests));
        self
    }

    /// Serves until `shutdown` resolves, then stops accepting, closes
    /// sessions with 1001 and returns within [`SHUTDOWN_GRACE`].
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let Server {
            shared,
            tcp,
            control,
            native,
            shutdown_tx,
            reload,
        } = self;
        let gw = tokio::spawn(crate::gateway::accept_loop(shared.clone(), tcp));
        let ctl = tokio::spawn(crate::control::accept_loop(shared.clone(), control));
        let nat = native.map(|l| tokio::spawn(crate::native::accept_loop(shared.clone(), l)));
        // Every socket is bound and the identity loaded (`bind`): ready.
        let notifier = Arc::new(screengate_notify::Notifier::from_env());
        notifier.send(&format!(
            "READY=1\nSTATUS=serving on {}:{}, 0 sessions",
            shared.listen_ip, shared.port
        ));
        // The last reload's outcome, for `STATUS=` until the next one.
        let last_reload: Arc<Mutex<Option<String>>> = Arc::default();
        let pinger = notifier.ping_every().map(|every| {
            let (n, shared, last_reload) = (notifier.clone(), shared.clone(), last_reload.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    n.send(&format!(
                        "WATCHDOG=1\nSTATUS={}",
                        status(&shared, &last_reload)
                    ));
                }
            })
        });
        let reloader = reload.map(|(reloader, mut requests)| {
            let (n, shared) = (notifier.clone(), shared.clone());
            let reloader = Arc::new(reloader);
            tokio::spawn(async move {
                while requests.recv().await.is_some() {
                    let (s, r) = (shared.clone(), reloader.clone());
                    // File reads and key parsing: off the event loop.
                    let outcome =
                        tokio::task::spawn_blocking(move || crate::reload::reload(&s, &r))
                            .await
                            .unwrap_or_else(|e| {
                                Outcome::Refused(vec![format!("reload task: {e}")])
                            });
                    let line = log_reload(&outcome);
                    *last_reload
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(line);
                    n.send(&format!("STATUS={}", status(&shared, &last_reload)));
                }
            })
        });
        shutdown.await;
        notifier.send("STOPPING=1\nSTATUS=stopping");
        if let Some(p) = pinger {
            p.abort();
        }
        if let Some(r) = reloader {
            r.abort();
        }
        info!("shutdown requested: closing listeners and sessions");
        let _ = shutdown_tx.send(true);
        let _ = gw.await;
        let _ = ctl.await;
        if let Some(n) = nat {
            let _ = n.await;
        }
        let max = u32::try_from(shared.cfg.max_sessions).unwrap_or(u32::MAX);
        if tokio::time::timeout(SHUTDOWN_GRACE, shared.sessions.acquire_many(max))
            .await
            .is_err()
        {
            tracing::warn!("sessions still open after the grace period; exiting anyway");
        }
        let _ = std::fs::remove_file(&shared.cfg.control_socket);
        if let Some(n) = &shared.cfg.native {
            let _ = std::fs::remove_file(&n.socket);
        }
        info!("stopped");
        Ok(())
    }
}

/// The `STATUS=` line: sessions, the latest refusal, the latest reload.
fn status(shared: &Shared, last_reload: &Mutex<Option<String>>) -> String {
    let max = shared.cfg.max_sessions;
    let live = max.saturating_sub(shared.sessions.available_permits());
    let mut s = format!("{live} of {max} sessions");
    if let Some(r) = crate::session::last_refusal() {
        s.push_str("; last refusal: ");
        s.push_str(r);
    }
    if let Some(r) = &*last_reload
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        s.push_str("; ");
        s.push_str(r);
    }
    s
}

/// Logs a reload's outcome; returns its one-line summary for `STATUS=`.
fn log_reload(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Applied {
            changed,
            need_restart,
            rotated,
        } => {
            let changed = if changed.is_empty() {
                "none".to_owned()
            } else {
                changed.join(", ")
            };
            if !need_restart.is_empty() {
                tracing::warn!(
                    keys = %need_restart.join(", "),
                    "reload: these keys changed but need a restart; still running with their old values"
                );
            }
            if *rotated {
                crate::audit!(
                    warn,
                    event = "identity_rotated",
                    "reload: new device identity; every earlier token is revoked and every session closed"
                );
            }
            info!(changed = %changed, rotated = *rotated, "reload: configuration applied");
            format!("reloaded (changed: {changed})")
        }
        Outcome::Refused(problems) => {
            for p in problems {
                tracing::error!(problem = %p, "reload refused; still running with the configuration in force");
            }
            let first = problems.first().map_or("", String::as_str);
            let first = first.lines().next().unwrap_or("");
            format!("reload refused: {first}")
        }
    }
}

/// Binds and serves until `shutdown`. The whole server in one call.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    Server::bind(cfg).await?.serve(shutdown).await
}

fn display_header(lower: &str) -> String {
    lower
        .split('-')
        .map(|part| {
            let mut c = part.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// Binds a Unix socket that only its owner (and `group`, if given) can
/// use: refuses unsafe directories, symlinks, foreign files and live
/// sockets; replaces a stale socket of our own.
pub(crate) fn bind_private_socket(
    path: &Path,
    group: Option<&str>,
    uid: u32,
) -> Result<UnixListener, ServerError> {
    let err = |p: &Path, what: String| ServerError::SocketPath {
        path: p.to_owned(),
        what,
        kind: ExitKind::Permission,
    };
    let os = |p: &Path, what: String| ServerError::SocketPath {
        path: p.to_owned(),
        what,
        kind: ExitKind::OsError,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        crate::privilege::create_dirs(dir, 0o711)
            .map_err(|e| os(dir, format!("cannot create socket directory: {e}")))?;
    }
    let dmeta = std::fs::metadata(dir).map_err(|e| os(dir, format!("cannot stat: {e}")))?;
    if dmeta.mode() & 0o022 != 0 {
        return Err(err(
            dir,
            format!(
                "socket directory has mode {:04o}: writable by group or others, who could replace the socket; fix: chmod go-w {}",
                dmeta.mode() & 0o7777,
                dir.display()
            ),
        ));
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(os(path, format!("cannot stat: {e}"))),
        Ok(m) if m.file_type().is_symlink() => {
            return Err(err(
                path,
                "is a symbolic link; refusing to follow or remove it".into(),
            ));
        }
        Ok(m) if !m.file_type().is_socket() => {
            return Err(err(
                path,
                "exists and is not a socket; refusing to remove it".into(),
            ));
        }
        Ok(m) if m.uid() != uid => {
            return Err(err(
                path,
                format!(
                    "is a socket owned by uid {}, not us (uid {uid}); refusing to replace it",
                    m.uid()
                ),
            ));
        }
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServerError::SocketPath {
                    path: path.to_owned(),
                    what: "another server is already listening on this socket".into(),
                    kind: ExitKind::Unavailable,
                });
            }
            std::fs::remove_file(path)
                .map_err(|e| os(path, format!("cannot remove stale socket: {e}")))?;
        }
    }
    let gid = match group {
        None => None,
        Some(name) => match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Some(g.gid.as_raw()),
            Ok(None) => {
                return Err(ServerError::SocketPath {
                    path: path.to_owned(),
                    what: format!("group `{name}` does not exist"),
                    kind: ExitKind::Config,
                });
            }
            Err(e) => return Err(os(path, format!("cannot look up group `{name}`: {e}"))),
        },
    };
    // The socket is born with the process umask, which `main` set to 077
    // once before any thread started: owner-only from birth, so there is no
    // window in which others could connect. (The umask is never changed
    // here: it is process-wide, and other threads create files too.)
    let listener = UnixListener::bind(path).map_err(|source| ServerError::Bind {
        what: "control socket",
        addr: path.display().to_string(),
        source,
    })?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid))
            .map_err(|e| os(path, format!("cannot give the socket to its group: {e}")))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(|e| os(path, format!("chmod: {e}")))?;
    } else {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| os(path, format!("chmod: {e}")))?;
    }
    Ok(listener)
}

/// Binds the gateway listener with a listen backlog of
/// [`crate::limits::LISTEN_BACKLOG`]: a connect churn fills tokio's default
/// (1024) between two runs of the accept loop, and the kernel then drops
/// the display's SYN, which it retries only a second later.
fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(crate::limits::LISTEN_BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_display_form() {
        assert_eq!(display_header("x-screengate-token"), "X-Screengate-Token");
    }
}
