//! What the tasks need from the machine, checked before anything is built:
//! programs, headers and cargo subcommands. As root, what is missing is
//! installed (`apt-get update` once, then one `apt-get install`, then
//! `cargo install --locked`), one printed line per install; otherwise the
//! one command that would install it is printed and the task exits 69
//! (`EX_UNAVAILABLE`), still before compiling anything.
//!
//! Owns only the list and the installing. Each task says which needs it
//! has ([`Task`]); the tasks themselves still refuse clearly when a tool
//! vanishes under them.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Exit status when a needed tool is missing and we may not install it.
pub const EX_UNAVAILABLE: u8 = 69;

/// How a missing thing is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum From {
    /// A Debian package.
    Apt(&'static str),
    /// A crate with a binary: `cargo install --locked NAME`.
    Cargo(&'static str),
}

/// How a thing is found present.
#[derive(Debug, Clone, Copy)]
enum Probe {
    /// An executable on `$PATH` (or in the sbin directories, which a
    /// non-root `$PATH` often lacks).
    Program(&'static str),
    /// A file that only the package provides (a header).
    File(&'static str),
    /// A cargo subcommand that answers `--version`.
    CargoSub(&'static str),
}

/// One thing a task needs.
#[derive(Debug, Clone, Copy)]
struct Need {
    what: &'static str,
    probe: Probe,
    from: From,
    why: &'static str,
}

const fn apt(what: &'static str, probe: Probe, pkg: &'static str, why: &'static str) -> Need {
    Need {
        what,
        probe,
        from: From::Apt(pkg),
        why,
    }
}

/// Everything any task needs, once.
const NEEDS: &[Need] = &[
    apt(
        "chromium",
        Probe::Program("chromium"),
        "chromium",
        "launcher e2e and bench with real Chromium",
    ),
    apt(
        "strace",
        Probe::Program("strace"),
        "strace",
        "e2e: the token never in a syscall argument",
    ),
    apt(
        "python3",
        Probe::Program("python3"),
        "python3",
        "e2e: a connect churn from another uid",
    ),
    apt(
        "setpriv",
        Probe::Program("setpriv"),
        "util-linux",
        "e2e: run clients as throwaway users",
    ),
    apt(
        "useradd",
        Probe::Program("useradd"),
        "passwd",
        "e2e: make throwaway users",
    ),
    apt(
        "groupadd",
        Probe::Program("groupadd"),
        "passwd",
        "e2e: make throwaway groups",
    ),
    apt(
        "systemd-analyze",
        Probe::Program("systemd-analyze"),
        "systemd",
        "harden: score the shipped units",
    ),
    apt(
        "openssl",
        Probe::Program("openssl"),
        "openssl",
        "e2e: SDK-style certificates",
    ),
    apt(
        "g++",
        Probe::Program("g++"),
        "g++",
        "e2e: build the websocketpp SDK stand-in",
    ),
    apt(
        "websocketpp",
        Probe::File("/usr/include/websocketpp/version.hpp"),
        "libwebsocketpp-dev",
        "e2e: the SDK's WebSocket server library",
    ),
    apt(
        "asio",
        Probe::File("/usr/include/asio.hpp"),
        "libasio-dev",
        "e2e: websocketpp's transport",
    ),
    apt(
        "OpenSSL headers",
        Probe::File("/usr/include/openssl/ssl.h"),
        "libssl-dev",
        "e2e: websocketpp's TLS",
    ),
    apt(
        "dpkg-deb",
        Probe::Program("dpkg-deb"),
        "dpkg",
        "dist: build the .deb",
    ),
    apt(
        "strip",
        Probe::Program("strip"),
        "binutils",
        "dist: strip the packaged binaries",
    ),
    apt(
        "shellcheck",
        Probe::Program("shellcheck"),
        "shellcheck",
        "dist: lint the maintainer scripts",
    ),
    apt(
        "nginx",
        Probe::Program("nginx"),
        "nginx",
        "bench: the peer every number is a ratio to",
    ),
    Need {
        what: "cargo-fuzz",
        probe: Probe::CargoSub("fuzz"),
        from: From::Cargo("cargo-fuzz"),
        why: "fuzz: the parsers under libFuzzer",
    },
];

/// The tasks that have needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Everything CI runs.
    Ci,
    /// `cargo xtask bench`.
    Bench,
}

impl Task {
    fn needs(self) -> impl Iterator<Item = &'static Need> {
        NEEDS.iter().filter(move |n| match self {
            // CI does not benchmark: nginx is the bench's alone.
            Task::Ci => n.what != "nginx",
            Task::Bench => matches!(n.what, "nginx" | "chromium" | "setpriv"),
        })
    }
}

fn on_path(name: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(Into::into))
        .any(|d| is_executable(&d.join(name)))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn present(probe: Probe) -> bool {
    match probe {
        Probe::Program(name) => on_path(name),
        Probe::File(path) => Path::new(path).is_file(),
        Probe::CargoSub(sub) => crate::proc::cargo()
            .args([sub, "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
    }
}

/// The one command that installs `missing` (for a human to run).
fn command_line(missing: &[&Need]) -> String {
    let mut pkgs: Vec<&str> = Vec::new();
    for n in missing {
        if let From::Apt(p) = n.from
            && !pkgs.contains(&p)
        {
            pkgs.push(p);
        }
    }
    let crates: Vec<&str> = missing
        .iter()
        .filter_map(|n| match n.from {
            From::Cargo(c) => Some(c),
            From::Apt(_) => None,
        })
        .collect();
    let mut parts = Vec::new();
    if !pkgs.is_empty() {
        parts.push(format!(
            "sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {}",
            pkgs.join(" ")
        ));
    }
    if !crates.is_empty() {
        parts.push(format!("cargo install --locked {}", crates.join(" ")));
    }
    parts.join(" && ")
}

fn run_quiet(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("{what} failed ({}):\n{}", out.status, tail.join("\n"));
    }
    Ok(())
}

/// Checks what `task` needs; installs what is missing when root. Returns
/// `Ok(None)` when everything is there (now), `Ok(Some(69))` when it is
/// not and may not be installed here (the command has been printed).
pub fn ensure(task: Task) -> Result<Option<u8>> {
    let missing: Vec<&Need> = task.needs().filter(|n| !present(n.probe)).collect();
    if missing.is_empty() {
        println!("==> setup: everything {task:?} needs is installed");
        return Ok(None);
    }
    if !nix::unistd::geteuid().is_root() {
        for n in &missing {
            eprintln!("setup: missing {} ({})", n.what, n.why);
        }
        eprintln!(
            "setup: not root, so not installing; run:\n  {}",
            command_line(&missing)
        );
        return Ok(Some(EX_UNAVAILABLE));
    }
    let mut pkgs: Vec<&str> = Vec::new();
    for n in &missing {
        if let From::Apt(p) = n.from {
            println!(
                "==> setup: installing {} (apt package {p}): {}",
                n.what, n.why
            );
            if !pkgs.contains(&p) {
                pkgs.push(p);
            }
        }
    }
    if !pkgs.is_empty() {
        run_quiet(
            Command::new("apt-get").args(["update", "-qq"]),
            "apt-get update",
        )?;
        run_quiet(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&pkgs),
            &format!("apt-get install {}", pkgs.join(" ")),
        )?;
    }
    for n in &missing {
        if let From::Cargo(c) = n.from {
            println!(
                "==> setup: installing {} (cargo install --locked {c}): {}",
                n.what, n.why
            );
            run_quiet(
                crate::proc::cargo().args(["install", "--locked", "--quiet", c]),
                &format!("cargo install --locked {c}"),
            )?;
        }
    }
    let still: Vec<&str> = missing
        .iter()
        .filter(|n| !present(n.probe))
        .map(|n| n.what)
        .collect();
    if !still.is_empty() {
        bail!("still missing after installing: {}", still.join(", "));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_names_packages_once_and_crates_after() {
        let m: Vec<&Need> = NEEDS
            .iter()
            .filter(|n| matches!(n.what, "useradd" | "groupadd" | "cargo-fuzz" | "strace"))
            .collect();
        let line = command_line(&m);
        assert_eq!(line.matches("passwd").count(), 1, "{line}");
        assert!(
            line.contains("--no-install-recommends strace passwd"),
            "{line}"
        );
        assert!(
            line.ends_with("&& cargo install --locked cargo-fuzz"),
            "{line}"
        );
    }

    #[test]
    fn ci_does_not_need_the_bench_peer() {
        assert!(Task::Ci.needs().all(|n| n.what != "nginx"));
        assert!(Task::Bench.needs().any(|n| n.what == "nginx"));
        assert!(Task::Ci.needs().any(|n| n.what == "cargo-fuzz"));
    }

    #[test]
    fn probes() {
        assert!(present(Probe::Program("sh")));
        assert!(!present(Probe::Program("no-such-program-screengate")));
        assert!(!present(Probe::File("/no/such/header.h")));
        assert!(!present(Probe::CargoSub("no-such-subcommand-screengate")));
    }
}
