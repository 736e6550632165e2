//! `screengate-launch`: placeholder binary until the launcher issue lands.
//!
//! It deliberately does nothing but say so and exit non-zero, so no script
//! can mistake it for a working launcher.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    eprintln!(
        "screengate-launch: not built yet (see the launcher issue); use `screengate mint` for now"
    );
    std::process::ExitCode::from(69)
}
