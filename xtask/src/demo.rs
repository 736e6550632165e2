//! `cargo xtask demo`: the main job on the embedded default, step by step:
//! a server on the built-in demo backend, a token minted over the control
//! socket, a TLS client connected through the guard exchanging messages;
//! then, when Chromium is installed, `screengate-launch` driving headless
//! Chromium to the same gateway and a screenshot of the connected page.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use futures_util::StreamExt;
use screengate_tests::{Request, echo, handshake};

use crate::proc::{LauncherProc, ServerProc, build_bins, root};

pub fn run() -> Result<bool> {
    println!("[1/5] building screengate");
    let bins = build_bins()?;
    let base = root().join("target/demo");
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base)?;
    // traversable by the service user the server drops to when we are root
    std::fs::set_permissions(&base, std::os::unix::fs::PermissionsExt::from_mode(0o711))?;
    let state = base.join("state");
    let control = base.join("run/control.sock");
    let log = base.join("server.log");
    // screengate refuses to run as root; as root the demo starts it with
    // --user nobody (it drops to that user before reading keys or binding)
    // and lets root (this demo and the launcher) mint.
    let root_user = nix::unistd::geteuid().is_root();
    let mut args = vec!["--backend", "demo"];
    if root_user {
        args.extend(["--user", "nobody", "--allow-uid", "0"]);
    }
    println!(
        "[2/5] starting `screengate serve {}` (state {}, log {})",
        args.join(" "),
        state.display(),
        log.display()
    );
    let mut server = ServerProc::start(&bins.join("screengate"), &state, &control, &log, &args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let ok = rt.block_on(async {
        println!("[3/5] minting a token over the control socket {}", control.display());
        let (token, reply) = screengate_tests::mint(&control).await.map_err(|e| anyhow!(e))?;
        let origin = reply["origin"].as_str().context("origin")?.to_owned();
        let (addr, pin) = screengate_tests::gateway_of(&reply).map_err(|e| anyhow!(e))?;
        let port = addr.port();
        println!(
            "      ok: token of {} chars (not shown), header {}, expires in {} ms, gateway {}, pin {}",
            token.len(),
            reply["header"],
            reply["expires_in_ms"],
            reply["ws_url"],
            pin
        );
        println!("[4/5] connecting wss://localhost:{port}/ws with Origin {origin} and the token header");
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let (resp, ws) = handshake(addr, pin, &Request::display(port, Some(&token))).await.map_err(|e| anyhow!(e))?;
        let mut ws = ws.ok_or_else(|| anyhow!("handshake refused with {}", resp.status))?;
        println!("      101 Switching Protocols: authenticated session open");
        println!("[5/5] exchanging messages through the guard");
        for msg in ["hello from the display", "{\"tap\":\"card-1\"}"] {
            let got = echo(&mut ws, msg).await.map_err(|e| anyhow!(e))?;
            println!("      sent {msg:?} -> received {got:?}");
        }
        if let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            println!("      status from the demo backend: {}", m.to_text().unwrap_or("?"));
        }
        let (replay, _) = handshake(addr, pin, &Request::display(port, Some(&token))).await.map_err(|e| anyhow!(e))?;
        println!("      replaying the same token: {} (refused: tokens are single use)", replay.status);
        anyhow::Ok(replay.status == 403)
    });
    let ok = ok? && rt.block_on(browser(&base, &server))?;
    let (status, took) = server.terminate(Duration::from_secs(6))?;
    println!("stopped the server ({status}, {took:?} after SIGTERM)");
    println!("{}", if ok { "demo: ok" } else { "demo: FAILED" });
    Ok(ok)
}

/// The launcher half: headless Chromium through the gateway, screenshot.
async fn browser(base: &std::path::Path, server: &ServerProc) -> Result<bool> {
    let present = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .any(|p| std::path::Path::new(p).is_file());
    if !present {
        println!(
            "[browser] Chromium is not installed, so the display ran as the built-in client above."
        );
        println!(
            "          To see the real display path: apt-get install chromium   (then run cargo xtask demo again)"
        );
        return Ok(true);
    }
    let bins = build_bins()?;
    let shot = base.join("display.png");
    let log = base.join("launcher.log");
    println!(
        "[browser] starting screengate-launch --headless (Chromium over a CDP pipe; token set as a header on its tab only)"
    );
    // the server's uid, named rather than inferred from the socket
    // directory's owner (which the launcher refuses under a shared /tmp)
    let server_uid = if nix::unistd::geteuid().is_root() {
        nix::unistd::User::from_name("nobody")?
            .map(|u| u.uid.as_raw())
            .ok_or_else(|| anyhow!("no user `nobody`"))?
    } else {
        nix::unistd::geteuid().as_raw()
    };
    let mut l = LauncherProc::start(
        &bins.join("screengate-launch"),
        &server.control,
        &log,
        &[
            format!("--screenshot={}", shot.display()),
            format!("--server-uid={server_uid}"),
        ],
    )?;
    let r = async {
        let took = l.wait_for("display received its first message", 1, Duration::from_secs(30)).await.map_err(|e| anyhow!(e))?;
        println!("          the page connected through the guard and got its first message {} ms after launch", took.as_millis());
        l.wait_for("screenshot written", 1, Duration::from_secs(10)).await.map_err(|e| anyhow!(e))?;
        println!("          screenshot of the connected display: {}", shot.display());
        anyhow::Ok(())
    }
    .await;
    let stop = tokio::task::block_in_place(|| l.terminate(Duration::from_secs(8)));
    if let Err(e) = r {
        println!("          launcher log: {}", log.display());
        return Err(e);
    }
    let (st, took) = stop?;
    println!("          stopped the launcher ({st}, {took:?}): browser closed, profile removed");
    Ok(true)
}
