//! e2e cases for least privilege and protected state: root refusal, the
//! privilege drop, non-dumpable processes, the executable check, OpenSSH-
//! style permission refusals, unsafe socket paths, corrupt keys, the
//! SIGKILL loop over `init`, and the systemd credential. Most need root
//! (a throwaway service user); elsewhere they print `skipped: needs root`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use rand::Rng;

use super::{
    Case, EX_NOPERM, EX_UNAVAILABLE, EX_USAGE, Fx, R, TempUser, case, run_cmd as run, text,
};
use crate::proc::ServerProc;

const GROUP: &str = "privilege";

pub(super) const CASES: &[Case] = &[
    case!(Root "root_execution_refused" => root_refused),
    case!(Root "privilege_dropped_for_good" => dropped),
    case!(Root "server_not_dumpable_to_its_own_uid" => not_dumpable),
    case!(Root "launcher_not_dumpable" => launcher_not_dumpable),
    case!(Root "writable_executable_refused" => writable_exe),
    case!(Root "loose_permissions_refused_naming_the_fix" => loose),
    case!(Root "foreign_socket_path_refused" => foreign_socket),
    case!(Root "corrupt_key_refused_and_kept" => corrupt_key),
    case!(Root "sigkill_during_init_never_leaves_partial_files" => async sigkill_loop),
    case!(Root "device_key_from_systemd_credential" => async credential),
    case!(Root "config_owned_by_service_user_refused_as_root" => config_owned_by_svc),
    case!(Root "socket_group_the_user_is_not_in_refused" => foreign_group),
    case!(Root "untrusted_config_creates_nothing" => untrusted_config),
    case!(Root "dirs_created_only_under_safe_parents" => safe_parents),
    case!(Root "no_new_privs_and_empty_bounding_set" => no_new_privs),
    case!(Root "demo_backend_refuses_root" => demo_backend_root),
    case!(Root "listen_address_in_use_exits_unavailable" => address_in_use),
    case!(Root "default_state_dir_is_the_service_users" => default_state_dir),
    case!(Root "token_used_from_another_uid_refused_then_right_uid_succeeds" => async peer_uid_bound),
];

pub(crate) fn svc(fx: &Fx) -> Result<&TempUser, String> {
    fx.svc
        .as_ref()
        .ok_or_else(|| "needs the root-only service user".to_owned())
}

pub(crate) fn screengate(fx: &Fx) -> Command {
    Command::new(&fx.bin)
}

fn root_refused(fx: &Fx) -> R {
    let d = fx.base.join("root-refused");
    for args in [
        vec!["serve", "--listen", "127.0.0.1:0"],
        vec!["init"],
        vec!["check"],
        vec!["rotate"],
        vec!["reset"],
    ] {
        let o = run(screengate(fx).args(&args).arg("--state-dir").arg(&d))?;
        if o.status.code() != Some(EX_NOPERM)
            || !text(&o).contains("root execution is not permitted")
        {
            return Err(format!(
                "{args:?} as root: exit {:?}: {}",
                o.status.code(),
                text(&o)
            ));
        }
    }
    if d.exists() {
        return Err("a refused command still created the state dir".into());
    }
    Ok(())
}

fn status_field(pid: u32, field: &str) -> Result<String, String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    s.lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{field}:"))
                .map(|v| v.trim().to_owned())
        })
        .ok_or_else(|| format!("no {field} in /proc/{pid}/status"))
}

fn dropped(fx: &Fx) -> R {
    let u = svc(fx)?;
    let pid = fx.main.child.id();
    let uids = status_field(pid, "Uid")?;
    let gids = status_field(pid, "Gid")?;
    let want_u = [u.uid; 4].map(|x| x.to_string()).join("\t");
    let want_g = [u.gid; 4].map(|x| x.to_string()).join("\t");
    if uids != want_u || gids != want_g {
        return Err(format!(
            "Uid {uids:?} Gid {gids:?}, expected {} / {}",
            u.uid, u.gid
        ));
    }
    let groups = status_field(pid, "Groups")?;
    if !groups.is_empty() {
        return Err(format!("supplementary groups kept: {groups}"));
    }
    let cap = status_field(pid, "CapEff")?;
    if !cap.trim_start_matches('0').is_empty() {
        return Err(format!("effective capabilities left: {cap}"));
    }
    // everything it created belongs to the service user
    for p in [
        fx.base.join("state-main"),
        in_force(&fx.base.join("state-main")).join("device.key"),
        fx.main.control.clone(),
    ] {
        let m = std::fs::symlink_metadata(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        if m.uid() != u.uid {
            return Err(format!("{} owned by uid {}", p.display(), m.uid()));
        }
    }
    Ok(())
}

/// As the service user: reading environ and attaching with ptrace must fail.
fn probe_as(u: &TempUser, pid: u32) -> Result<(), String> {
    let as_user = |prog: &str, args: &[String]| run(u.command(prog, false).args(args));
    let o = as_user("cat", &[format!("/proc/{pid}/environ")])?;
    if o.status.success() {
        return Err("the service user could read the process's environ".into());
    }
    let o = as_user(
        "strace",
        &[
            "-p".into(),
            pid.to_string(),
            "-e".into(),
            "trace=none".into(),
        ],
    )?;
    if o.status.success() || !text(&o).contains("Operation not permitted") {
        return Err(format!("ptrace attach was not refused: {}", text(&o)));
    }
    Ok(())
}

fn not_dumpable(fx: &Fx) -> R {
    let u = svc(fx)?;
    // Self-check: a plain process of the same user *is* readable by it, so
    // the probe can tell the difference.
    let mut plain = u
        .command("sleep", false)
        .args(["5"])
        .spawn()
        .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(100));
    let probe_plain = probe_as(u, plain.id());
    let _ = plain.kill();
    let _ = plain.wait();
    if probe_plain.is_ok() {
        return Err("self-check failed: the probe also fails against a dumpable process".into());
    }
    probe_as(u, fx.main.child.id())
}

fn launcher_not_dumpable(fx: &Fx) -> R {
    // The launcher as the same (unprivileged) user as the probe, waiting for
    // a server that is not there: a same-uid process must still not read
    // its environ or attach to it.
    let u = svc(fx)?;
    let mut l = u
        .command(fx.base.join("bin/screengate-launch"), false)
        .args(["--control", "/nonexistent/c.sock", "--headless"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(300));
    let alive = matches!(l.try_wait(), Ok(None));
    let r = probe_as(u, l.id());
    let _ = l.kill();
    let _ = l.wait();
    if !alive {
        return Err("the launcher exited before it could be probed".into());
    }
    r
}

fn writable_exe(fx: &Fx) -> R {
    let u = svc(fx)?;
    let dir = fx.base.join("svc-bin");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let exe = dir.join("screengate");
    std::fs::copy(&fx.bin, &exe).map_err(|e| e.to_string())?;
    std::os::unix::fs::chown(&exe, Some(u.uid), Some(u.gid)).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    let o = run(Command::new(&exe)
        .args([
            "serve",
            "--user",
            &u.user,
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
        ])
        .arg(fx.base.join("state-wexe")))?;
    if o.status.code() != Some(EX_NOPERM)
        || !text(&o).contains("owned by the service user")
        || !text(&o).contains(&exe.display().to_string())
    {
        return Err(format!(
            "svc-owned binary: exit {:?}: {}",
            o.status.code(),
            text(&o)
        ));
    }
    // root-owned but in a directory the service user owns: refused too
    std::os::unix::fs::chown(&exe, Some(0), Some(0)).map_err(|e| e.to_string())?;
    std::os::unix::fs::chown(&dir, Some(u.uid), Some(u.gid)).map_err(|e| e.to_string())?;
    let o = run(Command::new(&exe)
        .args([
            "serve",
            "--user",
            &u.user,
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
        ])
        .arg(fx.base.join("state-wexe")))?;
    if o.status.code() != Some(EX_NOPERM) || !text(&o).contains(&dir.display().to_string()) {
        return Err(format!(
            "svc-owned directory: exit {:?}: {}",
            o.status.code(),
            text(&o)
        ));
    }
    Ok(())
}

pub(crate) fn init_as_svc(fx: &Fx, dir: &Path) -> R {
    let u = svc(fx)?;
    let o = run(screengate(fx)
        .args(["init", "--user", &u.user, "--state-dir"])
        .arg(dir))?;
    if !o.status.success() {
        return Err(format!("init: {}", text(&o)));
    }
    Ok(())
}

fn check_as_svc(fx: &Fx, dir: &Path, config: Option<&Path>) -> Result<Output, String> {
    let u = svc(fx)?;
    let mut c = screengate(fx);
    c.args(["check", "--user", &u.user, "--state-dir"]).arg(dir);
    if let Some(cfg) = config {
        c.arg("--config").arg(cfg);
    }
    run(&mut c)
}

/// The directory of the identity in force in state dir `d`: the
/// generation `current` names (the state dir itself for the flat layout).
pub(crate) fn in_force(d: &Path) -> PathBuf {
    std::fs::read_link(d.join("current")).map_or_else(|_| d.to_owned(), |g| d.join(g))
}

/// A change to a state dir (or its undo) in the loose-permissions case.
type Change = Box<dyn Fn(&Path) -> std::io::Result<()>>;

/// Sets `file` in the state dir (the dir itself when empty) to `mode`.
fn chmod(file: &'static str, mode: u32) -> Change {
    Box::new(move |d| {
        let p = if file.is_empty() {
            d.to_path_buf()
        } else {
            in_force(d).join(file)
        };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
    })
}

fn loose(fx: &Fx) -> R {
    let u = svc(fx)?;
    let dir = fx.base.join("state-loose");
    init_as_svc(fx, &dir)?;
    let ok = check_as_svc(fx, &dir, None)?;
    if !ok.status.success() {
        return Err(format!("fresh identity does not pass check: {}", text(&ok)));
    }
    let cfg = fx.base.join("loose.toml");
    std::fs::write(&cfg, "").map_err(|e| e.to_string())?;
    let (uid, gid) = (u.uid, u.gid);
    let id = in_force(&dir);
    let cases: Vec<(&str, PathBuf, &str, Change, Change)> = vec![
        (
            "state dir 0755",
            dir.clone(),
            "chmod 700",
            chmod("", 0o755),
            chmod("", 0o700),
        ),
        (
            "key 0640",
            id.join("server.key"),
            "chmod 600",
            chmod("server.key", 0o640),
            chmod("server.key", 0o600),
        ),
        (
            "device key owned by another user",
            id.join("device.key"),
            "chown",
            Box::new(|d| {
                std::os::unix::fs::chown(in_force(d).join("device.key"), Some(0), Some(0))
            }),
            Box::new(move |d| {
                std::os::unix::fs::chown(in_force(d).join("device.key"), Some(uid), Some(gid))
            }),
        ),
        (
            "client key a symlink",
            id.join("client.key"),
            "symbolic link",
            Box::new(|d| {
                let d = in_force(d);
                std::fs::rename(d.join("client.key"), d.join("client.key.real"))?;
                std::os::unix::fs::symlink(d.join("client.key.real"), d.join("client.key"))
            }),
            Box::new(|d| {
                let d = in_force(d);
                std::fs::remove_file(d.join("client.key"))?;
                std::fs::rename(d.join("client.key.real"), d.join("client.key"))
            }),
        ),
        (
            "certificate group-writable",
            id.join("server.crt"),
            "chmod go-w",
            chmod("server.crt", 0o664),
            chmod("server.crt", 0o644),
        ),
    ];
    for (what, path, fix, mutate, undo) in &cases {
        mutate(&dir).map_err(|e| format!("{what}: {e}"))?;
        let o = check_as_svc(fx, &dir, None)?;
        undo(&dir).map_err(|e| format!("undo {what}: {e}"))?;
        let t = text(&o);
        if o.status.success() || !t.contains(&path.display().to_string()) || !t.contains(fix) {
            return Err(format!("{what}: exit {:?}: {t}", o.status.code()));
        }
    }
    // the config file: group-writable is refused, naming it
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o664))
        .map_err(|e| e.to_string())?;
    let o = check_as_svc(fx, &dir, Some(&cfg))?;
    if o.status.success()
        || !text(&o).contains(&cfg.display().to_string())
        || !text(&o).contains("chmod go-w")
    {
        return Err(format!("group-writable config: {}", text(&o)));
    }
    // and serve refuses it too, before binding anything
    let o = run(screengate(fx)
        .args([
            "serve",
            "--user",
            &u.user,
            "--listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&cfg)
        .arg("--state-dir")
        .arg(&dir))?;
    if o.status.code() != Some(EX_NOPERM) || !text(&o).contains(&cfg.display().to_string()) {
        return Err(format!("serve with group-writable config: {}", text(&o)));
    }
    let after = check_as_svc(fx, &dir, None)?;
    (after.status.success()).then_some(()).ok_or(format!(
        "identity broken by the test itself: {}",
        text(&after)
    ))
}

fn foreign_socket(fx: &Fx) -> R {
    let u = svc(fx)?;
    let run_dir = fx.base.join("run/foreign");
    std::fs::create_dir_all(&run_dir).map_err(|e| e.to_string())?;
    std::os::unix::fs::chown(&run_dir, Some(u.uid), Some(u.gid)).map_err(|e| e.to_string())?;
    let sock = run_dir.join("c.sock");
    let _held = std::os::unix::net::UnixListener::bind(&sock).map_err(|e| e.to_string())?; // owned by root
    drop(_held); // a stale socket of another user: still refused, never unlinked
    let o = run(screengate(fx)
        .args([
            "serve",
            "--user",
            &u.user,
            "--listen",
            "127.0.0.1:0",
            "--control",
        ])
        .arg(&sock)
        .arg("--state-dir")
        .arg(fx.base.join("state-foreign")))?;
    if o.status.success() || !text(&o).contains("owned by uid 0") {
        return Err(format!(
            "foreign socket: exit {:?}: {}",
            o.status.code(),
            text(&o)
        ));
    }
    if !sock.exists() {
        return Err("the foreign socket was removed".into());
    }
    Ok(())
}

fn corrupt_key(fx: &Fx) -> R {
    let u = svc(fx)?;
    let dir = fx.base.join("state-corrupt");
    init_as_svc(fx, &dir)?;
    let key = in_force(&dir).join("server.key");
    let orig = std::fs::read(&key).map_err(|e| e.to_string())?;
    let half = orig.get(..orig.len() / 2).unwrap_or(&[]).to_vec();
    std::fs::write(&key, &half).map_err(|e| e.to_string())?;
    let o = run(screengate(fx)
        .args([
            "serve",
            "--user",
            &u.user,
            "--listen",
            "127.0.0.1:0",
            "--control",
        ])
        .arg(fx.base.join("run/corrupt/c.sock"))
        .arg("--state-dir")
        .arg(&dir))?;
    if o.status.success() || !text(&o).contains("server.key") {
        return Err(format!(
            "truncated key: exit {:?}: {}",
            o.status.code(),
            text(&o)
        ));
    }
    if std::fs::read(&key).map_err(|e| e.to_string())? != half {
        return Err("the corrupt key was modified (regenerated?)".into());
    }
    Ok(())
}

/// What a killed writer left in state dir `dir`: `None` when no identity
/// is in force, `Some(n)` with the number of generations on disk when one
/// is (more than one: a kill landed between two steps of the writer).
/// Every file of the identity in force must be whole; and when there is
/// none, no flat identity file may exist either.
pub(crate) fn identity_in_force(dir: &Path) -> Result<Option<usize>, String> {
    use rustls::pki_types::pem::PemObject;
    let generations = std::fs::read_dir(dir).map_or(0, |d| {
        d.flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("id."))
            .count()
    });
    let id = in_force(dir);
    if id == dir {
        for name in ["device.key", "server.key", "client.key"] {
            if dir.join(name).exists() {
                return Err(format!("{name} exists with no identity in force"));
            }
        }
        return Ok(None);
    }
    for name in [
        "device.key",
        "server.key",
        "server.crt",
        "client.key",
        "client.crt",
    ] {
        let p = id.join(name);
        let bytes = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        let ok = match name {
            "device.key" => bytes.len() == 32,
            n if n.ends_with(".key") => {
                rustls::pki_types::PrivateKeyDer::from_pem_slice(&bytes).is_ok()
            }
            _ => screengate_identity::spki_pin_of_cert(
                &rustls::pki_types::CertificateDer::from_pem_slice(&bytes)
                    .map_err(|e| e.to_string())?,
            )
            .is_some(),
        };
        if !ok {
            return Err(format!(
                "{} is partial ({} bytes)",
                p.display(),
                bytes.len()
            ));
        }
    }
    Ok(Some(generations))
}

async fn sigkill_loop(fx: &Fx) -> R {
    let u = svc(fx)?;
    // How long does a whole init take? Kill within that window.
    let probe = fx.base.join("state-kill-probe");
    let t0 = std::time::Instant::now();
    init_as_svc(fx, &probe)?;
    let full = t0.elapsed().as_micros().max(1000);
    let (mut absent, mut midway, mut complete) = (0, 0, 0);
    for i in 0..200 {
        let dir = fx.base.join(format!("state-kill-{}", i % 8));
        let _ = std::fs::remove_dir_all(&dir);
        let mut child = screengate(fx)
            .args(["init", "--user", &u.user, "--state-dir"])
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let delay = rand::rng().random_range(0..full.saturating_mul(12) / 10);
        std::thread::sleep(Duration::from_micros(u64::try_from(delay).unwrap_or(0)));
        let _ = child.kill();
        let _ = child.wait();
        // no identity, or a whole one: never some of its files
        match identity_in_force(&dir).map_err(|e| format!("iteration {i}: {e}"))? {
            None => absent += 1,
            Some(_) => complete += 1,
        }
        // a generation directory not in force: the kill landed mid-write
        let gens = std::fs::read_dir(&dir).map_or(0, |d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("id."))
                .count()
        });
        if gens > usize::from(in_force(&dir) != dir) {
            midway += 1;
        }
        // and whatever was left, a later init completes into a loadable
        // identity and removes the leftovers
        if i % 25 == 0 {
            init_as_svc(fx, &dir)?;
            if identity_in_force(&dir)? != Some(1) {
                return Err(format!(
                    "iteration {i}: init did not leave exactly one whole identity"
                ));
            }
        }
    }
    println!(
        "      (200 kills within ~{} ms: {absent} before the switch, {complete} after; {midway} left a half-written generation, never in force)",
        full / 1000
    );
    if absent + complete != 200 || midway == 0 {
        return Err(format!(
            "no kill landed mid-way ({absent}/{midway}/{complete}); the loop proved nothing"
        ));
    }
    Ok(())
}

async fn credential(fx: &Fx) -> R {
    let u = svc(fx)?;
    let creds = fx.base.join("creds");
    std::fs::create_dir_all(&creds).map_err(|e| e.to_string())?;
    let key = creds.join("screengate-device-key");
    let mut k = [0u8; 32];
    rand::rng().fill(&mut k);
    std::fs::write(&key, k).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| e.to_string())?;
    std::os::unix::fs::chown(&key, Some(u.uid), Some(u.gid)).map_err(|e| e.to_string())?;
    std::os::unix::fs::chown(&creds, Some(u.uid), Some(u.gid)).map_err(|e| e.to_string())?;
    let state = fx.base.join("state-cred");
    let log = fx.base.join("cred.log");
    fx.logs.lock().map_err(|e| e.to_string())?.push(log.clone());
    let s = ServerProc::start_env(
        &fx.bin,
        &state,
        &fx.base.join("run/cred/c.sock"),
        &log,
        &["--user", &u.user, "--allow-uid", "0"],
        &[("CREDENTIALS_DIRECTORY", &creds)],
    )
    .map_err(|e| format!("{e:#}"))?;
    fx.mint_on(&s.control).await?;
    if in_force(&state).join("device.key").exists() {
        return Err("device.key was written although the credential provides it".into());
    }
    if !s
        .log_text()
        .contains("device_key_source=\"systemd credential\"")
    {
        return Err("the server did not report the credential as its device key source".into());
    }
    if !fx
        .main
        .log_text()
        .contains("device_key_source=\"state dir\"")
    {
        return Err("self-check: the main server should report the state dir".into());
    }
    Ok(())
}

// ---- issue 14: nothing trusted before the drop ---------------------------------

/// Runs `cmd` for at most `secs`: its exit status (None: still running, then
/// killed by pid) and its output so far. Used where the old code served.
fn run_briefly(
    cmd: &mut Command,
    log: &Path,
    secs: u64,
) -> Result<(Option<std::process::ExitStatus>, String, String), String> {
    let f = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let f2 = f.try_clone().map_err(|e| e.to_string())?;
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(f)
        .stderr(f2)
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(st);
        }
        if std::time::Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let groups = if status.is_none() {
        let g = status_field(child.id(), "Groups").unwrap_or_default();
        let _ = child.kill();
        let _ = child.wait();
        g
    } else {
        String::new()
    };
    let out = std::fs::read_to_string(log).unwrap_or_default();
    Ok((status, out, groups))
}

/// Writes a config file with `owner` and `mode`.
fn write_config(path: &Path, text: &str, owner: (u32, u32), mode: u32) -> R {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    std::os::unix::fs::chown(path, Some(owner.0), Some(owner.1)).map_err(|e| e.to_string())?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())
}

/// `serve --user svc --listen 127.0.0.1:0 --config cfg --control
/// run/NAME/c.sock`: the start every refusal case makes.
fn svc_serve_cmd(fx: &Fx, name: &str, cfg: &Path) -> Result<Command, String> {
    let u = svc(fx)?;
    let mut cmd = screengate(fx);
    cmd.args(["serve", "--user", &u.user, "--listen", "127.0.0.1:0"])
        .arg("--config")
        .arg(cfg)
        .arg("--control")
        .arg(fx.base.join(format!("run/{name}/c.sock")));
    Ok(cmd)
}

/// `serve --user svc --config cfg` (with its own state dir and control
/// socket) must exit `code` at once with every `needles` in its output.
fn serve_refused(
    fx: &Fx,
    name: &str,
    cfg: &Path,
    extra: &[&str],
    needles: &[&str],
    code: i32,
) -> R {
    let mut cmd = svc_serve_cmd(fx, name, cfg)?;
    cmd.args(extra);
    if !extra.contains(&"--state-dir") {
        cmd.arg("--state-dir")
            .arg(fx.base.join(format!("state-{name}")));
    }
    let (st, out, groups) = run_briefly(&mut cmd, &fx.base.join(format!("{name}.out")), 5)?;
    match st {
        None => Err(format!(
            "{name}: the server started and served (Groups: {groups:?}); output: {out}"
        )),
        Some(st) if st.code() != Some(code) => {
            Err(format!("{name}: exit {:?} (want {code}): {out}", st.code()))
        }
        Some(_) => match needles.iter().find(|n| !out.contains(**n)) {
            Some(n) => Err(format!("{name}: refusal does not say {n:?}: {out}")),
            None => Ok(()),
        },
    }
}

fn config_owned_by_svc(fx: &Fx) -> R {
    let u = svc(fx)?;
    let cfg = fx.base.join("cfg-svc-owned.toml");
    write_config(&cfg, "[control]\ngroup = \"disk\"\n", (u.uid, u.gid), 0o600)?;
    let c = cfg.display().to_string();
    serve_refused(
        fx,
        "cfgsvc",
        &cfg,
        &[],
        &[&c, "owned by uid", "root"],
        EX_NOPERM,
    )?;
    // check says the same, and neither leaves anything behind
    let o = run(screengate(fx)
        .args(["check", "--user", &u.user, "--config"])
        .arg(&cfg)
        .arg("--state-dir")
        .arg(fx.base.join("state-cfgsvc")))?;
    if o.status.success() || !text(&o).contains(&c) {
        return Err(format!("check accepted the svc-owned config: {}", text(&o)));
    }
    if fx.base.join("state-cfgsvc").exists() {
        return Err("the state dir was created from an untrusted config".into());
    }
    Ok(())
}

fn foreign_group(fx: &Fx) -> R {
    // root-owned, trusted config; the group is one the user is not in
    let cfg = fx.base.join("cfg-disk.toml");
    write_config(&cfg, "[control]\ngroup = \"disk\"\n", (0, 0), 0o600)?;
    serve_refused(
        fx,
        "cfgdisk",
        &cfg,
        &[],
        &["disk", "not a member"],
        EX_USAGE,
    )?;
    if fx.base.join("state-cfgdisk").exists() {
        return Err("the state dir was created although the start was refused".into());
    }
    Ok(())
}

fn untrusted_config(fx: &Fx) -> R {
    let x = fx.base.join("x");
    std::fs::create_dir_all(&x).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&x, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    let chosen = x.join("chosen-by-anyone.d");
    // 1. root-owned but 0666: anyone chose its state_dir
    let cfg = fx.base.join("cfg-0666.toml");
    let body = format!("state_dir = \"{}\"\n", chosen.display());
    write_config(&cfg, &body, (0, 0), 0o666)?;
    let mut cmd = svc_serve_cmd(fx, "cfg0666", &cfg)?;
    let (st, out, _) = run_briefly(&mut cmd, &fx.base.join("cfg0666.out"), 5)?;
    if st.map(|s| s.code()) != Some(Some(EX_NOPERM)) || !out.contains(&cfg.display().to_string()) {
        return Err(format!("0666 config: {st:?}: {out}"));
    }
    if chosen.exists() {
        return Err(format!(
            "{} was created by root before the config was refused",
            chosen.display()
        ));
    }
    // 2. a good file in a directory others can write: refused, naming it
    let open = fx.base.join("open-dir");
    std::fs::create_dir_all(&open).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777))
        .map_err(|e| e.to_string())?;
    let cfg2 = open.join("screengate.toml");
    write_config(&cfg2, &body, (0, 0), 0o600)?;
    serve_refused(
        fx,
        "cfgopendir",
        &cfg2,
        &[],
        &[&open.display().to_string()],
        EX_NOPERM,
    )?;
    // 3. a symbolic link to a good file: not followed
    let good = fx.base.join("cfg-good.toml");
    write_config(&good, &body, (0, 0), 0o600)?;
    let link = fx.base.join("cfg-link.toml");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&good, &link).map_err(|e| e.to_string())?;
    serve_refused(
        fx,
        "cfglink",
        &link,
        &[],
        &[&link.display().to_string(), "symbolic link"],
        EX_NOPERM,
    )?;
    if chosen.exists() {
        return Err(format!("{} was created", chosen.display()));
    }
    Ok(())
}

fn safe_parents(fx: &Fx) -> R {
    let u = svc(fx)?;
    let empty = fx.base.join("cfg-empty.toml");
    write_config(&empty, "", (0, 0), 0o600)?;
    // a parent anyone can write, and a parent of another uid: refused
    for (name, mode, owner) in [("pw-open", 0o777, 0), ("pw-foreign", 0o755, 4_242_424)] {
        let parent = fx.base.join(name);
        std::fs::create_dir_all(&parent).map_err(|e| e.to_string())?;
        std::os::unix::fs::chown(&parent, Some(owner), Some(owner)).map_err(|e| e.to_string())?;
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(mode))
            .map_err(|e| e.to_string())?;
        let state = parent.join("state");
        let st = state.display().to_string();
        serve_refused(
            fx,
            name,
            &empty,
            &["--state-dir", &st],
            &[&parent.display().to_string()],
            EX_NOPERM,
        )?;
        if state.exists() {
            return Err(format!(
                "{} was created under an unsafe parent",
                state.display()
            ));
        }
    }
    // a link the service user planted in its own directory, pointing at a
    // directory only root can write: root must not follow it (review of
    // issue 14 reproduced root creating the state dir there)
    let planted = fx.base.join("pw-svc-link");
    let victim = fx.base.join("pw-victim");
    for d in [&planted, &victim] {
        std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
    }
    std::os::unix::fs::chown(&planted, Some(u.uid), Some(u.gid)).map_err(|e| e.to_string())?;
    let link = planted.join("lnk");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&victim, &link).map_err(|e| e.to_string())?;
    std::os::unix::fs::lchown(&link, Some(u.uid), Some(u.gid)).map_err(|e| e.to_string())?;
    for (i, state) in [link.join("pwn.d"), link.join("deeper/pwn.d")]
        .iter()
        .enumerate()
    {
        let st = state.display().to_string();
        serve_refused(
            fx,
            &format!("pw-link-{i}"),
            &empty,
            &["--state-dir", &st],
            &[&link.display().to_string(), "symbolic link"],
            EX_NOPERM,
        )?;
    }
    for made in ["pwn.d", "deeper"] {
        if victim.join(made).exists() {
            return Err(format!(
                "root followed the planted link and created {}",
                victim.join(made).display()
            ));
        }
    }
    // a parent the service user owns: root makes nothing there, the user does
    let own = fx.base.join("pw-svc");
    std::fs::create_dir_all(&own).map_err(|e| e.to_string())?;
    std::os::unix::fs::chown(&own, Some(u.uid), Some(u.gid)).map_err(|e| e.to_string())?;
    let state = own.join("state");
    let log = fx.base.join("pw-svc.log");
    fx.logs.lock().map_err(|e| e.to_string())?.push(log.clone());
    let s = ServerProc::start(
        &fx.bin,
        &state,
        &fx.base.join("run/pw-svc/c.sock"),
        &log,
        &["--user", &u.user, "--allow-uid", "0"],
    )
    .map_err(|e| format!("{e:#}"))?;
    let m = std::fs::metadata(&state).map_err(|e| e.to_string())?;
    drop(s);
    if m.uid() != u.uid {
        return Err(format!("{} owned by uid {}", state.display(), m.uid()));
    }
    Ok(())
}

fn no_new_privs(fx: &Fx) -> R {
    svc(fx)?;
    let pid = fx.main.child.id();
    let mut wrong = Vec::new();
    for (field, want) in [
        ("NoNewPrivs", "1"),
        ("CapBnd", "0000000000000000"),
        ("CapPrm", "0000000000000000"),
        ("CapEff", "0000000000000000"),
        ("CapInh", "0000000000000000"),
        ("CapAmb", "0000000000000000"),
    ] {
        let got = status_field(pid, field)?;
        if got != want {
            wrong.push(format!("{field}: {got} (want {want})"));
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join("; "))
    }
}

/// A listen address another socket holds: exit 69 (`EX_UNAVAILABLE`),
/// naming the address, not 64 (the config is fine) nor 71.
fn address_in_use(fx: &Fx) -> R {
    let u = svc(fx)?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = taken.local_addr().map_err(|e| e.to_string())?.to_string();
    let mut cmd = screengate(fx);
    cmd.args(["serve", "--user", &u.user, "--listen", &addr, "--control"])
        .arg(fx.base.join("run/inuse/c.sock"))
        .arg("--state-dir")
        .arg(fx.base.join("state-inuse"));
    let (st, out, _) = run_briefly(&mut cmd, &fx.base.join("inuse.out"), 20)?;
    drop(taken);
    if st.map(|s| s.code()) != Some(Some(EX_UNAVAILABLE)) || !out.contains(&addr) {
        return Err(format!("serve on a taken address {addr}: {st:?}: {out}"));
    }
    Ok(())
}

fn demo_backend_root(fx: &Fx) -> R {
    let sock = fx.base.join("run/demo-root.sock");
    let mut cmd = screengate(fx);
    cmd.args(["demo-backend", "--unix"]).arg(&sock);
    let (st, out, _) = run_briefly(&mut cmd, &fx.base.join("demo-root.out"), 3)?;
    let bound = sock.exists();
    if st.map(|s| s.code()) != Some(Some(EX_NOPERM))
        || !out.contains("root execution is not permitted")
        || bound
    {
        return Err(format!(
            "demo-backend as root: {st:?}, socket bound: {bound}: {out}"
        ));
    }
    Ok(())
}

fn default_state_dir(fx: &Fx) -> R {
    let u = svc(fx)?;
    let home = nix::unistd::User::from_name(&u.user)
        .ok()
        .flatten()
        .map(|p| p.dir)
        .ok_or("service user has no passwd entry")?;
    let o = run(screengate(fx)
        .args(["check", "--user", &u.user])
        .env("HOME", "/root")
        .env_remove("XDG_STATE_HOME"))?;
    let t = text(&o);
    if t.contains("/root") || !t.contains(&home.display().to_string()) {
        return Err(format!(
            "check --user without --state-dir looked outside {}: {t}",
            home.display()
        ));
    }
    Ok(())
}

async fn peer_uid_bound(fx: &Fx) -> R {
    let p = super::TempUser::create("p")?;
    // 1. the main server: peers default to the minting uids (root here)
    let t = fx.mint().await?;
    let (status, _) = fx.peer_handshake(&p, fx.addr, fx.pin, &t)?;
    if status != 403 {
        return Err(format!("token from uid {}: {status}, expected 403", p.uid));
    }
    let log = fx.main.log_text();
    let needle = format!("peer_uid={}", p.uid);
    if !log
        .lines()
        .any(|l| l.contains("peer_uid_not_allowed") && l.contains(&needle))
    {
        return Err(format!("no peer_uid_not_allowed audit event with {needle}"));
    }
    // not consumed: the right uid still gets in with the same token
    let (resp, ws) = screengate_tests::handshake(
        fx.addr,
        fx.pin,
        &screengate_tests::Request::display(fx.port(), Some(&t)),
    )
    .await?;
    let mut ws = ws.ok_or(format!("right uid, same token: {}", resp.status))?;
    screengate_tests::echo(&mut ws, "after the refusal").await?;
    drop(ws);
    // 2. `[gateway] allowed_peer_uids` names the display uid: root's own
    //    connections are refused, that uid's accepted
    let cfg = fx.base.join("cfg-peer.toml");
    write_config(
        &cfg,
        &format!("[gateway]\nallowed_peer_uids = [{}]\n", p.uid),
        (0, 0),
        0o600,
    )?;
    let c = cfg.display().to_string();
    let s = fx.spawn_server("peer", &["--config", &c])?;
    let (port, pin) = super::port_and_pin(&s.control).await?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let t = fx.mint_on(&s.control).await?.0;
    let (resp, ws) = screengate_tests::handshake(
        addr,
        pin,
        &screengate_tests::Request::display(port, Some(&t)),
    )
    .await?;
    if ws.is_some() || resp.status != 403 {
        return Err(format!(
            "root peer with allowed_peer_uids = [{}]: {}",
            p.uid, resp.status
        ));
    }
    let (status, echoed) = fx.peer_handshake(&p, addr, pin, &t)?;
    if status != 101 || echoed.is_none() {
        return Err(format!(
            "uid {} with its own token: {status} {echoed:?}",
            p.uid
        ));
    }
    let line_for = |uid: u32| format!("peer_uid={uid}");
    let slog = s.log_text();
    if !slog
        .lines()
        .any(|l| l.contains("accepted") && l.contains(&line_for(p.uid)))
    {
        return Err("the accepted event lacks the peer uid".into());
    }
    Ok(())
}
