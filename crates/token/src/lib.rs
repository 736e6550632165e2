//! screengate session tokens: the wire format, minting, verification and the
//! single-use ledger.
//!
//! This crate owns every decision about what a token *is* and when one is
//! acceptable. It is pure: no tokio, no files, no sockets, no processes. Key
//! material comes in from `screengate-identity`; time comes in through the
//! [`Clock`] trait; transport (control socket, HTTP headers) is the server's.
//!
//! # Scheme (see `docs/tokens.md`)
//!
//! * `K_run = HMAC-SHA256(K_device, "screengate run v1" || run_id)` with a
//!   fresh random `run_id` per [`Authority`]: a restart kills every token.
//! * token = base64url-nopad(`version | run_id | token_id | channel | issued |
//!   expires | tag`), `tag = HMAC-SHA256(K_run, TAG_LABEL || preceding)`.
//! * Times are milliseconds on the run's monotonic clock, never wall time.
//! * Single use: [`Authority::consume`] records the id in a ledger whose
//!   entries are dropped once past their expiry.
#![forbid(unsafe_code)]

mod authority;
mod clock;
mod format;
mod secret;

pub use authority::claimed_id_prefix;
pub use authority::{
    Authority, AuthorityError, Consumed, MAX_LEDGER_ENTRIES, MAX_REVOKED_ENTRIES, MAX_TTL,
    MintError, MintedToken, Rejection, RevokeError, Verified,
};
pub use clock::{Clock, ManualClock, MonotonicClock};
pub use format::{Channel, ENCODED_LEN, RAW_LEN, RunId, TokenId, VERSION};
pub use secret::{DEVICE_KEY_LEN, DeviceKey, SecretToken};
