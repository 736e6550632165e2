//! `cargo xtask e2e`: the real `screengate` binary, spawned and killed by
//! pid, against every refusal the guard promises. Each case is named and
//! reported; the last line is `N passed, M failed`.
//!
//! Cases needing root (a throwaway user for the uid allow-list) run when
//! root; elsewhere they print `skipped: needs root`. CI runs as root.

use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use screengate_identity::Pin;
use screengate_tests::{Request, Response, echo, handshake};

use crate::proc::{ServerProc, build_bins};

#[path = "e2e_dist.rs"]
mod dist_case;
#[path = "e2e_hostile.rs"]
mod hostile;
#[path = "e2e_launcher.rs"]
mod launcher;
#[path = "e2e_native.rs"]
mod native;
#[path = "e2e_privilege.rs"]
mod privilege;
#[path = "e2e_reload.rs"]
mod reload;
#[path = "e2e_rotate.rs"]
mod rotate;
#[path = "e2e_sdk.rs"]
mod sdk;
#[path = "e2e_sockact.rs"]
mod sockact;
#[path = "e2e_stream.rs"]
mod stream;

type R = std::result::Result<(), String>;

/// `screengate`'s exit codes by kind (server/src/exit.rs; docs/deployment.md).
/// Bad configuration or arguments (`EX_USAGE`).
const EX_USAGE: i32 = 64;
/// Something taken or not there: address in use, a server on the state dir.
const EX_UNAVAILABLE: i32 = 69;
/// Unsafe permissions, a wrong owner, root refused (`EX_NOPERM`).
const EX_NOPERM: i32 = 77;

/// What every case can use.
struct Fx {
    bin: PathBuf,
    base: PathBuf,
    main: ServerProc,
    addr: SocketAddr,
    pin: Pin,
    tokens: Mutex<Vec<String>>,
    logs: Mutex<Vec<PathBuf>>,
    /// The display user the launcher cases run as, sandbox on (root runs
    /// only), with its home directory; the service user is in its group,
    /// so the control socket can be 0660 for that group.
    display: Option<(TempUser, PathBuf)>,
    /// The service user the servers drop to (root runs only). Last, so it
    /// is removed after every server above has stopped.
    svc: Option<TempUser>,
}

impl Fx {
    fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Mints on `control`, retrying politely when rate limited, and
    /// remembers the token for the log grep.
    async fn mint_on(
        &self,
        control: &Path,
    ) -> std::result::Result<(String, serde_json::Value), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v =
                screengate_tests::control(control, r#"{"op":"mint","channel":"display"}"#).await?;
            if let Some(t) = v["token"].as_str() {
                self.tokens
                    .lock()
                    .map_err(|e| e.to_string())?
                    .push(t.to_owned());
                return Ok((t.to_owned(), v));
            }
            if v["error"] == "rate_limited" && Instant::now() < deadline {
                let ms = v["retry_after_ms"].as_u64().unwrap_or(100);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                continue;
            }
            return Err(format!("mint refused: {v}"));
        }
    }

    async fn mint(&self) -> std::result::Result<String, String> {
        Ok(self.mint_on(&self.main.control).await?.0)
    }

    /// A second server with its own state dir (another device) and flags.
    fn spawn_server(&self, name: &str, extra: &[&str]) -> std::result::Result<ServerProc, String> {
        let state = self.base.join(format!("state-{name}"));
        let control = self.base.join("run").join(name).join("c.sock");
        let log = self.base.join(format!("{name}.log"));
        self.logs
            .lock()
            .map_err(|e| e.to_string())?
            .push(log.clone());
        let mut args: Vec<&str> = service_args(self.svc.as_ref());
        args.extend_from_slice(extra);
        ServerProc::start(&self.bin, &state, &control, &log, &args).map_err(|e| format!("{e:#}"))
    }

    /// The service user's uid (the server's), or ours when not root.
    fn svc_uid(&self) -> u32 {
        self.svc
            .as_ref()
            .map(|u| u.uid)
            .unwrap_or_else(|| nix::unistd::geteuid().as_raw())
    }

    /// One handshake with `token` from a real process of `user`: this
    /// harness's own binary, copied where that user may run it, as
    /// `xtask e2e-peer ADDR PIN` with the token on stdin (never argv).
    /// Returns the status and, on 101, the echoed reply.
    fn peer_handshake(
        &self,
        user: &TempUser,
        addr: SocketAddr,
        pin: Pin,
        token: &str,
    ) -> std::result::Result<(u16, Option<String>), String> {
        use std::io::Write as _;
        let exe = self.peer_exe()?;
        let mut child = user
            .command(&exe, false)
            .args(["e2e-peer", &addr.to_string(), &pin.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        if let Some(mut stdin) = child.stdin.take() {
            writeln!(stdin, "{token}").map_err(|e| e.to_string())?;
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let t = text(&out);
        let status = t
            .lines()
            .find_map(|l| l.strip_prefix("status "))
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| format!("peer printed no status: {t}"))?;
        let echoed = t
            .lines()
            .find_map(|l| l.strip_prefix("echo "))
            .map(str::to_owned);
        Ok((status, echoed))
    }

    /// This harness's own binary, copied where the throwaway users may run it.
    fn peer_exe(&self) -> std::result::Result<PathBuf, String> {
        let exe = self.base.join("bin/xtask-peer");
        if !exe.exists() {
            // /proc/self/exe, not current_exe(): the running binary may
            // have been rebuilt (replaced) since it started, as in a CI run,
            // and its path then names a deleted file; the proc link still
            // opens the running one.
            let me = Path::new("/proc/self/exe");
            std::fs::copy(me, &exe).map_err(|e| format!("copy {}: {e}", me.display()))?;
            std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| e.to_string())?;
        }
        Ok(exe)
    }

    async fn send(&self, req: &Request) -> std::result::Result<Response, String> {
        Ok(handshake(self.addr, self.pin, req).await?.0)
    }

    /// Expects `req` to be refused with `status` (and no upgrade).
    async fn refused(&self, req: &Request, status: u16) -> R {
        let (resp, ws) = handshake(self.addr, self.pin, req).await?;
        if ws.is_some() || resp.status != status {
            return Err(format!("expected {status}, got {}", resp.status));
        }
        Ok(())
    }
}

async fn port_and_pin(control: &Path) -> std::result::Result<(u16, Pin), String> {
    let v = screengate_tests::control(control, r#"{"op":"mint","channel":"display"}"#).await?;
    let (addr, pin) = screengate_tests::gateway_of(&v)?;
    Ok((addr.port(), pin))
}

fn flip(token: &str, byte: usize, bit: u8) -> String {
    let mut raw = URL_SAFE_NO_PAD.decode(token).unwrap_or_default();
    if let Some(b) = raw.get_mut(byte) {
        *b ^= 1 << bit;
    }
    URL_SAFE_NO_PAD.encode(raw)
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// As root, servers start with `--user <service user>` (they refuse root)
/// and allow uid 0, which is what this harness and the launcher run as.
fn service_args(svc: Option<&TempUser>) -> Vec<&str> {
    match svc {
        Some(u) => vec!["--user", u.user.as_str(), "--allow-uid", "0"],
        None => vec![],
    }
}

// ---- the cases ---------------------------------------------------------------

async fn valid_handshake_and_echo(fx: &Fx) -> R {
    let t = fx.mint().await?;
    let (resp, ws) = handshake(fx.addr, fx.pin, &Request::display(fx.port(), Some(&t))).await?;
    let mut ws = ws.ok_or(format!("expected 101, got {}", resp.status))?;
    let got = echo(&mut ws, "ping through the gate").await?;
    (got == "ping through the gate")
        .then_some(())
        .ok_or(format!("echo mismatch: {got}"))
}

async fn replay_refused(fx: &Fx) -> R {
    let t = fx.mint().await?;
    let (first, _ws) = handshake(fx.addr, fx.pin, &Request::display(fx.port(), Some(&t))).await?;
    if first.status != 101 {
        return Err(format!("first use: {}", first.status));
    }
    fx.refused(&Request::display(fx.port(), Some(&t)), 403)
        .await
}

async fn parallel_20_upgrades_one_token(fx: &Fx) -> R {
    let t = fx.mint().await?;
    let req = Request::display(fx.port(), Some(&t));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (addr, pin, req) = (fx.addr, fx.pin, req.clone());
            tokio::spawn(async move {
                handshake(addr, pin, &req)
                    .await
                    .map(|(r, ws)| (r.status, ws.is_some()))
            })
        })
        .collect();
    let mut statuses = Vec::new();
    let mut keep = Vec::new();
    for t in tasks {
        let (status, upgraded) = t.await.map_err(|e| e.to_string())??;
        statuses.push(status);
        keep.push(upgraded);
    }
    let wins = statuses.iter().filter(|s| **s == 101).count();
    let bad: Vec<_> = statuses
        .iter()
        .filter(|s| !matches!(**s, 101 | 403 | 503))
        .collect();
    if wins != 1 || !bad.is_empty() {
        return Err(format!(
            "expected exactly one 101 and the rest 403/503, got {statuses:?}"
        ));
    }
    Ok(())
}

async fn expired_token_refused(fx: &Fx) -> R {
    let s = fx.spawn_server("ttl1s", &["--token-ttl", "1s"])?;
    let (port, pin) = port_and_pin(&s.control).await?;
    let (t, _) = fx.mint_on(&s.control).await?;
    tokio::time::sleep(Duration::from_millis(1300)).await; // the premise: outlive the TTL
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let (resp, ws) = handshake(addr, pin, &Request::display(port, Some(&t))).await?;
    if ws.is_some() || resp.status != 403 {
        return Err(format!("expired token got {}", resp.status));
    }
    // and a fresh one on the same server works, so it was the expiry
    let (t2, _) = fx.mint_on(&s.control).await?;
    let (ok, _ws) = handshake(addr, pin, &Request::display(port, Some(&t2))).await?;
    (ok.status == 101)
        .then_some(())
        .ok_or(format!("fresh token got {}", ok.status))
}

async fn revoked_token_refused(fx: &Fx) -> R {
    let s = fx.spawn_server("revoke", &[])?;
    let (port, pin) = port_and_pin(&s.control).await?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let (t, v) = fx.mint_on(&s.control).await?;
    let handle = v["token_id"]
        .as_str()
        .ok_or("the mint reply has no token_id")?;
    // altered, truncated, foreign, empty handles: refused, token untouched
    let mut altered = handle.to_owned().into_bytes();
    if let Some(b) = altered.last_mut() {
        *b = if *b == b'0' { b'1' } else { b'0' };
    }
    let altered = String::from_utf8(altered).map_err(|e| e.to_string())?;
    let (_, other) = fx.mint_on(&fx.main.control).await?;
    let foreign = other["token_id"].as_str().unwrap_or_default().to_owned();
    for (bad, want) in [
        (altered.as_str(), "not_yours"),
        (foreign.as_str(), "not_yours"),
        (handle.get(..32).unwrap_or_default(), "bad_request"),
        ("", "bad_request"),
    ] {
        let line = serde_json::json!({"op": "revoke", "token_id": bad}).to_string();
        let r = screengate_tests::control(&s.control, &line).await?;
        if r["ok"] != false || r["error"] != want {
            return Err(format!("revoke with a bad handle: want {want}, got {r}"));
        }
    }
    let line = serde_json::json!({"op": "revoke", "token_id": handle}).to_string();
    let r = screengate_tests::control(&s.control, &line).await?;
    if r["ok"] != true {
        return Err(format!("revoke refused: {r}"));
    }
    if let Some((d, _)) = &fx.display {
        another_uids_token_cannot_be_revoked(fx, d).await?;
    }
    let (resp, ws) = handshake(addr, pin, &Request::display(port, Some(&t))).await?;
    if ws.is_some() || resp.status != 403 {
        return Err(format!("revoked token got {}", resp.status));
    }
    if !s.log_text().contains("reason=\"revoked\"") && !s.log_text().contains("reason=revoked") {
        return Err("the audit log has no `revoked` refusal".into());
    }
    // and another token of the same server still works: it was the revoke
    let (t2, _) = fx.mint_on(&s.control).await?;
    let (ok, _ws) = handshake(addr, pin, &Request::display(port, Some(&t2))).await?;
    (ok.status == 101)
        .then_some(())
        .ok_or(format!("an unrevoked token got {}", ok.status))
}

/// A token the display user minted (with `screengate mint`, as that user)
/// cannot be revoked by another allowed uid (root here), and stays valid.
async fn another_uids_token_cannot_be_revoked(fx: &Fx, d: &TempUser) -> R {
    let cfg = fx.base.join("revoke-uid.toml");
    std::fs::write(&cfg, format!("[control]\ngroup = \"{}\"\n", d.group))
        .map_err(|e| e.to_string())?;
    let dir = fx.base.join("run/revoke-uid");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::os::unix::fs::chown(&dir, Some(fx.svc_uid()), None).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| e.to_string())?;
    let uid = d.uid.to_string();
    let s = fx.spawn_server(
        "revoke-uid",
        &["--config", &cfg.to_string_lossy(), "--allow-uid", &uid],
    )?;
    let (port, pin) = port_and_pin(&s.control).await?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let out = d
        .command(&fx.bin, false)
        .arg("mint")
        .arg("--control")
        .arg(&s.control)
        .output()
        .map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|_| {
        format!(
            "`screengate mint` as the display user: exit {:?}",
            out.status.code()
        )
    })?;
    let (Some(t), Some(h)) = (v["token"].as_str(), v["token_id"].as_str()) else {
        return Err("the display user's mint was refused".into());
    };
    fx.tokens
        .lock()
        .map_err(|e| e.to_string())?
        .push(t.to_owned());
    let line = serde_json::json!({"op": "revoke", "token_id": h}).to_string();
    let r = screengate_tests::control(&s.control, &line).await?;
    if r["ok"] != false || r["error"] != "not_yours" {
        return Err(format!("root revoked the display user's token: {r}"));
    }
    let (ok, _ws) = handshake(addr, pin, &Request::display(port, Some(t))).await?;
    (ok.status == 101).then_some(()).ok_or(format!(
        "the display user's token got {} after a refused revoke",
        ok.status
    ))
}

async fn revoke_all_closes_sessions(fx: &Fx) -> R {
    let s = fx.spawn_server("revokeall", &[])?;
    let (port, pin) = port_and_pin(&s.control).await?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let (live, _) = fx.mint_on(&s.control).await?;
    let (before, _) = fx.mint_on(&s.control).await?;
    let (resp, ws) = handshake(addr, pin, &Request::display(port, Some(&live))).await?;
    let mut ws = ws.ok_or(format!("expected 101, got {}", resp.status))?;
    echo(&mut ws, "before").await?;
    for bad in [
        r#"{"op":"revoke","all":false}"#,
        r#"{"op":"revoke"}"#,
        r#"{"op":"revoke","all":true,"token_id":"00"}"#,
    ] {
        let r = screengate_tests::control(&s.control, bad).await?;
        if r["ok"] != false {
            return Err(format!("{bad} was accepted: {r}"));
        }
    }
    if echo(&mut ws, "still open").await.is_err() {
        return Err("a refused revoke closed the session".into());
    }
    let r = screengate_tests::control(&s.control, r#"{"op":"revoke","all":true}"#).await?;
    if r["ok"] != true {
        return Err(format!("revoke all refused: {r}"));
    }
    if echo(&mut ws, "after").await.is_ok() {
        return Err("the live session survived revoke all".into());
    }
    let (resp, ws2) = handshake(addr, pin, &Request::display(port, Some(&before))).await?;
    if ws2.is_some() || resp.status != 403 {
        return Err(format!(
            "a token minted before revoke all got {}",
            resp.status
        ));
    }
    let (after, _) = fx.mint_on(&s.control).await?;
    let (ok, _ws) = handshake(addr, pin, &Request::display(port, Some(&after))).await?;
    (ok.status == 101)
        .then_some(())
        .ok_or(format!("a token minted after revoke all got {}", ok.status))
}

async fn bit_flipped_tokens_refused(fx: &Fx) -> R {
    let t = fx.mint().await?;
    // version, run id, token id, channel, issued, expires, tag (first, last)
    for (byte, bit) in [
        (0, 0),
        (5, 3),
        (20, 7),
        (33, 1),
        (40, 0),
        (45, 6),
        (50, 0),
        (81, 7),
    ] {
        fx.refused(
            &Request::display(fx.port(), Some(&flip(&t, byte, bit))),
            403,
        )
        .await
        .map_err(|e| format!("flip byte {byte} bit {bit}: {e}"))?;
    }
    // none of that consumed the genuine token
    let (ok, _ws) = handshake(fx.addr, fx.pin, &Request::display(fx.port(), Some(&t))).await?;
    (ok.status == 101)
        .then_some(())
        .ok_or(format!("genuine token afterwards: {}", ok.status))
}

async fn truncated_token_refused(fx: &Fx) -> R {
    let t = fx.mint().await?;
    for cut in [1, 2, 43, t.len() - 1] {
        let short = t.get(..t.len() - cut).unwrap_or("");
        fx.refused(&Request::display(fx.port(), Some(short)), 403)
            .await
            .map_err(|e| format!("cut {cut}: {e}"))?;
    }
    Ok(())
}

async fn random_tokens_refused(fx: &Fx) -> R {
    use rand::RngCore;
    for _ in 0..10 {
        let mut raw = [0u8; 82];
        rand::rng().fill_bytes(&mut raw);
        raw[0] = 1;
        fx.refused(
            &Request::display(fx.port(), Some(&URL_SAFE_NO_PAD.encode(raw))),
            403,
        )
        .await?;
    }
    fx.refused(&Request::display(fx.port(), Some("not-a-token")), 403)
        .await
}

async fn empty_token_refused(fx: &Fx) -> R {
    fx.refused(&Request::display(fx.port(), Some("")), 400)
        .await
}

async fn non_ascii_token_refused(fx: &Fx) -> R {
    fx.refused(&Request::display(fx.port(), Some("tökén")), 400)
        .await
}

async fn token_from_another_device_refused(fx: &Fx) -> R {
    let other = fx.spawn_server("device-b", &[])?;
    let (t, _) = fx.mint_on(&other.control).await?;
    fx.refused(&Request::display(fx.port(), Some(&t)), 403)
        .await
}

async fn token_from_before_restart_refused(fx: &Fx) -> R {
    let mut s = fx.spawn_server("restart", &[])?;
    let (_, pin_before) = port_and_pin(&s.control).await?;
    let (t, _) = fx.mint_on(&s.control).await?;
    s.terminate(Duration::from_secs(6))
        .map_err(|e| format!("{e:#}"))?;
    let s2 = fx.spawn_server("restart", &[])?;
    let (port, pin) = port_and_pin(&s2.control).await?;
    if pin != pin_before {
        return Err("device identity changed across a restart".into());
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let (resp, ws) = handshake(addr, pin, &Request::display(port, Some(&t))).await?;
    (ws.is_none() && resp.status == 403)
        .then_some(())
        .ok_or(format!("old-run token got {}", resp.status))
}

async fn origin_variant(fx: &Fx, origin: Option<&str>) -> R {
    let t = fx.mint().await?;
    fx.refused(
        &Request::display(fx.port(), Some(&t)).set("Origin", origin),
        403,
    )
    .await
}

async fn host_variant(fx: &Fx, host: Option<&str>, status: u16) -> R {
    let t = fx.mint().await?;
    fx.refused(
        &Request::display(fx.port(), Some(&t)).set("Host", host),
        status,
    )
    .await
}

/// `GET https://evil.example:PORT/ws` with our own `Host`: the target's
/// authority is the request's host (RFC 9112 3.2.2), so it is refused like
/// a rebinding `Host`, and the token, never looked at, still works.
async fn absolute_form_target(fx: &Fx) -> R {
    let t = fx.mint().await?;
    let p = fx.port();
    for target in [
        format!("https://evil.example:{p}/ws"),
        format!("https://user@localhost:{p}/ws"),
    ] {
        let mut req = Request::display(p, Some(&t));
        req.path = target;
        fx.refused(&req, 403).await?;
    }
    let mut req = Request::display(p, Some(&t));
    req.path = format!("https://localhost:{p}/ws");
    let (resp, ws) = handshake(fx.addr, fx.pin, &req).await?;
    if ws.is_none() {
        return Err(format!("our own absolute-form target: {}", resp.status));
    }
    Ok(())
}

async fn duplicated(fx: &Fx, name: &str) -> R {
    let t = fx.mint().await?;
    let req = Request::display(fx.port(), Some(&t));
    let value = req
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .ok_or("no such header")?;
    fx.refused(&req.add(name, &value), 400).await
}

async fn token_in_query_refused(fx: &Fx) -> R {
    let t = fx.mint().await?;
    let mut req = Request::display(fx.port(), None);
    req.path = format!("/ws?token={t}");
    let resp = fx.send(&req).await?;
    if resp.status == 101 {
        return Err("accepted a token in the query string".into());
    }
    req.path = format!("/ws?X-Screengate-Token={t}");
    fx.refused(&req, 400).await
}

async fn token_in_cookie_refused(fx: &Fx) -> R {
    let t = fx.mint().await?;
    fx.refused(
        &Request::display(fx.port(), None).add("Cookie", &format!("X-Screengate-Token={t}")),
        403,
    )
    .await
}

async fn token_in_subprotocol_refused(fx: &Fx) -> R {
    let t = fx.mint().await?;
    fx.refused(
        &Request::display(fx.port(), None).add("Sec-WebSocket-Protocol", &t),
        403,
    )
    .await
}

/// A client that puts its token in the wrong field of a control request
/// gets `bad_request` quoting it back, and no log line quotes it (the
/// audit case at the end greps every log for every minted token).
async fn token_in_a_control_request_not_logged(fx: &Fx) -> R {
    let t = fx.mint().await?;
    for line in [
        format!(r#"{{"op":"{t}"}}"#),
        format!(r#"{{"op":"mint","channel":"{t}"}}"#),
        format!(r#"{{"op":"mint","{t}":1}}"#),
        format!(r#"{{"op":"revoke","token_id":"{t}"}}"#),
    ] {
        let v = screengate_tests::control(&fx.main.control, &line).await?;
        if v["error"] != "bad_request" {
            return Err(format!("not bad_request: {}", v["error"]));
        }
    }
    Ok(())
}

async fn plaintext_ws_refused(fx: &Fx) -> R {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = fx.mint().await?;
    let mut s = tokio::net::TcpStream::connect(fx.addr)
        .await
        .map_err(|e| e.to_string())?;
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: localhost:{p}\r\nOrigin: https://localhost:{p}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Screengate-Token: {t}\r\n\r\n",
        p = fx.port()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(6), s.read_to_end(&mut buf)).await;
    if String::from_utf8_lossy(&buf).contains("101") {
        return Err("plaintext upgrade answered with 101".into());
    }
    // the token was not consumed by the plaintext attempt
    let (ok, _ws) = handshake(fx.addr, fx.pin, &Request::display(fx.port(), Some(&t))).await?;
    (ok.status == 101)
        .then_some(())
        .ok_or(format!("token after plaintext attempt: {}", ok.status))
}

async fn control_socket_is_0600_owner_only(fx: &Fx) -> R {
    let m = std::fs::metadata(&fx.main.control).map_err(|e| e.to_string())?;
    let mode = m.permissions().mode() & 0o777;
    if mode != 0o600 || m.uid() != fx.svc_uid() {
        return Err(format!("mode {mode:o} uid {}", m.uid()));
    }
    Ok(())
}

/// A throwaway user (and group) for the allow-list cases, removed on drop.
struct TempUser {
    user: String,
    group: String,
    uid: u32,
    gid: u32,
}

impl TempUser {
    fn create(tag: &str) -> std::result::Result<Self, String> {
        let pid = std::process::id();
        let user = format!("sge2e{tag}{pid}");
        let group = format!("sge2eg{tag}{pid}");
        run_ok(Command::new("groupadd").arg(&group))?;
        let mut me = Self {
            user: user.clone(),
            group: group.clone(),
            uid: 0,
            gid: 0,
        };
        run_ok(Command::new("useradd").args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "-g",
            &group,
            &user,
        ]))?;
        let u = nix::unistd::User::from_name(&user)
            .ok()
            .flatten()
            .ok_or("created user not found")?;
        me.uid = u.uid.as_raw();
        me.gid = u.gid.as_raw();
        Ok(me)
    }
}

impl TempUser {
    /// `prog` run as this user and its group, through `setpriv`; with
    /// `init_groups` also in the user's supplementary groups, else in none.
    fn command(&self, prog: impl AsRef<std::ffi::OsStr>, init_groups: bool) -> Command {
        let groups = if init_groups {
            "--init-groups"
        } else {
            "--clear-groups"
        };
        let mut c = Command::new("setpriv");
        c.args(["--reuid", &self.user, "--regid", &self.group, groups, "--"])
            .arg(prog);
        c
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.user).status();
        let _ = Command::new("groupdel").arg(&self.group).status();
    }
}

/// Runs a command to completion; a spawn failure is an error naming it.
fn run_cmd(cmd: &mut Command) -> std::result::Result<std::process::Output, String> {
    cmd.output().map_err(|e| format!("{cmd:?}: {e}"))
}

/// stdout then stderr of a finished command, as text.
fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn run_ok(cmd: &mut Command) -> std::result::Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `screengate mint` run as `user`: (exit ok, stdout + stderr).
fn mint_as(
    fx: &Fx,
    user: &TempUser,
    control: &Path,
) -> std::result::Result<(bool, String), String> {
    let out = run_cmd(
        user.command(fx.base.join("bin/screengate"), true)
            .args(["mint", "--control"])
            .arg(control),
    )?;
    Ok((out.status.success(), text(&out)))
}

async fn mint_from_disallowed_uid_refused(fx: &Fx) -> R {
    // A user in the socket's group can connect, but its uid is not allowed.
    // (The service user must be in the group too: a socket group is one
    // of its own groups, or the server refuses to start.)
    let u = TempUser::create("a")?;
    if let Some(svc) = &fx.svc {
        run_ok(Command::new("usermod").args(["-a", "-G", &u.group, &svc.user]))?;
    }
    let cfg = fx.base.join("uid.toml");
    std::fs::write(&cfg, format!("[control]\ngroup = \"{}\"\n", u.group))
        .map_err(|e| e.to_string())?;
    let s = fx.spawn_server("uid", &["--config", &cfg.to_string_lossy()])?;
    let mode = std::fs::metadata(&s.control)
        .map_err(|e| e.to_string())?
        .permissions()
        .mode()
        & 0o777;
    if mode != 0o660 {
        return Err(format!("group socket mode {mode:o}, expected 660"));
    }
    let (ok, out) = mint_as(fx, &u, &s.control)?;
    if ok || !out.contains(r#""error":"not_authorized""#) || out.contains("token") {
        return Err(format!("expected not_authorized, got: {out}"));
    }
    if !s.log_text().contains("not_authorized") {
        return Err("no audit event for the refused uid".into());
    }
    Ok(())
}

async fn other_user_cannot_open_control_socket(fx: &Fx) -> R {
    let u = TempUser::create("b")?;
    let (ok, out) = mint_as(fx, &u, &fx.main.control)?;
    if ok || !out.contains("Permission denied") {
        return Err(format!("expected permission denied, got: {out}"));
    }
    Ok(())
}

async fn sigterm_closes_sessions_1001_and_exits_0(fx: &Fx) -> R {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut s = fx.spawn_server("sigterm", &[])?;
    let (port, pin) = port_and_pin(&s.control).await?;
    let (t, _) = fx.mint_on(&s.control).await?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let (_, ws) = handshake(addr, pin, &Request::display(port, Some(&t))).await?;
    let mut ws = ws.ok_or("no session")?;
    let (status, took) = tokio::task::block_in_place(|| s.terminate(Duration::from_secs(5)))
        .map_err(|e| format!("{e:#}"))?;
    if !status.success() {
        return Err(format!("exit status {status}"));
    }
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
            Ok(Some(Ok(Message::Close(c)))) => break c.map(|c| u16::from(c.code)),
            Ok(Some(Ok(_))) => continue,
            other => return Err(format!("no close frame: {other:?}")),
        }
    };
    if code != Some(1001) {
        return Err(format!("close code {code:?}"));
    }
    println!("      (exited {took:?} after SIGTERM)");
    Ok(())
}

async fn json_log_format(fx: &Fx) -> R {
    let s = fx.spawn_server("json-log", &["--log-format", "json"])?;
    let (port, pin) = port_and_pin(&s.control).await?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let _ = handshake(addr, pin, &Request::display(port, None)).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = s.log_text();
    let mut audit = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let j: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("not JSON ({e}): {line}"))?;
        if j["target"] == "screengate::audit" {
            audit += 1;
            if j["fields"]["event"] == "rejected" && j["fields"]["reason"] != "missing_token" {
                return Err(format!("unexpected rejection: {line}"));
            }
        }
    }
    if audit < 2 {
        return Err(format!("only {audit} audit events in the JSON log"));
    }
    Ok(())
}

async fn audit_log_has_reasons_and_no_secrets(fx: &Fx) -> R {
    let mut text = fx.main.log_text();
    for l in fx.logs.lock().map_err(|e| e.to_string())?.iter() {
        text.push_str(&std::fs::read_to_string(l).unwrap_or_default());
    }
    for reason in [
        "replayed",
        "bad_origin",
        "missing_origin",
        "bad_host",
        "bad_mac",
        "malformed",
        "event=\"accepted\"",
        "event=\"mint\"",
    ] {
        let needle = reason.replace("event=\"", "").replace('"', "");
        if !text.contains(&needle) {
            return Err(format!("audit log lacks {reason}"));
        }
    }
    let tokens = fx.tokens.lock().map_err(|e| e.to_string())?;
    if tokens.is_empty() {
        return Err("no tokens were minted, nothing checked".into());
    }
    for t in tokens.iter() {
        // the whole token, and its MAC part alone
        if text.contains(t.as_str()) || t.get(70..).is_some_and(|tag| text.contains(tag)) {
            return Err("a token appears in the server log".into());
        }
    }
    // device keys, hex and base64, of every server this run started
    for entry in std::fs::read_dir(&fx.base)
        .map_err(|e| e.to_string())?
        .flatten()
    {
        let key = privilege::in_force(&entry.path()).join("device.key");
        if let Ok(k) = std::fs::read(&key) {
            let hex: String = k.iter().map(|b| format!("{b:02x}")).collect();
            let b64 = base64::engine::general_purpose::STANDARD.encode(&k);
            if text.contains(&hex)
                || text.contains(&b64)
                || text.contains(&URL_SAFE_NO_PAD.encode(&k))
            {
                return Err(format!("{} appears in a log", key.display()));
            }
        }
    }
    Ok(())
}

// ---- the case table ----------------------------------------------------------

/// What a case needs from the machine beyond the harness itself.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Needs {
    /// Runs anywhere the harness runs.
    Any,
    /// Root, to make throwaway users or act as another uid.
    Root,
    /// Debian's `chromium` (required under CI, skipped elsewhere).
    Chromium,
    /// Both.
    ChromiumRoot,
}

impl Needs {
    fn root(self) -> bool {
        matches!(self, Needs::Root | Needs::ChromiumRoot)
    }
    fn chromium(self) -> bool {
        matches!(self, Needs::Chromium | Needs::ChromiumRoot)
    }
}

/// How a case runs: a function of the fixture, boxed so one table holds them all.
type Run = for<'a> fn(&'a Fx) -> std::pin::Pin<Box<dyn std::future::Future<Output = R> + 'a>>;

/// One end-to-end case. The tables (`CASES` here and in each `e2e_*.rs`)
/// are the only list of cases: `e2e`, `e2e FILTER`, `e2e --list` and the
/// per-group summary all come from [`all_cases`].
struct Case {
    /// Unique; what `e2e FILTER` matches (a substring) and the report prints.
    name: &'static str,
    /// The module the case lives in; `e2e GROUP` runs the whole group.
    group: &'static str,
    /// What the machine must offer, else the case is skipped (never under CI
    /// for chromium).
    needs: Needs,
    /// The case itself.
    run: Run,
}

/// `case!(Needs "name" => async f)` for `async fn f(&Fx) -> R`,
/// `case!(Needs "name" => f)` for `fn f(&Fx) -> R`, extra arguments after
/// the function. The group is the calling module's `GROUP`.
macro_rules! case {
    ($needs:ident $name:literal => async $f:path $(, $arg:expr)*) => {
        $crate::e2e::Case {
            name: $name,
            group: GROUP,
            needs: $crate::e2e::Needs::$needs,
            run: |fx| Box::pin($f(fx $(, $arg)*)),
        }
    };
    ($needs:ident $name:literal => $f:path $(, $arg:expr)*) => {
        $crate::e2e::Case {
            name: $name,
            group: GROUP,
            needs: $crate::e2e::Needs::$needs,
            run: |fx| Box::pin(std::future::ready($f(fx $(, $arg)*))),
        }
    };
}
pub(crate) use case;

const GROUP: &str = "gateway";

/// An Origin variant (`{p}` is the gateway's port) refused with 403.
async fn origin_case(fx: &Fx, origin: Option<&str>) -> R {
    let o = origin.map(|o| o.replace("{p}", &fx.port().to_string()));
    origin_variant(fx, o.as_deref()).await
}

/// A Host variant (`{p}` is the gateway's port) refused with `status`.
async fn host_case(fx: &Fx, host: Option<&str>, status: u16) -> R {
    let h = host.map(|h| h.replace("{p}", &fx.port().to_string()));
    host_variant(fx, h.as_deref(), status).await
}

/// The gateway's own cases: tokens, Origin, Host, headers, control socket.
const CASES: &[Case] = &[
    case!(Any "valid_handshake_and_echo" => async valid_handshake_and_echo),
    case!(Any "replay_refused" => async replay_refused),
    case!(Any "parallel_20_upgrades_one_token_exactly_one_101" => async parallel_20_upgrades_one_token),
    case!(Any "expired_token_refused" => async expired_token_refused),
    case!(Any "bit_flipped_tokens_refused" => async bit_flipped_tokens_refused),
    case!(Any "truncated_token_refused" => async truncated_token_refused),
    case!(Any "random_tokens_refused" => async random_tokens_refused),
    case!(Any "empty_token_refused" => async empty_token_refused),
    case!(Any "non_ascii_token_refused" => async non_ascii_token_refused),
    case!(Any "token_from_another_device_refused" => async token_from_another_device_refused),
    case!(Any "token_from_before_restart_refused" => async token_from_before_restart_refused),
    case!(Any "revoked_token_refused" => async revoked_token_refused),
    case!(Any "revoke_all_closes_sessions_and_kills_earlier_tokens" => async revoke_all_closes_sessions),
    case!(Any "origin_null_refused" => async origin_case, Some("null")),
    case!(Any "origin_missing_refused" => async origin_case, None),
    case!(Any "origin_lookalike_suffix_refused" => async origin_case, Some("https://localhost:{p}.evil.example")),
    case!(Any "origin_lookalike_host_refused" => async origin_case, Some("https://localhost.evil.example:{p}")),
    case!(Any "origin_other_port_refused" => async origin_case, Some("https://localhost:1")),
    case!(Any "origin_http_scheme_refused" => async origin_case, Some("http://localhost:{p}")),
    case!(Any "origin_ip_literal_refused" => async origin_case, Some("https://127.0.0.1:{p}")),
    case!(Any "origin_uppercase_refused" => async origin_case, Some("https://LOCALHOST:{p}")),
    case!(Any "origin_trailing_slash_refused" => async origin_case, Some("https://localhost:{p}/")),
    case!(Any "origin_no_port_refused" => async origin_case, Some("https://localhost")),
    case!(Any "origin_file_refused" => async origin_case, Some("file://")),
    case!(Any "origin_other_site_refused" => async origin_case, Some("https://evil.example")),
    case!(Any "host_missing_400" => async host_case, None, 400),
    case!(Any "host_rebinding_name_403" => async host_case, Some("evil.example:{p}"), 403),
    case!(Any "host_without_port_403" => async host_case, Some("localhost"), 403),
    case!(Any "host_other_port_403" => async host_case, Some("localhost:1"), 403),
    case!(Any "host_lookalike_403" => async host_case, Some("localhost.evil.example:{p}"), 403),
    case!(Any "host_absolute_form_target_403_token_kept" => async absolute_form_target),
    case!(Any "host_duplicated_400" => async duplicated, "Host"),
    case!(Any "origin_duplicated_400" => async duplicated, "Origin"),
    case!(Any "token_duplicated_400" => async duplicated, "X-Screengate-Token"),
    case!(Any "token_in_query_refused" => async token_in_query_refused),
    case!(Any "token_in_cookie_refused" => async token_in_cookie_refused),
    case!(Any "token_in_subprotocol_refused" => async token_in_subprotocol_refused),
    case!(Any "token_in_a_control_request_not_logged" => async token_in_a_control_request_not_logged),
    case!(Any "plaintext_ws_against_tls_port_refused" => async plaintext_ws_refused),
    case!(Any "control_socket_is_0600_owner_only" => async control_socket_is_0600_owner_only),
    case!(Root "mint_from_disallowed_uid_refused" => async mint_from_disallowed_uid_refused),
    case!(Root "other_user_cannot_open_control_socket" => async other_user_cannot_open_control_socket),
    case!(Any "sigterm_closes_sessions_1001_and_exits_0" => async sigterm_closes_sessions_1001_and_exits_0),
    case!(Any "json_log_format_is_json_with_audit_events" => async json_log_format),
];

/// Last of all: reads the logs every case before it produced.
const LAST: &[Case] = &[
    case!(Any "audit_log_has_reasons_and_no_secrets" => async audit_log_has_reasons_and_no_secrets),
];

/// Every case, in run order.
fn all_cases() -> Vec<&'static Case> {
    [
        CASES,
        launcher::CASES,
        privilege::CASES,
        native::CASES,
        hostile::CASES,
        stream::CASES,
        sdk::CASES,
        reload::CASES,
        rotate::CASES,
        sockact::CASES,
        dist_case::CASES,
        LAST,
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// How one case ended.
enum Outcome {
    Passed,
    Failed,
    Skipped,
}

/// One group's counts, for the summary.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    skipped: u64,
}

/// Does `filter` select `case`: its group exactly, or a part of its name.
fn selected(case: &Case, filter: Option<&str>) -> bool {
    filter.is_none_or(|f| case.group == f || case.name.contains(f))
}

/// `xtask e2e-peer ADDR PIN`: the other end of [`Fx::peer_handshake`], run
/// as another user. Reads the token from stdin, sends the display
/// handshake, prints `status N` and, on 101, `echo TEXT`. Each step has the
/// test client's deadline.
pub fn peer(args: &[String]) -> Result<bool> {
    let addr: SocketAddr = args
        .first()
        .context("usage: e2e-peer ADDR PIN")?
        .parse()
        .context("ADDR")?;
    let pin = args.get(1).and_then(|p| Pin::parse(p)).context("PIN")?;
    let mut token = String::new();
    std::io::stdin().read_line(&mut token)?;
    let token = token.trim().to_owned();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let req = Request::display(addr.port(), Some(&token));
        let (resp, ws) = handshake(addr, pin, &req)
            .await
            .map_err(anyhow::Error::msg)?;
        println!("status {}", resp.status);
        if let Some(mut ws) = ws {
            let got = echo(&mut ws, "from the display uid")
                .await
                .map_err(anyhow::Error::msg)?;
            println!("echo {got}");
        }
        anyhow::Ok(true)
    })
}

/// A well-formed mint reply line (no newline) a stand-in control server
/// sends: `token`, for the gateway at `origin` with `spki_pin`. Built by the
/// protocol crate, so it stays what the launcher accepts.
pub fn stand_in_mint_reply(token: &str, origin: &str, spki_pin: &str) -> String {
    use screengate_control::{Channel, Minted, Reply, SecretToken};
    let reply = Reply::Minted(Minted {
        token: SecretToken::from_received(token),
        header: "X-Screengate-Token".into(),
        url: format!("{origin}/"),
        ws_url: format!("{}/ws", origin.replacen("http", "ws", 1)),
        origin: origin.into(),
        spki_pin: spki_pin.into(),
        channel: Channel::Display,
        token_id: "0".repeat(64),
        expires_in_ms: 30_000,
    });
    let line = reply.to_line().unwrap_or_default();
    String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(&line)).into_owned()
}

/// `xtask e2e-forge SOCK`: a forged control socket, run as another user by
/// `launcher_refuses_a_forged_control_socket`. Binds SOCK, prints
/// `listening`, and answers every request line with REPLY (default: a mint
/// reply naming its own origin and pin), until killed.
pub fn forge(args: &[String]) -> Result<bool> {
    use std::io::{BufRead as _, Read as _, Write as _};
    let path = args.first().context("usage: e2e-forge SOCK [REPLY]")?;
    let default = stand_in_mint_reply("forged", "https://localhost:1", "Zm9yZ2Vk");
    let reply = format!("{}\n", args.get(1).unwrap_or(&default));
    let l = std::os::unix::net::UnixListener::bind(path).context("bind")?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))?;
    println!("listening");
    std::io::stdout().flush()?;
    for s in l.incoming().take(100) {
        let Ok(s) = s else { continue };
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut line = String::new();
        let _ = std::io::BufReader::new(&s).take(4096).read_line(&mut line);
        let _ = (&s).write_all(reply.as_bytes());
    }
    Ok(true)
}

pub fn run(args: &[String]) -> Result<bool> {
    let (_, failed) = run_counted(args)?;
    Ok(failed == 0)
}

/// Runs the cases (those containing `args[0]`, if given); prints one line
/// per case and `N passed, M failed` last.
pub fn run_counted(args: &[String]) -> Result<(u64, u64)> {
    let filter = args.first().cloned();
    if filter.as_deref() == Some("--list") {
        for c in all_cases() {
            println!(
                "{:<10} {:<13} {}",
                c.group,
                format!("{:?}", c.needs),
                c.name
            );
        }
        return Ok((0, 0));
    }
    let bins = build_bins()?;
    let base = std::env::temp_dir().join(format!("screengate-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(base.join("run")).context("create e2e dir")?;
    std::fs::create_dir_all(base.join("bin"))?;
    // traversable, not listable, by the throwaway users; writable by us only
    for d in [&base, &base.join("run"), &base.join("bin")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711))?;
    }
    let bin = base.join("bin/screengate");
    for name in ["screengate", "screengate-launch", "screengate-client"] {
        let to = base.join("bin").join(name);
        std::fs::copy(bins.join(name), &to).with_context(|| format!("copy {name} binary"))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))?;
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let svc = if is_root() {
            Some(TempUser::create("svc").map_err(anyhow::Error::msg)?)
        } else {
            None
        };
        let display = match &svc {
            Some(svc) => {
                let d = TempUser::create("dsp").map_err(anyhow::Error::msg)?;
                run_ok(Command::new("usermod").args(["-aG", &d.group, &svc.user]))
                    .map_err(anyhow::Error::msg)?;
                let home = base.join("home-dsp");
                std::fs::create_dir_all(&home)?;
                std::os::unix::fs::chown(&home, Some(d.uid), Some(d.gid))?;
                std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700))?;
                Some((d, home))
            }
            None => None,
        };
        let main_log = base.join("main.log");
        let main = ServerProc::start(
            &bin,
            &base.join("state-main"),
            &base.join("run/main/c.sock"),
            &main_log,
            &service_args(svc.as_ref()),
        )?;
        let (port, pin) = port_and_pin(&main.control)
            .await
            .map_err(anyhow::Error::msg)?;
        let fx = Fx {
            bin: bin.clone(),
            base: base.clone(),
            main,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            pin,
            tokens: Mutex::new(Vec::new()),
            logs: Mutex::new(Vec::new()),
            display,
            svc,
        };
        let (mut passed, mut failed, mut skipped) = (0u64, 0u64, 0u64);
        let mut groups: Vec<(&str, Tally)> = Vec::new();
        // The package is built before the cases run, outside their time
        // limit (a release build when `harden` did not just make one).
        if is_root()
            && dist_case::CASES
                .iter()
                .any(|c| selected(c, filter.as_deref()))
            && let Err(e) = dist_case::prepare()
        {
            println!("note: building the .deb failed (its case will say so): {e}");
        }
        for case in all_cases() {
            if !selected(case, filter.as_deref()) {
                continue;
            }
            let name = case.name;
            let outcome = if case.needs.chromium() && !launcher::chromium_present() {
                if std::env::var_os("CI").is_some() {
                    println!("FAIL {name}: chromium not installed (required under CI)");
                    Outcome::Failed
                } else {
                    println!(
                        "SKIP {name} (skipped: chromium not installed; apt-get install chromium)"
                    );
                    Outcome::Skipped
                }
            } else if case.needs.root() && !is_root() {
                println!("SKIP {name} (skipped: needs root to create a throwaway user)");
                Outcome::Skipped
            } else {
                let t0 = Instant::now();
                let r = tokio::time::timeout(Duration::from_secs(60), (case.run)(&fx)).await;
                let ms = t0.elapsed().as_millis();
                match r {
                    Ok(Ok(())) => {
                        println!("PASS {name} ({ms} ms)");
                        Outcome::Passed
                    }
                    Ok(Err(e)) => {
                        println!("FAIL {name}: {e}");
                        Outcome::Failed
                    }
                    Err(_) => {
                        println!("FAIL {name}: timed out after 60 s");
                        Outcome::Failed
                    }
                }
            };
            let tally = match groups.iter_mut().find(|(g, _)| *g == case.group) {
                Some((_, t)) => t,
                None => {
                    groups.push((case.group, Tally::default()));
                    match groups.last_mut() {
                        Some((_, t)) => t,
                        None => continue,
                    }
                }
            };
            match outcome {
                Outcome::Passed => (passed, tally.passed) = (passed + 1, tally.passed + 1),
                Outcome::Failed => (failed, tally.failed) = (failed + 1, tally.failed + 1),
                Outcome::Skipped => (skipped, tally.skipped) = (skipped + 1, tally.skipped + 1),
            }
        }
        if filter.is_some() && passed + failed + skipped == 0 {
            println!("FAIL no case matches {filter:?} (`cargo xtask e2e --list` lists them)");
            failed += 1;
        }
        for (g, t) in &groups {
            println!(
                "e2e group {g}: {} passed, {} failed, {} skipped",
                t.passed, t.failed, t.skipped
            );
        }
        if failed > 0 {
            println!("--- main server log (tail) ---");
            let text = fx.main.log_text();
            for l in text
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                println!("{l}");
            }
        }
        drop(fx);
        if skipped > 0 {
            println!("e2e: {skipped} skipped");
        }
        println!("{passed} passed, {failed} failed");
        anyhow::Ok((passed, failed))
    });
    let _ = std::fs::remove_dir_all(&base);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_names_are_unique_and_every_group_is_named_by_its_module() {
        let all = all_cases();
        let mut names: Vec<&str> = all.iter().map(|c| c.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "a case name appears twice");
        for c in &all {
            assert!(!c.group.is_empty() && !c.name.contains(' '), "{}", c.name);
        }
        assert_eq!(
            all.last().map(|c| c.name),
            Some("audit_log_has_reasons_and_no_secrets"),
            "the audit-log case must run last: it reads every log before it"
        );
    }

    #[test]
    fn a_filter_selects_a_whole_group_or_a_part_of_a_name() {
        let all = all_cases();
        let by = |f: &str| all.iter().filter(|c| selected(c, Some(f))).count();
        assert_eq!(by("reload"), reload::CASES.len());
        assert_eq!(by("no_such_case_anywhere"), 0);
        assert_eq!(all.iter().filter(|c| selected(c, None)).count(), all.len());
        assert_eq!(by("replay_refused"), 1);
    }
}
