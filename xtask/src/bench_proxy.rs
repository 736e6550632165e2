//! `cargo xtask bench proxy`: the same WebSocket echo backend on a Unix
//! socket, reached three ways in one run on this machine:
//!
//! 1. direct — the client to the backend, no TLS, no auth (lower bound);
//! 2. nginx — Debian's nginx terminating TLS 1.3 and proxying the upgrade
//!    (what a device maker would otherwise put in front), when installed;
//! 3. screengate — TLS, Host/Origin/token guard and proxy.
//!
//! Connect time (p50/p99), echo round trip for 256 B and 16 KiB
//! (p50/p99/p99.9), throughput with 1 and 8 connections at 256 B and 16 KiB, window 32, 10 s each, peak RSS of the
//! proxy, release binary sizes. Prints a table and writes
//! `target/bench/results.json`. Numbers only: nothing here is asserted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use screengate_identity::Pin;
use screengate_tests::Request;
use serde_json::json;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::proc::{ServerProc, build_release, target_dir};

const CONNECTS: usize = 60;
const RTT_SMALL: usize = 2000;
const RTT_LARGE: usize = 500;
const THROUGHPUT_SECS: u64 = 10;
/// Message sizes of the throughput grid: a JSON directive, a camera frame.
const THROUGHPUT_SIZES: [usize; 2] = [256, 16 * 1024];
/// Connections of the throughput grid.
const THROUGHPUT_CONNS: [usize; 2] = [1, 8];
/// Messages each client keeps in flight (the window).
const PIPELINE: usize = 32;

fn pct(v: &[Duration], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).map(|d| d.as_secs_f64() * 1e6).unwrap_or(0.0)
}

fn rss_kb(pids: &[u32], field: &str) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(&format!("{field}:")).map(str::to_owned))
                .and_then(|v| {
                    v.split_whitespace()
                        .next()
                        .and_then(|n| n.parse::<u64>().ok())
                })
        })
        .sum()
}

/// Waits for the next text/binary message that is not a demo status.
async fn next_echo<S>(ws: &mut S) -> Result<usize>
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => return Ok(b.len()),
            Some(Ok(Message::Text(t))) if !t.as_str().starts_with("{\"type\":\"status\"") => {
                return Ok(t.len());
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(anyhow!("receive: {e}")),
            None => bail!("closed"),
        }
    }
}

async fn rtts<S>(ws: &mut S, size: usize, n: usize) -> Result<Vec<Duration>>
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    let payload = vec![b'x'; size];
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        ws.send(Message::binary(payload.clone())).await?;
        next_echo(ws).await?;
        v.push(t0.elapsed());
    }
    Ok(v)
}

/// Pipelined echo for a fixed time; returns messages echoed.
async fn pump<S>(mut ws: S, size: usize, until: Instant) -> Result<u64>
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    let payload = vec![b'y'; size];
    for _ in 0..PIPELINE {
        ws.send(Message::binary(payload.clone())).await?;
    }
    let mut done = 0u64;
    let mut in_flight = PIPELINE;
    while in_flight > 0 {
        next_echo(&mut ws).await?;
        done += 1;
        in_flight -= 1;
        if Instant::now() < until {
            ws.send(Message::binary(payload.clone())).await?;
            in_flight += 1;
        }
    }
    let _ = SinkExt::close(&mut ws).await;
    Ok(done)
}

type Boxed = tokio_tungstenite::WebSocketStream<Box<dyn Io>>;
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// How to open one connection on a path.
#[derive(Clone)]
enum Target {
    Direct(PathBuf),
    Tls {
        addr: SocketAddr,
        pin: Pin,
        control: Option<PathBuf>,
    },
}

async fn open(t: &Target) -> Result<(Boxed, Duration)> {
    match t {
        Target::Direct(p) => {
            let t0 = Instant::now();
            let s = tokio::net::UnixStream::connect(p).await?;
            let io: Box<dyn Io> = Box::new(s);
            let (ws, _) = tokio_tungstenite::client_async("ws://localhost/", io).await?;
            Ok((ws, t0.elapsed()))
        }
        Target::Tls { addr, pin, control } => {
            let token = match control {
                Some(c) => Some(mint_retry(c).await?),
                None => None,
            };
            let req = Request::display(addr.port(), token.as_deref());
            let t0 = Instant::now();
            let (resp, ws) = screengate_tests::handshake(*addr, *pin, &req)
                .await
                .map_err(|e| anyhow!(e))?;
            let el = t0.elapsed();
            let ws = ws.ok_or_else(|| anyhow!("upgrade refused: {}", resp.status))?;
            // re-box the TLS stream so every path has one type
            let inner: Box<dyn Io> = Box::new(ws.into_inner());
            let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                inner,
                tokio_tungstenite::tungstenite::protocol::Role::Client,
                None,
            )
            .await;
            Ok((ws, el))
        }
    }
}

async fn mint_retry(control: &Path) -> Result<String> {
    loop {
        let v = screengate_tests::control(control, r#"{"op":"mint"}"#)
            .await
            .map_err(|e| anyhow!(e))?;
        if let Some(t) = v["token"].as_str() {
            return Ok(t.to_owned());
        }
        let wait = v["retry_after_ms"]
            .as_u64()
            .ok_or_else(|| anyhow!("mint refused: {v}"))?;
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

async fn measure(name: &str, t: &Target, pids: &[u32]) -> Result<serde_json::Value> {
    let mut connects = Vec::new();
    for _ in 0..CONNECTS {
        let (mut ws, d) = open(t).await?;
        connects.push(d);
        let _ = ws.close(None).await;
    }
    let (mut ws, _) = open(t).await?;
    let small = rtts(&mut ws, 256, RTT_SMALL).await?;
    let large = rtts(&mut ws, 16 * 1024, RTT_LARGE).await?;
    let _ = ws.close(None).await;
    let mut tput = Vec::new();
    for (size, conns) in THROUGHPUT_SIZES
        .iter()
        .flat_map(|s| THROUGHPUT_CONNS.iter().map(move |c| (*s, *c)))
    {
        let mut socks = Vec::new();
        for _ in 0..conns {
            socks.push(open(t).await?.0);
        }
        let until = Instant::now() + Duration::from_secs(THROUGHPUT_SECS);
        let t0 = Instant::now();
        let handles: Vec<_> = socks
            .into_iter()
            .map(|s| tokio::spawn(pump(s, size, until)))
            .collect();
        let mut msgs = 0;
        for h in handles {
            msgs += h.await??;
        }
        let secs = t0.elapsed().as_secs_f64();
        tput.push((
            size,
            conns,
            msgs as f64 / secs,
            msgs as f64 * size as f64 / secs / 1e6,
        ));
    }
    let peak = rss_kb(pids, "VmHWM");
    let row = json!({
        "path": name,
        "connect_us": {"p50": pct(&connects, 0.5), "p99": pct(&connects, 0.99)},
        "rtt_256_us": {"p50": pct(&small, 0.5), "p99": pct(&small, 0.99), "p999": pct(&small, 0.999)},
        "rtt_16k_us": {"p50": pct(&large, 0.5), "p99": pct(&large, 0.99), "p999": pct(&large, 0.999)},
        "throughput": tput.iter().map(|(sz, c, m, mb)| json!({"bytes": sz, "connections": c, "msgs_per_s": m, "mb_per_s": mb})).collect::<Vec<_>>(),
        "peak_rss_kib": if pids.is_empty() { serde_json::Value::Null } else { json!(peak) },
    });
    Ok(row)
}

fn nginx_conf(dir: &Path, port: u16, state: &Path, backend: &Path) -> String {
    format!(
        "worker_processes auto;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
           upstream backend {{ server unix:{b}; }}\n\
           server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_protocols TLSv1.3;\n\
             ssl_certificate {s}/current/server.crt;\n    ssl_certificate_key {s}/current/server.key;\n\
             location /ws {{\n      proxy_pass http://backend/;\n      proxy_http_version 1.1;\n\
               proxy_set_header Upgrade $http_upgrade;\n      proxy_set_header Connection \"upgrade\";\n\
               proxy_read_timeout 300s;\n      proxy_buffering off;\n    }}\n  }}\n}}\n",
        d = dir.display(),
        b = backend.display(),
        s = state.display(),
    )
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

pub fn run() -> Result<bool> {
    println!("==> bench proxy: building release binaries");
    build_release(&["screengate-server"])?;
    let target = target_dir();
    let bin = target.join("release/screengate");
    let base = std::env::temp_dir().join(format!("screengate-bench-proxy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(base.join("backend"))?;
    std::fs::set_permissions(&base, std::os::unix::fs::PermissionsExt::from_mode(0o711))?;
    let root_user = nix::unistd::geteuid().is_root();
    let backend_sock = base.join("backend/echo.sock");
    let mut backend_cmd = if root_user {
        let nobody = nix::unistd::User::from_name("nobody")?.context("no user nobody")?;
        std::os::unix::fs::chown(
            base.join("backend"),
            Some(nobody.uid.as_raw()),
            Some(nobody.gid.as_raw()),
        )?;
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid",
            "nobody",
            "--regid",
            &nobody.gid.as_raw().to_string(),
            "--clear-groups",
            "--",
        ])
        .arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    let mut backend: Child = backend_cmd
        .args(["demo-backend", "--unix"])
        .arg(&backend_sock)
        .stderr(Stdio::null())
        .spawn()
        .context("start the echo backend")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&backend_sock).is_err() {
        if Instant::now() > deadline {
            let _ = backend.kill();
            bail!("echo backend did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // 16 throughput connections need more than the default 8 session slots.
    let cfg = base.join("bench.toml");
    std::fs::write(&cfg, "[gateway]\nmax_sessions = 32\n")?;
    let mut extra = vec![
        "--backend".to_owned(),
        format!("unix:{}", backend_sock.display()),
        "--config".to_owned(),
        cfg.display().to_string(),
    ];
    if root_user {
        extra.extend([
            "--user".into(),
            "nobody".into(),
            "--allow-uid".into(),
            "0".into(),
        ]);
    }
    let extra_ref: Vec<&str> = extra.iter().map(String::as_str).collect();
    let state = base.join("state");
    // info, not the e2e's debug: logging every frame-level event is not what a device runs
    let info = PathBuf::from("info");
    let server = ServerProc::start_env(
        &bin,
        &state,
        &base.join("run/c.sock"),
        &base.join("server.log"),
        &extra_ref,
        &[("RUST_LOG", info.as_path())],
    )?;
    let idle_rss = rss_kb(&[server.child.id()], "VmRSS");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let (_, v) = screengate_tests::mint(&server.control)
            .await
            .map_err(|e| anyhow!(e))?;
        let (gateway, pin) = screengate_tests::gateway_of(&v).map_err(|e| anyhow!(e))?;
        let port = gateway.port();
        let mut rows = Vec::new();
        println!("  direct …");
        rows.push(measure("direct", &Target::Direct(backend_sock.clone()), &[]).await?);
        // nginx with the same device certificate (root reads the key)
        let nginx = Command::new("nginx")
            .arg("-v")
            .output()
            .is_ok_and(|o| o.status.success());
        if nginx && root_user {
            let ndir = base.join("nginx");
            std::fs::create_dir_all(&ndir)?;
            let nport = free_port()?;
            std::fs::write(
                ndir.join("nginx.conf"),
                nginx_conf(&ndir, nport, &state, &backend_sock),
            )?;
            let mut ngx = Command::new("nginx")
                .args(["-e", &ndir.join("error.log").display().to_string(), "-p"])
                .arg(&ndir)
                .arg("-c")
                .arg(ndir.join("nginx.conf"))
                .stderr(Stdio::null())
                .spawn()
                .context("start nginx")?;
            let naddr = SocketAddr::from(([127, 0, 0, 1], nport));
            let up = Instant::now();
            while tokio::net::TcpStream::connect(naddr).await.is_err()
                && up.elapsed() < Duration::from_secs(10)
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let mut pids = vec![ngx.id()];
            pids.extend(
                crate::proc::descendants(i32::try_from(ngx.id()).unwrap_or(0))
                    .into_iter()
                    .filter_map(|p| u32::try_from(p).ok()),
            );
            println!("  nginx …");
            let r = measure(
                "nginx",
                &Target::Tls {
                    addr: naddr,
                    pin,
                    control: None,
                },
                &pids,
            )
            .await;
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(ngx.id()).unwrap_or(0)),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = ngx.wait();
            rows.push(r?);
        } else {
            println!(
                "  nginx: skipped ({})",
                if nginx {
                    "needs root to read the device key"
                } else {
                    "not installed: apt-get install nginx"
                }
            );
        }
        println!("  screengate …");
        let saddr = SocketAddr::from(([127, 0, 0, 1], port));
        rows.push(
            measure(
                "screengate",
                &Target::Tls {
                    addr: saddr,
                    pin,
                    control: Some(server.control.clone()),
                },
                &[server.child.id()],
            )
            .await?,
        );
        anyhow::Ok(rows)
    });
    drop(server);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(backend.id()).unwrap_or(0)),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = backend.wait();
    let rows = result?;
    let sizes: Vec<_> = ["screengate", "screengate-launch", "screengate-client"]
        .iter()
        .filter_map(|b| {
            std::fs::metadata(target.join("release").join(b))
                .ok()
                .map(|m| json!({"binary": b, "bytes": m.len()}))
        })
        .collect();
    let cells = THROUGHPUT_SIZES.len() * THROUGHPUT_CONNS.len();
    let tput =
        |r: &serde_json::Value, i: usize| r["throughput"][i]["msgs_per_s"].as_f64().unwrap_or(0.0);
    let peer = rows.iter().find(|r| r["path"] == "nginx").cloned();
    let direct = rows.iter().find(|r| r["path"] == "direct").cloned();
    let ratio = |v: f64, base: Option<&serde_json::Value>, i: usize| match base {
        Some(b) if tput(b, i) > 0.0 => format!("{:.2}x", v / tput(b, i)),
        _ => "—".into(),
    };
    println!(
        "\n| path | connect p50/p99 µs | RTT 256 B p50/p99 µs | RTT 16 KiB p50/p99 µs | peak RSS KiB |"
    );
    println!("|---|---|---|---|---|");
    for r in &rows {
        let f = |k: &str, q: &str| r[k][q].as_f64().unwrap_or(0.0);
        println!(
            "| {} | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} / {:.0} | {} |",
            r["path"].as_str().unwrap_or("?"),
            f("connect_us", "p50"),
            f("connect_us", "p99"),
            f("rtt_256_us", "p50"),
            f("rtt_256_us", "p99"),
            f("rtt_16k_us", "p50"),
            f("rtt_16k_us", "p99"),
            r["peak_rss_kib"]
                .as_u64()
                .map(|v| v.to_string())
                .unwrap_or_else(|| "—".into()),
        );
    }
    println!("\n| path | size | conns | msg/s | MB/s | vs nginx | vs direct |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        for i in 0..cells {
            let c = &r["throughput"][i];
            let v = tput(r, i);
            println!(
                "| {} | {} B | {} | {:.0} | {:.1} | {} | {} |",
                r["path"].as_str().unwrap_or("?"),
                c["bytes"],
                c["connections"],
                v,
                c["mb_per_s"].as_f64().unwrap_or(0.0),
                ratio(v, peer.as_ref(), i),
                ratio(v, direct.as_ref(), i),
            );
        }
    }
    println!("screengate RSS idle (before any session): {idle_rss} KiB");
    for s in &sizes {
        println!(
            "release {}: {:.2} MiB",
            s["binary"].as_str().unwrap_or("?"),
            s["bytes"].as_u64().unwrap_or(0) as f64 / 1048576.0
        );
    }
    let out = target.join("bench");
    std::fs::create_dir_all(&out)?;
    let doc = json!({"machine": "2 vCPU AMD EPYC, 24 GiB, Debian 12", "paths": rows, "binaries": sizes, "screengate_idle_rss_kib": idle_rss,
        "method": {"connects": CONNECTS, "rtt_256": RTT_SMALL, "rtt_16k": RTT_LARGE, "throughput_secs": THROUGHPUT_SECS, "throughput_msg_bytes": THROUGHPUT_SIZES, "throughput_connections": THROUGHPUT_CONNS, "pipeline": PIPELINE}});
    std::fs::write(out.join("results.json"), serde_json::to_vec_pretty(&doc)?)?;
    println!("wrote {}", out.join("results.json").display());
    let _ = std::fs::remove_dir_all(&base);
    Ok(true)
}
