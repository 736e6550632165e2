//! The reload itself (SIGHUP): re-read, validate as `screengate check`
//! does, and swap in what may change while sessions stay open (`live.rs`
//! says what that is); name every restart-only key that changed.
//! What it leaves to others: the signal (`main.rs`), the log lines and
//! `STATUS=` (`server.rs`).

use screengate_identity::StateDir;
use screengate_identity::fsutil;

use crate::config::Config;
use crate::live::{Keys, Live, Outcome, Reloader};
use crate::state::Shared;

/// One reload: load, validate, apply. Blocking file I/O; called off the
/// event loop.
pub(crate) fn reload(shared: &Shared, reloader: &Reloader) -> Outcome {
    let new = match (reloader.load)() {
        Ok(c) => c,
        Err(e) => return Outcome::Refused(vec![e.to_string()]),
    };
    let problems = crate::commands::check(Ok(new.clone()));
    if !problems.is_empty() {
        return Outcome::Refused(problems.iter().map(ToString::to_string).collect());
    }
    let uid = fsutil::euid();
    let identity =
        match StateDir::new(&shared.cfg.state_dir, shared.cfg.credentials_dir.clone()).load() {
            Ok(id) => id,
            Err(e) => return Outcome::Refused(vec![e.to_string()]),
        };
    let old = shared.keys();
    let rotated = identity.server_pin.to_string() != old.server_pin
        || identity.client_pin.to_string() != old.client_pin
        || !old.authority.is_keyed_by(&identity.device_key);
    let need_restart = restart_keys(&shared.cfg, &new);
    // Applied on top of the configuration the server runs (`shared.cfg`):
    // only the live keys come from the new file.
    let live = Live::new(&new, uid, shared.port);
    let before = shared.live();
    let mut changed = live_changes(&before, &live);
    if new.token_ttl != old.authority.ttl() {
        changed.push("ttl");
    }
    if new.log_level != *shared.log_level.get() {
        changed.push("log_level");
    }
    let keys = if rotated {
        match Keys::new(&identity, &shared.cfg) {
            Ok(k) => Some(k),
            Err(e) => return Outcome::Refused(vec![e.to_string()]),
        }
    } else {
        None
    };
    drop(identity);
    let authority_ttl = keys.as_ref().map_or(&old.authority, |k| &k.authority);
    if let Err(e) = authority_ttl.set_ttl(new.token_ttl) {
        return Outcome::Refused(vec![format!("ttl: {e}")]);
    }
    shared.live.set(live);
    shared.log_level.set(new.log_level);
    (reloader.set_log_level)(new.log_level);
    if let Some(k) = keys {
        shared.keys.set(k);
        // As on a restart: the old identity's tokens are dead (another key,
        // another run) and its sessions end.
        old.authority.revoke_all();
        shared.revoked_all.send_modify(|n| *n = n.wrapping_add(1));
    }
    Outcome::Applied {
        changed,
        need_restart,
        rotated,
    }
}

fn live_changes(a: &Live, b: &Live) -> Vec<&'static str> {
    let mut v = Vec::new();
    let mut diff = |name, changed: bool| {
        if changed {
            v.push(name);
        }
    };
    diff("allowed_origins", a.origins != b.origins);
    diff("allowed_uids", a.allowed_uids != b.allowed_uids);
    diff(
        "allowed_peer_uids",
        a.allowed_peer_uids != b.allowed_peer_uids,
    );
    diff(
        "native.allowed_uids",
        a.native_allowed_uids != b.native_allowed_uids,
    );
    diff("when_full", a.when_full != b.when_full);
    diff("mint_rate", a.mint_rate != b.mint_rate);
    v
}

/// The keys that changed between `a` and `b` and that only a restart
/// applies: what is bound, what is connected, what was dropped to.
fn restart_keys(a: &Config, b: &Config) -> Vec<&'static str> {
    let mut v = Vec::new();
    let mut diff = |name, changed: bool| {
        if changed {
            v.push(name);
        }
    };
    let native = |c: &Config| {
        c.native
            .as_ref()
            .map(|n| (n.socket.clone(), n.group.clone(), n.auth))
    };
    diff("listen", a.listen != b.listen);
    diff("state_dir", a.state_dir != b.state_dir);
    diff("user", a.user != b.user);
    diff("path", a.path != b.path);
    diff("backend", a.backend != b.backend);
    diff("backend_tls", a.backend_tls != b.backend_tls);
    diff("backend_uid", a.backend_uid != b.backend_uid);
    diff("web_root", a.web_root != b.web_root);
    diff("max_message_size", a.max_message_size != b.max_message_size);
    diff("max_sessions", a.max_sessions != b.max_sessions);
    diff("header", a.token_header != b.token_header);
    diff("control.socket", a.control_socket != b.control_socket);
    diff("control.group", a.control_group != b.control_group);
    diff(
        "client_auth",
        a.gateway_auth.client_cert() != b.gateway_auth.client_cert(),
    );
    diff(
        "require_token",
        a.gateway_auth.token() != b.gateway_auth.token(),
    );
    diff("native", native(a) != native(b));
    v
}
