//! The control socket protocol: replies, errors, limits, permissions.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use screengate_tests::control;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::harness::{start, start_with};

#[tokio::test]
async fn socket_is_owner_only() {
    let s = start().await;
    let m = std::fs::metadata(&s.control).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o600);
    assert_eq!(m.uid(), nix_uid());
}

fn nix_uid() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
}

#[tokio::test]
async fn malformed_lines_get_errors_and_the_connection_stays_usable() {
    let s = start().await;
    let stream = tokio::net::UnixStream::connect(&s.control).await.unwrap();
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    for bad in [
        "not json",
        "{}",
        r#"{"op":"mint","channel":"root"}"#,
        r#"{"op":"drop"}"#,
        "[1,2]",
        "",
    ] {
        wr.write_all(format!("{bad}\n").as_bytes()).await.unwrap();
        let mut line = String::new();
        rd.read_line(&mut line).await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ok"], false, "{bad}");
        assert_eq!(v["error"], "bad_request");
        assert!(!v["message"].as_str().unwrap().is_empty());
    }
    wr.write_all(b"{\"op\":\"mint\",\"channel\":\"display\"}\n")
        .await
        .unwrap();
    let mut line = String::new();
    rd.read_line(&mut line).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["ok"], true);
}

#[tokio::test]
async fn a_line_of_characters_that_escape_long_still_gets_bad_request() {
    // DEL is 1 byte in the request and 7 (`\\u{7f}`) in the reply's message
    let s = start().await;
    for shape in [r#"{"op":"X"}"#, r#"{"op":"mint","channel":"X"}"#] {
        let line = shape.replace('X', &"\u{7f}".repeat(4096 - shape.len() + 1));
        assert_eq!(line.len(), 4096);
        let v = control(&s.control, &line).await.unwrap();
        assert_eq!(v["ok"], false, "{shape}");
        assert_eq!(v["error"], "bad_request", "{shape}: {v}");
        assert!(v["message"].as_str().unwrap().ends_with('…'), "{v}");
    }
}

#[tokio::test]
async fn over_long_line_closes_the_connection() {
    let s = start().await;
    let stream = tokio::net::UnixStream::connect(&s.control).await.unwrap();
    let (rd, mut wr) = stream.into_split();
    let _ = wr.write_all(&vec![b'a'; 5000]).await;
    let mut all = String::new();
    BufReader::new(rd).read_to_string(&mut all).await.unwrap();
    let first: serde_json::Value = serde_json::from_str(all.lines().next().unwrap()).unwrap();
    assert_eq!(first["error"], "line_too_long");
    assert_eq!(all.lines().count(), 1, "connection closed after one reply");
}

#[tokio::test]
async fn uid_not_in_allow_list_is_not_authorized() {
    let s = start_with(|o, _| o.allow_uids = vec![nix_uid().wrapping_add(12345)]).await;
    let v = control(&s.control, r#"{"op":"mint","channel":"display"}"#)
        .await
        .unwrap();
    assert_eq!(
        v,
        serde_json::json!({"ok": false, "error": "not_authorized"})
    );
}

#[tokio::test]
async fn minting_is_rate_limited_per_uid() {
    let s = start().await;
    let stream = tokio::net::UnixStream::connect(&s.control).await.unwrap();
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut ok = 0;
    let mut limited = None;
    for _ in 0..40 {
        wr.write_all(b"{\"op\":\"mint\"}\n").await.unwrap();
        let mut line = String::new();
        rd.read_line(&mut line).await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["ok"] == true {
            ok += 1;
        } else {
            limited = Some(v);
            break;
        }
    }
    assert!(ok >= 20, "burst of at least 20, got {ok}");
    let v = limited.expect("rate limit reached within 40 requests");
    assert_eq!(v["error"], "rate_limited");
    assert!(v["retry_after_ms"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn group_socket_is_0660_and_group_owned() {
    // root's group always exists; the test runs as any uid whose primary
    // group we can name.
    let gid = std::fs::metadata("/proc/self").unwrap().gid();
    let Some(name) = group_name(gid) else { return };
    let s = start_with(|_, f| f.control.group = Some(name)).await;
    let m = std::fs::metadata(&s.control).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o660);
    assert_eq!(m.gid(), gid);
}

fn group_name(gid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let _ = f.next();
        (f.next()?.parse::<u32>().ok()? == gid).then(|| name.to_owned())
    })
}

/// Every reply kind the real server sends parses as its typed `Reply`
/// (`screengate-control`), so the protocol crate and the server agree.
#[tokio::test]
async fn every_reply_of_the_real_server_parses_as_its_type() {
    use screengate_control::Refusal;
    use screengate_tests::{Channel, ControlRequest, Reply, request};
    let s = start().await;
    let Reply::Minted(m) = request(&s.control, &ControlRequest::Mint(Channel::Native))
        .await
        .unwrap()
    else {
        panic!("not a mint reply")
    };
    assert_eq!(m.channel, Channel::Native);
    assert!(!m.token.expose_secret().is_empty());
    for _ in 0..2 {
        // revoking twice is not an error
        let revoke = ControlRequest::Revoke(m.token_id.clone());
        assert_eq!(request(&s.control, &revoke).await.unwrap(), Reply::Revoked);
    }
    let r = request(&s.control, &ControlRequest::Revoke("zz".into())).await;
    assert!(
        matches!(r, Ok(Reply::Refused(Refusal::BadRequest { .. }))),
        "{r:?}"
    );
    let r = request(&s.control, &ControlRequest::Revoke("0".repeat(64))).await;
    assert!(
        matches!(r, Ok(Reply::Refused(Refusal::NotYours { .. }))),
        "{r:?}"
    );
    let r = request(&s.control, &ControlRequest::RevokeAll).await;
    assert_eq!(r.unwrap(), Reply::RevokedAll { sessions_closed: 0 });
    let client =
        screengate_control::client::Client::new(&s.control, screengate_control::client::Peer::Any);
    let line = client.exchange(b"{}\n").await.unwrap();
    assert!(matches!(
        Reply::parse(&line),
        Ok(Reply::Refused(Refusal::BadRequest { .. }))
    ));
    let line = client.exchange(&vec![b'a'; 5000]).await.unwrap();
    assert!(matches!(
        Reply::parse(&line),
        Ok(Reply::Refused(Refusal::LineTooLong { .. }))
    ));
    let mut limited = None;
    for _ in 0..40 {
        match request(&s.control, &ControlRequest::Mint(Channel::Display)).await {
            Ok(Reply::Minted(_)) => {}
            other => {
                limited = Some(other);
                break;
            }
        }
    }
    assert!(
        matches!(
            limited,
            Some(Ok(Reply::Refused(Refusal::RateLimited { retry_after_ms }))) if retry_after_ms >= 1
        ),
        "{limited:?}"
    );
    let other = start_with(|o, _| o.allow_uids = vec![nix_uid().wrapping_add(12345)]).await;
    let r = request(&other.control, &ControlRequest::Mint(Channel::Display)).await;
    assert_eq!(r.unwrap(), Reply::Refused(Refusal::NotAuthorized));
}

#[tokio::test]
async fn one_uid_holds_at_most_its_share_of_control_connections() {
    use std::time::{Duration, Instant};
    let s = start().await;
    // A uid's idle connections up to the cap stay open…
    let mut held = Vec::new();
    for _ in 0..screengate_server::MAX_CONTROL_PER_UID {
        held.push(tokio::net::UnixStream::connect(&s.control).await.unwrap());
    }
    // …the next one is closed at once, with no reply and no slot held.
    let mut extra = tokio::net::UnixStream::connect(&s.control).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf))
        .await
        .expect("the connection over the cap was not closed within 5 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "a reply came on the connection over the cap");
    // The held ones still serve.
    let (rd, mut wr) = held.remove(0).into_split();
    wr.write_all(b"{\"op\":\"mint\",\"channel\":\"display\"}\n")
        .await
        .unwrap();
    let mut line = String::new();
    BufReader::new(rd).read_line(&mut line).await.unwrap();
    assert!(line.contains("\"ok\":true"), "{line}");
    drop(wr);
    // With one given back, a new connection mints again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = control(&s.control, r#"{"op":"mint","channel":"display"}"#).await;
        if v.as_ref().is_ok_and(|v| v["ok"] == true) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no mint after a slot was freed: {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
