//! The built-in demo backend: echoes every text and binary message back
//! unchanged and sends a JSON status message every few seconds, so the
//! whole path works with no SDK present. Also served on a Unix socket by
//! the hidden `screengate demo-backend` command for tests and benchmarks.

use std::path::Path;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Message;

use crate::limits::{DEMO_ECHO_QUEUE, DEMO_STATUS_INTERVAL, WRITE_STALL};

const STATES: [&str; 4] = ["IDLE", "LISTENING", "THINKING", "SPEAKING"];

/// Serves one demo session over an established byte stream. Reading and
/// writing run concurrently, as in an SDK: echoes queue (at most
/// [`DEMO_ECHO_QUEUE`]) while the writer waits for the peer to take bytes,
/// and only a full queue stops the reader. A peer that takes nothing for
/// [`WRITE_STALL`] is dropped.
pub async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(io: S, max_message: usize) {
    let cfg = crate::limits::ws_config(max_message);
    let handshake = tokio_tungstenite::accept_async_with_config(io, Some(cfg));
    let Ok(Ok(ws)) = tokio::time::timeout(crate::limits::REQUEST_HEAD_TIMEOUT, handshake).await
    else {
        return;
    };
    let (mut tx, mut rx) = ws.split();
    let (queue_tx, mut queue) = tokio::sync::mpsc::channel::<Message>(DEMO_ECHO_QUEUE);
    let reader = async move {
        while let Some(Ok(m)) = rx.next().await {
            let echo = match m {
                Message::Text(_) | Message::Binary(_) => m,
                Message::Close(_) => return,
                _ => continue,
            };
            if queue_tx.send(echo).await.is_err() {
                return;
            }
        }
    };
    let writer = async move {
        let mut tick = tokio::time::interval(DEMO_STATUS_INTERVAL);
        tick.tick().await; // the first tick is immediate; skip it
        let mut seq: u64 = 0;
        loop {
            let first = tokio::select! {
                m = queue.recv() => match m {
                    Some(m) => m,
                    None => break,
                },
                _ = tick.tick() => {
                    seq += 1;
                    let state = STATES.get(usize::try_from(seq % 4).unwrap_or(0)).copied().unwrap_or("IDLE");
                    Message::text(format!(r#"{{"type":"status","seq":{seq},"state":"{state}","backend":"demo"}}"#))
                }
            };
            // Feed what is queued, flush once.
            let mut next = Some(first);
            let batch = async {
                while let Some(m) = next.take() {
                    tx.feed(m).await?;
                    next = queue.try_recv().ok();
                }
                tx.flush().await
            };
            match tokio::time::timeout(WRITE_STALL, batch).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return,
            }
        }
        let _ = tokio::time::timeout(crate::limits::CLOSE_DEADLINE, tx.close()).await;
    };
    // The writer ends when the reader has ended (queue closed) and the
    // queue is drained, or when the peer stops taking bytes; then the
    // reader goes too.
    tokio::pin!(writer);
    tokio::select! {
        _ = &mut writer => {}
        _ = reader => writer.await,
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
