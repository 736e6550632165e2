//! The launcher's side of the control socket: one display-token mint and
//! one revocation, through `screengate-control`'s client with the server
//! check on (the socket's directory and SO_PEERCRED must say the server's
//! uid answers: the reply carries the URL, the origin and the SPKI pin
//! Chromium will trust). The protocol and the checks are that crate's; this
//! file only shapes the reply for the launcher.

use std::path::Path;
use std::time::Duration;

use screengate_control::Channel;
use screengate_control::client::{Client, Peer};

pub use screengate_control::client::{ClientError as MintError, ServerUid};
pub use screengate_control::{Refusal, SecretToken};

/// A minted token and everything the launcher needs to use it.
pub struct Minted {
    /// The token. Secret: zeroized on drop, redacted in `Debug`, never
    /// logged; `expose_secret()` only for the CDP header command.
    pub token: SecretToken,
    /// Header name to carry it in.
    pub header: String,
    /// The display app URL.
    pub url: String,
    /// The gateway's WebSocket URL.
    pub ws_url: String,
    /// The gateway origin (`https://localhost:PORT`).
    pub origin: String,
    /// SPKI pin of the gateway certificate.
    pub spki_pin: String,
    /// Remaining life at mint time.
    pub expires_in: Duration,
    /// The handle with which this uid can revoke the token (the protocol
    /// makes it mandatory, so always `Some`). Not a credential, but never
    /// logged.
    pub revoke_handle: Option<String>,
}

impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minted")
            .field("url", &self.url)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

fn client(path: &Path, server: ServerUid) -> Client {
    Client::new(path, Peer::Server(server))
}

/// Revokes the token `handle` names (from its mint reply).
pub async fn revoke(path: &Path, server: ServerUid, handle: &str) -> Result<(), MintError> {
    client(path, server).revoke(handle).await
}

/// Asks the server for a display token, after checking that the server
/// is who answers.
pub async fn mint(path: &Path, server: ServerUid) -> Result<Minted, MintError> {
    let m = client(path, server).mint(Channel::Display).await?;
    Ok(Minted {
        expires_in: m.expires_in(),
        token: m.token,
        header: m.header,
        url: m.url,
        ws_url: m.ws_url,
        origin: m.origin,
        spki_pin: m.spki_pin,
        revoke_handle: Some(m.token_id),
    })
}
