//! Supervision: vets the options, then runs browser lives one after the
//! other until SIGTERM/SIGINT — mint, private profile, spawn, [`drive`] (tab
//! setup, then the event loop), close, kill the process group, remove the
//! profile, back off, again.
//!
//! Owns: the restart policy and its bounds, signals, the profile directory,
//! and the order of one life. Leaves to others: the tab setup (`tab`), what
//! happens while the browser lives (`events`), tokens (`arm`), and what
//! systemd is told (`ready`, called here at the life boundaries).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use screengate_cdp::BrowserClose;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::arm::Minted;
use crate::ready::Readiness;
use crate::transport::{CallError, Cdp, SessionEvent};
use crate::{LaunchError, Options, arm, chromium, events, tab};

/// First restart delay after the browser dies; doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest restart / retry delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A browser that lived this long resets the backoff.
const HEALTHY_LIFE: Duration = Duration::from_secs(30);
/// Time the browser gets to close cleanly before its process group is killed.
const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// How long `Browser.close` may take to answer.
const CLOSE_CALL: Duration = Duration::from_secs(1);

/// Why one browser life ended.
pub(crate) enum LifeEnd {
    /// The browser exited or its pipe closed: restart.
    Exited,
    /// Not worth retrying.
    Fatal(LaunchError),
}

/// A failed CDP call ends the life (the browser is restarted).
pub(crate) fn call_end(e: CallError) -> LifeEnd {
    match e {
        CallError::Closed(_) => LifeEnd::Exited,
        other => {
            warn!(error = %other, "DevTools call failed; restarting the browser");
            LifeEnd::Exited
        }
    }
}

/// Aborts the task when dropped, so a cancelled browser life (SIGTERM)
/// takes its event loop with it.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
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
    let ready = Arc::new(Readiness::from_env());
    let _watchdog = ready.watchdog();
    let result = supervise(&opts, &binary, &extra, &ready, &mut term, &mut int).await;
    ready.stopping();
    result
}

/// The restart loop; returns on a signal (`Ok`) or a fatal error.
async fn supervise(
    opts: &Options,
    binary: &std::path::Path,
    extra: &[chromium::Extra],
    ready: &Arc<Readiness>,
    term: &mut Signal,
    int: &mut Signal,
) -> Result<(), LaunchError> {
    let mut backoff = FIRST_BACKOFF;
    let mut screenshot = opts.screenshot.clone();
    let mut restarts: u64 = 0;
    loop {
        ready.status("waiting for a token from the control socket");
        let minted = tokio::select! {
            m = arm::mint_with_retry(opts, ready) => m?,
            _ = stopped(term, int, ready) => { info!("stopping (signal before launch)"); return Ok(()) }
        };
        let profile = private_profile()?;
        let launch = chromium::Launch {
            binary: binary.to_owned(),
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
        ready.status("waiting for the display's first message");
        let (cdp, events) = Cdp::start(browser.to_browser, browser.from_browser);
        let life = tokio::select! {
            end = drive(&cdp, events, opts, minted, screenshot.take(), ready) => Some(end),
            _ = stopped(term, int, ready) => None,
        };
        // Either way the browser goes now: ask, then make sure.
        let clean = tokio::time::timeout(CLOSE_CALL, cdp.call(None, &BrowserClose {})).await;
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
                restarts += 1;
                ready.status(&format!("browser restarting ({restarts})"));
                warn!(status = ?status, retry_in = ?backoff, "Chromium exited; restarting it with a fresh token");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stopped(term, int, ready) => { info!("stopped"); return Ok(()) }
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

/// Resolves on SIGTERM or SIGINT, telling systemd at once that the
/// launcher is stopping (the browser is closed after this).
async fn stopped(term: &mut Signal, int: &mut Signal, ready: &Readiness) {
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    ready.stopping();
}

/// One browser life: set the tab up, navigate, then keep the token armed
/// and the tab locked until the browser goes away.
async fn drive(
    cdp: &Cdp,
    events: tokio::sync::mpsc::Receiver<SessionEvent>,
    opts: &Options,
    minted: Minted,
    screenshot: Option<PathBuf>,
    ready: &Arc<Readiness>,
) -> LifeEnd {
    let life = events::Life {
        lock: crate::lock::Lock {
            origin: minted.origin.clone(),
            ws_url: minted.ws_url.clone(),
        },
        arming: arm::Arming::new(
            opts.control.clone(),
            opts.server_uid,
            minted.expires_in,
            minted.spki_pin.clone(),
            minted.revoke_handle.clone(),
        ),
        screenshot,
        ready: ready.clone(),
    };
    let (tab_tx, tab_rx) = watch::channel(tab::Tab::default());
    let loop_cdp = cdp.clone();
    let mut event_loop = AbortOnDrop(tokio::spawn(async move {
        events::run(loop_cdp, events, tab_rx, life).await
    }));
    let setup = tab::setup(cdp, &tab_tx, &minted).await;
    drop(minted);
    if let Err(end) = setup {
        return end;
    }
    let _ = (&mut event_loop.0).await;
    LifeEnd::Exited
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
