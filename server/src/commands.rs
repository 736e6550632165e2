//! The subcommands' logic, so `main.rs` stays a thin argument parser.

use std::path::{Path, PathBuf};

use screengate_control::client::{self, ClientError, ReplyLine};
use screengate_control::{Reply, Request};
use screengate_identity::fsutil::{self, Kind};
use screengate_identity::{IdentityError, InitOutcome, Pin, Removal, StateDir};
use screengate_token::Channel;

use crate::config::{self, Config, ConfigError, FileConfig, Overrides};
use crate::exit::{ExitKind, ExitStatus};

/// Loads the config file (if any) under this process's trust rule
/// ([`config::Trust::for_this_process`]: root's own file only, when root)
/// and applies the overrides.
pub fn load_config(file: Option<&Path>, overrides: Overrides) -> Result<Config, ConfigError> {
    load_config_as(file, overrides, config::Trust::for_this_process())
}

/// [`load_config`] under a given trust rule: a reload, after the drop,
/// reads the file under the rule the server started with (root's file only,
/// when started as root), not under the service user's.
pub fn load_config_as(
    file: Option<&Path>,
    overrides: Overrides,
    trust: config::Trust,
) -> Result<Config, ConfigError> {
    let parsed = match file {
        Some(p) => config::read_file(p, trust)?,
        None => FileConfig::default(),
    };
    Config::resolve(file, parsed, overrides)
}

/// What `init` did and the resulting pins.
#[derive(Debug)]
pub struct InitReport {
    /// What was created.
    pub outcome: InitOutcome,
    /// Server certificate pin.
    pub server_pin: Pin,
    /// Client certificate pin.
    pub client_pin: Pin,
}

/// `screengate init`.
pub fn init(state_dir: &Path, force: bool) -> Result<InitReport, IdentityError> {
    let creds = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    let state = StateDir::new(state_dir, creds);
    let outcome = state.init(force)?;
    let id = state.load()?;
    Ok(InitReport {
        outcome,
        server_pin: id.server_pin,
        client_pin: id.client_pin,
    })
}

/// What `rotate` did: the new pins, and what of the old identity went.
#[derive(Debug)]
pub struct RotateReport {
    /// The old identity's files and directory, removed (keys overwritten).
    pub removed: Removal,
    /// The new server certificate pin.
    pub server_pin: Pin,
    /// The new client certificate pin.
    pub client_pin: Pin,
    /// The device key is the systemd credential's, which `rotate` keeps.
    pub device_key_from_credential: bool,
}

/// `screengate rotate`: a new identity in force as one step
/// ([`StateDir::rotate`]).
pub fn rotate(state_dir: &Path) -> Result<RotateReport, IdentityError> {
    let creds = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    let state = StateDir::new(state_dir, creds);
    let removed = state.rotate()?;
    let id = state.load()?;
    Ok(RotateReport {
        removed,
        server_pin: id.server_pin,
        client_pin: id.client_pin,
        device_key_from_credential: state.device_key_from_credential(),
    })
}

/// `screengate reset`: the factory reset ([`StateDir::reset`]), as the
/// user this process runs as.
pub fn reset(state_dir: &Path) -> Result<Removal, Vec<IdentityError>> {
    StateDir::new(state_dir, None).reset(fsutil::euid())
}

/// `screengate pin`.
pub fn pin(state_dir: &Path, client: bool) -> Result<Pin, IdentityError> {
    StateDir::new(state_dir, None).pin(client)
}

/// One problem `screengate check` found: its message, and the kind of
/// failure it is (the exit code: the worst problem's).
#[derive(Debug)]
pub struct Problem {
    /// Unsafe permissions, bad config, an OS failure...
    pub kind: ExitKind,
    /// The message (names the file or key).
    pub text: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Problem {
    fn of(e: &(impl ExitStatus + ToString)) -> Self {
        Self {
            kind: e.exit_kind(),
            text: e.to_string(),
        }
    }
}

/// `screengate check` on a loaded config (loaded before any privilege
/// drop, as `serve` loads it): every problem found, empty when all is well.
pub fn check(cfg: Result<Config, ConfigError>) -> Vec<Problem> {
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => return vec![Problem::of(&e)],
    };
    let uid = fsutil::euid();
    let mut problems: Vec<Problem> = Vec::new();
    if let Some(f) = &cfg.file {
        problems.extend(
            fsutil::check_path(f, Kind::Protected, uid)
                .iter()
                .map(Problem::of),
        );
    }
    // The SDK's client key, chain and CA, under the same rules as our own
    // keys; then read and parsed exactly as `serve` does.
    if let Some(t) = &cfg.backend_tls {
        let files = crate::backend_tls::check_files(t, uid);
        if files.is_empty() {
            if let Err(e) = crate::backend_tls::connector(t, uid) {
                problems.push(Problem::of(&e));
            }
        } else {
            problems.extend(files.iter().map(|e| Problem {
                kind: e.exit_kind(),
                text: format!("[backend_tls] {e}"),
            }));
        }
    }
    let state = StateDir::new(&cfg.state_dir, cfg.credentials_dir.clone());
    if !state.path().exists() {
        problems.push(Problem {
            kind: ExitKind::Config,
            text: format!(
                "{}: state directory does not exist; run `screengate init --state-dir {}`",
                cfg.state_dir.display(),
                cfg.state_dir.display()
            ),
        });
        return problems;
    }
    problems.extend(state.check_permissions(uid).iter().map(Problem::of));
    if let Err(e) = state.load() {
        problems.push(Problem::of(&e));
    }
    if let Some(root) = &cfg.web_root
        && !root.join("index.html").is_file()
    {
        problems.push(Problem {
            kind: ExitKind::Config,
            text: format!("{}: web_root has no index.html", root.display()),
        });
    }
    problems
}

/// Why `screengate mint` failed.
#[derive(Debug, thiserror::Error)]
pub enum MintClientError {
    /// Could not connect to the control socket.
    #[error(
        "{path}: cannot connect to the control socket: {source} (is `screengate serve` running, and may this user use the socket?)"
    )]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The exchange failed or timed out.
    #[error("{path}: control exchange failed: {source}")]
    Exchange {
        /// The socket path.
        path: PathBuf,
        /// What happened.
        source: ClientError,
    },
}

impl ExitStatus for MintClientError {
    fn exit_kind(&self) -> ExitKind {
        match self {
            // no server on it (69), or this user may not use it (77)
            Self::Connect { source, .. } => match source.kind() {
                std::io::ErrorKind::PermissionDenied => ExitKind::Permission,
                _ => ExitKind::Unavailable,
            },
            Self::Exchange { source, .. } => source.exit_kind(),
        }
    }
}

/// What `screengate mint` prints: the reply line exactly as the server sent
/// it (a buffer wiped on drop), and whether it said `"ok":true`.
pub struct MintReply {
    /// The reply line, without its newline.
    pub line: ReplyLine,
    /// Whether the reply said `"ok":true` (the exit code).
    pub ok: bool,
}

impl std::fmt::Debug for MintReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintReply")
            .field("ok", &self.ok)
            .finish_non_exhaustive()
    }
}

/// `screengate mint`: one request, the raw reply line (the shared control
/// client: 5 s deadline, 16 KiB reply bound).
pub async fn mint(control: &Path, channel: Channel) -> Result<MintReply, MintClientError> {
    let request = Request::Mint(channel)
        .to_line()
        .map_err(|e| exchange_error(control, ClientError::Encode(e)))?;
    let line = client::exchange(control, &request)
        .await
        .map_err(|e| match e {
            ClientError::Unreachable { source, .. } => MintClientError::Connect {
                path: control.to_owned(),
                source,
            },
            other => exchange_error(control, other),
        })?;
    let ok = Reply::says_ok(&line);
    Ok(MintReply { line, ok })
}

fn exchange_error(control: &Path, source: ClientError) -> MintClientError {
    MintClientError::Exchange {
        path: control.to_owned(),
        source,
    }
}
