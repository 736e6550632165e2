//! The TLS gateway: accept, bound the unauthenticated, handshake, serve
//! HTTP/1.1 with upgrades, route `/` to the display app and the WebSocket
//! path to `session.rs`. It decides nothing: what it found out (peer
//! address, whether TLS verified the pinned client certificate) rides in
//! each request's extensions as a `gate::Conn`.
//!
//! Invariant: a connection is "pending" from accept until it ends or its
//! upgrade hands it to a session; the `pending` registry bounds them and
//! says who is closed when it is full. This listener tells it when a
//! connection has sent its first byte and when TLS is done.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tower::ServiceExt;

use crate::gate::{Conn, Peer};
use crate::limits::{MAX_REQUEST_HEAD, REQUEST_HEAD_TIMEOUT, TLS_HANDSHAKE_TIMEOUT};
use crate::pending::{FirstByte, PendingSlot, Stage, first_byte_now};
use crate::state::Shared;

/// The WebSocket path to `session.rs`, everything else to the display app
/// (`web.rs`, with only its own [`crate::web::Site`]); the security headers
/// on every response.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let path = shared.upgrade.path.clone();
    let site = shared.site.clone();
    let (index, files) = (site.clone(), site.clone());
    // One router state type (a second one, `Router<Arc<Site>>` merged in,
    // cost 20+ KiB of monomorphised axum code): the app's handlers get
    // their `Site` by capture instead.
    Router::new()
        .route(&path, get(crate::session::upgrade))
        .route("/", get(move || crate::web::index(index.clone())))
        .fallback(move |uri: http::Uri| crate::web::static_file(files.clone(), uri))
        .layer(axum::middleware::from_fn_with_state(
            site,
            crate::web::security_headers,
        ))
        .with_state(shared)
}

pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let router = router(shared.clone());
    let mut shutdown = shared.shutdown.clone();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "gateway accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // A display's ClientHello has usually arrived while it waited in
        // the kernel's queue: look without waiting, so it enters the
        // registry past the silent stage (and a churn's already-closed
        // connection never enters it).
        let stage = match first_byte_now(&tcp) {
            FirstByte::Closed => continue,
            FirstByte::Arrived => Stage::Handshaking,
            FirstByte::NotYet => Stage::Silent,
        };
        // Only a silent connection needs the probe (one `dup`); without it
        // (fd limit) it is evicted as before, unseen.
        let probe = (stage == Stage::Silent)
            .then(|| tcp.as_fd().try_clone_to_owned().ok())
            .flatten();
        let (slot, evicted) = shared.pending.admit(stage, probe);
        let shared = shared.clone();
        let router = router.clone();
        tokio::spawn(async move {
            connection(shared, router, tcp, peer, stage, &slot, evicted).await;
            drop(slot);
        });
    }
}

async fn connection(
    shared: Arc<Shared>,
    router: Router,
    tcp: TcpStream,
    peer: SocketAddr,
    stage: Stage,
    slot: &PendingSlot,
    mut evicted: oneshot::Receiver<()>,
) {
    let _ = tcp.set_nodelay(true);
    let mut shutdown = shared.shutdown.clone();
    let deadline = tokio::time::Instant::now() + TLS_HANDSHAKE_TIMEOUT;
    // A connection that sends nothing stays `Silent`, first in line for
    // eviction; its first byte (the ClientHello) moves it up. One that
    // closed before sending anything (a connect churn) leaves at once.
    let mut first = [0u8; 1];
    if stage == Stage::Silent {
        tokio::select! {
            _ = &mut evicted => { tracing::debug!(%peer, "evicted before its first byte"); return }
            _ = shutdown.changed() => return,
            r = tokio::time::timeout_at(deadline, tcp.peek(&mut first)) => match r {
                Ok(Ok(0)) => { tracing::debug!(%peer, "closed before its first byte"); return }
                Ok(Ok(_)) => slot.advance(Stage::Handshaking),
                Ok(Err(e)) => { tracing::debug!(%peer, error = %e, "connection failed before TLS"); return }
                Err(_) => { tracing::debug!(%peer, "TLS handshake timed out"); return }
            },
        }
    }
    let tls = tokio::select! {
        _ = &mut evicted => { tracing::debug!(%peer, "evicted during TLS handshake"); return }
        _ = shutdown.changed() => return,
        r = tokio::time::timeout_at(deadline, shared.keys().tls.accept(tcp)) => match r {
            Ok(Ok(s)) => { slot.advance(Stage::Tls); s }
            Ok(Err(e)) => { tracing::debug!(%peer, error = %e, "TLS handshake failed"); return }
            Err(_) => { tracing::debug!(%peer, "TLS handshake timed out"); return }
        },
    };
    let conn = Conn {
        peer: Peer::Tcp(peer),
        client_cert: crate::tls::client_cert_pinned(&tls),
    };
    serve_http(shared, router, tls, conn, evicted).await;
}

/// Serves HTTP/1.1 with upgrades on an established (TLS or Unix) stream,
/// with the request-head deadline, until it ends, is evicted, or shutdown.
pub(crate) async fn serve_http<I>(
    shared: Arc<Shared>,
    router: Router,
    io: I,
    conn: Conn,
    mut evicted: oneshot::Receiver<()>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut shutdown = shared.shutdown.clone();
    let peer = conn.peer.clone();
    let ext = conn;
    let svc = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ext.clone());
        router.clone().oneshot(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_HEAD_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD)
        .keep_alive(true);
    let conn = builder
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r { tracing::debug!(%peer, error = %e, "HTTP connection ended with error"); }
        }
        _ = &mut evicted => {
            tracing::debug!(%peer, "evicted: pending connection limit reached");
        }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
        }
    }
}
