//! What the `screengate` subcommands do around the library: the log
//! subscriber and its level, the async runtime, the signals, the privilege
//! start (root rule, drop, hardening) and what each command prints. Each
//! command returns `Err(code)` after printing why ([`crate::exit`] decides
//! the code), so `main.rs` only parses, dispatches and exits.
//! What it leaves to others: the argument grammar (`main.rs`), the work
//! (`commands`, `Server`), the rules (`config`, `privilege`).

use std::path::{Path, PathBuf};

use tracing::level_filters::LevelFilter;

use crate::commands;
use crate::config::{DEFAULT_MAX_MESSAGE, Overrides, Trust, default_state_dir};
use crate::exit::{ExitKind, ExitStatus};
use crate::live::Reloader;
use crate::logfmt::{self, Lines};
use crate::privilege::{self, NeededDir, PrivilegePlan};
use crate::server::Server;

/// A command's result: `Err(code)` once the reason is printed.
pub type Outcome = Result<(), u8>;

/// `--log-format`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    /// One `key=value` line per event.
    Text,
    /// One JSON object per line.
    Json,
}

/// Prints `screengate: {e}` and returns its exit code.
fn fail(e: &(impl std::fmt::Display + ExitStatus)) -> u8 {
    eprintln!("screengate: {e}");
    e.exit_code()
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

fn runtime() -> Result<tokio::runtime::Runtime, u8> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("screengate: cannot start the async runtime: {e}");
            ExitKind::OsError.code()
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
fn secure_start(plan: &PrivilegePlan) -> Outcome {
    let r = privilege::harden_process()
        .and_then(|()| privilege::enforce(plan.user.as_deref(), &plan.dirs, &plan.groups))
        .and_then(|_| privilege::harden_process())
        .and_then(|()| privilege::check_executable());
    if cfg!(feature = "allow-owned-exe") {
        eprintln!(
            "screengate: WARNING: built with allow-owned-exe (a test relaxation); not for devices"
        );
    }
    r.map_err(|e| fail(&e))
}

/// Only the root rule and the drop to `user`: no directories, no groups.
fn as_user(user: Option<String>) -> PrivilegePlan {
    PrivilegePlan {
        user,
        dirs: Vec::new(),
        groups: Vec::new(),
    }
}

/// `screengate init`.
pub fn init(state_dir: &Path, user: Option<String>, force: bool) -> Outcome {
    let mut plan = as_user(user);
    plan.dirs.push(NeededDir {
        path: state_dir.to_owned(),
        mode: 0o700,
    });
    secure_start(&plan)?;
    let r = commands::init(state_dir, force).map_err(|e| fail(&e))?;
    if matches!(r.outcome, screengate_identity::InitOutcome::AlreadyPresent) {
        eprintln!(
            "screengate: identity already present in {}; not overwriting (use --force to replace it)",
            state_dir.display()
        );
    }
    println!("server spki pin: {}", r.server_pin);
    println!("client spki pin: {}", r.client_pin);
    Ok(())
}

/// `screengate rotate`.
pub fn rotate(state_dir: &Path, user: Option<String>) -> Outcome {
    secure_start(&as_user(user))?;
    let r = commands::rotate(state_dir).map_err(|e| fail(&e))?;
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
    Ok(())
}

/// `screengate reset`.
pub fn reset(state_dir: &Path, user: Option<String>) -> Outcome {
    secure_start(&as_user(user))?;
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
            Ok(())
        }
        Err(problems) => {
            for p in &problems {
                eprintln!("screengate: reset refused: {p}");
            }
            let worst = ExitKind::worst(problems.iter().map(ExitStatus::exit_kind));
            Err(worst.unwrap_or(ExitKind::Config).code())
        }
    }
}

/// `screengate pin`.
pub fn pin(state_dir: Option<PathBuf>, client: bool) -> Outcome {
    let p = commands::pin(&state_dir.unwrap_or_else(default_state_dir), client)
        .map_err(|e| fail(&e))?;
    println!("{p}");
    Ok(())
}

/// `screengate check`: the config read as `serve` reads it (before the
/// drop, under root's rule), then checked as the user it would run as.
pub fn check(config: Option<&Path>, state_dir: Option<PathBuf>, user: Option<String>) -> Outcome {
    let o = Overrides {
        state_dir,
        user: user.clone(),
        ..Default::default()
    };
    let cfg = commands::load_config(config, o);
    // A config that did not load is reported as a problem, by the user
    // `check` was asked to check as.
    let user = cfg.as_ref().ok().and_then(|c| c.user.clone()).or(user);
    secure_start(&as_user(user))?;
    let problems = commands::check(cfg);
    for p in &problems {
        eprintln!("screengate: {p}");
    }
    match ExitKind::worst(problems.iter().map(|p| p.kind)) {
        None => {
            println!("ok");
            Ok(())
        }
        Some(k) => Err(k.code()),
    }
}

/// `screengate mint`: prints the server's reply line; exit 1 when the
/// server said no (the reply says why).
pub fn mint(control: Option<PathBuf>, channel: String) -> Outcome {
    let control = control.unwrap_or_else(|| default_state_dir().join("control.sock"));
    let Ok(channel) = channel.parse() else {
        // refused locally as the server would refuse it: exit 1, as a
        // refusal in the reply (docs/decisions.md 82)
        let e = screengate_control::RequestError::UnknownChannel(channel);
        eprintln!("screengate: {e}");
        return Err(1);
    };
    let rt = runtime()?;
    let reply = rt
        .block_on(commands::mint(&control, channel))
        .map_err(|e| fail(&e))?;
    // the reply as the server sent it (the token is this command's output)
    println!("{}", String::from_utf8_lossy(&reply.line));
    if reply.ok { Ok(()) } else { Err(1) }
}

/// `screengate demo-backend` (tests and benchmarks).
pub fn demo_backend(unix: &Path) -> Outcome {
    // It binds a socket: never as root, like every such command.
    secure_start(&as_user(None))?;
    init_tracing(LogFormat::Text);
    let rt = runtime()?;
    rt.block_on(async {
        let stop = terminated(None);
        crate::demo::serve_unix(unix, DEFAULT_MAX_MESSAGE, stop).await
    })
    .map_err(|e| {
        eprintln!("screengate: demo backend {}: {e}", unix.display());
        ExitKind::of_io(&e).code()
    })
}

/// `screengate serve`: load, drop privileges as the config's plan says,
/// bind, serve until SIGTERM; SIGHUP reloads.
pub fn serve(config: Option<PathBuf>, o: Overrides, log_format: LogFormat) -> Outcome {
    let log = init_tracing(log_format);
    // Socket activation: fd 3 taken and LISTEN_* unset now, while this
    // process has one thread; `Server::bind` checks it.
    let activation = crate::listen_fds::take_from_env();
    // A reload reads the same file, under the rule of the start (before
    // the drop), with the same overrides.
    let trust = Trust::for_this_process();
    let again = o.clone();
    let cfg = commands::load_config(config.as_deref(), o).map_err(|e| fail(&e))?;
    secure_start(&cfg.privilege_plan())?;
    let rt = runtime()?;
    log.set(cfg.log_level);
    if let Some(note) = activation {
        tracing::warn!("{note}");
    }
    let reloader = Reloader {
        load: Box::new(move || commands::load_config_as(config.as_deref(), again.clone(), trust)),
        set_log_level: Box::new(move |l| log.set(l)),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    rt.block_on(async move {
        let stop = terminated(Some(tx));
        Server::bind(cfg)
            .await?
            .reloading(reloader, rx)
            .serve(stop)
            .await
    })
    .map_err(|e| fail(&e))
}
