//! Every resource bound of the server, named and explained in one place
//! (`docs/hardening.md` repeats the why). Config keys override some of them.

use std::time::Duration;

/// Time a peer gets to finish the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a peer gets to send a complete request head (per request).
pub const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head hyper buffers; beyond it the answer is 431.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// Connections admitted but not (yet) an authenticated session. When full,
/// the oldest is closed to admit the new one: squatters cannot lock out
/// the real client, and nothing queues without bound.
pub const MAX_PENDING_CONNECTIONS: usize = 256;
/// Time allowed to open the backend connection for a new session.
pub const BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest control-socket request line; a longer one closes the connection.
pub const MAX_CONTROL_LINE: usize = 4 * 1024;
/// A control connection idle this long is closed.
pub const CONTROL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Control connections open at once; more wait in the kernel backlog.
pub const MAX_CONTROL_CONNECTIONS: usize = 64;
/// Mint burst allowed per uid.
pub const MINT_BURST: u32 = 20;
/// Mints per second per uid, sustained.
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
