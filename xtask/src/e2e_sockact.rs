//! e2e socket-activation cases (issue 15): `screengate serve` given its
//! gateway listener as fd 3 with `LISTEN_FDS=1` and `LISTEN_PID`, as
//! `screengate.socket` does. Through `systemd-socket-activate` (systemd's
//! own tool for the protocol) a display handshake gets 101 and echoes on
//! the inherited socket; `LISTEN_PID` of another process is ignored (the
//! server binds the configured address itself); an inherited socket that
//! is not loopback, not the configured port, not listening, not TCP, or
//! more than one is refused with exit 64 and an error naming the fix.
//!
//! For the refusals the fd is mapped by `command-fds` and `LISTEN_PID` set
//! by `sh -c 'LISTEN_PID=$$ exec …'` (exec keeps the pid): no unsafe
//! pre_exec hook. Owns only these cases; the protocol is
//! `server/src/listen_fds.rs`.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd as _, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};
use screengate_tests::{Request, echo, handshake};

use super::{Case, EX_USAGE, Fx, R, case, port_and_pin, service_args};
use crate::proc::ServerProc;

const GROUP: &str = "sockact";

pub(super) const CASES: &[Case] = &[
    case!(Any "socket_activation_serves_the_display_on_the_inherited_listener" => async serves),
    case!(Any "socket_activation_for_another_pid_is_ignored_and_the_server_binds_itself" => async another_pid),
    case!(Any "socket_activation_refuses_a_non_loopback_socket" => refused, Bad::NotLoopback),
    case!(Any "socket_activation_refuses_a_socket_on_another_port" => refused, Bad::OtherPort),
    case!(Any "socket_activation_refuses_a_socket_not_listening" => refused, Bad::NotListening),
    case!(Any "socket_activation_refuses_a_udp_socket" => refused, Bad::Udp),
    case!(Any "socket_activation_refuses_a_unix_socket" => refused, Bad::Unix),
    case!(Any "socket_activation_refuses_two_sockets" => refused, Bad::Two),
];

/// The paths of one server of this group: state dir, control socket, log.
fn paths(fx: &Fx, name: &str) -> Result<(PathBuf, PathBuf, PathBuf), String> {
    let log = fx.base.join(format!("{name}.log"));
    fx.logs.lock().map_err(|e| e.to_string())?.push(log.clone());
    Ok((
        fx.base.join(format!("state-{name}")),
        fx.base.join("run").join(name).join("c.sock"),
        log,
    ))
}

/// A loopback port free a moment ago.
fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// `systemd-socket-activate -l 127.0.0.1:P screengate serve --listen
/// 127.0.0.1:P`: it binds, waits for a first connection, then execs the
/// server with LISTEN_FDS=1 and LISTEN_PID of its own (the server's) pid.
async fn serves(fx: &Fx) -> R {
    let (state, control, log) = paths(fx, "sockact-serves")?;
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.args(["-l", &listen, "-E", "RUST_LOG=debug"])
        .arg(&fx.bin)
        .args(ServerProc::serve_args(&state, &control, &listen))
        .args(service_args(fx.svc.as_ref()));
    // The first connection starts the server; it waits in the socket's
    // queue, and the server accepts and drops it (it sends nothing).
    let target: SocketAddr = listen.parse().map_err(|e| format!("{e}"))?;
    let knock = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect_timeout(&target, Duration::from_secs(1)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    });
    let s =
        tokio::task::block_in_place(|| ServerProc::spawn(cmd, &control, &log)).map_err(|e| {
            format!("{e:#} (is systemd-socket-activate installed? apt-get install systemd)")
        })?;
    if !knock.join().unwrap_or(false) {
        return Err(format!("no connection to {listen} within 20 s"));
    }
    let (got, pin) = port_and_pin(&s.control).await?;
    if got != port {
        return Err(format!(
            "the server says it serves on port {got}, not the inherited {port}"
        ));
    }
    let (t, _) = fx.mint_on(&s.control).await?;
    let (resp, ws) = handshake(target, pin, &Request::display(port, Some(&t))).await?;
    let mut ws = ws.ok_or(format!(
        "handshake on the inherited socket got {}",
        resp.status
    ))?;
    let back = echo(&mut ws, "through the socket systemd bound").await?;
    if back != "through the socket systemd bound" {
        return Err(format!("echo returned {back:?}"));
    }
    if !s.log_text().contains("from systemd (LISTEN_FDS)") {
        return Err(format!(
            "the log does not say the listener came from systemd:\n{}",
            s.log_text()
        ));
    }
    Ok(())
}

/// LISTEN_PID=1 (not the server): the variables were inherited, not meant
/// for it. fd 3 is a listening loopback socket on another port; the server
/// leaves it alone and binds `--listen 127.0.0.1:0` itself.
async fn another_pid(fx: &Fx) -> R {
    let (state, control, log) = paths(fx, "sockact-other-pid")?;
    let decoy = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let decoy_port = decoy.local_addr().map_err(|e| e.to_string())?.port();
    let mut cmd = Command::new(&fx.bin);
    cmd.args(ServerProc::serve_args(&state, &control, "127.0.0.1:0"))
        .args(service_args(fx.svc.as_ref()))
        .env("RUST_LOG", "debug")
        .env("LISTEN_FDS", "1")
        .env("LISTEN_PID", "1");
    fd3(&mut cmd, OwnedFd::from(decoy))?;
    let s = tokio::task::block_in_place(|| ServerProc::spawn(cmd, &control, &log))
        .map_err(|e| format!("{e:#}"))?;
    let (port, pin) = port_and_pin(&s.control).await?;
    if port == decoy_port {
        return Err("the server took the socket of LISTEN_PID=1".into());
    }
    let (t, _) = fx.mint_on(&s.control).await?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let (resp, ws) = handshake(addr, pin, &Request::display(port, Some(&t))).await?;
    let mut ws = ws.ok_or(format!("handshake on its own listener got {}", resp.status))?;
    echo(&mut ws, "own listener").await?;
    if !s.log_text().contains("LISTEN_FDS ignored: LISTEN_PID is 1") {
        return Err(format!(
            "the log does not say LISTEN_FDS was ignored:\n{}",
            s.log_text()
        ));
    }
    Ok(())
}

/// A wrong fd 3 (or fd count).
#[derive(Debug, Clone, Copy)]
enum Bad {
    NotLoopback,
    OtherPort,
    NotListening,
    Udp,
    Unix,
    Two,
}

/// fd 3 in the child is `fd`.
fn fd3(cmd: &mut Command, fd: OwnedFd) -> R {
    cmd.fd_mappings(vec![FdMapping {
        parent_fd: fd,
        child_fd: 3,
    }])
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// A TCP socket bound to `addr`, listening or not (never listening when
/// not loopback: nothing may reach it).
fn tcp(addr: SocketAddr, listening: bool) -> Result<OwnedFd, String> {
    if listening {
        return Ok(OwnedFd::from(
            TcpListener::bind(addr).map_err(|e| e.to_string())?,
        ));
    }
    let s = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    s.bind(addr).map_err(|e| e.to_string())?;
    s.as_fd().try_clone_to_owned().map_err(|e| e.to_string())
}

/// The server refuses to start: exit 64, the reason and a `fix:` on
/// stderr, no control socket.
fn refused(fx: &Fx, bad: Bad) -> R {
    let name = format!("sockact-{bad:?}").to_lowercase();
    let (state, control, log) = paths(fx, &name)?;
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let here = SocketAddr::from(([127, 0, 0, 1], port));
    let (fd, fds, want): (OwnedFd, &str, &str) = match bad {
        Bad::NotLoopback => (
            tcp(SocketAddr::from(([0, 0, 0, 0], port)), false)?,
            "1",
            "not a loopback address",
        ),
        Bad::OtherPort => {
            let other = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            (
                tcp(other, true)?,
                "1",
                "but the configured listen address is",
            )
        }
        Bad::NotListening => (tcp(here, false)?, "1", "not listening"),
        Bad::Udp => {
            let u = std::net::UdpSocket::bind(here).map_err(|e| e.to_string())?;
            (OwnedFd::from(u), "1", "not a valid tcp socket")
        }
        Bad::Unix => {
            let p = fx.base.join(format!("{name}.sock"));
            let _ = std::fs::remove_file(&p);
            let u = std::os::unix::net::UnixListener::bind(&p).map_err(|e| e.to_string())?;
            (OwnedFd::from(u), "1", "not a valid tcp socket")
        }
        Bad::Two => (tcp(here, true)?, "2", "exactly one socket"),
    };
    let logf = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let mut cmd = Command::new("sh");
    // exec keeps the shell's pid: LISTEN_PID names the server itself.
    cmd.args(["-c", r#"LISTEN_PID=$$ exec "$0" "$@""#])
        .arg(&fx.bin)
        .args(ServerProc::serve_args(&state, &control, &listen))
        .args(service_args(fx.svc.as_ref()))
        .env("LISTEN_FDS", fds)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logf);
    fd3(&mut cmd, fd)?;
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{bad:?}: the server did not exit within 20 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = std::fs::read_to_string(&log).unwrap_or_default();
    if status.code() != Some(EX_USAGE) {
        return Err(format!("{bad:?}: exit {status}, want {EX_USAGE}:\n{err}"));
    }
    if !err.contains(want) || !err.contains("fix:") || !err.contains("LISTEN_FDS") {
        return Err(format!("{bad:?}: stderr lacks `{want}` and a fix:\n{err}"));
    }
    if control.exists() {
        return Err(format!(
            "{bad:?}: a control socket was left at {}",
            control.display()
        ));
    }
    let line = err.lines().find(|l| l.contains(want)).unwrap_or_default();
    println!("      ({line})");
    Ok(())
}
