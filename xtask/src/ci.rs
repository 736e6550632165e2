//! `cargo xtask ci`: everything CI runs, in order, failing fast on lint and
//! counting every test. The last line is `ci: N passed, M failed`.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use anyhow::{Context, Result};

use crate::proc::cargo;

fn step(name: &str, args: &[&str]) -> Result<bool> {
    println!("==> {name}: cargo {}", args.join(" "));
    let st = cargo()
        .args(args)
        .status()
        .with_context(|| format!("running {name}"))?;
    Ok(st.success())
}

/// Runs `cargo test`, streaming its output and adding up its result lines.
fn tests() -> Result<(bool, u64, u64)> {
    println!("==> tests: cargo test --workspace");
    let mut child = cargo()
        .args(["test", "--workspace", "--color", "never"])
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                let num = |key: &str| -> u64 {
                    rest.split(';')
                        .find_map(|p| {
                            p.trim().strip_suffix(key).map(|n| {
                                n.trim()
                                    .trim_start_matches("ok.")
                                    .trim_start_matches("FAILED.")
                                    .trim()
                                    .parse()
                                    .unwrap_or(0)
                            })
                        })
                        .unwrap_or(0)
                };
                passed += num("passed");
                failed += num("failed");
            }
        }
    }
    let ok = child.wait()?.success();
    Ok((ok, passed, failed))
}

pub fn run() -> Result<bool> {
    let mut ok = true;
    ok &= step("fmt", &["fmt", "--all", "--", "--check"])?;
    ok &= step(
        "clippy",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--quiet",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    if !ok {
        println!("ci: 0 passed, 1 failed (fmt or clippy)");
        return Ok(false);
    }
    let (tests_ok, mut passed, mut failed) = tests()?;
    if !tests_ok && failed == 0 {
        failed += 1; // the build or a harness failed without a count
    }
    let (h_passed, h_failed) = crate::harden::run_counted()?;
    passed += h_passed;
    failed += h_failed;
    let (f_passed, f_failed) = crate::fuzz::run_counted(&["--smoke".to_owned()])?;
    passed += f_passed;
    failed += f_failed;
    println!("==> e2e");
    let (e2e_passed, e2e_failed) = crate::e2e::run_counted(&[])?;
    passed += e2e_passed;
    failed += e2e_failed;
    println!("ci: {passed} passed, {failed} failed");
    Ok(tests_ok && failed == 0)
}
