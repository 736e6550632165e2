//! The WebSocket upgrade guard: nothing reaches the backend until every
//! check has passed, in this order:
//!
//! 0. (TLS listener) the uid owning the client's socket, from the kernel's
//!    table, is in `[gateway] allowed_peer_uids`                  → 403;
//!    a failed lookup is refused too, never allowed. Before anything
//!    of the request is read, so another user's token is worthless;
//! 1. well-formed (else 400): no query string, exactly one `Host`, at most
//!    one `Origin` and one token header, a token that is non-empty visible
//!    ASCII, a valid WebSocket upgrade;
//! 2. `Host` is the listener's own name (DNS-rebinding defence)  → 403;
//! 3. `Origin` equals an allowed origin byte for byte            → 403;
//! 4. the token verifies for channel `display`, unexpired       → 403;
//! 5. a session slot is free                                      → 503;
//!    (`when_full = "replace_oldest"`: the oldest session is closed and
//!    its slot awaited instead);
//! 6. the backend connects and authenticates: `backend_uid`, TLS (token NOT
//!    consumed on failure, a typed reason: `backend_busy` for a 409,
//!    `backend_cert_untrusted`, …)                                 → 503;
//!    (`replace_oldest`: a 409 closes the oldest session, then retries);
//! 7. the token is consumed atomically (exactly one racer wins)   → 403;
//! 8. 101, and the proxy takes a [`Session`] only this module builds.
//!
//! The peer sees a uniform body per status; the reason goes to the audit
//! log with the peer uid and the token-id prefix, never the token. The token is read from its
//! header only: never the query string, a cookie or `Sec-WebSocket-Protocol`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, Uri};
use screengate_token::{Authority, Channel, Consumed, MonotonicClock, Rejection, Verified};
use tokio::sync::OwnedSemaphorePermit;

use crate::audit;
use crate::config::WhenFull;
use crate::gateway::Peer;
use crate::live::Keys;
use crate::server::Shared;

/// Why a handshake was refused (the audit reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The client socket belongs to a uid not in `allowed_peer_uids` → 403.
    PeerUidNotAllowed,
    /// The owner of the client socket could not be told → 403.
    PeerUidUnknown,
    /// Malformed request → 400.
    BadRequest(&'static str),
    /// `Host` is not the listener's own name → 403.
    BadHost,
    /// No `Origin` header → 403.
    MissingOrigin,
    /// `Origin` not in the allow-list → 403.
    BadOrigin,
    /// No token header → 403.
    MissingToken,
    /// The token was refused → 403.
    Token(Rejection),
    /// Another handshake is admitting this same token right now → 403.
    TokenInFlight,
    /// All session slots are taken → 503.
    SessionLimit,
    /// The backend could not be reached or authenticated → 503; the
    /// reason is [`crate::backend::BackendError::reason`].
    Backend(&'static str),
}

impl Refusal {
    /// The audit reason string.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::BadRequest(r) => r,
            Refusal::PeerUidNotAllowed => "peer_uid_not_allowed",
            Refusal::PeerUidUnknown => "peer_uid_unknown",
            Refusal::BadHost => "bad_host",
            Refusal::MissingOrigin => "missing_origin",
            Refusal::BadOrigin => "bad_origin",
            Refusal::MissingToken => "missing_token",
            Refusal::Token(r) => r.as_str(),
            Refusal::TokenInFlight => "token_in_flight",
            Refusal::SessionLimit => "session_limit",
            Refusal::Backend(r) => r,
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::SessionLimit | Refusal::Backend(_) | Refusal::Token(Rejection::LedgerFull) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::FORBIDDEN,
        }
    }
}

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

/// What the guard needs to know about the listener.
#[derive(Debug)]
pub struct Policy<'a> {
    /// The listener's port.
    pub port: u16,
    /// The listener's IP (its literal is also an accepted Host).
    pub listen_ip: IpAddr,
    /// Allowed origins, exact.
    pub origins: &'a [String],
    /// The token header.
    pub token_header: &'a http::HeaderName,
}

/// Steps 1–3 and the structural part of 4: returns the presented token
/// text, if any (the caller decides whether a missing token is refused).
pub fn check_request<'h>(
    headers: &'h HeaderMap,
    uri: &Uri,
    policy: &Policy<'_>,
) -> Result<Option<&'h str>, Refusal> {
    // 1. well-formed
    if uri.query().is_some() {
        return Err(Refusal::BadRequest("query_string"));
    }
    let mut hosts = headers.get_all(http::header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (None, _) => return Err(Refusal::BadRequest("missing_host")),
        (Some(_), Some(_)) => return Err(Refusal::BadRequest("duplicate_host")),
        (Some(h), None) => h,
    };
    let mut origins = headers.get_all(http::header::ORIGIN).iter();
    let origin = origins.next();
    if origins.next().is_some() {
        return Err(Refusal::BadRequest("duplicate_origin"));
    }
    let token = token_header(headers, policy.token_header)?;
    let host = host
        .to_str()
        .map_err(|_| Refusal::BadRequest("non_ascii_host"))?;

    // 2. Host is our own name
    if !host_is_ours(host, policy.port, policy.listen_ip) {
        return Err(Refusal::BadHost);
    }
    // 3. Origin, byte for byte
    let origin = origin.ok_or(Refusal::MissingOrigin)?;
    if !policy
        .origins
        .iter()
        .any(|o| o.as_bytes() == origin.as_bytes())
    {
        return Err(Refusal::BadOrigin);
    }
    Ok(token)
}

/// At most one token header, non-empty visible ASCII.
fn token_header<'h>(
    headers: &'h HeaderMap,
    name: &http::HeaderName,
) -> Result<Option<&'h str>, Refusal> {
    let mut tokens = headers.get_all(name).iter();
    let token = tokens.next();
    if tokens.next().is_some() {
        return Err(Refusal::BadRequest("duplicate_token"));
    }
    match token {
        None => Ok(None),
        Some(v) if v.is_empty() => Err(Refusal::BadRequest("empty_token")),
        Some(v) => Ok(Some(
            v.to_str()
                .map_err(|_| Refusal::BadRequest("non_ascii_token"))?,
        )),
    }
}

/// The native socket's request check: no query string, a well-formed token
/// header if any. No Host or Origin: there is no browser to speak for.
pub fn check_native_request<'h>(
    headers: &'h HeaderMap,
    uri: &Uri,
    token_header_name: &http::HeaderName,
) -> Result<Option<&'h str>, Refusal> {
    if uri.query().is_some() {
        return Err(Refusal::BadRequest("query_string"));
    }
    token_header(headers, token_header_name)
}

/// `localhost:<port>` (any ASCII case), `127.0.0.1:<port>`, `[::1]:<port>`
/// or the listen IP's literal; the port must be present and exact.
pub fn host_is_ours(host: &str, port: u16, listen_ip: IpAddr) -> bool {
    let (name, port_text) = if let Some(rest) = host.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return false;
        };
        let Some(p) = after.strip_prefix(':') else {
            return false;
        };
        (format!("[{inner}]"), p)
    } else {
        let Some((n, p)) = host.rsplit_once(':') else {
            return false;
        };
        (n.to_owned(), p)
    };
    if port_text != port.to_string() {
        return false;
    }
    let own_literal = match listen_ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    name.eq_ignore_ascii_case("localhost")
        || name == "127.0.0.1"
        || name == "[::1]"
        || name == own_literal
}

/// How a session was authenticated. Only this module builds one.
#[derive(Debug)]
pub(crate) enum SessionAuth {
    /// A token, consumed.
    Token(Consumed),
    /// The device client certificate, verified by exact SPKI pin during the
    /// TLS handshake (only where tokens are explicitly off).
    PinnedClientCert,
}

/// An authenticated session: built only here, after the token was
/// consumed (or the pinned client certificate checked). The proxy takes
/// this, never a token string.
#[derive(Debug)]
pub(crate) struct Session {
    auth: SessionAuth,
    pub peer: Peer,
    /// Its place among the live sessions (leaves on drop).
    entry: crate::roster::Entry,
    _slot: OwnedSemaphorePermit,
}

impl Session {
    /// Notified when a newer session replaces this one.
    pub fn replaced(&self) -> Arc<tokio::sync::Notify> {
        self.entry.replaced.clone()
    }

    /// A label for logs: the token-id prefix, or `client-cert`.
    pub fn label(&self) -> String {
        match &self.auth {
            SessionAuth::Token(c) => c.id().prefix(),
            SessionAuth::PinnedClientCert => "client-cert".into(),
        }
    }
}

/// At most this many rejection events are logged per second; the rest are
/// counted and the count is reported with the next logged one. A flood of
/// bad handshakes costs bounded log volume, and nothing is silently lost.
pub const MAX_REJECTION_LOGS_PER_SEC: u32 = 50;

struct LogWindow {
    second: u64,
    logged: u32,
    suppressed: u64,
}

static REJECTION_LOG: std::sync::Mutex<LogWindow> = std::sync::Mutex::new(LogWindow {
    second: 0,
    logged: 0,
    suppressed: 0,
});

/// The reason of the latest refusal, for `STATUS=` (process-wide, like the
/// log window: one server per process outside tests).
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
    let mut w = REJECTION_LOG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if w.second != now {
        w.second = now;
        w.logged = 0;
    }
    if w.logged < MAX_REJECTION_LOGS_PER_SEC {
        w.logged += 1;
        Some(std::mem::take(&mut w.suppressed))
    } else {
        w.suppressed += 1;
        None
    }
}

fn refuse(peer: &Peer, uid: Option<u32>, refusal: Refusal, token_id: Option<String>) -> Response {
    note_refusal(refusal.reason());
    if let Some(suppressed) = rejection_log_slot() {
        audit!(warn, event = "rejected", reason = refusal.reason(), peer = %peer, peer_uid = uid,
            token_id = token_id.as_deref().unwrap_or("-"), suppressed_before = suppressed);
    }
    refusal.into_response()
}

/// A backend failure: the detail to the log, the typed reason (with both
/// uids for `backend_uid_mismatch`) to the audit log, 503 to the peer.
fn refuse_backend(
    peer: &Peer,
    uid: Option<u32>,
    e: &crate::backend::BackendError,
    token_id: Option<String>,
) -> Response {
    // the token is kept unless it already replaced a session
    tracing::warn!(error = %e, "backend connect failed");
    note_refusal(e.reason());
    if let Some(suppressed) = rejection_log_slot() {
        let (expected, actual) = e.uids().unzip();
        audit!(warn, event = "rejected", reason = e.reason(), peer = %peer, peer_uid = uid,
            token_id = token_id.as_deref().unwrap_or("-"), backend_uid_expected = expected,
            backend_uid_actual = actual, suppressed_before = suppressed);
    }
    Refusal::Backend(e.reason()).into_response()
}

/// Connects the backend. With `replace_oldest`, a 409 (the SDK serves one
/// connection) closes the oldest session, unless one was already closed for
/// this admission (`replaced`), and retries the 409s for
/// [`crate::limits::REPLACE_RETRY_WINDOW`], each attempt with its own
/// connect deadline.
async fn connect_backend(
    shared: &Shared,
    keys: &Keys,
    when_full: WhenFull,
    mut replaced: bool,
    ticket: &mut Ticket,
    token_id: Option<&str>,
) -> Result<crate::backend::BackendStream, ConnectFail> {
    use crate::backend::BackendError;
    let backend_refusal = ConnectFail::Backend;
    let first = shared.backend.connect().await;
    let busy = matches!(first, Err(BackendError::Busy { .. }));
    if !busy || when_full != WhenFull::ReplaceOldest {
        return first.map_err(backend_refusal);
    }
    if !replaced {
        replaced = shared
            .roster
            .replace_oldest_if(|| ticket.spend(&keys.authority))
            .map_err(ConnectFail::Spent)?;
        if replaced {
            audit!(
                info,
                event = "replacing_oldest",
                cause = "backend_busy",
                token_id = token_id.unwrap_or("-")
            );
        }
    }
    if !replaced {
        // Busy with a connection that is not one of our sessions.
        return first.map_err(backend_refusal);
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
                return Err(backend_refusal(e));
            }
            Ok(b) => {
                tracing::debug!(attempt, "backend connected after the replacement");
                return Ok(b);
            }
        }
    }
}

/// Why [`connect_backend`] gave up.
enum ConnectFail {
    /// The backend could not be reached or authenticated.
    Backend(crate::backend::BackendError),
    /// The token could not be spent for a replacement (consumed meanwhile).
    Spent(Rejection),
}

/// The token on its way through [`admit`]: verified, then spent. It is
/// spent at consume, or earlier, just before it replaces a session
/// (`when_full = "replace_oldest"`), so a token closes at most one.
enum Ticket {
    /// No token: the pinned client certificate was the proof.
    Pinned,
    /// Verified, not yet spent.
    Verified(Verified),
    /// Spent (in the ledger).
    Spent(Consumed),
}

impl Ticket {
    /// Spends a verified token now; a no-op for one already spent or absent.
    fn spend(&mut self, authority: &Authority<MonotonicClock>) -> Result<(), Rejection> {
        match std::mem::replace(self, Ticket::Pinned) {
            Ticket::Verified(v) => {
                *self = Ticket::Spent(authority.consume(v)?);
                Ok(())
            }
            other => {
                *self = other;
                Ok(())
            }
        }
    }
}

/// Step 0 as a pure decision: the kernel's answer (the owner of the
/// client socket) against the allow-list. A failed lookup is a refusal.
pub(crate) fn peer_uid_verdict(
    lookup: Result<u32, crate::peer_uid::PeerUidError>,
    allowed: &[u32],
) -> Result<u32, (Refusal, Option<u32>)> {
    match lookup {
        Ok(uid) if allowed.contains(&uid) => Ok(uid),
        Ok(uid) => Err((Refusal::PeerUidNotAllowed, Some(uid))),
        Err(_) => Err((Refusal::PeerUidUnknown, None)),
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
    if let Err(e) = &lookup {
        tracing::warn!(peer = %peer, error = %e, "cannot tell the owner of the client socket; refusing");
    }
    peer_uid_verdict(lookup, &shared.live().allowed_peer_uids)
}

/// Everything after the listener-specific header checks, shared by both
/// listeners: a valid upgrade, the token (if required), a session slot,
/// the backend, consume, 101.
async fn admit(
    shared: Arc<Shared>,
    peer: Peer,
    uid: Option<u32>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    token: Option<&str>,
    require_token: bool,
    channel: Channel,
) -> Response {
    let Ok(ws) = ws else {
        return refuse(
            &peer,
            uid,
            Refusal::BadRequest("not_websocket_upgrade"),
            None,
        );
    };
    // Without tokens (only possible where the pinned client certificate was
    // already required by rustls) a presented token is still verified.
    if token.is_none() && require_token {
        return refuse(&peer, uid, Refusal::MissingToken, None);
    }
    // One identity and one set of live settings for the whole handshake,
    // whatever a reload swaps in meanwhile.
    let keys = shared.keys();
    let when_full = shared.live().when_full;
    let verified = match token {
        None => None,
        Some(text) => match keys.authority.verify(text, channel) {
            Ok(v) => Some(v),
            Err(r) => {
                return refuse(
                    &peer,
                    uid,
                    Refusal::Token(r),
                    screengate_token::claimed_id_prefix(text),
                );
            }
        },
    };
    let id = verified.as_ref().map(|v| v.id().prefix());
    // One handshake per token from here to consume: copies of one token
    // raced in parallel must not each replace a session or hold one of the
    // backend's connections. Released when this function returns.
    let _claim = match &verified {
        None => None,
        Some(v) => match shared.claims.claim(v.id()) {
            Some(c) => Some(c),
            None => return refuse(&peer, uid, Refusal::TokenInFlight, id),
        },
    };
    let mut ticket = match verified {
        None => Ticket::Pinned,
        Some(v) => Ticket::Verified(v),
    };
    let mut replaced = false;
    let slot = match shared.sessions.clone().try_acquire_owned() {
        Ok(s) => s,
        Err(_) if when_full == WhenFull::ReplaceOldest => {
            match shared
                .roster
                .replace_oldest_if(|| ticket.spend(&keys.authority))
            {
                Ok(true) => {}
                Ok(false) => return refuse(&peer, uid, Refusal::SessionLimit, id),
                Err(r) => return refuse(&peer, uid, Refusal::Token(r), id),
            }
            audit!(
                info,
                event = "replacing_oldest",
                cause = "session_limit",
                token_id = id.as_deref().unwrap_or("-")
            );
            replaced = true;
            match tokio::time::timeout(
                crate::limits::REPLACE_WAIT,
                shared.sessions.clone().acquire_owned(),
            )
            .await
            {
                Ok(Ok(s)) => s,
                _ => return refuse(&peer, uid, Refusal::SessionLimit, id),
            }
        }
        Err(_) => return refuse(&peer, uid, Refusal::SessionLimit, id),
    };
    let connected = connect_backend(
        &shared,
        &keys,
        when_full,
        replaced,
        &mut ticket,
        id.as_deref(),
    );
    let backend = match connected.await {
        Ok(b) => b,
        Err(ConnectFail::Backend(e)) => return refuse_backend(&peer, uid, &e, id),
        Err(ConnectFail::Spent(r)) => return refuse(&peer, uid, Refusal::Token(r), id),
    };
    // Subscribed before the last revocation check, so a revoke all from
    // here on reaches the session's proxy.
    let revoked = shared.revoked_all.subscribe();
    let auth = match ticket {
        Ticket::Pinned => SessionAuth::PinnedClientCert,
        // spent before a replacement, seconds ago: a revoke since wins
        Ticket::Spent(c) => match keys.authority.check_not_revoked(&c) {
            Ok(()) => SessionAuth::Token(c),
            Err(r) => return refuse(&peer, uid, Refusal::Token(r), id),
        },
        Ticket::Verified(v) => match keys.authority.consume(v) {
            Ok(c) => SessionAuth::Token(c),
            Err(r) => return refuse(&peer, uid, Refusal::Token(r), id),
        },
    };
    let session = Session {
        auth,
        peer,
        entry: shared.roster.join(),
        _slot: slot,
    };
    audit!(info, event = "accepted", peer = %session.peer, peer_uid = uid, token_id = %session.label(), channel = channel.as_str());
    let shutdown = shared.shutdown.clone();
    ws.max_message_size(shared.cfg.max_message_size)
        .max_frame_size(shared.cfg.max_message_size)
        .read_buffer_size(crate::limits::WS_READ_BUFFER)
        .write_buffer_size(crate::limits::WS_WRITE_BUFFER)
        .max_write_buffer_size(crate::limits::ws_max_write_buffer(
            shared.cfg.max_message_size,
        ))
        .on_failed_upgrade(|e| tracing::debug!(error = %e, "upgrade failed after 101"))
        .on_upgrade(move |socket| crate::proxy::run(socket, backend, session, shutdown, revoked))
}

pub(crate) async fn upgrade(
    State(shared): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    uri: Uri,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // 0. whose socket is this? Before a byte of the request is looked at.
    let uid = match gateway_peer_uid(&shared, &peer) {
        Ok(uid) => uid,
        Err((r, uid)) => return refuse(&peer, uid, r, None),
    };
    let live = shared.live();
    let policy = Policy {
        port: shared.port,
        listen_ip: shared.listen_ip,
        origins: &live.origins,
        token_header: &shared.cfg.token_header,
    };
    let token = match check_request(&headers, &uri, &policy) {
        Ok(t) => t,
        Err(r) => return refuse(&peer, Some(uid), r, None),
    };
    let require = shared.cfg.gateway_require_token;
    admit(
        shared.clone(),
        peer,
        Some(uid),
        ws,
        token,
        require,
        Channel::Display,
    )
    .await
}

pub(crate) async fn native_upgrade(
    State(shared): State<Arc<Shared>>,
    Extension(peer): Extension<Peer>,
    uri: Uri,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let uid = match &peer {
        Peer::Unix { uid, .. } => Some(*uid),
        Peer::Tcp(_) => None,
    };
    let token = match check_native_request(&headers, &uri, &shared.cfg.token_header) {
        Ok(t) => t,
        Err(r) => return refuse(&peer, uid, r, None),
    };
    let require = shared.native.as_ref().is_none_or(|n| n.require_token);
    admit(
        shared.clone(),
        peer,
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
    use http::HeaderValue;
    use std::net::Ipv4Addr;

    const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn host_accepts_own_names_only() {
        for h in [
            "localhost:8933",
            "LOCALHOST:8933",
            "LocalHost:8933",
            "127.0.0.1:8933",
            "[::1]:8933",
        ] {
            assert!(host_is_ours(h, 8933, LO), "{h}");
        }
        for h in [
            "localhost",
            "localhost:8934",
            "localhost:08933",
            "localhost:+8933",
            "localhost.:8933",
            "evil.com:8933",
            "localhost.evil.com:8933",
            "127.0.0.2:8933",
            "[::1]",
            "[::2]:8933",
            "::1:8933",
            "",
            ":8933",
            "localhost:8933:8933",
            "127.0.0.1:8933 ",
            "[::1:8933",
            "localhost :8933",
            "0.0.0.0:8933",
            "2130706433:8933",
        ] {
            assert!(!host_is_ours(h, 8933, LO), "{h}");
        }
        assert!(host_is_ours("127.0.0.2:1", 1, "127.0.0.2".parse().unwrap()));
    }

    fn hm(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    fn check(pairs: &[(&str, &[u8])], uri: &str) -> Result<String, Refusal> {
        let origins = vec!["https://localhost:8933".to_owned()];
        let name = http::HeaderName::from_static("x-screengate-token");
        let p = Policy {
            port: 8933,
            listen_ip: LO,
            origins: &origins,
            token_header: &name,
        };
        check_request(&hm(pairs), &uri.parse().unwrap(), &p)
            .and_then(|t| t.map(str::to_owned).ok_or(Refusal::MissingToken))
    }

    const H: (&str, &[u8]) = ("host", b"localhost:8933");
    const O: (&str, &[u8]) = ("origin", b"https://localhost:8933");
    const T: (&str, &[u8]) = ("x-screengate-token", b"tok");

    fn not_found() -> crate::peer_uid::PeerUidError {
        crate::peer_uid::PeerUidError::NotFound {
            local: "127.0.0.1:40000".parse().unwrap(),
            remote: "127.0.0.1:8933".parse().unwrap(),
        }
    }

    #[test]
    fn peer_uid_allowed_passes() {
        assert_eq!(peer_uid_verdict(Ok(1000), &[1000]), Ok(1000));
        assert_eq!(peer_uid_verdict(Ok(0), &[1000, 0]), Ok(0));
    }

    #[test]
    fn peer_uid_not_allowed_is_403_with_the_uid() {
        for (uid, allowed) in [(1001, vec![1000]), (0, vec![1000]), (1000, vec![0, 1001])] {
            let (r, got) = peer_uid_verdict(Ok(uid), &allowed).unwrap_err();
            assert_eq!(r, Refusal::PeerUidNotAllowed);
            assert_eq!(got, Some(uid));
            assert_eq!(r.reason(), "peer_uid_not_allowed");
            assert_eq!(r.status(), StatusCode::FORBIDDEN);
        }
        // an empty list (refused by the config) would allow nobody
        assert!(peer_uid_verdict(Ok(1000), &[]).is_err());
    }

    #[test]
    fn peer_uid_lookup_failure_is_refused_never_allowed() {
        let read = crate::peer_uid::PeerUidError::Read {
            path: "/proc/net/tcp",
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        for e in [read, not_found()] {
            let (r, uid) = peer_uid_verdict(Err(e), &[1000]).unwrap_err();
            assert_eq!(r, Refusal::PeerUidUnknown);
            assert_eq!(uid, None);
            assert_eq!(r.status(), StatusCode::FORBIDDEN);
            assert_eq!(r.reason(), "peer_uid_unknown");
        }
    }

    #[test]
    fn ledger_full_is_503_not_403() {
        let r = Refusal::Token(Rejection::LedgerFull);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.reason(), "ledger_full");
        assert_eq!(
            Refusal::Token(Rejection::Replayed).status(),
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn every_backend_failure_is_503_with_its_own_reason() {
        use crate::backend::BackendError;
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
        }
        assert_eq!(all[1].0.uids(), Some((1001, 1002)));
        assert_eq!(all[0].0.uids(), None);
        // the message names both uids, for the operator's log
        let m = all[1].0.to_string();
        assert!(m.contains("1001") && m.contains("1002"), "{m}");
    }

    #[test]
    fn good_request_passes_to_token_check() {
        assert_eq!(check(&[H, O, T], "/ws").unwrap(), "tok");
    }

    #[test]
    fn malformed_requests_are_400() {
        type Case<'a> = (Vec<(&'a str, &'a [u8])>, &'a str, &'a str);
        let cases: Vec<Case> = vec![
            (vec![O, T], "/ws", "missing_host"),
            (vec![H, H, O, T], "/ws", "duplicate_host"),
            (vec![H, O, O, T], "/ws", "duplicate_origin"),
            (vec![H, O, T, T], "/ws", "duplicate_token"),
            (
                vec![H, O, ("x-screengate-token", b"")],
                "/ws",
                "empty_token",
            ),
            (
                vec![H, O, ("x-screengate-token", b"t\xc3\xa9")],
                "/ws",
                "non_ascii_token",
            ),
            (vec![H, O, T], "/ws?token=abc", "query_string"),
            (vec![H, O], "/ws?x-screengate-token=abc", "query_string"),
        ];
        for (h, uri, why) in cases {
            assert_eq!(check(&h, uri).unwrap_err(), Refusal::BadRequest(why));
        }
    }

    #[test]
    fn wrong_host_is_403() {
        for h in [&b"evil.com:8933"[..], b"localhost:1", b"localhost"] {
            assert_eq!(
                check(&[("host", h), O, T], "/ws").unwrap_err(),
                Refusal::BadHost
            );
        }
    }

    #[test]
    fn origin_must_match_byte_for_byte() {
        assert_eq!(check(&[H, T], "/ws").unwrap_err(), Refusal::MissingOrigin);
        for o in [
            &b"null"[..],
            b"https://localhost:8934",
            b"http://localhost:8933",
            b"https://LOCALHOST:8933",
            b"https://localhost:8933/",
            b"https://localhost",
            b"https://127.0.0.1:8933",
            b"https://localhost.:8933",
            b"https://localhost:8933.evil.com",
            b"https://evil.com",
            b"wss://localhost:8933",
            b"file://",
            b" https://localhost:8933",
            b"https://localhost:08933",
        ] {
            assert_eq!(
                check(&[H, ("origin", o), T], "/ws").unwrap_err(),
                Refusal::BadOrigin,
                "{o:?}"
            );
        }
    }

    #[test]
    fn native_requests_need_no_host_or_origin_but_a_clean_token_header() {
        let name = http::HeaderName::from_static("x-screengate-token");
        let uri: Uri = "/ws".parse().unwrap();
        assert_eq!(
            check_native_request(&hm(&[T]), &uri, &name).unwrap(),
            Some("tok")
        );
        assert_eq!(check_native_request(&hm(&[]), &uri, &name).unwrap(), None);
        assert_eq!(
            check_native_request(&hm(&[T, T]), &uri, &name).unwrap_err(),
            Refusal::BadRequest("duplicate_token")
        );
        assert_eq!(
            check_native_request(&hm(&[("x-screengate-token", b"")]), &uri, &name).unwrap_err(),
            Refusal::BadRequest("empty_token")
        );
        assert_eq!(
            check_native_request(&hm(&[T]), &"/ws?t=1".parse().unwrap(), &name).unwrap_err(),
            Refusal::BadRequest("query_string")
        );
    }

    #[test]
    fn missing_token_is_403_after_host_and_origin() {
        assert_eq!(check(&[H, O], "/ws").unwrap_err(), Refusal::MissingToken);
        // a token only in a cookie or subprotocol is not a token
        assert_eq!(
            check(
                &[
                    H,
                    O,
                    ("cookie", b"x-screengate-token=abc"),
                    ("sec-websocket-protocol", b"abc")
                ],
                "/ws"
            )
            .unwrap_err(),
            Refusal::MissingToken
        );
    }
}
