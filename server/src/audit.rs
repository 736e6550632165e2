//! The audit log: one `tracing` target, `screengate::audit`, for every mint,
//! accepted session and rejection. Events carry a reason, the peer and a
//! token-id prefix, never token bytes or key material.

/// The tracing target of audit events.
pub const TARGET: &str = "screengate::audit";

/// Emits an audit event at INFO (`accepted`, `mint`) or WARN (rejections).
#[macro_export]
macro_rules! audit {
    (warn, $($arg:tt)+) => { ::tracing::warn!(target: "screengate::audit", $($arg)+) };
    (info, $($arg:tt)+) => { ::tracing::info!(target: "screengate::audit", $($arg)+) };
}
