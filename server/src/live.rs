//! What a reload (SIGHUP, `systemctl reload`) may change while sessions
//! stay open; the reload itself is `reload.rs`.
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

use screengate_identity::Identity;
use screengate_token::{Authority, MonotonicClock};
use tokio_rustls::TlsAcceptor;
use tracing::level_filters::LevelFilter;

use crate::config::{Config, ConfigError, MintRate, NativeTls, WhenFull};
use crate::error::ServerError;

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
            origins: cfg.allowed_origins.as_ref().map_or_else(
                || vec![format!("https://localhost:{port}")],
                |list| list.iter().map(|o| o.as_str().to_owned()).collect(),
            ),
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
            cfg.gateway_auth.client_cert(),
        )?);
        let native_tls = match cfg.native.as_ref().map(|n| n.auth.tls()) {
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

    /// Replaces the value; snapshots taken before keep the old one.
    pub fn set(&self, v: T) {
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
