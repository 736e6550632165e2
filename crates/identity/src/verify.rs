//! Certificate verifiers that trust exactly one key, by SPKI pin.
//!
//! screengate never trusts a certificate through a CA: the device's own
//! certificates are self-signed and pinned. These verifiers accept only the
//! pinned key and delegate the handshake-signature checks to the crypto
//! provider's own verification functions, so a peer must hold the private
//! key, not just present the certificate. Validity dates are deliberately
//! not checked: the pinned key is the identity, the certificate is only its
//! carrier, and a device with no clock set must still connect
//! (`docs/identity.md`).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

use crate::pin::{Pin, spki_pin_of_cert};

/// The handshake-signature half of both verifiers: the pinned key must have
/// signed the handshake, checked by the crypto provider's own functions.
/// (A macro because the two rustls traits declare the same three methods.)
macro_rules! delegate_signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

fn check_pin(
    pin: &Pin,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    allow_chain: bool,
) -> Result<(), Error> {
    if !intermediates.is_empty() && !allow_chain {
        // A self-signed device certificate has no chain; a chain means a CA.
        return Err(Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ));
    }
    let presented = spki_pin_of_cert(end_entity)
        .ok_or(Error::InvalidCertificate(CertificateError::BadEncoding))?;
    if presented.matches(pin) {
        Ok(())
    } else {
        Err(Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ))
    }
}

/// A client-side verifier: the server must present the pinned key.
#[derive(Debug)]
pub struct PinnedServerCert {
    pin: Pin,
    provider: Arc<CryptoProvider>,
    allow_chain: bool,
}

impl PinnedServerCert {
    /// Trust only the key with SPKI pin `pin`.
    pub fn new(pin: Pin, provider: Arc<CryptoProvider>) -> Self {
        Self {
            pin,
            provider,
            allow_chain: false,
        }
    }

    /// As [`PinnedServerCert::new`], for a server that sends its leaf with
    /// a CA chain (the SDK's `leaf + CA` files): the chain is ignored, only
    /// the leaf's key counts. Trust still rests on the pinned key alone.
    pub fn new_ignoring_chain(pin: Pin, provider: Arc<CryptoProvider>) -> Self {
        Self {
            pin,
            provider,
            allow_chain: true,
        }
    }
}

impl ServerCertVerifier for PinnedServerCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        check_pin(&self.pin, end_entity, intermediates, self.allow_chain)?;
        Ok(ServerCertVerified::assertion())
    }

    delegate_signature_checks!();
}

/// A server-side verifier for mutual TLS: the client must present the
/// pinned key. A missing certificate is refused (client auth mandatory).
#[derive(Debug)]
pub struct PinnedClientCert {
    pin: Pin,
    provider: Arc<CryptoProvider>,
}

impl PinnedClientCert {
    /// Trust only the client key with SPKI pin `pin`.
    pub fn new(pin: Pin, provider: Arc<CryptoProvider>) -> Self {
        Self { pin, provider }
    }
}

impl ClientCertVerifier for PinnedClientCert {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        check_pin(&self.pin, end_entity, intermediates, false)?;
        Ok(ClientCertVerified::assertion())
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    delegate_signature_checks!();
}

/// The ring provider, chosen explicitly (builds faster and smaller here than
/// aws-lc-rs); every screengate TLS config uses it.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client config that trusts only `pin` (TLS 1.3 and 1.2).
pub fn pinned_client_config(pin: Pin) -> Result<rustls::ClientConfig, Error> {
    let provider = provider();
    Ok(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedServerCert::new(pin, provider)))
            .with_no_client_auth(),
    )
}

/// A rustls client config that trusts only `pin` and presents `cert`/`key`
/// (mutual TLS with the device client certificate).
pub fn pinned_client_config_with_cert(
    pin: Pin,
    cert: CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<rustls::ClientConfig, Error> {
    let provider = provider();
    rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServerCert::new(pin, provider)))
        .with_client_auth_cert(vec![cert], key)
}
