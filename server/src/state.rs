//! The state every task of one server run shares: the live (reloadable)
//! settings, the identity's keys, the session slots, the pending pools,
//! the roster and the token claims. Built by `server.rs`; a plain struct
//! with no behaviour beyond snapshots. What it leaves to others: binding
//! and serving (`server.rs`), deciding (`gate`), sequencing (`session.rs`).

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use http::HeaderName;
use tokio::sync::{Semaphore, watch};

use crate::config::Config;
use crate::live::{Keys, Live, Swap};
use crate::pending::Pending;

/// The native listener's own settings, resolved at bind time (its uid
/// allow-list is live, its TLS comes with the identity's keys).
#[derive(Debug)]
pub(crate) struct Native {
    /// Token required on the upgrade.
    pub require_token: bool,
}

/// What the upgrade path (`session.rs`, the listeners' routers) reads of
/// the configuration: fixed for the run (each is a restart-only key).
#[derive(Debug)]
pub(crate) struct Upgrade {
    /// The WebSocket path.
    pub path: String,
    /// The token header.
    pub token_header: HeaderName,
    /// Largest message, both ways.
    pub max_message_size: usize,
    /// `[gateway] require_token`.
    pub gateway_require_token: bool,
}

/// State shared by every task of one server run.
pub(crate) struct Shared {
    /// The configuration the server started with. A reload never changes
    /// it (what it may change lives in `live`, `keys` and `log_level`); it
    /// is what a reload compares the new file with. The upgrade path reads
    /// [`Shared::upgrade`] instead; `control.rs` still reads `path` and
    /// `max_sessions` from here.
    pub cfg: Config,
    /// What the upgrade path needs of the configuration, and no more.
    pub upgrade: Upgrade,
    /// Origins, uids, `when_full`, mint rate: swapped by a reload.
    pub live: Swap<Live>,
    /// Token authority and TLS of the device identity: swapped when a
    /// reload finds it rotated.
    pub keys: Swap<Keys>,
    /// The configured log level in force (`None`: as started).
    pub log_level: Swap<Option<tracing::level_filters::LevelFilter>>,
    pub port: u16,
    pub listen_ip: IpAddr,
    pub token_header_display: String,
    pub sessions: Arc<Semaphore>,
    pub shutdown: watch::Receiver<bool>,
    /// Bumped by a control `revoke all`: every live session closes.
    pub revoked_all: watch::Sender<u64>,
    /// Pending connections of the TLS gateway.
    pub pending: Arc<Pending>,
    /// Pending connections of the native listener: its own pool, so a
    /// flood on one listener never evicts the other's clients.
    pub native_pending: Arc<Pending>,
    pub rate: Mutex<crate::control::RateLimiter>,
    /// The display app's settings (CSP, web root).
    pub site: Arc<crate::web::Site>,
    /// The native listener's settings, if there is one.
    pub native: Option<Native>,
    /// The backend, with its TLS connector and uid check.
    pub backend: Arc<crate::backend::Backend>,
    /// Live sessions, oldest first (`when_full = "replace_oldest"`).
    pub roster: Arc<crate::roster::Roster>,
    /// Tokens between verify and consume (one handshake per token).
    pub claims: Arc<crate::gate::Claims>,
    /// The state dir's serving lock, held while the server lives
    /// (`screengate reset` refuses meanwhile).
    pub _serving: screengate_identity::ServingLock,
}

impl Shared {
    /// A snapshot of the live settings, for one request.
    pub fn live(&self) -> Arc<Live> {
        self.live.get()
    }

    /// A snapshot of the identity's keys, for one handshake or request.
    pub fn keys(&self) -> Arc<Keys> {
        self.keys.get()
    }

    pub fn origin(&self) -> String {
        format!("https://localhost:{}", self.port)
    }
}
