//! CDP over the browser's pipe: a writer task, a reader task that frames
//! and dispatches, and `call` that sends a typed command
//! (`screengate_cdp::Method`) and awaits its typed reply.
//!
//! No lock is held across an `.await`: the pending-reply map is a std mutex
//! touched only in synchronous sections; writes go through a channel to the
//! one task that owns the pipe's write end.
//!
//! Every command travels as a `Frame` (`Zeroizing<Vec<u8>>`) from the
//! encoder to the pipe: the writer writes from that buffer and drops it,
//! which wipes it, so the header command's copy of the token does not
//! outlive its write.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use screengate_cdp::{Command, Event, Frame, Framer, Incoming, Method, ProtocolError};
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
    /// The command could not be encoded.
    #[error("{0}: cannot encode the command")]
    Encode(&'static str),
    /// The reply is not the shape the method promises.
    #[error("{method}: unexpected reply: {why}")]
    Reply {
        /// The method called.
        method: &'static str,
        /// What did not parse (field names, never values).
        why: String,
    },
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, ProtocolError>>>>>;

/// A CDP connection over one browser's pipe.
#[derive(Debug, Clone)]
pub struct Cdp {
    out: mpsc::Sender<Frame>,
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
        let (out_tx, mut out_rx) = mpsc::channel::<Frame>(64);
        let (ev_tx, ev_rx) = mpsc::channel::<SessionEvent>(1024);
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        tokio::spawn(async move {
            while let Some(frame) = out_rx.recv().await {
                // Written from the frame itself; dropping it wipes it.
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

    /// Sends `params` (its method is `M::NAME`) to `session` (None: the
    /// browser) and awaits the typed result.
    pub async fn call<M: Method>(
        &self,
        session: Option<&str>,
        params: &M,
    ) -> Result<M::Reply, CallError> {
        let method = M::NAME;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let frame = Command {
            id,
            params,
            session_id: session,
        }
        .encode()
        .map_err(|_| CallError::Encode(method))?;
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tx);
        if self.out.send(frame).await.is_err() {
            self.forget(id);
            return Err(CallError::Closed(method.to_owned()));
        }
        match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(Ok(v))) => serde_json::from_value(v).map_err(|e| CallError::Reply {
                method,
                why: e.to_string(),
            }),
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

#[cfg(test)]
mod tests {
    use super::*;
    use screengate_cdp::SetExtraHttpHeaders;

    /// Compiles only for a type that wipes itself on drop.
    fn zeroizes_on_drop<T: zeroize::ZeroizeOnDrop>() {}

    #[test]
    fn the_command_channel_carries_zeroizing_frames() {
        // What `Cdp::call` encodes and the writer task receives and drops.
        zeroizes_on_drop::<Frame>();
        fn sender_item<T: zeroize::ZeroizeOnDrop>(_: &mpsc::Sender<T>) {}
        let (tx, _rx) = mpsc::channel::<Frame>(1);
        sender_item(&tx);
    }

    /// The header command reaches the pipe exactly as encoded, and a reply
    /// is typed; the pipe is real, the "browser" is this test.
    #[tokio::test]
    async fn the_header_command_is_written_from_its_frame_and_replies_are_typed() {
        let (to_tx, to_rx) = pipe::pipe().unwrap();
        let (mut from_tx, from_rx) = pipe::pipe().unwrap();
        let (cdp, _events) = Cdp::start(to_tx, from_rx);
        let token = "T0KEN".repeat(30);
        let call = {
            let cdp = cdp.clone();
            let token = token.clone();
            tokio::spawn(async move {
                cdp.call(
                    Some("S"),
                    &SetExtraHttpHeaders {
                        name: "X-Screengate-Token",
                        value: &token,
                    },
                )
                .await
                .map(|_| ())
            })
        };
        let mut to_rx = to_rx;
        let mut got = Vec::new();
        while !got.contains(&0) {
            let mut b = [0u8; 4096];
            let n = to_rx.read(&mut b).await.unwrap();
            assert!(n > 0, "pipe closed");
            got.extend_from_slice(&b[..n]);
        }
        assert_eq!(got.last(), Some(&0));
        let v: Value = serde_json::from_slice(&got[..got.len() - 1]).unwrap();
        assert_eq!(v["method"], "Network.setExtraHTTPHeaders");
        assert_eq!(v["params"]["headers"]["X-Screengate-Token"], token.as_str());
        assert_eq!(v["sessionId"], "S");
        let id = v["id"].as_u64().unwrap();
        from_tx
            .write_all(format!("{{\"id\":{id},\"result\":{{}}}}\0").as_bytes())
            .await
            .unwrap();
        assert!(call.await.unwrap().is_ok());
        // a reply of the wrong shape is an error naming the method
        let call = {
            let cdp = cdp.clone();
            tokio::spawn(async move { cdp.call(None, &screengate_cdp::GetTargets {}).await })
        };
        let mut got = Vec::new();
        while !got.contains(&0) {
            let mut b = [0u8; 4096];
            let n = to_rx.read(&mut b).await.unwrap();
            got.extend_from_slice(&b[..n]);
        }
        let v: Value = serde_json::from_slice(&got[..got.len() - 1]).unwrap();
        let id = v["id"].as_u64().unwrap();
        from_tx
            .write_all(format!("{{\"id\":{id},\"result\":{{\"targetInfos\":7}}}}\0").as_bytes())
            .await
            .unwrap();
        let e = call.await.unwrap().err().map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("Target.getTargets")),
            "{e:?}"
        );
    }
}
