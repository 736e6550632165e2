//! SPKI pins: base64(sha256(SubjectPublicKeyInfo DER)), the exact string
//! Chromium's `--ignore-certificate-errors-spki-list` takes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A SHA-256 SPKI pin.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Pin([u8; 32]);

impl Pin {
    /// The pin of a DER SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> Self {
        Self(Sha256::digest(spki_der).into())
    }

    /// Parses the base64 form.
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = STANDARD.decode(text.trim()).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }

    /// Constant-time comparison (pins are public, but it costs nothing).
    pub fn matches(&self, other: &Pin) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Display for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pin({self})")
    }
}

/// The SPKI pin of a DER certificate, or `None` if it does not parse.
/// (webpki's parser, already linked by rustls: a second X.509 parser would
/// cost flash for nothing.)
pub fn spki_pin_of_cert(cert_der: &[u8]) -> Option<Pin> {
    let der = rustls::pki_types::CertificateDer::from(cert_der);
    let cert = webpki::EndEntityCert::try_from(&der).ok()?;
    Some(Pin::of_spki(cert.subject_public_key_info().as_ref()))
}
