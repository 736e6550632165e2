//! `cargo xtask demo`: the main job on the embedded default, step by step:
//! a server on the built-in demo backend, a token minted over the control
//! socket, a TLS client connected through the guard exchanging messages.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use futures_util::StreamExt;
use screengate_identity::Pin;
use screengate_tests::{Request, echo, handshake};

use crate::proc::{ServerProc, build_bins, root};

pub fn run() -> Result<bool> {
    println!("[1/5] building screengate");
    let bins = build_bins()?;
    let base = root().join("target/demo");
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base)?;
    std::fs::set_permissions(&base, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let state = base.join("state");
    let control = base.join("control.sock");
    let log = base.join("server.log");
    println!(
        "[2/5] starting `screengate serve --backend demo` (state {}, log {})",
        state.display(),
        log.display()
    );
    let mut server = ServerProc::start(
        &bins.join("screengate"),
        &state,
        &control,
        &log,
        &["--backend", "demo"],
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let ok = rt.block_on(async {
        println!("[3/5] minting a token over the control socket {}", control.display());
        let (token, reply) = screengate_tests::mint(&control).await.map_err(|e| anyhow!(e))?;
        let origin = reply["origin"].as_str().context("origin")?.to_owned();
        let port: u16 = origin.rsplit(':').next().and_then(|p| p.parse().ok()).context("port")?;
        let pin = reply["spki_pin"].as_str().and_then(Pin::parse).context("pin")?;
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
    let (status, took) = server.terminate(Duration::from_secs(6))?;
    println!("stopped the server ({status}, {took:?} after SIGTERM)");
    let ok = ok?;
    println!("{}", if ok { "demo: ok" } else { "demo: FAILED" });
    Ok(ok)
}
