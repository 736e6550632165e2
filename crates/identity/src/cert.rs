//! Certificate generation: self-signed, ECDSA P-256, non-signing, valid from
//! before any power-on to long after any device's end of life.
//!
//! | property | why |
//! |---|---|
//! | self-signed | no pre-trusted ("real") private key ever sits on the device |
//! | `CA:FALSE` critical, keyUsage `digitalSignature` only | the key cannot sign other certificates, so a stolen key cannot forge amazon.com |
//! | notBefore 1970-01-01 | valid even if the clock was never set |
//! | notAfter 9999-12-31 | RFC 5280's "no well-defined expiration"; outlives the device |
//! | SAN localhost, 127.0.0.1, ::1 | the only names the gateway answers to |
//! | random 128-bit serial | no two certificates share one, even across devices |

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rand::RngCore;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use zeroize::Zeroizing;

use crate::error::IdentityError;

/// Which certificate to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertRole {
    /// The gateway's TLS server certificate (EKU serverAuth).
    Server,
    /// The native/mTLS client certificate (EKU clientAuth).
    Client,
}

/// A generated certificate and its key, both PEM.
pub struct GeneratedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM. Zeroized on drop.
    pub key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for GeneratedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedCert")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Generates a fresh key pair and certificate for `role`.
pub fn generate_cert(role: CertRole) -> Result<GeneratedCert, IdentityError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| IdentityError::CertGen(e.to_string()))?;
    let cert_pem = cert_for_key(role, &key)?;
    Ok(GeneratedCert {
        cert_pem,
        key_pem: Zeroizing::new(key.serialize_pem()),
    })
}

/// Makes a certificate for an existing key (used when a key survived but its
/// certificate did not, e.g. after a power cut during `init`).
pub(crate) fn cert_for_key(role: CertRole, key: &KeyPair) -> Result<String, IdentityError> {
    let gen_err = |e: rcgen::Error| IdentityError::CertGen(e.to_string());
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).map_err(gen_err)?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    let mut dn = DistinguishedName::new();
    let cn = match role {
        CertRole::Server => "screengate device server",
        CertRole::Client => "screengate device client",
    };
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.not_before = rcgen::date_time_ymd(1970, 1, 1);
    params.not_after = rcgen::date_time_ymd(9999, 12, 31);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![match role {
        CertRole::Server => ExtendedKeyUsagePurpose::ServerAuth,
        CertRole::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    let mut serial = [0u8; 16];
    rand::rng().fill_bytes(&mut serial);
    serial[0] &= 0x7f; // positive INTEGER
    serial[0] |= 0x01; // and never shortened to fewer than 16 bytes
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.use_authority_key_identifier_extension = false;
    let cert = params.self_signed(key).map_err(gen_err)?;
    Ok(cert.pem())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use x509_parser::extensions::ParsedExtension;
    use x509_parser::prelude::*;

    fn parse(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    fn check(role: CertRole) {
        let g = generate_cert(role).unwrap();
        let der = parse(&g.cert_pem);
        let (_, cert) = parse_x509_certificate(&der).unwrap();
        // self-signed: issuer == subject, and the signature verifies with its own key
        assert_eq!(cert.issuer(), cert.subject());
        cert.verify_signature(None).unwrap();
        // validity
        assert_eq!(cert.validity().not_before.timestamp(), 0);
        assert!(cert.validity().not_after.timestamp() >= 8_046_460_800); // 2225-01-01
        // ECDSA P-256
        assert_eq!(
            cert.public_key().algorithm.algorithm.to_id_string(),
            "1.2.840.10045.2.1"
        );
        let mut saw = (false, false, false, false);
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::BasicConstraints(bc) => {
                    assert!(ext.critical, "basicConstraints must be critical");
                    assert!(!bc.ca);
                    saw.0 = true;
                }
                ParsedExtension::KeyUsage(ku) => {
                    assert!(ext.critical, "keyUsage must be critical");
                    assert!(ku.digital_signature());
                    assert!(!ku.key_cert_sign());
                    assert!(!ku.crl_sign());
                    assert_eq!(ku.flags, 1, "digitalSignature only");
                    saw.1 = true;
                }
                ParsedExtension::ExtendedKeyUsage(eku) => {
                    match role {
                        CertRole::Server => assert!(eku.server_auth && !eku.client_auth),
                        CertRole::Client => assert!(eku.client_auth && !eku.server_auth),
                    }
                    assert!(!eku.any && !eku.code_signing);
                    saw.2 = true;
                }
                ParsedExtension::SubjectAlternativeName(san) => {
                    let names = &san.general_names;
                    assert_eq!(names.len(), 3, "{names:?}");
                    assert!(names.contains(&GeneralName::DNSName("localhost")));
                    assert!(names.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])));
                    let v6_loopback: [u8; 16] = std::net::Ipv6Addr::LOCALHOST.octets();
                    assert!(names.contains(&GeneralName::IPAddress(&v6_loopback)));
                    saw.3 = true;
                }
                _ => {}
            }
        }
        assert_eq!(saw, (true, true, true, true));
        assert!(cert.raw_serial().len() == 16);
    }

    #[test]
    fn server_cert_has_required_properties() {
        check(CertRole::Server);
    }

    #[test]
    fn client_cert_has_required_properties() {
        check(CertRole::Client);
    }

    #[test]
    fn serials_and_keys_are_unique() {
        let a = generate_cert(CertRole::Server).unwrap();
        let b = generate_cert(CertRole::Server).unwrap();
        let (da, db) = (parse(&a.cert_pem), parse(&b.cert_pem));
        let (_, ca) = parse_x509_certificate(&da).unwrap();
        let (_, cb) = parse_x509_certificate(&db).unwrap();
        assert_ne!(ca.raw_serial(), cb.raw_serial());
        assert_ne!(ca.public_key().raw, cb.public_key().raw);
    }
}
