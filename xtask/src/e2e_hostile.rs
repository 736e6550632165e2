//! e2e hostile-load cases against the main server, bounded in count and
//! time, loopback only: squatters and slowloris, a bad-token flood while the
//! display connects, a mint burst, control-socket garbage, oversized and
//! invalid frames, and the aftermath (alive, RSS near baseline, a normal
//! session works). Timing is reported, not asserted, except the display's
//! 2 s budget under squatters, which is the behaviour the issue promises.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use screengate_tests::{Request, echo, handshake};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use super::{Case, Fx, R, case};

const GROUP: &str = "hostile";

pub(super) const CASES: &[Case] = &[
    case!(Any "hostile_baseline" => baseline),
    case!(Any "hostile_squatters_do_not_lock_out_the_display" => async squatters),
    case!(Any "hostile_bad_token_flood_while_the_display_connects" => async flood),
    case!(Any "hostile_mint_burst_is_rate_limited_and_memory_bounded" => async mint_burst),
    case!(Any "hostile_control_garbage_flood" => async garbage),
    case!(Any "hostile_oversized_frame_closed_1009" => async oversized),
    case!(Any "hostile_invalid_utf8_closed_1007" => async bad_utf8),
    case!(Any "hostile_aftermath_alive_rss_near_baseline_session_works" => async aftermath),
    case!(Any "hostile_sigterm_with_300_idle_connections_exits_within_5s" => async sigterm_crowded),
];

static BASELINE_RSS_KB: AtomicU64 = AtomicU64::new(0);

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(&format!("{field}:")).map(str::to_owned))
        })
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn baseline(fx: &Fx) -> R {
    let rss = status_kb(fx.main.child.id(), "VmRSS");
    if rss == 0 {
        return Err("cannot read the server's RSS".into());
    }
    BASELINE_RSS_KB.store(rss, Ordering::SeqCst);
    println!("      (server RSS at rest: {} KiB)", rss);
    Ok(())
}

/// The display's full path: mint, connect, first echo; retried like the
/// page does. Returns how long it took.
async fn display_session(fx: &Fx, budget: Duration) -> Result<Duration, String> {
    let t0 = Instant::now();
    let mut last = String::new();
    while t0.elapsed() < budget {
        let attempt = async {
            let t = fx.mint().await?;
            let (resp, ws) =
                handshake(fx.addr, fx.pin, &Request::display(fx.port(), Some(&t))).await?;
            let mut ws = ws.ok_or(format!("status {}", resp.status))?;
            echo(&mut ws, "display alive").await.map(|_| ())
        };
        match tokio::time::timeout(budget.saturating_sub(t0.elapsed()), attempt).await {
            Ok(Ok(())) => return Ok(t0.elapsed()),
            Ok(Err(e)) => last = e,
            Err(_) => last = "timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(format!(
        "display could not connect within {budget:?}: {last}"
    ))
}

async fn squatter(addr: SocketAddr, kind: usize, stop: Arc<AtomicBool>, reopened: Arc<AtomicU64>) {
    // reopen whenever the server drops us, until told to stop
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        match kind % 3 {
            0 => {} // open and silent
            1 => {
                // half a TLS ClientHello: record header promising 512 bytes, 20 sent
                let _ = s
                    .write_all(&[
                        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0, 0, 0,
                        0, 0, 0, 0, 0, 0,
                    ])
                    .await;
            }
            _ => {
                // slowloris: plaintext header bytes dribbled (the TLS layer sees garbage slowly)
                let _ = s
                    .write_all(b"GET /ws HTTP/1.1\r\nHost: localhost\r\n")
                    .await;
            }
        }
        let mut buf = [0u8; 64];
        // hold until the server closes us (or we are told to stop)
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                _ => {}
            }
        }
        reopened.fetch_add(1, Ordering::Relaxed);
    }
}

async fn squatters(fx: &Fx) -> R {
    let stop = Arc::new(AtomicBool::new(false));
    let reopened = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..500)
        .map(|i| tokio::spawn(squatter(fx.addr, i, stop.clone(), reopened.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await; // let them pile up
    let mut times = Vec::new();
    let mut result = Ok(());
    for _ in 0..5 {
        match display_session(fx, Duration::from_secs(2)).await {
            Ok(t) => times.push(t),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    // The deadlines (5 s TLS) drop the squatters; wait one deadline and
    // see them reopen, proving they were dropped and nothing piled up.
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    let dropped = reopened.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    result?;
    // With the churn gone: silent connections below the pending bound are
    // closed by the TLS deadline, not held forever (a bound, not a timing).
    let mut silent = Vec::new();
    for _ in 0..10 {
        silent.push(
            tokio::net::TcpStream::connect(fx.addr)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let t_silent = Instant::now();
    for mut s in silent {
        let mut b = [0u8; 8];
        match tokio::time::timeout(Duration::from_secs(15), s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(_)) => return Err("a silent connection received data".into()),
            Err(_) => return Err("a silent connection was held for 15 s".into()),
        }
    }
    println!(
        "      (10 silent connections closed by the server after {:?})",
        t_silent.elapsed()
    );
    if dropped < 500 {
        return Err(format!(
            "only {dropped} squatter connections were dropped in 6 s; the deadlines or the pending bound did not act"
        ));
    }
    times.sort();
    println!(
        "      (500 squatters; display mint+connect+echo: {:?} .. {:?}; squatter connections dropped and reopened: {dropped})",
        times.first().copied().unwrap_or_default(),
        times.last().copied().unwrap_or_default()
    );
    Ok(())
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or_default()
}

async fn connect_time(fx: &Fx) -> Result<Duration, String> {
    let t = fx.mint().await?;
    let t0 = Instant::now();
    let (resp, ws) = handshake(fx.addr, fx.pin, &Request::display(fx.port(), Some(&t))).await?;
    let el = t0.elapsed();
    ws.ok_or(format!("display connect got {}", resp.status))?;
    Ok(el)
}

/// How long the bad-token flood runs at most (it stops sooner at 20,000).
const FLOOD_FOR: Duration = Duration::from_secs(30);

async fn flood(fx: &Fx) -> R {
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(connect_time(fx).await?);
    }
    let sent = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    // Bounded in count and in time, and the time bound is well inside the
    // harness's 60 s per case: how many handshakes fit is the machine's
    // business (a benchmark's), not this test's. What it asserts holds at
    // any speed: every answered bad token is a 403, and the display gets in.
    let deadline = Instant::now() + FLOOD_FOR;
    let total: u64 = 20_000;
    let workers: Vec<_> = (0..48)
        .map(|_| {
            let (sent, refused, answered) = (sent.clone(), refused.clone(), answered.clone());
            let (addr, pin, port) = (fx.addr, fx.pin, fx.port());
            tokio::spawn(async move {
                while sent.fetch_add(1, Ordering::Relaxed) < total && Instant::now() < deadline {
                    let req = Request::display(port, Some("AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"));
                    if let Ok((r, _)) = handshake(addr, pin, &req).await {
                        answered.fetch_add(1, Ordering::Relaxed);
                        if r.status == 403 {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    let mut loaded = Vec::new();
    let mut failures = 0;
    for _ in 0..20 {
        match connect_time(fx).await {
            Ok(t) => loaded.push(t),
            Err(_) => failures += 1,
        }
    }
    for w in workers {
        let _ = w.await;
    }
    let took = t0.elapsed();
    let n = refused.load(Ordering::Relaxed);
    println!(
        "      ({n} bad-token handshakes refused in {:.1} s ({:.0}/s); display connect p50/p99 idle {:?}/{:?}, under flood {:?}/{:?})",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        pct(&mut idle, 0.5),
        pct(&mut idle, 0.99),
        pct(&mut loaded, 0.5),
        pct(&mut loaded, 0.99)
    );
    if failures > 0 {
        return Err(format!(
            "{failures} of 20 display connects failed under the flood"
        ));
    }
    let a = answered.load(Ordering::Relaxed);
    if n != a {
        return Err(format!(
            "{} of {a} answered bad-token handshakes were not a 403",
            a - n
        ));
    }
    // The flood must have been one: at least the display's own 20 connects
    // many times over, and most attempts answered (not reset).
    let tried = sent.load(Ordering::Relaxed).min(total);
    if a < 1_000 || a * 10 < tried * 9 {
        return Err(format!(
            "only {a} of {tried} bad handshakes were answered (the rest errored)"
        ));
    }
    Ok(())
}

async fn mint_burst(fx: &Fx) -> R {
    let pid = fx.main.child.id();
    let before = status_kb(pid, "VmHWM");
    let ok = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    // As many connections as one uid may hold (the server's
    // MAX_CONTROL_PER_UID, 8), 1,250 requests each.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (ok, limited, other) = (ok.clone(), limited.clone(), other.clone());
            let control = fx.main.control.clone();
            tokio::spawn(async move {
                let Ok(s) = tokio::net::UnixStream::connect(&control).await else {
                    return;
                };
                let (rd, mut wr) = s.into_split();
                let mut rd = tokio::io::BufReader::new(rd);
                for _ in 0..1_250 {
                    if wr.write_all(b"{\"op\":\"mint\"}\n").await.is_err() {
                        return;
                    }
                    let mut line = String::new();
                    use tokio::io::AsyncBufReadExt;
                    if rd.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if line.contains("\"ok\":true") {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else if line.contains("rate_limited") && line.contains("retry_after_ms") {
                        limited.fetch_add(1, Ordering::Relaxed);
                    } else {
                        other.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let after = status_kb(pid, "VmHWM");
    let (o, l, x) = (
        ok.load(Ordering::Relaxed),
        limited.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
    );
    println!(
        "      (10,000 mint requests: {o} minted, {l} rate_limited, {x} other; peak RSS {before} → {after} KiB)"
    );
    if o + l != 10_000 || x != 0 {
        return Err(format!(
            "expected every request answered: {o} ok + {l} limited + {x} other"
        ));
    }
    if l == 0 {
        return Err("the burst was never rate limited".into());
    }
    if after > before + 16 * 1024 {
        return Err(format!(
            "peak RSS grew by {} KiB during the burst",
            after - before
        ));
    }
    // still responsive: a display session works right after
    display_session(fx, Duration::from_secs(5))
        .await
        .map(|_| ())
}

async fn garbage(fx: &Fx) -> R {
    let s = tokio::net::UnixStream::connect(&fx.main.control)
        .await
        .map_err(|e| e.to_string())?;
    let (rd, mut wr) = s.into_split();
    let mut rd = tokio::io::BufReader::new(rd);
    use tokio::io::AsyncBufReadExt;
    let junk: [&[u8]; 6] = [
        b"\x00\x01\x02",
        b"{{{{",
        b"\xff\xfe\xfd",
        b"{\"op\":\"mint\",\"channel\":1}",
        b"[]",
        b"null",
    ];
    for i in 0..2_000 {
        let line = junk.get(i % junk.len()).copied().unwrap_or(b"x");
        wr.write_all(line).await.map_err(|e| e.to_string())?;
        wr.write_all(b"\n").await.map_err(|e| e.to_string())?;
        let mut reply = Vec::new();
        rd.read_until(b'\n', &mut reply)
            .await
            .map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_slice(&reply).unwrap_or_default();
        if v["ok"] != false || v["error"] != "bad_request" {
            return Err(format!(
                "garbage line {i} got {:?}",
                String::from_utf8_lossy(&reply)
            ));
        }
    }
    // the same connection still mints
    tokio::time::sleep(Duration::from_millis(200)).await;
    wr.write_all(b"{\"op\":\"mint\"}\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    rd.read_line(&mut reply).await.map_err(|e| e.to_string())?;
    if !reply.contains("\"ok\":true") && !reply.contains("rate_limited") {
        return Err(format!("after the garbage: {reply}"));
    }
    Ok(())
}

async fn close_code_after(fx: &Fx, msg: Message) -> Result<Option<u16>, String> {
    let t = fx.mint().await?;
    let (resp, ws) = handshake(fx.addr, fx.pin, &Request::display(fx.port(), Some(&t))).await?;
    let mut ws = ws.ok_or(format!("status {}", resp.status))?;
    let _ = ws.send(msg).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline.into(), ws.next()).await {
            Ok(Some(Ok(Message::Close(c)))) => return Ok(c.map(|c| u16::from(c.code))),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) | Ok(None) => return Ok(None),
            Err(_) => return Err("the session was not closed".into()),
        }
    }
}

async fn oversized(fx: &Fx) -> R {
    let big = vec![b'x'; 5 * 1024 * 1024];
    let code = close_code_after(fx, Message::binary(big)).await?;
    (code == Some(1009))
        .then_some(())
        .ok_or(format!("close code {code:?}, expected 1009"))
}

async fn bad_utf8(fx: &Fx) -> R {
    // A text frame whose payload is not UTF-8 cannot be built through the
    // typed API; write the frame by hand on the raw TLS stream.
    let t = fx.mint().await?;
    let mut tls = screengate_tests::tls_connect(fx.addr, fx.pin).await?;
    let req = Request::display(fx.port(), Some(&t));
    let mut head = format!("GET {} HTTP/1.1\r\n", req.path);
    for (k, v) in &req.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    let n = tls.read(&mut buf).await.map_err(|e| e.to_string())?;
    if !String::from_utf8_lossy(buf.get(..n).unwrap_or(&[])).starts_with("HTTP/1.1 101") {
        return Err("no 101".into());
    }
    // FIN + text opcode, masked, 2 bytes of invalid UTF-8
    let mask = [1u8, 2, 3, 4];
    let payload = [0xffu8, 0xfe];
    let mut frame = vec![0x81, 0x80 | 2];
    frame.extend_from_slice(&mask);
    frame.extend(
        payload
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask.get(i % 4).copied().unwrap_or(0)),
    );
    tls.write_all(&frame).await.map_err(|e| e.to_string())?;
    let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
        .await
        .map_err(|_| "no close frame".to_owned())?
        .map_err(|e| e.to_string())?;
    let got = buf.get(..n).unwrap_or(&[]);
    // server close frame: 0x88, len, code (2 bytes)
    match got {
        [0x88, _, hi, lo, ..] if u16::from_be_bytes([*hi, *lo]) == 1007 => Ok(()),
        other => Err(format!(
            "expected a 1007 close frame, got {:02x?}",
            other.get(..other.len().min(8))
        )),
    }
}

async fn aftermath(fx: &Fx) -> R {
    let pid = fx.main.child.id();
    if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return Err("the server died".into());
    }
    // let freed connections settle
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = BASELINE_RSS_KB.load(Ordering::SeqCst);
    let now = status_kb(pid, "VmRSS");
    let peak = status_kb(pid, "VmHWM");
    display_session(fx, Duration::from_secs(5)).await?;
    println!("      (RSS: baseline {base} KiB, now {now} KiB, peak {peak} KiB)");
    if base == 0 {
        return Err("no baseline was recorded (run the whole hostile group)".into());
    }
    if now > base + 8 * 1024 {
        return Err(format!("RSS {now} KiB is not near the baseline {base} KiB"));
    }
    Ok(())
}

async fn sigterm_crowded(fx: &Fx) -> R {
    let mut s = fx.spawn_server("crowded", &[])?;
    let (port, pin) = super::port_and_pin(&s.control).await?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(
            tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let (t, _) = fx.mint_on(&s.control).await?;
    let (_, ws) = handshake(addr, pin, &Request::display(port, Some(&t))).await?;
    let _ws = ws.ok_or("no session")?;
    let (st, took) = tokio::task::block_in_place(|| s.terminate(Duration::from_secs(5)))
        .map_err(|e| format!("{e:#}"))?;
    drop(idle);
    if !st.success() {
        return Err(format!("exit status {st}"));
    }
    println!("      (300 idle connections + 1 session: SIGTERM → exit 0 in {took:?})");
    Ok(())
}
