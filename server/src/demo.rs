//! The built-in demo backend: echoes every text and binary message back
//! unchanged and sends a JSON status message every few seconds, so the
//! whole path works with no SDK present. Also served on a Unix socket by
//! the hidden `screengate demo-backend` command for tests and benchmarks.

use std::path::Path;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Message;

use crate::limits::DEMO_STATUS_INTERVAL;

const STATES: [&str; 4] = ["IDLE", "LISTENING", "THINKING", "SPEAKING"];

/// Serves one demo session over an established byte stream.
pub async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(io: S, max_message: usize) {
    let cfg = crate::backend::ws_config(max_message);
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(io, Some(cfg)).await else {
        return;
    };
    let mut tick = tokio::time::interval(DEMO_STATUS_INTERVAL);
    tick.tick().await; // the first tick is immediate; skip it
    let mut seq: u64 = 0;
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(msg @ (Message::Text(_) | Message::Binary(_)))) => {
                    if ws.send(msg).await.is_err() { return }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            _ = tick.tick() => {
                seq += 1;
                let state = STATES.get(usize::try_from(seq % 4).unwrap_or(0)).copied().unwrap_or("IDLE");
                let status = format!(r#"{{"type":"status","seq":{seq},"state":"{state}","backend":"demo"}}"#);
                if ws.send(Message::text(status)).await.is_err() { return }
            }
        }
    }
}

/// Serves the demo backend on a Unix socket (mode 0600) until `shutdown`.
pub async fn serve_unix(
    path: &Path,
    max_message: usize,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => {
                if let Ok((s, _)) = r {
                    tokio::spawn(serve_stream(s, max_message));
                }
            }
        }
    }
    let _ = std::fs::remove_file(path);
    Ok(())
}
