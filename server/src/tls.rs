//! rustls server configurations: ring provider, TLS 1.3 and 1.2 only, the
//! device certificate, ALPN http/1.1 (WebSocket runs on h1), and, where
//! asked, the device client certificate required by exact SPKI pin; and
//! the one place a [`proof::ClientCertPinned`] is made, from a finished
//! handshake.

use std::sync::Arc;

use rustls::ServerConfig;
use screengate_identity::Identity;
use screengate_identity::verify::PinnedClientCert;

pub(crate) mod proof;

/// Builds a TLS acceptor config; `require_client_pin` turns on mutual TLS
/// trusting only the device's own client certificate key.
pub(crate) fn server_config(
    id: &Identity,
    require_client_pin: bool,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = screengate_identity::verify::provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = if require_client_pin {
        builder.with_client_cert_verifier(Arc::new(PinnedClientCert::new(id.client_pin, provider)))
    } else {
        builder.with_no_client_auth()
    };
    let mut cfg =
        builder.with_single_cert(vec![id.server_cert.clone()], id.server_key.clone_key())?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The evidence of a verified pinned client certificate on this finished
/// server handshake, if there is one. rustls hands out peer certificates
/// only after its client verifier accepted them, and the only client
/// verifier any screengate acceptor has is [`PinnedClientCert`] (exact SPKI
/// pin, [`server_config`] with `require_client_pin`); an acceptor without
/// client auth never has peer certificates.
pub(crate) fn client_cert_pinned<IO>(
    tls: &tokio_rustls::server::TlsStream<IO>,
) -> Option<proof::ClientCertPinned> {
    let (_, conn) = tls.get_ref();
    conn.peer_certificates()
        .is_some_and(|chain| !chain.is_empty())
        .then(proof::ClientCertPinned::new)
}
