//! Tests of the client against stand-in servers on real Unix sockets (each
//! answers one connection with canned bytes), and of the launcher's trust
//! checks on the socket's directory and peer.

use std::os::unix::fs::MetadataExt;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

use super::*;

const MINT_REPLY: &[u8] = br#"{"ok":true,"token":"AYc53PuENjiUkOd-uO2F5YyItrZEUMfa2OV06-y8pnSoAQAAAAAAAAABAAAAAAAAdTGWhtGkfR7KjsXgXI9AnkhXE8IYVUgfy9rvCoJXaYf8DQ","header":"X-Screengate-Token","url":"https://localhost:44921/","ws_url":"wss://localhost:44921/ws","origin":"https://localhost:44921","spki_pin":"3+C9G2Sb1SYg23hBHfYmATrDeYym6A7nbv3KALcPeN4=","channel":"native","token_id":"88b6b64450c7dad8e574ebecbca674a8de6602653df87211b61e5ea1403342c4","expires_in_ms":30000}
"#;

/// A one-shot stand-in server: reads one request line, answers `reply`
/// (then stays open until the client leaves), and hands back the request.
struct StandIn {
    _dir: tempfile::TempDir,
    path: PathBuf,
    request: tokio::task::JoinHandle<Vec<u8>>,
}

fn stand_in(reply: &'static [u8]) -> StandIn {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let request = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut req = Vec::new();
        let mut byte = [0u8; 1];
        while s.read(&mut byte).await.unwrap_or(0) == 1 {
            req.push(byte[0]);
            if byte[0] == b'\n' {
                break;
            }
        }
        let _ = s.write_all(reply).await;
        // keep the connection open until the client is done
        let _ = s.read(&mut byte).await;
        req
    });
    StandIn {
        _dir: dir,
        path,
        request,
    }
}

#[tokio::test]
async fn mint_sends_the_request_bytes_and_parses_the_reply() {
    let s = stand_in(MINT_REPLY);
    let m = Client::new(&s.path, Peer::Any)
        .mint(Channel::Native)
        .await
        .unwrap();
    assert_eq!(m.channel, Channel::Native);
    assert_eq!(m.header, "X-Screengate-Token");
    assert!(m.token.expose_secret().starts_with("AYc53"));
    assert_eq!(
        s.request.await.unwrap(),
        b"{\"op\":\"mint\",\"channel\":\"native\"}\n"
    );
}

#[tokio::test]
async fn revoke_and_revoke_all() {
    let s = stand_in(b"{\"ok\":true,\"revoked\":1}\n");
    Client::new(&s.path, Peer::Any).revoke("ab").await.unwrap();
    assert_eq!(
        s.request.await.unwrap(),
        b"{\"op\":\"revoke\",\"token_id\":\"ab\"}\n"
    );
    let s = stand_in(b"{\"ok\":true,\"revoked\":\"all\",\"sessions_closed\":3}\n");
    assert_eq!(
        Client::new(&s.path, Peer::Any).revoke_all().await.unwrap(),
        3
    );
    assert_eq!(
        s.request.await.unwrap(),
        b"{\"op\":\"revoke\",\"all\":true}\n"
    );
}

#[tokio::test]
async fn a_refusal_is_typed() {
    let s = stand_in(b"{\"ok\":false,\"error\":\"rate_limited\",\"retry_after_ms\":86}\n");
    let e = Client::new(&s.path, Peer::Any)
        .mint(Channel::Display)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Refused(Refusal::RateLimited { retry_after_ms: 86 })
        ),
        "{e}"
    );
    let s = stand_in(b"{\"ok\":false,\"error\":\"not_yours\",\"message\":\"m\"}\n");
    let e = Client::new(&s.path, Peer::Any)
        .revoke("ab")
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::Refused(Refusal::NotYours { .. })),
        "{e}"
    );
}

#[tokio::test]
async fn a_reply_of_the_wrong_kind_is_refused() {
    let s = stand_in(b"{\"ok\":true,\"revoked\":1}\n");
    let e = Client::new(&s.path, Peer::Any)
        .mint(Channel::Display)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Reply(ReplyError::WrongKind {
                asked: "mint",
                got: "revoke"
            })
        ),
        "{e}"
    );
    let s = stand_in(MINT_REPLY);
    let e = Client::new(&s.path, Peer::Any)
        .revoke_all()
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::Reply(ReplyError::WrongKind { .. })),
        "{e}"
    );
}

#[tokio::test]
async fn a_malformed_reply_is_refused_without_quoting_it() {
    static HALF: &[u8] = b"{\"ok\":true,\"token\":\"AYc53PuENjiUkOd-uO2F5Yy\n";
    let s = stand_in(HALF);
    let e = Client::new(&s.path, Peer::Any)
        .mint(Channel::Display)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::Reply(ReplyError::Malformed { .. })),
        "{e}"
    );
    assert!(!e.to_string().contains("AYc53"), "{e}");
}

#[tokio::test]
async fn a_reply_without_a_newline_is_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut b = [0u8; 64];
        let _ = s.read(&mut b).await;
        let _ = s.write_all(b"{\"ok\":true,\"revoked\":1}").await;
        // and close
    });
    let e = Client::new(&path, Peer::Any)
        .revoke("ab")
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::Reply(ReplyError::Incomplete)),
        "{e}"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn a_reply_longer_than_the_bound_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let _ = s.write_all(&vec![b' '; MAX_REPLY_LINE + 10]).await;
        let _ = s.write_all(b"\n").await;
    });
    let e = Client::new(&path, Peer::Any)
        .exchange(b"x\n")
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Reply(ReplyError::TooLong)), "{e}");
    // exactly at the bound (newline included) is a line
    let dir2 = tempfile::tempdir().unwrap();
    let path2 = dir2.path().join("c.sock");
    let listener = UnixListener::bind(&path2).unwrap();
    let server2 = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let _ = s.write_all(&vec![b' '; MAX_REPLY_LINE - 1]).await;
        let _ = s.write_all(b"\n").await;
    });
    let line = Client::new(&path2, Peer::Any)
        .exchange(b"x\n")
        .await
        .unwrap();
    assert_eq!(line.len(), MAX_REPLY_LINE - 1);
    let _ = (server.await, server2.await);
}

#[tokio::test]
async fn exchange_sends_arbitrary_bytes_and_stops_at_the_first_newline() {
    let s = stand_in(b"{\"ok\":true,\"revoked\":1}\nsecond line\n");
    let line = Client::new(&s.path, Peer::Any)
        .exchange(b"\xff\x00 not json\n")
        .await
        .unwrap();
    assert_eq!(&line[..], b"{\"ok\":true,\"revoked\":1}");
    assert_eq!(s.request.await.unwrap(), b"\xff\x00 not json\n");
}

#[tokio::test(start_paused = true)]
async fn a_silent_server_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        // never answers; holds the connection until the client leaves
        let mut s = s;
        let mut b = [0u8; 64];
        while s.read(&mut b).await.unwrap_or(0) > 0 {}
    });
    let e = Client::new(&path, Peer::Any)
        .revoke("ab")
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Timeout), "{e}");
    assert!(e.to_string().contains("no reply within 5 s"), "{e}");
    server.await.unwrap();
}

#[tokio::test]
async fn no_socket_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let e = Client::new(dir.path().join("none.sock"), Peer::Any)
        .mint(Channel::Display)
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains("none.sock"), "{e}");
}

#[tokio::test]
async fn server_check_refuses_a_directory_of_another_uid() {
    // the directory is ours; we claim the server is someone else
    let s = stand_in(MINT_REPLY);
    let ours = std::fs::metadata(s.path.parent().unwrap()).unwrap().uid();
    let other = ours.wrapping_add(4242);
    let e = Client::new(&s.path, Peer::Server(ServerUid(Some(other))))
        .mint(Channel::Display)
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Untrusted(_)), "{e}");
    assert!(
        e.to_string().starts_with("refusing the control socket"),
        "{e}"
    );
    s.request.abort();
}

#[tokio::test]
async fn server_check_accepts_the_servers_own_directory_unless_root() {
    // a private directory under the sticky /tmp, named server uid = ours
    let s = stand_in(MINT_REPLY);
    let uid = std::fs::metadata(s.path.parent().unwrap()).unwrap().uid();
    let r = Client::new(&s.path, Peer::Server(ServerUid(Some(uid))))
        .mint(Channel::Native)
        .await;
    if uid == 0 {
        // the server never runs as root, so root cannot be the server
        let e = r.unwrap_err();
        assert!(e.to_string().contains("pass --server-uid"), "{e}");
        s.request.abort();
    } else {
        assert_eq!(r.unwrap().channel, Channel::Native);
    }
}

const SVC: ServerUid = ServerUid(Some(999));

#[test]
fn trusted_dirs() {
    assert_eq!(check_dir(true, 999, 0o40700, SVC), Ok(999));
    assert_eq!(check_dir(true, 0, 0o40755, SVC), Ok(999));
    assert_eq!(check_dir(true, 999, 0o40750, ServerUid(None)), Ok(999));
}

#[test]
fn untrusted_dirs() {
    for (is_dir, owner, mode, server) in [
        (false, 999, 0o120777, SVC),
        (true, 1234, 0o40700, SVC),
        (true, 1234, 0o40755, SVC),
        (true, 999, 0o40770, SVC),
        (true, 999, 0o40702, SVC),
        (true, 0, 0o41777, SVC),
        (true, 0, 0o40777, ServerUid(None)),
        (true, 0, 0o40755, ServerUid(None)),
        (true, 1234, 0o40700, ServerUid(Some(0))),
    ] {
        assert!(
            check_dir(is_dir, owner, mode, server).is_err(),
            "{is_dir} {owner} {mode:o} {server:?}"
        );
    }
    let why = check_dir(true, 1234, 0o40700, SVC)
        .err()
        .unwrap_or_default();
    assert!(why.contains("1234") && why.contains("999"), "{why}");
    let why = check_dir(true, 999, 0o40777, SVC).err().unwrap_or_default();
    assert!(why.contains("writable"), "{why}");
}

#[test]
fn ancestors() {
    for explicit in [true, false] {
        assert!(check_ancestor(0, 0o40755, 999, explicit).is_ok());
        assert!(check_ancestor(999, 0o40711, 999, explicit).is_ok());
    }
    // /tmp: only with an explicit --server-uid
    assert!(check_ancestor(0, 0o41777, 999, true).is_ok());
    let why = check_ancestor(0, 0o41777, 999, false)
        .err()
        .unwrap_or_default();
    assert!(why.contains("--server-uid"), "{why}");
    for explicit in [true, false] {
        for (owner, mode) in [
            (1234, 0o40755),
            (1234, 0o41777),
            (0, 0o40777),
            (0, 0o40775),
            (999, 0o40757),
        ] {
            assert!(
                check_ancestor(owner, mode, 999, explicit).is_err(),
                "{owner} {mode:o} {explicit}"
            );
        }
    }
}

#[test]
fn peer_must_be_the_server() {
    assert!(check_peer(999, 999).is_ok());
    for peer in [0, 998, 1000, 1234, u32::MAX] {
        assert!(check_peer(peer, 999).is_err(), "{peer}");
    }
}
