//! Processes the tasks start: built binaries, a running `screengate serve`
//! stopped by its pid, and commands whose output is streamed and counted.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The workspace root (xtask's parent directory).
pub fn root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(Path::to_owned).unwrap_or(here)
}

/// Cargo's target directory (respects `$CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// The packages whose release binaries `harden` checks and `dist` ships:
/// one list, so the second build is a no-op (a different set of packages
/// could unify features differently and rebuild).
pub const RELEASE_PACKAGES: &[&str] = &[
    "screengate-server",
    "screengate-launcher",
    "screengate-client",
];

/// Builds `packages` with the release profile; returns `<target>/release`.
pub fn build_release(packages: &[&str]) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--quiet"]);
    if std::env::var_os("RUSTFLAGS").is_none()
        && std::env::var_os("CARGO_ENCODED_RUSTFLAGS").is_none()
    {
        cmd.env("CARGO_ENCODED_RUSTFLAGS", remap_flags().join("\x1f"));
    }
    for p in packages {
        cmd.args(["-p", p]);
    }
    if !cmd
        .status()
        .context("running cargo build --release")?
        .success()
    {
        bail!("release build failed");
    }
    Ok(target_dir().join("release"))
}

/// `--remap-path-prefix` for every registry source directory and for this
/// workspace: the release binaries carry panic locations as file paths, and
/// the build machine's (`/root/.cargo/registry/src/index.crates.io-…/`,
/// the checkout's path) are neither the device's business nor free — 330
/// of them cost ~20 KiB of the 4 MiB budget. `clap_lex-1.1.2/src/ext.rs`
/// still says where a panic was. (docs/decisions.md, the size budget.)
fn remap_flags() -> Vec<String> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let mut flags = Vec::new();
    if let Some(src) = home.map(|h| h.join("registry").join("src"))
        && let Ok(dirs) = std::fs::read_dir(&src)
    {
        for d in dirs.flatten() {
            flags.push(format!("--remap-path-prefix={}/=", d.path().display()));
        }
    }
    flags.push(format!("--remap-path-prefix={}/=", root().display()));
    flags
}

/// `cargo` as invoked by the user (respects `$CARGO`).
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// Builds the product binaries (debug) and returns the target dir.
///
/// As root (CI) the binaries are the real thing: root owns them and the
/// servers run as a service user. A non-root developer owns the files the
/// server runs from, which the server refuses; there the build enables the
/// compile-time test relaxation `allow-owned-exe`, and says so.
pub fn build_bins() -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "screengate-server",
        "-p",
        "screengate-launcher",
    ]);
    cmd.args(["-p", "screengate-client"]);
    if !nix::unistd::geteuid().is_root() {
        eprintln!("note: not root: building screengate with the test relaxation `allow-owned-exe`");
        cmd.args(["--features", "screengate-server/allow-owned-exe"]);
    }
    let st = cmd.status().context("running cargo build")?;
    if !st.success() {
        bail!("cargo build failed");
    }
    let target = target_dir();
    Ok(target.join("debug"))
}

/// A running `screengate serve`, stopped (SIGTERM, then SIGKILL) by pid on drop.
pub struct ServerProc {
    pub child: Child,
    pub control: PathBuf,
    pub log: PathBuf,
}

impl ServerProc {
    /// Starts `bin serve` with `args`, logging to `log`; waits until the
    /// control socket answers.
    pub fn start(
        bin: &Path,
        state: &Path,
        control: &Path,
        log: &Path,
        extra: &[&str],
    ) -> Result<Self> {
        Self::start_env(bin, state, control, log, extra, &[])
    }

    /// As [`ServerProc::start`], with extra environment variables.
    pub fn start_env(
        bin: &Path,
        state: &Path,
        control: &Path,
        log: &Path,
        extra: &[&str],
        env: &[(&str, &Path)],
    ) -> Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.args(Self::serve_args(state, control, "127.0.0.1:0"))
            .args(extra)
            .env("RUST_LOG", "debug")
            .envs(env.iter().map(|(k, v)| (*k, *v)));
        Self::spawn(cmd, control, log)
    }

    /// `serve --state-dir STATE --control CONTROL --listen LISTEN`.
    pub fn serve_args(state: &Path, control: &Path, listen: &str) -> Vec<std::ffi::OsString> {
        vec![
            "serve".into(),
            "--state-dir".into(),
            state.into(),
            "--control".into(),
            control.into(),
            "--listen".into(),
            listen.into(),
        ]
    }

    /// Runs `cmd` (a `serve` command line, perhaps behind a wrapper that
    /// execs it) with its stderr in `log`, and waits
    /// until the control socket accepts (20 s at most).
    pub fn spawn(mut cmd: Command, control: &Path, log: &Path) -> Result<Self> {
        let logf =
            std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(logf);
        let child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
        let mut me = Self {
            child,
            control: control.to_owned(),
            log: log.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::os::unix::net::UnixStream::connect(control).is_ok() {
                return Ok(me);
            }
            if let Some(st) = me.child.try_wait()? {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                bail!("screengate exited early ({st}):\n{text}");
            }
            if Instant::now() > deadline {
                bail!("screengate did not open its control socket within 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX))
    }

    /// SIGTERM and wait up to `grace`; returns the exit status and how long
    /// it took. SIGKILL if it did not stop.
    pub fn terminate(&mut self, grace: Duration) -> Result<(std::process::ExitStatus, Duration)> {
        terminate_child(&mut self.child, grace)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(self.pid(), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A running `screengate-launch`, stopped by pid on drop.
pub struct LauncherProc {
    pub child: Child,
    pub log: PathBuf,
}

impl LauncherProc {
    pub fn start(bin: &Path, control: &Path, log: &Path, extra: &[String]) -> Result<Self> {
        Self::start_env(bin, control, log, extra, &[])
    }

    /// As [`Self::start`], with extra environment variables for the launcher.
    pub fn start_env(
        bin: &Path,
        control: &Path,
        log: &Path,
        extra: &[String],
        env: &[(&str, &Path)],
    ) -> Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.arg("--control")
            .arg(control)
            .arg("--headless")
            .args(extra);
        if nix::unistd::geteuid().is_root() {
            cmd.arg("--chromium-arg=--no-sandbox");
        }
        cmd.envs(env.iter().copied());
        Self::spawn(cmd, log)
    }

    /// Runs `cmd` (a launcher command line, perhaps behind `setpriv`) with
    /// its stderr in `log`.
    pub fn spawn(mut cmd: Command, log: &Path) -> Result<Self> {
        let logf =
            std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(logf);
        let child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
        Ok(Self {
            child,
            log: log.to_owned(),
        })
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `needle` occurs at least `count` times in the log.
    pub async fn wait_for(
        &mut self,
        needle: &str,
        count: usize,
        within: Duration,
    ) -> std::result::Result<Duration, String> {
        let t0 = Instant::now();
        loop {
            if self.log_text().matches(needle).count() >= count {
                return Ok(t0.elapsed());
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!(
                    "launcher exited ({st}) before {needle:?}:\n{}",
                    self.log_text()
                ));
            }
            if t0.elapsed() > within {
                return Err(format!(
                    "no {needle:?} (x{count}) within {within:?}; launcher log:\n{}",
                    self.log_text()
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn terminate(&mut self, grace: Duration) -> Result<(std::process::ExitStatus, Duration)> {
        terminate_child(&mut self.child, grace)
    }
}

impl Drop for LauncherProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.terminate(Duration::from_secs(6));
        }
    }
}

/// Every descendant pid of `root` (from /proc/*/stat parent links).
pub fn descendants(root: i32) -> Vec<i32> {
    let mut parent: Vec<(i32, i32)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid ...: comm may contain spaces, so split after ')'
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse().ok());
            if let Some(ppid) = ppid {
                parent.push((pid, ppid));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (child, pp) in &parent {
            if *pp == p && !out.contains(child) {
                out.push(*child);
                frontier.push(*child);
            }
        }
    }
    out
}

/// SIGTERM `child` by pid and wait up to `grace`; SIGKILL (and an error) if
/// it did not stop. Returns the exit status and how long it took.
pub fn terminate_child(
    child: &mut Child,
    grace: Duration,
) -> Result<(std::process::ExitStatus, Duration)> {
    let t0 = Instant::now();
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let _ = kill(pid, Signal::SIGTERM);
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok((st, t0.elapsed()));
        }
        if t0.elapsed() > grace {
            let _ = child.kill();
            let st = child.wait()?;
            bail!("did not exit within {grace:?} of SIGTERM (killed: {st})");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
