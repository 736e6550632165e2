//! What a reload (SIGHUP, `systemctl reload`) may change while sessions
//! stay open, and the reload itself.
//!
//! A reload re-reads the configuration exactly as the server read it at
//! start (the same file under the same trust rule, the same command-line
//! overrides) and validates it exactly as `screengate check` does. A bad
//! configuration changes nothing: the server keeps serving on the one in
//! force and logs why (nginx's `-s reload`). A good one applies, without
//! closing a session:
//!
//! * [`Live`]: allowed origins, the uids that may mint, connect and use
//!   the native socket, `when_full`, the mint rate limit;
//! * the token TTL (tokens minted from now on; [`Authority::set_ttl`]);
//! * the log level;
//! * a rotated device identity ([`Keys`]): a new token authority and new
//!   certificates. Every token of the old identity dies and every live
//!   session is closed, as on a restart.
//!
//! Every other key (listen address, sockets, backend, limits, …) needs a
//! restart: the reload names each one that changed and keeps it as it was.

use std::sync::{Arc, PoisonError, RwLock};

use screengate_identity::fsutil;
use screengate_identity::{Identity, StateDir};
use screengate_token::{Authority, MonotonicClock};
use tokio_rustls::TlsAcceptor;
use tracing::level_filters::LevelFilter;

use crate::config::{Config, ConfigError, MintRate, NativeTls, WhenFull};
use crate::server::{ServerError, Shared};

/// The settings a reload swaps in at once; readers take a snapshot
/// ([`Swap::get`]) and use it for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Live {
    /// Exact `Origin`s allowed on the gateway.
    pub origins: Vec<String>,
    /// Uids that may mint on the control socket.
    pub allowed_uids: Vec<u32>,
    /// Uids whose loopback connections may upgrade on the gateway.
    pub allowed_peer_uids: Vec<u32>,
    /// Uids allowed on the native socket.
    pub native_allowed_uids: Vec<u32>,
    /// What a newcomer does when every slot is taken.
    pub when_full: WhenFull,
    /// The mint rate limit per uid.
    pub mint_rate: MintRate,
}

impl Live {
    /// Resolves "none means the server's own uid" and the default origin
    /// for the bound `port`.
    pub fn new(cfg: &Config, uid: u32, port: u16) -> Live {
        let allowed_uids = cfg.allowed_uids.clone().unwrap_or_else(|| vec![uid]);
        Live {
            origins: cfg
                .allowed_origins
                .clone()
                .unwrap_or_else(|| vec![format!("https://localhost:{port}")]),
            allowed_peer_uids: cfg
                .allowed_peer_uids
                .clone()
                .unwrap_or_else(|| allowed_uids.clone()),
            native_allowed_uids: cfg
                .native
                .as_ref()
                .and_then(|n| n.allowed_uids.clone())
                .unwrap_or_else(|| vec![uid]),
            allowed_uids,
            when_full: cfg.when_full,
            mint_rate: cfg.mint_rate,
        }
    }
}

/// What the device identity gives the server: swapped whole when a reload
/// finds a rotated identity.
pub(crate) struct Keys {
    /// The token authority of this identity and run.
    pub authority: Authority<MonotonicClock>,
    /// The gateway's TLS.
    pub tls: TlsAcceptor,
    /// The native socket's TLS, when configured.
    pub native_tls: Option<TlsAcceptor>,
    /// The gateway certificate's SPKI pin.
    pub server_pin: String,
    /// The native client certificate's SPKI pin.
    pub client_pin: String,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("server_pin", &self.server_pin)
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// The authority and TLS configurations of `identity`.
    pub fn new(identity: &Identity, cfg: &Config) -> Result<Keys, ServerError> {
        let authority = Authority::new(&identity.device_key, cfg.token_ttl, MonotonicClock::new())?;
        let tls = TlsAcceptor::from(crate::tls::server_config(
            identity,
            cfg.gateway_client_auth,
        )?);
        let native_tls = match cfg.native.as_ref().map(|n| n.tls) {
            None | Some(NativeTls::Off) => None,
            Some(NativeTls::Server) => Some(TlsAcceptor::from(crate::tls::server_config(
                identity, false,
            )?)),
            Some(NativeTls::Mutual) => Some(TlsAcceptor::from(crate::tls::server_config(
                identity, true,
            )?)),
        };
        Ok(Keys {
            authority,
            tls,
            native_tls,
            server_pin: identity.server_pin.to_string(),
            client_pin: identity.client_pin.to_string(),
        })
    }
}

/// A value replaced whole by a reload: readers clone the `Arc`.
pub(crate) struct Swap<T>(RwLock<Arc<T>>);

impl<T> Swap<T> {
    pub fn new(v: T) -> Swap<T> {
        Swap(RwLock::new(Arc::new(v)))
    }

    /// A snapshot, valid for as long as the caller holds it.
    pub fn get(&self) -> Arc<T> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, v: T) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(v);
    }
}

/// How `serve` re-reads the configuration and sets the log level: given by
/// `main`, which knows the file, the trust rule it was read under and the
/// command-line overrides.
pub struct Reloader {
    /// Re-reads the configuration as at start.
    pub load: Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>,
    /// Sets the log level (`None`: the level the process started with).
    pub set_log_level: Box<dyn Fn(Option<LevelFilter>) + Send + Sync>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

/// What a reload did, for the log and `STATUS=`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The new configuration is in force (restart-only keys excepted).
    Applied {
        /// Live keys that changed.
        changed: Vec<&'static str>,
        /// Keys that changed but need a restart (kept as they were).
        need_restart: Vec<&'static str>,
        /// The identity was rotated: new keys, sessions closed.
        rotated: bool,
    },
    /// Refused; the configuration in force is unchanged.
    Refused(Vec<String>),
}

/// One reload: load, validate, apply. Blocking file I/O; called off the
/// event loop.
pub(crate) fn reload(shared: &Shared, reloader: &Reloader) -> Outcome {
    let new = match (reloader.load)() {
        Ok(c) => c,
        Err(e) => return Outcome::Refused(vec![e.to_string()]),
    };
    let problems = crate::commands::check(Ok(new.clone()));
    if !problems.is_empty() {
        return Outcome::Refused(problems);
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
            .map(|n| (n.socket.clone(), n.group.clone(), n.tls, n.require_token))
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
        a.gateway_client_auth != b.gateway_client_auth,
    );
    diff(
        "require_token",
        a.gateway_require_token != b.gateway_require_token,
    );
    diff("native", native(a) != native(b));
    v
}
