//! The event loop of one browser life: CDP events and the arming timers,
//! routed to the lock (`lock`) and to arming (`arm`); the gateway
//! connection tracked (handshake 101, first frame, close) and reported to
//! systemd (`ready`); popups closed; the optional screenshot written.
//!
//! Owns: routing and connection tracking. Leaves to others: every decision
//! (`lock`), every token (`arm`), the tab setup (`tab`), and the life
//! around it (`supervise`, which aborts this loop with the browser).

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use screengate_cdp::{CaptureScreenshot, CloseTarget, Event, ImageFormat};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::arm::{Arming, MAX_IN_FLIGHT};
use crate::lock::{self, Lock, Verdict};
use crate::ready::Readiness;
use crate::supervise::MAX_BACKOFF;
use crate::tab::Tab;
use crate::transport::{Cdp, SessionEvent};

/// Gateway WebSockets tracked at once (beyond this, new ones are not
/// tracked: no re-arm on their handshake, no readiness from them).
const MAX_GATEWAY_SOCKETS: usize = MAX_IN_FLIGHT * 4;
/// Time the page gets to paint its connected state before the screenshot.
const SCREENSHOT_SETTLE: Duration = Duration::from_millis(500);

/// What one browser life's event loop works with.
#[derive(Debug)]
pub(crate) struct Life {
    /// The gateway the tab is locked to.
    pub lock: Lock,
    /// The tokens.
    pub arming: Arming,
    /// Where to write a screenshot after the first message, once.
    pub screenshot: Option<PathBuf>,
    /// What systemd is told.
    pub ready: Arc<Readiness>,
}

/// Runs until the browser goes away, the tab crashes or we are detached
/// from it.
pub(crate) async fn run(
    cdp: Cdp,
    mut events: mpsc::Receiver<SessionEvent>,
    tab: watch::Receiver<Tab>,
    mut life: Life,
) {
    let mut gateway_sockets: HashSet<String> = HashSet::new();
    // The gateway sockets whose handshake got its 101.
    let mut open: HashSet<String> = HashSet::new();
    let mut connected: u64 = 0;
    let mut first_message_seen = false;
    loop {
        let next_revoke = life.arming.next_revoke();
        let (session_id, event) = tokio::select! {
            ev = events.recv() => match ev { Some(ev) => ev, None => return },
            _ = tokio::time::sleep_until(next_revoke.unwrap_or_else(|| tokio::time::Instant::now() + MAX_BACKOFF)), if next_revoke.is_some() => {
                life.arming.revoke_due().await;
                continue;
            }
            _ = tokio::time::sleep_until(life.arming.next_rearm()) => {
                let session = tab.borrow().session_id.clone();
                if life.arming.rearm_at_half_ttl(&cdp, session.as_deref()).await.is_err() {
                    return;
                }
                continue;
            }
        };
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
                let verdict = life
                    .lock
                    .on_request(&url, &resource_type, response.as_ref());
                let sent = match verdict.continue_request(&request_id) {
                    Some(go) => cdp.call(Some(s), &go).await.map(|_| ()),
                    None => cdp
                        .call(Some(s), &Verdict::fail_request(&request_id))
                        .await
                        .map(|_| ()),
                };
                if let Err(e) = sent {
                    tracing::debug!(error = %e, "Fetch reply failed");
                }
            }
            Event::TargetCreated {
                target_id,
                kind,
                opener_id,
            } => {
                let ours = tab.borrow().target_id.clone();
                if lock::is_second_window(&kind, &target_id, ours.as_deref()) {
                    warn!(opener = ?opener_id.is_some(), "closing a new window: the display has one tab");
                    let _ = cdp
                        .call(
                            None,
                            &CloseTarget {
                                target_id: &target_id,
                            },
                        )
                        .await;
                }
            }
            Event::WebSocketCreated { request_id, url } => {
                if life.lock.is_gateway_socket(&url) && gateway_sockets.len() < MAX_GATEWAY_SOCKETS
                {
                    gateway_sockets.insert(request_id);
                }
            }
            Event::WebSocketWillSendHandshake { request_id } => {
                if gateway_sockets.contains(&request_id) {
                    let session = tab.borrow().session_id.clone();
                    if life
                        .arming
                        .on_handshake_sent(&cdp, session.as_deref(), &request_id)
                        .await
                        .is_err()
                    {
                        // A rotated identity: this browser's pin is stale.
                        return;
                    }
                }
            }
            Event::WebSocketHandshakeResponse { request_id, status } => {
                life.arming.on_handshake_response(&request_id, status).await;
                if gateway_sockets.contains(&request_id) {
                    if status == 101 {
                        open.insert(request_id);
                        connected += 1;
                        first_message_seen = false;
                        info!(session = connected, "display connected to the gateway");
                        life.ready.status(&format!(
                            "display session {connected} open; waiting for its first message"
                        ));
                    } else {
                        refused(&life, &status.to_string());
                    }
                }
            }
            Event::WebSocketFrameError {
                request_id,
                message,
            } => {
                // Chromium reports a refused handshake (503 with the
                // backend down, 403) as a frame error, not as a response.
                if gateway_sockets.contains(&request_id) && !open.contains(&request_id) {
                    life.arming.on_handshake_failed(&request_id).await;
                    let why = refused_status(&message)
                        .map_or_else(|| message.clone(), |st| st.to_string());
                    refused(&life, &why);
                }
            }
            Event::WebSocketFrameReceived { request_id } => {
                if gateway_sockets.contains(&request_id) && !first_message_seen {
                    first_message_seen = true;
                    info!(session = connected, "display received its first message");
                    life.ready.display_connected(connected);
                    if let Some(path) = life.screenshot.take() {
                        let session = tab.borrow().session_id.clone();
                        if let Some(s) = session {
                            take_screenshot(&cdp, &s, &path).await;
                        }
                    }
                }
            }
            Event::WebSocketClosed { request_id } => {
                life.arming.on_closed(&request_id);
                if gateway_sockets.remove(&request_id) {
                    info!("display session closed; the page will reconnect");
                    if open.remove(&request_id) {
                        life.ready
                            .status("display disconnected; waiting for the page to reconnect");
                    }
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

/// The gateway refused the display's handshake (`why`: the status, or
/// Chromium's message): logged, and the reason the launcher is not ready.
fn refused(life: &Life, why: &str) {
    warn!(status = why, "the gateway refused the display's handshake");
    life.ready.status(&format!(
        "waiting for the display's first message: the gateway refused its handshake ({why})"
    ));
}

/// The HTTP status in Chromium's "Unexpected response code: 503".
fn refused_status(message: &str) -> Option<u16> {
    let (_, rest) = message.split_once("response code: ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().filter(|s| (100..600).contains(s))
}

async fn take_screenshot(cdp: &Cdp, session: &str, path: &Path) {
    // Let the page paint its connected state first.
    tokio::time::sleep(SCREENSHOT_SETTLE).await;
    let shot = cdp
        .call(
            Some(session),
            &CaptureScreenshot {
                format: ImageFormat::Png,
            },
        )
        .await;
    let bytes = shot.ok().and_then(|s| {
        base64::engine::general_purpose::STANDARD
            .decode(s.data)
            .ok()
    });
    match bytes {
        Some(png) => match write_png(path, &png) {
            Ok(()) => info!(path = %path.display(), bytes = png.len(), "screenshot written"),
            Err(e) => warn!(error = %e, "could not write the screenshot"),
        },
        None => warn!("screenshot failed"),
    }
}

/// Writes `png` to `path` whole or not at all: a temporary file in the same
/// directory (created 0600), made 0644 (a screenshot is not a secret), then
/// renamed over `path`.
fn write_png(path: &Path, png: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".screengate-shot-")
        .tempfile_in(dir)?;
    tmp.write_all(png)?;
    tmp.as_file().sync_all()?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_status_comes_from_chromiums_message() {
        assert_eq!(
            refused_status("Error during WebSocket handshake: Unexpected response code: 503"),
            Some(503)
        );
        assert_eq!(refused_status("Unexpected response code: 403 x"), Some(403));
        for m in [
            "",
            "net::ERR_CONNECTION_REFUSED",
            "Unexpected response code: ",
            "Unexpected response code: 99999",
            "Unexpected response code: 42",
            "Unexpected response code: x503",
        ] {
            assert_eq!(refused_status(m), None, "{m}");
        }
    }

    #[test]
    fn the_screenshot_is_written_whole_and_0644() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("shot.png");
        std::fs::write(&p, b"old").unwrap();
        write_png(&p, b"\x89PNG new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"\x89PNG new");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        // no temporary file left behind
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        // a missing directory is an error, not a panic
        assert!(write_png(&d.path().join("no/such/dir/x.png"), b"x").is_err());
    }
}
