//! Admission: from a verified proof of identity to a [`Session`], with the
//! token's life between them made a type.
//!
//! * [`Admission::open`] takes the presented token (or the pinned client
//!   certificate's evidence where tokens are explicitly off), verifies it
//!   and claims it: from here until consume no other handshake may hold
//!   the same token (`token_in_flight`).
//! * [`Admission::spend`] consumes the token early, just before it replaces
//!   a session (`when_full = "replace_oldest"`), so a token closes at most
//!   one session whatever happens to its handshake afterwards.
//! * [`Admission::consume`] takes a [`BackendConnected`] by value and is the
//!   only way to a [`Session`]: a session without a connected backend does
//!   not compile, and the token is spent only after the backend connected.
//!   A token spent early is checked for revocation again here.
//!
//! What it leaves to others: when each step runs and what happens between
//! them (slots, the roster, connecting: `session.rs`).

use std::sync::Arc;

use screengate_token::{Authority, Channel, Clock, Consumed, Rejection, Verified};

use super::claims::Claim;
use super::{BackendConnected, Claims, ClientCertPinned, Refusal};

/// The token (or its stand-in) on its way to a session.
#[derive(Debug)]
enum Ticket {
    /// No token: the pinned client certificate is the proof.
    Pinned(ClientCertPinned),
    /// Verified, not yet spent.
    Verified(Verified),
    /// Spent (in the ledger), before a replacement.
    Spent(Consumed),
    /// An early spend was refused; consume refuses with the same reason.
    Refused(Rejection),
}

/// A handshake admitted so far: proof verified, token claimed.
#[derive(Debug)]
pub(crate) struct Admission {
    ticket: Ticket,
    token_id: Option<String>,
    /// Released when the admission is consumed or dropped.
    _claim: Option<Claim>,
}

/// A refusal with the token-id prefix for the audit log, when known.
pub(crate) type Refused = (Refusal, Option<String>);

impl Admission {
    /// Verifies the presented `token` for `channel` and claims it. Without
    /// a token, only where tokens are explicitly off (`require_token`
    /// false) *and* this connection's TLS verified the pinned client
    /// certificate does the certificate stand in; a presented token is
    /// verified either way.
    pub fn open<C: Clock>(
        authority: &Authority<C>,
        claims: &Arc<Claims>,
        channel: Channel,
        token: Option<&str>,
        require_token: bool,
        client_cert: Option<ClientCertPinned>,
    ) -> Result<Admission, Refused> {
        let text = match (token, require_token, client_cert) {
            (Some(text), _, _) => text,
            (None, false, Some(pinned)) => {
                return Ok(Admission {
                    ticket: Ticket::Pinned(pinned),
                    token_id: None,
                    _claim: None,
                });
            }
            (None, _, _) => return Err((Refusal::MissingToken, None)),
        };
        let verified = authority
            .verify(text, channel)
            .map_err(|r| (Refusal::Token(r), screengate_token::claimed_id_prefix(text)))?;
        let token_id = Some(verified.id().prefix());
        let Some(claim) = claims.claim(verified.id()) else {
            return Err((Refusal::TokenInFlight, token_id));
        };
        Ok(Admission {
            ticket: Ticket::Verified(verified),
            token_id,
            _claim: Some(claim),
        })
    }

    /// The token-id prefix, for the audit log (`None`: no token).
    pub fn token_id(&self) -> Option<&str> {
        self.token_id.as_deref()
    }

    /// Spends a verified token now (before it replaces a session); a no-op
    /// for one already spent or for the client certificate.
    pub fn spend<C: Clock>(&mut self, authority: &Authority<C>) -> Result<(), Rejection> {
        let refused = Ticket::Refused(Rejection::Replayed);
        match std::mem::replace(&mut self.ticket, refused) {
            Ticket::Verified(v) => match authority.consume(v) {
                Ok(c) => {
                    self.ticket = Ticket::Spent(c);
                    Ok(())
                }
                Err(r) => {
                    self.ticket = Ticket::Refused(r);
                    Err(r)
                }
            },
            Ticket::Refused(r) => {
                self.ticket = Ticket::Refused(r);
                Err(r)
            }
            other => {
                self.ticket = other;
                Ok(())
            }
        }
    }

    /// The last step: spends the token (or checks an early-spent one was
    /// not revoked since) against the evidence that the backend connected,
    /// and hands out the session. The claim is released here.
    pub fn consume<C: Clock, S>(
        self,
        authority: &Authority<C>,
        backend: BackendConnected<S>,
    ) -> Result<Session<S>, Refusal> {
        let auth = match self.ticket {
            Ticket::Pinned(pinned) => Authenticated::ClientCert(pinned),
            // spent before a replacement, seconds ago: a revoke since wins
            Ticket::Spent(c) => {
                authority.check_not_revoked(&c).map_err(Refusal::Token)?;
                Authenticated::Token(c)
            }
            Ticket::Verified(v) => {
                Authenticated::Token(authority.consume(v).map_err(Refusal::Token)?)
            }
            Ticket::Refused(r) => return Err(Refusal::Token(r)),
        };
        Ok(Session {
            auth,
            backend: backend.into_stream(),
        })
    }
}

/// How a session was authenticated.
#[derive(Debug)]
pub(crate) enum Authenticated {
    /// A token, consumed.
    Token(Consumed),
    /// The device client certificate, verified by exact SPKI pin during the
    /// TLS handshake (only where tokens are explicitly off).
    ClientCert(ClientCertPinned),
}

impl Authenticated {
    /// A label for logs: the token-id prefix, or `client-cert`.
    pub fn label(&self) -> String {
        match self {
            Authenticated::Token(c) => c.id().prefix(),
            Authenticated::ClientCert(_) => "client-cert".into(),
        }
    }
}

/// An authenticated session with its connected backend: built only by
/// [`Admission::consume`]. The proxy takes this, never a token string.
#[derive(Debug)]
pub(crate) struct Session<S> {
    auth: Authenticated,
    backend: S,
}

impl<S> Session<S> {
    /// A label for logs: the token-id prefix, or `client-cert`.
    pub fn label(&self) -> String {
        self.auth.label()
    }

    /// The backend connection and how the session was authenticated.
    pub fn into_parts(self) -> (S, Authenticated) {
        (self.backend, self.auth)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use screengate_token::{DeviceKey, ManualClock, SecretToken};

    use super::*;

    const TTL: Duration = Duration::from_secs(30);

    fn authority() -> Authority<Arc<ManualClock>> {
        Authority::new(
            &DeviceKey::from_bytes([9; 32]),
            TTL,
            Arc::new(ManualClock::new()),
        )
        .unwrap()
    }

    fn mint(a: &Authority<Arc<ManualClock>>, ch: Channel) -> SecretToken {
        a.mint(ch).unwrap().token
    }

    fn open_with(
        a: &Authority<Arc<ManualClock>>,
        claims: &Arc<Claims>,
        token: Option<&str>,
        require: bool,
        cert: Option<ClientCertPinned>,
    ) -> Result<Admission, Refused> {
        Admission::open(a, claims, Channel::Display, token, require, cert)
    }

    fn backend() -> BackendConnected<&'static str> {
        BackendConnected::for_test("backend")
    }

    #[test]
    fn a_verified_token_with_a_connected_backend_is_a_session() {
        let (a, c) = (authority(), Arc::new(Claims::default()));
        let t = mint(&a, Channel::Display);
        let adm = open_with(&a, &c, Some(t.expose_secret()), true, None).unwrap();
        assert!(adm.token_id().is_some());
        let s = adm.consume(&a, backend()).unwrap();
        assert_eq!(s.label().len(), 8, "{}", s.label());
        let (b, auth) = s.into_parts();
        assert_eq!(b, "backend");
        assert!(matches!(auth, Authenticated::Token(_)));
        assert_eq!(c.len(), 0, "the claim ends at consume");
    }

    #[test]
    fn the_pinned_client_certificate_stands_in_only_where_tokens_are_off() {
        let (a, c) = (authority(), Arc::new(Claims::default()));
        let pinned = || Some(ClientCertPinned::for_test());
        let s = open_with(&a, &c, None, false, pinned()).unwrap();
        assert_eq!(s.token_id(), None);
        assert_eq!(s.consume(&a, backend()).unwrap().label(), "client-cert");
        // tokens required: the certificate is not enough
        let e = open_with(&a, &c, None, true, pinned()).unwrap_err();
        assert_eq!(e, (Refusal::MissingToken, None));
    }

    #[test]
    fn no_token_and_no_certificate_is_missing_token_even_where_tokens_are_off() {
        let (a, c) = (authority(), Arc::new(Claims::default()));
        for require in [true, false] {
            let e = open_with(&a, &c, None, require, None).unwrap_err();
            assert_eq!(e, (Refusal::MissingToken, None), "require={require}");
        }
    }

    #[test]
    fn a_presented_token_is_verified_even_with_the_certificate() {
        let (a, c) = (authority(), Arc::new(Claims::default()));
        let cert = Some(ClientCertPinned::for_test());
        let (r, id) = open_with(&a, &c, Some("not-a-token"), false, cert).unwrap_err();
        assert_eq!(r, Refusal::Token(Rejection::Malformed));
        assert_eq!(id, None, "no id can be read from garbage");
    }

    #[test]
    fn a_token_for_the_other_channel_is_refused() {
        let (a, c) = (authority(), Arc::new(Claims::default()));
        let t = mint(&a, Channel::Native);
        let (r, id) = open_with(&a, &c, Some(t.expose_secret()), true, None).unwrap_err();
        assert_eq!(r, Refusal::Token(Rejection::WrongChannel));
        assert!(id.is_some(), "the claimed id goes to the audit log");
    }

    #[test]
    fn a_token_of_another_key_is_refused() {
        let (a, c) = (authority(), Arc::new(Claims::default()));
        let other =
            Authority::new(&DeviceKey::from_bytes([1; 32]), TTL, ManualClock::new()).unwrap();
        let t = other.mint(Channel::Display).unwrap().token;
        let (r, _) = open_with(&a, &c, Some(t.expose_secret()), true, None).unwrap_err();
        assert!(
            matches!(r, Refusal::Token(Rejection::BadMac | Rejection::WrongRun)),
            "{r:?}"
        );
    }

    #[test]
    fn a_token_being_admitted_is_in_flight_for_every_other_handshake() {
        let (a, c) = (authority(), Arc::new(Claims::default()));
        let t = mint(&a, Channel::Display);
        let first = open_with(&a, &c, Some(t.expose_secret()), true, None).unwrap();
        for _ in 0..3 {
            let (r, id) = open_with(&a, &c, Some(t.expose_secret()), true, None).unwrap_err();
            assert_eq!(r, Refusal::TokenInFlight);
            assert_eq!(id.as_deref(), first.token_id());
        }
        drop(first); // refused or cancelled: the claim is released, token unspent
        let again = open_with(&a, &c, Some(t.expose_secret()), true, None).unwrap();
        again.consume(&a, backend()).unwrap();
    }

    #[test]
    fn a_consumed_token_is_replayed() {
        let (a, c) = (authority(), Arc::new(Claims::default()));
        let t = mint(&a, Channel::Display);
        let first = open_with(&a, &c, Some(t.expose_secret()), true, None).unwrap();
        first.consume(&a, backend()).unwrap();
        let r = match open_with(&a, &c, Some(t.expose_secret()), true, None) {
            Err((r, _)) => r,
            Ok(adm) => adm.consume(&a, backend()).unwrap_err(),
        };
        assert_eq!(r, Refusal::Token(Rejection::Replayed));
    }

    #[test]
    fn a_token_that_expires_before_the_backend_connected_is_refused() {
        let clock = Arc::new(ManualClock::new());
        let a = Authority::new(&DeviceKey::from_bytes([9; 32]), TTL, clock.clone()).unwrap();
        let c = Arc::new(Claims::default());
        let t = mint(&a, Channel::Display);
        let adm = open_with(&a, &c, Some(t.expose_secret()), true, None).unwrap();
        clock.advance(TTL + Duration::from_secs(1));
        let r = adm.consume(&a, backend()).unwrap_err();
        assert_eq!(r, Refusal::Token(Rejection::Expired));
    }

    #[test]
    fn a_revoke_after_an_early_spend_still_wins() {
        let (a, c) = (authority(), Arc::new(Claims::default()));
        let m = a.mint(Channel::Display).unwrap();
        let mut adm = open_with(&a, &c, Some(m.token.expose_secret()), true, None).unwrap();
        adm.spend(&a).unwrap();
        adm.spend(&a).unwrap(); // a second spend is a no-op, not a replay
        a.revoke(&a.revoke_handle(&m.id, 1000), 1000).unwrap();
        let r = adm.consume(&a, backend()).unwrap_err();
        assert_eq!(r, Refusal::Token(Rejection::Revoked));
    }

    #[test]
    fn a_revoke_all_after_an_early_spend_still_wins() {
        let (a, c) = (authority(), Arc::new(Claims::default()));
        let t = mint(&a, Channel::Display);
        let mut adm = open_with(&a, &c, Some(t.expose_secret()), true, None).unwrap();
        adm.spend(&a).unwrap();
        a.revoke_all();
        assert_eq!(
            adm.consume(&a, backend()).unwrap_err(),
            Refusal::Token(Rejection::Revoked)
        );
    }

    #[test]
    fn a_failed_early_spend_cannot_be_consumed_later() {
        let (a, c) = (authority(), Arc::new(Claims::default()));
        let t = mint(&a, Channel::Display);
        let mut adm = open_with(&a, &c, Some(t.expose_secret()), true, None).unwrap();
        a.revoke_all();
        assert_eq!(adm.spend(&a), Err(Rejection::Revoked));
        assert_eq!(adm.spend(&a), Err(Rejection::Revoked));
        assert_eq!(
            adm.consume(&a, backend()).unwrap_err(),
            Refusal::Token(Rejection::Revoked)
        );
    }

    #[test]
    fn an_early_spent_token_that_was_not_revoked_becomes_the_session() {
        let (a, c) = (authority(), Arc::new(Claims::default()));
        let t = mint(&a, Channel::Display);
        let mut adm = open_with(&a, &c, Some(t.expose_secret()), true, None).unwrap();
        adm.spend(&a).unwrap();
        assert!(adm.consume(&a, backend()).is_ok());
        // and it is spent: a copy is a replay
        let r = match open_with(&a, &c, Some(t.expose_secret()), true, None) {
            Err((r, _)) => r,
            Ok(adm) => adm.consume(&a, backend()).unwrap_err(),
        };
        assert_eq!(r, Refusal::Token(Rejection::Replayed));
    }
}
