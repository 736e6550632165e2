//! The one control-socket client: connect, send one request line, read one
//! reply line, within [`EXCHANGE_DEADLINE`] and [`MAX_REPLY_LINE`] bytes.
//!
//! Asked to ([`Peer::Server`]), it first proves that the server's uid is
//! who answers: the socket's directory and every ancestor are lstat'ed
//! (owned by root or the server, not writable by others unless sticky),
//! and the peer's uid from SO_PEERCRED must be the server's. The launcher
//! asks for this (it hands the reply's pin and URL to Chromium); the
//! native client, `screengate mint` and the tests rely on the socket's
//! own permissions ([`Peer::Any`]).
//!
//! The protocol itself (what the bytes mean) is [`crate::protocol`]'s.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use screengate_token::Channel;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

use crate::protocol::{EncodeError, MAX_REPLY_LINE, Minted, Refusal, Reply, ReplyError, Request};

/// Deadline for one exchange: connect, request, reply.
pub const EXCHANGE_DEADLINE: Duration = Duration::from_secs(5);

/// Whom the launcher trusts to answer on the control socket: `--server-uid`,
/// or (`None`) the owner of the socket's directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerUid(pub Option<u32>);

/// Who may answer on the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Whoever the socket's permissions let us reach.
    Any,
    /// Only the server's uid, proven by the socket's directory and
    /// SO_PEERCRED before a byte is sent.
    Server(ServerUid),
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached (server down, wrong path, no
    /// permission), or the connection failed midway.
    #[error("cannot reach the control socket {path}: {source}")]
    Unreachable {
        /// The socket path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Whoever answers on the socket path is not provably the server: the
    /// directory is writable by others or owned by another uid, or the
    /// peer's uid (SO_PEERCRED) is not the server's.
    #[error("refusing the {0}")]
    Untrusted(String),
    /// No reply within [`EXCHANGE_DEADLINE`].
    #[error("bad reply from the control socket: no reply within {} s", EXCHANGE_DEADLINE.as_secs())]
    Timeout,
    /// The reply was not what the protocol promises.
    #[error("bad reply from the control socket: {0}")]
    Reply(#[from] ReplyError),
    /// The request could not be encoded (too long).
    #[error("cannot send the request: {0}")]
    Encode(#[from] EncodeError),
    /// The server refused.
    #[error("the server refused: {0}")]
    Refused(Refusal),
}

/// A reply line as read, without its newline, in a buffer wiped on drop.
pub type ReplyLine = Zeroizing<Vec<u8>>;

/// A client for one control socket.
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
    peer: Peer,
}

impl Client {
    /// A client for the socket at `path`, trusting `peer`.
    pub fn new(path: impl Into<PathBuf>, peer: Peer) -> Self {
        Self {
            path: path.into(),
            peer,
        }
    }

    /// Mints a token for `channel`.
    pub async fn mint(&self, channel: Channel) -> Result<Minted, ClientError> {
        match self.request(&Request::Mint(channel)).await? {
            Reply::Minted(m) => Ok(m),
            Reply::Refused(r) => Err(ClientError::Refused(r)),
            other => Err(wrong_kind("mint", &other)),
        }
    }

    /// Revokes the token `handle` (a mint reply's `token_id`) names.
    pub async fn revoke(&self, handle: &str) -> Result<(), ClientError> {
        match self.request(&Request::Revoke(handle.to_owned())).await? {
            Reply::Revoked => Ok(()),
            Reply::Refused(r) => Err(ClientError::Refused(r)),
            other => Err(wrong_kind("revoke", &other)),
        }
    }

    /// Revokes every token and closes every session; the number closed.
    pub async fn revoke_all(&self) -> Result<u64, ClientError> {
        match self.request(&Request::RevokeAll).await? {
            Reply::RevokedAll { sessions_closed } => Ok(sessions_closed),
            Reply::Refused(r) => Err(ClientError::Refused(r)),
            other => Err(wrong_kind("revoke all", &other)),
        }
    }

    /// Sends `request`, returns the typed reply (a refusal is a reply).
    pub async fn request(&self, request: &Request) -> Result<Reply, ClientError> {
        let line = self.exchange(&request.to_line()?).await?;
        Ok(Reply::parse(&line)?)
    }

    /// Sends `bytes` exactly as given (the caller adds the newline; tests
    /// send hostile lines this way) and returns the first reply line.
    pub async fn exchange(&self, bytes: &[u8]) -> Result<ReplyLine, ClientError> {
        match self.peer {
            Peer::Any => exchange(&self.path, bytes).await,
            Peer::Server(server) => {
                let (path, uid) = trusted_path(&self.path, server)?;
                exchange_on(&self.path, &path, Some(uid), bytes).await
            }
        }
    }
}

/// [`Client::exchange`] with [`Peer::Any`], as a free function: a caller
/// that never checks the server (`screengate mint`) links none of the
/// directory checks (the `screengate` binary has a size budget).
pub async fn exchange(path: &Path, bytes: &[u8]) -> Result<ReplyLine, ClientError> {
    exchange_on(path, path, None, bytes).await
}

/// Connects to `path` (named `shown` in errors), checks the peer's uid
/// against `expected` if given, sends `bytes`, reads one reply line; all
/// within [`EXCHANGE_DEADLINE`].
async fn exchange_on(
    shown: &Path,
    path: &Path,
    expected: Option<u32>,
    bytes: &[u8],
) -> Result<ReplyLine, ClientError> {
    let unreachable = |source| ClientError::Unreachable {
        path: shown.display().to_string(),
        source,
    };
    let exchange = async {
        let s = tokio::net::UnixStream::connect(path)
            .await
            .map_err(unreachable)?;
        if let Some(expected) = expected {
            let peer = s.peer_cred().map_err(unreachable)?.uid();
            check_peer(peer, expected).map_err(|why| untrusted(path, why))?;
        }
        let (mut rd, mut wr) = s.into_split();
        wr.write_all(bytes).await.map_err(unreachable)?;
        read_line(&mut rd).await.map_err(|e| match e {
            ReadError::Io(e) => unreachable(e),
            ReadError::Reply(e) => ClientError::Reply(e),
        })
    };
    tokio::time::timeout(EXCHANGE_DEADLINE, exchange)
        .await
        .map_err(|_| ClientError::Timeout)?
}

fn wrong_kind(asked: &'static str, got: &Reply) -> ClientError {
    ClientError::Reply(ReplyError::WrongKind {
        asked,
        got: got.kind(),
    })
}

enum ReadError {
    Io(std::io::Error),
    Reply(ReplyError),
}

/// Reads up to the first newline into a zeroed buffer of [`MAX_REPLY_LINE`]
/// bytes, filled by slice: it never grows, and no other buffer (no
/// `BufReader`) sees the bytes. What follows the newline is ignored.
async fn read_line(rd: &mut (impl AsyncReadExt + Unpin)) -> Result<ReplyLine, ReadError> {
    let mut buf = Zeroizing::new(vec![0u8; MAX_REPLY_LINE]);
    let mut filled = 0;
    loop {
        let Some(space) = buf.get_mut(filled..).filter(|s| !s.is_empty()) else {
            return Err(ReadError::Reply(ReplyError::TooLong));
        };
        let n = rd.read(space).await.map_err(ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Reply(ReplyError::Incomplete));
        }
        let start = filled;
        filled += n;
        if let Some(at) = buf
            .get(start..filled)
            .and_then(|new| new.iter().position(|&b| b == b'\n'))
        {
            buf.truncate(start + at);
            return Ok(buf);
        }
    }
}

fn untrusted(path: &Path, why: String) -> ClientError {
    ClientError::Untrusted(format!("control socket {}: {why}", path.display()))
}

/// The socket path with its directory resolved, and the uid that must
/// answer on it, after checking the directory and every ancestor.
// Out of line: only the launcher needs it (size of the other binaries).
#[inline(never)]
fn trusted_path(path: &Path, server: ServerUid) -> Result<(PathBuf, u32), ClientError> {
    let unreachable = |source| ClientError::Unreachable {
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
    Ok((dir.join(path.file_name().unwrap_or_default()), expected))
}

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

#[cfg(test)]
mod tests;
