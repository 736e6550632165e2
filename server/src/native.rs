//! The Unix-socket listener for native display clients (an OpenGL renderer,
//! no browser): the kernel's peer uid must be allowed, then TLS if
//! configured (server, or mutual with the device client certificate pinned
//! by exact SPKI), then the same WebSocket upgrade and proxy as the TLS
//! path, minus Origin and Host (there is no browser to speak for). It
//! decides nothing itself: the uid verdict is the gate's (asked through
//! `session.rs`), the upgrade is `session.rs`'s.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use tokio::net::{UnixListener, UnixStream};

use crate::gate::{Conn, Peer};
use crate::gateway::serve_http;
use crate::limits::TLS_HANDSHAKE_TIMEOUT;
use crate::pending::{PendingSlot, Stage};
use crate::state::Shared;

fn router(shared: Arc<Shared>) -> Router {
    let path = shared.upgrade.path.clone();
    Router::new()
        .route(&path, get(crate::session::native_upgrade))
        .with_state(shared)
}

pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: UnixListener) {
    let router = router(shared.clone());
    let mut shutdown = shared.shutdown.clone();
    loop {
        let stream = tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "native accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (slot, evicted) = shared.native_pending.admit(Stage::Silent, None);
        let shared = shared.clone();
        let router = router.clone();
        tokio::spawn(async move {
            connection(shared, router, stream, &slot, evicted).await;
            drop(slot);
        });
    }
}

async fn connection(
    shared: Arc<Shared>,
    router: Router,
    stream: UnixStream,
    slot: &PendingSlot,
    evicted: tokio::sync::oneshot::Receiver<()>,
) {
    if shared.native.is_none() {
        return;
    }
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "native peer credentials unavailable; closing");
            return;
        }
    };
    let peer = Peer::Unix {
        uid: cred.uid(),
        pid: cred.pid(),
    };
    if !crate::session::native_peer_allowed(&shared, &peer, cred.uid()) {
        return;
    }
    slot.advance(Stage::Handshaking);
    let native_tls = shared.keys().native_tls.clone();
    match &native_tls {
        None => {
            slot.advance(Stage::Tls);
            let conn = Conn {
                peer,
                client_cert: None,
            };
            serve_http(shared.clone(), router, stream, conn, evicted).await
        }
        Some(acceptor) => {
            let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                .await
            {
                Ok(Ok(s)) => {
                    slot.advance(Stage::Tls);
                    s
                }
                Ok(Err(e)) => {
                    crate::audit!(warn, event = "rejected", reason = "tls_handshake", listener = "native", peer = %peer, error = %e);
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "native TLS handshake timed out");
                    return;
                }
            };
            let conn = Conn {
                client_cert: crate::tls::client_cert_pinned(&tls),
                peer,
            };
            serve_http(shared.clone(), router, tls, conn, evicted).await;
        }
    }
}
