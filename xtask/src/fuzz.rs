//! `cargo xtask fuzz [--smoke] [--seconds N]`: coverage-guided libFuzzer on
//! the parsers that take hostile input (token, control line, config, CDP
//! frames), via `cargo fuzz run -s none` (no sanitizer: the sanitizer build
//! needs nightly flags, this runs on stable). `--smoke` (CI) runs each
//! target for 10 s and fails on any crash.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::proc::root;

const TARGETS: &[&str] = &["token_verify", "control_line", "config", "cdp_frames"];

/// Runs every target; returns (passed, failed).
pub fn run_counted(args: &[String]) -> Result<(u64, u64)> {
    let mut seconds: u64 = 60;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--smoke" => seconds = 10,
            "--seconds" => {
                seconds = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .context("--seconds N")?;
            }
            other => bail!("unknown fuzz argument {other}"),
        }
    }
    let have = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        bail!("cargo-fuzz is not installed: cargo install cargo-fuzz --locked");
    }
    let dir = root().join("fuzz");
    println!("==> fuzz: building targets (cargo fuzz build -s none)");
    let st = Command::new("cargo")
        .current_dir(&dir)
        .args(["fuzz", "build", "-s", "none"])
        .status()?;
    if !st.success() {
        bail!("building the fuzz targets failed");
    }
    let (mut passed, mut failed) = (0, 0);
    for t in TARGETS {
        let out = Command::new("cargo")
            .current_dir(&dir)
            .args(["fuzz", "run", "-s", "none", t, "--"])
            .arg(format!("-max_total_time={seconds}"))
            .arg("-rss_limit_mb=2048")
            .output()
            .with_context(|| format!("running fuzz target {t}"))?;
        let err = String::from_utf8_lossy(&out.stderr);
        let runs = err
            .lines()
            .find(|l| l.starts_with("Done "))
            .unwrap_or("no summary");
        if out.status.success() {
            println!("  fuzz {t:<14} ok ({runs})");
            passed += 1;
        } else {
            println!("  fuzz {t:<14} FAILED:");
            for l in err
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                println!("    {l}");
            }
            failed += 1;
        }
    }
    Ok((passed, failed))
}

pub fn run(args: &[String]) -> Result<bool> {
    let (p, f) = run_counted(args)?;
    println!("fuzz: {p} passed, {f} failed");
    Ok(f == 0)
}
