//! CDP over the browser's pipe: a writer task, a reader task that frames
//! and dispatches, and `call` that awaits the matching response.
//!
//! No lock is held across an `.await`: the pending-reply map is a std mutex
//! touched only in synchronous sections; writes go through a channel to the
//! one task that owns the pipe's write end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use screengate_cdp::{Command, Event, Framer, Incoming, ProtocolError};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};

/// How long a command may wait for its response.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a CDP call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The browser answered with a protocol error.
    #[error("{method}: CDP error {}: {}", .error.code, .error.message)]
    Protocol {
        /// The method called.
        method: String,
        /// The error.
        error: ProtocolError,
    },
    /// The pipe closed: the browser is gone.
    #[error("{0}: the browser closed the DevTools pipe")]
    Closed(String),
    /// No answer in time.
    #[error("{0}: no answer within {CALL_TIMEOUT:?}")]
    Timeout(String),
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, ProtocolError>>>>>;

/// A CDP connection over one browser's pipe.
#[derive(Debug, Clone)]
pub struct Cdp {
    out: mpsc::Sender<Vec<u8>>,
    pending: Pending,
    next: Arc<AtomicU64>,
}

/// An event with the session it came from.
pub type SessionEvent = (Option<String>, Event);

impl Cdp {
    /// Starts the reader and writer tasks. Events arrive on the returned
    /// channel, which closes when the browser goes away.
    pub fn start(
        mut to_browser: pipe::Sender,
        mut from_browser: pipe::Receiver,
    ) -> (Cdp, mpsc::Receiver<SessionEvent>) {
        let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(64);
        let (ev_tx, ev_rx) = mpsc::channel::<SessionEvent>(1024);
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        tokio::spawn(async move {
            while let Some(frame) = out_rx.recv().await {
                if to_browser.write_all(&frame).await.is_err() {
                    return;
                }
            }
        });
        let reader_pending = pending.clone();
        tokio::spawn(async move {
            let mut framer = Framer::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match from_browser.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let frames = match framer.push(buf.get(..n).unwrap_or(&[])) {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!(error = %e, "dropping oversized DevTools message");
                        continue;
                    }
                };
                for frame in frames {
                    match screengate_cdp::parse(&frame) {
                        Ok(Incoming::Response { id, result }) => {
                            let waiter = reader_pending
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .remove(&id);
                            if let Some(w) = waiter {
                                let _ = w.send(result);
                            }
                        }
                        Ok(Incoming::Event { session_id, event }) => {
                            if ev_tx.send((session_id, event)).await.is_err() {
                                break;
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "unparsable DevTools message"),
                    }
                }
            }
            // Browser gone: fail every waiting call.
            reader_pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
        });
        (
            Cdp {
                out: out_tx,
                pending,
                next: Arc::new(AtomicU64::new(1)),
            },
            ev_rx,
        )
    }

    /// Calls `method` on `session` (None: the browser) and awaits the result.
    pub async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, CallError> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tx);
        let frame = Command {
            id,
            method,
            params,
            session_id: session,
        }
        .encode();
        if self.out.send(frame).await.is_err() {
            self.forget(id);
            return Err(CallError::Closed(method.to_owned()));
        }
        match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(error))) => Err(CallError::Protocol {
                method: method.to_owned(),
                error,
            }),
            Ok(Err(_)) => Err(CallError::Closed(method.to_owned())),
            Err(_) => {
                self.forget(id);
                Err(CallError::Timeout(method.to_owned()))
            }
        }
    }

    fn forget(&self, id: u64) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }
}
