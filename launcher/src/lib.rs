//! screengate-launch: starts Chromium on the display app and hands it the
//! session token out of band.
//!
//! The token never touches argv, the environment, the URL, disk or page
//! JavaScript. Chromium starts on a neutral `data:` page with CDP on a pipe
//! (fds 3/4, no TCP port); over CDP the launcher attaches to that tab, sets
//! the token as an extra HTTP header for that tab only, locks the tab to
//! the gateway's origin with `Fetch` (the header would otherwise go to any
//! origin the tab touches), closes popups, and only then navigates. It
//! keeps a fresh token armed (after every handshake and at half the TTL)
//! and restarts the browser with backoff when it dies.
//!
//! Under systemd (`Type=notify`) it reports `READY=1` once the display's
//! first authenticated message has arrived, `STATUS=` as the display
//! connects, waits or restarts, `WATCHDOG=1` from its runtime and
//! `STOPPING=1` on shutdown (`ready.rs`, over `screengate-notify`).
//!
//! This is the only screengate crate that spawns processes.
//!
//! Module map (one concern each; ARCHITECTURE.md has the invariants):
//! `supervise` (browser lives, backoff, signals, the private profile),
//! `tab` (attaching to the tab and the setup order before navigation),
//! `lock` (the Fetch origin lock, the CSP check, one window),
//! `arm` (minting, arming, revoking: the only caller of `control`),
//! `events` (the event loop of one browser life: routes CDP events to
//! `lock` and `arm`, tracks the gateway connection, the screenshot),
//! `ready` (what systemd is told), `transport` (CDP over the pipe),
//! `chromium` (finding and spawning the browser), `control` (the control
//! socket client), `csp` (does a CSP keep connections on the gateway).
#![forbid(unsafe_code)]

mod arm;
mod chromium;
mod control;
mod csp;
mod events;
mod lock;
mod ready;
mod supervise;
mod tab;
mod transport;

use std::path::PathBuf;

pub use chromium::{ALLOWED_ARGS, INSTALL_HINT, Refusal};
pub use control::{MintError, Minted, ServerUid, mint, revoke};
pub use supervise::{FIRST_BACKOFF, MAX_BACKOFF, run};

/// What the command line asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// The control socket.
    pub control: PathBuf,
    /// The server's uid (`--server-uid`); `None`: the socket directory's owner.
    pub server_uid: ServerUid,
    /// Explicit Chromium binary.
    pub chromium: Option<PathBuf>,
    /// Headless.
    pub headless: bool,
    /// Kiosk window.
    pub kiosk: bool,
    /// `W,H`.
    pub window_size: String,
    /// Extra Chromium arguments (vetted).
    pub chromium_args: Vec<String>,
    /// Screenshot once connected.
    pub screenshot: Option<PathBuf>,
}

/// The default control socket, matching `screengate serve`'s default.
pub fn default_control() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/"))
                .join(".local/state")
        });
    base.join("screengate/control.sock")
}

/// Why the launcher stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// No browser to launch.
    #[error("Chromium not found{0}; install it with `{INSTALL_HINT}` or pass --chromium PATH")]
    NoChromium(String),
    /// An extra argument is not on the allow-list.
    #[error("refusing --chromium-arg {arg:?}: {why}")]
    RefusedArg {
        /// The argument as given.
        arg: String,
        /// Why (names the normalised switch).
        why: Refusal,
    },
    /// Running as root without an explicit sandbox opt-out.
    #[error(
        "running as root: Chromium's sandbox does not work as root and the launcher will not disable it silently; run as the display user, or pass --chromium-arg=--no-sandbox to accept an unsandboxed browser"
    )]
    Root,
    /// `--window-size` is not `W,H`.
    #[error("--window-size must be W,H in pixels, e.g. 1280,800")]
    WindowSize,
    /// The profile dir could not be made.
    #[error("cannot create a private profile directory: {0}")]
    Profile(std::io::Error),
    /// The server refused for good (e.g. this uid is not allowed to mint).
    #[error(transparent)]
    Mint(#[from] MintError),
    /// The display page cannot work (e.g. the certificate does not match the pin).
    #[error("{0}")]
    Page(String),
}

impl LaunchError {
    /// The process exit code: 64 for usage errors, 69 when Chromium is
    /// missing, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            LaunchError::RefusedArg { .. } | LaunchError::Root | LaunchError::WindowSize => 64,
            LaunchError::NoChromium(_) => 69,
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(LaunchError::Root.exit_code(), 64);
        assert_eq!(LaunchError::NoChromium(String::new()).exit_code(), 69);
    }
}
