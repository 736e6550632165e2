//! Which uid owns the other end of a loopback TCP connection, asked of the
//! kernel: first `sock_diag` (netlink, an exact lookup by address pair whose
//! cost does not grow with the number of sockets), else the socket table
//! (`/proc/net/tcp`, `/proc/net/tcp6`, linear in it), read and parsed here.
//!
//! On loopback both ends of a connection are sockets of this machine, so
//! the kernel knows the uid behind each. The gateway uses this to bind a
//! session to the display's uid (the peer socket of an accepted
//! connection); the backend connector uses it to authenticate the SDK (the
//! peer socket of our connection, which an accepted socket inherits from
//! the listener that its owner created).
//!
//! What it leaves to others: deciding what a uid may do (the gate), and
//! Unix sockets (their peer uid is `SO_PEERCRED`, asked of the socket).
//!
//! Cost: one netlink request and reply per lookup (socket, send, recv,
//! close); the table fallback reads the whole table, linear in the number
//! of TCP sockets on the machine (both measured by `cargo xtask bench
//! peer-uid`, see docs/performance.md). The fallback is for kernels or
//! sandboxes without `AF_NETLINK`; the shipped unit allows it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Largest socket table read; a bigger one is refused rather than buffered.
pub const MAX_SOCKET_TABLE: u64 = 16 * 1024 * 1024;

/// Why the owner of a socket could not be told.
#[derive(Debug, thiserror::Error)]
pub enum PeerUidError {
    /// The socket table could not be read (e.g. `/proc` not mounted, or
    /// hidden by a sandbox such as systemd's `ProcSubset=pid`).
    #[error("cannot read {path}: {source}")]
    Read {
        /// The table's path.
        path: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// No live socket with that address pair is in the table (it closed,
    /// or it is not on this machine).
    #[error("no socket {local} -> {remote} in the kernel's table")]
    NotFound {
        /// The looked-for socket's own address.
        local: SocketAddr,
        /// The address it is connected to.
        remote: SocketAddr,
    },
}

/// The uid owning the TCP socket whose own address is `local` and whose
/// peer is `remote`. For the client end of a connection we accepted, pass
/// (the client's address, our address); for the server end of a connection
/// we made, pass (the server's address, our address).
pub fn tcp_socket_owner(local: SocketAddr, remote: SocketAddr) -> Result<u32, PeerUidError> {
    match sock_diag_owner(local, remote) {
        Ok(Some(uid)) => Ok(uid),
        Ok(None) => Err(PeerUidError::NotFound { local, remote }),
        Err(_) => table_owner(local, remote),
    }
}

/// How long the kernel may take to answer one `sock_diag` request (it
/// answers within the send; this is the deadline on the receive).
const SOCK_DIAG_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// `SOCK_DIAG_BY_FAMILY`, `NLM_F_REQUEST`, `NLMSG_ERROR`, `TCP_LISTEN`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const TCP_LISTEN: u8 = 10;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;

/// The owner by `sock_diag`: `Ok(None)` when the kernel has no such live
/// socket; `Err` when netlink itself is unavailable (then the caller falls
/// back to the table). An IPv4 pair is also looked for as IPv4-mapped IPv6
/// (a dual-stack socket).
pub fn sock_diag_owner(local: SocketAddr, remote: SocketAddr) -> std::io::Result<Option<u32>> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, netlink, sockopt};
    let fd = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(netlink::SOCK_DIAG),
    )?;
    sockopt::set_socket_timeout(&fd, sockopt::Timeout::Recv, Some(SOCK_DIAG_TIMEOUT))?;
    let (l, r) = (canon(local), canon(remote));
    let mut queries = vec![(l, r)];
    if let (IpAddr::V4(a), IpAddr::V4(b)) = (l.ip(), r.ip()) {
        queries.push((
            SocketAddr::new(IpAddr::V6(a.to_ipv6_mapped()), l.port()),
            SocketAddr::new(IpAddr::V6(b.to_ipv6_mapped()), r.port()),
        ));
    }
    for (seq, (l, r)) in (1u32..).zip(queries) {
        let req = diag_request(l, r, seq);
        rustix::net::send(&fd, &req, rustix::net::SendFlags::empty())?;
        let mut buf = [0u8; 1024];
        let (n, _) = rustix::net::recv(&fd, &mut buf[..], rustix::net::RecvFlags::empty())?;
        match parse_diag_reply(buf.get(..n).unwrap_or(&[]), l, r, seq) {
            DiagReply::Owner(uid) => return Ok(Some(uid)),
            DiagReply::NoSuchSocket => continue,
            DiagReply::Failed(errno) => return Err(std::io::Error::from_raw_os_error(errno)),
        }
    }
    Ok(None)
}

fn family_and_bytes(a: SocketAddr) -> (u8, [u8; 16]) {
    let mut b = [0u8; 16];
    match a.ip() {
        IpAddr::V4(v4) => {
            b[..4].copy_from_slice(&v4.octets());
            (AF_INET, b)
        }
        IpAddr::V6(v6) => (AF_INET6, v6.octets()),
    }
}

/// `nlmsghdr` + `inet_diag_req_v2` for the one socket whose own address
/// is `local` and whose peer is `remote`, in any state.
fn diag_request(local: SocketAddr, remote: SocketAddr, seq: u32) -> [u8; 72] {
    let mut m = [0u8; 72];
    let (family, src) = family_and_bytes(local);
    let (_, dst) = family_and_bytes(remote);
    m[0..4].copy_from_slice(&72u32.to_ne_bytes());
    m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0: to the kernel
    m[16] = family;
    m[17] = IPPROTO_TCP;
    m[20..24].copy_from_slice(&u32::MAX.to_ne_bytes()); // all states
    m[24..26].copy_from_slice(&local.port().to_be_bytes());
    m[26..28].copy_from_slice(&remote.port().to_be_bytes());
    m[28..44].copy_from_slice(&src);
    m[44..60].copy_from_slice(&dst);
    // idiag_if 0; cookie INET_DIAG_NOCOOKIE
    m[64..72].copy_from_slice(&[0xff; 8]);
    m
}

/// What the kernel answered to one request.
#[derive(Debug, PartialEq, Eq)]
enum DiagReply {
    Owner(u32),
    NoSuchSocket,
    Failed(i32),
}

/// Parses the reply to [`diag_request`]: an `inet_diag_msg` for exactly
/// that address pair (not a listener, not a socket without an inode, such
/// as a TIME_WAIT remnant), or an `NLMSG_ERROR` (ENOENT: no such socket).
fn parse_diag_reply(b: &[u8], local: SocketAddr, remote: SocketAddr, seq: u32) -> DiagReply {
    let u16_at = |i: usize| {
        b.get(i..i + 2)
            .and_then(|s| s.try_into().ok())
            .map(u16::from_ne_bytes)
    };
    let u32_at = |i: usize| {
        b.get(i..i + 4)
            .and_then(|s| s.try_into().ok())
            .map(u32::from_ne_bytes)
    };
    let bad = DiagReply::Failed(nix::libc::EPROTO);
    let (Some(len), Some(kind), Some(rseq)) = (u32_at(0), u16_at(4), u32_at(8)) else {
        return bad;
    };
    if usize::try_from(len).map_or(true, |l| l > b.len()) || rseq != seq {
        return bad;
    }
    if kind == NLMSG_ERROR {
        let errno = u32_at(16).map_or(0, |e| (e as i32).wrapping_neg());
        return if errno == nix::libc::ENOENT {
            DiagReply::NoSuchSocket
        } else {
            DiagReply::Failed(errno)
        };
    }
    if kind != SOCK_DIAG_BY_FAMILY || b.len() < 88 {
        return bad;
    }
    let (_, src) = family_and_bytes(local);
    let (_, dst) = family_and_bytes(remote);
    let same = b.get(20..22) == Some(&local.port().to_be_bytes()[..])
        && b.get(22..24) == Some(&remote.port().to_be_bytes()[..])
        && b.get(24..40) == Some(&src[..])
        && b.get(40..56) == Some(&dst[..]);
    let state = b.get(17).copied().unwrap_or(TCP_LISTEN);
    match (same, state, u32_at(80), u32_at(84)) {
        (true, s, Some(uid), Some(inode)) if s != TCP_LISTEN && inode != 0 => DiagReply::Owner(uid),
        _ => DiagReply::NoSuchSocket,
    }
}

fn canon(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(a, |v4| SocketAddr::new(IpAddr::V4(v4), a.port())),
        IpAddr::V4(_) => a,
    }
}

/// The owner from the socket table (the fallback when netlink is not
/// available). Linear in the number of TCP sockets.
pub fn table_owner(local: SocketAddr, remote: SocketAddr) -> Result<u32, PeerUidError> {
    use std::io::Read as _;
    // IPv4 sockets appear in `tcp`; IPv6 sockets (also those carrying
    // IPv4-mapped addresses) in `tcp6`. Look where it most likely is first.
    let tables: [&'static str; 2] = if local.is_ipv4() {
        ["/proc/net/tcp", "/proc/net/tcp6"]
    } else {
        ["/proc/net/tcp6", "/proc/net/tcp"]
    };
    let mut last_err = None;
    for path in tables {
        let mut text = String::new();
        let read = std::fs::File::open(path)
            .and_then(|f| f.take(MAX_SOCKET_TABLE).read_to_string(&mut text));
        if let Err(source) = read {
            last_err = Some(PeerUidError::Read { path, source });
            continue;
        }
        if let Some(uid) = find_owner(&text, local, remote) {
            return Ok(uid);
        }
    }
    Err(last_err.unwrap_or(PeerUidError::NotFound { local, remote }))
}

/// Finds the owner uid in one table's text. Entries without an inode
/// (TIME_WAIT remnants, owned by nobody) are passed over.
pub fn find_owner(table: &str, local: SocketAddr, remote: SocketAddr) -> Option<u32> {
    table.lines().skip(1).find_map(|line| {
        let mut f = line.split_whitespace();
        let _slot = f.next()?;
        let l = parse_addr(f.next()?)?;
        let r = parse_addr(f.next()?)?;
        // st, tx:rx queue, tr:when, retrnsmt, then uid, timeout, inode
        let mut f = f.skip(4);
        let uid: u32 = f.next()?.parse().ok()?;
        let _timeout = f.next()?;
        let inode: u64 = f.next()?.parse().ok()?;
        (inode != 0 && same(l, local) && same(r, remote)).then_some(uid)
    })
}

/// Equal addresses, treating `::ffff:a.b.c.d` as `a.b.c.d`.
fn same(a: SocketAddr, b: SocketAddr) -> bool {
    fn canon(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        }
    }
    a.port() == b.port() && canon(a.ip()) == canon(b.ip())
}

/// Parses the kernel's `HEXADDR:HEXPORT`. The address is printed as 32-bit
/// words in host byte order, so each word's native bytes are the network
/// bytes; the port is a plain hex number.
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for (i, chunk) in b.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    // Lines as the kernel prints them on little-endian x86_64.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:22E5 00000000:0000 0A 00000000:00000000 00:00000000 00000000   998        0 41 1 0 100 0 0 10 0
   1: 0100007F:D431 0100007F:22E5 01 00000000:00000000 00:00000000 00000000  1001        0 77 1 0 20 4 30 10 -1
   2: 0100007F:D432 0100007F:22E5 06 00000000:00000000 03:00000F9D 00000000     0        0 0 3 0
   3: 0100007F:22E5 0100007F:D431 01 00000000:00000000 00:00000000 00000000   998        0 78 1 0 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:A000 01 00000000:00000000 00:00000000 00000000  1002        0 91 1 0 20 4 30 10 -1
   1: 0000000000000000FFFF00000100007F:1F91 0000000000000000FFFF00000100007F:A001 01 00000000:00000000 00:00000000 00000000  1003        0 92 1 0 20 4 30 10 -1
";

    #[test]
    fn client_end_of_accepted_connection() {
        assert_eq!(
            find_owner(TCP, sa("127.0.0.1:54321"), sa("127.0.0.1:8933")),
            Some(1001)
        );
    }

    #[test]
    fn server_end_inherits_listener_owner() {
        assert_eq!(
            find_owner(TCP, sa("127.0.0.1:8933"), sa("127.0.0.1:54321")),
            Some(998)
        );
    }

    #[test]
    fn time_wait_remnant_is_nobodys() {
        assert_eq!(
            find_owner(TCP, sa("127.0.0.1:54322"), sa("127.0.0.1:8933")),
            None
        );
    }

    #[test]
    fn listener_is_not_a_connection() {
        assert_eq!(
            find_owner(TCP, sa("127.0.0.1:8933"), sa("127.0.0.1:1")),
            None
        );
    }

    #[test]
    fn wrong_port_or_address_is_not_found() {
        assert_eq!(
            find_owner(TCP, sa("127.0.0.1:54321"), sa("127.0.0.1:8934")),
            None
        );
        assert_eq!(
            find_owner(TCP, sa("127.0.0.2:54321"), sa("127.0.0.1:8933")),
            None
        );
    }

    #[test]
    fn ipv6_loopback() {
        assert_eq!(
            find_owner(TCP6, sa("[::1]:8080"), sa("[::1]:40960")),
            Some(1002)
        );
    }

    #[test]
    fn ipv4_mapped_matches_plain_ipv4() {
        assert_eq!(
            find_owner(TCP6, sa("127.0.0.1:8081"), sa("127.0.0.1:40961")),
            Some(1003)
        );
    }

    #[test]
    fn garbage_lines_are_skipped() {
        let t = "header\nnot a line\n 0: zz:zz 0100007F:0001 01 0 0 0 5 0 9\n";
        assert_eq!(find_owner(t, sa("127.0.0.1:1"), sa("127.0.0.1:1")), None);
        assert_eq!(find_owner("", sa("127.0.0.1:1"), sa("127.0.0.1:1")), None);
    }

    /// sock_diag and the table agree on live connections, v4 and v6.
    #[test]
    fn sock_diag_and_table_agree() {
        let me = nix::unistd::geteuid().as_raw();
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(l) = std::net::TcpListener::bind(bind) else {
                continue; // no IPv6 loopback here
            };
            let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (s, _) = l.accept().unwrap();
            let (cl, cr) = (c.local_addr().unwrap(), c.peer_addr().unwrap());
            assert_eq!(sock_diag_owner(cl, cr).unwrap(), Some(me), "{bind}");
            assert_eq!(table_owner(cl, cr).unwrap(), me, "{bind}");
            let (sl, sr) = (s.local_addr().unwrap(), s.peer_addr().unwrap());
            assert_eq!(sock_diag_owner(sl, sr).unwrap(), Some(me), "{bind}");
            // the listener is not a connection, nor is a wrong port
            let la = l.local_addr().unwrap();
            let other = SocketAddr::new(la.ip(), 1);
            assert_eq!(sock_diag_owner(la, other).unwrap(), None);
            assert_eq!(sock_diag_owner(cl, other).unwrap(), None);
            drop((c, s));
            assert_eq!(sock_diag_owner(cl, cr).unwrap(), None, "closed: {bind}");
        }
    }

    #[test]
    fn diag_reply_parsing_refuses_what_is_not_the_answer() {
        let (l, r) = (sa("127.0.0.1:40000"), sa("127.0.0.1:8933"));
        let mut msg = vec![0u8; 88];
        msg[0..4].copy_from_slice(&88u32.to_ne_bytes());
        msg[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        msg[8..12].copy_from_slice(&7u32.to_ne_bytes());
        msg[16] = AF_INET;
        msg[17] = 1; // ESTABLISHED
        let req = diag_request(l, r, 7);
        msg[20..56].copy_from_slice(&req[24..60]);
        msg[80..84].copy_from_slice(&1001u32.to_ne_bytes());
        msg[84..88].copy_from_slice(&55u32.to_ne_bytes());
        assert_eq!(parse_diag_reply(&msg, l, r, 7), DiagReply::Owner(1001));
        // another sequence number, truncated, a listener, no inode, other pair
        assert!(matches!(
            parse_diag_reply(&msg, l, r, 8),
            DiagReply::Failed(_)
        ));
        assert!(matches!(
            parse_diag_reply(&msg[..40], l, r, 7),
            DiagReply::Failed(_)
        ));
        let mut m = msg.clone();
        m[17] = TCP_LISTEN;
        assert_eq!(parse_diag_reply(&m, l, r, 7), DiagReply::NoSuchSocket);
        let mut m = msg.clone();
        m[84..88].copy_from_slice(&0u32.to_ne_bytes());
        assert_eq!(parse_diag_reply(&m, l, r, 7), DiagReply::NoSuchSocket);
        assert_eq!(
            parse_diag_reply(&msg, sa("127.0.0.1:40001"), r, 7),
            DiagReply::NoSuchSocket
        );
        // NLMSG_ERROR: ENOENT is "no such socket", anything else a failure
        let mut e = vec![0u8; 36];
        e[0..4].copy_from_slice(&36u32.to_ne_bytes());
        e[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        e[8..12].copy_from_slice(&7u32.to_ne_bytes());
        e[16..20].copy_from_slice(&(-nix::libc::ENOENT).to_ne_bytes());
        assert_eq!(parse_diag_reply(&e, l, r, 7), DiagReply::NoSuchSocket);
        e[16..20].copy_from_slice(&(-nix::libc::EPERM).to_ne_bytes());
        assert_eq!(
            parse_diag_reply(&e, l, r, 7),
            DiagReply::Failed(nix::libc::EPERM)
        );
        assert!(matches!(
            parse_diag_reply(&[], l, r, 7),
            DiagReply::Failed(_)
        ));
    }

    /// A measurement, not a test (never asserts timing): per-lookup cost of
    /// sock_diag and of the table with 1 and 1000 extra connections open.
    /// `cargo test -p screengate-server --release peer_uid_cost -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn peer_uid_cost() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut keep = Vec::new();
        for extra in [1usize, 1000] {
            while keep.len() < extra {
                let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
                let s = l.accept().unwrap().0;
                keep.push((c, s));
            }
            let (c, _) = &keep[0];
            let (a, b) = (c.local_addr().unwrap(), c.peer_addr().unwrap());
            let n = 2000;
            let t = std::time::Instant::now();
            for _ in 0..n {
                sock_diag_owner(a, b).unwrap();
            }
            let diag = t.elapsed() / n;
            let t = std::time::Instant::now();
            for _ in 0..200 {
                table_owner(a, b).unwrap();
            }
            let table = t.elapsed() / 200;
            println!(
                "{extra} connections open: sock_diag {diag:?}/lookup, /proc table {table:?}/lookup"
            );
        }
    }

    /// The real kernel table: a connection made here is owned by our uid.
    #[test]
    fn live_table_knows_our_own_connection() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let client_end = tcp_socket_owner(c.local_addr().unwrap(), c.peer_addr().unwrap());
        assert_eq!(client_end.unwrap(), me);
        let server_end = tcp_socket_owner(s.local_addr().unwrap(), s.peer_addr().unwrap());
        assert_eq!(server_end.unwrap(), me);
        drop((c, s));
        let gone = tcp_socket_owner(sa("127.0.0.1:1"), sa("127.0.0.1:2"));
        assert!(matches!(gone, Err(PeerUidError::NotFound { .. })));
    }
}
