//! `cargo xtask bench`: measurements, never assertions.
//!
//! * `launch` — median time from `screengate-launch` start to the display's
//!   first authenticated message, against Chromium's own start to page load
//!   (`--dump-dom` of the same gateway page) without the launcher.
//!
//! The token benchmarks are criterion benches: `cargo bench -p screengate-token`.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::proc::{LauncherProc, ServerProc, build_bins};

const RUNS: usize = 7;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

pub fn run(args: &[String]) -> Result<bool> {
    match args.first().map(String::as_str) {
        Some("launch") => launch(),
        Some("proxy") => crate::bench_proxy::run(),
        Some("peer-uid") => peer_uid(),
        None => Ok(crate::bench_proxy::run()? && launch()? && peer_uid()?),
        Some(other) => bail!("unknown benchmark `{other}`; available: proxy, launch, peer-uid"),
    }
}

/// The cost of asking the kernel who owns a display's connection (issue 14):
/// sock_diag and the /proc table, with 1 and 1000 connections open. The
/// measurement lives next to the code it measures (`peer_uid::tests`), as an
/// ignored test, so it runs against the real functions rather than a copy.
/// Debug build (the test profile): an upper bound of the release cost.
fn peer_uid() -> Result<bool> {
    println!("==> bench peer-uid: the lookup behind [gateway] allowed_peer_uids");
    let status =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "test",
                "-q",
                "-p",
                "screengate-server",
                "--lib",
                "peer_uid::tests::peer_uid_cost",
                "--",
                "--ignored",
                "--nocapture",
                "--exact",
            ])
            .status()
            .context("running cargo test for the peer-uid benchmark")?;
    Ok(status.success())
}

fn launch() -> Result<bool> {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .context("Chromium not installed: apt-get install chromium")?;
    let bins = build_bins()?;
    let base = std::env::temp_dir().join(format!("screengate-bench-{}", std::process::id()));
    std::fs::create_dir_all(base.join("run"))?;
    std::fs::set_permissions(
        base.join("run"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    let server = ServerProc::start(
        &bins.join("screengate"),
        &base.join("state"),
        &base.join("run/c.sock"),
        &base.join("server.log"),
        &[],
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (port, pin) = rt.block_on(async {
        let (_, v) = screengate_tests::mint(&server.control)
            .await
            .map_err(anyhow::Error::msg)?;
        let (addr, pin) = screengate_tests::gateway_of(&v).map_err(anyhow::Error::msg)?;
        anyhow::Ok((addr.port(), pin.to_string()))
    })?;
    let root = nix::unistd::geteuid().is_root();

    let mut with_launcher = Vec::new();
    for i in 0..RUNS {
        let log = base.join(format!("launch-{i}.log"));
        let t0 = Instant::now();
        let mut l =
            LauncherProc::start(&bins.join("screengate-launch"), &server.control, &log, &[])?;
        rt.block_on(l.wait_for(
            "display received its first message",
            1,
            Duration::from_secs(30),
        ))
        .map_err(anyhow::Error::msg)?;
        with_launcher.push(t0.elapsed());
        l.terminate(Duration::from_secs(8))?;
    }

    let mut plain = Vec::new();
    for i in 0..RUNS {
        let profile = base.join(format!("plain-profile-{i}"));
        let mut cmd = Command::new(chromium);
        cmd.args([
            "--headless",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--ignore-certificate-errors-spki-list={pin}"))
        .arg("--dump-dom")
        .arg(format!("https://localhost:{port}/"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        if root {
            cmd.arg("--no-sandbox");
        }
        let t0 = Instant::now();
        let mut child = cmd.spawn()?;
        let mut out = child.stdout.take().context("stdout")?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = out.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
            if String::from_utf8_lossy(&buf).contains("</html>") {
                break;
            }
        }
        plain.push(t0.elapsed());
        let _ = child.kill();
        let _ = child.wait();
        if !String::from_utf8_lossy(&buf).contains("screengate") {
            bail!("Chromium did not load the gateway page");
        }
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&base);
    let (a, b) = (median(with_launcher.clone()), median(plain.clone()));
    println!(
        "launcher start → first authenticated message: median {} ms  (runs: {:?})",
        a.as_millis(),
        with_launcher
            .iter()
            .map(Duration::as_millis)
            .collect::<Vec<_>>()
    );
    println!(
        "chromium start → page loaded (--dump-dom):     median {} ms  (runs: {:?})",
        b.as_millis(),
        plain.iter().map(Duration::as_millis).collect::<Vec<_>>()
    );
    println!(
        "difference: {} ms",
        a.as_millis() as i128 - b.as_millis() as i128
    );
    Ok(true)
}
