//! The session proxy: text, binary and close frames both ways between the
//! client and its one backend connection, until either side closes.
//!
//! Shape: one [`pump`] per direction, called twice, and a supervisor that
//! owns the timers (idle, shutdown). The two pumps are independent futures:
//! back-pressure on one direction never stops the other, and no send ever
//! blocks a timer, because every write is bounded by [`WRITE_STALL`] and
//! raced against the stop signal.
//!
//! Writes are batched: a pump feeds every message that is already read and
//! flushes when its source would block (or after [`MAX_BATCH`] messages),
//! so a burst costs one TLS record write, not one per message.
//!
//! Close codes: a side's close frame is forwarded to the other; the backend
//! vanishing closes the client with 1011; a client that takes no bytes for
//! [`WRITE_STALL`] gets 1008 "not reading", a backend that does the same
//! gets 1011; server shutdown closes both with 1001; idle clients get 1008;
//! a session replaced by a newer one (`when_full = "replace_oldest"`) gets
//! 1000 "replaced by a newer session". After its close frame the backend's
//! transport is shut down (TLS close_notify, then FIN), so a
//! one-connection SDK sees the end at once and takes the next session.
//! Pings are answered by each WebSocket layer itself, not forwarded. Every
//! close is sent within [`CLOSE_DEADLINE`] or given up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame as ACloseFrame, Message as AMessage, WebSocket};
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as TMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame as TCloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::backend::BackendStream;
use crate::gate::{Peer, Session};
pub use crate::limits::{CLOSE_DEADLINE, IDLE_TIMEOUT, PING_INTERVAL, WRITE_STALL};

/// WebSocket close: normal (replaced by a newer session).
const NORMAL: u16 = 1000;
/// WebSocket close: going away (server shutdown).
const GOING_AWAY: u16 = 1001;
/// WebSocket close: internal error (backend gone or not reading).
const INTERNAL_ERROR: u16 = 1011;
/// WebSocket close: policy violation (idle too long, not reading).
const POLICY: u16 = 1008;
/// WebSocket close: message too big.
const TOO_BIG: u16 = 1009;
/// WebSocket close: invalid payload data (text that is not UTF-8).
const BAD_DATA: u16 = 1007;
/// WebSocket close: protocol error.
const PROTOCOL: u16 = 1002;

/// Most messages fed before a flush, so a source that is always ready
/// still reaches the socket regularly.
pub const MAX_BATCH: usize = 64;

/// How often the supervisor looks at the idle clock.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Why one direction stopped.
#[derive(Debug)]
enum Flow<C> {
    /// The source sent a close frame; it was forwarded.
    Closed,
    /// The source ended without a close frame.
    Gone,
    /// The source broke the protocol (client side: what to tell it).
    Broken(C),
    /// The sink took no bytes for [`WRITE_STALL`].
    Stalled,
    /// The sink failed.
    SinkFailed,
    /// The supervisor asked this direction to stop.
    Stopped,
}

/// How a bounded write ended, when it did not succeed.
enum WriteEnd {
    Stalled,
    Failed,
    Stopped,
}

/// Resolves once the supervisor says stop (or is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Whether a sink error says the peer's capped write buffer is full
/// (`limits::ws_max_write_buffer`): the peer takes no bytes, which is a
/// stall like [`WRITE_STALL`], not a failure of the sink.
trait BufferFull {
    fn buffer_full(&self) -> bool;
}

impl BufferFull for tokio_tungstenite::tungstenite::Error {
    fn buffer_full(&self) -> bool {
        matches!(
            self,
            tokio_tungstenite::tungstenite::Error::WriteBufferFull(_)
        )
    }
}

impl BufferFull for axum::Error {
    fn buffer_full(&self) -> bool {
        std::error::Error::source(self)
            .and_then(|s| s.downcast_ref::<tokio_tungstenite::tungstenite::Error>())
            .is_some_and(BufferFull::buffer_full)
    }
}

/// One sink operation, bounded by [`WRITE_STALL`] and the stop signal.
async fn bounded<F, E>(op: F, stop: &mut watch::Receiver<bool>) -> Result<(), WriteEnd>
where
    F: Future<Output = Result<(), E>>,
    E: BufferFull,
{
    tokio::select! {
        biased;
        _ = stopped(stop) => Err(WriteEnd::Stopped),
        r = tokio::time::timeout(WRITE_STALL, op) => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if e.buffer_full() => Err(WriteEnd::Stalled),
            Ok(Err(_)) => Err(WriteEnd::Failed),
            Err(_) => Err(WriteEnd::Stalled),
        },
    }
}

impl<C> From<WriteEnd> for Flow<C> {
    fn from(e: WriteEnd) -> Self {
        match e {
            WriteEnd::Stalled => Flow::Stalled,
            WriteEnd::Failed => Flow::SinkFailed,
            WriteEnd::Stopped => Flow::Stopped,
        }
    }
}

/// What a pump needs to know about its two message types.
struct Direction<In, Out, E, C> {
    /// The message to forward, `None` for control frames handled by the
    /// WebSocket layer itself, or why the message cannot be forwarded.
    convert: fn(In) -> Result<Option<Out>, Flow<C>>,
    /// Whether the source message is a close frame.
    is_close: fn(&In) -> bool,
    /// A source error, classified.
    broken: fn(E) -> Flow<C>,
    /// A keep-alive to send on this sink every [`PING_INTERVAL`], if any.
    ping: Option<fn() -> Out>,
}

/// Moves messages from `src` to `sink` until one ends, the sink stalls or
/// the supervisor says stop. Returns why, the sink (for the closing frame)
/// and how many messages it moved. `heard` is set to the time of the last
/// message read, in milliseconds since `epoch`.
async fn pump<St, Si, In, Out, E, C>(
    mut src: St,
    mut sink: Si,
    dir: Direction<In, Out, E, C>,
    heard: Option<(&AtomicU64, Instant)>,
    mut stop: watch::Receiver<bool>,
) -> (Flow<C>, St, Si, u64)
where
    St: Stream<Item = Result<In, E>> + Unpin,
    Si: Sink<Out> + Unpin,
    Si::Error: BufferFull,
{
    let mut moved: u64 = 0;
    let mut ping = tokio::time::interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Wait for something to send.
        let first = tokio::select! {
            biased;
            _ = stopped(&mut stop) => return (Flow::Stopped, src, sink, moved),
            _ = ping.tick(), if dir.ping.is_some() => None,
            m = src.next() => Some(m),
        };
        let mut next = match first {
            None => {
                if let Some(make) = dir.ping
                    && let Err(e) = bounded(sink.send(make()), &mut stop).await
                {
                    return (e.into(), src, sink, moved);
                }
                continue;
            }
            Some(m) => m,
        };
        // Something was heard: one clock read per batch, not per message.
        if let Some((at, epoch)) = heard {
            let ms = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            at.store(ms, Ordering::Relaxed);
        }
        // Feed it and everything else already read, then flush once.
        let mut batch = 0;
        loop {
            let m = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    // Flush what was fed before the bad frame, then stop.
                    let _ = bounded(sink.flush(), &mut stop).await;
                    return ((dir.broken)(e), src, sink, moved);
                }
                None => {
                    let _ = bounded(sink.flush(), &mut stop).await;
                    return (Flow::Gone, src, sink, moved);
                }
            };
            let closing = (dir.is_close)(&m);
            let out = match (dir.convert)(m) {
                Ok(out) => out,
                Err(flow) => {
                    let _ = bounded(sink.flush(), &mut stop).await;
                    return (flow, src, sink, moved);
                }
            };
            if let Some(out) = out {
                if let Err(e) = bounded(sink.feed(out), &mut stop).await {
                    return (e.into(), src, sink, moved);
                }
                moved += 1;
                batch += 1;
            }
            if closing {
                return match bounded(sink.flush(), &mut stop).await {
                    Ok(()) => (Flow::Closed, src, sink, moved),
                    Err(e) => (e.into(), src, sink, moved),
                };
            }
            if batch >= MAX_BATCH {
                break;
            }
            match src.next().now_or_never() {
                Some(m) => next = m,
                None => break,
            }
        }
        if let Err(e) = bounded(sink.flush(), &mut stop).await {
            return (e.into(), src, sink, moved);
        }
    }
}

/// What to tell a client whose frames broke the rules.
#[derive(Debug, Clone, Copy)]
struct ClientFault {
    code: Option<u16>,
    reason: &'static str,
    end: &'static str,
}

/// Maps a client read error to a close code, reason and audit end.
fn classify(e: axum::Error) -> Flow<ClientFault> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let fault = |code, reason, end| Flow::Broken(ClientFault { code, reason, end });
    match e.into_inner().downcast::<WsError>() {
        Ok(b) => match *b {
            WsError::Capacity(_) => {
                fault(Some(TOO_BIG), "message too big", "client_message_too_big")
            }
            WsError::Utf8(_) => fault(Some(BAD_DATA), "invalid UTF-8", "client_invalid_utf8"),
            WsError::Protocol(_) => {
                fault(Some(PROTOCOL), "protocol error", "client_protocol_error")
            }
            // Our pongs to its pings filled the capped write buffer: the
            // client sends but never reads (limits::ws_max_write_buffer).
            WsError::WriteBufferFull(_) => fault(Some(POLICY), "not reading", "client_stalled"),
            _ => Flow::Gone,
        },
        Err(_) => Flow::Gone,
    }
}

fn to_backend(m: AMessage) -> Result<Option<TMessage>, Flow<ClientFault>> {
    Ok(match m {
        AMessage::Text(t) => {
            let text = tokio_tungstenite::tungstenite::Utf8Bytes::try_from(bytes::Bytes::from(t))
                .map_err(|_| {
                Flow::Broken(ClientFault {
                    code: Some(BAD_DATA),
                    reason: "invalid UTF-8",
                    end: "client_invalid_utf8",
                })
            })?;
            Some(TMessage::Text(text))
        }
        AMessage::Binary(b) => Some(TMessage::Binary(b)),
        AMessage::Close(c) => Some(TMessage::Close(c.map(|c| TCloseFrame {
            code: CloseCode::from(c.code),
            reason: c.reason.as_str().into(),
        }))),
        AMessage::Ping(_) | AMessage::Pong(_) => None,
    })
}

fn to_client(m: TMessage) -> Result<Option<AMessage>, Flow<()>> {
    Ok(match m {
        TMessage::Text(t) => {
            let text = axum::extract::ws::Utf8Bytes::try_from(bytes::Bytes::from(t))
                .map_err(|_| Flow::Broken(()))?;
            Some(AMessage::Text(text))
        }
        TMessage::Binary(b) => Some(AMessage::Binary(b)),
        TMessage::Close(c) => Some(AMessage::Close(c.map(|c| ACloseFrame {
            code: u16::from(c.code),
            reason: c.reason.as_str().into(),
        }))),
        TMessage::Ping(_) | TMessage::Pong(_) | TMessage::Frame(_) => None,
    })
}

fn client_close(code: u16, reason: &'static str) -> AMessage {
    AMessage::Close(Some(ACloseFrame {
        code,
        reason: reason.into(),
    }))
}

fn backend_close(code: Option<CloseCode>, reason: &'static str) -> TMessage {
    TMessage::Close(code.map(|code| TCloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// Why the session ended: the audit `end`, and the closing frame owed to
/// each side (`None`: nothing more to send but the transport close).
struct Ending {
    end: &'static str,
    to_client: Option<AMessage>,
    to_backend: Option<TMessage>,
}

fn ending(end: &'static str, to_client: Option<AMessage>, to_backend: Option<TMessage>) -> Ending {
    Ending {
        end,
        to_client,
        to_backend,
    }
}

/// The ending for the client → backend direction stopping first.
fn up_ending(flow: &Flow<ClientFault>) -> Ending {
    match flow {
        Flow::Closed => ending("client_closed", None, None),
        Flow::Gone => ending("client_gone", None, Some(backend_close(None, ""))),
        Flow::Broken(f) => ending(
            f.end,
            f.code.map(|c| client_close(c, f.reason)),
            Some(backend_close(None, "")),
        ),
        Flow::Stalled => ending(
            "backend_stalled",
            Some(client_close(INTERNAL_ERROR, "backend not reading")),
            Some(backend_close(Some(CloseCode::Error), "not reading")),
        ),
        Flow::SinkFailed => ending(
            "backend_send_failed",
            Some(client_close(INTERNAL_ERROR, "backend unavailable")),
            None,
        ),
        Flow::Stopped => ending("stopped", None, None),
    }
}

/// The ending for the backend → client direction stopping first.
fn down_ending(flow: &Flow<()>) -> Ending {
    match flow {
        Flow::Closed => ending("backend_closed", None, None),
        Flow::Gone | Flow::Broken(()) => ending(
            "backend_gone",
            Some(client_close(INTERNAL_ERROR, "backend went away")),
            None,
        ),
        Flow::Stalled => ending(
            "client_stalled",
            Some(client_close(POLICY, "not reading")),
            Some(backend_close(None, "")),
        ),
        Flow::SinkFailed => ending("client_send_failed", None, Some(backend_close(None, ""))),
        Flow::Stopped => ending("stopped", None, None),
    }
}

/// Sends a closing frame (if owed) and closes the sink, within
/// [`CLOSE_DEADLINE`]. A peer that does not take it is simply dropped.
async fn finish<Si, M>(sink: Option<Si>, frame: Option<M>)
where
    Si: Sink<M> + Unpin,
{
    let Some(mut sink) = sink else { return };
    let _ = tokio::time::timeout(CLOSE_DEADLINE, async {
        if let Some(f) = frame {
            let _ = sink.send(f).await;
        }
        let _ = sink.close().await;
    })
    .await;
}

/// The backend's close, in the order a one-connection SDK (websocketpp)
/// needs to see the end at once and take the next session: our close
/// frame (if owed) and the WebSocket close, flushed; then the transport
/// shut down (TLS close_notify, FIN); then the socket kept open until the
/// backend's own close reply and close_notify arrive (EOF), so they never
/// meet a closed socket (an RST leaves websocketpp waiting out its 5 s
/// shutdown timer). Each step within [`CLOSE_DEADLINE`]; a backend that does
/// not answer is dropped.
async fn finish_backend(
    tx: futures_util::stream::SplitSink<BackendStream, TMessage>,
    rx: futures_util::stream::SplitStream<BackendStream>,
    frame: Option<TMessage>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut ws = match tx.reunite(rx) {
        Ok(ws) => ws,
        // not reached: both halves come from the same split
        Err(e) => return finish(Some(e.0), frame).await,
    };
    finish(Some(&mut ws), frame).await;
    let io = ws.get_mut();
    if tokio::time::timeout(CLOSE_DEADLINE, io.shutdown())
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_DEADLINE, async {
        let mut sink = [0u8; 4096];
        while let Ok(n) = io.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// What ends a session besides its two peers, and who it is for the log.
#[derive(Debug)]
pub(crate) struct Ends {
    /// The client, for the audit line.
    pub peer: Peer,
    /// Notified when a newer session replaces this one.
    pub replaced: std::sync::Arc<tokio::sync::Notify>,
    /// Server shutdown.
    pub shutdown: watch::Receiver<bool>,
    /// Bumped by a control `revoke all`.
    pub revoked: watch::Receiver<u64>,
}

/// Moves frames both ways until the session ends; `keep` (the session's
/// slot and roster place) is held until then and dropped last.
pub(crate) async fn run<K: Send>(
    client: WebSocket,
    session: Session<BackendStream>,
    ends: Ends,
    keep: K,
) {
    let label = session.label();
    let (backend, _auth) = session.into_parts();
    let Ends {
        peer,
        replaced,
        mut shutdown,
        mut revoked,
    } = ends;
    let (c_tx, c_rx) = client.split();
    let (b_tx, b_rx) = backend.split();
    let (stop_tx, stop_rx) = watch::channel(false);
    let epoch = Instant::now();
    let heard = AtomicU64::new(0);
    let up = pump(
        c_rx,
        b_tx,
        Direction {
            convert: to_backend,
            is_close: |m: &AMessage| matches!(m, AMessage::Close(_)),
            broken: classify,
            ping: None,
        },
        Some((&heard, epoch)),
        stop_rx.clone(),
    );
    let down = pump(
        b_rx,
        c_tx,
        Direction {
            convert: to_client,
            is_close: |m: &TMessage| matches!(m, TMessage::Close(_)),
            broken: |_| Flow::Broken(()),
            ping: Some(|| AMessage::Ping(bytes::Bytes::new())),
        },
        None,
        stop_rx,
    );
    tokio::pin!(up, down);
    let mut idle = tokio::time::interval_at(epoch + IDLE_CHECK, IDLE_CHECK);
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut up_done = None;
    let mut down_done = None;
    let ending = loop {
        tokio::select! {
            () = replaced.notified() => break ending(
                "replaced",
                Some(client_close(NORMAL, "replaced by a newer session")),
                Some(backend_close(Some(CloseCode::Normal), "replaced by a newer session")),
            ),
            r = &mut up => {
                let e = up_ending(&r.0);
                up_done = Some(r);
                break e;
            }
            r = &mut down => {
                let e = down_ending(&r.0);
                down_done = Some(r);
                break e;
            }
            _ = shutdown.changed() => break ending(
                "shutdown",
                Some(client_close(GOING_AWAY, "server shutting down")),
                Some(backend_close(Some(CloseCode::Away), "server shutting down")),
            ),
            Ok(()) = revoked.changed() => break ending(
                "revoked",
                Some(client_close(POLICY, "token revoked")),
                Some(backend_close(None, "")),
            ),
            _ = idle.tick() => {
                let last = Duration::from_millis(heard.load(Ordering::Relaxed));
                if epoch.elapsed().saturating_sub(last) >= IDLE_TIMEOUT {
                    break ending(
                        "idle_timeout",
                        Some(client_close(POLICY, "idle timeout")),
                        Some(backend_close(None, "")),
                    );
                }
            }
        }
    };
    // The other direction (or both) stops at its next await: each one
    // races the stop signal.
    let _ = stop_tx.send(true);
    let (up_done, down_done) = tokio::join!(
        async {
            match up_done {
                Some(r) => r,
                None => up.await,
            }
        },
        async {
            match down_done {
                Some(r) => r,
                None => down.await,
            }
        },
    );
    let (_, _, b_tx, up_moved) = up_done;
    let (_, b_rx, c_tx, down_moved) = down_done;
    tokio::join!(
        finish(Some(c_tx), ending.to_client),
        finish_backend(b_tx, b_rx, ending.to_backend),
    );
    crate::audit!(info, event = "session_closed", peer = %peer, token_id = %label,
        end = ending.end, to_backend = up_moved, to_client = down_moved);
    drop(keep);
}

#[cfg(test)]
mod tests {
    use super::BufferFull;
    use tokio_tungstenite::tungstenite::{Error as WsError, Message};

    #[test]
    fn a_full_write_buffer_is_a_stall_on_either_side_and_nothing_else_is() {
        let full = || WsError::WriteBufferFull(Box::new(Message::Ping(vec![1].into())));
        // backend side: tungstenite's error as is
        assert!(full().buffer_full());
        // client side: the same inside axum's error
        assert!(axum::Error::new(full()).buffer_full());
        for other in [
            WsError::ConnectionClosed,
            WsError::AlreadyClosed,
            WsError::Io(std::io::Error::other("reset")),
        ] {
            assert!(!other.buffer_full(), "{other}");
            assert!(!axum::Error::new(other).buffer_full());
        }
        assert!(!axum::Error::new(std::io::Error::other("x")).buffer_full());
    }
}
