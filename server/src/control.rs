//! The control socket: the out-of-band channel through which an allowed
//! local user (the launcher) obtains a token.
//!
//! One JSON object per line, both ways. The peer's uid comes from
//! `SO_PEERCRED` (the kernel's word, not the peer's) and must be in the
//! allow-list. Lines are bounded ([`MAX_CONTROL_LINE`]), connections are
//! bounded and time out, and minting is rate limited per uid.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use screengate_token::{Channel, MintError, RevokeError};
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use crate::audit;
use crate::config::MintRate;
use crate::limits::{CONTROL_IDLE_TIMEOUT, MAX_CONTROL_CONNECTIONS, MAX_CONTROL_LINE, WRITE_STALL};
use crate::state::Shared;

/// A parsed control request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Mint a token for a channel.
    Mint(Channel),
    /// Revoke one token by the `token_id` its mint reply carried
    /// (authorised for the uid that minted it).
    Revoke(String),
    /// Revoke every token minted so far and close every live session.
    RevokeAll,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    op: String,
    channel: Option<String>,
    token_id: Option<String>,
    all: Option<bool>,
}

/// Why a line is not a request; the message goes back to the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub String);

/// Parses one request line (without its newline).
pub fn parse_request(line: &[u8]) -> Result<Request, BadRequest> {
    let text = std::str::from_utf8(line).map_err(|_| BadRequest("line is not UTF-8".into()))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(BadRequest("empty line; send one JSON object per line, e.g. {\"op\":\"mint\",\"channel\":\"display\"}".into()));
    }
    let raw: RawRequest = serde_json::from_str(text).map_err(|e| {
        BadRequest(format!(
            "not a request object: {e}; expected {{\"op\":\"mint\",\"channel\":\"display\"}}"
        ))
    })?;
    if raw.op != "mint" && raw.channel.is_some() {
        return Err(BadRequest("`channel` belongs to mint only".into()));
    }
    if raw.op != "revoke" && (raw.token_id.is_some() || raw.all.is_some()) {
        return Err(BadRequest(
            "`token_id` and `all` belong to revoke only".into(),
        ));
    }
    match raw.op.as_str() {
        "revoke" => match (raw.token_id, raw.all) {
            (Some(id), None) => Ok(Request::Revoke(id)),
            (None, Some(true)) => Ok(Request::RevokeAll),
            _ => Err(BadRequest(
                "revoke takes exactly one of {\"token_id\":\"…\"} (from the mint reply) or {\"all\":true}".into(),
            )),
        },
        "mint" => {
            let ch = raw.channel.as_deref().unwrap_or("display");
            let channel = ch.parse().map_err(|()| {
                BadRequest(format!(
                    "unknown channel `{}`; expected display or native",
                    ch.escape_debug()
                ))
            })?;
            Ok(Request::Mint(channel))
        }
        other => Err(BadRequest(format!(
            "unknown op `{}`; the ops are mint and revoke",
            other.escape_debug()
        ))),
    }
}

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

pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: UnixListener) {
    let slots = Arc::new(Semaphore::new(MAX_CONTROL_CONNECTIONS));
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
        let shared = shared.clone();
        tokio::spawn(async move {
            handle(shared, stream).await;
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
            audit!(
                warn,
                event = "control_rejected",
                reason = "line_too_long",
                uid,
                pid
            );
            let _ = write_line(
                &mut wr,
                &json!({"ok": false, "error": "line_too_long",
                "message": format!("request line longer than {MAX_CONTROL_LINE} bytes; closing")}),
            )
            .await;
            return;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        // Asked per request, not per connection: a reload that removes the
        // uid stops a connection it opened before.
        if !shared.live().allowed_uids.contains(&uid) {
            audit!(
                warn,
                event = "control_rejected",
                reason = "not_authorized",
                uid,
                pid
            );
            let _ = write_line(&mut wr, &json!({"ok": false, "error": "not_authorized"})).await;
            return;
        }
        let reply = match parse_request(&line) {
            Err(BadRequest(message)) => {
                tracing::debug!(uid, %message, "bad control request");
                json!({"ok": false, "error": "bad_request", "message": message})
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
                json!({"ok": true, "revoked": "all", "sessions_closed": live})
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

fn mint(shared: &Shared, uid: u32, pid: Option<i32>, channel: Channel) -> serde_json::Value {
    let limited = shared
        .rate
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take(uid, Instant::now(), shared.live().mint_rate);
    if let Err(wait) = limited {
        let retry_after_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        audit!(
            warn,
            event = "mint_refused",
            reason = "rate_limited",
            uid,
            pid
        );
        return json!({"ok": false, "error": "rate_limited", "retry_after_ms": retry_after_ms});
    }
    let keys = shared.keys();
    match keys.authority.mint(channel) {
        Err(MintError::LedgerFull) => {
            audit!(
                warn,
                event = "mint_refused",
                reason = "ledger_full",
                uid,
                pid
            );
            json!({"ok": false, "error": "ledger_full",
                "message": "too many recently used tokens; retry after the token TTL", "retry_after_ms":
                u64::try_from(keys.authority.ttl().as_millis()).unwrap_or(u64::MAX)})
        }
        Ok(m) => {
            audit!(info, event = "mint", uid, pid, channel = channel.as_str(), token_id = %m.id);
            let port = shared.port;
            json!({
                "ok": true,
                "token": m.token.expose_secret(),
                "header": shared.token_header_display,
                "url": format!("https://localhost:{port}/"),
                "ws_url": format!("wss://localhost:{port}{}", shared.cfg.path),
                "origin": shared.origin(),
                "spki_pin": keys.server_pin,
                "channel": channel.as_str(),
                "token_id": keys.authority.revoke_handle(&m.id, uid),
                "expires_in_ms": u64::try_from(m.expires_in.as_millis()).unwrap_or(u64::MAX),
            })
        }
    }
}

fn revoke(shared: &Shared, uid: u32, pid: Option<i32>, handle: &str) -> serde_json::Value {
    match shared.keys().authority.revoke(handle, uid) {
        Ok(id) => {
            audit!(info, event = "revoke", uid, pid, token_id = %id);
            json!({"ok": true, "revoked": 1})
        }
        Err(e) => {
            let error = match e {
                RevokeError::Malformed => "bad_request",
                RevokeError::NotYours => "not_yours",
                RevokeError::Full => "revoked_full",
            };
            audit!(warn, event = "revoke_refused", reason = error, uid, pid);
            json!({"ok": false, "error": error, "message": e.to_string()})
        }
    }
}

async fn write_line(
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    v: &serde_json::Value,
) -> std::io::Result<()> {
    // The reply may hold a token: keep the serialized bytes in a buffer that
    // is wiped when dropped.
    let mut buf =
        Zeroizing::new(serde_json::to_vec(v).unwrap_or_else(|_| b"{\"ok\":false}".to_vec()));
    buf.push(b'\n');
    // A peer that pipelines requests and never reads must not hold a
    // control permit: the reply gets [`WRITE_STALL`], then the connection
    // is closed.
    match tokio::time::timeout(WRITE_STALL, wr.write_all(&buf)).await {
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
    fn parses_mint() {
        assert_eq!(
            parse_request(br#"{"op":"mint","channel":"display"}"#),
            Ok(Request::Mint(Channel::Display))
        );
        assert_eq!(
            parse_request(br#"{"op":"mint"}"#),
            Ok(Request::Mint(Channel::Display))
        );
        assert_eq!(
            parse_request(br#" {"op":"mint","channel":"native"} "#),
            Ok(Request::Mint(Channel::Native))
        );
    }

    #[test]
    fn parses_revoke() {
        assert_eq!(
            parse_request(br#"{"op":"revoke","token_id":"ab"}"#),
            Ok(Request::Revoke("ab".into()))
        );
        assert_eq!(
            parse_request(br#"{"op":"revoke","all":true}"#),
            Ok(Request::RevokeAll)
        );
    }

    #[test]
    fn refuses_malformed_lines_with_messages() {
        for line in [
            &b""[..],
            b"   ",
            b"mint",
            b"{",
            b"[]",
            b"null",
            br#"{"op":"mint","channel":"root"}"#,
            br#"{"op":"delete"}"#,
            br#"{"op":"mint","extra":1}"#,
            br#"{"op":1}"#,
            br#"{"channel":"display"}"#,
            b"\xff\xfe",
            br#"{"op":"revoke"}"#,
            br#"{"op":"revoke","all":false}"#,
            br#"{"op":"revoke","all":true,"token_id":"ab"}"#,
            br#"{"op":"revoke","all":"yes"}"#,
            br#"{"op":"revoke","token_id":7}"#,
            br#"{"op":"revoke","token_id":"ab","channel":"display"}"#,
            br#"{"op":"mint","token_id":"ab"}"#,
            br#"{"op":"mint","all":true}"#,
        ] {
            let e = parse_request(line).unwrap_err();
            assert!(!e.0.is_empty());
        }
    }

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
