//! Every resource bound of the server, named and explained in one place
//! (`docs/hardening.md` repeats the why). Config keys override some of them.

use std::time::Duration;

/// Time a peer gets to finish the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a peer gets to send a complete request head (per request).
pub const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head hyper buffers; beyond it the answer is 431.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// Connections admitted but not (yet) an authenticated session, per
/// listener. When full, one is closed to admit the new one (who: the
/// `pending` module): squatters cannot lock out the real client, and
/// nothing queues without bound.
pub const MAX_PENDING_CONNECTIONS: usize = 256;
/// Of those, the share only connections that finished TLS may hold.
pub const PENDING_RESERVED_TLS: usize = 64;
/// Time allowed to open the backend connection for a new session.
pub const BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Lookups of the owner of the backend's socket (`backend_uid`) before a
/// socket not found counts as unknown (refused), and the pause between
/// them: the kernel makes the accepted socket a moment after our connect
/// returns, and a busy SDK may accept late. At most 100 × 10 ms (was
/// 20 × 5 ms: an SDK accepting after 100 ms was refused as unknown on a
/// loaded device), inside [`BACKEND_CONNECT_TIMEOUT`].
pub const BACKEND_UID_LOOKUPS: u32 = 100;
/// See [`BACKEND_UID_LOOKUPS`].
pub const BACKEND_UID_LOOKUP_PAUSE: Duration = Duration::from_millis(10);
/// `when_full = "replace_oldest"`: how long a newcomer waits for the slot
/// of the session it replaced (that session's closes take at most two
/// [`CLOSE_DEADLINE`]s: the WebSocket close, then the TLS close_notify).
pub const REPLACE_WAIT: Duration = Duration::from_secs(3);
/// `replace_oldest`: how long the backend's 409s are retried after the
/// oldest session was told to close. Each attempt has its own
/// [`BACKEND_CONNECT_TIMEOUT`]. Longer than that timeout: websocketpp (the
/// SDK's server) at times frees its one slot only when its 5 s socket
/// shutdown timer (`timeout_socket_shutdown`) runs out, although
/// screengate sent close frame, close_notify and FIN (measured in e2e
/// `sdk_busy_*`: 5.1-5.2 s); 3 s failed those runs.
pub const REPLACE_RETRY_WINDOW: Duration = Duration::from_secs(6);
/// `replace_oldest`: pause between two attempts while the backend is busy.
pub const REPLACE_RETRY_INTERVAL: Duration = Duration::from_millis(100);
/// Largest control-socket request line; a longer one closes the connection.
/// The protocol's bound (`screengate_control::MAX_REQUEST_LINE`), named here
/// with the server's other limits.
pub const MAX_CONTROL_LINE: usize = screengate_control::MAX_REQUEST_LINE;
/// A control connection idle this long is closed.
pub const CONTROL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Control connections open at once; more wait in the kernel backlog.
pub const MAX_CONTROL_CONNECTIONS: usize = 64;
/// Control connections one uid may hold at once. A client needs one at a
/// time (the launcher mints, revokes, mints); the cap keeps any one uid
/// that can reach the socket (an allowed display, a group member, the
/// service user) from holding every slot of [`MAX_CONTROL_CONNECTIONS`]
/// with idle connections and so starving the display's mint.
pub const MAX_CONTROL_PER_UID: usize = 8;
/// Mint burst allowed per uid, unless `[control] mint_burst` says otherwise.
pub const MINT_BURST: u32 = 20;
/// Mints per second per uid, sustained, unless `[control] mint_rate_per_sec`
/// says otherwise (both change on a reload).
pub const MINT_RATE_PER_SEC: u32 = 10;
/// How long shutdown waits for sessions to close before returning.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);
/// Interval of the demo backend's status message.
pub const DEMO_STATUS_INTERVAL: Duration = Duration::from_secs(3);
/// Largest static file served from `web_root`.
pub const MAX_STATIC_FILE: u64 = 8 * 1024 * 1024;
/// WebSocket read buffer per connection and direction. tungstenite
/// zero-fills this much before every socket read (default 128 KiB): a
/// profile of the proxy (`perf`, docs/performance.md) showed that memset
/// as the largest user-space cost per message. 16 KiB keeps a 16 KiB
/// message to one or two reads.
pub const WS_READ_BUFFER: usize = 16 * 1024;
/// tungstenite's write buffer, in which it writes a frame before the
/// socket takes it (its default).
pub const WS_WRITE_BUFFER: usize = 128 * 1024;
/// The most a WebSocket write buffer may hold: one full message on top of
/// the buffer, and room for control frames. tungstenite's default is
/// unlimited, and the pong it answers each ping with is queued there even
/// when the peer reads nothing: a ping flood from a client that never read
/// grew the server by ~100 MB/s (review of issue 10). Past this the
/// connection fails with `WriteBufferFull` and the session ends.
pub const fn ws_max_write_buffer(max_message: usize) -> usize {
    WS_WRITE_BUFFER + max_message + 64 * 1024
}
/// How often the server pings a session's client.
pub const PING_INTERVAL: Duration = Duration::from_secs(20);
/// A client silent this long (not even a pong) is closed with 1008.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The time one write operation to a peer (a send, or the flush of a batch
/// of up to 64 messages) may take before the peer counts as not reading: a
/// session's client is closed with 1008 "not reading", its backend with
/// 1011, and the slot is freed; a control client's connection is closed.
/// Bounds every write to a peer. It is a bound per operation, not a
/// minimum rate: a client that reads a multi-MiB batch slower than about
/// its size per 10 s is closed too (measured by the review of issue 10:
/// 300 KB/s against 4 MB messages, closed after 5.6 MB).
pub const WRITE_STALL: Duration = Duration::from_secs(10);
/// Time a closing frame (and the transport close) gets before the peer
/// is dropped without it.
pub const CLOSE_DEADLINE: Duration = Duration::from_secs(1);
/// Messages the demo backend holds between reading one and echoing it;
/// beyond that it stops reading, as a real peer applies back-pressure.
pub const DEMO_ECHO_QUEUE: usize = 64;
/// The gateway's listen backlog (the kernel caps it at
/// `net.core.somaxconn`, 4096 on Debian 12).
pub const LISTEN_BACKLOG: u32 = 4096;

/// The WebSocket limits used on every screengate-made connection.
pub(crate) fn ws_config(
    max_message: usize,
) -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .max_write_buffer_size(ws_max_write_buffer(max_message))
}
