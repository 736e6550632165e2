//! screengate-launch: starts Chromium on the display app and hands it the
//! session token out of band.
//!
//! The token never touches argv, the environment, the URL, disk or page
//! JavaScript. Chromium starts on a neutral `data:` page with CDP on a pipe
//! (fds 3/4, no TCP port); over CDP the launcher attaches to that tab, sets
//! the token as an extra HTTP header for that tab only, locks the tab to
//! the gateway's origin with `Fetch` (the header would otherwise go to any
//! origin the tab touches), closes popups, and only then navigates. It
//! keeps a fresh token armed (after every handshake and at half the TTL)
//! and restarts the browser with backoff when it dies.
//!
//! This is the only screengate crate that spawns processes.
#![forbid(unsafe_code)]

mod chromium;
mod control;
mod csp;
mod transport;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use screengate_cdp::Event;
use serde_json::json;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;
use tracing::{info, warn};

pub use chromium::{ALLOWED_ARGS, INSTALL_HINT, Refusal};
pub use control::{MintError, Minted, ServerUid, mint, revoke};
use transport::{CallError, Cdp, SessionEvent};

/// First restart delay after the browser dies; doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest restart / retry delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Gateway handshakes whose token's fate is awaited (the page opens one at
/// a time; anything beyond this is not tracked and expires with its TTL).
const MAX_IN_FLIGHT: usize = 16;
/// How long a token superseded at TTL/2 stays valid before it is revoked:
/// time for a handshake that already carried it (its event not yet read)
/// to be consumed rather than refused.
const REVOKE_GRACE: Duration = Duration::from_secs(2);
/// A browser that lived this long resets the backoff.
const HEALTHY_LIFE: Duration = Duration::from_secs(30);
/// Time the browser gets to close cleanly before its process group is killed.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// What the command line asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// The control socket.
    pub control: PathBuf,
    /// The server's uid (`--server-uid`); `None`: the socket directory's owner.
    pub server_uid: ServerUid,
    /// Explicit Chromium binary.
    pub chromium: Option<PathBuf>,
    /// Headless.
    pub headless: bool,
    /// Kiosk window.
    pub kiosk: bool,
    /// `W,H`.
    pub window_size: String,
    /// Extra Chromium arguments (vetted).
    pub chromium_args: Vec<String>,
    /// Screenshot once connected.
    pub screenshot: Option<PathBuf>,
}

/// The default control socket, matching `screengate serve`'s default.
pub fn default_control() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/"))
                .join(".local/state")
        });
    base.join("screengate/control.sock")
}

/// Why the launcher stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// No browser to launch.
    #[error("Chromium not found{0}; install it with `{INSTALL_HINT}` or pass --chromium PATH")]
    NoChromium(String),
    /// An extra argument is not on the allow-list.
    #[error("refusing --chromium-arg {arg:?}: {why}")]
    RefusedArg {
        /// The argument as given.
        arg: String,
        /// Why (names the normalised switch).
        why: Refusal,
    },
    /// Running as root without an explicit sandbox opt-out.
    #[error(
        "running as root: Chromium's sandbox does not work as root and the launcher will not disable it silently; run as the display user, or pass --chromium-arg=--no-sandbox to accept an unsandboxed browser"
    )]
    Root,
    /// `--window-size` is not `W,H`.
    #[error("--window-size must be W,H in pixels, e.g. 1280,800")]
    WindowSize,
    /// The profile dir could not be made.
    #[error("cannot create a private profile directory: {0}")]
    Profile(std::io::Error),
    /// The server refused for good (e.g. this uid is not allowed to mint).
    #[error(transparent)]
    Mint(#[from] MintError),
    /// The display page cannot work (e.g. the certificate does not match the pin).
    #[error("{0}")]
    Page(String),
}

impl LaunchError {
    /// The process exit code: 64 for usage errors, 69 when Chromium is
    /// missing, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            LaunchError::RefusedArg { .. } | LaunchError::Root | LaunchError::WindowSize => 64,
            LaunchError::NoChromium(_) => 69,
            _ => 1,
        }
    }
}

/// Why one browser life ended.
enum LifeEnd {
    /// The browser exited or its pipe closed: restart.
    Exited,
    /// Not worth retrying.
    Fatal(LaunchError),
}

/// Runs until SIGTERM/SIGINT (→ `Ok`) or a fatal error.
pub async fn run(opts: Options) -> Result<(), LaunchError> {
    let mut extra = Vec::with_capacity(opts.chromium_args.len());
    for a in &opts.chromium_args {
        extra.push(chromium::vet(a).map_err(|why| LaunchError::RefusedArg {
            arg: a.clone(),
            why,
        })?);
    }
    let wh: Vec<&str> = opts.window_size.split(',').collect();
    if wh.len() != 2
        || wh
            .iter()
            .any(|n| n.parse::<u32>().map_or(true, |v| v == 0 || v > 16384))
    {
        return Err(LaunchError::WindowSize);
    }
    if nix::unistd::geteuid().is_root() {
        if !extra.iter().any(|a| a.name == "no-sandbox") {
            return Err(LaunchError::Root);
        }
        warn!(
            "running as root with --no-sandbox: Chromium's sandbox is disabled, as explicitly requested"
        );
    }
    let binary = chromium::find(opts.chromium.as_deref()).ok_or_else(|| {
        LaunchError::NoChromium(
            opts.chromium
                .as_ref()
                .map(|p| format!(" at {}", p.display()))
                .unwrap_or_default(),
        )
    })?;
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            return Err(LaunchError::Page(format!(
                "cannot install signal handlers: {e}"
            )));
        }
    };
    let mut backoff = FIRST_BACKOFF;
    let mut screenshot = opts.screenshot.clone();
    loop {
        let minted = tokio::select! {
            m = mint_with_retry(&opts) => m?,
            _ = stopped(&mut term, &mut int) => { info!("stopping (signal before launch)"); return Ok(()) }
        };
        let profile = private_profile()?;
        let launch = chromium::Launch {
            binary: binary.clone(),
            profile: profile.path().to_owned(),
            spki_pin: minted.spki_pin.clone(),
            headless: opts.headless,
            kiosk: opts.kiosk,
            window_size: opts.window_size.clone(),
            extra: extra.iter().map(|a| a.raw.clone()).collect(),
        };
        let started = Instant::now();
        let mut browser = match chromium::spawn(&launch) {
            Ok(b) => b,
            Err(e) => {
                return Err(LaunchError::Page(format!(
                    "cannot start {}: {e}",
                    binary.display()
                )));
            }
        };
        let pid = browser.child.id();
        info!(pid, profile = %profile.path().display(), "Chromium started");
        let (cdp, events) = Cdp::start(browser.to_browser, browser.from_browser);
        let life = tokio::select! {
            end = drive(&cdp, events, &opts, minted, screenshot.take()) => Some(end),
            _ = stopped(&mut term, &mut int) => None,
        };
        // Either way the browser goes now: ask, then make sure.
        let clean = tokio::time::timeout(
            Duration::from_secs(1),
            cdp.call(None, "Browser.close", json!({})),
        )
        .await;
        if clean.is_err() {
            tracing::debug!("Browser.close did not answer");
        }
        let exited = tokio::time::timeout(CLOSE_GRACE, browser.child.wait()).await;
        if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
            // Renderer and helper processes share the browser's process group.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let status = match exited {
            Ok(Ok(st)) => Some(st),
            _ => browser.child.wait().await.ok(),
        };
        drop(profile); // removes the profile directory
        match life {
            None => {
                info!("stopped: browser closed, profile removed");
                return Ok(());
            }
            Some(LifeEnd::Fatal(e)) => return Err(e),
            Some(LifeEnd::Exited) => {
                if started.elapsed() > HEALTHY_LIFE {
                    backoff = FIRST_BACKOFF;
                }
                warn!(status = ?status, retry_in = ?backoff, "Chromium exited; restarting it with a fresh token");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stopped(&mut term, &mut int) => { info!("stopped"); return Ok(()) }
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// A fresh profile directory, created 0700 (not `tempfile`'s default of
/// 0777 & !umask) and checked after creation: a directory, ours, 0700.
fn private_profile() -> Result<tempfile::TempDir, LaunchError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::Builder::new()
        .prefix("screengate-launch-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .map_err(LaunchError::Profile)?;
    let md = std::fs::symlink_metadata(dir.path()).map_err(LaunchError::Profile)?;
    check_profile_mode(
        md.is_dir(),
        md.uid(),
        md.mode(),
        nix::unistd::geteuid().as_raw(),
    )
    .map_err(|why| {
        LaunchError::Profile(std::io::Error::other(format!(
            "{}: {why}",
            dir.path().display()
        )))
    })?;
    Ok(dir)
}

/// The profile directory must be a directory we own with mode exactly 0700.
fn check_profile_mode(is_dir: bool, uid: u32, mode: u32, euid: u32) -> Result<(), String> {
    if !is_dir {
        return Err("not a directory".into());
    }
    if uid != euid {
        return Err(format!("owned by uid {uid}, not {euid}"));
    }
    if mode & 0o7777 != 0o700 {
        return Err(format!("mode {:o}, not 700", mode & 0o7777));
    }
    Ok(())
}

async fn stopped(term: &mut Signal, int: &mut Signal) {
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
}

/// Mints, waiting out an unreachable server or a rate limit; a refusal that
/// waiting cannot fix (not_authorized) is returned.
async fn mint_with_retry(opts: &Options) -> Result<Minted, LaunchError> {
    let mut wait = FIRST_BACKOFF;
    loop {
        match mint(&opts.control, opts.server_uid).await {
            Ok(m) => return Ok(m),
            Err(MintError::Refused(control::Refusal::RateLimited { retry_after_ms })) => {
                tokio::time::sleep(Duration::from_millis(retry_after_ms)).await;
            }
            Err(e @ (MintError::Refused(_) | MintError::Untrusted(_))) => return Err(e.into()),
            Err(e) => {
                warn!(error = %e, retry_in = ?wait, "screengate server unreachable; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Our tab, once known.
#[derive(Debug, Clone, Default)]
struct Tab {
    target_id: Option<String>,
    session_id: Option<String>,
}

/// The fixed facts of one browser life.
struct Gateway {
    origin: String,
    ws_url: String,
    ttl: Duration,
    /// Revocation handle of the first armed token.
    armed: Option<String>,
}

/// One browser life: set the tab up, navigate, then keep the token armed
/// and the tab locked until the browser goes away.
async fn drive(
    cdp: &Cdp,
    events: tokio::sync::mpsc::Receiver<SessionEvent>,
    opts: &Options,
    minted: Minted,
    screenshot: Option<PathBuf>,
) -> LifeEnd {
    let gw = Gateway {
        origin: minted.origin.clone(),
        ws_url: minted.ws_url.clone(),
        ttl: minted.expires_in,
        armed: minted.revoke_handle.clone(),
    };
    let (tab_tx, tab_rx) = watch::channel(Tab::default());
    let loop_cdp = cdp.clone();
    let control = opts.control.clone();
    let server = opts.server_uid;
    let mut event_loop = AbortOnDrop(tokio::spawn(async move {
        event_loop(loop_cdp, events, tab_rx, gw, control, server, screenshot).await
    }));
    let setup = setup(cdp, &tab_tx, &minted).await;
    drop(minted);
    if let Err(end) = setup {
        return end;
    }
    let _ = (&mut event_loop.0).await;
    LifeEnd::Exited
}

/// Aborts the task when dropped, so a cancelled browser life (SIGTERM)
/// takes its event loop with it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn call_end(e: CallError) -> LifeEnd {
    match e {
        CallError::Closed(_) => LifeEnd::Exited,
        other => {
            warn!(error = %other, "DevTools call failed; restarting the browser");
            LifeEnd::Exited
        }
    }
}

async fn setup(cdp: &Cdp, tab_tx: &watch::Sender<Tab>, minted: &Minted) -> Result<(), LifeEnd> {
    // The initial (neutral) page target.
    let deadline = Instant::now() + Duration::from_secs(15);
    let target_id = loop {
        let v = cdp
            .call(None, "Target.getTargets", json!({}))
            .await
            .map_err(call_end)?;
        let found = v["targetInfos"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["targetId"].as_str())
            .map(str::to_owned);
        if let Some(t) = found {
            break t;
        }
        if Instant::now() > deadline {
            warn!("Chromium showed no page target within 15 s");
            return Err(LifeEnd::Exited);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tab_tx.send_modify(|t| t.target_id = Some(target_id.clone()));
    cdp.call(None, "Target.setDiscoverTargets", json!({"discover": true}))
        .await
        .map_err(call_end)?;
    let v = cdp
        .call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        )
        .await
        .map_err(call_end)?;
    let session = v["sessionId"]
        .as_str()
        .map(str::to_owned)
        .ok_or(LifeEnd::Exited)?;
    tab_tx.send_modify(|t| t.session_id = Some(session.clone()));
    let s = Some(session.as_str());
    // Order matters: without Network.enable the header call is silently a no-op.
    cdp.call(s, "Network.enable", json!({}))
        .await
        .map_err(call_end)?;
    // A navigation a service worker answers never reaches `Fetch`, so its
    // document would skip the CSP check below while the header still
    // applies to its requests: every request of the tab goes to the
    // network instead (e2e launcher_service_worker_cannot_serve_an_unlocked_document).
    cdp.call(s, "Network.setBypassServiceWorker", json!({"bypass": true}))
        .await
        .map_err(call_end)?;
    set_header(cdp, &session, &minted.header, minted.token.expose_secret())
        .await
        .map_err(call_end)?;
    cdp.call(
        s,
        "Fetch.enable",
        json!({"patterns": [{"urlPattern": "*"}]}),
    )
    .await
    .map_err(call_end)?;
    cdp.call(s, "Page.enable", json!({}))
        .await
        .map_err(call_end)?;
    info!(url = %minted.url, "token armed (expires in {} ms); tab locked to {}; navigating", minted.expires_in.as_millis(), minted.origin);
    let nav = cdp
        .call(s, "Page.navigate", json!({"url": minted.url}))
        .await
        .map_err(call_end)?;
    if let Some(err) = nav["errorText"].as_str().filter(|e| !e.is_empty()) {
        if err.contains("CERT") {
            return Err(LifeEnd::Fatal(LaunchError::Page(format!(
                "the display page failed to load: {err}: the gateway's certificate does not match the pin from the control socket"
            ))));
        }
        warn!(error = err, "the display page failed to load; restarting");
        return Err(LifeEnd::Exited);
    }
    Ok(())
}

async fn set_header(cdp: &Cdp, session: &str, header: &str, token: &str) -> Result<(), CallError> {
    let mut headers = serde_json::Map::new();
    headers.insert(header.to_owned(), json!(token));
    let params = json!({ "headers": headers });
    let r = cdp
        .call(Some(session), "Network.setExtraHTTPHeaders", params)
        .await;
    r.map(|_| ())
}

/// True when `url` is on exactly `origin` (scheme, host and port).
fn same_origin(url: &str, origin: &str) -> bool {
    url.strip_prefix(origin)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '?', '#']))
}

/// `Fetch.failRequest` parameters for a request the lock refuses.
fn fail(request_id: &str) -> (&'static str, serde_json::Value) {
    (
        "Fetch.failRequest",
        json!({"requestId": request_id, "errorReason": "BlockedByClient"}),
    )
}

/// Whether a response must carry a connection-locking CSP of its own. Only
/// types that can never start an execution context are exempt; documents,
/// scripts (a worker's main script takes the policy of its own response),
/// `Other` and any type this list does not know are checked.
fn needs_own_csp(resource_type: &str) -> bool {
    !matches!(
        resource_type,
        "Stylesheet"
            | "Image"
            | "Media"
            | "Font"
            | "TextTrack"
            | "XHR"
            | "Fetch"
            | "EventSource"
            | "Manifest"
            | "Ping"
            | "CSPViolationReport"
            | "Preflight"
    )
}

/// The path of a URL without query or fragment, for logs.
fn path_of(url: &str) -> &str {
    let after = url.find("://").map(|i| i + 3).unwrap_or(0);
    let start = url
        .get(after..)
        .and_then(|r| r.find('/'))
        .map(|i| i + after)
        .unwrap_or(url.len());
    let rest = url.get(start..).unwrap_or("");
    rest.split(['?', '#']).next().unwrap_or("")
}

/// The origin part of a URL, for logs (never the path or query).
fn origin_of(url: &str) -> &str {
    let after = url.find("://").map(|i| i + 3).unwrap_or(0);
    let end = url
        .get(after..)
        .and_then(|r| r.find(['/', '?', '#']))
        .map(|i| i + after)
        .unwrap_or(url.len());
    url.get(..end).unwrap_or("")
}

/// Mints and arms the next token; its revocation handle on success
/// (`Some(None)` from a server that sends none), `None` on failure.
async fn rearm(
    cdp: &Cdp,
    control: &std::path::Path,
    server: ServerUid,
    session: &str,
) -> Option<Option<String>> {
    match mint(control, server).await {
        Ok(m) => match set_header(cdp, session, &m.header, m.token.expose_secret()).await {
            Ok(()) => {
                info!(
                    "armed a fresh token (expires in {} ms)",
                    m.expires_in.as_millis()
                );
                Some(m.revoke_handle.clone())
            }
            Err(e) => {
                warn!(error = %e, "could not arm the fresh token");
                // never armed: it must not stay valid either
                if let Some(h) = &m.revoke_handle {
                    revoke_superseded(control, server, h).await;
                }
                None
            }
        },
        Err(e) => {
            warn!(error = %e, "could not mint the next token; will retry");
            None
        }
    }
}

/// Revokes a token the tab no longer carries, so it is dead before it
/// expires.
async fn revoke_superseded(control: &std::path::Path, server: ServerUid, handle: &str) {
    match revoke(control, server, handle).await {
        Ok(()) => info!("revoked the superseded token"),
        Err(e) => {
            warn!(error = %e, "could not revoke the superseded token; it expires with its TTL")
        }
    }
}

async fn event_loop(
    cdp: Cdp,
    mut events: tokio::sync::mpsc::Receiver<SessionEvent>,
    tab: watch::Receiver<Tab>,
    gw: Gateway,
    control: PathBuf,
    server: ServerUid,
    mut screenshot: Option<PathBuf>,
) {
    let mut gateway_sockets: HashSet<String> = HashSet::new();
    // The handle of the token the tab carries now, and of the token each
    // gateway handshake in flight carried.
    let mut armed = gw.armed.clone();
    let mut in_flight: std::collections::HashMap<String, Option<String>> =
        std::collections::HashMap::new();
    let mut connected: u64 = 0;
    let mut first_message_seen = false;
    let half_ttl = gw.ttl / 2;
    let mut next_rearm = tokio::time::Instant::now() + half_ttl;
    // Superseded tokens waiting out REVOKE_GRACE before their revocation.
    let mut pending_revoke: Vec<(tokio::time::Instant, String)> = Vec::new();
    loop {
        let next_revoke = pending_revoke
            .iter()
            .map(|(at, _)| *at)
            .min()
            .unwrap_or_else(|| tokio::time::Instant::now() + MAX_BACKOFF);
        let ev = tokio::select! {
            ev = events.recv() => match ev { Some(ev) => ev, None => return },
            _ = tokio::time::sleep_until(next_revoke), if !pending_revoke.is_empty() => {
                let now = tokio::time::Instant::now();
                let (due, later): (Vec<_>, Vec<_>) =
                    pending_revoke.drain(..).partition(|(at, _)| *at <= now);
                pending_revoke = later;
                for (_, handle) in due {
                    revoke_superseded(&control, server, &handle).await;
                }
                continue;
            }
            _ = tokio::time::sleep_until(next_rearm) => {
                let session = tab.borrow().session_id.clone();
                if let Some(s) = session {
                    let next = rearm(&cdp, &control, server, &s).await;
                    let ok = next.is_some();
                    if let Some(new) = next {
                        // Superseded, and unused unless a handshake that
                        // carried it is not reported yet: revoke it after
                        // REVOKE_GRACE, so such a handshake is consumed
                        // first (revoking a consumed token is harmless).
                        if let Some(old) = std::mem::replace(&mut armed, new)
                            && pending_revoke.len() < MAX_IN_FLIGHT
                        {
                            pending_revoke.push((tokio::time::Instant::now() + REVOKE_GRACE, old));
                        }
                    }
                    next_rearm = tokio::time::Instant::now() + if ok { half_ttl } else { Duration::from_secs(1) };
                } else {
                    next_rearm = tokio::time::Instant::now() + Duration::from_secs(1);
                }
                continue;
            }
        };
        let (session_id, event) = ev;
        match event {
            Event::RequestPaused {
                request_id,
                url,
                resource_type,
                response,
            } => {
                let Some(s) = session_id.as_deref() else {
                    continue;
                };
                let (method, params) = if !same_origin(&url, &gw.origin) {
                    warn!(
                        origin = origin_of(&url),
                        "blocked a request from the display tab to another origin"
                    );
                    fail(&request_id)
                } else if let Some(resp) = response {
                    // A document of the gateway, at the response stage: it
                    // renders only if its own CSP keeps its connections on
                    // the gateway (Fetch never sees a WebSocket handshake).
                    let lock = csp::Gateway {
                        origin: &gw.origin,
                        ws_url: &gw.ws_url,
                    };
                    match csp::locks_connections(&resp.csp, &lock) {
                        Ok(()) => ("Fetch.continueRequest", json!({"requestId": request_id})),
                        Err(why) => {
                            warn!(
                                path = path_of(&url),
                                status = ?resp.status,
                                "lock violation: refused a document of the gateway: {why}"
                            );
                            fail(&request_id)
                        }
                    }
                } else if needs_own_csp(&resource_type) {
                    (
                        "Fetch.continueRequest",
                        json!({"requestId": request_id, "interceptResponse": true}),
                    )
                } else {
                    ("Fetch.continueRequest", json!({"requestId": request_id}))
                };
                if let Err(e) = cdp.call(Some(s), method, params).await {
                    tracing::debug!(error = %e, "Fetch reply failed");
                }
            }
            Event::TargetCreated {
                target_id,
                kind,
                opener_id,
            } => {
                let ours = tab.borrow().target_id.clone();
                if kind == "page" && ours.as_deref().is_some_and(|o| o != target_id) {
                    warn!(opener = ?opener_id.is_some(), "closing a new window: the display has one tab");
                    let _ = cdp
                        .call(None, "Target.closeTarget", json!({"targetId": target_id}))
                        .await;
                }
            }
            Event::WebSocketCreated { request_id, url } => {
                if url == gw.ws_url
                    || url
                        .strip_prefix(gw.ws_url.as_str())
                        .is_some_and(|r| r.starts_with(['?', '#']))
                {
                    if gateway_sockets.len() < MAX_IN_FLIGHT * 4 {
                        gateway_sockets.insert(request_id);
                    }
                } else {
                    // A report, not a pause: the handshake is already on
                    // its way. The document's CSP is what stops it.
                    warn!(
                        origin = origin_of(&url),
                        "lock violation: the display tab created a WebSocket to a URL other than the gateway's"
                    );
                }
            }
            Event::WebSocketWillSendHandshake { request_id } => {
                if gateway_sockets.contains(&request_id) {
                    // The armed token is going out on this handshake: arm
                    // the next; the outgoing one is judged by the response.
                    let session = tab.borrow().session_id.clone();
                    if let Some(s) = session {
                        let next = rearm(&cdp, &control, server, &s).await;
                        let ok = next.is_some();
                        if let Some(new) = next {
                            let used = std::mem::replace(&mut armed, new);
                            if in_flight.len() < MAX_IN_FLIGHT {
                                in_flight.insert(request_id.clone(), used);
                            }
                        }
                        next_rearm = tokio::time::Instant::now()
                            + if ok { half_ttl } else { Duration::from_secs(1) };
                    }
                }
            }
            Event::WebSocketHandshakeResponse { request_id, status } => {
                // 101 consumed the token; any refusal (503 with the backend
                // down) left it valid, and the tab no longer carries it.
                if let Some(Some(used)) = in_flight.remove(&request_id)
                    && status != 101
                {
                    revoke_superseded(&control, server, &used).await;
                }
                if gateway_sockets.contains(&request_id) {
                    if status == 101 {
                        connected += 1;
                        first_message_seen = false;
                        info!(session = connected, "display connected to the gateway");
                    } else {
                        warn!(status, "the gateway refused the display's handshake");
                    }
                }
            }
            Event::WebSocketFrameReceived { request_id } => {
                if gateway_sockets.contains(&request_id) && !first_message_seen {
                    first_message_seen = true;
                    info!(session = connected, "display received its first message");
                    if let Some(path) = screenshot.take() {
                        let session = tab.borrow().session_id.clone();
                        if let Some(s) = session {
                            take_screenshot(&cdp, &s, &path).await;
                        }
                    }
                }
            }
            Event::WebSocketClosed { request_id } => {
                in_flight.remove(&request_id);
                if gateway_sockets.remove(&request_id) {
                    info!("display session closed; the page will reconnect");
                }
            }
            Event::Detached { session_id: s } => {
                if tab.borrow().session_id.as_deref() == Some(s.as_str()) {
                    warn!("detached from the display tab; restarting the browser");
                    return;
                }
            }
            Event::TargetCrashed => {
                warn!("the display tab crashed; restarting the browser");
                return;
            }
            Event::Other(_) => {}
        }
    }
}

async fn take_screenshot(cdp: &Cdp, session: &str, path: &std::path::Path) {
    // Let the page paint its connected state first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let shot = cdp
        .call(
            Some(session),
            "Page.captureScreenshot",
            json!({"format": "png"}),
        )
        .await;
    let bytes = shot
        .ok()
        .and_then(|v| v["data"].as_str().map(str::to_owned))
        .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok());
    match bytes {
        Some(png) => match screengate_identity::fsutil::atomic_write(path, &png, 0o644) {
            Ok(()) => info!(path = %path.display(), bytes = png.len(), "screenshot written"),
            Err(e) => warn!(error = %e, "could not write the screenshot"),
        },
        None => warn!("screenshot failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_origin_is_exact() {
        let o = "https://localhost:8933";
        for u in [
            "https://localhost:8933",
            "https://localhost:8933/",
            "https://localhost:8933/app.js?x",
            "https://localhost:8933#f",
        ] {
            assert!(same_origin(u, o), "{u}");
        }
        for u in [
            "https://localhost:89331/",
            "https://localhost:8933.evil.example/",
            "http://localhost:8933/",
            "https://127.0.0.1:8933/",
            "https://evil.example/https://localhost:8933",
            "https://localhost:8933@evil.example/",
            "data:text/html,x",
        ] {
            assert!(!same_origin(u, o), "{u}");
        }
    }

    #[test]
    fn origin_of_drops_path_and_query() {
        assert_eq!(
            origin_of("http://127.0.0.1:9/secret?q=1"),
            "http://127.0.0.1:9"
        );
        assert_eq!(origin_of("https://a.example"), "https://a.example");
    }

    #[test]
    fn profile_mode_must_be_0700_and_ours() {
        assert!(check_profile_mode(true, 1000, 0o40700, 1000).is_ok());
        for (is_dir, uid, mode) in [
            (false, 1000, 0o100700),
            (true, 0, 0o40700),
            (true, 1000, 0o40755),
            (true, 1000, 0o40750),
            (true, 1000, 0o40701),
            (true, 1000, 0o41700),
            (true, 1000, 0o40600),
        ] {
            assert!(
                check_profile_mode(is_dir, uid, mode, 1000).is_err(),
                "{mode:o}"
            );
        }
    }

    #[test]
    fn the_profile_is_created_0700() {
        use std::os::unix::fs::PermissionsExt;
        // whatever the umask, the mode is the explicit one
        let p = private_profile().ok().map(|d| {
            std::fs::metadata(d.path())
                .map(|m| m.permissions().mode() & 0o777)
                .ok()
        });
        assert_eq!(p, Some(Some(0o700)));
    }

    #[test]
    fn contexts_need_their_own_csp() {
        for t in [
            "Document",
            "Script",
            "Other",
            "",
            "SignedExchange",
            "Prefetch",
            "WebBundle",
        ] {
            assert!(needs_own_csp(t), "{t}");
        }
        for t in ["Image", "Stylesheet", "Font", "XHR", "Fetch"] {
            assert!(!needs_own_csp(t), "{t}");
        }
    }

    #[test]
    fn exit_codes() {
        assert_eq!(LaunchError::Root.exit_code(), 64);
        assert_eq!(LaunchError::NoChromium(String::new()).exit_code(), 69);
    }
}
