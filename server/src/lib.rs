//! screengate server: the token authority, the control socket, the TLS
//! WebSocket gateway with its guard, and the proxy to the SDK backend.
//!
//! Entry points: [`run`] (bind then serve until `shutdown` resolves) and
//! [`Server::bind`] + [`Server::serve`] for tests that need the bound port.
//! `main.rs` only parses arguments and calls into [`cli`]; exit codes are
//! [`exit`]'s.
//!
//! What this crate leaves to others: token format and checks
//! (`screengate-token`), keys, certificates and file rules
//! (`screengate-identity`), spawning browsers (`screengate-launcher`).
#![forbid(unsafe_code)]

pub mod audit;
mod backend;
mod backend_tls;
pub mod cli;
pub mod commands;
pub mod config;
pub mod control;
pub mod demo;
mod error;
pub mod exit;
mod gate;
mod gateway;
mod limits;
pub mod listen_fds;
mod live;
pub mod logfmt;
mod native;
pub mod peer_uid;
mod pending;
pub mod privilege;
mod proxy;
mod reload;
mod roster;
mod server;
mod session;
mod state;
mod tls;
mod web;

pub use config::{BackendSpec, Config, ConfigError, Overrides};
pub use error::ServerError;
pub use limits::*;
pub use live::Reloader;
pub use server::{Server, run};

/// Small helpers on identity outcomes for the command line.
pub trait InitOutcomeExt {
    /// True when `init` found a complete identity and wrote nothing.
    fn is_noop(&self) -> bool;
}

impl InitOutcomeExt for screengate_identity::InitOutcome {
    fn is_noop(&self) -> bool {
        matches!(self, screengate_identity::InitOutcome::AlreadyPresent)
    }
}
