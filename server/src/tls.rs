//! rustls server configurations: ring provider, TLS 1.3 and 1.2 only, the
//! device certificate, ALPN http/1.1 (WebSocket runs on h1), and, where
//! asked, the device client certificate required by exact SPKI pin.

use std::sync::Arc;

use rustls::ServerConfig;
use screengate_identity::Identity;
use screengate_identity::verify::PinnedClientCert;

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
