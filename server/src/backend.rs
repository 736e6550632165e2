//! Backend connections: one WebSocket per session to the SDK's IPC server
//! (Unix socket or loopback TCP) or to the built-in demo backend.
//!
//! Neither the token nor the client's Origin is forwarded: the backend
//! trusts its socket's permissions, and screengate is the only thing that
//! can reach it.

use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;

use crate::config::BackendSpec;
use crate::limits::BACKEND_CONNECT_TIMEOUT;

/// Anything a WebSocket can run over.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> Io for T {}

/// A boxed transport, so every backend kind is the same type to the proxy.
pub(crate) type BoxIo = Pin<Box<dyn Io>>;

/// A connected backend WebSocket.
pub(crate) type BackendStream = WebSocketStream<BoxIo>;

/// Why the backend could not be reached.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BackendError {
    /// The transport connect failed.
    #[error("connect {target}: {source}")]
    Connect {
        target: String,
        source: std::io::Error,
    },
    /// The WebSocket handshake failed.
    #[error("WebSocket handshake with {target}: {source}")]
    Handshake {
        target: String,
        source: tokio_tungstenite::tungstenite::Error,
    },
    /// Nothing answered in time.
    #[error("backend {target} did not answer within {BACKEND_CONNECT_TIMEOUT:?}")]
    Timeout { target: String },
}

/// Connects one backend session.
pub(crate) async fn connect(
    spec: &BackendSpec,
    max_message: usize,
) -> Result<BackendStream, BackendError> {
    let target = spec.to_string();
    match tokio::time::timeout(BACKEND_CONNECT_TIMEOUT, connect_inner(spec, max_message)).await {
        Ok(r) => r,
        Err(_) => Err(BackendError::Timeout { target }),
    }
}

async fn connect_inner(
    spec: &BackendSpec,
    max_message: usize,
) -> Result<BackendStream, BackendError> {
    let target = spec.to_string();
    let (io, url): (BoxIo, String) = match spec {
        BackendSpec::Demo => {
            let (client, server) = tokio::io::duplex(64 * 1024);
            tokio::spawn(crate::demo::serve_stream(server, max_message));
            (Box::pin(client), "ws://localhost/".into())
        }
        BackendSpec::Unix(path) => {
            let s = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|source| BackendError::Connect {
                    target: target.clone(),
                    source,
                })?;
            (Box::pin(s), "ws://localhost/".into())
        }
        BackendSpec::Ws {
            authority,
            addr,
            path,
        } => {
            let s = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|source| BackendError::Connect {
                    target: target.clone(),
                    source,
                })?;
            let _ = s.set_nodelay(true);
            (Box::pin(s), format!("ws://{authority}{path}"))
        }
    };
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(url, io, Some(ws_config(max_message)))
            .await
            .map_err(|source| BackendError::Handshake { target, source })?;
    Ok(ws)
}

/// The WebSocket limits used on every screengate-made connection.
pub(crate) fn ws_config(
    max_message: usize,
) -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
        .read_buffer_size(crate::limits::WS_READ_BUFFER)
        .write_buffer_size(crate::limits::WS_WRITE_BUFFER)
        .max_write_buffer_size(crate::limits::ws_max_write_buffer(max_message))
}
