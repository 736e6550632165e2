//! The gateway's rustls server configuration: ring provider, TLS 1.3 and
//! 1.2 only, the device certificate, ALPN http/1.1 (WebSocket runs on h1).

use std::sync::Arc;

use rustls::ServerConfig;
use screengate_identity::Identity;

/// Builds the TLS acceptor config from the device identity.
pub(crate) fn server_config(id: &Identity) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = screengate_identity::verify::provider();
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(vec![id.server_cert.clone()], id.server_key.clone_key())?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
