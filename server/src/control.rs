//! The control socket: the out-of-band channel through which an allowed
//! local user (the launcher) obtains a token.
//!
//! One JSON object per line, both ways; the lines are `screengate-control`'s
//! typed [`Request`] and [`Reply`] (this file holds no op, field or error
//! string). The peer's uid comes from `SO_PEERCRED` (the kernel's word, not
//! the peer's) and must be in the allow-list. Lines are bounded
//! ([`MAX_CONTROL_LINE`]), connections are bounded and time out, and minting
//! is rate limited per uid.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use screengate_control::{ENCODE_FAILED_LINE, Minted, Refusal, Reply, Request};
use screengate_token::{Channel, MintError};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use crate::audit;
use crate::config::MintRate;
use crate::limits::{
    CONTROL_IDLE_TIMEOUT, MAX_CONTROL_CONNECTIONS, MAX_CONTROL_LINE, MAX_CONTROL_PER_UID,
    WRITE_STALL,
};
use crate::state::Shared;

/// Per-uid token buckets for minting.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    pub buckets: HashMap<u32, Bucket>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// Takes one mint for `uid`, or says how long until one is available.
    pub fn take(&mut self, uid: u32, now: Instant, limit: MintRate) -> Result<(), Duration> {
        let burst = f64::from(limit.burst);
        let rate = f64::from(limit.per_sec);
        // The map holds one entry per allowed uid at most (only allowed
        // uids reach here), so it is bounded by the allow-list.
        let b = self.buckets.entry(uid).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }
}

/// Open control connections per uid ([`MAX_CONTROL_PER_UID`]).
#[derive(Default)]
struct PerUid(std::sync::Mutex<HashMap<u32, usize>>);

/// One connection's place in [`PerUid`], given back on drop.
struct UidSlot {
    table: Arc<PerUid>,
    uid: u32,
}

impl PerUid {
    /// A place for one more connection of `uid`, or `None` at the cap.
    fn take(table: &Arc<PerUid>, uid: u32) -> Option<UidSlot> {
        let mut t = table.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = t.entry(uid).or_insert(0);
        if *n >= MAX_CONTROL_PER_UID {
            return None;
        }
        *n += 1;
        Some(UidSlot {
            table: table.clone(),
            uid,
        })
    }
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        let mut t = self.table.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = t.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                t.remove(&self.uid);
            }
        }
    }
}

pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: UnixListener) {
    let slots = Arc::new(Semaphore::new(MAX_CONTROL_CONNECTIONS));
    let per_uid = Arc::new(PerUid::default());
    let mut shutdown = shared.shutdown.clone();
    loop {
        let permit = tokio::select! {
            _ = shutdown.changed() => return,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let stream = tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "control accept failed");
                    // EMFILE and friends: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // The kernel's word on who connected, before anything is read: a
        // uid at its cap is closed at once and holds no slot.
        let uid_slot = match stream.peer_cred() {
            Ok(c) => match PerUid::take(&per_uid, c.uid()) {
                Some(s) => s,
                None => {
                    audit!(
                        warn,
                        event = "control_rejected",
                        reason = "too_many_connections",
                        uid = c.uid(),
                        pid = c.pid()
                    );
                    continue;
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "control peer credentials unavailable; closing");
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            handle(shared, stream).await;
            drop(uid_slot);
            drop(permit);
        });
    }
}

async fn handle(shared: Arc<Shared>, stream: UnixStream) {
    let uid = match stream.peer_cred() {
        Ok(c) => c.uid(),
        Err(e) => {
            tracing::warn!(error = %e, "control peer credentials unavailable; closing");
            return;
        }
    };
    let pid = stream.peer_cred().ok().and_then(|c| c.pid());
    let (rd, mut wr) = stream.into_split();
    let mut reader = BufReader::new(rd);
    let mut shutdown = shared.shutdown.clone();
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let limit = u64::try_from(MAX_CONTROL_LINE + 1).unwrap_or(u64::MAX);
        let mut bounded = (&mut reader).take(limit);
        let read = tokio::select! {
            _ = shutdown.changed() => return,
            r = tokio::time::timeout(CONTROL_IDLE_TIMEOUT, bounded.read_until(b'\n', &mut line)) => r,
        };
        let n = match read {
            Err(_) => return, // idle
            Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            return;
        }
        if line.last() != Some(&b'\n') && line.len() > MAX_CONTROL_LINE {
            let refusal = Refusal::line_too_long();
            audit!(
                warn,
                event = "control_rejected",
                reason = refusal.code(),
                uid,
                pid
            );
            let _ = write_line(&mut wr, &Reply::Refused(refusal)).await;
            return;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        // Asked per request, not per connection: a reload that removes the
        // uid stops a connection it opened before.
        if !shared.live().allowed_uids.contains(&uid) {
            let refusal = Refusal::NotAuthorized;
            audit!(
                warn,
                event = "control_rejected",
                reason = refusal.code(),
                uid,
                pid
            );
            let _ = write_line(&mut wr, &Reply::Refused(refusal)).await;
            return;
        }
        let reply = match Request::parse(&line) {
            Err(e) => {
                // Not the message: it quotes the line, which may hold a
                // token a client put in the wrong field. The reply says it.
                tracing::debug!(uid, bytes = line.len(), "bad control request");
                Reply::Refused(Refusal::bad_request(&e))
            }
            Ok(Request::Mint(channel)) => mint(&shared, uid, pid, channel),
            Ok(Request::Revoke(handle)) => revoke(&shared, uid, pid, &handle),
            Ok(Request::RevokeAll) => {
                shared.keys().authority.revoke_all();
                let live = shared
                    .cfg
                    .max_sessions
                    .saturating_sub(shared.sessions.available_permits());
                shared.revoked_all.send_modify(|n| *n = n.wrapping_add(1));
                audit!(warn, event = "revoke_all", uid, pid, live_sessions = live);
                Reply::RevokedAll {
                    sessions_closed: u64::try_from(live).unwrap_or(u64::MAX),
                }
            }
        };
        if let Err(e) = write_line(&mut wr, &reply).await {
            if e.kind() == std::io::ErrorKind::TimedOut {
                audit!(
                    warn,
                    event = "control_closed",
                    reason = "not_reading",
                    uid,
                    pid
                );
            }
            return;
        }
    }
}

fn mint(shared: &Shared, uid: u32, pid: Option<i32>, channel: Channel) -> Reply {
    let limited = shared
        .rate
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take(uid, Instant::now(), shared.live().mint_rate);
    if let Err(wait) = limited {
        let refusal = Refusal::rate_limited(wait);
        audit!(
            warn,
            event = "mint_refused",
            reason = refusal.code(),
            uid,
            pid
        );
        return Reply::Refused(refusal);
    }
    let keys = shared.keys();
    match keys.authority.mint(channel) {
        Err(MintError::LedgerFull) => {
            let refusal = Refusal::ledger_full(keys.authority.ttl());
            audit!(
                warn,
                event = "mint_refused",
                reason = refusal.code(),
                uid,
                pid
            );
            Reply::Refused(refusal)
        }
        Ok(m) => {
            audit!(info, event = "mint", uid, pid, channel = channel.as_str(), token_id = %m.id);
            let port = shared.port;
            Reply::Minted(Minted {
                token_id: keys.authority.revoke_handle(&m.id, uid),
                // moved, not copied: the reply holds the authority's secret
                token: m.token,
                header: shared.token_header_display.clone(),
                url: format!("https://localhost:{port}/"),
                ws_url: format!("wss://localhost:{port}{}", shared.cfg.path),
                origin: shared.origin(),
                spki_pin: keys.server_pin.clone(),
                channel,
                expires_in_ms: u64::try_from(m.expires_in.as_millis()).unwrap_or(u64::MAX),
            })
        }
    }
}

fn revoke(shared: &Shared, uid: u32, pid: Option<i32>, handle: &str) -> Reply {
    match shared.keys().authority.revoke(handle, uid) {
        Ok(id) => {
            audit!(info, event = "revoke", uid, pid, token_id = %id);
            Reply::Revoked
        }
        Err(e) => {
            let refusal = Refusal::revoke(e);
            audit!(
                warn,
                event = "revoke_refused",
                reason = refusal.code(),
                uid,
                pid
            );
            Reply::Refused(refusal)
        }
    }
}

async fn write_line(
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    reply: &Reply,
) -> std::io::Result<()> {
    // The reply may hold a token: it is encoded into a buffer wiped on drop
    // that never reallocates (`Reply::to_line`).
    let line = reply.to_line();
    let bytes: &[u8] = match &line {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "control reply not encodable");
            ENCODE_FAILED_LINE
        }
    };
    // A peer that pipelines requests and never reads must not hold a
    // control permit: the reply gets [`WRITE_STALL`], then the connection
    // is closed.
    match tokio::time::timeout(WRITE_STALL, wr.write_all(bytes)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "control client did not read its reply",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_allows_burst_then_limits_then_refills() {
        let mut r = RateLimiter {
            buckets: HashMap::new(),
        };
        let l = MintRate::default();
        let t0 = Instant::now();
        for _ in 0..l.burst {
            r.take(1, t0, l).unwrap();
        }
        let wait = r.take(1, t0, l).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        // another uid has its own bucket
        r.take(2, t0, l).unwrap();
        // one second later: `per_sec` more
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..l.per_sec {
            r.take(1, t1, l).unwrap();
        }
        assert!(r.take(1, t1, l).is_err());
    }

    #[test]
    fn rate_limiter_follows_a_reloaded_limit_at_once() {
        let mut r = RateLimiter {
            buckets: HashMap::new(),
        };
        let t0 = Instant::now();
        r.take(1, t0, MintRate::default()).unwrap();
        // lowered to a bucket of 2: the bucket is cut to 2 at once (not
        // the default's remaining burst): two more now, then none
        let low = MintRate {
            burst: 2,
            per_sec: 1,
        };
        r.take(1, t0, low).unwrap();
        r.take(1, t0, low).unwrap();
        let wait = r.take(1, t0, low).unwrap_err();
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        // raised: the bucket refills toward the new size
        let high = MintRate {
            burst: 100,
            per_sec: 100,
        };
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..100 {
            r.take(1, t1, high).unwrap();
        }
        assert!(r.take(1, t1, high).is_err());
    }
}
