//! Backend connections: one WebSocket per session to the SDK's IPC server
//! (Unix socket, loopback TCP, or loopback TLS with the SDK's client
//! certificate) or to the built-in demo backend.
//!
//! Before a byte is sent the backend is authenticated where configured:
//! `backend_uid` must own the backend's socket (SO_PEERCRED for `unix:`,
//! the kernel's socket table for the peer end of our loopback connection),
//! and for `wss://` the SDK's certificate is verified (`backend_tls.rs`).
//! Every failure has a typed audit reason ([`BackendError::reason`]);
//! `session.rs` turns each into a 503 with the token kept. A success is a
//! [`BackendConnected`], which nothing else can make (`backend/proof.rs`).
//!
//! Neither the token nor the client's Origin is forwarded: the backend
//! trusts its socket's permissions, and screengate is the only thing that
//! can reach it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;

use crate::backend_tls::{TlsFailure, classify_io};
use crate::config::BackendSpec;
use crate::limits::BACKEND_CONNECT_TIMEOUT;

pub(crate) mod proof;
use proof::BackendConnected;

/// Anything a WebSocket can run over.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> Io for T {}

/// A boxed transport, so every backend kind is the same type to the proxy.
pub(crate) type BoxIo = Pin<Box<dyn Io>>;

/// A connected backend WebSocket.
pub(crate) type BackendStream = WebSocketStream<BoxIo>;

/// Everything needed to reach and authenticate the backend, built once
/// when the server binds (the TLS files are read then).
#[derive(Clone)]
pub(crate) struct Backend {
    /// Where.
    pub spec: BackendSpec,
    /// For `wss://`: the connector and the name the certificate must carry.
    pub tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// The uid that must own the backend's socket.
    pub uid: Option<u32>,
    /// Largest message.
    pub max_message: usize,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("spec", &self.spec)
            .field("tls", &self.tls.is_some())
            .field("uid", &self.uid)
            .finish()
    }
}

/// Why the backend could not be reached. No variant carries key material.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BackendError {
    /// The transport connect failed.
    #[error("connect {target}: {source}")]
    Connect {
        target: String,
        source: std::io::Error,
    },
    /// The WebSocket handshake failed (not for a TLS reason).
    #[error("WebSocket handshake with {target}: {source}")]
    Handshake {
        target: String,
        source: tokio_tungstenite::tungstenite::Error,
    },
    /// The backend answered the upgrade with 409: it serves one
    /// connection at a time and has one.
    #[error("{target} answered 409: it already has a connection")]
    Busy { target: String },
    /// TLS with the backend failed; `kind` is the classified cause.
    #[error("TLS with {target}: {kind:?}: {detail}")]
    Tls {
        target: String,
        kind: TlsFailure,
        detail: String,
    },
    /// The backend's socket belongs to another uid than `backend_uid`.
    #[error("{target}: the backend's socket is owned by uid {actual}, not backend_uid {expected}")]
    UidMismatch {
        target: String,
        expected: u32,
        actual: u32,
    },
    /// The owner of the backend's socket could not be told (refused).
    #[error("{target}: cannot tell who owns the backend's socket: {detail}")]
    UidUnknown { target: String, detail: String },
    /// Nothing answered in time.
    #[error("backend {target} did not answer within {BACKEND_CONNECT_TIMEOUT:?}")]
    Timeout { target: String },
}

impl BackendError {
    /// The audit reason.
    pub fn reason(&self) -> &'static str {
        match self {
            BackendError::Connect { .. }
            | BackendError::Handshake { .. }
            | BackendError::Timeout { .. } => "backend_unavailable",
            BackendError::Busy { .. } => "backend_busy",
            BackendError::Tls { kind, .. } => kind.reason(),
            BackendError::UidMismatch { .. } => "backend_uid_mismatch",
            BackendError::UidUnknown { .. } => "backend_uid_unknown",
        }
    }

    /// `(expected, actual)` for a uid mismatch.
    pub fn uids(&self) -> Option<(u32, u32)> {
        match self {
            BackendError::UidMismatch {
                expected, actual, ..
            } => Some((*expected, *actual)),
            _ => None,
        }
    }
}

impl Backend {
    /// Connects one backend session, within [`BACKEND_CONNECT_TIMEOUT`]:
    /// the only place a [`BackendConnected`] is made, after the transport,
    /// `backend_uid`, TLS and the upgrade all passed.
    pub async fn connect(&self) -> Result<BackendConnected<BackendStream>, BackendError> {
        let target = self.spec.to_string();
        match tokio::time::timeout(BACKEND_CONNECT_TIMEOUT, self.connect_inner()).await {
            Ok(r) => r.map(BackendConnected::new),
            Err(_) => Err(BackendError::Timeout { target }),
        }
    }

    /// The uid check: `actual` must equal `backend_uid`, if set.
    fn check_uid(&self, target: &str, actual: Result<u32, String>) -> Result<(), BackendError> {
        let Some(expected) = self.uid else {
            return Ok(());
        };
        match actual {
            Ok(actual) if actual == expected => Ok(()),
            Ok(actual) => Err(BackendError::UidMismatch {
                target: target.to_owned(),
                expected,
                actual,
            }),
            Err(detail) => Err(BackendError::UidUnknown {
                target: target.to_owned(),
                detail,
            }),
        }
    }

    async fn tcp(
        &self,
        target: &str,
        addr: SocketAddr,
    ) -> Result<tokio::net::TcpStream, BackendError> {
        let s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| BackendError::Connect {
                target: target.to_owned(),
                source,
            })?;
        let _ = s.set_nodelay(true);
        if self.uid.is_some() {
            // The backend's end of this connection: its own address is our
            // peer address, its peer is our local address. The kernel's
            // owner of that socket is what is compared (the review found it
            // is the accepting process's uid, even for a listener another
            // uid made and handed over).
            let owner = match (s.local_addr(), s.peer_addr()) {
                (Ok(local), Ok(peer)) => backend_socket_owner(peer, local).await,
                (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
            };
            self.check_uid(target, owner)?;
        }
        Ok(s)
    }

    async fn connect_inner(&self) -> Result<BackendStream, BackendError> {
        let target = self.spec.to_string();
        let (io, url): (BoxIo, String) =
            match &self.spec {
                BackendSpec::Demo => {
                    let (client, server) = tokio::io::duplex(64 * 1024);
                    tokio::spawn(crate::demo::serve_stream(server, self.max_message));
                    (Box::pin(client), "ws://localhost/".into())
                }
                BackendSpec::Unix(path) => {
                    let s = tokio::net::UnixStream::connect(path)
                        .await
                        .map_err(|source| BackendError::Connect {
                            target: target.clone(),
                            source,
                        })?;
                    if self.uid.is_some() {
                        let owner = s
                            .peer_cred()
                            .map(|c| c.uid())
                            .map_err(|e| format!("SO_PEERCRED: {e}"));
                        self.check_uid(&target, owner)?;
                    }
                    (Box::pin(s), "ws://localhost/".into())
                }
                BackendSpec::Ws {
                    authority,
                    addr,
                    path,
                } => {
                    let s = self.tcp(&target, *addr).await?;
                    (Box::pin(s), format!("ws://{authority}{path}"))
                }
                BackendSpec::Wss {
                    authority,
                    addr,
                    path,
                    ..
                } => {
                    let s = self.tcp(&target, *addr).await?;
                    let Some((connector, name)) = &self.tls else {
                        // Config::resolve requires [backend_tls] for wss://.
                        return Err(BackendError::Tls {
                            target,
                            kind: TlsFailure::Handshake,
                            detail: "no TLS configuration".into(),
                        });
                    };
                    let tls = connector.connect(name.clone(), s).await.map_err(|e| {
                        BackendError::Tls {
                            target: target.clone(),
                            kind: classify_io(&e),
                            detail: e.to_string(),
                        }
                    })?;
                    (Box::pin(tls), format!("wss://{authority}{path}"))
                }
            };
        let tls = matches!(self.spec, BackendSpec::Wss { .. });
        let (ws, _) = tokio_tungstenite::client_async_with_config(
            url,
            io,
            Some(crate::limits::ws_config(self.max_message)),
        )
        .await
        .map_err(|source| handshake_error(target, tls, source))?;
        Ok(ws)
    }
}

/// The owner of the backend's end of our connection. Our `connect` returns
/// once the SYN-ACK arrived; the kernel makes the listener's child socket
/// when our ACK is processed, which on loopback may be a moment later, so
/// a socket not found yet is looked up again, a bounded number of times
/// ([`crate::limits::BACKEND_UID_LOOKUPS`]). Anything else is final.
async fn backend_socket_owner(peer: SocketAddr, local: SocketAddr) -> Result<u32, String> {
    let mut tries = 0;
    loop {
        tries += 1;
        match crate::peer_uid::tcp_socket_owner(peer, local) {
            Ok(uid) => return Ok(uid),
            Err(crate::peer_uid::PeerUidError::NotFound { .. })
                if tries < crate::limits::BACKEND_UID_LOOKUPS =>
            {
                tokio::time::sleep(crate::limits::BACKEND_UID_LOOKUP_PAUSE).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// A failed upgrade, classified: 409 is a busy SDK; over TLS 1.3 the SDK's
/// verdict on our certificate arrives after our side of the handshake, as
/// an alert on the first read, which is here.
fn handshake_error(
    target: String,
    tls: bool,
    source: tokio_tungstenite::tungstenite::Error,
) -> BackendError {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match &source {
        WsError::Http(resp) if resp.status() == http::StatusCode::CONFLICT => {
            BackendError::Busy { target }
        }
        WsError::Io(e) if tls => BackendError::Tls {
            target,
            kind: classify_io(e),
            detail: e.to_string(),
        },
        WsError::Tls(_) | WsError::ConnectionClosed | WsError::AlreadyClosed if tls => {
            BackendError::Tls {
                target,
                kind: TlsFailure::Handshake,
                detail: source.to_string(),
            }
        }
        _ => BackendError::Handshake { target, source },
    }
}

/// Builds the backend from the config, reading and checking the TLS files.
pub(crate) fn build(
    cfg: &crate::config::Config,
    uid: u32,
) -> Result<Arc<Backend>, crate::backend_tls::BackendTlsError> {
    let tls = match &cfg.backend_tls {
        None => None,
        Some(t) => Some(crate::backend_tls::connector(t, uid)?),
    };
    Ok(Arc::new(Backend {
        spec: cfg.backend.clone(),
        tls,
        uid: cfg.backend_uid,
        max_message: cfg.max_message_size,
    }))
}
