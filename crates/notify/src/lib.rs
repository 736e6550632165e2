//! systemd's notify protocol (`sd_notify`), without libsystemd: one
//! datagram per state change to `$NOTIFY_SOCKET` (a path, or `@name` in
//! the abstract namespace), and the watchdog interval systemd asked for
//! (`$WATCHDOG_USEC`, pinged at half of it). Without `$NOTIFY_SOCKET` (not
//! started by systemd) every call is a no-op.
//!
//! Shared by the server (`screengate`: ready once its sockets are bound)
//! and the launcher (`screengate-launch`: ready once the display's first
//! message arrived). What it leaves to them: when they are ready and
//! stopping, what their `STATUS=` says, and which task pings the watchdog
//! (each pings from its own runtime, so a wedged runtime stops pinging and
//! systemd restarts it). What the units ask for is in `dist/systemd`.
#![forbid(unsafe_code)]

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// The longest one state message waits for room in the manager's queue.
pub const SEND_WAIT: Duration = Duration::from_millis(500);

/// A connection to the service manager, if there is one.
#[derive(Debug)]
pub struct Notifier {
    to: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From the environment systemd set: `NOTIFY_SOCKET`, and
    /// `WATCHDOG_USEC` (only if `WATCHDOG_PID` is unset or ours).
    pub fn from_env() -> Notifier {
        Notifier::from_vars(
            std::env::var_os("NOTIFY_SOCKET").as_deref(),
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
        )
    }

    /// From those variables' values, as [`Notifier::from_env`] reads them
    /// (a test passes its own socket; the environment is process-wide).
    pub fn from_vars(
        notify_socket: Option<&std::ffi::OsStr>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
    ) -> Notifier {
        let to = notify_socket.and_then(|p| {
            let p = p.to_string_lossy().into_owned();
            let addr = match p.strip_prefix('@') {
                Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
                None => SocketAddr::from_pathname(&p),
            };
            // A bounded wait: a manager that stops reading fills the queue
            // (net.unix.max_dgram_qlen, 10 on some systems), and an
            // unbounded send would wedge the runtime thread that sends
            // (libsystemd's sd_notify waits forever); not waiting at all
            // would lose a READY=1 in a burst at boot.
            let sock = UnixDatagram::unbound()
                .and_then(|s| s.set_write_timeout(Some(SEND_WAIT)).map(|()| s));
            match (sock, addr) {
                (Ok(s), Ok(a)) => Some((s, a)),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "NOTIFY_SOCKET is set but unusable; not notifying");
                    None
                }
            }
        });
        let ours = watchdog_pid.is_none_or(|p| p.trim() == std::process::id().to_string());
        let watchdog = watchdog_usec
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|u| *u > 0 && ours)
            .map(Duration::from_micros);
        Notifier { to, watchdog }
    }

    /// Sends one state message, waiting at most [`SEND_WAIT`] for room;
    /// failures (a queue still full included) are logged, never fatal (the
    /// service manager restarting or not reading must not stop serving).
    pub fn send(&self, state: &str) {
        if let Some((s, addr)) = &self.to
            && let Err(e) = s.send_to_addr(state.as_bytes(), addr)
        {
            tracing::debug!(error = %e, "notify: could not send");
        }
    }

    /// Half the watchdog interval systemd asked for, if it asked.
    pub fn ping_every(&self) -> Option<Duration> {
        self.to.as_ref().and(self.watchdog).map(|w| w / 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(s: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let n = s.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_to_a_path_and_to_an_abstract_name() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            to: Some((
                UnixDatagram::unbound().unwrap(),
                SocketAddr::from_pathname(&path).unwrap(),
            )),
            watchdog: Some(Duration::from_secs(4)),
        };
        n.send("READY=1\nSTATUS=serving");
        assert_eq!(recv(&listener), "READY=1\nSTATUS=serving");
        assert_eq!(n.ping_every(), Some(Duration::from_secs(2)));
        let name = format!("screengate-notify-test-{}", std::process::id());
        let abs = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&abs).unwrap();
        let n = Notifier {
            to: Some((UnixDatagram::unbound().unwrap(), abs)),
            watchdog: None,
        };
        n.send("WATCHDOG=1");
        assert_eq!(recv(&listener), "WATCHDOG=1");
        assert_eq!(n.ping_every(), None);
    }

    #[test]
    fn from_vars_reads_what_systemd_sets() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let me = std::process::id().to_string();
        let n = Notifier::from_vars(Some(path.as_os_str()), Some("3000000"), Some(&me));
        n.send("READY=1");
        assert_eq!(recv(&listener), "READY=1");
        assert_eq!(n.ping_every(), Some(Duration::from_millis(1500)));
        // no PID: ours; another PID, zero, junk: no watchdog
        let n = Notifier::from_vars(Some(path.as_os_str()), Some("3000000"), None);
        assert_eq!(n.ping_every(), Some(Duration::from_millis(1500)));
        for (usec, pid) in [
            (Some("3000000"), Some("1")),
            (Some("0"), None),
            (Some("x"), None),
            (Some("-5"), None),
            (None, None),
        ] {
            let n = Notifier::from_vars(Some(path.as_os_str()), usec, pid);
            assert_eq!(n.ping_every(), None, "{usec:?} {pid:?}");
        }
        // no socket: no watchdog either, and sending is a no-op
        let n = Notifier::from_vars(None, Some("3000000"), None);
        assert_eq!(n.ping_every(), None);
        n.send("READY=1");
    }

    /// A receiver that stops reading (a wedged or hostile service
    /// manager): once its queue is full a send gives up after
    /// [`SEND_WAIT`] instead of blocking the runtime thread that called
    /// it (the watchdog task, the launcher's event loop) for good.
    #[test]
    fn a_receiver_that_never_reads_never_blocks_a_send() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("notify");
        let _deaf = UnixDatagram::bind(&path).unwrap();
        // fill its queue (net.unix.max_dgram_qlen) from a socket of our own
        let filler = UnixDatagram::unbound().unwrap();
        filler.set_nonblocking(true).unwrap();
        let mut queued = 0;
        while filler.send_to(b"STATUS=filler", &path).is_ok() {
            queued += 1;
            assert!(queued < 1_000_000, "the queue never filled");
        }
        let n = Notifier::from_vars(Some(path.as_os_str()), None, None);
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for _ in 0..3 {
                n.send("WATCHDOG=1");
            }
            let _ = done.send(());
        });
        // a hang guard, not a timing claim: three bounded waits
        assert!(
            finished.recv_timeout(Duration::from_secs(60)).is_ok(),
            "a send blocked on a full notify queue"
        );
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_no_watchdog_runs() {
        let n = Notifier {
            to: None,
            watchdog: Some(Duration::from_secs(4)),
        };
        n.send("READY=1");
        assert_eq!(n.ping_every(), None);
    }
}
