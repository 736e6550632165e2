//! `screengate-launch`: argument parsing and tracing only; the work is in
//! `screengate_launcher::run`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use screengate_launcher::{Options, run};

#[derive(Parser)]
#[command(
    name = "screengate-launch",
    version,
    about = "Start Chromium on the screengate display app, handing it the session token out of band over CDP."
)]
struct Cli {
    /// The screengate control socket.
    #[arg(long)]
    control: Option<PathBuf>,
    /// The uid the screengate server runs as. The control socket's
    /// directory must be owned by root or this uid, and the process on the
    /// socket must be this uid (default: the directory's owner).
    #[arg(long)]
    server_uid: Option<u32>,
    /// The Chromium binary (default: search the usual paths).
    #[arg(long)]
    chromium: Option<PathBuf>,
    /// Run Chromium headless (tests, CI, devices without a display).
    #[arg(long)]
    headless: bool,
    /// Full-screen kiosk window.
    #[arg(long)]
    kiosk: bool,
    /// Window size, W,H.
    #[arg(long, default_value = "1280,800")]
    window_size: String,
    /// Extra Chromium argument (repeatable); ones that undo the protection are refused.
    #[arg(long = "chromium-arg", allow_hyphen_values = true)]
    chromium_arg: Vec<String>,
    /// Write a PNG of the page once it is connected.
    #[arg(long)]
    screenshot: Option<PathBuf>,
}

fn main() -> ExitCode {
    // Non-dumpable: no ptrace or /proc/PID/{mem,environ,fd} for other
    // processes of the display user, and no core file with a token in it.
    if let Err(e) = nix::sys::prctl::set_dumpable(false).and_then(|()| {
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0)
    }) {
        eprintln!("screengate-launch: cannot make the process non-dumpable: {e}");
        return ExitCode::FAILURE;
    }
    // Files Chromium creates in the profile (cookies, caches, prefs) are
    // then owner-only too; wider modes are set explicitly (the screenshot).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // RUST_LOG: one level, default info (see screengate's main.rs for why).
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
    let cli = Cli::parse();
    let opts = Options {
        control: cli
            .control
            .unwrap_or_else(screengate_launcher::default_control),
        server_uid: screengate_launcher::ServerUid(cli.server_uid),
        chromium: cli.chromium,
        headless: cli.headless,
        kiosk: cli.kiosk,
        window_size: cli.window_size,
        chromium_args: cli.chromium_arg,
        screenshot: cli.screenshot,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("screengate-launch: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("screengate-launch: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
