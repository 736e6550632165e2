//! e2e reload cases (issue 15): SIGHUP re-reads the config file the server
//! started with. A bad file changes nothing (the old config stays in
//! force, the log says why); a good one applies its live keys without
//! closing a session; a rotated identity kills every earlier token and
//! session, as a restart would. Each case runs its own server and config
//! file and rewrites that file between SIGHUPs.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use screengate_tests::{Request, echo, handshake};

use super::{Case, Fx, R, case, port_and_pin};
use crate::proc::ServerProc;

const GROUP: &str = "reload";

pub(super) const CASES: &[Case] = &[
    case!(Any "reload_with_a_bad_file_keeps_the_old_config_in_force" => async bad_file),
    case!(Any "reload_removing_an_origin_refuses_it_live_session_untouched" => async origin_removed),
    case!(Any "reload_after_a_new_identity_kills_earlier_tokens_and_sessions" => async new_identity),
];

/// Two origins a display could be served from; neither is the default.
const A: &str = "https://display-a.test:8443";
const B: &str = "https://display-b.test:8443";

/// A config file: `extra` (top-level keys and other tables) first, then
/// `[gateway]` with `origins` and `gateway` keys.
fn config_gw(origins: &[&str], extra: &str, gateway: &str) -> String {
    let list = origins
        .iter()
        .map(|o| format!("\"{o}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!("{extra}\n[gateway]\nallowed_origins = [{list}]\n{gateway}\n")
}

fn config(origins: &[&str], extra: &str) -> String {
    config_gw(origins, extra, "")
}

/// A server of its own on `file`, and its gateway.
async fn start(
    fx: &Fx,
    name: &str,
    file: &Path,
    body: &str,
) -> Result<(ServerProc, SocketAddr, screengate_identity::Pin), String> {
    std::fs::write(file, body).map_err(|e| e.to_string())?;
    let s = fx.spawn_server(name, &["--config", &file.to_string_lossy()])?;
    let (port, pin) = port_and_pin(&s.control).await?;
    Ok((s, SocketAddr::from(([127, 0, 0, 1], port)), pin))
}

/// Writes `body`, sends SIGHUP, and waits until the log has one more line
/// containing `outcome` than before (the reload is done).
async fn reload(s: &ServerProc, file: &Path, body: &str, outcome: &str) -> R {
    let before = s.log_text().matches(outcome).count();
    std::fs::write(file, body).map_err(|e| e.to_string())?;
    nix::sys::signal::kill(s.pid(), nix::sys::signal::Signal::SIGHUP).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        if s.log_text().matches(outcome).count() > before {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!(
        "no new `{outcome}` in the log within 10 s of SIGHUP; log tail:\n{}",
        tail(&s.log_text())
    ))
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// The status of one upgrade from `origin` with a fresh token.
async fn upgrade_status(
    fx: &Fx,
    s: &ServerProc,
    addr: SocketAddr,
    pin: screengate_identity::Pin,
    origin: &str,
) -> Result<u16, String> {
    let (t, _) = fx.mint_on(&s.control).await?;
    let req = Request::display(addr.port(), Some(&t)).set("Origin", Some(origin));
    Ok(handshake(addr, pin, &req).await?.0.status)
}

async fn bad_file(fx: &Fx) -> R {
    let file = fx.base.join("reload-bad.toml");
    let good = config(&[A], "");
    let (mut s, addr, pin) = start(fx, "reload-bad", &file, &good).await?;
    if upgrade_status(fx, &s, addr, pin, A).await? != 101 {
        return Err("the configured origin was refused before any reload".into());
    }
    // Each bad file also drops origin A: had it applied, A would get 403.
    let bad = [
        ("not TOML", format!("{}\n[gateway\n", config(&[B], ""))),
        ("an unknown key", config(&[B], "no_such_key = 1")),
        ("a zero ttl", config(&[B], "[tokens]\nttl = \"0s\"")),
        ("a bad origin", config(&["null"], "")),
        (
            "a mint rate of 0",
            config(&[B], "[control]\nmint_rate_per_sec = 0"),
        ),
        ("a web_root without index.html", {
            let dir = fx.base.join("reload-bad-web");
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            config_gw(&[B], "", &format!("web_root = \"{}\"", dir.display()))
        }),
    ];
    for (what, body) in &bad {
        reload(&s, &file, body, "reload refused").await?;
        if let Ok(Some(st)) = s.child.try_wait() {
            return Err(format!("a reload with {what} stopped the server ({st})"));
        }
        let a = upgrade_status(fx, &s, addr, pin, A).await?;
        let b = upgrade_status(fx, &s, addr, pin, B).await?;
        if (a, b) != (101, 403) {
            return Err(format!(
                "after a refused reload with {what}: origin A got {a}, B got {b} (expected 101, 403: the old config)"
            ));
        }
    }
    // ... and a good file after them still applies.
    reload(&s, &file, &config(&[B], ""), "configuration applied").await?;
    let (a, b) = (
        upgrade_status(fx, &s, addr, pin, A).await?,
        upgrade_status(fx, &s, addr, pin, B).await?,
    );
    if (a, b) != (403, 101) {
        return Err(format!(
            "after a good reload: A got {a}, B got {b} (expected 403, 101)"
        ));
    }
    let log = s.log_text();
    if log.matches("reload refused").count() < bad.len() {
        return Err("a refused reload was not logged with its reason".into());
    }
    let (st, _) = s
        .terminate(Duration::from_secs(5))
        .map_err(|e| format!("{e:#}"))?;
    if !st.success() {
        return Err(format!("exit {st} after the reloads"));
    }
    println!(
        "      ({} bad files refused, old config in force after each; a good one applied)",
        bad.len()
    );
    Ok(())
}

async fn origin_removed(fx: &Fx) -> R {
    let file = fx.base.join("reload-origin.toml");
    let (mut s, addr, pin) = start(fx, "reload-origin", &file, &config(&[A, B], "")).await?;
    let (t, _) = fx.mint_on(&s.control).await?;
    let req = Request::display(addr.port(), Some(&t)).set("Origin", Some(A));
    let (resp, ws) = handshake(addr, pin, &req).await?;
    let mut live = ws.ok_or(format!("origin A before the reload got {}", resp.status))?;
    echo(&mut live, "before the reload").await?;
    // A removed; a TTL, a mint rate and the message limit changed too:
    // the first two apply live, the message limit needs a restart.
    let next = config_gw(
        &[B],
        "[tokens]\nttl = \"7s\"\n[control]\nmint_burst = 50",
        "max_message_size = 12345",
    );
    reload(&s, &file, &next, "configuration applied").await?;
    let a = upgrade_status(fx, &s, addr, pin, A).await?;
    let b = upgrade_status(fx, &s, addr, pin, B).await?;
    if (a, b) != (403, 101) {
        return Err(format!(
            "after removing origin A: A got {a}, B got {b} (expected 403, 101)"
        ));
    }
    let got = echo(&mut live, "after the reload")
        .await
        .map_err(|e| format!("the live session from origin A did not survive the reload: {e}"))?;
    if got != "after the reload" {
        return Err(format!("the live session echoed {got:?}"));
    }
    let log = s.log_text();
    let applied = log
        .lines()
        .rfind(|l| l.contains("configuration applied"))
        .unwrap_or("");
    for key in ["allowed_origins", "ttl", "mint_rate"] {
        if !applied.contains(key) {
            return Err(format!("the reload line does not name `{key}`: {applied}"));
        }
    }
    if !log
        .lines()
        .any(|l| l.contains("need a restart") && l.contains("max_message_size"))
    {
        return Err("the changed max_message_size was not named as needing a restart".into());
    }
    let v = screengate_tests::control(&s.control, r#"{"op":"mint","channel":"display"}"#).await?;
    let ms = v["expires_in_ms"].as_u64().ok_or(format!(
        "no expires_in_ms in the mint reply: {}",
        v["error"]
    ))?;
    if ms > 7000 {
        return Err(format!("a token minted after ttl = 7s lives {ms} ms"));
    }
    let (st, _) = s
        .terminate(Duration::from_secs(5))
        .map_err(|e| format!("{e:#}"))?;
    if !st.success() {
        return Err(format!("exit {st}"));
    }
    println!(
        "      (A 403 and B 101 after the reload; the session from A still echoes; max_message_size named for restart)"
    );
    Ok(())
}

async fn new_identity(fx: &Fx) -> R {
    let file = fx.base.join("reload-identity.toml");
    let name = "reload-identity";
    let (mut s, addr, old_pin) = start(fx, name, &file, &config(&[A], "")).await?;
    let (live_t, _) = fx.mint_on(&s.control).await?;
    let (unused, _) = fx.mint_on(&s.control).await?;
    let req = |t: &str| Request::display(addr.port(), Some(t)).set("Origin", Some(A));
    let (resp, ws) = handshake(addr, old_pin, &req(&live_t)).await?;
    let mut live = ws.ok_or(format!("before the rotation: {}", resp.status))?;
    echo(&mut live, "before").await?;
    // A new identity on disk, made by `rotate` as the service user would.
    let state = fx.base.join(format!("state-{name}"));
    let mut cmd = Command::new(&fx.bin);
    cmd.args(["rotate", "--state-dir"]).arg(&state);
    if let Some(u) = &fx.svc {
        cmd.args(["--user", &u.user]);
    }
    let out = cmd.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("rotate: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let printed = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("server spki pin: ").map(str::to_owned))
        .ok_or("rotate printed no server pin")?;
    reload(&s, &file, &config(&[A], ""), "configuration applied").await?;
    if !s.log_text().contains("identity_rotated") {
        return Err("the reload did not see the new identity".into());
    }
    if echo(&mut live, "after").await.is_ok() {
        return Err("a session of the old identity survived the rotation".into());
    }
    let (_, new_pin) = port_and_pin(&s.control).await?;
    if new_pin.matches(&old_pin) {
        return Err("the gateway pin did not change with the identity".into());
    }
    if new_pin.to_string() != printed {
        return Err(format!(
            "the gateway serves {new_pin}, rotate printed {printed}"
        ));
    }
    // the old gateway certificate is gone: the old pin no longer connects
    let (new_t, _) = fx.mint_on(&s.control).await?;
    if handshake(addr, old_pin, &req(&new_t)).await.is_ok() {
        return Err("the gateway still presents the old identity's certificate".into());
    }
    // a token minted before the rotation dies, over the new certificate
    let (resp, ws) = handshake(addr, new_pin, &req(&unused)).await?;
    if ws.is_some() || resp.status != 403 {
        return Err(format!(
            "a token of the old identity got {} after the rotation",
            resp.status
        ));
    }
    let (resp, ws) = handshake(addr, new_pin, &req(&new_t)).await?;
    let mut ws = ws.ok_or(format!("a token of the new identity got {}", resp.status))?;
    echo(&mut ws, "new identity").await?;
    let (st, _) = s
        .terminate(Duration::from_secs(5))
        .map_err(|e| format!("{e:#}"))?;
    if !st.success() {
        return Err(format!("exit {st}"));
    }
    println!(
        "      (old session closed, old token 403, old pin refused, new token 101 under the new pin)"
    );
    Ok(())
}
