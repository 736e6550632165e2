//! `cargo xtask`: the project's automation, in Rust so that green locally
//! means green in CI. Shell (`.ci/run`) only installs packages.
//!
//! * `ci`   — setup (installs what is missing, as root), fmt check, clippy -D warnings, workspace tests, e2e; ends with
//!   one `ci: N passed, M failed` line.
//! * `e2e`  — the real `screengate` binary against the refusal matrix.
//! * `demo` — the main job on the embedded default, step by step.
//! * `harden` — release ELF checks and the systemd unit's exposure score.
//! * `dist` — the Debian package (`target/dist/screengate_<version>_<arch>.deb`).
//! * `fuzz` — libFuzzer on the parsers (`--smoke`: 10 s each, in ci).
//! * `bench` — measurements (never assertions); see `docs/performance.md`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

mod bench;
mod bench_proxy;
mod ci;
mod demo;
mod dist;
mod e2e;
mod fuzz;
mod harden;
mod proc;
mod setup;
mod tidy;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => match setup::ensure(setup::Task::Ci) {
            Ok(Some(code)) => return ExitCode::from(code),
            Ok(None) => ci::run(),
            Err(e) => Err(e),
        },
        Some("e2e") => e2e::run(args.get(1..).unwrap_or(&[])),
        Some("e2e-peer") => e2e::peer(args.get(1..).unwrap_or(&[])),
        Some("e2e-forge") => e2e::forge(args.get(1..).unwrap_or(&[])),
        Some("demo") => demo::run(),
        Some("harden") => harden::run(),
        Some("dist") => dist::run(),
        Some("fuzz") => fuzz::run(args.get(1..).unwrap_or(&[])),
        Some("bench") => match setup::ensure(setup::Task::Bench) {
            Ok(Some(code)) => return ExitCode::from(code),
            Ok(None) => bench::run(args.get(1..).unwrap_or(&[])),
            Err(e) => Err(e),
        },
        _ => {
            eprintln!(
                "usage: cargo xtask <ci | e2e [FILTER] | demo | harden | dist | fuzz [--smoke] | bench [proxy|launch]>"
            );
            return ExitCode::from(64);
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
