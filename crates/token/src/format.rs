//! The token wire layout: fixed-size fields, big-endian integers, base64url
//! without padding. Parsing here is structural only; MAC, run, channel and
//! expiry decisions belong to [`crate::Authority`].
//!
//! ```text
//! offset size field
//!      0    1 version   (= VERSION)
//!      1   16 run_id
//!     17   16 token_id
//!     33    1 channel   (1 = display, 2 = native)
//!     34    8 issued    ms since run start, u64 BE
//!     42    8 expires   ms since run start, u64 BE
//!     50   32 tag       HMAC-SHA256(K_run, TAG_LABEL || bytes 0..50)
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The only token format version this build understands.
pub const VERSION: u8 = 1;
/// Length of the MAC'd body (everything before the tag).
pub(crate) const BODY_LEN: usize = 50;
/// Length of the HMAC-SHA256 tag.
pub(crate) const TAG_LEN: usize = 32;
/// Raw token length in bytes.
pub const RAW_LEN: usize = BODY_LEN + TAG_LEN;
/// Encoded token length in characters (base64url, no padding).
pub const ENCODED_LEN: usize = (RAW_LEN * 4).div_ceil(3);

/// Identifies one run of the server; a fresh random value at every start.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RunId(pub(crate) [u8; 16]);

impl RunId {
    /// A short hex prefix for logs (the run id is not secret, just noisy).
    pub fn short(&self) -> String {
        hex_prefix(&self.0)
    }
}

impl std::fmt::Debug for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RunId({})", self.short())
    }
}

/// The random 16-byte identity of one token, used by the single-use ledger.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenId(pub(crate) [u8; 16]);

impl TokenId {
    /// The first four bytes in hex: enough to correlate audit events, and
    /// useless for forging (the MAC, not the id, is the secret part).
    pub fn prefix(&self) -> String {
        hex_prefix(&self.0)
    }
}

impl std::fmt::Debug for TokenId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenId({}…)", self.prefix())
    }
}

impl std::fmt::Display for TokenId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.prefix())
    }
}

fn hex_prefix(bytes: &[u8; 16]) -> String {
    bytes.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// What a token may be used for. A display token cannot open a native
/// session and vice versa.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// The browser display client on the TLS WebSocket listener.
    Display,
    /// A native renderer on the Unix-socket listener.
    Native,
}

impl Channel {
    pub(crate) fn to_byte(self) -> u8 {
        match self {
            Channel::Display => 1,
            Channel::Native => 2,
        }
    }

    pub(crate) fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Channel::Display),
            2 => Some(Channel::Native),
            _ => None,
        }
    }

    /// The channel's name on the control socket.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Display => "display",
            Channel::Native => "native",
        }
    }
}

impl std::str::FromStr for Channel {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "display" => Ok(Channel::Display),
            "native" => Ok(Channel::Native),
            _ => Err(()),
        }
    }
}

/// A structurally valid, not yet authenticated token.
#[derive(Debug, Clone)]
pub(crate) struct RawToken {
    pub bytes: [u8; RAW_LEN],
}

impl RawToken {
    pub fn assemble(
        run_id: &RunId,
        token_id: &TokenId,
        channel: Channel,
        issued_ms: u64,
        expires_ms: u64,
    ) -> [u8; BODY_LEN] {
        let mut body = [0u8; BODY_LEN];
        let mut w = Writer {
            buf: &mut body,
            at: 0,
        };
        w.put(&[VERSION]);
        w.put(&run_id.0);
        w.put(&token_id.0);
        w.put(&[channel.to_byte()]);
        w.put(&issued_ms.to_be_bytes());
        w.put(&expires_ms.to_be_bytes());
        body
    }

    pub fn encode(body: &[u8; BODY_LEN], tag: &[u8; TAG_LEN]) -> String {
        let mut raw = [0u8; RAW_LEN];
        let (b, t) = raw.split_at_mut(BODY_LEN);
        b.copy_from_slice(body);
        t.copy_from_slice(tag);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Decodes text to bytes. Refuses anything that is not exactly
    /// [`ENCODED_LEN`] canonical base64url characters, before decoding, so a
    /// hostile header costs bounded work.
    pub fn decode(text: &str) -> Option<Self> {
        if text.len() != ENCODED_LEN {
            return None;
        }
        let mut bytes = [0u8; RAW_LEN];
        let n = URL_SAFE_NO_PAD.decode_slice(text, &mut bytes).ok()?;
        if n != RAW_LEN {
            return None;
        }
        Some(Self { bytes })
    }

    pub fn body(&self) -> &[u8] {
        self.bytes.get(..BODY_LEN).unwrap_or(&[])
    }

    pub fn tag(&self) -> &[u8] {
        self.bytes.get(BODY_LEN..).unwrap_or(&[])
    }

    pub fn version(&self) -> u8 {
        self.bytes[0]
    }

    pub fn run_id(&self) -> RunId {
        RunId(self.array16(1))
    }

    pub fn token_id(&self) -> TokenId {
        TokenId(self.array16(17))
    }

    pub fn channel_byte(&self) -> u8 {
        self.bytes[33]
    }

    pub fn issued_ms(&self) -> u64 {
        self.u64_at(34)
    }

    pub fn expires_ms(&self) -> u64 {
        self.u64_at(42)
    }

    fn array16(&self, at: usize) -> [u8; 16] {
        let mut out = [0u8; 16];
        if let Some(src) = self.bytes.get(at..at + 16) {
            out.copy_from_slice(src);
        }
        out
    }

    fn u64_at(&self, at: usize) -> u64 {
        let mut out = [0u8; 8];
        if let Some(src) = self.bytes.get(at..at + 8) {
            out.copy_from_slice(src);
        }
        u64::from_be_bytes(out)
    }
}

struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, src: &[u8]) {
        if let Some(dst) = self.buf.get_mut(self.at..self.at + src.len()) {
            dst.copy_from_slice(src);
        }
        self.at += src.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_length_is_fixed() {
        assert_eq!(RAW_LEN, 82);
        assert_eq!(ENCODED_LEN, 110);
    }

    #[test]
    fn decode_refuses_wrong_lengths_and_alphabets() {
        assert!(RawToken::decode("").is_none());
        assert!(RawToken::decode(&"A".repeat(ENCODED_LEN - 1)).is_none());
        assert!(RawToken::decode(&"A".repeat(ENCODED_LEN + 1)).is_none());
        // standard-alphabet characters are not base64url
        assert!(RawToken::decode(&"+".repeat(ENCODED_LEN)).is_none());
        assert!(RawToken::decode(&"/".repeat(ENCODED_LEN)).is_none());
        // padding is refused
        let mut padded = "A".repeat(ENCODED_LEN - 1);
        padded.push('=');
        assert!(RawToken::decode(&padded).is_none());
        // canonical all-zero decodes
        assert!(RawToken::decode(&"A".repeat(ENCODED_LEN)).is_some());
    }

    #[test]
    fn decode_refuses_non_canonical_trailing_bits() {
        // 82 bytes = 656 bits; 110 chars carry 660 bits: the last 4 must be 0.
        let mut s = "A".repeat(ENCODED_LEN - 1);
        s.push('B'); // 'B' = 0b000001: a trailing bit set
        assert!(RawToken::decode(&s).is_none());
    }

    #[test]
    fn fields_round_trip() {
        let run = RunId([7; 16]);
        let id = TokenId([9; 16]);
        let body = RawToken::assemble(&run, &id, Channel::Native, 5, 30_005);
        let text = RawToken::encode(&body, &[3; TAG_LEN]);
        let raw = RawToken::decode(&text).unwrap();
        assert_eq!(raw.version(), VERSION);
        assert_eq!(raw.run_id(), run);
        assert_eq!(raw.token_id(), id);
        assert_eq!(raw.channel_byte(), 2);
        assert_eq!(raw.issued_ms(), 5);
        assert_eq!(raw.expires_ms(), 30_005);
        assert_eq!(raw.tag(), &[3; TAG_LEN]);
    }
}
