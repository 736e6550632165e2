//! e2e re-provisioning cases (issue 15): `screengate rotate` killed at
//! many moments leaves the old identity or the new one, never a mix and
//! never a load error, as `pin`, `check` and a server start see it; and
//! `screengate reset` removes only what screengate made, refusing unsafe
//! or busy state dirs. All run as root with the throwaway service user.
//! The reload of a rotated identity is `e2e_reload.rs`'s; the init kill
//! loop is `e2e_privilege.rs`'s.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rand::Rng;

use super::privilege::{identity_in_force, in_force, init_as_svc, screengate, svc};
use super::{
    Case, EX_NOPERM, EX_UNAVAILABLE, EX_USAGE, Fx, R, case, port_and_pin, run_cmd as run, text,
};
use crate::proc::ServerProc;

const GROUP: &str = "rotate";

pub(super) const CASES: &[Case] = &[
    case!(Root "sigkill_during_rotate_leaves_the_old_or_the_new_identity" => async kill_loop),
    case!(Root "reset_removes_only_its_own_files_and_refuses_unsafe_dirs" => async reset),
];

/// At most this many kills, and no new one after this long (the case's
/// own deadline is 60 s).
const KILLS: usize = 120;
const KILL_BUDGET: Duration = Duration::from_secs(35);

/// The server and client pins `screengate pin` prints for `dir`.
fn pins(fx: &Fx, dir: &Path) -> Result<(String, String), String> {
    let one = |client: bool| -> Result<String, String> {
        let mut c = screengate(fx);
        c.args(["pin", "--state-dir"]).arg(dir);
        if client {
            c.arg("--client");
        }
        let o = run(&mut c)?;
        if !o.status.success() {
            return Err(format!("pin (client: {client}): {}", text(&o)));
        }
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    Ok((one(false)?, one(true)?))
}

/// The `server spki pin:` line of `init`/`rotate` output.
fn printed_pin(out: &str, which: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{which} spki pin: ")))
        .map(str::to_owned)
}

fn rotate_as_svc(fx: &Fx, dir: &Path) -> Result<String, String> {
    let u = svc(fx)?;
    let o = run(screengate(fx)
        .args(["rotate", "--user", &u.user, "--state-dir"])
        .arg(dir))?;
    if !o.status.success() {
        return Err(format!("rotate: {}", text(&o)));
    }
    Ok(text(&o))
}

fn generation_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).map_or_else(
        |_| Vec::new(),
        |d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("id."))
                .collect()
        },
    )
}

fn generations(dir: &Path) -> usize {
    generation_names(dir).len()
}

/// The name of the generation in force.
fn in_force_name(dir: &Path) -> Option<String> {
    std::fs::read_link(dir.join("current"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

async fn kill_loop(fx: &Fx) -> R {
    let u = svc(fx)?;
    let dir = fx.base.join("state-rotate-kill");
    init_as_svc(fx, &dir)?;
    // How long does a whole rotate take? Kill within that window.
    let t0 = Instant::now();
    let out = rotate_as_svc(fx, &dir)?;
    let full = t0.elapsed().as_micros().max(1000);
    let mut old = pins(fx, &dir)?;
    if printed_pin(&out, "server").as_ref() != Some(&old.0)
        || printed_pin(&out, "client").as_ref() != Some(&old.1)
    {
        return Err(format!("rotate printed other pins than `pin` reads: {out}"));
    }
    let (mut kept, mut switched, mut midway, mut unswept, mut starts) = (0, 0, 0, 0, 0);
    let started = Instant::now();
    let mut i = 0;
    while i < KILLS && started.elapsed() < KILL_BUDGET {
        let (gens_before, force_before) = (generation_names(&dir), in_force_name(&dir));
        let mut child = screengate(fx)
            .args(["rotate", "--user", &u.user, "--state-dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let delay = rand::rng().random_range(0..full.saturating_mul(12) / 10);
        std::thread::sleep(Duration::from_micros(u64::try_from(delay).unwrap_or(0)));
        let _ = child.kill();
        let _ = child.wait();
        let at = |e: String| format!("kill {i} after {delay} us: {e}");
        // the files: one whole identity in force
        if identity_in_force(&dir).map_err(at)?.is_none() {
            return Err(at("no identity in force after a killed rotate".into()));
        }
        // a generation this rotate made but did not put in force: killed
        // mid-write; the old one still there beside the new one in force:
        // killed between the switch and the clean-up
        let force_now = in_force_name(&dir);
        let gens_now = generation_names(&dir);
        if gens_now
            .iter()
            .any(|g| !gens_before.contains(g) && Some(g) != force_now.as_ref())
        {
            midway += 1;
        }
        if force_now != force_before && force_before.as_ref().is_some_and(|f| gens_now.contains(f))
        {
            unswept += 1;
        }
        // `pin`: the old pair or a new pair, never one of each
        let now = pins(fx, &dir).map_err(at)?;
        match (now.0 == old.0, now.1 == old.1) {
            (true, true) => kept += 1,
            (false, false) => switched += 1,
            _ => {
                return Err(at(format!(
                    "a mix: server pin {} ({}), client pin {} ({})",
                    now.0,
                    if now.0 == old.0 { "old" } else { "new" },
                    now.1,
                    if now.1 == old.1 { "old" } else { "new" }
                )));
            }
        }
        // `check`: loads, permissions hold
        let o = run(screengate(fx)
            .args(["check", "--user", &u.user, "--state-dir"])
            .arg(&dir))?;
        if !o.status.success() {
            return Err(at(format!("check refused: {}", text(&o))));
        }
        // now and then a server start on it, serving the same pin
        if i % 30 == 7 {
            let control = fx.base.join("run/rotate-kill/c.sock");
            let mut s = server_on(fx, &dir, &control, &format!("rotate-kill-{i}"))
                .map_err(|e| at(format!("server start: {e}")))?;
            let served = port_and_pin(&control).await.map(|(_, p)| p.to_string());
            let _ = s.terminate(Duration::from_secs(5));
            let served = served.map_err(at)?;
            if served != now.0 {
                return Err(at(format!(
                    "the server serves {served}, `pin` says {}",
                    now.0
                )));
            }
            starts += 1;
        }
        old = now;
        i += 1;
    }
    // a finished rotate after all that leaves one generation, no temp file
    rotate_as_svc(fx, &dir)?;
    let left: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "current" && n != ".lock")
        .collect();
    if left.len() != 1 || generations(&dir) != 1 {
        return Err(format!(
            "after a finished rotate the state dir holds {left:?}"
        ));
    }
    println!(
        "      ({i} kills within ~{} ms: {kept} kept the old identity, {switched} had the new one; {midway} left a half-written generation (never read), {unswept} the old one beside the new; {starts} server starts)",
        full / 1000
    );
    if kept == 0 || switched == 0 || midway == 0 {
        return Err(format!(
            "the kills did not cover the rotate (kept {kept}, switched {switched}, mid-way {midway}); the loop proved nothing"
        ));
    }
    Ok(())
}

fn reset_as_svc(fx: &Fx, dir: &Path) -> Result<std::process::Output, String> {
    let u = svc(fx)?;
    run(screengate(fx)
        .args(["reset", "--user", &u.user, "--state-dir"])
        .arg(dir))
}

/// Expects a refused reset: exit `code` and `needle` in the output.
fn refused(o: &std::process::Output, what: &str, needle: &str, code: i32) -> R {
    if o.status.code() != Some(code) || !text(o).contains(needle) {
        return Err(format!(
            "{what}: exit {:?}, expected {code} naming `{needle}`: {}",
            o.status.code(),
            text(o)
        ));
    }
    Ok(())
}

async fn reset(fx: &Fx) -> R {
    let u = svc(fx)?;
    let dir = fx.base.join("state-reset");
    init_as_svc(fx, &dir)?;
    let before = pins(fx, &dir)?;

    // a state dir that does not exist
    let none = fx.base.join("state-reset-none");
    refused(
        &reset_as_svc(fx, &none)?,
        "missing dir",
        "does not exist",
        EX_USAGE,
    )?;
    if none.exists() {
        return Err("reset created the missing state dir".into());
    }
    // one owned by another user (root), with a file named like a key
    let foreign = fx.base.join("state-reset-foreign");
    std::fs::create_dir_all(&foreign).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| e.to_string())?;
    std::fs::write(foreign.join("device.key"), [5u8; 32]).map_err(|e| e.to_string())?;
    refused(
        &reset_as_svc(fx, &foreign)?,
        "foreign dir",
        "owned by uid 0",
        EX_NOPERM,
    )?;
    if std::fs::read(foreign.join("device.key")).map_err(|e| e.to_string())? != [5u8; 32] {
        return Err("a refused reset touched the foreign dir's file".into());
    }
    // a loose one
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750))
        .map_err(|e| e.to_string())?;
    let o = reset_as_svc(fx, &dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| e.to_string())?;
    refused(&o, "mode 0750", "chmod 700", EX_NOPERM)?;
    // one a server is running on
    let control = fx.base.join("run/reset/c.sock");
    let mut s = server_on(fx, &dir, &control, "reset-running")?;
    let o = reset_as_svc(fx, &dir)?;
    let still = port_and_pin(&control).await;
    let _ = s.terminate(Duration::from_secs(5));
    refused(&o, "running server", "server is running", EX_UNAVAILABLE)?;
    still.map_err(|e| format!("the server stopped serving after a refused reset: {e}"))?;
    if pins(fx, &dir)? != before {
        return Err("a refused reset changed the identity".into());
    }

    // planted links pointing out of the state dir: never followed
    let outside = fx.base.join("reset-outside");
    std::fs::create_dir_all(&outside).map_err(|e| e.to_string())?;
    let victim = outside.join("victim");
    std::fs::write(&victim, b"not screengate's").map_err(|e| e.to_string())?;
    std::os::unix::fs::chown(&victim, Some(u.uid), Some(u.gid)).map_err(|e| e.to_string())?;
    std::fs::write(outside.join("server.key"), b"not screengate's either")
        .map_err(|e| e.to_string())?;
    let key = in_force(&dir).join("client.key");
    std::fs::remove_file(&key).map_err(|e| e.to_string())?;
    let plant = |target: &Path, link: &Path| {
        std::os::unix::fs::symlink(target, link).map_err(|e| format!("{}: {e}", link.display()))
    };
    plant(&victim, &key)?;
    plant(&victim, &dir.join("device.key"))?;
    plant(&outside, &dir.join("id.0123456789abcdef"))?;
    plant(&victim, &dir.join(".server.key.tmp.abcdef"))?;
    std::fs::write(dir.join("operator-notes"), b"mine").map_err(|e| e.to_string())?;
    let o = reset_as_svc(fx, &dir)?;
    if !o.status.success() {
        return Err(format!("reset: exit {:?}: {}", o.status.code(), text(&o)));
    }
    if std::fs::read(&victim).map_err(|e| e.to_string())? != b"not screengate's"
        || std::fs::read(outside.join("server.key")).map_err(|e| e.to_string())?
            != b"not screengate's either"
    {
        return Err("reset followed a planted link and changed its target".into());
    }
    let t = text(&o);
    if !t.contains("removed") || !t.contains("server.key") || !t.contains("operator-notes") {
        return Err(format!("reset did not say what it removed and kept: {t}"));
    }
    let left: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if left != ["operator-notes"] {
        return Err(format!("after reset the state dir holds {left:?}"));
    }
    // a fresh identity, with other pins
    init_as_svc(fx, &dir)?;
    let after = pins(fx, &dir)?;
    if after.0 == before.0 || after.1 == before.1 {
        return Err("init after reset brought back a pin of the old identity".into());
    }
    println!(
        "      (missing, foreign, loose and busy dirs refused with 64; 4 planted links unlinked, targets intact; new pins after init)"
    );
    Ok(())
}

/// A server on `dir` as the service user, root allowed to mint, logging to
/// `NAME.log` (kept for the audit-log case).
fn server_on(fx: &Fx, dir: &Path, control: &Path, name: &str) -> Result<ServerProc, String> {
    let u = svc(fx)?;
    let log = fx.base.join(format!("{name}.log"));
    fx.logs.lock().map_err(|e| e.to_string())?.push(log.clone());
    ServerProc::start(
        &fx.bin,
        dir,
        control,
        &log,
        &["--user", &u.user, "--allow-uid", "0"],
    )
    .map_err(|e| format!("{e:#}"))
}
