//! The session proxy: text, binary and close frames both ways between the
//! client and its one backend connection, until either side closes.
//!
//! Close codes: a side's close frame is forwarded to the other; the backend
//! vanishing closes the client with 1011; server shutdown closes both with
//! 1001. Pings are answered by each WebSocket layer itself, not forwarded.

use axum::extract::ws::{CloseFrame as ACloseFrame, Message as AMessage, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message as TMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame as TCloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::backend::BackendStream;
use crate::guard::Session;

/// WebSocket close: going away (server shutdown).
const GOING_AWAY: u16 = 1001;
/// WebSocket close: internal error (backend gone).
const INTERNAL_ERROR: u16 = 1011;
/// WebSocket close: policy violation (idle too long).
const POLICY: u16 = 1008;
/// WebSocket close: message too big.
const TOO_BIG: u16 = 1009;
/// WebSocket close: invalid payload data (text that is not UTF-8).
const BAD_DATA: u16 = 1007;
/// WebSocket close: protocol error.
const PROTOCOL: u16 = 1002;

/// How often the server pings the client.
pub const PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(20);
/// A client silent this long (not even a pong) is closed.
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Maps a client read error to a close code, reason and audit end.
fn classify(e: axum::Error) -> (Option<u16>, &'static str, &'static str) {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match e.into_inner().downcast::<WsError>() {
        Ok(b) => match *b {
            WsError::Capacity(_) => (Some(TOO_BIG), "message too big", "client_message_too_big"),
            WsError::Utf8(_) => (Some(BAD_DATA), "invalid UTF-8", "client_invalid_utf8"),
            WsError::Protocol(_) => (Some(PROTOCOL), "protocol error", "client_protocol_error"),
            _ => (None, "", "client_gone"),
        },
        Err(_) => (None, "", "client_gone"),
    }
}

fn to_backend(m: AMessage) -> Option<TMessage> {
    match m {
        AMessage::Text(t) => Some(TMessage::text(t.as_str())),
        AMessage::Binary(b) => Some(TMessage::Binary(b)),
        AMessage::Close(c) => Some(TMessage::Close(c.map(|c| TCloseFrame {
            code: CloseCode::from(c.code),
            reason: c.reason.as_str().into(),
        }))),
        AMessage::Ping(_) | AMessage::Pong(_) => None,
    }
}

fn to_client(m: TMessage) -> Option<AMessage> {
    match m {
        TMessage::Text(t) => Some(AMessage::Text(t.as_str().into())),
        TMessage::Binary(b) => Some(AMessage::Binary(b)),
        TMessage::Close(c) => Some(AMessage::Close(c.map(|c| ACloseFrame {
            code: u16::from(c.code),
            reason: c.reason.as_str().into(),
        }))),
        TMessage::Ping(_) | TMessage::Pong(_) | TMessage::Frame(_) => None,
    }
}

fn client_close(code: u16, reason: &'static str) -> AMessage {
    AMessage::Close(Some(ACloseFrame {
        code,
        reason: reason.into(),
    }))
}

pub(crate) async fn run(
    client: WebSocket,
    backend: BackendStream,
    session: Session,
    mut shutdown: watch::Receiver<bool>,
) {
    let (mut c_tx, mut c_rx) = client.split();
    let (mut b_tx, mut b_rx) = backend.split();
    let id = session.label();
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await; // the first tick is immediate
    let mut last_heard = tokio::time::Instant::now();
    let end: &'static str = loop {
        tokio::select! {
            _ = ping.tick() => {
                if last_heard.elapsed() >= IDLE_TIMEOUT {
                    let _ = c_tx.send(client_close(POLICY, "idle timeout")).await;
                    let _ = b_tx.send(TMessage::Close(None)).await;
                    break "idle_timeout";
                }
                if c_tx.send(AMessage::Ping(bytes::Bytes::new())).await.is_err() {
                    let _ = b_tx.send(TMessage::Close(None)).await;
                    break "client_gone";
                }
            }
            m = c_rx.next() => match m {
                Some(Ok(m)) => {
                    last_heard = tokio::time::Instant::now();
                    let closing = matches!(m, AMessage::Close(_));
                    if let Some(out) = to_backend(m)
                        && b_tx.send(out).await.is_err() {
                            let _ = c_tx.send(client_close(INTERNAL_ERROR, "backend unavailable")).await;
                            break "backend_send_failed";
                        }
                    if closing { break "client_closed" }
                }
                Some(Err(e)) => {
                    // Tell the client why, where the protocol has a code for it.
                    let (code, reason, end) = classify(e);
                    if let Some(code) = code {
                        let _ = c_tx.send(client_close(code, reason)).await;
                    }
                    let _ = b_tx.send(TMessage::Close(None)).await;
                    break end;
                }
                None => {
                    let _ = b_tx.send(TMessage::Close(None)).await;
                    break "client_gone";
                }
            },
            m = b_rx.next() => match m {
                Some(Ok(m)) => {
                    let closing = matches!(m, TMessage::Close(_));
                    if let Some(out) = to_client(m)
                        && c_tx.send(out).await.is_err() {
                            let _ = b_tx.send(TMessage::Close(None)).await;
                            break "client_send_failed";
                        }
                    if closing { break "backend_closed" }
                }
                Some(Err(_)) | None => {
                    let _ = c_tx.send(client_close(INTERNAL_ERROR, "backend went away")).await;
                    break "backend_gone";
                }
            },
            _ = shutdown.changed() => {
                let _ = c_tx.send(client_close(GOING_AWAY, "server shutting down")).await;
                let _ = b_tx.send(TMessage::Close(Some(TCloseFrame { code: CloseCode::Away, reason: "server shutting down".into() }))).await;
                break "shutdown";
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        let _ = c_tx.close().await;
        let _ = b_tx.close().await;
    })
    .await;
    crate::audit!(info, event = "session_closed", peer = %session.peer, token_id = %id, end);
}
