//! Which uid owns the other end of a loopback TCP connection: the kernel's
//! socket table (`/proc/net/tcp`, `/proc/net/tcp6`), read and parsed here.
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
//! Cost: one read of the table per lookup, linear in the number of TCP
//! sockets on the machine (measured in `cargo xtask bench`).

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
