//! The control protocol as types: [`Request`] and [`Reply`], their exact
//! wire bytes, and total parsers for both. Pure: no I/O, no runtime.
//!
//! Owns every string of the protocol (ops, field names, error codes and
//! the server's fixed messages). What the server does with a request
//! (allow-list, rate limit, minting) is the server's; moving the bytes is
//! [`crate::client`]'s and the server's listener's.

use std::fmt;
use std::time::Duration;

use screengate_token::{Channel, RevokeError, SecretToken};
use serde::ser::{SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use zeroize::Zeroizing;

/// Longest request line, without its newline. The server reads at most
/// this many bytes (plus the newline) before answering `line_too_long`
/// and closing; [`Request::parse`] refuses anything longer.
pub const MAX_REQUEST_LINE: usize = 4 * 1024;

/// Longest reply line, newline included (a mint reply is about 500
/// bytes). The server cannot encode a longer one ([`Reply::to_line`]) and
/// a client reads no further ([`Reply::parse`] refuses it too).
pub const MAX_REPLY_LINE: usize = 16 * 1024;

/// Longest `message` of a refusal built from a request line, in bytes
/// (then `…`). JSON escapes a byte into at most six (`\u001f`), so the
/// reply stays under [`MAX_REPLY_LINE`] whatever the line held.
pub const MAX_REFUSAL_MESSAGE: usize = 2 * 1024;

/// `message` cut to [`MAX_REFUSAL_MESSAGE`] bytes at a character boundary.
fn clip(mut message: String) -> String {
    if message.len() > MAX_REFUSAL_MESSAGE {
        let mut end = MAX_REFUSAL_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

/// The bytes the server sends if a reply cannot be encoded within
/// [`MAX_REPLY_LINE`] (no reply it builds comes near). Clients parse it as
/// a malformed reply.
pub const ENCODE_FAILED_LINE: &[u8] = b"{\"ok\":false}\n";

/// The ops and error codes on the wire.
mod wire {
    pub const MINT: &str = "mint";
    pub const REVOKE: &str = "revoke";
    pub const LINE_TOO_LONG: &str = "line_too_long";
    pub const NOT_AUTHORIZED: &str = "not_authorized";
    pub const BAD_REQUEST: &str = "bad_request";
    pub const RATE_LIMITED: &str = "rate_limited";
    pub const LEDGER_FULL: &str = "ledger_full";
    pub const NOT_YOURS: &str = "not_yours";
    pub const REVOKED_FULL: &str = "revoked_full";
    /// The `revoked` value of a revoke-all reply.
    pub const ALL: &str = "all";
    /// The fixed message of a `ledger_full` refusal.
    pub const LEDGER_FULL_MESSAGE: &str =
        "too many recently used tokens; retry after the token TTL";
}

// ---------------------------------------------------------------- requests

/// A control request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `{"op":"mint","channel":…}`: mint a token for a channel (`channel`
    /// absent means display).
    Mint(Channel),
    /// `{"op":"revoke","token_id":…}`: revoke one token by the `token_id`
    /// its mint reply carried (authorised for the uid that minted it). The
    /// handle is not a credential but is never logged.
    Revoke(String),
    /// `{"op":"revoke","all":true}`: revoke every token minted so far and
    /// close every live session.
    RevokeAll,
}

/// Why a line is not a request. The `Display` text is the `message` of the
/// `bad_request` (or `line_too_long`) reply, byte for byte as before the
/// protocol had types.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Longer than [`MAX_REQUEST_LINE`].
    #[error("request line longer than {MAX_REQUEST_LINE} bytes; closing")]
    TooLong,
    /// Not UTF-8.
    #[error("line is not UTF-8")]
    NotUtf8,
    /// Nothing but whitespace.
    #[error(
        "empty line; send one JSON object per line, e.g. {{\"op\":\"mint\",\"channel\":\"display\"}}"
    )]
    Empty,
    /// Not a JSON object with the request fields (the JSON parser's words).
    #[error("not a request object: {0}; expected {{\"op\":\"mint\",\"channel\":\"display\"}}")]
    NotARequest(String),
    /// `channel` on an op other than mint.
    #[error("`channel` belongs to mint only")]
    ChannelOutsideMint,
    /// `token_id` or `all` on an op other than revoke.
    #[error("`token_id` and `all` belong to revoke only")]
    RevokeFieldsOutsideRevoke,
    /// revoke with neither, both, or `all` not `true`.
    #[error(
        "revoke takes exactly one of {{\"token_id\":\"…\"}} (from the mint reply) or {{\"all\":true}}"
    )]
    RevokeArguments,
    /// A channel that is not `display` or `native`.
    #[error("unknown channel `{}`; expected display or native", .0.escape_debug())]
    UnknownChannel(String),
    /// An op that is not `mint` or `revoke`.
    #[error("unknown op `{}`; the ops are mint and revoke", .0.escape_debug())]
    UnknownOp(String),
}

/// The request object as it is on the wire. Field names, order and types
/// make the JSON parser's messages (`unknown field …, expected one of …`),
/// so they stay as they are.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    op: String,
    channel: Option<String>,
    token_id: Option<String>,
    all: Option<bool>,
}

/// The request object as the client writes it.
#[derive(Serialize)]
struct WireRequest<'a> {
    op: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    all: Option<bool>,
}

impl Request {
    /// Parses one request line (without its newline; surrounding
    /// whitespace is ignored). Total: any input is a request or a
    /// [`RequestError`].
    // Not inlined into the server's opt-level-3 callers: this code is
    // per request, and the `screengate` binary has a size budget.
    #[inline(never)]
    pub fn parse(line: &[u8]) -> Result<Request, RequestError> {
        if line.len() > MAX_REQUEST_LINE {
            return Err(RequestError::TooLong);
        }
        let text = std::str::from_utf8(line).map_err(|_| RequestError::NotUtf8)?;
        let text = text.trim();
        if text.is_empty() {
            return Err(RequestError::Empty);
        }
        let raw: RawRequest =
            serde_json::from_str(text).map_err(|e| RequestError::NotARequest(e.to_string()))?;
        if raw.op != wire::MINT && raw.channel.is_some() {
            return Err(RequestError::ChannelOutsideMint);
        }
        if raw.op != wire::REVOKE && (raw.token_id.is_some() || raw.all.is_some()) {
            return Err(RequestError::RevokeFieldsOutsideRevoke);
        }
        match raw.op.as_str() {
            wire::REVOKE => match (raw.token_id, raw.all) {
                (Some(id), None) => Ok(Request::Revoke(id)),
                (None, Some(true)) => Ok(Request::RevokeAll),
                _ => Err(RequestError::RevokeArguments),
            },
            wire::MINT => match raw.channel {
                None => Ok(Request::Mint(Channel::Display)),
                Some(ch) => ch
                    .parse()
                    .map(Request::Mint)
                    .map_err(|()| RequestError::UnknownChannel(ch)),
            },
            _ => Err(RequestError::UnknownOp(raw.op)),
        }
    }

    /// The request line, newline included, in a buffer wiped on drop.
    /// Fails only if it would exceed [`MAX_REQUEST_LINE`] (a revoke
    /// handle that long is not a handle).
    // Not inlined into the server's opt-level-3 callers: this code is
    // per request, and the `screengate` binary has a size budget.
    #[inline(never)]
    pub fn to_line(&self) -> Result<Zeroizing<Vec<u8>>, EncodeError> {
        let wire = match self {
            Request::Mint(channel) => WireRequest {
                op: wire::MINT,
                channel: Some(channel.as_str()),
                token_id: None,
                all: None,
            },
            Request::Revoke(handle) => WireRequest {
                op: wire::REVOKE,
                channel: None,
                token_id: Some(handle),
                all: None,
            },
            Request::RevokeAll => WireRequest {
                op: wire::REVOKE,
                channel: None,
                token_id: None,
                all: Some(true),
            },
        };
        encode_line(&wire, MAX_REQUEST_LINE + 1)
    }
}

// ----------------------------------------------------------------- replies

/// A reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// `{"ok":true,"token":…}`: a minted token and where to use it.
    Minted(Minted),
    /// `{"ok":true,"revoked":1}`.
    Revoked,
    /// `{"ok":true,"revoked":"all","sessions_closed":N}`.
    RevokedAll {
        /// Live sessions the revocation closed.
        sessions_closed: u64,
    },
    /// `{"ok":false,"error":…}`.
    Refused(Refusal),
}

/// A minted token and everything a client needs to use it.
///
/// `Debug` shows neither the token nor its revocation handle.
#[derive(PartialEq, Eq)]
pub struct Minted {
    /// The token. Secret: no `Display`, redacted `Debug`, zeroized on
    /// drop; [`SecretToken::expose_secret`] is the one way to its text.
    pub token: SecretToken,
    /// The header to carry it in (`X-Screengate-Token`).
    pub header: String,
    /// The display app URL.
    pub url: String,
    /// The gateway's WebSocket URL.
    pub ws_url: String,
    /// The gateway origin (`https://localhost:PORT`).
    pub origin: String,
    /// SPKI pin of the gateway certificate (base64 SHA-256).
    pub spki_pin: String,
    /// What the token may open.
    pub channel: Channel,
    /// The handle with which the minting uid can revoke the token
    /// (`{"op":"revoke","token_id":…}`). Not a credential, never logged.
    pub token_id: String,
    /// Remaining life at mint time, in milliseconds.
    pub expires_in_ms: u64,
}

impl Minted {
    /// Remaining life at mint time.
    pub fn expires_in(&self) -> Duration {
        Duration::from_millis(self.expires_in_ms)
    }
}

impl fmt::Debug for Minted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minted")
            .field("token", &self.token)
            .field("url", &self.url)
            .field("channel", &self.channel)
            .field("expires_in_ms", &self.expires_in_ms)
            .finish_non_exhaustive()
    }
}

/// Why the server said no: every error code it sends, with the fields each
/// carries on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `line_too_long`: the request line exceeded [`MAX_REQUEST_LINE`];
    /// the server closed the connection.
    LineTooLong {
        /// What the server said.
        message: String,
    },
    /// `not_authorized`: the peer's uid (SO_PEERCRED) is not in the
    /// allow-list; the server closed the connection.
    NotAuthorized,
    /// `bad_request`: the line is not a request, or a revoke handle is
    /// malformed. The connection stays open.
    BadRequest {
        /// What is wrong, for a human.
        message: String,
    },
    /// `rate_limited`: this uid minted too many tokens too fast.
    RateLimited {
        /// When the next mint will be allowed (at least 1).
        retry_after_ms: u64,
    },
    /// `ledger_full`: too many tokens were used within one TTL.
    LedgerFull {
        /// What the server said.
        message: String,
        /// The token TTL: by then older tokens have expired.
        retry_after_ms: u64,
    },
    /// `not_yours`: the revoke handle is another uid's, another run's, or
    /// altered.
    NotYours {
        /// What the server said.
        message: String,
    },
    /// `revoked_full`: the revoked-id set is full; the token expires with
    /// its TTL.
    RevokedFull {
        /// What the server said.
        message: String,
    },
}

impl Refusal {
    /// The error code on the wire (also the audit reason).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::LineTooLong { .. } => wire::LINE_TOO_LONG,
            Refusal::NotAuthorized => wire::NOT_AUTHORIZED,
            Refusal::BadRequest { .. } => wire::BAD_REQUEST,
            Refusal::RateLimited { .. } => wire::RATE_LIMITED,
            Refusal::LedgerFull { .. } => wire::LEDGER_FULL,
            Refusal::NotYours { .. } => wire::NOT_YOURS,
            Refusal::RevokedFull { .. } => wire::REVOKED_FULL,
        }
    }

    /// `line_too_long`: the server read [`MAX_REQUEST_LINE`] bytes and no
    /// newline.
    pub fn line_too_long() -> Self {
        Self::bad_request(&RequestError::TooLong)
    }

    /// The refusal for a line that is not a request: `line_too_long` for
    /// [`RequestError::TooLong`], `bad_request` for the rest.
    /// The message quotes parts of the line, which escaping can make up to
    /// seven times longer (DEL is `\\u{7f}` in the reply); it is cut at
    /// [`MAX_REFUSAL_MESSAGE`] bytes so that the reply always fits in
    /// [`MAX_REPLY_LINE`].
    pub fn bad_request(e: &RequestError) -> Self {
        let message = clip(e.to_string());
        match e {
            RequestError::TooLong => Refusal::LineTooLong { message },
            _ => Refusal::BadRequest { message },
        }
    }

    /// `rate_limited` after `wait` (rounded down to ms, at least 1 ms).
    pub fn rate_limited(wait: Duration) -> Self {
        Refusal::RateLimited {
            retry_after_ms: millis(wait).max(1),
        }
    }

    /// `ledger_full`, to retry after `ttl`.
    pub fn ledger_full(ttl: Duration) -> Self {
        Refusal::LedgerFull {
            message: wire::LEDGER_FULL_MESSAGE.to_owned(),
            retry_after_ms: millis(ttl),
        }
    }

    /// The refusal of a revocation the authority refused.
    pub fn revoke(e: RevokeError) -> Self {
        let message = e.to_string();
        match e {
            RevokeError::Malformed => Refusal::BadRequest { message },
            RevokeError::NotYours => Refusal::NotYours { message },
            RevokeError::Full => Refusal::RevokedFull { message },
        }
    }

    /// The server's message, if the code carries one.
    pub fn message(&self) -> Option<&str> {
        match self {
            Refusal::LineTooLong { message }
            | Refusal::BadRequest { message }
            | Refusal::LedgerFull { message, .. }
            | Refusal::NotYours { message }
            | Refusal::RevokedFull { message } => Some(message),
            Refusal::NotAuthorized | Refusal::RateLimited { .. } => None,
        }
    }

    /// The suggested wait, if the code carries one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Refusal::RateLimited { retry_after_ms }
            | Refusal::LedgerFull { retry_after_ms, .. } => {
                Some(Duration::from_millis(*retry_after_ms))
            }
            _ => None,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())?;
        if let Some(m) = self.message() {
            write!(f, ": {}", m.escape_debug())?;
        }
        if let Some(after) = self.retry_after() {
            write!(f, " (retry after {} ms)", after.as_millis())?;
        }
        Ok(())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Serialize for Reply {
    /// Field order is the wire's: `ok` first, then as listed in the
    /// README's protocol section.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Reply::Minted(m) => {
                let mut st = s.serialize_struct("Reply", 10)?;
                st.serialize_field("ok", &true)?;
                // Written straight from the secret into the (zeroizing)
                // output: serde_json copies a `&str` to its writer in
                // slices, with no buffer of its own.
                st.serialize_field("token", m.token.expose_secret())?;
                st.serialize_field("header", &m.header)?;
                st.serialize_field("url", &m.url)?;
                st.serialize_field("ws_url", &m.ws_url)?;
                st.serialize_field("origin", &m.origin)?;
                st.serialize_field("spki_pin", &m.spki_pin)?;
                st.serialize_field("channel", m.channel.as_str())?;
                st.serialize_field("token_id", &m.token_id)?;
                st.serialize_field("expires_in_ms", &m.expires_in_ms)?;
                st.end()
            }
            Reply::Revoked => {
                let mut st = s.serialize_struct("Reply", 2)?;
                st.serialize_field("ok", &true)?;
                st.serialize_field("revoked", &1u8)?;
                st.end()
            }
            Reply::RevokedAll { sessions_closed } => {
                let mut st = s.serialize_struct("Reply", 3)?;
                st.serialize_field("ok", &true)?;
                st.serialize_field("revoked", wire::ALL)?;
                st.serialize_field("sessions_closed", sessions_closed)?;
                st.end()
            }
            Reply::Refused(r) => {
                let mut st = s.serialize_struct("Reply", 4)?;
                st.serialize_field("ok", &false)?;
                st.serialize_field("error", r.code())?;
                if let Some(m) = r.message() {
                    st.serialize_field("message", m)?;
                }
                if let Refusal::RateLimited { retry_after_ms }
                | Refusal::LedgerFull { retry_after_ms, .. } = r
                {
                    st.serialize_field("retry_after_ms", retry_after_ms)?;
                }
                st.end()
            }
        }
    }
}

/// Why a reply line is not a reply. No variant carries reply text: a
/// malformed reply may hold a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// Longer than [`MAX_REPLY_LINE`] (or no newline within it).
    #[error("no complete reply line within {MAX_REPLY_LINE} bytes")]
    TooLong,
    /// The connection ended before a newline.
    #[error("the server closed the connection without a complete reply")]
    Incomplete,
    /// Not JSON, or not an object of the reply fields (an unknown or
    /// duplicate field, a wrong type). The JSON parser's words are left
    /// out: they can quote the reply.
    #[error("reply is not a reply object (column {column})")]
    Malformed {
        /// Where the JSON parser stopped.
        column: usize,
    },
    /// A field the reply's kind requires is missing.
    #[error("reply lacks `{0}`")]
    Missing(&'static str),
    /// A field that does not belong to the reply's kind.
    #[error("reply has `{0}`, which does not belong to it")]
    Unexpected(&'static str),
    /// `token` is not a plain JSON string (a token is base64url, so a
    /// genuine one needs no escape).
    #[error("reply's `token` is not a plain string")]
    BadToken,
    /// `channel` is not `display` or `native`.
    #[error("reply's `channel` is not display or native")]
    BadChannel,
    /// `revoked` is neither `1` nor `"all"`.
    #[error("reply's `revoked` is neither 1 nor \"all\"")]
    BadRevoked,
    /// An error code this version does not know.
    #[error("unknown error code `{}`", .0.escape_debug())]
    UnknownCode(String),
    /// A well-formed reply of another kind than the request asked for.
    #[error("a {got} reply to a {asked} request")]
    WrongKind {
        /// The request's kind.
        asked: &'static str,
        /// The reply's kind.
        got: &'static str,
    },
}

/// The reply object as it is on the wire. `token` is kept as the raw JSON
/// text, borrowed from the line: the parser skips a string it borrows
/// without copying it into its (unzeroized) scratch buffer, which it would
/// do for a `String` with an escape.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReply<'a> {
    ok: bool,
    #[serde(borrow)]
    token: Option<&'a RawValue>,
    header: Option<String>,
    url: Option<String>,
    ws_url: Option<String>,
    origin: Option<String>,
    spki_pin: Option<String>,
    channel: Option<String>,
    token_id: Option<String>,
    expires_in_ms: Option<u64>,
    #[serde(borrow)]
    revoked: Option<&'a RawValue>,
    sessions_closed: Option<u64>,
    error: Option<String>,
    message: Option<String>,
    retry_after_ms: Option<u64>,
}

fn need<T>(v: Option<T>, name: &'static str) -> Result<T, ReplyError> {
    v.ok_or(ReplyError::Missing(name))
}

/// Refuses the first field that is present but does not belong.
fn absent(fields: &[(&'static str, bool)]) -> Result<(), ReplyError> {
    match fields.iter().find(|(_, present)| *present) {
        Some((name, _)) => Err(ReplyError::Unexpected(name)),
        None => Ok(()),
    }
}

impl RawReply<'_> {
    fn mint_fields(&self) -> [(&'static str, bool); 9] {
        [
            ("token", self.token.is_some()),
            ("header", self.header.is_some()),
            ("url", self.url.is_some()),
            ("ws_url", self.ws_url.is_some()),
            ("origin", self.origin.is_some()),
            ("spki_pin", self.spki_pin.is_some()),
            ("channel", self.channel.is_some()),
            ("token_id", self.token_id.is_some()),
            ("expires_in_ms", self.expires_in_ms.is_some()),
        ]
    }

    fn revoke_fields(&self) -> [(&'static str, bool); 2] {
        [
            ("revoked", self.revoked.is_some()),
            ("sessions_closed", self.sessions_closed.is_some()),
        ]
    }

    fn error_fields(&self) -> [(&'static str, bool); 3] {
        [
            ("error", self.error.is_some()),
            ("message", self.message.is_some()),
            ("retry_after_ms", self.retry_after_ms.is_some()),
        ]
    }
}

impl Reply {
    /// Whether the reply is `"ok":true`.
    pub fn is_ok(&self) -> bool {
        !matches!(self, Reply::Refused(_))
    }

    /// Whether a reply line says `"ok":true`, reading that field only (the
    /// rest is skipped unparsed and uncopied): for a caller that passes the
    /// line on as it came, like `screengate mint`. `false` for anything
    /// that is not a JSON object with a boolean `ok`. A full [`Reply::parse`]
    /// in the `screengate` binary would cost ~12 KiB of its size budget.
    #[inline(never)]
    pub fn says_ok(line: &[u8]) -> bool {
        #[derive(Deserialize)]
        struct OkField {
            ok: bool,
        }
        std::str::from_utf8(line)
            .ok()
            .and_then(|text| serde_json::from_str::<OkField>(text).ok())
            .is_some_and(|r| r.ok)
    }

    /// The reply's kind, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Reply::Minted(_) => "mint",
            Reply::Revoked | Reply::RevokedAll { .. } => "revoke",
            Reply::Refused(_) => "refusal",
        }
    }

    /// The reply line, newline included, in a buffer wiped on drop.
    ///
    /// The buffer is allocated once at [`MAX_REPLY_LINE`] and written
    /// through a `&mut [u8]`, which cannot grow: no reallocation can leave
    /// a copy of the token behind. Fails only if the reply would not fit.
    // Not inlined into the server's opt-level-3 callers: this code is
    // per request, and the `screengate` binary has a size budget.
    #[inline(never)]
    pub fn to_line(&self) -> Result<Zeroizing<Vec<u8>>, EncodeError> {
        encode_line(self, MAX_REPLY_LINE)
    }

    /// Parses one reply line (with or without its newline). Total: any
    /// input is a reply or a [`ReplyError`], whose text never quotes the
    /// line. The token is copied once, from `line` into the
    /// [`SecretToken`]; nothing else holds it.
    // Not inlined into the server's opt-level-3 callers: this code is
    // per request, and the `screengate` binary has a size budget.
    #[inline(never)]
    pub fn parse(line: &[u8]) -> Result<Reply, ReplyError> {
        if line.len() > MAX_REPLY_LINE {
            return Err(ReplyError::TooLong);
        }
        // From a `&str`, as the request parser does: one instance of the
        // JSON parser in the server binary, not two (size budget).
        let text = std::str::from_utf8(line).map_err(|_| ReplyError::Malformed { column: 0 })?;
        let raw: RawReply<'_> =
            serde_json::from_str(text).map_err(|e| ReplyError::Malformed { column: e.column() })?;
        if !raw.ok {
            absent(&raw.mint_fields())?;
            absent(&raw.revoke_fields())?;
            return Ok(Reply::Refused(raw.refusal()?));
        }
        absent(&raw.error_fields())?;
        if raw.token.is_some() {
            absent(&raw.revoke_fields())?;
            return Ok(Reply::Minted(raw.minted()?));
        }
        absent(&raw.mint_fields())?;
        match need(raw.revoked, "revoked")?.get() {
            "1" => {
                absent(&[("sessions_closed", raw.sessions_closed.is_some())])?;
                Ok(Reply::Revoked)
            }
            "\"all\"" => Ok(Reply::RevokedAll {
                sessions_closed: need(raw.sessions_closed, "sessions_closed")?,
            }),
            _ => Err(ReplyError::BadRevoked),
        }
    }
}

impl RawReply<'_> {
    fn minted(self) -> Result<Minted, ReplyError> {
        let token = need(self.token, "token")?.get();
        let token = token
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .filter(|t| !t.contains('\\'))
            .ok_or(ReplyError::BadToken)?;
        let channel = need(self.channel, "channel")?
            .parse()
            .map_err(|()| ReplyError::BadChannel)?;
        Ok(Minted {
            token: SecretToken::from_received(token),
            header: need(self.header, "header")?,
            url: need(self.url, "url")?,
            ws_url: need(self.ws_url, "ws_url")?,
            origin: need(self.origin, "origin")?,
            spki_pin: need(self.spki_pin, "spki_pin")?,
            channel,
            token_id: need(self.token_id, "token_id")?,
            expires_in_ms: need(self.expires_in_ms, "expires_in_ms")?,
        })
    }

    fn refusal(self) -> Result<Refusal, ReplyError> {
        let code = need(self.error, "error")?;
        let (message, retry) = (self.message, self.retry_after_ms);
        let message_only = |make: fn(String) -> Refusal| {
            absent(&[("retry_after_ms", retry.is_some())])?;
            Ok(make(need(message.clone(), "message")?))
        };
        match code.as_str() {
            wire::LINE_TOO_LONG => message_only(|message| Refusal::LineTooLong { message }),
            wire::BAD_REQUEST => message_only(|message| Refusal::BadRequest { message }),
            wire::NOT_YOURS => message_only(|message| Refusal::NotYours { message }),
            wire::REVOKED_FULL => message_only(|message| Refusal::RevokedFull { message }),
            wire::NOT_AUTHORIZED => {
                absent(&[
                    ("message", message.is_some()),
                    ("retry_after_ms", retry.is_some()),
                ])?;
                Ok(Refusal::NotAuthorized)
            }
            wire::RATE_LIMITED => {
                absent(&[("message", message.is_some())])?;
                Ok(Refusal::RateLimited {
                    retry_after_ms: need(retry, "retry_after_ms")?,
                })
            }
            wire::LEDGER_FULL => Ok(Refusal::LedgerFull {
                message: need(message, "message")?,
                retry_after_ms: need(retry, "retry_after_ms")?,
            }),
            _ => Err(ReplyError::UnknownCode(code)),
        }
    }
}

/// Why a line could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The line, newline included, would exceed `limit` bytes.
    #[error("the encoded line would exceed {limit} bytes")]
    TooLong {
        /// The bound it would exceed.
        limit: usize,
    },
}

/// `value` as one JSON line in a zeroizing buffer of `limit` bytes,
/// allocated once and never grown (written through a `&mut [u8]`).
fn encode_line(value: &impl Serialize, limit: usize) -> Result<Zeroizing<Vec<u8>>, EncodeError> {
    use std::io::Write;
    let mut buf = Zeroizing::new(vec![0u8; limit]);
    let mut rest: &mut [u8] = &mut buf[..];
    serde_json::to_writer(&mut rest, value).map_err(|_| EncodeError::TooLong { limit })?;
    rest.write_all(b"\n")
        .map_err(|_| EncodeError::TooLong { limit })?;
    let len = limit - rest.len();
    // Shortening keeps the allocation (and Zeroizing wipes all of it).
    buf.truncate(len);
    Ok(buf)
}

#[cfg(test)]
mod tests;
