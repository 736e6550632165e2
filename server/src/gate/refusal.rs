//! Why an upgrade was refused: the audit reason and the status class the
//! peer sees. The peer gets a uniform body per status (`session.rs` writes
//! it); the reason strings here are the audit log's and must not change.
//! What it leaves to others: backend failure reasons (`backend.rs` names
//! them; they arrive here as `Refusal::Backend`).

use http::StatusCode;
use screengate_token::Rejection;

/// A malformed request → 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Malformed {
    /// A query string on the upgrade path (a token must never ride in one).
    QueryString,
    /// No `Host`.
    MissingHost,
    /// More than one `Host`.
    DuplicateHost,
    /// More than one `Origin`.
    DuplicateOrigin,
    /// More than one token header.
    DuplicateToken,
    /// An empty token header.
    EmptyToken,
    /// A token header that is not visible ASCII.
    NonAsciiToken,
    /// A `Host` that is not visible ASCII.
    NonAsciiHost,
    /// Not a valid WebSocket upgrade.
    NotWebsocketUpgrade,
}

impl Malformed {
    /// The audit reason.
    pub fn reason(self) -> &'static str {
        match self {
            Malformed::QueryString => "query_string",
            Malformed::MissingHost => "missing_host",
            Malformed::DuplicateHost => "duplicate_host",
            Malformed::DuplicateOrigin => "duplicate_origin",
            Malformed::DuplicateToken => "duplicate_token",
            Malformed::EmptyToken => "empty_token",
            Malformed::NonAsciiToken => "non_ascii_token",
            Malformed::NonAsciiHost => "non_ascii_host",
            Malformed::NotWebsocketUpgrade => "not_websocket_upgrade",
        }
    }
}

/// Why a handshake was refused (the audit reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The client socket belongs to a uid not in `allowed_peer_uids` → 403.
    PeerUidNotAllowed,
    /// The owner of the client socket could not be told → 403.
    PeerUidUnknown,
    /// Malformed request → 400.
    Malformed(Malformed),
    /// `Host` is not the listener's own name → 403.
    BadHost,
    /// No `Origin` header → 403.
    MissingOrigin,
    /// `Origin` not in the allow-list → 403.
    BadOrigin,
    /// No token header, and no pinned client certificate that may stand in
    /// for one → 403.
    MissingToken,
    /// The token was refused → 403 (503 for a full ledger).
    Token(Rejection),
    /// Another handshake is admitting this same token right now → 403.
    TokenInFlight,
    /// All session slots are taken → 503.
    SessionLimit,
    /// The backend could not be reached or authenticated → 503; the
    /// reason is `BackendError::reason`.
    Backend(&'static str),
}

impl From<Malformed> for Refusal {
    fn from(m: Malformed) -> Refusal {
        Refusal::Malformed(m)
    }
}

impl Refusal {
    /// The audit reason string.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Malformed(m) => m.reason(),
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

    /// The status the peer sees.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Malformed(_) => StatusCode::BAD_REQUEST,
            Refusal::SessionLimit | Refusal::Backend(_) | Refusal::Token(Rejection::LedgerFull) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Refusal::PeerUidNotAllowed
            | Refusal::PeerUidUnknown
            | Refusal::BadHost
            | Refusal::MissingOrigin
            | Refusal::BadOrigin
            | Refusal::MissingToken
            | Refusal::Token(_)
            | Refusal::TokenInFlight => StatusCode::FORBIDDEN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn every_malformed_request_is_400_with_its_own_reason() {
        let all = [
            (Malformed::QueryString, "query_string"),
            (Malformed::MissingHost, "missing_host"),
            (Malformed::DuplicateHost, "duplicate_host"),
            (Malformed::DuplicateOrigin, "duplicate_origin"),
            (Malformed::DuplicateToken, "duplicate_token"),
            (Malformed::EmptyToken, "empty_token"),
            (Malformed::NonAsciiToken, "non_ascii_token"),
            (Malformed::NonAsciiHost, "non_ascii_host"),
            (Malformed::NotWebsocketUpgrade, "not_websocket_upgrade"),
        ];
        for (m, want) in all {
            let r = Refusal::from(m);
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{want}");
            assert_eq!(r.reason(), want);
        }
    }

    #[test]
    fn every_policy_refusal_is_403_with_its_own_reason() {
        let all = [
            (Refusal::PeerUidNotAllowed, "peer_uid_not_allowed"),
            (Refusal::PeerUidUnknown, "peer_uid_unknown"),
            (Refusal::BadHost, "bad_host"),
            (Refusal::MissingOrigin, "missing_origin"),
            (Refusal::BadOrigin, "bad_origin"),
            (Refusal::MissingToken, "missing_token"),
            (Refusal::TokenInFlight, "token_in_flight"),
            (Refusal::Token(Rejection::Replayed), "replayed"),
            (Refusal::Token(Rejection::Expired), "expired"),
            (Refusal::Token(Rejection::Revoked), "revoked"),
            (Refusal::Token(Rejection::BadMac), "bad_mac"),
        ];
        for (r, want) in all {
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{want}");
            assert_eq!(r.reason(), want);
        }
    }

    #[test]
    fn capacity_and_backend_refusals_are_503() {
        for (r, want) in [
            (Refusal::SessionLimit, "session_limit"),
            (Refusal::Backend("backend_busy"), "backend_busy"),
            (
                Refusal::Backend("backend_uid_mismatch"),
                "backend_uid_mismatch",
            ),
        ] {
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{want}");
            assert_eq!(r.reason(), want);
        }
    }
}
