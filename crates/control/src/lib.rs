//! screengate's control protocol: one JSON object per line over the
//! control Unix socket, as types shared by the server, the launcher, the
//! native client, `screengate mint` and the tests.
//!
//! * [`protocol`] (pure: no I/O, no tokio): [`Request`] and [`Reply`], the
//!   typed [`Refusal`] for every error code the server sends, total parsers
//!   for both directions, the named line bounds, and the exact wire bytes
//!   (known-answer tests pin them).
//! * [`client`] (feature `client`, tokio): one request, one reply, within
//!   [`client::EXCHANGE_DEADLINE`] and [`MAX_REPLY_LINE`], optionally after
//!   checking that the server's uid is who answers.
//!
//! What the server does with a request (allow-list, rate limit, minting,
//! audit) and how it reads lines off its listener stay in the server.
//!
//! # No unzeroized copy of a token
//!
//! A token crosses this crate twice: the server encodes a mint reply, a
//! client parses it. Neither leaves a copy behind that is not wiped:
//!
//! * The reply holds the authority's own [`screengate_token::SecretToken`]
//!   (moved, not copied). [`Reply::to_line`] writes it with
//!   `serde_json::to_writer` into a `Zeroizing<Vec<u8>>` allocated once at
//!   [`MAX_REPLY_LINE`] and written through a `&mut [u8]`, which cannot
//!   reallocate; serde_json writes a string to its writer in slices, with
//!   no intermediate buffer. The `json!` value the server built before
//!   (a `serde_json::Value` with a plain `String` copy of the token) is
//!   gone.
//! * The client reads the reply into a zeroed `Zeroizing<Vec<u8>>` of
//!   [`MAX_REPLY_LINE`] bytes, filled by slice (no `BufReader`, whose
//!   buffer would not be wiped, no growth). [`Reply::parse`] borrows the
//!   token from that buffer as raw JSON (`&RawValue`), so the JSON parser
//!   never copies it into its scratch buffer; a token with an escape is
//!   refused ([`ReplyError::BadToken`]). The one copy is the exact-size
//!   `SecretToken`, wiped on drop. Parse errors never quote the line.
//!
//! Out of reach of this crate: the kernel's socket buffers, and whatever a
//! caller does with `expose_secret()` (an HTTP header value, a CDP command).
#![forbid(unsafe_code)]

pub mod protocol;

#[cfg(feature = "client")]
pub mod client;

pub use protocol::{
    ENCODE_FAILED_LINE, EncodeError, MAX_REPLY_LINE, MAX_REQUEST_LINE, Minted, Refusal, Reply,
    ReplyError, Request, RequestError,
};
pub use screengate_token::{Channel, SecretToken};
