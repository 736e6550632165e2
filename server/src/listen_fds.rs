//! systemd socket activation of the gateway listener (the `sd_listen_fds`
//! protocol): `LISTEN_PID` naming this process and `LISTEN_FDS=1` hand it
//! the gateway's TCP socket as fd 3 (`dist/systemd/screengate.socket`),
//! so the unit needs no `AF_INET`/`AF_INET6` (docs/hardening.md).
//!
//! Owns reading and unsetting the variables, taking fd 3 (through the
//! `listenfd` crate: the server forbids unsafe code) and checking that it
//! is a listening TCP socket on the configured loopback address. Binding a
//! listener of our own when nothing is passed, and serving, stay in
//! `server.rs` and `gateway.rs`.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Mutex;

/// The one fd the protocol passes first.
const FD: i32 = 3;

/// What the environment says, before any fd is touched.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// No `LISTEN_FDS`, or `LISTEN_FDS=0`: bind as configured.
    Absent,
    /// `LISTEN_PID` names another process (or none): the variables were
    /// inherited, not meant for us; bind as configured.
    NotOurs(String),
    /// One socket for us.
    Ours,
    /// Malformed, or more sockets than the one gateway listener.
    Invalid(String),
}

fn parse(listen_pid: Option<&str>, listen_fds: Option<&str>, our_pid: u32) -> Parsed {
    let Some(fds) = listen_fds else {
        return Parsed::Absent;
    };
    let Ok(n) = fds.trim().parse::<u32>() else {
        return Parsed::Invalid(format!("LISTEN_FDS=`{fds}` is not a number of sockets"));
    };
    let pid = match listen_pid {
        None | Some("") => return Parsed::NotOurs("unset".into()),
        Some(p) => p,
    };
    match pid.trim().parse::<u32>() {
        Ok(p) if p == our_pid => {}
        Ok(_) => return Parsed::NotOurs(pid.to_owned()),
        Err(_) => {
            return Parsed::Invalid(format!("LISTEN_PID=`{pid}` is not a process id"));
        }
    }
    match n {
        0 => Parsed::Absent,
        1 => Parsed::Ours,
        n => Parsed::Invalid(format!(
            "LISTEN_FDS={n}: screengate takes exactly one socket, the gateway listener \
             (one ListenStream= in screengate.socket)"
        )),
    }
}

/// The gateway socket passed by the service manager, as taken from the
/// environment at start: `Ok(None)` when none was passed for us.
pub(crate) type Inherited = Result<Option<std::net::TcpListener>, String>;

static TAKEN: Mutex<Option<Inherited>> = Mutex::new(None);

/// Reads `LISTEN_PID`/`LISTEN_FDS`, takes fd 3 when they name this
/// process, and unsets both (children never see them). Call once, first
/// thing in `serve`, while the process has one thread (unsetting the
/// environment is only sound then); [`Server::bind`](crate::Server::bind)
/// picks the result up. Returns a line for the log when the variables
/// were there but not meant for us.
pub fn take_from_env() -> Option<String> {
    let parsed = parse(
        std::env::var("LISTEN_PID").ok().as_deref(),
        std::env::var("LISTEN_FDS").ok().as_deref(),
        std::process::id(),
    );
    // `from_env` unsets both variables whenever LISTEN_FDS is a number.
    // It also accepts a missing LISTEN_PID, which we do not: its fds are
    // only taken below, after our own stricter parse said `Ours`.
    let mut fds = listenfd::ListenFd::from_env();
    let (taken, note) = match parsed {
        Parsed::Absent => (Ok(None), None),
        Parsed::NotOurs(pid) => (
            Ok(None),
            Some(format!(
                "LISTEN_FDS ignored: LISTEN_PID is {pid}, not this process ({}); binding the configured listen address",
                std::process::id()
            )),
        ),
        Parsed::Invalid(why) => (Err(why), None),
        Parsed::Ours => match fds.take_tcp_listener(0) {
            Ok(Some(l)) => (Ok(Some(l)), None),
            Ok(None) => (Err(format!("fd {FD} was already taken")), None),
            Err(e) => (
                Err(format!("{e}: expected a TCP stream socket (ListenStream=)")),
                None,
            ),
        },
    };
    *TAKEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(taken);
    note
}

/// What [`take_from_env`] found, once (`Ok(None)` if it never ran).
pub(crate) fn inherited() -> Inherited {
    TAKEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
        .unwrap_or(Ok(None))
}

/// Why an inherited socket is refused, before the fix is appended.
fn refusal(local: SocketAddr, listen: SocketAddr, listening: bool) -> Option<String> {
    if !local.ip().is_loopback() {
        return Some(format!(
            "it is bound to {local}, not a loopback address; screengate only listens on 127.0.0.0/8 or ::1"
        ));
    }
    if local != listen {
        return Some(format!(
            "it is bound to {local}, but the configured listen address is {listen}"
        ));
    }
    if !listening {
        return Some(format!("it is bound to {local} but not listening"));
    }
    None
}

/// Checks an inherited socket against the configured `listen` address and
/// makes it the gateway's tokio listener, with the same listen backlog as
/// a listener we bind ourselves.
pub(crate) fn adopt(
    l: std::net::TcpListener,
    listen: SocketAddr,
) -> Result<tokio::net::TcpListener, String> {
    let local = l.local_addr().map_err(|e| format!("getsockname: {e}"))?;
    let listening = nix::sys::socket::getsockopt(&l.as_fd(), nix::sys::socket::sockopt::AcceptConn)
        .map_err(|e| format!("SO_ACCEPTCONN: {e}"))?;
    if let Some(why) = refusal(local, listen, listening) {
        return Err(why);
    }
    // listen(2) again on a listening socket only sets its backlog: the
    // same as `bind_tcp` asks for, whatever the socket unit said.
    let backlog = i32::try_from(crate::limits::LISTEN_BACKLOG)
        .ok()
        .and_then(|b| nix::sys::socket::Backlog::new(b).ok())
        .unwrap_or(nix::sys::socket::Backlog::MAXCONN);
    nix::sys::socket::listen(&l.as_fd(), backlog).map_err(|e| format!("listen: {e}"))?;
    l.set_nonblocking(true)
        .map_err(|e| format!("O_NONBLOCK: {e}"))?;
    tokio::net::TcpListener::from_std(l).map_err(|e| format!("register with the runtime: {e}"))
}

/// The fix named in every refusal.
pub(crate) const FIX: &str = "fix: make ListenStream= in screengate.socket equal [gateway] listen \
     (a loopback IP:PORT) and run `systemctl daemon-reload`, or start screengate without \
     LISTEN_FDS/LISTEN_PID to let it bind the address itself";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_without_listen_fds() {
        assert_eq!(parse(None, None, 7), Parsed::Absent);
        assert_eq!(parse(Some("7"), None, 7), Parsed::Absent);
        assert_eq!(parse(Some("7"), Some("0"), 7), Parsed::Absent);
    }

    #[test]
    fn ours_only_with_our_pid_and_one_fd() {
        assert_eq!(parse(Some("7"), Some("1"), 7), Parsed::Ours);
        assert_eq!(parse(Some(" 7 "), Some("1\n"), 7), Parsed::Ours);
    }

    #[test]
    fn another_pid_or_none_is_not_ours() {
        for pid in [Some("8"), Some("1"), Some(""), None] {
            assert!(
                matches!(parse(pid, Some("1"), 7), Parsed::NotOurs(_)),
                "{pid:?}"
            );
        }
    }

    #[test]
    fn malformed_values_are_invalid() {
        for (pid, fds) in [
            (Some("7"), "one"),
            (Some("7"), "-1"),
            (Some("7"), ""),
            (Some("seven"), "1"),
            (Some("-7"), "1"),
            (Some("7"), "99999999999"),
        ] {
            assert!(
                matches!(parse(pid, Some(fds), 7), Parsed::Invalid(_)),
                "{pid:?} {fds}"
            );
        }
    }

    #[test]
    fn more_than_one_socket_is_invalid_and_says_so() {
        match parse(Some("7"), Some("2"), 7) {
            Parsed::Invalid(why) => assert!(why.contains("exactly one socket"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refusals_name_the_problem() {
        let want = SocketAddr::from(([127, 0, 0, 1], 8933));
        assert_eq!(refusal(want, want, true), None);
        let v6: SocketAddr = ([0u16, 0, 0, 0, 0, 0, 0, 1], 8933).into();
        assert_eq!(refusal(v6, v6, true), None);
        for local in [
            SocketAddr::from(([0, 0, 0, 0], 8933)),
            SocketAddr::from(([192, 168, 1, 2], 8933)),
            SocketAddr::from(([0u16; 8], 8933)),
        ] {
            let why = refusal(local, want, true).unwrap_or_default();
            assert!(why.contains("not a loopback address"), "{local}: {why}");
        }
        let other_port = SocketAddr::from(([127, 0, 0, 1], 8934));
        let why = refusal(other_port, want, true).unwrap_or_default();
        assert!(
            why.contains("configured listen address is 127.0.0.1:8933"),
            "{why}"
        );
        let other_ip = SocketAddr::from(([127, 0, 0, 2], 8933));
        assert!(refusal(other_ip, want, true).is_some());
        let why = refusal(want, want, false).unwrap_or_default();
        assert!(why.contains("not listening"), "{why}");
    }

    #[test]
    fn adopts_a_listening_loopback_socket_and_refuses_others() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let l2 = l.try_clone().unwrap();
            let other = SocketAddr::from(([127, 0, 0, 1], addr.port().wrapping_add(1)));
            let why = adopt(l2, other).err().unwrap_or_default();
            assert!(why.contains("configured listen address"), "{why}");
            let adopted = adopt(l, addr).unwrap();
            assert_eq!(adopted.local_addr().unwrap(), addr);
            // Bound, not listening: refused.
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
            let std_l = std::net::TcpListener::from(s.as_fd().try_clone_to_owned().unwrap());
            drop(s);
            let bound = std_l.local_addr().unwrap();
            let why = adopt(std_l, bound).err().unwrap_or_default();
            assert!(why.contains("not listening"), "{why}");
        });
    }
}
