//! e2e case for the Debian package (issue 15): the .deb `cargo xtask dist`
//! builds, installed on this machine with `dpkg -i` (root only), checked as
//! installed (config, identity, units, exposure, a server that serves),
//! upgraded and reinstalled (identity and a locally edited conffile kept),
//! removed (nothing left running, nothing of `dpkg -L` left but the
//! conffile and the state directory) and purged.
//!
//! Whatever happens, the case ends with the package purged and the users,
//! groups and directories it made gone, so a rerun starts clean; it also
//! purges what a killed earlier run left. Owns only that; the package's
//! layout is `dist.rs`, its behaviour `dist/deb/*`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{Case, Fx, R, case, run_ok, text};
use crate::dist::{self, BINARIES, CONFFILE, PACKAGE, SOCKET_UNIT, SYSTEM_UNIT, USER_UNIT};
use crate::proc::ServerProc;

const GROUP: &str = "dist";

pub(super) const CASES: &[Case] =
    &[case!(Root "dist_deb_installs_checks_and_removes_cleanly" => blocking)];

/// The case runs dpkg and waits on processes: off the runtime's workers.
fn blocking(fx: &Fx) -> R {
    tokio::task::block_in_place(|| installs_checks_and_removes(fx))
}

const STATE: &str = "/var/lib/screengate";
const RUN: &str = "/run/screengate";
/// The users and groups the package makes (dist/deb/sysusers.conf).
const NAMES: [&str; 2] = ["screengate", "display"];

/// The two packages: this version and a later one (the upgrade).
static DEBS: OnceLock<Result<(PathBuf, PathBuf), String>> = OnceLock::new();

/// Builds both packages, outside the case's time limit (the release build
/// is a no-op after `harden`; alone it takes minutes).
pub fn prepare() -> Result<(PathBuf, PathBuf), String> {
    DEBS.get_or_init(|| {
        let next = format!("{}+e2e1", dist::version());
        let build = |v: Option<&str>| dist::build(v).map_err(|e| format!("{e:#}"));
        Ok((build(None)?, build(Some(&next))?))
    })
    .clone()
}

/// Purges the package and removes what it made on drop: the users and
/// groups that did not exist before the case, and its directories.
struct Cleanup {
    made_users: Vec<&'static str>,
    made_groups: Vec<&'static str>,
}

impl Cleanup {
    fn start() -> Self {
        // What a killed earlier run left: the package, its directories.
        purge_everything();
        Self {
            made_users: NAMES
                .into_iter()
                .filter(|n| nix::unistd::User::from_name(n).ok().flatten().is_none())
                .collect(),
            made_groups: NAMES
                .into_iter()
                .filter(|n| nix::unistd::Group::from_name(n).ok().flatten().is_none())
                .collect(),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        purge_everything();
        for u in &self.made_users {
            let _ = Command::new("userdel").arg(u).output();
        }
        for g in &self.made_groups {
            let _ = Command::new("groupdel").arg(g).output();
        }
    }
}

fn purge_everything() {
    let _ = Command::new("dpkg").args(["--purge", PACKAGE]).output();
    for d in [STATE, RUN, "/etc/screengate"] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Runs `cmd`; Ok(stdout + stderr) on success, Err naming it otherwise.
fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    let t = text(&out);
    if out.status.success() {
        Ok(t)
    } else {
        Err(format!("{cmd:?} failed ({}):\n{t}", out.status))
    }
}

fn dpkg_install(deb: &Path) -> Result<(String, Duration), String> {
    let t0 = Instant::now();
    let out = run(Command::new("dpkg").arg("-i").arg(deb))?;
    Ok((out, t0.elapsed()))
}

fn installs_checks_and_removes(fx: &Fx) -> R {
    let (deb, deb_next) = prepare()?;
    let _cleanup = Cleanup::start();
    let size = std::fs::metadata(&deb).map_err(|e| e.to_string())?.len();

    let (out, install) = dpkg_install(&deb)?;
    let listed: Vec<PathBuf> = run(Command::new("dpkg").args(["-L", PACKAGE]))?
        .lines()
        .map(PathBuf::from)
        .collect();
    installed_files_are_right(&listed)?;
    let svc = nix::unistd::User::from_name("screengate")
        .ok()
        .flatten()
        .ok_or("postinst made no user `screengate`")?;
    users_are_right(&svc)?;
    let pin = identity_is_right(&svc, &out)?;
    check_passes()?;
    units_verify_and_score(&fx.base)?;
    serves_and_mints(fx, &svc)?;

    // A local edit of the conffile, then an upgrade and a reinstall: both
    // keep the edit and the identity, and `check` still passes.
    let edit = "\n# a local edit the package must keep\n";
    let mut conf = std::fs::read_to_string(CONFFILE).map_err(|e| e.to_string())?;
    conf.push_str(edit);
    std::fs::write(CONFFILE, &conf).map_err(|e| e.to_string())?;
    let before = identity_bytes()?;
    for (what, d) in [("upgrade", &deb_next), ("reinstall", &deb_next)] {
        let (out, _) = dpkg_install(d)?;
        if out.contains("creating the device identity") {
            return Err(format!("the {what} made a new identity:\n{out}"));
        }
        if identity_bytes()? != before {
            return Err(format!("the {what} changed the identity files"));
        }
        let now = std::fs::read_to_string(CONFFILE).map_err(|e| e.to_string())?;
        if !now.ends_with(edit) {
            return Err(format!("the {what} replaced the locally edited conffile"));
        }
        if current_pin()? != pin {
            return Err(format!("the {what} changed the pin"));
        }
        check_passes()?;
    }

    let t0 = Instant::now();
    run(Command::new("dpkg").args(["-r", PACKAGE]))?;
    let remove = t0.elapsed();
    nothing_runs()?;
    let left: Vec<&PathBuf> = listed
        .iter()
        .filter(|p| p.symlink_metadata().is_ok())
        .collect();
    for p in &left {
        let kept =
            p.as_path() == Path::new(CONFFILE) || p.as_path() == Path::new("/etc/screengate");
        // dpkg lists the root as "/.", which no package owns.
        let shared = p.is_dir() && (p.as_path() == Path::new("/.") || owned_by_another_package(p));
        if !(kept || shared) {
            return Err(format!("{} is left after dpkg -r", p.display()));
        }
    }
    if identity_bytes()? != before {
        return Err("dpkg -r did not keep the identity in the state directory".into());
    }
    if Path::new(RUN).exists()
        || Path::new("/etc/systemd/system/multi-user.target.wants/screengate.service")
            .symlink_metadata()
            .is_ok()
        || Path::new("/etc/systemd/system/sockets.target.wants/screengate.socket")
            .symlink_metadata()
            .is_ok()
    {
        return Err("dpkg -r left the runtime directory or an enable link".into());
    }

    // What the admin put beside the conffile (the SDK's CA, as
    // docs/sdk-integration.md says) is not the package's to purge; a copy
    // dpkg left of the conffile is.
    let admin = Path::new("/etc/screengate/sdk/ca.cert");
    let dpkg_old = format!("{CONFFILE}.dpkg-old");
    std::fs::create_dir_all("/etc/screengate/sdk").map_err(|e| e.to_string())?;
    std::fs::write(admin, "the SDK's CA\n").map_err(|e| e.to_string())?;
    std::fs::write(&dpkg_old, &conf).map_err(|e| e.to_string())?;
    let out = run(Command::new("dpkg").args(["--purge", PACKAGE]))?;
    for p in [CONFFILE, dpkg_old.as_str(), STATE] {
        if Path::new(p).symlink_metadata().is_ok() {
            return Err(format!("{p} is left after dpkg --purge"));
        }
    }
    if std::fs::read_to_string(admin).ok().as_deref() != Some("the SDK's CA\n") {
        return Err(format!("dpkg --purge removed {}", admin.display()));
    }
    if !out.contains("kept /etc/screengate") {
        return Err(format!("dpkg --purge did not say what it kept:\n{out}"));
    }
    std::fs::remove_dir_all("/etc/screengate").map_err(|e| e.to_string())?;
    if run(Command::new("dpkg-query").args(["-W", PACKAGE])).is_ok() {
        return Err("dpkg still knows the package after --purge".into());
    }
    println!(
        "      (.deb {size} bytes; dpkg -i {} ms, dpkg -r {} ms)",
        install.as_millis(),
        remove.as_millis()
    );
    Ok(())
}

/// Binaries root-owned 0755 and stripped; units, data and docs there; the
/// conffile root-owned 0644 and known to dpkg as one.
fn installed_files_are_right(listed: &[PathBuf]) -> R {
    for b in BINARIES {
        let p = PathBuf::from("/usr/bin").join(b);
        let m = std::fs::metadata(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        if m.uid() != 0 || m.gid() != 0 || m.permissions().mode() & 0o7777 != 0o755 {
            return Err(format!("{} is not root's 0755", p.display()));
        }
        let bytes = std::fs::read(&p).map_err(|e| e.to_string())?;
        let elf = goblin::elf::Elf::parse(&bytes).map_err(|e| e.to_string())?;
        if elf
            .section_headers
            .iter()
            .any(|s| s.sh_type == goblin::elf::section_header::SHT_SYMTAB)
        {
            return Err(format!("{} is not stripped", p.display()));
        }
    }
    for p in [
        SYSTEM_UNIT,
        SOCKET_UNIT,
        USER_UNIT,
        "/usr/share/doc/screengate/examples/tcp-backend.conf",
        "/usr/lib/sysusers.d/screengate.conf",
        "/usr/lib/tmpfiles.d/screengate.conf",
        "/usr/share/doc/screengate/README.md",
        "/usr/share/doc/screengate/deployment.md",
        "/usr/share/doc/screengate/copyright",
        CONFFILE,
    ] {
        if !listed.iter().any(|l| l == Path::new(p)) {
            return Err(format!("dpkg -L does not list {p}"));
        }
    }
    let m = std::fs::metadata(CONFFILE).map_err(|e| e.to_string())?;
    if m.uid() != 0 || m.permissions().mode() & 0o7777 != 0o644 {
        return Err(format!("{CONFFILE} is not root's 0644"));
    }
    let conffiles = run(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", PACKAGE]))?;
    if !conffiles.contains(CONFFILE) {
        return Err(format!("{CONFFILE} is not a conffile: {conffiles}"));
    }
    Ok(())
}

/// Both users exist; the service user is in the display group; the
/// directories are the service user's with tight modes.
fn users_are_right(svc: &nix::unistd::User) -> R {
    let display = nix::unistd::Group::from_name("display")
        .ok()
        .flatten()
        .ok_or("postinst made no group `display`")?;
    if nix::unistd::User::from_name("display")
        .ok()
        .flatten()
        .is_none()
    {
        return Err("postinst made no user `display`".into());
    }
    let groups = run(Command::new("id").args(["-G", "screengate"]))?;
    if !groups
        .split_whitespace()
        .any(|g| g == display.gid.to_string())
    {
        return Err(format!("screengate is not in the display group: {groups}"));
    }
    for (d, mode) in [(STATE, 0o700), (RUN, 0o711)] {
        let m = std::fs::metadata(d).map_err(|e| format!("{d}: {e}"))?;
        if m.uid() != svc.uid.as_raw() || m.permissions().mode() & 0o7777 != mode {
            return Err(format!(
                "{d}: uid {} mode {:o}, want screengate's {mode:o}",
                m.uid(),
                m.permissions().mode() & 0o7777
            ));
        }
    }
    Ok(())
}

/// The identity exists, the service user's, keys 0600; postinst printed
/// the pin `screengate pin` reads. Returns the pin.
/// The generation in force: `STATE/current`, a link to an `id.*`
/// directory of the service user's, 0700.
fn generation_dir(svc: &nix::unistd::User) -> Result<PathBuf, String> {
    let link = Path::new(STATE).join("current");
    let target = std::fs::read_link(&link).map_err(|e| format!("{}: {e}", link.display()))?;
    if target.components().count() != 1 || !target.to_string_lossy().starts_with("id.") {
        return Err(format!("{} -> {}", link.display(), target.display()));
    }
    let dir = Path::new(STATE).join(&target);
    let m = std::fs::symlink_metadata(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mode = m.permissions().mode() & 0o7777;
    if !m.is_dir() || m.uid() != svc.uid.as_raw() || mode != 0o700 {
        return Err(format!("{}: uid {} mode {mode:o}", dir.display(), m.uid()));
    }
    Ok(dir)
}

fn identity_is_right(svc: &nix::unistd::User, postinst: &str) -> Result<String, String> {
    let dir = generation_dir(svc)?;
    for (f, key) in [
        ("device.key", true),
        ("server.key", true),
        ("client.key", true),
        ("server.crt", false),
        ("client.crt", false),
    ] {
        let p = dir.join(f);
        let m = std::fs::symlink_metadata(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        let mode = m.permissions().mode() & 0o7777;
        let ok_mode = if key {
            mode == 0o600
        } else {
            mode & 0o022 == 0
        };
        if !m.is_file() || m.uid() != svc.uid.as_raw() || !ok_mode {
            return Err(format!("{}: uid {} mode {mode:o}", p.display(), m.uid()));
        }
    }
    let pin = current_pin()?;
    if !postinst.contains(&format!("server spki pin: {pin}")) {
        return Err(format!(
            "postinst did not print the server pin {pin}:\n{postinst}"
        ));
    }
    Ok(pin)
}

fn current_pin() -> Result<String, String> {
    Ok(
        run(Command::new("/usr/bin/screengate").args(["pin", "--state-dir", STATE]))?
            .trim()
            .to_owned(),
    )
}

/// Every identity file's bytes, in a fixed order.
fn identity_bytes() -> Result<Vec<Vec<u8>>, String> {
    [
        "device.key",
        "server.key",
        "server.crt",
        "client.key",
        "client.crt",
    ]
    .iter()
    .map(|f| {
        std::fs::read(Path::new(STATE).join("current").join(f)).map_err(|e| format!("{f}: {e}"))
    })
    .collect()
}

/// `screengate check` on the installed configuration, as root (it drops to
/// the config's `user`).
fn check_passes() -> R {
    let out = run(Command::new("/usr/bin/screengate").args(["check", "--config", CONFFILE]))?;
    if out.trim() != "ok" {
        return Err(format!("screengate check said: {out}"));
    }
    Ok(())
}

fn units_verify_and_score(base: &Path) -> R {
    run(Command::new("systemd-analyze").args(["verify", SOCKET_UNIT, SYSTEM_UNIT]))?;
    // The socket binds what the server checks it against: [gateway] listen.
    let unit = std::fs::read_to_string(SOCKET_UNIT).map_err(|e| e.to_string())?;
    let stream = unit
        .lines()
        .find_map(|l| l.strip_prefix("ListenStream="))
        .ok_or("no ListenStream= in the socket unit")?;
    let conf = std::fs::read_to_string(CONFFILE).map_err(|e| e.to_string())?;
    let listen = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("listen = \""))
        .and_then(|r| r.split('"').next())
        .ok_or("no listen = in the conffile")?;
    if stream.trim() != listen {
        return Err(format!(
            "ListenStream={stream} in {SOCKET_UNIT}, but [gateway] listen = {listen}: the server would refuse the socket"
        ));
    }
    // A user manager needs a runtime directory; root has none here.
    let xdg = base.join("dist-xdg");
    std::fs::create_dir_all(&xdg).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&xdg, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| e.to_string())?;
    run(Command::new("systemd-analyze")
        .env("XDG_RUNTIME_DIR", &xdg)
        .args(["--user", "verify", USER_UNIT]))?;
    let (score, report) = crate::harden::unit_exposure(Path::new(SYSTEM_UNIT))?;
    if score > crate::harden::MAX_EXPOSURE {
        return Err(format!(
            "installed unit exposure {score} > {}:\n{report}",
            crate::harden::MAX_EXPOSURE
        ));
    }
    Ok(())
}

/// The installed binary serves on the installed configuration, identity
/// and directories (started as root, as an admin without systemd would: it
/// drops to `screengate`), and the service user may mint on its socket.
fn serves_and_mints(fx: &Fx, svc: &nix::unistd::User) -> R {
    let log = fx.base.join("dist-serve.log");
    let control = Path::new(RUN).join("control.sock");
    let mut s = ServerProc::start(
        Path::new("/usr/bin/screengate"),
        Path::new(STATE),
        &control,
        &log,
        &["--config", CONFFILE],
    )
    .map_err(|e| format!("{e:#}"))?;
    let m = std::fs::metadata(&control).map_err(|e| e.to_string())?;
    let display = nix::unistd::Group::from_name("display")
        .ok()
        .flatten()
        .ok_or("no group display")?;
    if m.uid() != svc.uid.as_raw()
        || m.gid() != display.gid.as_raw()
        || m.permissions().mode() & 0o777 != 0o660
    {
        return Err(format!(
            "control socket uid {} gid {} mode {:o}, want screengate:display 0660",
            m.uid(),
            m.gid(),
            m.permissions().mode() & 0o777
        ));
    }
    let minted = run_ok(
        Command::new("setpriv")
            .args([
                "--reuid",
                "screengate",
                "--regid",
                "screengate",
                "--init-groups",
                "--",
            ])
            .arg("/usr/bin/screengate")
            .args(["mint", "--control"])
            .arg(&control),
    )?;
    let v: serde_json::Value =
        serde_json::from_str(minted.trim()).map_err(|e| format!("mint reply ({e}): {minted}"))?;
    if v["token"].as_str().is_none() {
        return Err(format!("the service user's mint was refused: {v}"));
    }
    if let Some(t) = v["token"].as_str() {
        fx.tokens
            .lock()
            .map_err(|e| e.to_string())?
            .push(t.to_owned());
    }
    s.terminate(Duration::from_secs(6))
        .map_err(|e| format!("{e:#}"))?;
    fx.logs.lock().map_err(|e| e.to_string())?.push(log);
    Ok(())
}

/// No process runs a binary of the package (`/proc/*/exe`).
fn nothing_runs() -> R {
    for e in std::fs::read_dir("/proc")
        .map_err(|e| e.to_string())?
        .flatten()
    {
        if let Ok(exe) = std::fs::read_link(e.path().join("exe")) {
            let exe = exe.to_string_lossy().into_owned();
            if BINARIES
                .iter()
                .any(|b| exe.starts_with(&format!("/usr/bin/{b}")))
            {
                return Err(format!(
                    "pid {} still runs {exe} after dpkg -r",
                    e.file_name().to_string_lossy()
                ));
            }
        }
    }
    Ok(())
}

/// `dpkg-query -S DIR` names an installed package (a shared directory such
/// as /usr/bin stays after ours is removed).
fn owned_by_another_package(dir: &Path) -> bool {
    Command::new("dpkg-query")
        .arg("-S")
        .arg(dir)
        .output()
        .is_ok_and(|o| o.status.success())
}
