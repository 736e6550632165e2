//! The display tab: find the neutral page Chromium opened, attach to it,
//! and prepare it in the one safe order — network events, no service
//! worker, the token header, the `Fetch` lock, page events — before the
//! navigation, which comes last.
//!
//! Owns: the setup order and the [`Tab`] identity the event loop reads.
//! Leaves to others: what the lock decides (`lock`), the header command
//! (`arm::set_header`), and the event loop (`events`).

use std::time::{Duration, Instant};

use screengate_cdp::{
    AttachToTarget, FetchEnable, GetTargets, Navigate, NetworkEnable, PageEnable, RequestPattern,
    SetBypassServiceWorker, SetDiscoverTargets,
};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::LaunchError;
use crate::arm::Minted;
use crate::supervise::{LifeEnd, call_end};
use crate::transport::Cdp;

/// How long Chromium has to show its first page target.
const FIRST_TARGET: Duration = Duration::from_secs(15);

/// Our tab, once known.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tab {
    /// The page target.
    pub target_id: Option<String>,
    /// The flattened session attached to it.
    pub session_id: Option<String>,
}

/// Attaches to the tab and navigates it, with the header and the lock in
/// place first: no request of the tab leaves before both are.
pub(crate) async fn setup(
    cdp: &Cdp,
    tab_tx: &watch::Sender<Tab>,
    minted: &Minted,
) -> Result<(), LifeEnd> {
    // The initial (neutral) page target.
    let deadline = Instant::now() + FIRST_TARGET;
    let target_id = loop {
        let targets = cdp.call(None, &GetTargets {}).await.map_err(call_end)?;
        let found = targets
            .target_infos
            .into_iter()
            .find(|t| t.kind == "page")
            .map(|t| t.target_id);
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
    cdp.call(None, &SetDiscoverTargets { discover: true })
        .await
        .map_err(call_end)?;
    let session = cdp
        .call(
            None,
            &AttachToTarget {
                target_id: &target_id,
                flatten: true,
            },
        )
        .await
        .map_err(call_end)?
        .session_id;
    tab_tx.send_modify(|t| t.session_id = Some(session.clone()));
    let s = Some(session.as_str());
    // Order matters: without Network.enable the header call is silently a no-op.
    cdp.call(s, &NetworkEnable {}).await.map_err(call_end)?;
    // A navigation a service worker answers never reaches `Fetch`, so its
    // document would skip the CSP check below while the header still
    // applies to its requests: every request of the tab goes to the
    // network instead (e2e launcher_service_worker_cannot_serve_an_unlocked_document).
    cdp.call(s, &SetBypassServiceWorker { bypass: true })
        .await
        .map_err(call_end)?;
    crate::arm::set_header(cdp, &session, &minted.header, minted.token.expose_secret())
        .await
        .map_err(call_end)?;
    cdp.call(
        s,
        &FetchEnable {
            patterns: &[RequestPattern { url_pattern: "*" }],
        },
    )
    .await
    .map_err(call_end)?;
    cdp.call(s, &PageEnable {}).await.map_err(call_end)?;
    info!(url = %minted.url, "token armed (expires in {} ms); tab locked to {}; navigating", minted.expires_in.as_millis(), minted.origin);
    let nav = cdp
        .call(s, &Navigate { url: &minted.url })
        .await
        .map_err(call_end)?;
    if let Some(err) = nav.error_text.filter(|e| !e.is_empty()) {
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
