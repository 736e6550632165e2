//! The token authority of one server run: mints, verifies and consumes.
//!
//! Verification and consumption are two steps with proof types between them:
//! [`Authority::verify`] yields a [`Verified`] (MAC, run, channel and expiry
//! checked, nothing recorded), and only [`Authority::consume`] turns that into
//! a [`Consumed`], atomically, once. The server connects the backend between
//! the two, so a backend failure does not burn the client's token. Neither
//! proof type can be built outside this module.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroize;

use crate::clock::Clock;
use crate::format::{BODY_LEN, Channel, RawToken, RunId, TAG_LEN, TokenId, VERSION};
use crate::secret::{DeviceKey, SecretToken};

type HmacSha256 = Hmac<Sha256>;

/// Domain separation for deriving the per-run key from the device key.
const RUN_LABEL: &[u8] = b"screengate run v1";
/// Domain separation for token tags.
const TAG_LABEL: &[u8] = b"screengate token v1\0";

/// Longest token life an authority accepts. Tokens are for a handshake that
/// follows within seconds; a long-lived token is a stolen token waiting.
pub const MAX_TTL: Duration = Duration::from_secs(600);

/// Bound on the consumed-id ledger. Entries leave at their token's expiry,
/// so the ledger holds at most (consume rate × TTL) ids; when it is full,
/// minting is refused and so is consuming (tokens minted before it filled
/// are still out there), rather than the ledger growing. 65 536 entries of
/// 24 bytes (+ map overhead) is under 4 MiB.
pub const MAX_LEDGER_ENTRIES: usize = 65_536;

/// Bound on the revoked-id set, swept like the ledger (entries leave one TTL
/// after revocation, when every token they could name has expired). When it
/// is full a revocation by id is refused ([`RevokeError::Full`]); revoking
/// everything needs no entry and always works.
pub const MAX_REVOKED_ENTRIES: usize = 65_536;

/// Domain separation for revocation handles.
const REVOKE_LABEL: &[u8] = b"screengate revoke v1\0";
/// Label of the tag [`Authority::is_keyed_by`] compares.
const KEY_CHECK_LABEL: &[u8] = b"screengate key check v1\0";

/// Bytes of the MAC in a revocation handle (a forgery needs 2^128 tries).
const REVOKE_TAG_LEN: usize = 16;

/// How often expired ledger entries are swept (amortises the O(n) retain).
const SWEEP_INTERVAL_MS: u64 = 1_000;

/// Why a presented token was refused. For the audit log only: the peer
/// always sees the same opaque refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Not exactly one canonical base64url token of the right length,
    /// version and channel code.
    #[error("malformed token")]
    Malformed,
    /// Minted by another run of the server (before a restart), or claims to be.
    #[error("token from another run")]
    WrongRun,
    /// The tag does not verify: forged, altered, or from another device.
    #[error("bad token MAC")]
    BadMac,
    /// Genuine, but minted for another channel.
    #[error("token for another channel")]
    WrongChannel,
    /// Genuine, but past its expiry on this run's monotonic clock.
    #[error("token expired")]
    Expired,
    /// Genuine and unexpired, but already consumed once.
    #[error("token replayed")]
    Replayed,
    /// Genuine, unexpired and unused, but the ledger is at
    /// [`MAX_LEDGER_ENTRIES`]: not consumed, so it may be retried once
    /// older entries have expired.
    #[error("token ledger is full")]
    LedgerFull,
    /// Genuine and unexpired, but revoked (by id, or by a revoke-all issued
    /// after it was minted).
    #[error("token revoked")]
    Revoked,
}

impl Rejection {
    /// A stable snake_case name for structured audit events.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::WrongRun => "wrong_run",
            Rejection::BadMac => "bad_mac",
            Rejection::WrongChannel => "wrong_channel",
            Rejection::Expired => "expired",
            Rejection::Replayed => "replayed",
            Rejection::LedgerFull => "ledger_full",
            Rejection::Revoked => "revoked",
        }
    }
}

/// Why the authority could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    /// TTL of zero or above [`MAX_TTL`].
    #[error("token TTL must be between 1 ms and {} s", MAX_TTL.as_secs())]
    BadTtl,
    /// The HMAC implementation refused the key (cannot happen for HMAC,
    /// which takes keys of any length; kept typed rather than unwrapped).
    #[error("HMAC key setup failed")]
    KeySetup,
}

/// Why a token could not be minted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    /// The consumed-id ledger is at [`MAX_LEDGER_ENTRIES`]; try again once
    /// older tokens have expired.
    #[error("token ledger is full; retry after older tokens expire")]
    LedgerFull,
}

/// Why a revocation by id was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RevokeError {
    /// Not a revocation handle (64 lower-case hex digits).
    #[error("not a revocation handle")]
    Malformed,
    /// The handle's MAC does not verify for this uid on this run: minted
    /// for another uid, by another run, or forged.
    #[error("not a token this uid minted on this run")]
    NotYours,
    /// The revoked-id set is at [`MAX_REVOKED_ENTRIES`].
    #[error("revoked-id set is full")]
    Full,
}

/// A freshly minted token, for the one peer that asked.
#[derive(Debug)]
pub struct MintedToken {
    /// The encoded token. Secret.
    pub token: SecretToken,
    /// Its id, for audit correlation.
    pub id: TokenId,
    /// Its remaining life at mint time.
    pub expires_in: Duration,
}

/// Proof that a token's MAC, run, channel and expiry were checked.
/// Not yet consumed; only [`Authority::consume`] accepts it.
#[derive(Debug)]
pub struct Verified {
    id: TokenId,
    channel: Channel,
    issued_ms: u64,
    expires_ms: u64,
}

impl Verified {
    /// The token's id.
    pub fn id(&self) -> TokenId {
        self.id
    }
}

/// Proof that a token was verified and consumed, exactly once.
#[derive(Debug)]
pub struct Consumed {
    id: TokenId,
    channel: Channel,
    issued_ms: u64,
}

impl Consumed {
    /// The token's id.
    pub fn id(&self) -> TokenId {
        self.id
    }

    /// The channel the token was for.
    pub fn channel(&self) -> Channel {
        self.channel
    }
}

struct Ledger {
    consumed: HashMap<TokenId, u64>,
    /// Revoked ids, each with the time after which no token can carry it.
    revoked: HashMap<TokenId, u64>,
    /// Every token issued at or before this (ms) is revoked.
    revoked_through_ms: Option<u64>,
    next_sweep_ms: u64,
}

impl Ledger {
    fn is_revoked(&self, id: &TokenId, issued_ms: u64) -> bool {
        self.revoked.contains_key(id) || self.revoked_through_ms.is_some_and(|t| issued_ms <= t)
    }

    fn sweep_if_due(&mut self, now_ms: u64) {
        if now_ms >= self.next_sweep_ms {
            self.consumed.retain(|_, expires| *expires > now_ms);
            self.revoked.retain(|_, until| *until > now_ms);
            self.next_sweep_ms = now_ms.saturating_add(SWEEP_INTERVAL_MS);
        }
    }
}

/// Mints and checks the tokens of one server run.
pub struct Authority<C: Clock> {
    run_id: RunId,
    /// HMAC state keyed with `K_run`, computed once; cloned per operation so
    /// the key schedule is not redone for every token.
    mac: HmacSha256,
    clock: C,
    /// The life of tokens minted from now on (a reload may change it).
    ttl_ms: AtomicU64,
    /// The longest life any token of this run was minted with: how long a
    /// revocation must be remembered.
    longest_ttl_ms: AtomicU64,
    ledger: Mutex<Ledger>,
    max_ledger: usize,
}

impl<C: Clock> std::fmt::Debug for Authority<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("run_id", &self.run_id)
            .field("ttl_ms", &self.ttl_ms.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A token life in milliseconds, if it is one [`Authority`] accepts.
fn ttl_millis(ttl: Duration) -> Result<u64, AuthorityError> {
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(AuthorityError::BadTtl);
    }
    u64::try_from(ttl.as_millis()).map_err(|_| AuthorityError::BadTtl)
}

impl<C: Clock> Authority<C> {
    /// Starts a new run: a fresh random run id and the run key derived from
    /// the device key. Every token of an earlier run is dead from here on.
    pub fn new(device_key: &DeviceKey, ttl: Duration, clock: C) -> Result<Self, AuthorityError> {
        use rand::RngCore;
        let mut run_id = [0u8; 16];
        rand::rng().fill_bytes(&mut run_id);
        Self::with_run_id(device_key, RunId(run_id), ttl, clock)
    }

    pub(crate) fn with_run_id(
        device_key: &DeviceKey,
        run_id: RunId,
        ttl: Duration,
        clock: C,
    ) -> Result<Self, AuthorityError> {
        let ttl_ms = ttl_millis(ttl)?;
        let mut run_key = derive_run_key(device_key, &run_id)?;
        let mac = HmacSha256::new_from_slice(&run_key).map_err(|_| AuthorityError::KeySetup);
        run_key.zeroize();
        Ok(Self {
            run_id,
            mac: mac?,
            clock,
            ttl_ms: AtomicU64::new(ttl_ms),
            longest_ttl_ms: AtomicU64::new(ttl_ms),
            ledger: Mutex::new(Ledger {
                consumed: HashMap::new(),
                revoked: HashMap::new(),
                revoked_through_ms: None,
                next_sweep_ms: 0,
            }),
            max_ledger: MAX_LEDGER_ENTRIES,
        })
    }

    /// This run's id.
    pub fn run_id(&self) -> RunId {
        self.run_id
    }

    /// The life of tokens minted from now on.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed))
    }

    /// Changes the life of tokens minted from now on (a configuration
    /// reload). Tokens already minted keep the expiry they carry; a
    /// revocation is remembered for the longest life this run ever used.
    pub fn set_ttl(&self, ttl: Duration) -> Result<(), AuthorityError> {
        let ms = ttl_millis(ttl)?;
        self.longest_ttl_ms.fetch_max(ms, Ordering::Relaxed);
        self.ttl_ms.store(ms, Ordering::Relaxed);
        Ok(())
    }

    /// Current number of consumed ids held (for metrics and tests).
    pub fn ledger_len(&self) -> usize {
        self.lock_ledger().consumed.len()
    }

    #[cfg(test)]
    pub(crate) fn set_max_ledger(&mut self, n: usize) {
        self.max_ledger = n;
    }

    /// Mints a token for `channel`. Writes no state: minting cannot exhaust
    /// memory. Refused only when the ledger is full.
    pub fn mint(&self, channel: Channel) -> Result<MintedToken, MintError> {
        use rand::RngCore;
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        self.mint_with_id(channel, TokenId(id))
    }

    pub(crate) fn mint_with_id(
        &self,
        channel: Channel,
        id: TokenId,
    ) -> Result<MintedToken, MintError> {
        let now_ms = self.now_ms();
        let issued_ms = {
            let mut ledger = self.lock_ledger();
            ledger.sweep_if_due(now_ms);
            if ledger.consumed.len() >= self.max_ledger {
                return Err(MintError::LedgerFull);
            }
            // A token minted in the same millisecond as a revoke-all, after
            // it, must not be born revoked.
            ledger
                .revoked_through_ms
                .map_or(now_ms, |t| now_ms.max(t.saturating_add(1)))
        };
        let ttl_ms = self.ttl_ms.load(Ordering::Relaxed);
        let expires_ms = now_ms.saturating_add(ttl_ms);
        let body = RawToken::assemble(&self.run_id, &id, channel, issued_ms, expires_ms);
        let tag = self.tag(&body);
        Ok(MintedToken {
            token: SecretToken::new(RawToken::encode(&body, &tag)),
            id,
            expires_in: Duration::from_millis(ttl_ms),
        })
    }

    /// Checks a presented token for `channel` without consuming it.
    ///
    /// Order: structure, version, run, MAC (constant time), channel, expiry,
    /// then a non-binding look at the ledger so an obvious replay is refused
    /// before the caller does expensive work.
    pub fn verify(&self, text: &str, channel: Channel) -> Result<Verified, Rejection> {
        let raw = RawToken::decode(text).ok_or(Rejection::Malformed)?;
        if raw.version() != VERSION {
            return Err(Rejection::Malformed);
        }
        let claimed_channel = Channel::from_byte(raw.channel_byte()).ok_or(Rejection::Malformed)?;
        if raw.issued_ms() > raw.expires_ms() {
            return Err(Rejection::Malformed);
        }
        if raw.run_id() != self.run_id {
            return Err(Rejection::WrongRun);
        }
        let mut mac = self.mac.clone();
        mac.update(TAG_LABEL);
        mac.update(raw.body());
        // `verify_slice` compares in constant time (subtle::ConstantTimeEq).
        mac.verify_slice(raw.tag()).map_err(|_| Rejection::BadMac)?;
        if claimed_channel != channel {
            return Err(Rejection::WrongChannel);
        }
        if self.now_ms() >= raw.expires_ms() {
            return Err(Rejection::Expired);
        }
        let id = raw.token_id();
        {
            let ledger = self.lock_ledger();
            if ledger.is_revoked(&id, raw.issued_ms()) {
                return Err(Rejection::Revoked);
            }
            if ledger.consumed.contains_key(&id) {
                return Err(Rejection::Replayed);
            }
        }
        Ok(Verified {
            id,
            channel: claimed_channel,
            issued_ms: raw.issued_ms(),
            expires_ms: raw.expires_ms(),
        })
    }

    /// Consumes a verified token: atomically records its id, once. Of any
    /// number of racing callers with the same token exactly one gets
    /// `Ok`; the rest get [`Rejection::Replayed`]. Expiry is checked again,
    /// since time passed since [`Authority::verify`]. A full ledger refuses
    /// ([`Rejection::LedgerFull`]) without recording: the cap holds here
    /// too, since minting writes nothing and any number of tokens minted
    /// while the ledger had room may arrive at once.
    pub fn consume(&self, verified: Verified) -> Result<Consumed, Rejection> {
        let now_ms = self.now_ms();
        if now_ms >= verified.expires_ms {
            return Err(Rejection::Expired);
        }
        let mut ledger = self.lock_ledger();
        ledger.sweep_if_due(now_ms);
        // Revocation is checked again here, under the lock: a revoke that
        // lands between verify and consume wins.
        if ledger.is_revoked(&verified.id, verified.issued_ms) {
            return Err(Rejection::Revoked);
        }
        if ledger.consumed.contains_key(&verified.id) {
            return Err(Rejection::Replayed);
        }
        if ledger.consumed.len() >= self.max_ledger {
            return Err(Rejection::LedgerFull);
        }
        ledger.consumed.insert(verified.id, verified.expires_ms);
        Ok(Consumed {
            id: verified.id,
            channel: verified.channel,
            issued_ms: verified.issued_ms,
        })
    }

    /// Whether a consumed token was revoked since (by id or by a revoke
    /// all). For a token spent early, before awaits that may take seconds
    /// (the server spends a token before it replaces a session), so a
    /// revoke in that time still wins.
    pub fn check_not_revoked(&self, consumed: &Consumed) -> Result<(), Rejection> {
        if self
            .lock_ledger()
            .is_revoked(&consumed.id, consumed.issued_ms)
        {
            Err(Rejection::Revoked)
        } else {
            Ok(())
        }
    }

    /// The handle with which `uid` (and only `uid`) can revoke token `id`
    /// on this run: `hex(id) || hex(HMAC(K_run, label || id || uid)[..16])`.
    /// Not secret in the way a token is (it cannot open a session), but
    /// bound to the minting uid without the server storing anything.
    pub fn revoke_handle(&self, id: &TokenId, uid: u32) -> String {
        let tag = self.revoke_mac(id, uid).finalize().into_bytes();
        let mut out = String::with_capacity(64);
        for b in id.0.iter().chain(tag.iter().take(REVOKE_TAG_LEN)) {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// Revokes the token named by `handle`, if `uid` minted it on this run.
    /// Revoking twice is not an error.
    pub fn revoke(&self, handle: &str, uid: u32) -> Result<TokenId, RevokeError> {
        let bytes = decode_hex(handle).ok_or(RevokeError::Malformed)?;
        let (id_bytes, tag) = bytes.split_at(16);
        let mut id = [0u8; 16];
        id.copy_from_slice(id_bytes);
        let id = TokenId(id);
        // constant time (hmac's `verify_truncated_left`, subtle underneath)
        self.revoke_mac(&id, uid)
            .verify_truncated_left(tag)
            .map_err(|_| RevokeError::NotYours)?;
        let now_ms = self.now_ms();
        let mut ledger = self.lock_ledger();
        ledger.sweep_if_due(now_ms);
        if !ledger.revoked.contains_key(&id) {
            if ledger.revoked.len() >= MAX_REVOKED_ENTRIES {
                return Err(RevokeError::Full);
            }
            // no token of this run lives longer than its longest TTL from now
            let longest = self.longest_ttl_ms.load(Ordering::Relaxed);
            ledger.revoked.insert(id, now_ms.saturating_add(longest));
        }
        Ok(id)
    }

    /// Whether this authority was built from `device_key` (a reload asks,
    /// to tell a rotated identity): both derive this run's key and tag one
    /// label; the tags are compared in constant time.
    pub fn is_keyed_by(&self, device_key: &DeviceKey) -> bool {
        let Ok(mut run_key) = derive_run_key(device_key, &self.run_id) else {
            return false;
        };
        let other = HmacSha256::new_from_slice(&run_key);
        run_key.zeroize();
        let Ok(mut other) = other else {
            return false;
        };
        let mut mine = self.mac.clone();
        mine.update(KEY_CHECK_LABEL);
        other.update(KEY_CHECK_LABEL);
        other.verify_slice(&mine.finalize().into_bytes()).is_ok()
    }

    /// Revokes every token minted so far on this run.
    pub fn revoke_all(&self) {
        let now_ms = self.now_ms();
        let mut ledger = self.lock_ledger();
        ledger.revoked_through_ms = Some(now_ms);
    }

    fn revoke_mac(&self, id: &TokenId, uid: u32) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(REVOKE_LABEL);
        mac.update(&id.0);
        mac.update(&uid.to_be_bytes());
        mac
    }

    fn tag(&self, body: &[u8; BODY_LEN]) -> [u8; TAG_LEN] {
        let mut mac = self.mac.clone();
        mac.update(TAG_LABEL);
        mac.update(body);
        mac.finalize().into_bytes().into()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.now().as_millis()).unwrap_or(u64::MAX)
    }

    /// A panic while holding the lock (there is none: no code in the critical
    /// sections can panic) must not turn into a permanent failure, so a
    /// poisoned lock is simply taken over: the map is always consistent.
    fn lock_ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The token-id prefix a presented token *claims*, for audit correlation of
/// refused tokens. Structural only: for a forged token it is whatever the
/// forger wrote, which is harmless to log and reveals nothing secret.
pub fn claimed_id_prefix(text: &str) -> Option<String> {
    RawToken::decode(text).map(|raw| raw.token_id().prefix())
}

/// Exactly 64 lower-case hex digits → 32 bytes.
fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    b.chunks_exact(2)
        .map(|p| Some(nib(*p.first()?)? << 4 | nib(*p.get(1)?)?))
        .collect()
}

fn derive_run_key(device_key: &DeviceKey, run_id: &RunId) -> Result<[u8; 32], AuthorityError> {
    let mut mac = HmacSha256::new_from_slice(device_key.expose_secret())
        .map_err(|_| AuthorityError::KeySetup)?;
    mac.update(RUN_LABEL);
    mac.update(&run_id.0);
    Ok(mac.finalize().into_bytes().into())
}

#[cfg(test)]
mod tests;
