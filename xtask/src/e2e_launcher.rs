//! e2e cases for `screengate-launch` with real headless Chromium: the page
//! connects and exchanges messages, the token is nowhere a local user can
//! read, there is no DevTools TCP port, reconnects use fresh tokens, a
//! killed browser comes back, the tab is locked to the gateway origin
//! (WebSockets included), extra switches come from an allow-list, the
//! profile is private, the environment is cleared, a forged control socket
//! is refused, superseded tokens are revoked, and SIGTERM cleans up.
//!
//! Under a fake `NOTIFY_SOCKET` (as `e2e_stream.rs` fakes it for the
//! server) the launcher says READY=1 only after the display's first
//! message, never while the gateway refuses the display, and STOPPING=1 on
//! SIGTERM.
//!
//! As root the launcher runs as a throwaway display user with Chromium's
//! sandbox on, as on a device (`launch`); the refusal of root without
//! `--no-sandbox` and the forged-socket cases run as root.
//!
//! Without Chromium these say "skipped: chromium not installed"; under CI
//! (`CI` set) a missing browser is a failure.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{Case, Fx, R, case};
use crate::proc::{LauncherProc, ServerProc, descendants};

/// Launcher log lines the cases wait for (stable strings in the launcher).
const CONNECTED: &str = "display connected to the gateway";
const FIRST_MESSAGE: &str = "display received its first message";

const GROUP: &str = "launcher";

pub(super) const CASES: &[Case] = &[
    case!(Chromium "launcher_refuses_protection_undoing_args" => async refuses_args),
    case!(Chromium "launcher_page_connects_and_exchanges_messages" => async connects),
    case!(Chromium "launcher_token_absent_from_proc_and_profile" => async token_absent),
    case!(Chromium "launcher_opens_no_devtools_tcp_port" => async no_tcp_port),
    case!(Chromium "launcher_reconnects_with_a_fresh_token_after_the_session_closes" => async reconnects),
    case!(Chromium "launcher_restarts_a_killed_browser_within_10s" => async restarts),
    case!(Chromium "launcher_tab_is_locked_to_the_gateway_origin" => async locked),
    case!(Chromium "launcher_closes_popup_windows" => async popups),
    case!(Chromium "launcher_sigterm_closes_browser_and_removes_profile" => async sigterm),
    case!(Chromium "launcher_profile_is_0700_and_private_while_running" => async profile_private),
    case!(Chromium "launcher_sslkeylogfile_in_env_writes_no_key_log" => async no_key_log),
    case!(ChromiumRoot "launcher_refuses_a_forged_control_socket" => async forged_control),
    case!(Chromium "launcher_revokes_the_token_it_supersedes" => async revokes_superseded),
    case!(ChromiumRoot "launcher_websockets_elsewhere_never_carry_the_token" => async websockets_elsewhere),
    case!(Chromium "launcher_service_worker_cannot_serve_an_unlocked_document" => async service_worker),
    case!(ChromiumRoot "launcher_runs_as_the_display_user_with_the_sandbox_on" => async sandboxed),
    case!(ChromiumRoot "launcher_bounds_the_control_reply" => async bounded_reply),
    case!(Chromium "launcher_systemd_ready_only_after_the_displays_first_message_status_stopping_on_sigterm" => async systemd_ready),
    case!(Chromium "launcher_systemd_not_ready_while_the_gateway_refuses_the_display" => async systemd_not_ready),
    case!(Chromium "launcher_follows_a_rotated_identity_with_a_new_browser_and_pin" => async follows_rotation),
];

pub fn chromium_present() -> bool {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .any(|p| Path::new(p).is_file())
}

/// A server the display user's launcher can reach: as root, its control
/// socket is 0660 for the display user's group (the service user is a
/// member) in a directory the display user may traverse, and the display
/// uid is allowed to mint and connect. `--config FILE` in `extra` gets the
/// `[control]` section appended.
fn display_server(fx: &Fx, name: &str, extra: &[&str]) -> Result<ServerProc, String> {
    let Some((d, _)) = &fx.display else {
        return fx.spawn_server(name, extra);
    };
    let section = format!("\n[control]\ngroup = \"{}\"\n", d.group);
    let mut args: Vec<String> = extra.iter().map(|a| (*a).to_owned()).collect();
    match args.iter().position(|a| a == "--config") {
        Some(i) => {
            let cfg = args.get(i + 1).ok_or("--config without a file")?;
            let mut text = std::fs::read_to_string(cfg).map_err(|e| e.to_string())?;
            text.push_str(&section);
            std::fs::write(cfg, text).map_err(|e| e.to_string())?;
        }
        None => {
            let cfg = fx.base.join(format!("{name}.display.toml"));
            std::fs::write(&cfg, &section).map_err(|e| e.to_string())?;
            args.push("--config".into());
            args.push(cfg.display().to_string());
        }
    }
    args.push("--allow-uid".into());
    args.push(d.uid.to_string());
    let dir = fx.base.join("run").join(name);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::os::unix::fs::chown(&dir, Some(fx.svc_uid()), None).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o711))
        .map_err(|e| e.to_string())?;
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    fx.spawn_server(name, &refs)
}

/// The uid the launcher cases run the launcher as.
fn launcher_uid(fx: &Fx) -> u32 {
    fx.display
        .as_ref()
        .map_or_else(|| nix::unistd::geteuid().as_raw(), |(d, _)| d.uid)
}

/// A directory the launcher's uid may write (the display user's home).
fn launcher_home(fx: &Fx) -> PathBuf {
    fx.display
        .as_ref()
        .map_or_else(|| fx.base.clone(), |(_, h)| h.clone())
}

fn launch(
    fx: &Fx,
    name: &str,
    server: &ServerProc,
    extra: &[String],
) -> Result<LauncherProc, String> {
    launch_env(fx, name, server, extra, &[])
}

/// The launcher as the display user, Chromium's sandbox on (as root: via
/// `setpriv`; otherwise as ourselves), against `server`.
fn launch_env(
    fx: &Fx,
    name: &str,
    server: &ServerProc,
    extra: &[String],
    env: &[(&str, &Path)],
) -> Result<LauncherProc, String> {
    let log = fx.base.join(format!("{name}.launch.log"));
    fx.logs.lock().map_err(|e| e.to_string())?.push(log.clone());
    let bin = fx.base.join("bin/screengate-launch");
    let mut args = vec![format!("--server-uid={}", fx.svc_uid())];
    args.extend_from_slice(extra);
    match &fx.display {
        Some((d, home)) => {
            let mut cmd = d.command(&bin, false);
            cmd.arg("--control")
                .arg(&server.control)
                .arg("--headless")
                .args(&args)
                .env("HOME", home)
                .envs(env.iter().copied());
            LauncherProc::spawn(cmd, &log)
        }
        None => LauncherProc::start_env(&bin, &server.control, &log, &args, env),
    }
    .map_err(|e| format!("{e:#}"))
}

fn profile_of(l: &LauncherProc) -> Option<PathBuf> {
    let text = l.log_text();
    let at = text.rfind("profile=")? + "profile=".len();
    let rest = text.get(at..)?;
    Some(PathBuf::from(rest.split_whitespace().next()?))
}

/// Every switch the old deny-list refused, in the spellings it missed
/// (single dash, no `=value`), and the ones it never listed.
const HOSTILE_ARGS: &[&str] = &[
    "-remote-debugging-port=9222",
    "-remote-debugging-port",
    "-remote-debugging-address=0.0.0.0",
    "-remote-allow-origins=*",
    "-log-net-log=/tmp/screengate-netlog.json",
    "-log-net-log",
    "-net-log-capture-mode=Everything",
    "-disable-web-security",
    "-ignore-certificate-errors",
    "-ignore-certificate-errors-spki-list=AAAA",
    "-user-data-dir=/tmp/x",
    "-load-extension=/tmp/e",
    "-disable-extensions-except=/tmp/e",
    "-auto-open-devtools-for-tabs",
    "-remote-debugging-pipe",
    "--ssl-key-log-file=/tmp/keys",
    "-ssl-key-log-file",
    "--renderer-cmd-prefix=/bin/sh -c",
    "-renderer-cmd-prefix",
    "--browser-subprocess-path=/tmp/x",
    "--proxy-server=http://127.0.0.1:1",
    "-proxy-server",
    "--host-rules=MAP * 127.0.0.1",
    "--host-resolver-rules=MAP * 127.0.0.1",
    "-host-resolver-rules",
    "--enable-logging",
    "--enable-logging=stderr",
    "--v=1",
    "-v=3",
    "--remote-debugging-port=9222",
    "--disable-web-security",
    "https://evil.example/",
    "--",
];

async fn refuses_args(fx: &Fx) -> R {
    for bad in HOSTILE_ARGS {
        // A launcher that accepts the switch goes on to mint (and retry
        // forever against /nonexistent): that is a failure, not a hang.
        let out = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::process::Command::new(fx.base.join("bin/screengate-launch"))
                .args(["--control", "/nonexistent", "--headless"])
                .arg(format!("--chromium-arg={bad}"))
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| format!("{bad}: accepted (the launcher went on to mint)"))?
        .map_err(|e| e.to_string())?;
        let err = String::from_utf8_lossy(&out.stderr);
        let name = bad
            .trim_start_matches('-')
            .split('=')
            .next()
            .unwrap_or_default();
        let named = if bad.starts_with('-') && !name.is_empty() {
            err.contains(&format!("--{name} is not on"))
        } else {
            err.contains("not a Chromium switch")
        };
        if out.status.code() != Some(64) || !err.contains("refusing") || !named {
            return Err(format!("{bad}: exit {:?}, {err}", out.status.code()));
        }
    }
    if nix::unistd::geteuid().is_root() {
        let out = std::process::Command::new(fx.base.join("bin/screengate-launch"))
            .args(["--control", "/nonexistent", "--headless"])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.code() != Some(64) || !String::from_utf8_lossy(&out.stderr).contains("root") {
            return Err("as root without --no-sandbox the launcher must refuse".into());
        }
    }
    Ok(())
}

async fn connects(fx: &Fx) -> R {
    let s = display_server(fx, "l-connect", &[])?;
    let mut l = launch(
        fx,
        "l-connect",
        &s,
        &[format!(
            "--screenshot={}",
            launcher_home(fx).join("l-connect.png").display()
        )],
    )?;
    let took = l
        .wait_for(FIRST_MESSAGE, 1, Duration::from_secs(30))
        .await?;
    if !s.log_text().contains("\"accepted\"") && !s.log_text().contains("event=accepted") {
        return Err("the server logged no accepted session".into());
    }
    l.wait_for("screenshot written", 1, Duration::from_secs(10))
        .await?;
    println!(
        "      (launcher start → first message from the gateway: {} ms)",
        took.as_millis()
    );
    Ok(())
}

/// base64url of `0x01 || run id prefix (4 bytes)`: the first 6 characters of
/// every token of that run.
fn token_prefix(server_log: &str) -> Option<String> {
    let at = server_log.find("RunId(")? + "RunId(".len();
    let hex = server_log.get(at..at + 8)?;
    let mut bytes = vec![1u8];
    for i in 0..4 {
        bytes.push(u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?);
    }
    URL_SAFE_NO_PAD.encode(bytes).get(..6).map(str::to_owned)
}

/// Whether `hay` holds `prefix` followed by a full token's worth of base64url.
fn holds_token(hay: &[u8], prefix: &str) -> bool {
    let p = prefix.as_bytes();
    hay.windows(p.len()).enumerate().any(|(i, w)| {
        w == p
            && hay.get(i..i + 110).is_some_and(|t| {
                t.iter()
                    .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
            })
    })
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => files_under(&p, out),
                Ok(t) if t.is_file() => out.push(p),
                _ => {}
            }
        }
    }
}

async fn token_absent(fx: &Fx) -> R {
    let s = display_server(fx, "l-proc", &[])?;
    let mut l = launch(fx, "l-proc", &s, &[])?;
    l.wait_for(FIRST_MESSAGE, 1, Duration::from_secs(30))
        .await?;
    // let the re-arm after the handshake land too
    l.wait_for("armed a fresh token", 1, Duration::from_secs(10))
        .await?;
    let prefix = token_prefix(&s.log_text()).ok_or("no run id in the server log")?;
    let profile = profile_of(&l).ok_or("no profile path in the launcher log")?;
    // The scanner must see a real token: plant one (minted on this server)
    // in a canary file and find it.
    let (canary_token, _) = fx.mint_on(&s.control).await?;
    let canary = fx.base.join("canary.bin");
    std::fs::write(&canary, format!("xx{canary_token}yy")).map_err(|e| e.to_string())?;
    let found = holds_token(&std::fs::read(&canary).map_err(|e| e.to_string())?, &prefix);
    let _ = std::fs::remove_file(&canary);
    if !found {
        return Err("scanner self-check failed: it does not find a planted token".into());
    }
    let mut leaks = Vec::new();
    let mut scanned = 0usize;
    for e in std::fs::read_dir("/proc")
        .map_err(|e| e.to_string())?
        .flatten()
    {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        for f in ["cmdline", "environ"] {
            if let Ok(b) = std::fs::read(e.path().join(f)) {
                scanned += 1;
                if holds_token(&b, &prefix) {
                    leaks.push(format!("{}/{f}", e.path().display()));
                }
            }
        }
    }
    let mut files = Vec::new();
    files_under(&profile, &mut files);
    if files.is_empty() {
        return Err(format!(
            "profile {} has no files: wrong path?",
            profile.display()
        ));
    }
    for f in &files {
        if let Ok(b) = std::fs::read(f) {
            scanned += 1;
            if holds_token(&b, &prefix) {
                leaks.push(f.display().to_string());
            }
        }
    }
    if !leaks.is_empty() {
        return Err(format!("token found in: {leaks:?}"));
    }
    println!("      (scanned {scanned} /proc entries and profile files; none holds a token)");
    Ok(())
}

fn listening_inodes() -> Vec<u64> {
    let mut v = Vec::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(t) = std::fs::read_to_string(f) else {
            continue;
        };
        for line in t.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.get(3) == Some(&"0A")
                && let Some(inode) = cols.get(9).and_then(|i| i.parse().ok())
            {
                v.push(inode);
            }
        }
    }
    v
}

fn socket_inodes(pid: i32) -> Vec<u64> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in rd.flatten() {
            if let Ok(target) = std::fs::read_link(e.path()) {
                let t = target.to_string_lossy();
                if let Some(n) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']'))
                    && let Ok(n) = n.parse()
                {
                    v.push(n);
                }
            }
        }
    }
    v
}

async fn no_tcp_port(fx: &Fx) -> R {
    let s = display_server(fx, "l-port", &[])?;
    let mut l = launch(fx, "l-port", &s, &[])?;
    l.wait_for(FIRST_MESSAGE, 1, Duration::from_secs(30))
        .await?;
    let listening = listening_inodes();
    // self-check: the gateway itself is a listener this scan must see
    let server_pid = i32::try_from(s.child.id()).map_err(|e| e.to_string())?;
    if !socket_inodes(server_pid)
        .iter()
        .any(|i| listening.contains(i))
    {
        return Err("scanner self-check failed: the gateway's listener was not found".into());
    }
    let browser = descendants(l.pid().as_raw());
    if browser.is_empty() {
        return Err("no Chromium processes under the launcher".into());
    }
    for pid in &browser {
        if socket_inodes(*pid).iter().any(|i| listening.contains(i)) {
            return Err(format!("Chromium process {pid} listens on TCP"));
        }
    }
    println!(
        "      ({} Chromium processes, none listening on TCP)",
        browser.len()
    );
    Ok(())
}

async fn reconnects(fx: &Fx) -> R {
    // The backend runs as the service user in a directory it owns, as an
    // SDK would: the server (that user too) connects to its 0600 socket.
    let dir = fx.base.join("run/l-backend");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    if let Some(u) = &fx.svc {
        std::os::unix::fs::chown(&dir, Some(u.uid), Some(u.gid)).map_err(|e| e.to_string())?;
    }
    let sock = dir.join("backend.sock");
    let start_backend = || {
        let mut cmd = match &fx.svc {
            Some(u) => u.command(fx.base.join("bin/screengate"), false),
            None => std::process::Command::new(fx.base.join("bin/screengate")),
        };
        cmd.arg("demo-backend")
            .arg("--unix")
            .arg(&sock)
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())
    };
    let wait_sock = |sock: &Path| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(sock).is_err() {
            if Instant::now() > deadline {
                return Err("demo backend did not come up".to_owned());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    };
    let mut backend = start_backend()?;
    wait_sock(&sock)?;
    let backend_arg = format!("unix:{}", sock.display());
    let s = display_server(fx, "l-reconnect", &["--backend", &backend_arg])?;
    let mut l = launch(fx, "l-reconnect", &s, &[])?;
    l.wait_for(FIRST_MESSAGE, 1, Duration::from_secs(30))
        .await?;
    // The backend goes away: the server closes the session (1011) and the
    // page starts reconnecting (503s until the backend is back).
    let _ = kill(
        Pid::from_raw(i32::try_from(backend.id()).unwrap_or(0)),
        Signal::SIGTERM,
    );
    let _ = backend.wait();
    l.wait_for("display session closed", 1, Duration::from_secs(10))
        .await?;
    let mut backend = start_backend()?;
    wait_sock(&sock)?;
    let r = l.wait_for(CONNECTED, 2, Duration::from_secs(20)).await;
    let _ = kill(
        Pid::from_raw(i32::try_from(backend.id()).unwrap_or(0)),
        Signal::SIGTERM,
    );
    let _ = backend.wait();
    r?;
    let ids: Vec<String> = s
        .log_text()
        .lines()
        .filter(|l| l.contains("accepted"))
        .filter_map(|l| {
            l.split("token_id=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .map(str::to_owned)
        })
        .collect();
    let mut uniq = ids.clone();
    uniq.sort();
    uniq.dedup();
    if ids.len() < 2 || uniq.len() != ids.len() {
        return Err(format!(
            "expected ≥2 sessions with distinct tokens, got {ids:?}"
        ));
    }
    if !s.log_text().contains("backend_gone") {
        return Err("the server did not record the backend going away".into());
    }
    Ok(())
}

async fn restarts(fx: &Fx) -> R {
    let s = display_server(fx, "l-kill", &[])?;
    let mut l = launch(fx, "l-kill", &s, &[])?;
    l.wait_for(CONNECTED, 1, Duration::from_secs(30)).await?;
    let browser_pid = descendants(l.pid().as_raw())
        .into_iter()
        .min()
        .ok_or("no browser process")?;
    let t0 = Instant::now();
    kill(Pid::from_raw(browser_pid), Signal::SIGKILL).map_err(|e| e.to_string())?;
    l.wait_for(CONNECTED, 2, Duration::from_secs(10)).await?;
    println!(
        "      (kill -9 → connected again in {} ms)",
        t0.elapsed().as_millis()
    );
    if Path::new(&format!("/proc/{browser_pid}")).exists() {
        let stat = std::fs::read_to_string(format!("/proc/{browser_pid}/stat")).unwrap_or_default();
        if !stat.contains(") Z") {
            return Err(format!("killed browser {browser_pid} still running"));
        }
    }
    Ok(())
}

/// A plain HTTP server on another local origin that records every request.
async fn recording_server() -> Result<(u16, tokio::sync::mpsc::UnboundedReceiver<String>), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let port = l.local_addr().map_err(|e| e.to_string())?.port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        // bounded: at most 200 connections, then it stops by itself
        for _ in 0..200 {
            let Ok(Ok((mut s, _))) =
                tokio::time::timeout(Duration::from_secs(60), l.accept()).await
            else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or(0);
                let _ = tx.send(String::from_utf8_lossy(buf.get(..n).unwrap_or(&[])).into_owned());
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    Ok((port, rx))
}

async fn locked(fx: &Fx) -> R {
    let (port, mut seen) = recording_server().await?;
    let other = format!("http://127.0.0.1:{port}");
    let web = fx.base.join("web-locked");
    std::fs::create_dir_all(&web).map_err(|e| e.to_string())?;
    std::fs::write(
        web.join("index.html"),
        format!(
            "<!doctype html><title>lock test</title>\
             <img src=\"{other}/image.png\"><iframe src=\"{other}/frame\"></iframe>\
             <script src=\"/app.js\"></script>"
        ),
    )
    .map_err(|e| e.to_string())?;
    // connect to the gateway (proves the header is set), then leave for the other origin
    std::fs::write(
        web.join("app.js"),
        format!(
            "const ws = new WebSocket('wss://' + location.host + '/ws');\n\
             ws.onmessage = () => {{}};\n\
             ws.onopen = () => {{ ws.send('hi'); setTimeout(() => {{ location.href = '{other}/navigated'; }}, 300); }};\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let cfg = fx.base.join("locked.toml");
    std::fs::write(
        &cfg,
        format!("[gateway]\nweb_root = \"{}\"\n", web.display()),
    )
    .map_err(|e| e.to_string())?;
    let s = display_server(fx, "l-locked", &["--config", &cfg.to_string_lossy()])?;
    let mut l = launch(fx, "l-locked", &s, &[])?;
    l.wait_for(CONNECTED, 1, Duration::from_secs(30)).await?;
    l.wait_for(
        "blocked a request from the display tab to another origin",
        1,
        Duration::from_secs(10),
    )
    .await?;
    // give any stray request time to arrive before judging
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut requests = Vec::new();
    while let Ok(r) = seen.try_recv() {
        requests.push(r);
    }
    if requests
        .iter()
        .any(|r| r.to_ascii_lowercase().contains("x-screengate-token"))
    {
        return Err("the other origin received the token header".into());
    }
    println!(
        "      (other origin saw {} requests, none with the token; navigation blocked by the tab lock)",
        requests.len()
    );
    Ok(())
}

/// Every entry under `dir` (files and directories, not following links)
/// with its mode.
fn modes_under(dir: &Path, out: &mut Vec<(PathBuf, u32)>) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            let Ok(md) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if md.file_type().is_symlink() {
                continue; // links have no mode of their own (SingletonLock)
            }
            out.push((p.clone(), md.permissions().mode() & 0o7777));
            if md.is_dir() {
                modes_under(&p, out);
            }
        }
    }
}

async fn profile_private(fx: &Fx) -> R {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let s = display_server(fx, "l-profile", &[])?;
    let mut l = launch(fx, "l-profile", &s, &[])?;
    l.wait_for(FIRST_MESSAGE, 1, Duration::from_secs(30))
        .await?;
    let profile = profile_of(&l).ok_or("no profile path in the launcher log")?;
    // while Chromium runs
    if descendants(l.pid().as_raw()).is_empty() {
        return Err("no Chromium processes under the launcher".into());
    }
    let md = std::fs::symlink_metadata(&profile).map_err(|e| e.to_string())?;
    let mode = md.permissions().mode() & 0o7777;
    if !md.is_dir() || mode != 0o700 || md.uid() != launcher_uid(fx) {
        return Err(format!(
            "profile {} is mode {mode:o} uid {}, want a 0700 directory of ours",
            profile.display(),
            md.uid()
        ));
    }
    let mut entries = Vec::new();
    modes_under(&profile, &mut entries);
    if entries.len() < 3 {
        return Err(format!(
            "only {} entries in the profile: wrong path?",
            entries.len()
        ));
    }
    let open: Vec<String> = entries
        .iter()
        .filter(|(_, m)| m & 0o077 != 0)
        .map(|(p, m)| format!("{} {m:o}", p.display()))
        .collect();
    if !open.is_empty() {
        return Err(format!("group/other can access: {open:?}"));
    }
    println!(
        "      (profile 0700; {} entries under it, none group/other accessible)",
        entries.len()
    );
    Ok(())
}

async fn no_key_log(fx: &Fx) -> R {
    // where the launcher's uid could write it
    let keys = launcher_home(fx).join("l-keylog.keys");
    let s = display_server(fx, "l-keylog", &[])?;
    let mut l = launch_env(fx, "l-keylog", &s, &[], &[("SSLKEYLOGFILE", &keys)])?;
    // the TLS handshake to the gateway happened, and the token went out on it
    l.wait_for(FIRST_MESSAGE, 1, Duration::from_secs(30))
        .await?;
    let browser = descendants(l.pid().as_raw());
    if browser.is_empty() {
        return Err("no Chromium processes under the launcher".into());
    }
    let mut inherited = Vec::new();
    let mut read = 0usize;
    for pid in &browser {
        if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) {
            read += 1;
            if env
                .split(|b| *b == 0)
                .any(|kv| kv.starts_with(b"SSLKEYLOGFILE="))
            {
                inherited.push(*pid);
            }
        }
    }
    if read == 0 {
        return Err("could not read any Chromium process's environment".into());
    }
    let written = std::fs::metadata(&keys).map(|m| m.len()).ok();
    if written.is_some() || !inherited.is_empty() {
        return Err(format!(
            "key log {} ({written:?} bytes); processes with SSLKEYLOGFILE: {inherited:?}",
            keys.display()
        ));
    }
    println!(
        "      (TLS to the gateway done; no key log; {read} Chromium environments without SSLKEYLOGFILE)"
    );
    Ok(())
}

/// Kills a child by pid when dropped.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `xtask e2e-forge SOCK [REPLY]` as `user`: a stand-in control server on
/// `sock`, returned once it says `listening`; killed on drop.
fn start_forger(
    fx: &Fx,
    user: &super::TempUser,
    sock: &Path,
    reply: Option<&str>,
) -> Result<Reaped, String> {
    use std::io::BufRead as _;
    let exe = fx.peer_exe()?;
    let mut cmd = user.command(&exe, false);
    cmd.arg("e2e-forge").arg(sock);
    if let Some(r) = reply {
        cmd.arg(r);
    }
    let mut child = Reaped(
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?,
    );
    let mut first = String::new();
    if let Some(out) = child.0.stdout.take() {
        let _ = std::io::BufReader::new(out).read_line(&mut first);
    }
    if first.trim() != "listening" {
        return Err(format!(
            "the stand-in control server did not start: {first:?}"
        ));
    }
    Ok(child)
}

/// The launcher as root against a stand-in control socket `sock` that
/// `server_uid` serves, logging to `NAME.launch.log`.
fn launch_on_stand_in(
    fx: &Fx,
    name: &str,
    sock: &Path,
    server_uid: u32,
) -> Result<LauncherProc, String> {
    let log = fx.base.join(format!("{name}.launch.log"));
    fx.logs.lock().map_err(|e| e.to_string())?.push(log.clone());
    LauncherProc::start(
        &fx.base.join("bin/screengate-launch"),
        sock,
        &log,
        &[format!("--server-uid={server_uid}")],
    )
    .map_err(|e| format!("{e:#}"))
}

/// Runs the launcher against `control` and expects it to refuse, naming
/// `why`, without starting Chromium.
async fn expect_untrusted(fx: &Fx, control: &Path, server_uid: Option<u32>, why: &str) -> R {
    let mut cmd = tokio::process::Command::new(fx.base.join("bin/screengate-launch"));
    cmd.arg("--control").arg(control).arg("--headless");
    if let Some(u) = server_uid {
        cmd.arg(format!("--server-uid={u}"));
    }
    if nix::unistd::geteuid().is_root() {
        cmd.arg("--chromium-arg=--no-sandbox");
    }
    let out = tokio::time::timeout(Duration::from_secs(10), cmd.kill_on_drop(true).output())
        .await
        .map_err(|_| {
            format!(
                "{}: the launcher did not refuse within 10 s",
                control.display()
            )
        })?
        .map_err(|e| e.to_string())?;
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || !err.contains("refusing the control socket") || !err.contains(why) {
        return Err(format!(
            "{} ({server_uid:?}): exit {:?}, want a refusal naming {why:?}: {err}",
            control.display(),
            out.status.code()
        ));
    }
    if err.contains("Chromium started") {
        return Err(format!(
            "{}: Chromium was started: {err}",
            control.display()
        ));
    }
    Ok(())
}

async fn forged_control(fx: &Fx) -> R {
    use std::os::unix::fs::PermissionsExt;
    let forger = super::TempUser::create("forge")?;
    let svc = fx.svc_uid();
    let run = fx.base.join("run");
    // the forger's own directory, and its socket there
    let own = run.join("l-forge-own");
    std::fs::create_dir_all(&own).map_err(|e| e.to_string())?;
    std::os::unix::fs::chown(&own, Some(forger.uid), Some(forger.gid))
        .map_err(|e| e.to_string())?;
    std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    let forged = own.join("c.sock");
    let child = start_forger(fx, &forger, &forged, None)?;
    // self-check: the forger answers like a server would
    let v = screengate_tests::control(&forged, r#"{"op":"mint","channel":"display"}"#).await?;
    if v["ok"] != true {
        return Err(format!("self-check: the forger answered {v}"));
    }
    // 1. a directory another uid owns
    expect_untrusted(
        fx,
        &forged,
        Some(svc),
        &format!("owned by uid {}", forger.uid),
    )
    .await?;
    // 1b. the same without --server-uid: the directory's owner (the
    //     forger) would be "the server", and the socket is its own; the base
    //     dir is under /tmp, which anyone can make directories in
    expect_untrusted(fx, &forged, None, "pass --server-uid").await?;
    // 2. a world-writable (sticky) directory, as /tmp
    let open = run.join("l-forge-open");
    std::fs::create_dir_all(&open).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777))
        .map_err(|e| e.to_string())?;
    let open_sock = open.join("c.sock");
    let _ = std::fs::remove_file(&open_sock);
    std::os::unix::fs::symlink(&forged, &open_sock).map_err(|e| e.to_string())?;
    expect_untrusted(fx, &open_sock, Some(svc), "writable by group or others").await?;
    expect_untrusted(fx, &open_sock, None, "writable by group or others").await?;
    // 3. the server's own directory, but the forger answers (SO_PEERCRED),
    //    with --server-uid and with the default (the directory's owner)
    let trusted = run.join("l-forge-link");
    std::fs::create_dir_all(&trusted).map_err(|e| e.to_string())?;
    std::os::unix::fs::chown(&trusted, Some(svc), None).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&trusted, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| e.to_string())?;
    let link = trusted.join("c.sock");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&forged, &link).map_err(|e| e.to_string())?;
    let peer = format!("runs as uid {}, not the server's uid {svc}", forger.uid);
    expect_untrusted(fx, &link, Some(svc), &peer).await?;
    // (without --server-uid, /tmp above already refuses)
    expect_untrusted(fx, &link, None, "pass --server-uid").await?;
    // 4. a root-owned directory without --server-uid: nobody to trust
    let rootdir = run.join("l-forge-root");
    std::fs::create_dir_all(&rootdir).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&rootdir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    let rlink = rootdir.join("c.sock");
    let _ = std::fs::remove_file(&rlink);
    std::os::unix::fs::symlink(&forged, &rlink).map_err(|e| e.to_string())?;
    expect_untrusted(fx, &rlink, None, "pass --server-uid").await?;
    expect_untrusted(fx, &rlink, Some(svc), &peer).await?;
    // 5. the server's own directory, inside one the forger owns (it could
    //    rename the server's directory away and put its own in place)
    let nested = own.join("server");
    std::fs::create_dir_all(&nested).map_err(|e| e.to_string())?;
    std::os::unix::fs::chown(&nested, Some(svc), None).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&nested, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| e.to_string())?;
    let nlink = nested.join("c.sock");
    let _ = std::fs::remove_file(&nlink);
    std::os::unix::fs::symlink(&forged, &nlink).map_err(|e| e.to_string())?;
    let anc = format!(
        "its ancestor {} is owned by uid {}",
        own.display(),
        forger.uid
    );
    expect_untrusted(fx, &nlink, Some(svc), &anc).await?;
    // 6. ... or inside a world-writable directory that is not sticky
    let loose = run.join("l-forge-loose");
    let inner = loose.join("server");
    std::fs::create_dir_all(&inner).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o777))
        .map_err(|e| e.to_string())?;
    std::os::unix::fs::chown(&inner, Some(svc), None).map_err(|e| e.to_string())?;
    let ilink = inner.join("c.sock");
    let _ = std::fs::remove_file(&ilink);
    std::os::unix::fs::symlink(&forged, &ilink).map_err(|e| e.to_string())?;
    expect_untrusted(fx, &ilink, Some(svc), "not sticky").await?;
    drop(child);
    println!("      (9 forged sockets refused, each with its reason; Chromium never started)");
    Ok(())
}

/// The `token_id=` values of the server's audit lines with `event`.
fn ids_of(log: &str, event: &str) -> Vec<String> {
    let needle = format!("event=\"{event}\"");
    log.lines()
        .filter(|l| l.contains(&needle))
        .filter_map(|l| {
            l.split("token_id=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .map(|t| t.trim_matches('"').to_owned())
        })
        .collect()
}

async fn revokes_superseded(fx: &Fx) -> R {
    // TTL 2 s: the launcher re-arms every second, superseding an unused token
    let s = display_server(fx, "l-revoke", &["--token-ttl", "2s"])?;
    let mut l = launch(fx, "l-revoke", &s, &[])?;
    l.wait_for(FIRST_MESSAGE, 1, Duration::from_secs(30))
        .await?;
    l.wait_for("revoked the superseded token", 2, Duration::from_secs(15))
        .await?;
    let log = s.log_text();
    let minted = ids_of(&log, "mint");
    let revoked = ids_of(&log, "revoke");
    let accepted = ids_of(&log, "accepted");
    if revoked.len() < 2 {
        return Err(format!("the server recorded {} revocations", revoked.len()));
    }
    for id in &revoked {
        if !minted.contains(id) {
            return Err(format!("revoked {id}, which the server never minted"));
        }
    }
    // Revocation never cost the page a session: no handshake was refused,
    // and no token was refused for being revoked. (A token consumed by a
    // handshake that raced the re-arm may be revoked after REVOKE_GRACE:
    // harmless, the session is already open.)
    if l.log_text()
        .contains("the gateway refused the display's handshake")
        || log.contains("reason=\"revoked\"")
        || log.contains("reason=revoked ")
    {
        return Err("a handshake was refused after a revocation".into());
    }
    println!(
        "      ({} minted, {} superseded and revoked, {} accepted)",
        minted.len(),
        revoked.len(),
        accepted.len()
    );
    Ok(())
}

/// A script that opens WebSockets to `other` (ws://127.0.0.1:PORT) at
/// load, 500 ms later, and from a blob worker, and connects to the gateway.
fn leaky_script(other: &str) -> String {
    format!(
        "const leak = (why) => {{ try {{ new WebSocket('{other}/' + why); }} catch (e) {{}} }};\n\
         leak('load');\n\
         setTimeout(() => leak('later'), 500);\n\
         try {{ new Worker(URL.createObjectURL(new Blob([\"try {{ new WebSocket('{other}/worker'); }} catch (e) {{}}\"], {{type: 'text/javascript'}}))); }} catch (e) {{}}\n\
         const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws');\n\
         ws.onopen = () => ws.send('hi');\n\
         ws.onmessage = () => {{}};\n"
    )
}

/// A plain HTTP server that answers every request with `body` and no CSP
/// (a display server that does not protect its page).
async fn page_server(body: String) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let port = l.local_addr().map_err(|e| e.to_string())?.port();
    tokio::spawn(async move {
        for _ in 0..50 {
            let Ok(Ok((mut s, _))) =
                tokio::time::timeout(Duration::from_secs(60), l.accept()).await
            else {
                return;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body.as_bytes()).await;
            });
        }
    });
    Ok(port)
}

fn drain(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> Vec<String> {
    let mut v = Vec::new();
    while let Ok(r) = rx.try_recv() {
        v.push(r);
    }
    v
}

async fn websockets_elsewhere(fx: &Fx) -> R {
    use std::os::unix::fs::PermissionsExt;
    let (port, mut seen) = recording_server().await?;
    let other = format!("ws://127.0.0.1:{port}");
    // 1. the gateway's own CSP: the page renders, connects, and every
    //    WebSocket elsewhere is refused by Chromium itself
    let web = fx.base.join("web-wsleak");
    std::fs::create_dir_all(&web).map_err(|e| e.to_string())?;
    std::fs::write(
        web.join("index.html"),
        "<!doctype html><title>ws leak test</title><script src=\"/app.js\"></script>",
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(web.join("app.js"), leaky_script(&other)).map_err(|e| e.to_string())?;
    let cfg = fx.base.join("wsleak.toml");
    std::fs::write(
        &cfg,
        format!("[gateway]\nweb_root = \"{}\"\n", web.display()),
    )
    .map_err(|e| e.to_string())?;
    let s = display_server(fx, "l-wsleak", &["--config", &cfg.to_string_lossy()])?;
    let mut l = launch(fx, "l-wsleak", &s, &[])?;
    l.wait_for(CONNECTED, 1, Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await; // past "later"
    let with_csp = drain(&mut seen);
    if !with_csp.is_empty() {
        return Err(format!(
            "with the gateway's CSP, {} requests reached the other listener",
            with_csp.len()
        ));
    }
    drop(l);
    // 2. a display server without a CSP (a forged but trusted control
    //    socket names it): the document is refused, nothing leaks
    let svc = fx.svc.as_ref().ok_or("needs root (a service user)")?;
    let page = page_server(format!(
        "<!doctype html><title>ws leak test</title><script>{}</script>",
        leaky_script(&other)
    ))
    .await?;
    let marker = "e2e-marker-not-a-token-5f3c1a";
    let reply = super::stand_in_mint_reply(
        marker,
        &format!("http://127.0.0.1:{page}"),
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    );
    let dir = fx.base.join("run/l-nocsp");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::os::unix::fs::chown(&dir, Some(svc.uid), Some(svc.gid)).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    let sock = dir.join("c.sock");
    let forger = start_forger(fx, svc, &sock, Some(&reply))?;
    let mut l = launch_on_stand_in(fx, "l-nocsp", &sock, svc.uid)?;
    l.wait_for("navigating", 1, Duration::from_secs(30)).await?;
    // the page's "later" attempt is at 500 ms: judge after 2.5 s, leaks first
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let without = drain(&mut seen);
    let leaked = without
        .iter()
        .filter(|r| r.contains(marker) || r.to_ascii_lowercase().contains("x-screengate-token"))
        .count();
    if leaked > 0 || !without.is_empty() {
        return Err(format!(
            "without a CSP, {} requests reached the other listener, {leaked} with the token",
            without.len()
        ));
    }
    if !l.log_text().contains("lock violation: refused a document")
        || !l.log_text().contains("no Content-Security-Policy")
    {
        return Err("the lock violation does not say the CSP is missing".into());
    }
    drop(l);
    drop(forger);
    println!(
        "      (gateway CSP: page connected, 0 requests elsewhere; no CSP: document refused, 0 requests elsewhere)"
    );
    Ok(())
}

/// A gateway page (under the gateway's own CSP) registers a service
/// worker that answers the next navigation with a document of its own,
/// without a CSP, whose WebSockets go elsewhere. CDP's `Fetch` never sees a
/// navigation a worker answers, so the response-stage CSP check alone
/// does not cover it (the review's reproduction: the armed token reached
/// the other listener and opened a session).
async fn service_worker(fx: &Fx) -> R {
    let (port, mut seen) = recording_server().await?;
    let other = format!("ws://127.0.0.1:{port}");
    let web = fx.base.join("web-sw");
    std::fs::create_dir_all(&web).map_err(|e| e.to_string())?;
    std::fs::write(
        web.join("index.html"),
        "<!doctype html><title>service worker test</title><script src=\"/app.js\"></script>",
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(
        web.join("app.js"),
        "const ws = new WebSocket('wss://' + location.host + '/ws');\n\
         ws.onopen = () => ws.send('hi');\n\
         ws.onmessage = () => {};\n\
         if (sessionStorage.getItem('sw')) {\n\
           try { new Worker('/w.js'); } catch (e) {}\n\
         }\n\
         if (!sessionStorage.getItem('sw')) {\n\
           sessionStorage.setItem('sw', '1');\n\
           navigator.serviceWorker.register('/sw.js')\n\
             .then(() => navigator.serviceWorker.ready)\n\
             .then(() => setTimeout(() => location.reload(), 300))\n\
             .catch(e => console.log('sw: ' + e));\n\
         }\n",
    )
    .map_err(|e| e.to_string())?;
    let doc = format!(
        "<!doctype html><title>from the worker</title><script>{}</script>",
        leaky_script(&other)
    );
    let doc = serde_json::to_string(&doc).map_err(|e| e.to_string())?;
    // a dedicated worker's script, answered by the worker too (its own
    // response has no CSP, so nothing limits the worker's connections)
    let worker = format!("try {{ new WebSocket('{other}/sw-worker'); }} catch (e) {{}}");
    let worker = serde_json::to_string(&worker).map_err(|e| e.to_string())?;
    std::fs::write(
        web.join("sw.js"),
        format!(
            "self.addEventListener('install', () => self.skipWaiting());\n\
             self.addEventListener('activate', e => e.waitUntil(self.clients.claim()));\n\
             self.addEventListener('fetch', e => {{\n\
               if (e.request.mode === 'navigate') {{\n\
                 e.respondWith(new Response({doc}, {{headers: {{'Content-Type': 'text/html'}}}}));\n\
               }} else if (new URL(e.request.url).pathname === '/w.js') {{\n\
                 e.respondWith(new Response({worker}, {{headers: {{'Content-Type': 'text/javascript'}}}}));\n\
               }}\n\
             }});\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let cfg = fx.base.join("sw.toml");
    std::fs::write(
        &cfg,
        format!("[gateway]\nweb_root = \"{}\"\n", web.display()),
    )
    .map_err(|e| e.to_string())?;
    let s = display_server(fx, "l-sw", &["--config", &cfg.to_string_lossy()])?;
    let mut l = launch(fx, "l-sw", &s, &[])?;
    l.wait_for(CONNECTED, 1, Duration::from_secs(30)).await?;
    // registration, the reload at +300 ms, and the leaky page's "later" at
    // +500 ms: judge after 4 s
    tokio::time::sleep(Duration::from_secs(4)).await;
    let reached = drain(&mut seen);
    let leaked = reached
        .iter()
        .filter(|r| r.to_ascii_lowercase().contains("x-screengate-token"))
        .count();
    if !reached.is_empty() {
        return Err(format!(
            "{} requests from a worker-served document reached the other listener, {leaked} with the token",
            reached.len()
        ));
    }
    drop(l);
    println!("      (a page with a service worker: 0 requests elsewhere)");
    Ok(())
}

fn status_uid(pid: i32) -> Option<u32> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    st.lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|u| u.parse().ok())
}

async fn sandboxed(fx: &Fx) -> R {
    let (d, _) = fx.display.as_ref().ok_or("needs root (a display user)")?;
    let s = display_server(fx, "l-sandbox", &[])?;
    let mut l = launch(fx, "l-sandbox", &s, &[])?;
    l.wait_for(FIRST_MESSAGE, 1, Duration::from_secs(30))
        .await?;
    if l.log_text().contains("no-sandbox") {
        return Err("the launcher ran with --no-sandbox".into());
    }
    let launcher = l.pid().as_raw();
    let mut all = vec![launcher];
    all.extend(descendants(launcher));
    if all.len() < 3 {
        return Err("too few Chromium processes under the launcher".into());
    }
    let wrong: Vec<(i32, Option<u32>)> = all
        .iter()
        .map(|p| (*p, status_uid(*p)))
        .filter(|(_, u)| *u != Some(d.uid))
        .collect();
    if !wrong.is_empty() {
        return Err(format!(
            "processes not running as the display uid {}: {wrong:?}",
            d.uid
        ));
    }
    // the sandbox puts renderers in their own user namespace
    let ns = |p: i32| std::fs::read_link(format!("/proc/{p}/ns/user")).ok();
    let own = ns(launcher).ok_or("cannot read the launcher's user namespace")?;
    let sandboxed = all
        .iter()
        .filter(|p| ns(**p).is_some_and(|n| n != own))
        .count();
    if sandboxed == 0 {
        return Err("no Chromium process is in a sandbox user namespace".into());
    }
    println!(
        "      ({} processes as uid {}, {sandboxed} in sandbox namespaces)",
        all.len(),
        d.uid
    );
    Ok(())
}

/// A trusted (service-uid) stand-in control socket whose reply line is
/// longer than the launcher's bound: refused, retried, never used.
async fn bounded_reply(fx: &Fx) -> R {
    use std::os::unix::fs::PermissionsExt;
    let svc = fx.svc.as_ref().ok_or("needs root (a service user)")?;
    let dir = fx.base.join("run/l-bigreply");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::os::unix::fs::chown(&dir, Some(svc.uid), Some(svc.gid)).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    let sock = dir.join("c.sock");
    // a well-formed mint reply, padded past 16 KiB (too long for the
    // protocol crate to encode, so by hand)
    let reply = serde_json::json!({
        "ok": true, "token": "x", "header": "X-Screengate-Token",
        "url": format!("https://localhost:1/{}", "p".repeat(20_000)),
        "ws_url": "wss://localhost:1/ws", "origin": "https://localhost:1",
        "spki_pin": "AAAA", "channel": "display", "token_id": "0".repeat(64),
        "expires_in_ms": 30000
    })
    .to_string();
    let forger = start_forger(fx, svc, &sock, Some(&reply))?;
    let mut l = launch_on_stand_in(fx, "l-bigreply", &sock, svc.uid)?;
    l.wait_for(
        "no complete reply line within 16384 bytes",
        2,
        Duration::from_secs(10),
    )
    .await?;
    if l.log_text().contains("Chromium started") {
        return Err("Chromium was started on an oversized reply".into());
    }
    drop(l);
    drop(forger);
    Ok(())
}

async fn sigterm(fx: &Fx) -> R {
    let s = display_server(fx, "l-term", &[])?;
    let mut l = launch(fx, "l-term", &s, &[])?;
    l.wait_for(CONNECTED, 1, Duration::from_secs(30)).await?;
    let profile = profile_of(&l).ok_or("no profile path in the log")?;
    let browser = descendants(l.pid().as_raw());
    if !profile.is_dir() || browser.is_empty() {
        return Err("profile or browser missing before SIGTERM".into());
    }
    let (st, took) = tokio::task::block_in_place(|| l.terminate(Duration::from_secs(8)))
        .map_err(|e| format!("{e:#}"))?;
    if !st.success() {
        return Err(format!("launcher exit status {st}"));
    }
    if profile.exists() {
        return Err(format!("profile {} not removed", profile.display()));
    }
    let alive: Vec<_> = browser
        .iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| !s.contains(") Z"))
        })
        .collect();
    if !alive.is_empty() {
        return Err(format!("browser processes still alive: {alive:?}"));
    }
    println!(
        "      (SIGTERM → exit 0 in {} ms, profile removed)",
        took.as_millis()
    );
    Ok(())
}

async fn popups(fx: &Fx) -> R {
    let web = fx.base.join("web-popup");
    std::fs::create_dir_all(&web).map_err(|e| e.to_string())?;
    std::fs::write(
        web.join("index.html"),
        "<!doctype html><title>popup test</title><script src=\"/app.js\"></script>",
    )
    .map_err(|e| e.to_string())?;
    // once connected, try to open a second window on the same origin
    std::fs::write(
        web.join("app.js"),
        "const ws = new WebSocket('wss://' + location.host + '/ws');\n\
         ws.onopen = () => { ws.send('hi'); window.open('/', '_blank'); };\n",
    )
    .map_err(|e| e.to_string())?;
    let cfg = fx.base.join("popup.toml");
    std::fs::write(
        &cfg,
        format!("[gateway]\nweb_root = \"{}\"\n", web.display()),
    )
    .map_err(|e| e.to_string())?;
    let s = display_server(fx, "l-popup", &["--config", &cfg.to_string_lossy()])?;
    // Chromium's own popup blocker would stop window.open without a user
    // gesture; turn it off so the launcher's defence is what is tested.
    let mut l = launch(
        fx,
        "l-popup",
        &s,
        &["--chromium-arg=--disable-popup-blocking".to_owned()],
    )?;
    l.wait_for(CONNECTED, 1, Duration::from_secs(30)).await?;
    l.wait_for("closing a new window", 1, Duration::from_secs(10))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_prefix_matches_a_real_token_layout() {
        let p = token_prefix("x run=RunId(0a0b0c0d) y").unwrap();
        assert_eq!(
            p,
            URL_SAFE_NO_PAD
                .encode([1u8, 0x0a, 0x0b, 0x0c, 0x0d])
                .get(..6)
                .unwrap()
        );
        let tok = format!("{p}{}", "A".repeat(104));
        assert!(holds_token(format!("..{tok}..").as_bytes(), &p));
        assert!(!holds_token(format!("..{p}short").as_bytes(), &p));
    }
}

/// A fake `NOTIFY_SOCKET` the launcher's uid (the display user) can send to.
fn notify_socket(fx: &Fx, name: &str) -> Result<(tokio::net::UnixDatagram, PathBuf), String> {
    use std::os::unix::fs::PermissionsExt;
    let path = fx.base.join(format!("{name}.notify"));
    let _ = std::fs::remove_file(&path);
    let rx = tokio::net::UnixDatagram::bind(&path).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| e.to_string())?;
    Ok((rx, path))
}

/// The notifications received so far, split into their assignments.
#[derive(Default, Debug)]
struct Notes {
    statuses: Vec<String>,
    ready: usize,
    watchdog: usize,
    stopping: usize,
}

impl Notes {
    fn add(&mut self, note: &str) {
        for line in note.lines() {
            match line {
                "READY=1" => self.ready += 1,
                "WATCHDOG=1" => self.watchdog += 1,
                "STOPPING=1" => self.stopping += 1,
                _ => {
                    if let Some(st) = line.strip_prefix("STATUS=") {
                        self.statuses.push(st.to_owned());
                    }
                }
            }
        }
    }
}

fn server_accepted(log: &str) -> bool {
    log.contains("\"accepted\"") || log.contains("event=accepted")
}

/// SIGTERM: STOPPING=1 arrives and the launcher exits 0 (waited for by
/// pid, not signalled twice).
async fn stops_on_sigterm(
    l: &mut LauncherProc,
    rx: &tokio::net::UnixDatagram,
    notes: &mut Notes,
) -> R {
    kill(l.pid(), Signal::SIGTERM).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(n) = super::stream::next_note(rx, Duration::from_millis(100)).await {
            notes.add(&n);
        }
        if let Some(st) = l.child.try_wait().map_err(|e| e.to_string())? {
            break st;
        }
        if Instant::now() > deadline {
            return Err("the launcher did not exit within 10 s of SIGTERM".into());
        }
    };
    // what it sent before exiting is already queued
    while let Some(n) = super::stream::next_note(rx, Duration::from_millis(50)).await {
        notes.add(&n);
    }
    if notes.stopping != 1 || !status.success() {
        return Err(format!(
            "after SIGTERM: {} STOPPING=1, exit {status}",
            notes.stopping
        ));
    }
    Ok(())
}

/// READY=1 comes only once the display's session is open and its first
/// message arrived (the server logged the session, the launcher the
/// message, both before READY was read); STATUS lines say what it waited
/// for; WATCHDOG=1 is pinged; SIGTERM → STOPPING=1 and exit 0.
async fn systemd_ready(fx: &Fx) -> R {
    let name = "l-notify";
    let (rx, path) = notify_socket(fx, name)?;
    let s = display_server(fx, name, &[])?;
    let mut l = launch_env(
        fx,
        name,
        &s,
        &[],
        &[
            ("NOTIFY_SOCKET", path.as_path()),
            ("WATCHDOG_USEC", Path::new("2000000")),
        ],
    )?;
    let mut notes = Notes::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while notes.ready == 0 {
        if Instant::now() > deadline {
            return Err(format!("no READY=1 within 30 s; got {notes:?}"));
        }
        if let Ok(Some(st)) = l.child.try_wait() {
            return Err(format!("the launcher exited ({st}) before READY=1"));
        }
        let Some(n) = super::stream::next_note(&rx, Duration::from_millis(500)).await else {
            continue;
        };
        // The logs as they are when READY=1 is read: both events must
        // already be in them.
        let (server_log, launcher_log) = (s.log_text(), l.log_text());
        notes.add(&n);
        if notes.ready > 0 {
            if !server_accepted(&server_log) {
                return Err("READY=1 before the server logged the display's session".into());
            }
            if !launcher_log.contains(FIRST_MESSAGE) {
                return Err("READY=1 before the display's first message arrived".into());
            }
        }
    }
    let waited = notes
        .statuses
        .iter()
        .any(|st| st == "waiting for the display's first message");
    let connected = notes
        .statuses
        .iter()
        .any(|st| st.starts_with("display connected"));
    if !waited || !connected {
        return Err(format!("STATUS lines missing: {:?}", notes.statuses));
    }
    // WATCHDOG_USEC=2 s: a ping every second
    let t0 = Instant::now();
    while notes.watchdog == 0 && t0.elapsed() < Duration::from_secs(5) {
        if let Some(n) = super::stream::next_note(&rx, Duration::from_secs(1)).await {
            notes.add(&n);
        }
    }
    if notes.watchdog == 0 {
        return Err("no WATCHDOG=1 within 5 s with WATCHDOG_USEC=2000000".into());
    }
    stops_on_sigterm(&mut l, &rx, &mut notes).await?;
    if notes.ready != 1 {
        return Err(format!("READY=1 sent {} times", notes.ready));
    }
    println!(
        "      (READY=1 after the session and its first message; STATUS: {:?})",
        notes.statuses
    );
    Ok(())
}

/// The gateway refuses the display (its backend is down: 503 on every
/// handshake): no READY=1 while the page retries, and STATUS says why;
/// SIGTERM still → STOPPING=1 and exit 0.
async fn systemd_not_ready(fx: &Fx) -> R {
    const REFUSED: &str = "the gateway refused the display's handshake";
    let name = "l-notready";
    let (rx, path) = notify_socket(fx, name)?;
    // a backend socket path in a directory the server may read, with
    // nothing listening on it
    let dir = fx.base.join("run/l-notready-backend");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    if let Some(u) = &fx.svc {
        std::os::unix::fs::chown(&dir, Some(u.uid), Some(u.gid)).map_err(|e| e.to_string())?;
    }
    let backend = format!("unix:{}", dir.join("down.sock").display());
    let s = display_server(fx, name, &["--backend", &backend])?;
    let mut l = launch_env(fx, name, &s, &[], &[("NOTIFY_SOCKET", path.as_path())])?;
    let mut notes = Notes::default();
    // bounded: until the page was refused three times (it retries within
    // 2 s), then two more seconds of listening
    let deadline = Instant::now() + Duration::from_secs(40);
    while l.log_text().matches(REFUSED).count() < 3 {
        if Instant::now() > deadline {
            return Err(format!(
                "the display was not refused 3 times within 40 s; got {notes:?}"
            ));
        }
        if let Ok(Some(st)) = l.child.try_wait() {
            return Err(format!("the launcher exited ({st})"));
        }
        if let Some(n) = super::stream::next_note(&rx, Duration::from_millis(200)).await {
            notes.add(&n);
        }
    }
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(2) {
        if let Some(n) = super::stream::next_note(&rx, Duration::from_millis(200)).await {
            notes.add(&n);
        }
    }
    if notes.ready != 0 {
        return Err(format!(
            "READY=1 while the gateway refused the display: {notes:?}"
        ));
    }
    if server_accepted(&s.log_text()) {
        return Err("the server accepted a session: the backend was not down".into());
    }
    if !s.log_text().contains("backend_unavailable") {
        return Err("the server did not record the backend as unavailable".into());
    }
    // Each refused handshake left its token unconsumed: the launcher
    // revoked it rather than let it live out its TTL (30 s, so none of
    // these is a half-TTL re-arm).
    let revoked = ids_of(&s.log_text(), "revoke");
    if revoked.len() < 2 {
        return Err(format!(
            "{} tokens revoked after {} refusals",
            revoked.len(),
            l.log_text().matches(REFUSED).count()
        ));
    }
    let why = "waiting for the display's first message: the gateway refused its handshake (503)";
    if !notes.statuses.iter().any(|st| st == why) {
        return Err(format!("no STATUS saying why: {:?}", notes.statuses));
    }
    stops_on_sigterm(&mut l, &rx, &mut notes).await?;
    if notes.ready != 0 {
        return Err("READY=1 on the way out".into());
    }
    println!(
        "      (refused {} times, {} refused tokens revoked, no READY=1; STATUS: {why:?})",
        l.log_text().matches(REFUSED).count(),
        revoked.len()
    );
    Ok(())
}

/// `screengate rotate` and a reload on a live display: the server closes
/// the session and kills the old tokens, and the browser (which trusts the
/// old pin only) cannot reach the new certificate. The launcher sees the
/// new pin in its next mint, revokes that unused token, and starts a new
/// browser life with the new pin; the display connects again by itself.
async fn follows_rotation(fx: &Fx) -> R {
    let name = "l-rotate";
    let s = display_server(fx, name, &[])?;
    let mut l = launch(fx, name, &s, &[])?;
    l.wait_for(FIRST_MESSAGE, 1, Duration::from_secs(30))
        .await?;
    let state = fx.base.join(format!("state-{name}"));
    let mut cmd = std::process::Command::new(&fx.bin);
    cmd.args(["rotate", "--state-dir"]).arg(&state);
    if let Some(u) = &fx.svc {
        cmd.args(["--user", &u.user]);
    }
    let out = cmd.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("rotate: {}", String::from_utf8_lossy(&out.stderr)));
    }
    kill(s.pid(), Signal::SIGHUP).map_err(|e| e.to_string())?;
    l.wait_for(
        "the server's certificate changed",
        1,
        Duration::from_secs(40),
    )
    .await?;
    l.wait_for(FIRST_MESSAGE, 2, Duration::from_secs(40))
        .await?;
    if !s.log_text().contains("identity_rotated") {
        return Err("the server's reload did not see the new identity".into());
    }
    println!(
        "      (rotated, reloaded; the launcher restarted the browser with the new pin and the display got a message again)"
    );
    Ok(())
}
