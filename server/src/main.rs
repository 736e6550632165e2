//! `screengate`: the argument grammar, the dispatch and the exit code only;
//! what each command does is `screengate_server::cli`, and which code an
//! error exits with is decided in the library (`screengate_server::exit`).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use screengate_server::Overrides;
use screengate_server::cli::{self, LogFormat};

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
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
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
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        state_dir: Option<PathBuf>,
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

fn main() -> ExitCode {
    // Once, first, while the process has one thread: every file and socket
    // is born owner-only; wider modes (0644 certificates, 0660/0711 socket
    // paths) are set explicitly where they are made. Nothing changes the
    // umask after this.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let done = match Cli::parse().cmd {
        Cmd::Init {
            state_dir,
            user,
            force,
        } => cli::init(&state_dir, user, force),
        Cmd::Rotate { state_dir, user } => cli::rotate(&state_dir, user),
        Cmd::Reset { state_dir, user } => cli::reset(&state_dir, user),
        Cmd::Pin { state_dir, client } => cli::pin(state_dir, client),
        Cmd::Serve {
            config,
            overrides,
            log_format,
        } => cli::serve(config, overrides, log_format),
        Cmd::Mint { control, channel } => cli::mint(control, channel),
        Cmd::Check {
            config,
            state_dir,
            user,
        } => cli::check(config.as_deref(), state_dir, user),
        Cmd::DemoBackend { unix } => cli::demo_backend(&unix),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => ExitCode::from(code),
    }
}
