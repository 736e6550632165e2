//! `cargo xtask ci` on a machine that lacks its tools, run by a user who
//! may not install them: it names the one command to run and exits 69
//! before it builds anything (issue 9). The installing path, as root, is
//! proven by CI itself on a fresh clone (README, "First run").

use std::process::Command;

#[test]
fn non_root_without_tools_gets_the_command_and_69_before_any_build() {
    let xtask = env!("CARGO_BIN_EXE_xtask");
    let mut cmd = if nix::unistd::geteuid().is_root() {
        // Become nobody for real: the kernel, not a flag, says non-root.
        let mut c = Command::new("/usr/bin/setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
        c.arg(xtask);
        c
    } else {
        Command::new(xtask)
    };
    // A PATH with nothing on it: every program, cargo included, is missing.
    let out = cmd
        .arg("ci")
        .env_clear()
        .env("PATH", "/nonexistent")
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(69),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stderr.contains("apt-get install -y --no-install-recommends"),
        "{stderr}"
    );
    assert!(stderr.contains("chromium"), "{stderr}");
    assert!(
        stderr.contains("cargo install --locked cargo-fuzz"),
        "{stderr}"
    );
    // Nothing was built or checked: no step of the CI ran.
    assert!(!stdout.contains("==> fmt"), "{stdout}");
    assert!(!stdout.contains("==> clippy"), "{stdout}");
}
