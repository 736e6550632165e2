//! Arming: the tab always carries a fresh, unused token. Mints (retrying an
//! unreachable or rate-limiting server), sets the token header on the tab,
//! re-arms after every gateway handshake and at half the TTL, and revokes
//! every token the tab no longer carries — at once if a handshake that
//! carried it was refused, after [`REVOKE_GRACE`] if it was superseded.
//!
//! Owns: every call to the control socket (`control::mint`/`revoke` are
//! called from here and nowhere else), the one command that carries the
//! token ([`set_header`]), and the bookkeeping of which token went where.
//! Leaves to others: which sockets are the gateway's (`lock`), when events
//! arrive (`events`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use screengate_cdp::SetExtraHttpHeaders;
use tokio::time::Instant;
use tracing::{info, warn};

// The launcher's one import site of `control` (lib.rs re-exports it).
pub(crate) use crate::control::Minted;
use crate::control::{MintError, ServerUid, mint, revoke};
use crate::ready::Readiness;
use crate::supervise::{FIRST_BACKOFF, MAX_BACKOFF};
use crate::transport::{CallError, Cdp};
use crate::{LaunchError, Options};

/// Gateway handshakes whose token's fate is awaited (the page opens one at
/// a time; anything beyond this is not tracked and expires with its TTL).
pub(crate) const MAX_IN_FLIGHT: usize = 16;
/// How long a token superseded at TTL/2 stays valid before it is revoked:
/// time for a handshake that already carried it (its event not yet read)
/// to be consumed rather than refused.
const REVOKE_GRACE: Duration = Duration::from_secs(2);
/// How soon a failed re-arm is tried again.
const REARM_RETRY: Duration = Duration::from_secs(1);

/// Mints, waiting out an unreachable server or a rate limit; a refusal that
/// waiting cannot fix (not_authorized) is returned.
pub(crate) async fn mint_with_retry(
    opts: &Options,
    ready: &Readiness,
) -> Result<Minted, LaunchError> {
    let mut wait = FIRST_BACKOFF;
    loop {
        match mint(&opts.control, opts.server_uid).await {
            Ok(m) => return Ok(m),
            Err(MintError::Refused(crate::control::Refusal::RateLimited { retry_after_ms })) => {
                ready.status("waiting for a token: the server rate-limits minting");
                tokio::time::sleep(Duration::from_millis(retry_after_ms)).await;
            }
            Err(e @ (MintError::Refused(_) | MintError::Untrusted(_))) => return Err(e.into()),
            Err(e) => {
                ready.status(&format!("waiting for the screengate server: {e}"));
                warn!(error = %e, retry_in = ?wait, "screengate server unreachable; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Sets the token header on the tab. The command borrows the token and is
/// encoded into a zeroizing frame (`screengate_cdp::Command::encode`): the
/// token's only other copies are the control reply's `Zeroizing` string
/// and the pipe.
pub(crate) async fn set_header(
    cdp: &Cdp,
    session: &str,
    header: &str,
    token: &str,
) -> Result<(), CallError> {
    cdp.call(
        Some(session),
        &SetExtraHttpHeaders {
            name: header,
            value: token,
        },
    )
    .await
    .map(|_| ())
}

/// Which token the tab carries, which token each gateway handshake in
/// flight carried, and which superseded tokens wait for revocation.
#[derive(Debug)]
pub(crate) struct Arming {
    control: PathBuf,
    server: ServerUid,
    half_ttl: Duration,
    /// The SPKI pin this browser was started with: a token minted under
    /// another (a rotated identity) is useless to it.
    pin: String,
    /// The revocation handle of the token the tab carries now.
    armed: Option<String>,
    /// Network request id → the handle of the token that handshake carried.
    in_flight: HashMap<String, Option<String>>,
    /// Superseded tokens waiting out [`REVOKE_GRACE`].
    pending_revoke: Vec<(Instant, String)>,
    next_rearm: Instant,
}

impl Arming {
    /// The state after the first token (`armed`, valid for `ttl`) was set.
    pub fn new(
        control: PathBuf,
        server: ServerUid,
        ttl: Duration,
        pin: String,
        armed: Option<String>,
    ) -> Self {
        let half_ttl = ttl / 2;
        Arming {
            control,
            server,
            half_ttl,
            pin,
            armed,
            in_flight: HashMap::new(),
            pending_revoke: Vec::new(),
            next_rearm: Instant::now() + half_ttl,
        }
    }

    /// When the armed token is due to be replaced.
    pub fn next_rearm(&self) -> Instant {
        self.next_rearm
    }

    /// When the next superseded token is due for revocation, if any is.
    pub fn next_revoke(&self) -> Option<Instant> {
        self.pending_revoke.iter().map(|(at, _)| *at).min()
    }

    /// Revokes the superseded tokens whose grace is over.
    pub async fn revoke_due(&mut self) {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = self
            .pending_revoke
            .drain(..)
            .partition(|(at, _)| *at <= now);
        self.pending_revoke = later;
        for (_, handle) in due {
            revoke_superseded(&self.control, self.server, &handle).await;
        }
    }

    /// Half the TTL passed: arm a fresh token; the superseded one is unused
    /// unless a handshake that carried it is not reported yet, so it is
    /// revoked after [`REVOKE_GRACE`] (such a handshake is consumed first;
    /// revoking a consumed token is harmless).
    /// Returns [`PinChanged`] when the server now serves another
    /// certificate: this browser's life is over.
    pub async fn rearm_at_half_ttl(
        &mut self,
        cdp: &Cdp,
        session: Option<&str>,
    ) -> Result<(), PinChanged> {
        let Some(s) = session else {
            self.next_rearm = Instant::now() + REARM_RETRY;
            return Ok(());
        };
        let next = rearm(cdp, &self.control, self.server, &self.pin, s).await?;
        let ok = next.is_some();
        if let Some(new) = next
            && let Some(old) = std::mem::replace(&mut self.armed, new)
            && self.pending_revoke.len() < MAX_IN_FLIGHT
        {
            self.pending_revoke
                .push((Instant::now() + REVOKE_GRACE, old));
        }
        self.next_rearm = Instant::now() + if ok { self.half_ttl } else { REARM_RETRY };
        Ok(())
    }

    /// The armed token is going out on gateway handshake `request_id`: arm
    /// the next; the outgoing one is judged by the response.
    pub async fn on_handshake_sent(
        &mut self,
        cdp: &Cdp,
        session: Option<&str>,
        request_id: &str,
    ) -> Result<(), PinChanged> {
        let Some(s) = session else {
            return Ok(());
        };
        let next = rearm(cdp, &self.control, self.server, &self.pin, s).await?;
        let ok = next.is_some();
        if let Some(new) = next {
            let used = std::mem::replace(&mut self.armed, new);
            if self.in_flight.len() < MAX_IN_FLIGHT {
                self.in_flight.insert(request_id.to_owned(), used);
            }
        }
        self.next_rearm = Instant::now() + if ok { self.half_ttl } else { REARM_RETRY };
        Ok(())
    }

    /// A handshake's response: 101 consumed its token; any refusal (503
    /// with the backend down) left it valid while the tab no longer
    /// carries it, so it is revoked now.
    pub async fn on_handshake_response(&mut self, request_id: &str, status: u16) {
        if let Some(Some(used)) = self.in_flight.remove(request_id)
            && status != 101
        {
            revoke_superseded(&self.control, self.server, &used).await;
        }
    }

    /// A handshake failed before any response was reported (Chromium's
    /// frame error for a refused handshake): its token was not consumed,
    /// and the tab no longer carries it, so it is revoked now.
    pub async fn on_handshake_failed(&mut self, request_id: &str) {
        if let Some(Some(used)) = self.in_flight.remove(request_id) {
            revoke_superseded(&self.control, self.server, &used).await;
        }
    }

    /// The socket closed: nothing more to judge about its token.
    pub fn on_closed(&mut self, request_id: &str) {
        self.in_flight.remove(request_id);
    }
}

/// Mints and arms the next token; its revocation handle on success
/// (`Some(None)` from a server that sends none), `None` on failure.
/// The server answered with another certificate pin than the one this
/// browser trusts: its identity was rotated (`screengate rotate`, then a
/// reload). Every token of the old identity is dead and the browser cannot
/// reach the new one, so its life ends and the next starts with the new pin.
#[derive(Debug)]
pub(crate) struct PinChanged;

async fn rearm(
    cdp: &Cdp,
    control: &Path,
    server: ServerUid,
    pin: &str,
    session: &str,
) -> Result<Option<Option<String>>, PinChanged> {
    Ok(match mint(control, server).await {
        Ok(m) if m.spki_pin != pin => {
            warn!(
                "the server's certificate changed (its identity was rotated): restarting the browser with the new pin"
            );
            // never armed: it must not stay valid either
            if let Some(h) = &m.revoke_handle {
                revoke_superseded(control, server, h).await;
            }
            return Err(PinChanged);
        }
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
    })
}

/// Revokes a token the tab no longer carries, so it is dead before it
/// expires.
async fn revoke_superseded(control: &Path, server: ServerUid, handle: &str) {
    match revoke(control, server, handle).await {
        Ok(()) => info!("revoked the superseded token"),
        Err(e) => {
            warn!(error = %e, "could not revoke the superseded token; it expires with its TTL")
        }
    }
}
