//! The tokens being admitted right now. Between verify and consume a
//! handshake waits for a slot, maybe replaces the oldest session and
//! connects the backend; a token may be in that window only once, so N
//! racing copies of one token can neither replace N sessions nor hold N of
//! the SDK's connections. A [`Claim`] lives inside an `Admission` and is
//! released when that is consumed or dropped (refused, cancelled).
//! What it leaves to others: the live sessions (`roster.rs`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use screengate_token::TokenId;

/// Tokens between verify and consume. Bounded by the handshakes in
/// flight, which the pending pools bound.
#[derive(Debug, Default)]
pub(crate) struct Claims {
    held: Mutex<HashSet<TokenId>>,
}

/// One token's claim; released on drop.
#[derive(Debug)]
pub(crate) struct Claim {
    id: TokenId,
    claims: Arc<Claims>,
}

impl Claims {
    /// Claims `id`, or `None` when another handshake holds it.
    pub fn claim(self: &Arc<Self>, id: TokenId) -> Option<Claim> {
        let fresh = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id);
        fresh.then(|| Claim {
            id,
            claims: self.clone(),
        })
    }

    /// Tokens claimed now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.claims
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_claimed_once_until_its_claim_drops() {
        use screengate_token::{Authority, Channel, DeviceKey, ManualClock};
        let auth = Authority::new(
            &DeviceKey::from_bytes([7; 32]),
            std::time::Duration::from_secs(30),
            ManualClock::new(),
        )
        .unwrap();
        let id = |_| {
            let t = auth.mint(Channel::Display).unwrap();
            auth.verify(t.token.expose_secret(), Channel::Display)
                .unwrap()
                .id()
        };
        let c = Arc::new(Claims::default());
        let (a, b) = (id(0), id(1));
        let first = c.claim(a).unwrap();
        assert!(c.claim(a).is_none(), "a second claim of one token");
        assert!(c.claim(a).is_none(), "still held");
        let other = c.claim(b).unwrap();
        drop(first);
        let again = c.claim(a).unwrap();
        assert!(c.claim(b).is_none());
        drop(other);
        drop(again);
        assert_eq!(c.len(), 0);
    }
}
