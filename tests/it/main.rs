//! The one integration-test binary: the whole server in-process on port 0,
//! driven by the real TLS WebSocket client from `screengate-tests`.
//!
//! The exhaustive refusal matrix against the real binary lives in
//! `cargo xtask e2e`; these tests cover the library entry points, the
//! control protocol, headers and lifecycle.

// Test helpers outside #[test] functions may unwrap: a failure there is a
// test failure, which is the point.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod control;
mod gateway;
mod harness;
mod lifecycle;
