//! Start-up refusals and shutdown.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use screengate_server::Server;
use screengate_tests::{Request, handshake, mint};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{config, start};

#[tokio::test]
async fn shutdown_closes_sessions_with_1001_and_returns_promptly() {
    let s = start().await;
    let (token, _) = mint(&s.control).await.unwrap();
    let (_, ws) = handshake(s.addr, s.pin, &Request::display(s.port(), Some(&token)))
        .await
        .unwrap();
    let mut ws = ws.unwrap();
    let control = s.control.clone();
    let t0 = Instant::now();
    let stopping = tokio::spawn(s.stop());
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(c))) => break c,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(u16::from(close.unwrap().code), 1001);
    stopping.await.unwrap().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(!control.exists(), "control socket removed at exit");
}

#[tokio::test]
async fn refuses_loose_state_dir_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), |_, _| {});
    std::fs::create_dir(dir.path().join("state")).unwrap();
    std::fs::set_permissions(
        dir.path().join("state"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let e = Server::bind(cfg).await.unwrap_err().to_string();
    assert!(e.contains("state") && e.contains("chmod 700"), "{e}");
}

#[tokio::test]
async fn refuses_loose_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    screengate_server::commands::init(&state, false).unwrap();
    std::fs::set_permissions(
        state.join("current/server.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let e = Server::bind(config(dir.path(), |_, _| {}))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("server.key") && e.contains("chmod 600"), "{e}");
}

#[tokio::test]
async fn refuses_corrupt_device_key_instead_of_regenerating() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    screengate_server::commands::init(&state, false).unwrap();
    std::fs::write(state.join("current/device.key"), b"short").unwrap();
    let e = Server::bind(config(dir.path(), |_, _| {}))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("device.key"), "{e}");
    assert_eq!(
        std::fs::read(state.join("current/device.key")).unwrap(),
        b"short"
    );
}

#[tokio::test]
async fn refuses_symlink_and_foreign_files_at_the_socket_path() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink("/tmp/elsewhere", run.join("control.sock")).unwrap();
    let e = Server::bind(config(dir.path(), |_, _| {}))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("symbolic link"), "{e}");
    std::fs::remove_file(run.join("control.sock")).unwrap();
    std::fs::write(run.join("control.sock"), b"precious").unwrap();
    let e = Server::bind(config(dir.path(), |_, _| {}))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a socket"), "{e}");
    assert_eq!(
        std::fs::read(run.join("control.sock")).unwrap(),
        b"precious"
    );
}

#[tokio::test]
async fn refuses_group_writable_socket_directory() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o770)).unwrap();
    let e = Server::bind(config(dir.path(), |_, _| {}))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("chmod go-w"), "{e}");
}

#[tokio::test]
async fn second_server_on_the_same_control_socket_is_refused() {
    let s = start().await;
    let cfg = config(s.dir.path(), |_, _| {});
    let e = Server::bind(cfg).await.unwrap_err().to_string();
    assert!(e.contains("already listening"), "{e}");
}

#[tokio::test]
async fn restart_kills_tokens_of_the_previous_run() {
    let s = start().await;
    let (token, _) = mint(&s.control).await.unwrap();
    let (dir, r) = s.stop_keep_dir().await;
    r.unwrap();
    let s2 = crate::harness::start_in(dir).await;
    let (resp, ws) = handshake(s2.addr, s2.pin, &Request::display(s2.port(), Some(&token)))
        .await
        .unwrap();
    assert_eq!(resp.status, 403);
    assert!(ws.is_none());
    // same device identity across the restart: the pin is unchanged
    let (fresh, _) = mint(&s2.control).await.unwrap();
    let (ok, _ws) = handshake(s2.addr, s2.pin, &Request::display(s2.port(), Some(&fresh)))
        .await
        .unwrap();
    assert_eq!(ok.status, 101);
}
