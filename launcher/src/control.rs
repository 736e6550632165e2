//! The launcher's side of the control socket: one mint request, one reply.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use zeroize::Zeroizing;

/// A minted token and everything the launcher needs to use it.
pub struct Minted {
    /// The token. Secret: zeroized on drop, never logged.
    pub token: Zeroizing<String>,
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
}

impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minted")
            .field("url", &self.url)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// Why minting failed.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The socket could not be reached (server down, wrong path, no permission).
    #[error("cannot reach the control socket {path}: {source}")]
    Unreachable {
        /// The socket path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The server refused (not_authorized, rate_limited, …).
    #[error("the server refused to mint: {error}")]
    Refused {
        /// The server's error code.
        error: String,
        /// Suggested wait, if any.
        retry_after: Option<Duration>,
    },
    /// The reply was not what the protocol promises.
    #[error("bad reply from the control socket: {0}")]
    Protocol(String),
}

/// Asks the server for a display token.
pub async fn mint(path: &Path) -> Result<Minted, MintError> {
    let unreachable = |source| MintError::Unreachable {
        path: path.display().to_string(),
        source,
    };
    let exchange = async {
        let s = tokio::net::UnixStream::connect(path)
            .await
            .map_err(unreachable)?;
        let (rd, mut wr) = s.into_split();
        wr.write_all(b"{\"op\":\"mint\",\"channel\":\"display\"}\n")
            .await
            .map_err(unreachable)?;
        let mut line = Zeroizing::new(String::new());
        BufReader::new(rd)
            .read_line(&mut line)
            .await
            .map_err(unreachable)?;
        Ok::<_, MintError>(line)
    };
    let line = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| MintError::Protocol("no reply within 5 s".into()))??;
    let v: Value =
        serde_json::from_str(&line).map_err(|_| MintError::Protocol("reply is not JSON".into()))?;
    if v["ok"] != true {
        return Err(MintError::Refused {
            error: v["error"].as_str().unwrap_or("unknown").to_owned(),
            retry_after: v["retry_after_ms"].as_u64().map(Duration::from_millis),
        });
    }
    let field = |k: &str| {
        v[k].as_str()
            .map(str::to_owned)
            .ok_or_else(|| MintError::Protocol(format!("reply lacks `{k}`")))
    };
    Ok(Minted {
        token: Zeroizing::new(field("token")?),
        header: field("header")?,
        url: field("url")?,
        ws_url: field("ws_url")?,
        origin: field("origin")?,
        spki_pin: field("spki_pin")?,
        expires_in: Duration::from_millis(
            v["expires_in_ms"]
                .as_u64()
                .ok_or_else(|| MintError::Protocol("reply lacks `expires_in_ms`".into()))?,
        ),
    })
}
