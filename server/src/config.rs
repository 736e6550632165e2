//! Configuration: the TOML file, the command-line overrides, and the one
//! resolved [`Config`] the rest of the server sees.
//!
//! Parse, don't validate: every value becomes a type here (socket address,
//! backend, origins, durations) and every refusal names the file and key.
//! Unknown keys are errors, not ignored. Precedence: flag > file > default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

/// Default TLS gateway address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8933";
/// Default WebSocket path.
pub const DEFAULT_PATH: &str = "/ws";
/// Default token header.
pub const DEFAULT_TOKEN_HEADER: &str = "X-Screengate-Token";
/// Default token life.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// Default (and most common) largest WebSocket message, in bytes.
pub const DEFAULT_MAX_MESSAGE: usize = 4 * 1024 * 1024;
/// Largest configurable message size: a display message is cards and
/// images, not video; 64 MiB is far beyond any legitimate one.
pub const MAX_MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// Default bound on authenticated sessions at once.
pub const DEFAULT_MAX_SESSIONS: usize = 8;

/// Why configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read config: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file may have been written by someone other than root (started
    /// as root) or the service user: nothing in it is acted on.
    #[error("{path}: {what}; refusing to act on it; fix: {fix}")]
    Untrusted {
        /// The config file or one of its directories.
        path: PathBuf,
        /// Why it is not trusted.
        what: String,
        /// The fix.
        fix: String,
    },
    /// The file is not valid TOML for our schema (includes unknown keys).
    #[error("{path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's message (names the key and line).
        message: String,
    },
    /// A value is well-formed TOML but not acceptable.
    #[error("{origin}: `{key}`: {message}")]
    Invalid {
        /// Where the value came from: the file path or "command line".
        origin: String,
        /// The key or flag.
        key: &'static str,
        /// What is wrong and what is accepted.
        message: String,
    },
}

impl crate::exit::ExitStatus for ConfigError {
    fn exit_kind(&self) -> crate::exit::ExitKind {
        use crate::exit::ExitKind;
        match self {
            Self::Read { source, .. } => match source.kind() {
                std::io::ErrorKind::PermissionDenied => ExitKind::Permission,
                _ => ExitKind::Config,
            },
            // may have been written by someone else: a wrong owner or mode
            Self::Untrusted { .. } => ExitKind::Permission,
            Self::Parse { .. } | Self::Invalid { .. } => ExitKind::Config,
        }
    }
}

#[cfg(test)]
mod exit_tests {
    use super::ConfigError as E;
    use crate::exit::ExitStatus as _;

    #[test]
    fn exit_codes_by_variant() {
        let read = |k| E::Read {
            path: "/etc/screengate.toml".into(),
            source: std::io::Error::from(k),
        };
        assert_eq!(read(std::io::ErrorKind::NotFound).exit_code(), 64);
        assert_eq!(read(std::io::ErrorKind::PermissionDenied).exit_code(), 77);
        let untrusted = E::Untrusted {
            path: "/etc/screengate.toml".into(),
            what: "owned by uid 1000".into(),
            fix: "chown root".into(),
        };
        assert_eq!(untrusted.exit_code(), 77);
        let parse = E::Parse {
            path: "/etc/screengate.toml".into(),
            message: "unknown field".into(),
        };
        assert_eq!(parse.exit_code(), 64);
        let invalid = E::Invalid {
            origin: "command line".into(),
            key: "listen",
            message: "not loopback".into(),
        };
        assert_eq!(invalid.exit_code(), 64);
    }
}

/// A value refused while parsing, with the key it was given for; in a
/// file it reaches the reader through the TOML error (file, line, key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadValue {
    /// The key.
    pub key: &'static str,
    /// What is wrong and what is accepted.
    pub message: String,
}

impl std::fmt::Display for BadValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}`: {}", self.key, self.message)
    }
}

/// The gateway's listen address: an `IP:PORT` on loopback (127.0.0.0/8 or
/// ::1), parsed and checked once, from the file or `--listen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ListenAddr(SocketAddr);

impl ListenAddr {
    /// `127.0.0.1:8933` ([`DEFAULT_LISTEN`]).
    pub const DEFAULT: Self = Self(SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::LOCALHOST,
        8933,
    )));

    /// The address.
    #[must_use]
    pub const fn get(self) -> SocketAddr {
        self.0
    }
}

impl TryFrom<String> for ListenAddr {
    type Error = BadValue;

    fn try_from(text: String) -> Result<Self, BadValue> {
        let bad = |message| BadValue {
            key: "listen",
            message,
        };
        let addr: SocketAddr = text
            .parse()
            .map_err(|_| bad(format!("`{text}` is not an IP:PORT address")))?;
        if !addr.ip().is_loopback() {
            return Err(bad(format!(
                "`{addr}` is not a loopback address; screengate only listens on 127.0.0.0/8 or ::1"
            )));
        }
        Ok(Self(addr))
    }
}

/// A token lifetime: humantime text (`"30s"`), more than zero and at most
/// [`screengate_token::MAX_TTL`], from the file or `--token-ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Ttl(Duration);

impl Ttl {
    /// The lifetime.
    #[must_use]
    pub const fn get(self) -> Duration {
        self.0
    }
}

impl TryFrom<String> for Ttl {
    type Error = BadValue;

    fn try_from(text: String) -> Result<Self, BadValue> {
        let bad = |message| BadValue {
            key: "ttl",
            message,
        };
        let ttl = humantime::parse_duration(&text)
            .map_err(|e| bad(format!("`{text}` is not a duration ({e}); e.g. \"30s\"")))?;
        if ttl.is_zero() || ttl > screengate_token::MAX_TTL {
            return Err(bad(format!(
                "{} is outside (0, {}]: a token is for a handshake that follows within seconds",
                humantime::format_duration(ttl),
                humantime::format_duration(screengate_token::MAX_TTL)
            )));
        }
        Ok(Self(ttl))
    }
}

/// The config file, exactly as written. Every table refuses unknown keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// State directory (device identity).
    pub state_dir: Option<PathBuf>,
    /// Service user to drop to when started as root.
    pub user: Option<String>,
    /// Log level: error, warn, info, debug or trace (`RUST_LOG` wins).
    pub log_level: Option<String>,
    /// `[gateway]`.
    #[serde(default)]
    pub gateway: GatewaySection,
    /// `[tokens]`.
    #[serde(default)]
    pub tokens: TokensSection,
    /// `[control]`.
    #[serde(default)]
    pub control: ControlSection,
    /// `[native]`.
    #[serde(default)]
    pub native: NativeSection,
    /// `[backend_tls]`: required for a `wss://` backend, refused otherwise.
    pub backend_tls: Option<BackendTlsSection>,
}

/// `[backend_tls]`: how screengate authenticates the SDK's TLS server and
/// itself to it (docs/sdk-integration.md).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendTlsSection {
    /// PEM trust anchors for the SDK's server certificate.
    pub ca: Option<PathBuf>,
    /// PEM chain presented to the SDK.
    pub client_cert: Option<PathBuf>,
    /// Its key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC), PEM.
    pub client_key: Option<PathBuf>,
    /// Name checked in the SDK's certificate; default: the URL's host.
    pub server_name: Option<String>,
    /// base64 sha256 of the SDK's SubjectPublicKeyInfo, instead of `ca`.
    pub spki_pin: Option<String>,
}

/// `[gateway]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// TLS listen address (loopback only).
    pub listen: Option<ListenAddr>,
    /// WebSocket path.
    pub path: Option<String>,
    /// Exact allowed `Origin` values.
    pub allowed_origins: Option<Vec<String>>,
    /// `demo`, `unix:PATH`, `ws://HOST:PORT/PATH` or `wss://HOST:PORT/PATH`.
    pub backend: Option<String>,
    /// Uid that must own the backend's socket.
    pub backend_uid: Option<u32>,
    /// `"refuse"` (default) or `"replace_oldest"`.
    pub when_full: Option<String>,
    /// Directory served at `/` instead of the built-in demo page.
    pub web_root: Option<PathBuf>,
    /// Largest WebSocket message in bytes.
    pub max_message_size: Option<usize>,
    /// Most authenticated sessions at once.
    pub max_sessions: Option<usize>,
    /// `"none"` (default) or `"pinned"`: require the device's client
    /// certificate (exact SPKI) on the TLS listener.
    pub client_auth: Option<String>,
    /// Tokens on the TLS listener; may only be `false` with
    /// `client_auth = "pinned"` (see docs/native-clients.md for when that is sound).
    pub require_token: Option<bool>,
    /// Uids whose loopback connections may upgrade (the owner of the
    /// client socket, from the kernel); default: the uids allowed to mint.
    pub allowed_peer_uids: Option<Vec<u32>>,
}

/// `[native]`: the Unix-socket listener for native display clients.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NativeSection {
    /// Socket path; no native listener when absent.
    pub socket: Option<PathBuf>,
    /// Uids allowed to connect (SO_PEERCRED).
    pub allowed_uids: Option<Vec<u32>>,
    /// Group that may connect (mode 0660 instead of 0600).
    pub group: Option<String>,
    /// `"off"`, `"server"` or `"mutual"`.
    pub tls: Option<String>,
    /// Token header required; default true unless `tls = "mutual"`.
    pub require_token: Option<bool>,
}

/// TLS on the native socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeTls {
    /// Plain WebSocket over the socket (Unix permissions only).
    Off,
    /// TLS with the device server certificate: strace sees ciphertext.
    Server,
    /// TLS with the device client certificate required, by exact SPKI pin.
    Mutual,
}

impl std::str::FromStr for NativeTls {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(NativeTls::Off),
            "server" => Ok(NativeTls::Server),
            "mutual" => Ok(NativeTls::Mutual),
            other => Err(format!("`{other}` is not off, server or mutual")),
        }
    }
}

/// How the native socket authenticates a client: `[native] tls` and
/// `require_token` as one value, so "no token without mutual TLS" cannot
/// be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeAuth {
    /// Plain WebSocket (Unix permissions) and a token.
    PlainToken,
    /// TLS with the device server certificate, and a token.
    TlsToken,
    /// Mutual TLS (the pinned client certificate) and a token.
    MutualTlsToken,
    /// Mutual TLS alone (`require_token = false`).
    MutualTls,
}

impl NativeAuth {
    /// The TLS mode.
    #[must_use]
    pub const fn tls(self) -> NativeTls {
        match self {
            Self::PlainToken => NativeTls::Off,
            Self::TlsToken => NativeTls::Server,
            Self::MutualTlsToken | Self::MutualTls => NativeTls::Mutual,
        }
    }

    /// Whether the token header is required.
    #[must_use]
    pub const fn token(self) -> bool {
        !matches!(self, Self::MutualTls)
    }

    /// The pair as configured, or `None` for tokens off without mutual TLS.
    #[must_use]
    pub const fn new(tls: NativeTls, token: bool) -> Option<Self> {
        match (tls, token) {
            (NativeTls::Off, true) => Some(Self::PlainToken),
            (NativeTls::Server, true) => Some(Self::TlsToken),
            (NativeTls::Mutual, true) => Some(Self::MutualTlsToken),
            (NativeTls::Mutual, false) => Some(Self::MutualTls),
            (NativeTls::Off | NativeTls::Server, false) => None,
        }
    }
}

/// How the TLS listener authenticates a display: `[gateway] client_auth`
/// and `require_token` as one value, so a listener with neither cannot be
/// built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayAuth {
    /// A token; no client certificate (the default).
    Token,
    /// The pinned device client certificate and a token.
    PinnedCertAndToken,
    /// The pinned device client certificate alone (`require_token = false`).
    PinnedCert,
}

impl GatewayAuth {
    /// Whether the pinned client certificate is required.
    #[must_use]
    pub const fn client_cert(self) -> bool {
        !matches!(self, Self::Token)
    }

    /// Whether the token header is required.
    #[must_use]
    pub const fn token(self) -> bool {
        !matches!(self, Self::PinnedCert)
    }

    /// The pair as configured, or `None` for neither.
    #[must_use]
    pub const fn new(client_cert: bool, token: bool) -> Option<Self> {
        match (client_cert, token) {
            (false, true) => Some(Self::Token),
            (true, true) => Some(Self::PinnedCertAndToken),
            (true, false) => Some(Self::PinnedCert),
            (false, false) => None,
        }
    }
}

/// The resolved native listener.
#[derive(Debug, Clone)]
pub struct NativeConfig {
    /// Socket path.
    pub socket: PathBuf,
    /// Allowed uids; `None`: the server's own.
    pub allowed_uids: Option<Vec<u32>>,
    /// Socket group.
    pub group: Option<String>,
    /// TLS mode and whether a token is required.
    pub auth: NativeAuth,
}

/// `[tokens]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensSection {
    /// Token life, humantime ("30s").
    pub ttl: Option<Ttl>,
    /// Header the token travels in.
    pub header: Option<String>,
}

/// `[control]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSection {
    /// Control socket path.
    pub socket: Option<PathBuf>,
    /// Uids allowed to mint.
    pub allowed_uids: Option<Vec<u32>>,
    /// Group that may connect to the socket (mode 0660 instead of 0600).
    pub group: Option<String>,
    /// Mints a uid may make at once (the bucket size).
    pub mint_burst: Option<u32>,
    /// Mints per second a uid's bucket refills by.
    pub mint_rate_per_sec: Option<u32>,
}

/// Command-line values that override the file (`screengate serve`'s
/// flags: `clap` reads them straight into this).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// State directory (device identity); overrides `state_dir`.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Gateway listen address (loopback); overrides `[gateway] listen`.
    #[arg(long)]
    pub listen: Option<String>,
    /// Control socket path; overrides `[control] socket`.
    #[arg(long)]
    pub control: Option<PathBuf>,
    /// Backend: demo, unix:PATH, ws://127.0.0.1:PORT/PATH or wss://...
    #[arg(long)]
    pub backend: Option<String>,
    /// Token lifetime (e.g. 30s); overrides `[tokens] ttl`.
    #[arg(long)]
    pub token_ttl: Option<String>,
    /// Uid allowed to mint (repeatable; replaces the file's list when given).
    #[arg(long = "allow-uid", value_name = "ALLOW_UID")]
    pub allow_uids: Vec<u32>,
    /// Allowed page origin (repeatable; replaces the file's list when given).
    #[arg(long = "origin", value_name = "ORIGIN")]
    pub origins: Vec<String>,
    /// Started as root: prepare directories for this user and drop to it for good.
    #[arg(long)]
    pub user: Option<String>,
    /// Unix socket for native display clients.
    #[arg(long)]
    pub native_socket: Option<PathBuf>,
    /// TLS on the native socket: off, server or mutual.
    #[arg(long)]
    pub native_tls: Option<String>,
    /// Uid allowed on the native socket (repeatable; replaces the file's list when given).
    #[arg(long = "native-allow-uid", value_name = "NATIVE_ALLOW_UID")]
    pub native_allow_uids: Vec<u32>,
    /// Require a token on the native socket (default: unless --native-tls mutual).
    #[arg(long)]
    pub native_require_token: Option<bool>,
}

/// Where sessions are proxied to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendSpec {
    /// The built-in echo + status backend.
    Demo,
    /// A WebSocket server on a Unix socket (request path `/`).
    Unix(PathBuf),
    /// A WebSocket server on loopback.
    Ws {
        /// `host:port` for the TCP connection and Host header.
        authority: String,
        /// Resolved loopback socket address.
        addr: SocketAddr,
        /// Request path.
        path: String,
    },
    /// A TLS WebSocket server on loopback (the SDK's release build);
    /// `[backend_tls]` says how to authenticate it.
    Wss {
        /// `host:port` for the TCP connection and Host header.
        authority: String,
        /// The URL's host (the default TLS server name).
        host: String,
        /// Resolved loopback socket address.
        addr: SocketAddr,
        /// Request path.
        path: String,
    },
}

/// What to do when `max_sessions` is reached or the backend answers 409.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// 503, the token kept.
    Refuse,
    /// Close the oldest session, then connect again.
    ReplaceOldest,
}

/// How the SDK's server certificate is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendTrust {
    /// CA-verified (dates checked), PEM file.
    Ca(PathBuf),
    /// The SDK's key pinned (dates ignored).
    Pin(screengate_identity::Pin),
}

/// The resolved `[backend_tls]`. Only paths: the files are read, and their
/// protection checked, when the server binds (and by `check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendTlsConfig {
    /// Trust for the SDK's certificate.
    pub trust: BackendTrust,
    /// Client chain and key presented to the SDK, if any.
    pub client: Option<(PathBuf, PathBuf)>,
    /// The TLS server name (SNI and certificate name check).
    pub server_name: String,
}

impl std::fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendSpec::Demo => f.write_str("demo"),
            BackendSpec::Unix(p) => write!(f, "unix:{}", p.display()),
            BackendSpec::Ws {
                authority, path, ..
            } => write!(f, "ws://{authority}{path}"),
            BackendSpec::Wss {
                authority, path, ..
            } => write!(f, "wss://{authority}{path}"),
        }
    }
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the config came from (for messages), if a file.
    pub file: Option<PathBuf>,
    /// State directory.
    pub state_dir: PathBuf,
    /// `$CREDENTIALS_DIRECTORY`, if set.
    pub credentials_dir: Option<PathBuf>,
    /// Service user (root start only).
    pub user: Option<String>,
    /// Gateway listen address; port 0 picks one (tests).
    pub listen: SocketAddr,
    /// WebSocket path.
    pub path: String,
    /// Allowed origins, parsed; `None` means "`https://localhost:<bound port>`".
    pub allowed_origins: Option<Vec<Origin>>,
    /// Backend.
    pub backend: BackendSpec,
    /// `[backend_tls]`, resolved (present exactly for `wss://`).
    pub backend_tls: Option<BackendTlsConfig>,
    /// Uid that must own the backend's socket.
    pub backend_uid: Option<u32>,
    /// When every slot is taken or the backend answers 409.
    pub when_full: WhenFull,
    /// Web root, or the built-in demo page.
    pub web_root: Option<PathBuf>,
    /// Largest WebSocket message.
    pub max_message_size: usize,
    /// Most authenticated sessions at once.
    pub max_sessions: usize,
    /// Token life.
    pub token_ttl: Duration,
    /// Token header name.
    pub token_header: HeaderName,
    /// Control socket path.
    pub control_socket: PathBuf,
    /// Uids allowed to mint; `None` means "the server's own uid".
    pub allowed_uids: Option<Vec<u32>>,
    /// Control socket group.
    pub control_group: Option<String>,
    /// Uids whose connections may upgrade on the TLS listener; `None`
    /// means "the uids allowed to mint".
    pub allowed_peer_uids: Option<Vec<u32>>,
    /// What the TLS listener requires: a token, the pinned client
    /// certificate, or both.
    pub gateway_auth: GatewayAuth,
    /// The native listener, if configured.
    pub native: Option<NativeConfig>,
    /// `log_level`, if set.
    pub log_level: Option<tracing::level_filters::LevelFilter>,
    /// Mint rate limit per uid.
    pub mint_rate: MintRate,
}

/// The control socket's mint rate limit, per uid: a token bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MintRate {
    /// Bucket size: mints at once.
    pub burst: u32,
    /// Refill per second.
    pub per_sec: u32,
}

impl Default for MintRate {
    fn default() -> Self {
        MintRate {
            burst: crate::limits::MINT_BURST,
            per_sec: crate::limits::MINT_RATE_PER_SEC,
        }
    }
}

/// Most mints per second or at once that `[control]` may allow.
pub const MAX_MINT_RATE: u32 = 1000;

/// The default state dir: `$XDG_STATE_HOME/screengate`, else
/// `~/.local/state/screengate`.
pub fn default_state_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("screengate");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"));
    home.join(".local/state/screengate")
}

/// The default state dir of the service user `name`, from its passwd
/// entry (never from the environment, which is root's when started as
/// root): `<home>/.local/state/screengate`. The home must exist: a system
/// user's placeholder home (`/nonexistent`) is refused, not created.
pub fn default_state_dir_of(name: &str) -> Result<PathBuf, String> {
    let user = nix::unistd::User::from_name(name)
        .map_err(|e| format!("cannot look up user `{name}`: {e}"))?
        .ok_or_else(|| format!("user `{name}` does not exist"))?;
    if !user.dir.is_dir() {
        return Err(format!(
            "no state_dir given and the home of `{name}`, {}, does not exist; set state_dir (e.g. /var/lib/screengate) or --state-dir",
            user.dir.display()
        ));
    }
    Ok(user.dir.join(".local/state/screengate"))
}

/// Largest config file read; a bigger one is refused, not buffered.
pub const MAX_CONFIG_FILE: u64 = 1024 * 1024;

/// Who may have written the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Started as root: the file and every directory above it are root's
    /// and not writable by group or others (a sticky, root-owned directory
    /// such as `/tmp` above the file's own is accepted: others cannot
    /// rename or remove what root put there).
    RootOnly,
    /// Not root: owned by this uid or root, not writable by group or others.
    OwnerOrRoot(u32),
}

impl Trust {
    /// The rule for this process: [`Trust::RootOnly`] when root.
    pub fn for_this_process() -> Self {
        let euid = nix::unistd::geteuid();
        if euid.is_root() {
            Trust::RootOnly
        } else {
            Trust::OwnerOrRoot(euid.as_raw())
        }
    }
}

/// Reads and parses a config file under `trust`: opened without following
/// a final symbolic link, checked on the open file (`fstat`, so what is
/// checked is what is read), then parsed. Nothing of an untrusted file is
/// parsed.
pub fn read_file(path: &Path, trust: Trust) -> Result<FileConfig, ConfigError> {
    use std::io::Read as _;
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let untrusted = |p: &Path, what: String, fix: String| ConfigError::Untrusted {
        path: p.to_owned(),
        what,
        fix,
    };
    let read_err = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let p = path.display();
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(untrusted(
                path,
                "is a symbolic link".into(),
                format!("point --config at the file itself: {}", p),
            ));
        }
        Err(e) => return Err(read_err(e)),
    };
    let m = f.metadata().map_err(read_err)?;
    if !m.is_file() {
        return Err(untrusted(
            path,
            "is not a regular file".into(),
            "point --config at a regular file".into(),
        ));
    }
    let owner_ok = match trust {
        Trust::RootOnly => m.uid() == 0,
        Trust::OwnerOrRoot(uid) => m.uid() == 0 || m.uid() == uid,
    };
    if !owner_ok {
        let who = match trust {
            Trust::RootOnly => "root (started as root, only root may write it)".to_owned(),
            Trust::OwnerOrRoot(uid) => format!("root or uid {uid}"),
        };
        return Err(untrusted(
            path,
            format!("is owned by uid {}, not {who}", m.uid()),
            format!("chown root:root {p} && chmod go-w {p}"),
        ));
    }
    let mode = m.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(untrusted(
            path,
            format!("has mode {mode:04o}: writable by group or others"),
            format!("chmod go-w {p}"),
        ));
    }
    if trust == Trust::RootOnly {
        check_root_dirs(path)?;
    }
    if m.len() > MAX_CONFIG_FILE {
        return Err(ConfigError::Parse {
            path: path.to_owned(),
            message: format!("is {} bytes, more than {MAX_CONFIG_FILE}", m.len()),
        });
    }
    let mut text = String::new();
    f.take(MAX_CONFIG_FILE)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    parse_file(path, &text)
}

/// Every directory above `file` (symbolic links resolved) is root's and
/// not writable by group or others; a sticky root-owned directory is
/// accepted (others can add names there but not replace root's).
fn check_root_dirs(file: &Path) -> Result<(), ConfigError> {
    let parent = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = std::fs::canonicalize(parent).map_err(|source| ConfigError::Read {
        path: parent.to_owned(),
        source,
    })?;
    match crate::privilege::unsafe_ancestor(&dir, true) {
        None => Ok(()),
        Some((d, what)) => Err(ConfigError::Untrusted {
            fix: format!(
                "keep the config in a directory only root can write (e.g. /etc/screengate): chown root {0} && chmod go-w {0}",
                d.display()
            ),
            path: d,
            what: format!("directory of the config {}: {what}", file.display()),
        }),
    }
}

/// Parses config text (named `path` in messages).
pub fn parse_file(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string().trim_end().replace('\n', " | "),
    })
}

impl Config {
    /// Resolves file + overrides + defaults into a config, refusing anything
    /// unsafe or malformed.
    pub fn resolve(
        file_path: Option<&Path>,
        file: FileConfig,
        o: Overrides,
    ) -> Result<Self, ConfigError> {
        let src = Source::of(file_path);
        let Overrides {
            state_dir,
            listen,
            control,
            backend,
            token_ttl,
            allow_uids,
            origins,
            user,
            native_socket,
            native_tls,
            native_allow_uids,
            native_require_token,
        } = o;

        let user = user.or(file.user);
        let state_dir = match (state_dir.or(file.state_dir), &user) {
            (Some(d), _) => d,
            (None, None) => default_state_dir(),
            (None, Some(name)) => {
                default_state_dir_of(name).map_err(|m| src.invalid(true, "state_dir", m))?
            }
        };
        let gateway = GatewayParts::resolve(
            &src,
            GatewayFlags {
                listen,
                origins,
                backend,
            },
            file.gateway,
            file.backend_tls,
        )?;
        let (token_ttl, token_header) = resolve_tokens(&src, token_ttl, file.tokens)?;
        let control = ControlParts::resolve(&src, control, allow_uids, file.control, &state_dir)?;
        let log_level = resolve_log_level(&src, file.log_level.as_deref())?;
        let native = resolve_native(
            &src,
            NativeFlags {
                socket: native_socket,
                tls: native_tls,
                allow_uids: native_allow_uids,
                require_token: native_require_token,
            },
            file.native,
            &control.socket,
        )?;

        Ok(Config {
            gateway_auth: gateway.auth,
            native,
            file: file_path.map(Path::to_owned),
            state_dir,
            credentials_dir: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
            user,
            allowed_peer_uids: gateway.allowed_peer_uids,
            listen: gateway.listen,
            path: gateway.path,
            allowed_origins: gateway.allowed_origins,
            backend: gateway.backend,
            backend_tls: gateway.backend_tls,
            backend_uid: gateway.backend_uid,
            when_full: gateway.when_full,
            web_root: gateway.web_root,
            max_message_size: gateway.max_message_size,
            max_sessions: gateway.max_sessions,
            token_ttl,
            token_header,
            control_socket: control.socket,
            allowed_uids: control.allowed_uids,
            control_group: control.group,
            log_level,
            mint_rate: control.mint_rate,
        })
    }
}

/// Where a value came from, for errors: the file's path, or "command line"
/// for a flag (and for everything when there is no file).
struct Source {
    file: String,
}

impl Source {
    fn of(path: Option<&Path>) -> Self {
        Source {
            file: path.map(|p| p.display().to_string()).unwrap_or_default(),
        }
    }

    /// `key` from a flag (`from_flag`) or the file is invalid: `message`.
    fn invalid(&self, from_flag: bool, key: &'static str, message: String) -> ConfigError {
        let origin = if from_flag || self.file.is_empty() {
            "command line".to_owned()
        } else {
            self.file.clone()
        };
        ConfigError::Invalid {
            origin,
            key,
            message,
        }
    }
}

/// `serve`'s flags that override `[gateway]`.
struct GatewayFlags {
    listen: Option<String>,
    origins: Vec<String>,
    backend: Option<String>,
}

/// `[gateway]` (and `[backend_tls]`, which only a backend uses), resolved.
struct GatewayParts {
    listen: SocketAddr,
    path: String,
    allowed_origins: Option<Vec<Origin>>,
    backend: BackendSpec,
    backend_tls: Option<BackendTlsConfig>,
    backend_uid: Option<u32>,
    when_full: WhenFull,
    web_root: Option<PathBuf>,
    max_message_size: usize,
    max_sessions: usize,
    allowed_peer_uids: Option<Vec<u32>>,
    auth: GatewayAuth,
}

impl GatewayParts {
    fn resolve(
        src: &Source,
        flags: GatewayFlags,
        gw: GatewaySection,
        tls: Option<BackendTlsSection>,
    ) -> Result<Self, ConfigError> {
        let listen = match flags.listen {
            Some(text) => {
                ListenAddr::try_from(text).map_err(|e| src.invalid(true, e.key, e.message))?
            }
            None => gw.listen.unwrap_or(ListenAddr::DEFAULT),
        }
        .get();

        let path = gw.path.unwrap_or_else(|| DEFAULT_PATH.into());
        if !path.starts_with('/') || path == "/" || path.contains(['?', '#', ' ']) {
            return Err(src.invalid(
                false,
                "path",
                format!(
                    "`{path}` must be an absolute path other than `/`, without query or fragment"
                ),
            ));
        }

        let origins_flag = !flags.origins.is_empty();
        let origin_texts = if origins_flag {
            Some(flags.origins)
        } else {
            gw.allowed_origins
        };
        let allowed_origins = match origin_texts {
            None => None,
            Some(list) if list.is_empty() => {
                return Err(src.invalid(
                    origins_flag,
                    "allowed_origins",
                    "must not be empty".into(),
                ));
            }
            Some(list) => Some(
                list.into_iter()
                    .map(Origin::try_from)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|m| src.invalid(origins_flag, "allowed_origins", m))?,
            ),
        };

        let backend_flag = flags.backend.is_some();
        let backend_text = flags
            .backend
            .or(gw.backend)
            .unwrap_or_else(|| "demo".into());
        let backend =
            parse_backend(&backend_text).map_err(|m| src.invalid(backend_flag, "backend", m))?;
        let backend_tls = resolve_backend_tls(&backend, tls)
            .map_err(|(key, m)| src.invalid(backend_flag && key == "backend", key, m))?;
        let backend_uid = gw.backend_uid;
        if backend_uid.is_some() && backend == BackendSpec::Demo {
            return Err(src.invalid(
                false,
                "backend_uid",
                "the demo backend runs inside screengate; backend_uid is for unix:, ws:// and wss:// backends".into(),
            ));
        }
        let when_full = match gw.when_full.as_deref() {
            None | Some("refuse") => WhenFull::Refuse,
            Some("replace_oldest") => WhenFull::ReplaceOldest,
            Some(other) => {
                return Err(src.invalid(
                    false,
                    "when_full",
                    format!("`{other}` is not refuse or replace_oldest"),
                ));
            }
        };

        let max_message_size = gw.max_message_size.unwrap_or(DEFAULT_MAX_MESSAGE);
        if !(1024..=MAX_MAX_MESSAGE).contains(&max_message_size) {
            return Err(src.invalid(
                false,
                "max_message_size",
                format!("{max_message_size} is outside 1024..={MAX_MAX_MESSAGE} bytes"),
            ));
        }
        let max_sessions = gw.max_sessions.unwrap_or(DEFAULT_MAX_SESSIONS);
        if !(1..=1024).contains(&max_sessions) {
            return Err(src.invalid(
                false,
                "max_sessions",
                format!("{max_sessions} is outside 1..=1024"),
            ));
        }

        let allowed_peer_uids = gw.allowed_peer_uids;
        if allowed_peer_uids.as_ref().is_some_and(|u| u.is_empty()) {
            return Err(src.invalid(
                false,
                "allowed_peer_uids",
                "must not be empty (no display could connect); leave it out to allow the uids that may mint".into(),
            ));
        }

        let client_auth = match gw.client_auth.as_deref() {
            None | Some("none") => false,
            Some("pinned") => true,
            Some(other) => {
                return Err(src.invalid(
                    false,
                    "client_auth",
                    format!("`{other}` is not none or pinned"),
                ));
            }
        };
        let require_token = gw.require_token.unwrap_or(true);
        let auth = GatewayAuth::new(client_auth, require_token).ok_or_else(|| {
            src.invalid(
                false,
                "require_token",
                "tokens can only be turned off together with client_auth = \"pinned\"".into(),
            )
        })?;

        Ok(GatewayParts {
            listen,
            path,
            allowed_origins,
            backend,
            backend_tls,
            backend_uid,
            when_full,
            web_root: gw.web_root,
            max_message_size,
            max_sessions,
            allowed_peer_uids,
            auth,
        })
    }
}

/// `[tokens]`: the TTL (flag first) and the header name.
fn resolve_tokens(
    src: &Source,
    ttl_flag: Option<String>,
    tokens: TokensSection,
) -> Result<(Duration, HeaderName), ConfigError> {
    let token_ttl = match ttl_flag {
        Some(text) => Ttl::try_from(text)
            .map_err(|e| src.invalid(true, e.key, e.message))?
            .get(),
        None => tokens.ttl.map_or(DEFAULT_TTL, Ttl::get),
    };
    let header_text = tokens.header.unwrap_or_else(|| DEFAULT_TOKEN_HEADER.into());
    let token_header =
        parse_token_header(&header_text).map_err(|m| src.invalid(false, "header", m))?;
    Ok((token_ttl, token_header))
}

/// `[control]`, resolved.
struct ControlParts {
    socket: PathBuf,
    allowed_uids: Option<Vec<u32>>,
    group: Option<String>,
    mint_rate: MintRate,
}

impl ControlParts {
    fn resolve(
        src: &Source,
        socket_flag: Option<PathBuf>,
        uids_flag: Vec<u32>,
        control: ControlSection,
        state_dir: &Path,
    ) -> Result<Self, ConfigError> {
        let socket = socket_flag
            .or(control.socket)
            .unwrap_or_else(|| state_dir.join("control.sock"));
        if socket.as_os_str().len() > 100 {
            return Err(src.invalid(
                false,
                "socket",
                format!(
                    "`{}` is longer than a Unix socket path may be",
                    socket.display()
                ),
            ));
        }
        let from_flag = !uids_flag.is_empty();
        let allowed_uids = if from_flag {
            Some(uids_flag)
        } else {
            control.allowed_uids
        };
        if allowed_uids.as_ref().is_some_and(|u| u.is_empty()) {
            return Err(src.invalid(
                from_flag,
                "allowed_uids",
                "must not be empty (nobody could mint)".into(),
            ));
        }
        if let Some(g) = &control.group
            && g.is_empty()
        {
            return Err(src.invalid(false, "group", "must not be empty".into()));
        }
        let rate = |key: &'static str, v: Option<u32>, default: u32| match v {
            None => Ok(default),
            Some(n) if (1..=MAX_MINT_RATE).contains(&n) => Ok(n),
            Some(n) => Err(src.invalid(
                false,
                key,
                format!("{n} is not between 1 and {MAX_MINT_RATE}"),
            )),
        };
        let defaults = MintRate::default();
        let mint_rate = MintRate {
            burst: rate("mint_burst", control.mint_burst, defaults.burst)?,
            per_sec: rate(
                "mint_rate_per_sec",
                control.mint_rate_per_sec,
                defaults.per_sec,
            )?,
        };
        Ok(ControlParts {
            socket,
            allowed_uids,
            group: control.group,
            mint_rate,
        })
    }
}

/// `log_level`: one of the five names, or absent.
fn resolve_log_level(
    src: &Source,
    level: Option<&str>,
) -> Result<Option<tracing::level_filters::LevelFilter>, ConfigError> {
    match level {
        None => Ok(None),
        Some(l @ ("error" | "warn" | "info" | "debug" | "trace")) => Ok(l.parse().ok()),
        Some(other) => Err(src.invalid(
            false,
            "log_level",
            format!("`{other}` is not error, warn, info, debug or trace"),
        )),
    }
}

/// `serve`'s flags that override `[native]`.
struct NativeFlags {
    socket: Option<PathBuf>,
    tls: Option<String>,
    allow_uids: Vec<u32>,
    require_token: Option<bool>,
}

/// `[native]`: `None` without a socket; the socket must differ from the
/// control socket.
fn resolve_native(
    src: &Source,
    flags: NativeFlags,
    native: NativeSection,
    control_socket: &Path,
) -> Result<Option<NativeConfig>, ConfigError> {
    let Some(socket) = flags.socket.or(native.socket) else {
        return Ok(None);
    };
    let tls_flag = flags.tls.is_some();
    let tls: NativeTls = flags
        .tls
        .or(native.tls)
        .unwrap_or_else(|| "server".into())
        .parse()
        .map_err(|m| src.invalid(tls_flag, "tls", m))?;
    let uids_flag = !flags.allow_uids.is_empty();
    let allowed = if uids_flag {
        Some(flags.allow_uids)
    } else {
        native.allowed_uids
    };
    if allowed.as_ref().is_some_and(|u| u.is_empty()) {
        return Err(src.invalid(uids_flag, "allowed_uids", "must not be empty".into()));
    }
    if socket.as_os_str().len() > 100 {
        return Err(src.invalid(
            false,
            "socket",
            "path longer than a Unix socket path may be".into(),
        ));
    }
    if socket == control_socket {
        return Err(src.invalid(
            false,
            "socket",
            "the native socket must differ from the control socket".into(),
        ));
    }
    let require_token = flags
        .require_token
        .or(native.require_token)
        .unwrap_or(tls != NativeTls::Mutual);
    let auth = NativeAuth::new(tls, require_token).ok_or_else(|| {
        src.invalid(
            false,
            "require_token",
            "tokens can only be turned off with tls = \"mutual\"".into(),
        )
    })?;
    Ok(Some(NativeConfig {
        socket,
        allowed_uids: allowed,
        group: native.group,
        auth,
    }))
}

/// An allowed `Origin`, parsed: `http(s)://host[:port]` exactly as a
/// browser serialises one (the gateway compares it byte for byte, so a form
/// no browser sends could never match and is refused here instead): ASCII,
/// a host, and a port, when present, in decimal 1–65535 without leading
/// zeros. A default port is left to the operator (browsers omit it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin(String);

impl Origin {
    /// The origin as the browser sends it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Origin {
    type Error = String;

    fn try_from(origin: String) -> Result<Origin, String> {
        let bad = |why: &str| {
            Err(format!(
                "`{origin}` {why}; expected scheme://host:port, e.g. https://localhost:8933"
            ))
        };
        if origin == "null" || origin == "*" {
            return bad("proves nothing about the page");
        }
        let Some((scheme, rest)) = origin.split_once("://") else {
            return bad("has no scheme");
        };
        if scheme != "https" && scheme != "http" {
            return bad("is not http(s)");
        }
        if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) || !origin.is_ascii() {
            return bad("is not a bare origin");
        }
        let (host, port) = match rest.strip_prefix('[') {
            Some(v6) => {
                let Some((inner, after)) = v6.split_once(']') else {
                    return bad("has an unclosed `[`");
                };
                match after.strip_prefix(':') {
                    Some(p) => (inner, Some(p)),
                    None if after.is_empty() => (inner, None),
                    None => return bad("is not a bare origin"),
                }
            }
            None => match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            },
        };
        if host.is_empty() {
            return bad("has no host");
        }
        if let Some(p) = port {
            let canonical = !p.is_empty()
                && p.len() <= 5
                && p.bytes().all(|b| b.is_ascii_digit())
                && !p.starts_with('0');
            if !canonical || p.parse::<u16>().is_err() {
                return bad("has a port that is not a number from 1 to 65535");
            }
        }
        Ok(Origin(origin))
    }
}

fn parse_token_header(text: &str) -> Result<HeaderName, String> {
    let name = HeaderName::from_bytes(text.as_bytes())
        .map_err(|_| format!("`{text}` is not a valid header name"))?;
    const RESERVED: &[&str] = &[
        "host",
        "origin",
        "cookie",
        "authorization",
        "connection",
        "upgrade",
        "content-length",
        "transfer-encoding",
    ];
    if RESERVED.contains(&name.as_str()) || name.as_str().starts_with("sec-") {
        return Err(format!(
            "`{text}` is a standard header; use a private one such as X-Screengate-Token"
        ));
    }
    Ok(name)
}

/// `[backend_tls]` against the backend's scheme: required for `wss://`,
/// refused for anything else; `ca` xor `spki_pin`; the client chain and key
/// together or not at all. The error is the key at fault and the message.
fn resolve_backend_tls(
    backend: &BackendSpec,
    section: Option<BackendTlsSection>,
) -> Result<Option<BackendTlsConfig>, (&'static str, String)> {
    let host = match (backend, section.is_some()) {
        (BackendSpec::Wss { host, .. }, true) => host.clone(),
        (BackendSpec::Wss { .. }, false) => {
            return Err((
                "backend",
                "a wss:// backend needs a [backend_tls] table (ca or spki_pin; client_cert and client_key)".into(),
            ));
        }
        (BackendSpec::Ws { .. }, true) => {
            return Err((
                "backend_tls",
                "[backend_tls] is set but the backend is plain ws://; use wss:// (TLS settings are never silently ignored)".into(),
            ));
        }
        (_, true) => {
            return Err((
                "backend_tls",
                "[backend_tls] is only for a wss:// backend".into(),
            ));
        }
        (_, false) => return Ok(None),
    };
    let Some(s) = section else { return Ok(None) };
    let trust = match (s.ca, s.spki_pin) {
        (Some(ca), None) => BackendTrust::Ca(ca),
        (None, Some(pin)) => BackendTrust::Pin(screengate_identity::Pin::parse(&pin).ok_or((
            "spki_pin",
            format!("`{pin}` is not a base64 SHA-256 SPKI pin (44 characters)"),
        ))?),
        (Some(_), Some(_)) => {
            return Err(("spki_pin", "set either ca or spki_pin, not both".into()));
        }
        (None, None) => {
            return Err((
                "ca",
                "[backend_tls] needs ca (the SDK's CA file) or spki_pin".into(),
            ));
        }
    };
    let client = match (s.client_cert, s.client_key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(("client_key", "client_cert is set without client_key".into()));
        }
        (None, Some(_)) => {
            return Err((
                "client_cert",
                "client_key is set without client_cert".into(),
            ));
        }
    };
    let server_name = s.server_name.unwrap_or(host);
    if rustls::pki_types::ServerName::try_from(server_name.as_str()).is_err() {
        return Err((
            "server_name",
            format!("`{server_name}` is not a DNS name or IP address"),
        ));
    }
    Ok(Some(BackendTlsConfig {
        trust,
        client,
        server_name,
    }))
}

/// Parses `demo`, `unix:/abs/path`, `ws://loopback-host:port/path` or
/// `wss://loopback-host:port/path`.
pub fn parse_backend(text: &str) -> Result<BackendSpec, String> {
    if text == "demo" {
        return Ok(BackendSpec::Demo);
    }
    if let Some(p) = text.strip_prefix("unix:") {
        let p = PathBuf::from(p);
        if !p.is_absolute() {
            return Err(format!("`{text}`: the Unix socket path must be absolute"));
        }
        return Ok(BackendSpec::Unix(p));
    }
    let (tls, rest) = match (text.strip_prefix("ws://"), text.strip_prefix("wss://")) {
        (Some(r), _) => (false, Some(r)),
        (None, Some(r)) => (true, Some(r)),
        (None, None) => (false, None),
    };
    if let Some(rest) = rest {
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        let addr: SocketAddr = match authority.rsplit_once(':') {
            Some(("localhost", port)) => {
                let port: u16 = port.parse().map_err(|_| format!("`{text}`: bad port"))?;
                SocketAddr::from(([127, 0, 0, 1], port))
            }
            _ => authority.parse().map_err(|_| {
                format!("`{text}`: expected ws(s)://HOST:PORT/PATH with a loopback HOST")
            })?,
        };
        if !addr.ip().is_loopback() {
            return Err(format!("`{text}`: the backend must be on loopback"));
        }
        if tls {
            let host = match authority.rsplit_once(':') {
                Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']').to_owned(),
                None => authority.to_owned(),
            };
            return Ok(BackendSpec::Wss {
                authority: authority.to_owned(),
                host,
                addr,
                path: path.to_owned(),
            });
        }
        return Ok(BackendSpec::Ws {
            authority: authority.to_owned(),
            addr,
            path: path.to_owned(),
        });
    }
    Err(format!(
        "`{text}` is not a backend; expected demo, unix:PATH, ws://HOST:PORT/PATH or wss://HOST:PORT/PATH"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_peer_uids_parse_and_refuse_empty() {
        let c = resolve("", Overrides::default()).unwrap();
        assert_eq!(c.allowed_peer_uids, None);
        let c = resolve(
            "[gateway]\nallowed_peer_uids = [1000, 0]",
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.allowed_peer_uids, Some(vec![1000, 0]));
        for bad in [
            "[gateway]\nallowed_peer_uids = []",
            "[gateway]\nallowed_peer_uids = [-1]",
            "[gateway]\nallowed_peer_uids = \"1000\"",
            "[gateway]\nallowed_peer_uid = [1000]",
        ] {
            assert!(resolve(bad, Overrides::default()).is_err(), "{bad}");
        }
    }

    #[test]
    fn user_default_state_dir_is_from_passwd_not_env() {
        // root exists everywhere; its passwd home, not $HOME
        let home = nix::unistd::User::from_name("root").unwrap().unwrap().dir;
        let c = resolve(
            "user = \"root\"",
            Overrides {
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.state_dir, home.join(".local/state/screengate"));
        let e = resolve("user = \"no-such-user-sg\"", Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no-such-user-sg"), "{e}");
        // an explicit state dir wins, and needs no passwd entry
        let c = resolve(
            "user = \"no-such-user-sg\"\nstate_dir = \"/var/lib/sg\"",
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/sg"));
    }

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn read_file_refuses_untrusted_files() {
        let d = tempfile::tempdir().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let other = me.wrapping_add(1);
        let good = write(
            d.path(),
            "good.toml",
            "[gateway]\nmax_sessions = 2\n",
            0o600,
        );
        assert!(read_file(&good, Trust::OwnerOrRoot(me)).is_ok());
        let ro = write(d.path(), "ro.toml", "", 0o644);
        assert!(read_file(&ro, Trust::OwnerOrRoot(me)).is_ok());
        // group- or world-writable
        for (name, mode) in [("gw.toml", 0o620), ("ow.toml", 0o602), ("all.toml", 0o666)] {
            let p = write(d.path(), name, "", mode);
            let e = read_file(&p, Trust::OwnerOrRoot(me)).unwrap_err();
            assert!(matches!(e, ConfigError::Untrusted { .. }), "{name}: {e}");
            assert!(e.to_string().contains("chmod go-w"), "{e}");
        }
        // owned by someone else (unless we are root, who owns it anyway)
        if me != 0 {
            let e = read_file(&good, Trust::OwnerOrRoot(other)).unwrap_err();
            assert!(e.to_string().contains("owned by uid"), "{e}");
            let e = read_file(&good, Trust::RootOnly).unwrap_err();
            assert!(e.to_string().contains("root"), "{e}");
        }
        // a symbolic link, even to a good file
        let link = d.path().join("link.toml");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        let e = read_file(&link, Trust::OwnerOrRoot(me)).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        // not a regular file (a directory; a FIFO must not hang the read)
        let e = read_file(d.path(), Trust::OwnerOrRoot(me)).unwrap_err();
        assert!(e.to_string().contains("regular file"), "{e}");
        let fifo = d.path().join("fifo.toml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = read_file(&fifo, Trust::OwnerOrRoot(me)).unwrap_err();
        assert!(e.to_string().contains("regular file"), "{e}");
        // too big
        let big = write(d.path(), "big.toml", &"#".repeat(1024 * 1024 + 1), 0o600);
        assert!(read_file(&big, Trust::OwnerOrRoot(me)).is_err());
        // missing
        assert!(matches!(
            read_file(&d.path().join("none.toml"), Trust::OwnerOrRoot(me)),
            Err(ConfigError::Read { .. })
        ));
    }

    fn resolve(text: &str, o: Overrides) -> Result<Config, ConfigError> {
        let p = Path::new("/etc/screengate.toml");
        Config::resolve(Some(p), parse_file(p, text)?, o)
    }

    #[test]
    fn log_level_and_mint_rate_parse_and_refuse_what_they_are_not() {
        let c = resolve("", Overrides::default()).unwrap();
        assert_eq!(c.log_level, None);
        assert_eq!(c.mint_rate, MintRate::default());
        let c = resolve(
            "log_level = \"debug\"\n[control]\nmint_burst = 3\nmint_rate_per_sec = 1",
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            c.log_level,
            Some(tracing::level_filters::LevelFilter::DEBUG)
        );
        assert_eq!(
            c.mint_rate,
            MintRate {
                burst: 3,
                per_sec: 1
            }
        );
        for (text, key) in [
            ("log_level = \"loud\"", "log_level"),
            ("log_level = \"off\"", "log_level"),
            ("log_level = \"INFO\"", "log_level"),
            ("[control]\nmint_burst = 0", "mint_burst"),
            ("[control]\nmint_burst = 1001", "mint_burst"),
            ("[control]\nmint_rate_per_sec = 0", "mint_rate_per_sec"),
        ] {
            let e = resolve(text, Overrides::default()).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        assert!(resolve("[control]\nmint_burst = -1", Overrides::default()).is_err());
    }

    #[test]
    fn defaults() {
        let c = resolve("", Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.token_ttl, DEFAULT_TTL);
        assert_eq!(c.backend, BackendSpec::Demo);
        assert_eq!(c.token_header.as_str(), "x-screengate-token");
        assert_eq!(c.path, "/ws");
    }

    #[test]
    fn full_file_parses_and_flags_override() {
        let text = r#"
state_dir = "/var/lib/sg"
[gateway]
listen = "127.0.0.1:9000"
path = "/ipc"
allowed_origins = ["https://localhost:9000"]
backend = "unix:/run/sdk.sock"
max_message_size = 65536
[tokens]
ttl = "10s"
header = "X-Token"
[control]
socket = "/run/sg/control.sock"
allowed_uids = [1000, 1001]
group = "display"
"#;
        let c = resolve(
            text,
            Overrides {
                listen: Some("127.0.0.2:9001".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.2:9001");
        assert_eq!(c.backend, BackendSpec::Unix("/run/sdk.sock".into()));
        assert_eq!(c.token_ttl, Duration::from_secs(10));
        assert_eq!(c.allowed_uids, Some(vec![1000, 1001]));
        assert_eq!(c.control_group.as_deref(), Some("display"));
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_file() {
        for text in [
            "bogus = 1",
            "[gateway]\nlisten_addr = \"x\"",
            "[tokens]\nttl = \"1s\"\nextra = 2",
            "[nope]",
        ] {
            let e = resolve(text, Overrides::default()).unwrap_err().to_string();
            assert!(e.contains("/etc/screengate.toml"), "{e}");
        }
    }

    #[test]
    fn listen_and_ttl_in_the_file_are_refused_naming_file_and_key() {
        for (text, key, what) in [
            (
                "[gateway]\nlisten = \"0.0.0.0:8933\"",
                "`listen`",
                "not a loopback address",
            ),
            (
                "[gateway]\nlisten = \"[::]:8933\"",
                "`listen`",
                "not a loopback address",
            ),
            (
                "[gateway]\nlisten = \"localhost:8933\"",
                "`listen`",
                "not an IP:PORT",
            ),
            ("[tokens]\nttl = \"11m\"", "`ttl`", "is outside"),
            ("[tokens]\nttl = \"0s\"", "`ttl`", "is outside"),
            ("[tokens]\nttl = \"soon\"", "`ttl`", "not a duration"),
        ] {
            let e = resolve(text, Overrides::default()).unwrap_err().to_string();
            assert!(
                e.contains("/etc/screengate.toml") && e.contains(key) && e.contains(what),
                "{text}: {e}"
            );
        }
        let c = resolve(
            "[gateway]\nlisten = \"[::1]:9000\"\n[tokens]\nttl = \"10m\"",
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "[::1]:9000");
        assert_eq!(c.token_ttl, Duration::from_secs(600));
    }

    #[test]
    fn the_newtypes_hold_only_what_they_accept() {
        assert_eq!(ListenAddr::DEFAULT.get().to_string(), DEFAULT_LISTEN);
        assert!(ListenAddr::try_from("127.0.0.2:1".to_owned()).is_ok());
        for bad in ["10.0.0.1:1", "127.0.0.1", "", "127.0.0.1:99999"] {
            let e = ListenAddr::try_from(bad.to_owned()).unwrap_err();
            assert_eq!(e.key, "listen", "{bad}");
        }
        assert_eq!(
            Ttl::try_from("1ms".to_owned()).unwrap().get(),
            Duration::from_millis(1)
        );
        for bad in ["0s", "11m", "-1s", "30"] {
            let e = Ttl::try_from(bad.to_owned()).unwrap_err();
            assert_eq!(e.key, "ttl", "{bad}");
        }
    }

    #[test]
    fn refuses_non_loopback_listen() {
        for addr in ["0.0.0.0:8933", "192.168.1.2:8933", "[::]:8933"] {
            let e = resolve(
                "",
                Overrides {
                    listen: Some(addr.into()),
                    ..Default::default()
                },
            )
            .unwrap_err();
            assert!(e.to_string().contains("loopback"), "{e}");
        }
    }

    #[test]
    fn refuses_bad_ttls() {
        for t in ["11m", "0s", "soon", "-1s"] {
            assert!(
                resolve(
                    "",
                    Overrides {
                        token_ttl: Some(t.into()),
                        ..Default::default()
                    }
                )
                .is_err(),
                "{t}"
            );
        }
        assert!(
            resolve(
                "",
                Overrides {
                    token_ttl: Some("10m".into()),
                    ..Default::default()
                }
            )
            .is_ok()
        );
    }

    #[test]
    fn an_origin_port_that_is_not_a_number_is_refused_naming_the_key() {
        let e = resolve(
            "[gateway]\nallowed_origins = [\"https://localhost:abc\"]",
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("allowed_origins"), "{e}");
        assert!(e.contains("https://localhost:abc"), "{e}");
        assert!(e.contains("port"), "{e}");
        assert!(e.contains("/etc/screengate.toml"), "{e}");
        for bad in [
            "https://localhost:",
            "https://localhost:0",
            "https://localhost:08933",
            "https://localhost:65536",
            "https://localhost:999999",
            "https://localhost:+8933",
            "https://localhost:-1",
            "https://localhost:89 33",
            "https://:8933",
            "https://[::1",
            "https://[::1]x",
            "https://[::1]:abc",
            "https://[]:8933",
        ] {
            let o = Overrides {
                origins: vec![bad.into()],
                ..Default::default()
            };
            let e = resolve("", o).unwrap_err().to_string();
            assert!(e.contains("allowed_origins"), "{bad}: {e}");
        }
        for good in [
            "https://localhost:8933",
            "https://[::1]:8933",
            "https://127.0.0.1:1",
            "https://localhost:65535",
            "https://example.com",
        ] {
            let o = Overrides {
                origins: vec![good.into()],
                ..Default::default()
            };
            let c = resolve("", o).unwrap();
            let got: Vec<&str> = c
                .allowed_origins
                .iter()
                .flatten()
                .map(Origin::as_str)
                .collect();
            assert_eq!(got, [good]);
        }
    }

    #[test]
    fn refuses_bad_origins() {
        for o in [
            "null",
            "*",
            "localhost:8933",
            "https://localhost:8933/",
            "file://",
            "https://a@b",
        ] {
            assert!(
                resolve(
                    "",
                    Overrides {
                        origins: vec![o.into()],
                        ..Default::default()
                    }
                )
                .is_err(),
                "{o}"
            );
        }
    }

    #[test]
    fn refuses_bad_backends() {
        for b in [
            "",
            "unix:rel/path",
            "ws://10.0.0.1:80/",
            "ws://example.com:80/",
            "http://127.0.0.1:1/",
            "tcp:1",
        ] {
            assert!(parse_backend(b).is_err(), "{b}");
        }
        assert!(matches!(
            parse_backend("ws://127.0.0.1:9/x"),
            Ok(BackendSpec::Ws { .. })
        ));
        assert!(matches!(
            parse_backend("ws://localhost:9"),
            Ok(BackendSpec::Ws { .. })
        ));
        assert!(matches!(
            parse_backend("ws://[::1]:9/"),
            Ok(BackendSpec::Ws { .. })
        ));
    }

    #[test]
    fn native_defaults_and_refusals() {
        let c = resolve(
            "[native]\nsocket = \"/run/sg/native.sock\"",
            Overrides::default(),
        )
        .unwrap();
        let n = c.native.unwrap();
        assert_eq!(n.auth, NativeAuth::TlsToken);
        assert_eq!(n.auth.tls(), NativeTls::Server);
        assert!(n.auth.token());
        let c = resolve(
            "[native]\nsocket = \"/run/sg/n.sock\"\ntls = \"mutual\"",
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.native.unwrap().auth, NativeAuth::MutualTls);
        for bad in [
            "[native]\nsocket = \"/run/n.sock\"\ntls = \"maybe\"",
            "[native]\nsocket = \"/run/n.sock\"\ntls = \"server\"\nrequire_token = false",
            "[native]\nsocket = \"/run/n.sock\"\ntls = \"off\"\nrequire_token = false",
            "[native]\nsocket = \"/run/n.sock\"\nallowed_uids = []",
            "[native]\nsocket = \"/run/n.sock\"\nextra = 1",
            "[gateway]\nrequire_token = false",
            "[gateway]\nclient_auth = \"ca\"",
        ] {
            assert!(resolve(bad, Overrides::default()).is_err(), "{bad}");
        }
        let c = resolve(
            "[gateway]\nclient_auth = \"pinned\"\nrequire_token = false",
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.gateway_auth, GatewayAuth::PinnedCert);
        assert!(c.gateway_auth.client_cert() && !c.gateway_auth.token());
        let c = resolve("", Overrides::default()).unwrap();
        assert_eq!(c.gateway_auth, GatewayAuth::Token);
    }

    #[test]
    fn the_auth_enums_cannot_hold_the_illegal_pair() {
        assert_eq!(GatewayAuth::new(false, false), None);
        for (cert, token) in [(false, true), (true, true), (true, false)] {
            let a = GatewayAuth::new(cert, token).unwrap();
            assert_eq!((a.client_cert(), a.token()), (cert, token));
        }
        assert_eq!(NativeAuth::new(NativeTls::Off, false), None);
        assert_eq!(NativeAuth::new(NativeTls::Server, false), None);
        for (tls, token) in [
            (NativeTls::Off, true),
            (NativeTls::Server, true),
            (NativeTls::Mutual, true),
            (NativeTls::Mutual, false),
        ] {
            let a = NativeAuth::new(tls, token).unwrap();
            assert_eq!((a.tls(), a.token()), (tls, token));
        }
    }

    #[test]
    fn refuses_reserved_header_and_bad_values() {
        assert!(resolve("[tokens]\nheader = \"Origin\"", Overrides::default()).is_err());
        assert!(
            resolve(
                "[tokens]\nheader = \"Sec-WebSocket-Protocol\"",
                Overrides::default()
            )
            .is_err()
        );
        assert!(resolve("[tokens]\nheader = \"bad header\"", Overrides::default()).is_err());
        assert!(resolve("[gateway]\nmax_message_size = 10", Overrides::default()).is_err());
        assert!(resolve("[gateway]\npath = \"/\"", Overrides::default()).is_err());
        assert!(resolve("[control]\nallowed_uids = []", Overrides::default()).is_err());
        assert!(resolve("[gateway]\nlisten = 5", Overrides::default()).is_err());
    }

    const PIN: &str = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";

    fn wss(gateway: &str, tls: &str) -> Result<Config, ConfigError> {
        resolve(
            &format!("[gateway]\nbackend = \"wss://localhost:8933/\"\n{gateway}\n{tls}"),
            Overrides::default(),
        )
    }

    fn err(r: Result<Config, ConfigError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn wss_with_ca_and_client_cert_parses() {
        let c = wss(
            "backend_uid = 1001\nwhen_full = \"replace_oldest\"",
            "[backend_tls]\nca = \"/c/ca\"\nclient_cert = \"/c/ch\"\nclient_key = \"/c/k\"",
        )
        .unwrap();
        assert!(matches!(c.backend, BackendSpec::Wss { ref host, .. } if host == "localhost"));
        assert_eq!(c.backend.to_string(), "wss://localhost:8933/");
        assert_eq!(c.backend_uid, Some(1001));
        assert_eq!(c.when_full, WhenFull::ReplaceOldest);
        let t = c.backend_tls.unwrap();
        assert_eq!(t.trust, BackendTrust::Ca("/c/ca".into()));
        assert_eq!(t.client, Some(("/c/ch".into(), "/c/k".into())));
        assert_eq!(t.server_name, "localhost");
        let c = wss(
            "",
            &format!("[backend_tls]\nspki_pin = \"{PIN}\"\nserver_name = \"sdk.local\""),
        )
        .unwrap();
        let t = c.backend_tls.unwrap();
        assert!(matches!(t.trust, BackendTrust::Pin(_)));
        assert_eq!(t.client, None);
        assert_eq!(t.server_name, "sdk.local");
        assert_eq!(c.when_full, WhenFull::Refuse);
        let c = resolve(
            "[gateway]\nbackend = \"wss://127.0.0.1:9/\"\n[backend_tls]\nca = \"/ca\"",
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.backend_tls.unwrap().server_name, "127.0.0.1");
    }

    #[test]
    fn ws_with_backend_tls_is_refused_use_wss() {
        let e = err(resolve(
            "[gateway]\nbackend = \"ws://localhost:8933/\"\n[backend_tls]\nca = \"/ca\"",
            Overrides::default(),
        ));
        assert!(e.contains("use wss://") && e.contains("backend_tls"), "{e}");
    }

    #[test]
    fn backend_tls_refusals_name_the_key() {
        for (gateway, tls, key) in [
            ("", "", "`backend`"),
            ("", "[backend_tls]", "`ca`"),
            (
                "",
                &*format!("[backend_tls]\nca = \"/ca\"\nspki_pin = \"{PIN}\""),
                "`spki_pin`",
            ),
            ("", "[backend_tls]\nspki_pin = \"short\"", "`spki_pin`"),
            (
                "",
                "[backend_tls]\nca = \"/ca\"\nclient_cert = \"/c\"",
                "`client_key`",
            ),
            (
                "",
                "[backend_tls]\nca = \"/ca\"\nclient_key = \"/k\"",
                "`client_cert`",
            ),
            (
                "",
                "[backend_tls]\nca = \"/ca\"\nserver_name = \"a b\"",
                "`server_name`",
            ),
            (
                "when_full = \"evict\"",
                "[backend_tls]\nca = \"/ca\"",
                "`when_full`",
            ),
            (
                "",
                "[backend_tls]\nca = \"/ca\"\ncrl = \"/x\"",
                "unknown field",
            ),
        ] {
            let e = err(wss(gateway, tls));
            assert!(e.contains(key), "{key}: {e}");
        }
        for backend in ["demo", "unix:/run/sdk.sock"] {
            let e = err(resolve(
                &format!("[gateway]\nbackend = \"{backend}\"\n[backend_tls]\nca = \"/ca\""),
                Overrides::default(),
            ));
            assert!(e.contains("only for a wss://"), "{e}");
        }
        let e = err(resolve("[gateway]\nbackend_uid = 5", Overrides::default()));
        assert!(e.contains("backend_uid"), "{e}");
        for b in [
            "wss://10.0.0.1:8933/",
            "wss://example.com:8933/",
            "wss://localhost",
        ] {
            assert!(parse_backend(b).is_err(), "{b}");
        }
    }
}
