//! Secret-holding types: the device key and an encoded token.
//!
//! Both have no `Display`, a redacting `Debug`, zeroize their bytes on drop,
//! and expose their contents only through one explicitly named method, so a
//! secret cannot reach a log line or an error message by accident.

use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of the per-device key in bytes.
pub const DEVICE_KEY_LEN: usize = 32;

/// The per-device HMAC key: 32 bytes from the OS CSPRNG, made on the device.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DeviceKey([u8; DEVICE_KEY_LEN]);

impl DeviceKey {
    /// Wraps raw key bytes. The caller should zeroize its own copy.
    pub fn from_bytes(bytes: [u8; DEVICE_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Parses a key from a slice, refusing any length but [`DEVICE_KEY_LEN`].
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; DEVICE_KEY_LEN] = bytes.try_into().ok()?;
        Some(Self(arr))
    }

    /// Generates a fresh key from the thread CSPRNG (seeded from the OS).
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut bytes = [0u8; DEVICE_KEY_LEN];
        rand::rng().fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// The raw key bytes. Named loudly so every use is easy to audit.
    pub fn expose_secret(&self) -> &[u8; DEVICE_KEY_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceKey(<redacted>)")
    }
}

/// An encoded token as handed to a client. Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct SecretToken(String);

impl SecretToken {
    pub(crate) fn new(s: String) -> Self {
        Self(s)
    }

    /// A token as a client received it (from a control reply), so the
    /// client's copy is zeroized too. It proves nothing: only
    /// [`crate::Authority::verify`] tells a genuine token. The one
    /// allocation is exactly `text.len()` bytes and is never grown.
    pub fn from_received(text: &str) -> Self {
        Self(text.to_owned())
    }

    /// The token text, for putting on the wire to its one intended recipient.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretToken(<redacted>)")
    }
}
