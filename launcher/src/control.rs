//! The launcher's side of the control socket: one mint request, one reply,
//! and the checks that it is the screengate server answering (the reply
//! carries the URL, the origin and the SPKI pin Chromium will trust).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
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
    /// The handle with which this uid can revoke the token (`None` from a
    /// server too old to send one). Not a credential, but never logged.
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
    /// Whoever answers on the socket path is not provably the server: the
    /// directory is writable by others or owned by another uid, or the
    /// peer's uid (SO_PEERCRED) is not the server's.
    #[error("refusing the {0}")]
    Untrusted(String),
    /// The reply was not what the protocol promises.
    #[error("bad reply from the control socket: {0}")]
    Protocol(String),
}

/// Longest reply line accepted from the control socket (a mint reply is
/// about 500 bytes).
pub const MAX_REPLY: u64 = 16 * 1024;
/// Deadline for one exchange: connect, request, reply.
pub const EXCHANGE_DEADLINE: Duration = Duration::from_secs(5);

/// Whom the launcher trusts to answer on the control socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerUid(pub Option<u32>);

/// Checks the socket's directory (lstat: not a link, a directory, not
/// group/other-writable, owned by root or the server's uid) and returns
/// the uid the peer must have: `--server-uid`, else the directory's owner.
pub fn check_dir(is_dir: bool, owner: u32, mode: u32, server: ServerUid) -> Result<u32, String> {
    if !is_dir {
        return Err("is not a directory (a link or a file)".into());
    }
    if mode & 0o022 != 0 {
        return Err(format!(
            "is writable by group or others (mode {:o}): another uid could bind the socket there",
            mode & 0o7777
        ));
    }
    let expected = server.0.unwrap_or(owner);
    if owner != 0 && owner != expected {
        return Err(format!(
            "is owned by uid {owner}, not root or the server's uid {expected} (--server-uid)"
        ));
    }
    if expected == 0 {
        return Err(
            "is owned by root and the server uid would be root too: the server never runs as root; pass --server-uid"
                .into(),
        );
    }
    Ok(expected)
}

/// An ancestor of the socket's directory: owned by root or the server's
/// uid, and if group/other-writable then sticky (so only an entry's owner
/// can rename it, and the next component's owner is checked in turn).
/// Under a shared sticky directory (`/tmp`) anyone could have made the
/// socket's directory, so its owner proves nothing: only an explicit
/// `--server-uid` (`explicit`) is accepted there.
pub fn check_ancestor(owner: u32, mode: u32, expected: u32, explicit: bool) -> Result<(), String> {
    if owner != 0 && owner != expected {
        return Err(format!(
            "is owned by uid {owner}, not root or the server's uid {expected}"
        ));
    }
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(format!(
            "is writable by group or others and not sticky (mode {:o})",
            mode & 0o7777
        ));
    }
    if mode & 0o022 != 0 && !explicit {
        return Err(format!(
            "is shared (mode {:o}): any uid could have made the directory below it, so its owner \
             does not tell the server's uid; pass --server-uid",
            mode & 0o7777
        ));
    }
    Ok(())
}

/// The connected peer (SO_PEERCRED) must be the server's uid.
pub fn check_peer(peer: u32, expected: u32) -> Result<(), String> {
    if peer == expected {
        Ok(())
    } else {
        Err(format!(
            "the process on it runs as uid {peer}, not the server's uid {expected}"
        ))
    }
}

fn untrusted(path: &Path, why: String) -> MintError {
    MintError::Untrusted(format!("control socket {}: {why}", path.display()))
}

/// One request line, one reply line, after checking that the server is
/// who answers.
async fn exchange(
    path: &Path,
    server: ServerUid,
    request: &[u8],
) -> Result<Zeroizing<String>, MintError> {
    let unreachable = |source| MintError::Unreachable {
        path: path.display().to_string(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // The directory's real path (links such as /var/run → /run resolved);
    // the socket's own name is not resolved, so a link there is judged by
    // SO_PEERCRED.
    let dir = std::fs::canonicalize(dir).map_err(unreachable)?;
    let md = std::fs::symlink_metadata(&dir).map_err(unreachable)?;
    let expected = check_dir(md.is_dir(), md.uid(), md.mode(), server)
        .map_err(|why| untrusted(path, format!("its directory {} {why}", dir.display())))?;
    // Nobody else may be able to swap the directory out from above.
    for a in dir.ancestors().skip(1) {
        let md = std::fs::symlink_metadata(a).map_err(unreachable)?;
        check_ancestor(md.uid(), md.mode(), expected, server.0.is_some())
            .map_err(|why| untrusted(path, format!("its ancestor {} {why}", a.display())))?;
    }
    let path = &dir.join(path.file_name().unwrap_or_default());
    let exchange = async {
        let s = tokio::net::UnixStream::connect(path)
            .await
            .map_err(unreachable)?;
        let peer = s.peer_cred().map_err(unreachable)?.uid();
        check_peer(peer, expected).map_err(|why| untrusted(path, why))?;
        let (rd, mut wr) = s.into_split();
        wr.write_all(request).await.map_err(unreachable)?;
        let mut line = Zeroizing::new(String::new());
        BufReader::new(rd.take(MAX_REPLY))
            .read_line(&mut line)
            .await
            .map_err(unreachable)?;
        if !line.ends_with('\n') {
            return Err(MintError::Protocol(format!(
                "no complete reply line within {MAX_REPLY} bytes"
            )));
        }
        Ok::<_, MintError>(line)
    };
    let line = tokio::time::timeout(EXCHANGE_DEADLINE, exchange)
        .await
        .map_err(|_| MintError::Protocol("no reply within 5 s".into()))??;
    Ok(line)
}

/// Revokes the token `handle` names (from its mint reply). The reply is
/// only checked for `ok`.
pub async fn revoke(path: &Path, server: ServerUid, handle: &str) -> Result<(), MintError> {
    let mut req = serde_json::to_vec(&serde_json::json!({"op": "revoke", "token_id": handle}))
        .map_err(|_| MintError::Protocol("cannot encode the revoke request".into()))?;
    req.push(b'\n');
    let line = exchange(path, server, &req).await?;
    let v: Value =
        serde_json::from_str(&line).map_err(|_| MintError::Protocol("reply is not JSON".into()))?;
    if v["ok"] == true {
        Ok(())
    } else {
        Err(MintError::Refused {
            error: v["error"].as_str().unwrap_or("unknown").to_owned(),
            retry_after: None,
        })
    }
}

/// Asks the server for a display token, after checking that the server
/// is who answers.
pub async fn mint(path: &Path, server: ServerUid) -> Result<Minted, MintError> {
    let line = exchange(path, server, b"{\"op\":\"mint\",\"channel\":\"display\"}\n").await?;
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
        revoke_handle: v["token_id"].as_str().map(str::to_owned),
        expires_in: Duration::from_millis(
            v["expires_in_ms"]
                .as_u64()
                .ok_or_else(|| MintError::Protocol("reply lacks `expires_in_ms`".into()))?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: ServerUid = ServerUid(Some(999));

    #[test]
    fn trusted_dirs() {
        assert_eq!(check_dir(true, 999, 0o40700, SVC), Ok(999));
        assert_eq!(check_dir(true, 0, 0o40755, SVC), Ok(999));
        assert_eq!(check_dir(true, 999, 0o40750, ServerUid(None)), Ok(999));
    }

    #[test]
    fn untrusted_dirs() {
        for (is_dir, owner, mode, server) in [
            (false, 999, 0o120777, SVC),
            (true, 1234, 0o40700, SVC),
            (true, 1234, 0o40755, SVC),
            (true, 999, 0o40770, SVC),
            (true, 999, 0o40702, SVC),
            (true, 0, 0o41777, SVC),
            (true, 0, 0o40777, ServerUid(None)),
            (true, 0, 0o40755, ServerUid(None)),
            (true, 1234, 0o40700, ServerUid(Some(0))),
        ] {
            assert!(
                check_dir(is_dir, owner, mode, server).is_err(),
                "{is_dir} {owner} {mode:o} {server:?}"
            );
        }
        let why = check_dir(true, 1234, 0o40700, SVC)
            .err()
            .unwrap_or_default();
        assert!(why.contains("1234") && why.contains("999"), "{why}");
        let why = check_dir(true, 999, 0o40777, SVC).err().unwrap_or_default();
        assert!(why.contains("writable"), "{why}");
    }

    #[test]
    fn ancestors() {
        for explicit in [true, false] {
            assert!(check_ancestor(0, 0o40755, 999, explicit).is_ok());
            assert!(check_ancestor(999, 0o40711, 999, explicit).is_ok());
        }
        // /tmp: only with an explicit --server-uid
        assert!(check_ancestor(0, 0o41777, 999, true).is_ok());
        let why = check_ancestor(0, 0o41777, 999, false)
            .err()
            .unwrap_or_default();
        assert!(why.contains("--server-uid"), "{why}");
        for explicit in [true, false] {
            for (owner, mode) in [
                (1234, 0o40755),
                (1234, 0o41777),
                (0, 0o40777),
                (0, 0o40775),
                (999, 0o40757),
            ] {
                assert!(
                    check_ancestor(owner, mode, 999, explicit).is_err(),
                    "{owner} {mode:o} {explicit}"
                );
            }
        }
    }

    #[test]
    fn peer_must_be_the_server() {
        assert!(check_peer(999, 999).is_ok());
        for peer in [0, 998, 1000, 1234, u32::MAX] {
            assert!(check_peer(peer, 999).is_err(), "{peer}");
        }
    }
}
