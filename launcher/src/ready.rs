//! What systemd is told (`Type=notify`, over `screengate-notify`):
//! `READY=1` once, when the display's first authenticated message has
//! arrived (a gateway WebSocket answered 101 and its first frame came in);
//! `STATUS=` as the launcher waits, connects and restarts; `WATCHDOG=1`
//! from a task on the launcher's runtime at half `$WATCHDOG_USEC`;
//! `STOPPING=1` on the way out. Without `$NOTIFY_SOCKET` all are no-ops.
//!
//! Owns: the wording and the once-only `READY=1`. Leaves to others: when
//! the display connects (`events`), when the browser restarts and when the
//! launcher stops (`supervise`). Chromium never gets `$NOTIFY_SOCKET` (its
//! environment is an allow-list, `chromium.rs`), and the unit says
//! `NotifyAccess=main`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use screengate_notify::Notifier;

use crate::supervise::AbortOnDrop;

/// The launcher's side of the notify protocol.
#[derive(Debug)]
pub(crate) struct Readiness {
    notifier: Notifier,
    ready: AtomicBool,
    stopping: AtomicBool,
}

impl Readiness {
    /// From `$NOTIFY_SOCKET` / `$WATCHDOG_USEC`.
    pub fn from_env() -> Readiness {
        Readiness {
            notifier: Notifier::from_env(),
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        }
    }

    /// A `STATUS=` line (one line: newlines would start a new assignment).
    pub fn status(&self, what: &str) {
        self.notifier.send(&status_line(what));
    }

    /// The display received its first message on session `n`: `READY=1`
    /// the first time, a status line every time.
    pub fn display_connected(&self, n: u64) {
        let first = !self.ready.swap(true, Ordering::SeqCst);
        let status = status_line(&format!("display connected (session {n})"));
        if first {
            self.notifier.send(&format!("READY=1\n{status}"));
        } else {
            self.notifier.send(&status);
        }
    }

    /// The launcher is stopping (said once).
    pub fn stopping(&self) {
        if !self.stopping.swap(true, Ordering::SeqCst) {
            self.notifier.send("STOPPING=1\nSTATUS=stopping");
        }
    }

    /// Pings `WATCHDOG=1` at half the interval systemd asked for, from a
    /// task on this runtime (a wedged runtime stops pinging); none if it
    /// did not ask. The pings stop when the returned guard drops.
    pub fn watchdog(self: &Arc<Self>) -> Option<AbortOnDrop> {
        let every = self.notifier.ping_every()?;
        let me = self.clone();
        Some(AbortOnDrop(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.notifier.send("WATCHDOG=1");
            }
        })))
    }
}

/// `STATUS=what`, with any line break flattened to a space.
fn status_line(what: &str) -> String {
    let flat: String = what
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    format!("STATUS={flat}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(s: &std::os::unix::net::UnixDatagram) -> Option<String> {
        let mut buf = [0u8; 512];
        let n = s.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    #[test]
    fn ready_is_sent_once_on_the_first_message_only() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("notify");
        let rx = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let r = Readiness {
            notifier: Notifier::from_vars(Some(path.as_os_str()), None, None),
            ready: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        };
        r.status("waiting for the display's first message");
        assert_eq!(
            recv(&rx).as_deref(),
            Some("STATUS=waiting for the display's first message")
        );
        r.display_connected(1);
        assert_eq!(
            recv(&rx).as_deref(),
            Some("READY=1\nSTATUS=display connected (session 1)")
        );
        r.status("browser restarting (1)");
        r.display_connected(2);
        assert_eq!(recv(&rx).as_deref(), Some("STATUS=browser restarting (1)"));
        assert_eq!(
            recv(&rx).as_deref(),
            Some("STATUS=display connected (session 2)")
        );
        r.stopping();
        r.stopping();
        r.status("after");
        assert_eq!(recv(&rx).as_deref(), Some("STOPPING=1\nSTATUS=stopping"));
        // STOPPING=1 once: the next datagram is the status sent after it
        assert_eq!(recv(&rx).as_deref(), Some("STATUS=after"));
    }

    #[test]
    fn a_status_is_one_line() {
        assert_eq!(status_line("a\nREADY=1\r\nb"), "STATUS=a READY=1  b");
        assert_eq!(status_line("display connected"), "STATUS=display connected");
    }
}
