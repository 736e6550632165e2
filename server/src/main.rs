//! `screengate`: argument parsing, tracing setup and exit codes only; the
//! work is in the library (`screengate_server::commands`, `run`).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use screengate_server::commands;
use screengate_server::config::default_state_dir;
use screengate_server::logfmt::{self, Lines};
use screengate_server::privilege::{self, NeededDir};
use screengate_server::{InitOutcomeExt as _, Overrides, Reloader};
use tracing::level_filters::LevelFilter;

/// Exit code for bad configuration (BSD EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "screengate",
    version,
    about = "Secures the local link between a smart-screen display client and the voice SDK."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

// Parsed once at start-up; the size of the biggest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Create the device identity (never overwrites without --force).
    Init {
        #[arg(long)]
        state_dir: PathBuf,
        /// Started as root: create the state dir for this user and drop to it first.
        #[arg(long)]
        user: Option<String>,
        /// Replace an existing identity (a new device identity: re-pin clients).
        #[arg(long)]
        force: bool,
    },
    /// Replace the device identity (device key, server and client keys and
    /// certificates) as one step; prints the new pins. `systemctl reload`
    /// then puts it in force.
    Rotate {
        #[arg(long)]
        state_dir: PathBuf,
        /// Started as root: drop to this user (the state dir's owner) first.
        #[arg(long)]
        user: Option<String>,
    },
    /// Factory reset: remove the identity and every file screengate made in
    /// the state dir (keys overwritten first). Refused while a server runs on it.
    Reset {
        #[arg(long)]
        state_dir: PathBuf,
        /// Started as root: drop to this user (the state dir's owner) first.
        #[arg(long)]
        user: Option<String>,
    },
    /// Print the SPKI pin of the server (or client) certificate.
    Pin {
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[arg(long)]
        client: bool,
    },
    /// Run the gateway, control socket and proxy.
    Serve {
        #[command(flatten)]
        common: Common,
        #[arg(long)]
        listen: Option<String>,
        #[arg(long)]
        control: Option<PathBuf>,
        #[arg(long)]
        backend: Option<String>,
        #[arg(long)]
        token_ttl: Option<String>,
        #[arg(long = "allow-uid")]
        allow_uid: Vec<u32>,
        #[arg(long = "origin")]
        origin: Vec<String>,
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
        /// Started as root: prepare directories for this user and drop to it for good.
        #[arg(long)]
        user: Option<String>,
        /// Unix socket for native display clients.
        #[arg(long)]
        native_socket: Option<PathBuf>,
        /// TLS on the native socket: off, server or mutual.
        #[arg(long)]
        native_tls: Option<String>,
        /// Uid allowed on the native socket (repeatable).
        #[arg(long = "native-allow-uid")]
        native_allow_uid: Vec<u32>,
        /// Require a token on the native socket (default: unless --native-tls mutual).
        #[arg(long)]
        native_require_token: Option<bool>,
    },
    /// Ask a running server for a token; prints the control socket's reply.
    Mint {
        #[arg(long)]
        control: Option<PathBuf>,
        #[arg(long, default_value = "display")]
        channel: String,
    },
    /// Validate config, identity and file permissions without serving.
    Check {
        #[command(flatten)]
        common: Common,
        /// Started as root: check as this user.
        #[arg(long)]
        user: Option<String>,
    },
    /// Serve the demo echo backend on a Unix socket (tests and benchmarks).
    #[command(hide = true)]
    DemoBackend {
        #[arg(long)]
        unix: PathBuf,
    },
}

#[derive(clap::Args)]
struct Common {
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

/// `RUST_LOG` is one level (`error` … `trace`, `off`). A value that is
/// not a level is reported, not silently ignored. (A level, not per-target
/// directives: the regex-based `EnvFilter` cost ~0.5 MiB of binary on
/// devices with little flash.)
fn env_log_level() -> Option<LevelFilter> {
    let v = std::env::var("RUST_LOG").unwrap_or_default();
    if v.is_empty() {
        return None;
    }
    match v.parse() {
        Ok(l) => Some(l),
        Err(_) => {
            eprintln!(
                "screengate: RUST_LOG={v:?} is not a level (error|warn|info|debug|trace|off); using info"
            );
            Some(LevelFilter::INFO)
        }
    }
}

/// The log level in force: `RUST_LOG` when set, else the config's
/// `log_level` (which a reload may change), else `info`.
#[derive(Clone)]
struct LogLevel {
    lines: std::sync::Arc<Lines>,
    from_env: Option<LevelFilter>,
}

impl LogLevel {
    fn set(&self, configured: Option<LevelFilter>) {
        if self.from_env.is_some() {
            return;
        }
        self.lines
            .set_level(configured.unwrap_or(LevelFilter::INFO));
    }
}

fn init_tracing(format: LogFormat) -> LogLevel {
    let from_env = env_log_level();
    let format = match format {
        LogFormat::Text => logfmt::Format::Text,
        LogFormat::Json => logfmt::Format::Json,
    };
    let lines = std::sync::Arc::new(Lines::new(format, from_env.unwrap_or(LevelFilter::INFO)));
    if tracing::subscriber::set_global_default(lines.clone()).is_err() {
        eprintln!("screengate: a log subscriber was already installed");
    }
    LogLevel { lines, from_env }
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("screengate: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}

/// Resolves on SIGTERM or SIGINT. A SIGHUP (`systemctl reload`, a closed
/// terminal) asks `reloads` for a reload, or is ignored without one: never
/// the default action, which would take the display down. Requests that
/// arrive while one is pending join it. The handlers are installed when
/// this is called (inside the runtime, before anything is bound), so no
/// signal after `READY=1` meets the default action.
fn terminated(
    reloads: Option<tokio::sync::mpsc::Sender<()>>,
) -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    );
    async move {
        match handlers {
            (Ok(mut term), Ok(mut int), Ok(mut hup)) => loop {
                tokio::select! {
                    _ = term.recv() => return,
                    _ = int.recv() => return,
                    _ = hup.recv() => match &reloads {
                        Some(tx) => {
                            tracing::info!("SIGHUP: reloading the configuration");
                            if tx.try_send(()).is_err() {
                                tracing::info!("a reload is already pending; this SIGHUP joins it");
                            }
                        }
                        None => tracing::warn!("SIGHUP ignored: nothing to reload"),
                    },
                }
            },
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                tracing::error!(error = %e, "cannot handle signals; SIGTERM will not stop this process cleanly");
                std::future::pending().await
            }
        }
    }
}

/// Non-dumpable, root rule (drop with --user), non-dumpable again (a uid
/// change resets it), then the executable check. One line on refusal.
fn secure_start(user: Option<&str>, dirs: &[NeededDir], groups: &[String]) -> Result<(), ExitCode> {
    let r = privilege::harden_process()
        .and_then(|()| privilege::enforce(user, dirs, groups))
        .and_then(|_| privilege::harden_process())
        .and_then(|()| privilege::check_executable());
    if cfg!(feature = "allow-owned-exe") {
        eprintln!(
            "screengate: WARNING: built with allow-owned-exe (a test relaxation); not for devices"
        );
    }
    r.map_err(|e| {
        eprintln!("screengate: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn main() -> ExitCode {
    // Once, first, while the process has one thread: every file and socket
    // is born owner-only; wider modes (0644 certificates, 0660/0711 socket
    // paths) are set explicitly where they are made. Nothing changes the
    // umask after this.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Init {
            state_dir,
            force,
            user,
        } => {
            let dirs = [NeededDir {
                path: state_dir.clone(),
                mode: 0o700,
            }];
            if let Err(c) = secure_start(user.as_deref(), &dirs, &[]) {
                return c;
            }
            init(&state_dir, force)
        }
        Cmd::Pin { state_dir, client } => {
            match commands::pin(&state_dir.unwrap_or_else(default_state_dir), client) {
                Ok(p) => {
                    println!("{p}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("screengate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Check { common, user } => {
            // Read as `serve` would: before the drop, under root's rule.
            let o = Overrides {
                state_dir: common.state_dir,
                user: user.clone(),
                ..Default::default()
            };
            let cfg = commands::load_config(common.config.as_deref(), o);
            // A config that did not load is reported as a problem, by the
            // user `check` was asked to check as.
            let user = cfg.as_ref().ok().and_then(|c| c.user.clone()).or(user);
            if let Err(c) = secure_start(user.as_deref(), &[], &[]) {
                return c;
            }
            let problems = commands::check(cfg);
            if problems.is_empty() {
                println!("ok");
                ExitCode::SUCCESS
            } else {
                for p in &problems {
                    eprintln!("screengate: {p}");
                }
                ExitCode::from(EXIT_CONFIG)
            }
        }
        Cmd::Rotate { state_dir, user } => {
            if let Err(c) = secure_start(user.as_deref(), &[], &[]) {
                return c;
            }
            reprovision::rotate(&state_dir)
        }
        Cmd::Reset { state_dir, user } => {
            if let Err(c) = secure_start(user.as_deref(), &[], &[]) {
                return c;
            }
            reprovision::reset(&state_dir)
        }
        other => run_other(other),
    }
}

/// What `rotate` and `reset` print.
mod reprovision {
    use std::path::Path;
    use std::process::ExitCode;

    use screengate_server::commands;

    pub(super) fn rotate(state_dir: &Path) -> ExitCode {
        match commands::rotate(state_dir) {
            Ok(r) => {
                for p in &r.removed.removed {
                    eprintln!("screengate: removed {}", p.display());
                }
                for (p, why) in &r.removed.left {
                    eprintln!("screengate: left {}: {why}", p.display());
                }
                if r.device_key_from_credential {
                    eprintln!(
                        "screengate: the device key is the systemd credential's and was kept; replace the credential to change it"
                    );
                }
                eprintln!(
                    "screengate: new identity in force in {}; `systemctl reload screengate` (or SIGHUP) makes a running server use it",
                    state_dir.display()
                );
                println!("server spki pin: {}", r.server_pin);
                println!("client spki pin: {}", r.client_pin);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("screengate: {e}");
                ExitCode::FAILURE
            }
        }
    }

    pub(super) fn reset(state_dir: &Path) -> ExitCode {
        match commands::reset(state_dir) {
            Ok(r) => {
                for p in &r.removed {
                    println!("removed {}", p.display());
                }
                for (p, why) in &r.left {
                    println!("left {}: {why}", p.display());
                }
                println!(
                    "reset {}: {} removed, {} left; `screengate init` makes a new identity",
                    state_dir.display(),
                    r.removed.len(),
                    r.left.len()
                );
                ExitCode::SUCCESS
            }
            Err(problems) => {
                for p in &problems {
                    eprintln!("screengate: reset refused: {p}");
                }
                ExitCode::from(super::EXIT_CONFIG)
            }
        }
    }
}

fn init(state_dir: &std::path::Path, force: bool) -> ExitCode {
    match commands::init(state_dir, force) {
        Ok(r) => {
            if r.outcome.is_noop() {
                eprintln!(
                    "screengate: identity already present in {}; not overwriting (use --force to replace it)",
                    state_dir.display()
                );
            }
            println!("server spki pin: {}", r.server_pin);
            println!("client spki pin: {}", r.client_pin);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("screengate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_other(cmd: Cmd) -> ExitCode {
    match cmd {
        Cmd::Mint { control, channel } => {
            let control = control.unwrap_or_else(|| default_state_dir().join("control.sock"));
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(c) => return c,
            };
            let channel = match channel.parse() {
                Ok(c) => c,
                Err(()) => {
                    let e = screengate_control::RequestError::UnknownChannel(channel);
                    eprintln!("screengate: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(commands::mint(&control, channel)) {
                Ok(reply) => {
                    // the reply as the server sent it (the token is this
                    // command's output)
                    println!("{}", String::from_utf8_lossy(&reply.line));
                    if reply.ok {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("screengate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Init { .. }
        | Cmd::Pin { .. }
        | Cmd::Check { .. }
        | Cmd::Rotate { .. }
        | Cmd::Reset { .. } => ExitCode::FAILURE,
        Cmd::DemoBackend { unix } => {
            // It binds a socket: never as root, like every such command.
            if let Err(c) = secure_start(None, &[], &[]) {
                return c;
            }
            init_tracing(LogFormat::Text);
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(c) => return c,
            };
            match rt.block_on(async {
                let stop = terminated(None);
                screengate_server::demo::serve_unix(
                    &unix,
                    screengate_server::config::DEFAULT_MAX_MESSAGE,
                    stop,
                )
                .await
            }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("screengate: demo backend {}: {e}", unix.display());
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Serve {
            common,
            listen,
            control,
            backend,
            token_ttl,
            allow_uid,
            origin,
            log_format,
            user,
            native_socket,
            native_tls,
            native_allow_uid,
            native_require_token,
        } => {
            let log = init_tracing(log_format);
            let o = Overrides {
                state_dir: common.state_dir,
                listen,
                control,
                backend,
                token_ttl,
                allow_uids: allow_uid,
                origins: origin,
                user,
                native_socket,
                native_tls,
                native_allow_uids: native_allow_uid,
                native_require_token,
            };
            // Socket activation: fd 3 taken and LISTEN_* unset now, while
            // this process has one thread; `Server::bind` checks it.
            let activation = screengate_server::listen_fds::take_from_env();
            // A reload reads the same file, under the rule of the start
            // (before the drop), with the same overrides.
            let trust = screengate_server::config::Trust::for_this_process();
            let file = common.config.clone();
            let again = o.clone();
            let cfg = match commands::load_config(common.config.as_deref(), o) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("screengate: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let mut dirs = vec![NeededDir {
                path: cfg.state_dir.clone(),
                mode: 0o700,
            }];
            if let Some(parent) = cfg
                .control_socket
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
            {
                dirs.push(NeededDir {
                    path: parent.to_owned(),
                    mode: 0o711,
                });
            }
            if let Some(parent) = cfg
                .native
                .as_ref()
                .and_then(|n| n.socket.parent())
                .filter(|p| !p.as_os_str().is_empty())
            {
                dirs.push(NeededDir {
                    path: parent.to_owned(),
                    mode: 0o711,
                });
            }
            let mut groups: Vec<String> = cfg.control_group.iter().cloned().collect();
            groups.extend(cfg.native.as_ref().and_then(|n| n.group.clone()));
            groups.dedup();
            if let Err(c) = secure_start(cfg.user.as_deref(), &dirs, &groups) {
                return c;
            }
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(c) => return c,
            };
            log.set(cfg.log_level);
            if let Some(note) = activation {
                tracing::warn!("{note}");
            }
            let reloader = Reloader {
                load: Box::new(move || {
                    commands::load_config_as(file.as_deref(), again.clone(), trust)
                }),
                set_log_level: Box::new(move |l| log.set(l)),
            };
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let served = rt.block_on(async move {
                let stop = terminated(Some(tx));
                screengate_server::Server::bind(cfg)
                    .await?
                    .reloading(reloader, rx)
                    .serve(stop)
                    .await
            });
            match served {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("screengate: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
    }
}
