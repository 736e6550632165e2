//! The upgrade, sequenced: the only place that runs the gate's checks and
//! the effects between them, in this order:
//!
//! 0. (TLS listener) the uid owning the client's socket, from the kernel's
//!    table, is in `[gateway] allowed_peer_uids`                  → 403;
//!    a failed lookup is refused too, never allowed. Before anything
//!    of the request is read, so another user's token is worthless;
//! 1. well-formed (else 400): no query string, exactly one `Host`, at most
//!    one `Origin` and one token header, a token that is non-empty visible
//!    ASCII, a valid WebSocket upgrade;
//! 2. `Host` is the listener's own name (DNS-rebinding defence), and so
//!    is an absolute-form target's authority                    → 403;
//! 3. `Origin` equals an allowed origin byte for byte            → 403;
//! 4. the token verifies for its channel, unexpired, and is claimed
//!    (`gate::Admission::open`; a copy being admitted: `token_in_flight`,
//!    a missing one without the pinned client certificate's evidence
//!    where tokens are off: `missing_token`)                      → 403;
//! 5. a session slot is free                                      → 503;
//!    (`when_full = "replace_oldest"`: the token is spent, the oldest
//!    session is closed and its slot awaited instead);
//! 6. the backend connects and authenticates (`backend::connect` returns
//!    the `BackendConnected` evidence): `backend_uid`, TLS (token NOT
//!    consumed on failure, a typed reason: `backend_busy` for a 409,
//!    `backend_cert_untrusted`, …)                                 → 503;
//!    (`replace_oldest`: a 409 spends the token, closes the oldest
//!    session, then retries);
//! 7. `Admission::consume(BackendConnected)`: the token is consumed
//!    atomically (exactly one racer wins), or an early-spent one checked
//!    for revocation again                                         → 403;
//! 8. 101, and the proxy takes the `gate::Session` only step 7 builds.
//!
//! The peer sees a uniform body per status; the reason goes to the audit
//! log with the peer uid and the token-id prefix, never the token. The
//! token is read from its header only: never the query string, a cookie or
//! `Sec-WebSocket-Protocol`.
//!
//! What it leaves to others: every decision (`gate`), accepting, TLS and
//! HTTP (`gateway.rs`, `native.rs`), connecting (`backend.rs`), frames
//! (`proxy.rs`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, Uri};
use screengate_token::{Channel, Rejection};

use crate::audit;
use crate::backend::{BackendError, BackendStream};
use crate::config::WhenFull;
use crate::gate::{
    Admission, BackendConnected, Conn, LogWindow, Malformed, Peer, Policy, Refusal,
    check_native_request, check_request, peer_uid_verdict,
};
use crate::live::Keys;
use crate::state::Shared;

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match status {
            StatusCode::BAD_REQUEST => "bad request\n",
            StatusCode::SERVICE_UNAVAILABLE => "service unavailable\n",
            _ => "forbidden\n",
        };
        (status, body).into_response()
    }
}

/// The rejection-log budget (process-wide: one server per process outside
/// tests); its clock is the wall clock's second.
static REJECTION_LOG: std::sync::Mutex<LogWindow> = std::sync::Mutex::new(LogWindow::new());

/// The reason of the latest refusal, for `STATUS=` (process-wide, like the
/// log window).
static LAST_REFUSAL: std::sync::Mutex<Option<&'static str>> = std::sync::Mutex::new(None);

/// The reason of the latest refused upgrade, if any was refused.
pub(crate) fn last_refusal() -> Option<&'static str> {
    *LAST_REFUSAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn note_refusal(reason: &'static str) {
    *LAST_REFUSAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason);
}

/// Whether to log this rejection, and how many were suppressed before it.
fn rejection_log_slot() -> Option<u64> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    REJECTION_LOG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .slot(now)
}

fn refuse(peer: &Peer, uid: Option<u32>, refusal: Refusal, token_id: Option<&str>) -> Response {
    note_refusal(refusal.reason());
    if let Some(suppressed) = rejection_log_slot() {
        audit!(warn, event = "rejected", reason = refusal.reason(), peer = %peer, peer_uid = uid,
            token_id = token_id.unwrap_or("-"), suppressed_before = suppressed);
    }
    refusal.into_response()
}

/// A backend failure: the detail to the log, the typed reason (with both
/// uids for `backend_uid_mismatch`) to the audit log, 503 to the peer.
fn refuse_backend(
    peer: &Peer,
    uid: Option<u32>,
    e: &BackendError,
    token_id: Option<&str>,
) -> Response {
    // the token is kept unless it already replaced a session
    tracing::warn!(error = %e, "backend connect failed");
    note_refusal(e.reason());
    if let Some(suppressed) = rejection_log_slot() {
        let (expected, actual) = e.uids().unzip();
        audit!(warn, event = "rejected", reason = e.reason(), peer = %peer, peer_uid = uid,
            token_id = token_id.unwrap_or("-"), backend_uid_expected = expected,
            backend_uid_actual = actual, suppressed_before = suppressed);
    }
    Refusal::Backend(e.reason()).into_response()
}

/// Why [`connect_backend`] gave up.
enum ConnectFail {
    /// The backend could not be reached or authenticated.
    Backend(BackendError),
    /// The token could not be spent for a replacement (consumed meanwhile).
    Spent(Rejection),
}

/// Connects the backend. With `replace_oldest`, a 409 (the SDK serves one
/// connection) spends the token and closes the oldest session, unless one
/// was already closed for this admission (`replaced`), and retries the
/// 409s for [`crate::limits::REPLACE_RETRY_WINDOW`], each attempt with its
/// own connect deadline.
async fn connect_backend(
    shared: &Shared,
    keys: &Keys,
    when_full: WhenFull,
    mut replaced: bool,
    admission: &mut Admission,
) -> Result<BackendConnected<BackendStream>, ConnectFail> {
    let first = shared.backend.connect().await;
    let busy = matches!(first, Err(BackendError::Busy { .. }));
    if !busy || when_full != WhenFull::ReplaceOldest {
        return first.map_err(ConnectFail::Backend);
    }
    if !replaced {
        replaced = shared
            .roster
            .replace_oldest_if(|| admission.spend(&keys.authority))
            .map_err(ConnectFail::Spent)?;
        if replaced {
            audit!(
                info,
                event = "replacing_oldest",
                cause = "backend_busy",
                token_id = admission.token_id().unwrap_or("-")
            );
        }
    }
    if !replaced {
        // Busy with a connection that is not one of our sessions.
        return first.map_err(ConnectFail::Backend);
    }
    let deadline = tokio::time::Instant::now() + crate::limits::REPLACE_RETRY_WINDOW;
    let mut attempt = 1u32;
    loop {
        tokio::time::sleep(crate::limits::REPLACE_RETRY_INTERVAL).await;
        attempt += 1;
        match shared.backend.connect().await {
            Err(e)
                if tokio::time::Instant::now() < deadline
                    && matches!(e, BackendError::Busy { .. }) =>
            {
                tracing::debug!(attempt, error = %e, "backend still busy after the replacement; retrying");
            }
            Err(e) => {
                tracing::warn!(attempt, error = %e, "backend connect after the replacement failed");
                return Err(ConnectFail::Backend(e));
            }
            Ok(b) => {
                tracing::debug!(attempt, "backend connected after the replacement");
                return Ok(b);
            }
        }
    }
}

/// The uid owning the client end of a TLS-listener connection, checked
/// against `allowed_peer_uids`. The client's socket is the one whose own
/// address is the peer's and whose peer is our listener's address.
fn gateway_peer_uid(shared: &Shared, peer: &Peer) -> Result<u32, (Refusal, Option<u32>)> {
    let lookup = match peer {
        Peer::Tcp(client) => crate::peer_uid::tcp_socket_owner(
            *client,
            SocketAddr::new(shared.listen_ip, shared.port),
        ),
        // not reached (the native router has its own handler); SO_PEERCRED
        // already told the uid
        Peer::Unix { uid, .. } => Ok(*uid),
    };
    let lookup = lookup
        .map_err(|e| {
            tracing::warn!(peer = %peer, error = %e, "cannot tell the owner of the client socket; refusing");
        })
        .ok();
    peer_uid_verdict(lookup, &shared.live().allowed_peer_uids)
}

/// The native socket's connection check (before TLS): the SO_PEERCRED uid
/// must be allowed. Audited when refused; the listener just closes.
pub(crate) fn native_peer_allowed(shared: &Shared, peer: &Peer, uid: u32) -> bool {
    let ok = crate::gate::uid_allowed(uid, &shared.live().native_allowed_uids);
    if !ok {
        audit!(warn, event = "rejected", reason = "uid_not_allowed", listener = "native", peer = %peer);
    }
    ok
}

/// Everything after the listener-specific header checks, shared by both
/// listeners: a valid upgrade, the token (if required), a session slot,
/// the backend, consume, 101.
async fn admit(
    shared: Arc<Shared>,
    conn: Conn,
    uid: Option<u32>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    token: Option<&str>,
    require_token: bool,
    channel: Channel,
) -> Response {
    let Conn { peer, client_cert } = conn;
    let Ok(ws) = ws else {
        let r = Refusal::Malformed(Malformed::NotWebsocketUpgrade);
        return refuse(&peer, uid, r, None);
    };
    // One identity and one set of live settings for the whole handshake,
    // whatever a reload swaps in meanwhile.
    let keys = shared.keys();
    let when_full = shared.live().when_full;
    // Verified and claimed: one handshake per token from here to consume,
    // so copies of one token raced in parallel cannot each replace a
    // session or hold one of the backend's connections.
    let opened = Admission::open(
        &keys.authority,
        &shared.claims,
        channel,
        token,
        require_token,
        client_cert,
    );
    let mut admission = match opened {
        Ok(a) => a,
        Err((r, id)) => return refuse(&peer, uid, r, id.as_deref()),
    };
    let mut replaced = false;
    let slot = match shared.sessions.clone().try_acquire_owned() {
        Ok(s) => s,
        Err(_) if when_full == WhenFull::ReplaceOldest => {
            match shared
                .roster
                .replace_oldest_if(|| admission.spend(&keys.authority))
            {
                Ok(true) => {}
                Ok(false) => {
                    return refuse(&peer, uid, Refusal::SessionLimit, admission.token_id());
                }
                Err(r) => return refuse(&peer, uid, Refusal::Token(r), admission.token_id()),
            }
            audit!(
                info,
                event = "replacing_oldest",
                cause = "session_limit",
                token_id = admission.token_id().unwrap_or("-")
            );
            replaced = true;
            match tokio::time::timeout(
                crate::limits::REPLACE_WAIT,
                shared.sessions.clone().acquire_owned(),
            )
            .await
            {
                Ok(Ok(s)) => s,
                _ => return refuse(&peer, uid, Refusal::SessionLimit, admission.token_id()),
            }
        }
        Err(_) => return refuse(&peer, uid, Refusal::SessionLimit, admission.token_id()),
    };
    let connected = connect_backend(&shared, &keys, when_full, replaced, &mut admission).await;
    let token_id = admission.token_id().map(str::to_owned);
    let id = token_id.as_deref();
    let backend = match connected {
        Ok(b) => b,
        Err(ConnectFail::Backend(e)) => return refuse_backend(&peer, uid, &e, id),
        Err(ConnectFail::Spent(r)) => return refuse(&peer, uid, Refusal::Token(r), id),
    };
    // Subscribed before the last revocation check, so a revoke all from
    // here on reaches the session's proxy.
    let revoked = shared.revoked_all.subscribe();
    let session = match admission.consume(&keys.authority, backend) {
        Ok(s) => s,
        Err(r) => return refuse(&peer, uid, r, id),
    };
    let entry = shared.roster.join();
    audit!(info, event = "accepted", peer = %peer, peer_uid = uid, token_id = %session.label(), channel = channel.as_str());
    let ends = crate::proxy::Ends {
        peer,
        replaced: entry.replaced.clone(),
        shutdown: shared.shutdown.clone(),
        revoked,
    };
    let max_message = shared.upgrade.max_message_size;
    ws.max_message_size(max_message)
        .max_frame_size(max_message)
        .read_buffer_size(crate::limits::WS_READ_BUFFER)
        .write_buffer_size(crate::limits::WS_WRITE_BUFFER)
        .max_write_buffer_size(crate::limits::ws_max_write_buffer(max_message))
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "upgrade failed after 101"))
        .on_upgrade(move |socket| crate::proxy::run(socket, session, ends, (entry, slot)))
}

/// The TLS listener's upgrade path.
pub(crate) async fn upgrade(
    State(shared): State<Arc<Shared>>,
    Extension(conn): Extension<Conn>,
    uri: Uri,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // 0. whose socket is this? Before a byte of the request is looked at.
    let uid = match gateway_peer_uid(&shared, &conn.peer) {
        Ok(uid) => uid,
        Err((r, uid)) => return refuse(&conn.peer, uid, r, None),
    };
    let live = shared.live();
    let policy = Policy {
        port: shared.port,
        listen_ip: shared.listen_ip,
        origins: &live.origins,
        token_header: &shared.upgrade.token_header,
    };
    let token = match check_request(&headers, &uri, &policy) {
        Ok(t) => t,
        Err(r) => return refuse(&conn.peer, Some(uid), r, None),
    };
    let require = shared.upgrade.gateway_require_token;
    admit(
        shared.clone(),
        conn,
        Some(uid),
        ws,
        token,
        require,
        Channel::Display,
    )
    .await
}

/// The native socket's upgrade path (no Host or Origin).
pub(crate) async fn native_upgrade(
    State(shared): State<Arc<Shared>>,
    Extension(conn): Extension<Conn>,
    uri: Uri,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let uid = match &conn.peer {
        Peer::Unix { uid, .. } => Some(*uid),
        Peer::Tcp(_) => None,
    };
    let token = match check_native_request(&headers, &uri, &shared.upgrade.token_header) {
        Ok(t) => t,
        Err(r) => return refuse(&conn.peer, uid, r, None),
    };
    let require = shared.native.as_ref().is_none_or(|n| n.require_token);
    admit(
        shared.clone(),
        conn,
        uid,
        ws,
        token,
        require,
        Channel::Native,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_backend_failure_is_503_with_its_own_reason() {
        use crate::backend_tls::TlsFailure;
        let t = || "wss://localhost:8933/".to_owned();
        let cases = [
            (BackendError::Busy { target: t() }, "backend_busy"),
            (
                BackendError::UidMismatch {
                    target: t(),
                    expected: 1001,
                    actual: 1002,
                },
                "backend_uid_mismatch",
            ),
            (
                BackendError::UidUnknown {
                    target: t(),
                    detail: String::new(),
                },
                "backend_uid_unknown",
            ),
            (BackendError::Timeout { target: t() }, "backend_unavailable"),
            (
                BackendError::Connect {
                    target: t(),
                    source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
                },
                "backend_unavailable",
            ),
        ];
        let tls = [
            (TlsFailure::Handshake, "backend_tls_handshake"),
            (TlsFailure::CertUntrusted, "backend_cert_untrusted"),
            (TlsFailure::CertExpired, "backend_cert_expired"),
            (TlsFailure::ClientCertRefused, "backend_client_cert_refused"),
        ];
        let mut all: Vec<(BackendError, &str)> = cases.into_iter().collect();
        all.extend(tls.into_iter().map(|(kind, r)| {
            (
                BackendError::Tls {
                    target: t(),
                    kind,
                    detail: String::new(),
                },
                r,
            )
        }));
        for (e, want) in &all {
            assert_eq!(e.reason(), *want);
            let r = Refusal::Backend(e.reason());
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{want}");
            assert_eq!(r.reason(), *want);
            assert_eq!(r.into_response().status(), StatusCode::SERVICE_UNAVAILABLE);
        }
        assert_eq!(all[1].0.uids(), Some((1001, 1002)));
        assert_eq!(all[0].0.uids(), None);
        // the message names both uids, for the operator's log
        let m = all[1].0.to_string();
        assert!(m.contains("1001") && m.contains("1002"), "{m}");
    }

    #[test]
    fn the_peer_sees_the_status_never_the_reason() {
        for (r, status) in [
            (
                Refusal::Malformed(Malformed::QueryString),
                StatusCode::BAD_REQUEST,
            ),
            (Refusal::BadOrigin, StatusCode::FORBIDDEN),
            (Refusal::Token(Rejection::Replayed), StatusCode::FORBIDDEN),
            (Refusal::SessionLimit, StatusCode::SERVICE_UNAVAILABLE),
        ] {
            assert_eq!(r.into_response().status(), status);
        }
    }
}
