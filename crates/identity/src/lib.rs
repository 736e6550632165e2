//! screengate device identity: the per-device key, the server and client
//! certificates, their SPKI pins, and the file rules that protect them.
//!
//! Everything here is generated on the device and unique to it; nothing is
//! shared between devices. Certificates are self-signed, ECDSA P-256,
//! non-signing (`CA:FALSE`, `digitalSignature` only), valid from 1970 to
//! 9999 (see `docs/identity.md` for why each property). Files are written
//! atomically and checked the way OpenSSH checks a private key.
//!
//! This crate does not open sockets or build TLS configs for listeners
//! (that is the server's); it does provide the pinned certificate verifier
//! that every screengate TLS client uses.
#![forbid(unsafe_code)]

mod cert;
mod error;
pub mod fsutil;
mod generation;
mod pin;
mod state;
pub mod verify;

pub use cert::{CertRole, GeneratedCert, generate_cert};
pub use error::IdentityError;
pub use generation::{CURRENT, Removal, ServingLock};
pub use pin::{Pin, spki_pin_of_cert};
pub use state::{
    CLIENT_CRT, CLIENT_KEY, CREDENTIAL_NAME, DEVICE_KEY, Identity, InitOutcome, SERVER_CRT,
    SERVER_KEY, StateDir,
};
