//! The TLS gateway in-process: a session end to end, refusals, headers.

use futures_util::StreamExt;
use screengate_tests::{Request, echo, handshake, mint};

use crate::harness::{start, start_with};

#[tokio::test]
async fn minted_token_opens_a_session_that_echoes() {
    let s = start().await;
    let (token, reply) = mint(&s.control).await.unwrap();
    assert_eq!(reply["ok"], true);
    assert_eq!(reply["origin"], format!("https://localhost:{}", s.port()));
    assert_eq!(reply["ws_url"], format!("wss://localhost:{}/ws", s.port()));
    assert_eq!(reply["spki_pin"], s.pin.to_string());
    assert_eq!(reply["header"], "X-Screengate-Token");
    assert_eq!(reply["expires_in_ms"], 30_000);
    let (resp, ws) = handshake(s.addr, s.pin, &Request::display(s.port(), Some(&token)))
        .await
        .unwrap();
    assert_eq!(resp.status, 101);
    let mut ws = ws.unwrap();
    assert_eq!(
        echo(&mut ws, "hello display").await.unwrap(),
        "hello display"
    );
    assert_eq!(echo(&mut ws, "second").await.unwrap(), "second");
}

#[tokio::test]
async fn replayed_token_is_refused_with_uniform_403() {
    let s = start().await;
    let (token, _) = mint(&s.control).await.unwrap();
    let (first, _ws) = handshake(s.addr, s.pin, &Request::display(s.port(), Some(&token)))
        .await
        .unwrap();
    assert_eq!(first.status, 101);
    let (again, ws) = handshake(s.addr, s.pin, &Request::display(s.port(), Some(&token)))
        .await
        .unwrap();
    assert_eq!(again.status, 403);
    assert!(ws.is_none());
    assert_eq!(again.body, "forbidden\n");
    assert!(!again.body.contains(&token));
}

#[tokio::test]
async fn every_403_has_the_same_body() {
    let s = start().await;
    let (token, _) = mint(&s.control).await.unwrap();
    let port = s.port();
    let cases = [
        Request::display(port, Some(&token)).set("Origin", Some("https://evil.example")),
        Request::display(port, Some(&token)).set("Host", Some("evil.example:1")),
        Request::display(port, None),
        Request::display(port, Some("AAAA")),
    ];
    let mut bodies = Vec::new();
    for r in &cases {
        let (resp, ws) = handshake(s.addr, s.pin, r).await.unwrap();
        assert_eq!(resp.status, 403, "{r:?}");
        assert!(ws.is_none());
        bodies.push(resp.body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    // and none of those attempts consumed the token
    let (ok, _ws) = handshake(s.addr, s.pin, &Request::display(port, Some(&token)))
        .await
        .unwrap();
    assert_eq!(ok.status, 101);
}

#[tokio::test]
async fn backend_down_is_503_and_does_not_consume_the_token() {
    let s =
        start_with(|o, _| o.backend = Some("unix:/nonexistent/screengate-test.sock".into())).await;
    let (token, _) = mint(&s.control).await.unwrap();
    for _ in 0..2 {
        let (resp, _) = handshake(s.addr, s.pin, &Request::display(s.port(), Some(&token)))
            .await
            .unwrap();
        // 503 twice: a consumed token would be 403 (replayed) the second time
        assert_eq!(resp.status, 503);
    }
}

#[tokio::test]
async fn responses_carry_security_headers_and_never_the_token() {
    let s = start().await;
    let (token, _) = mint(&s.control).await.unwrap();
    let index = Request {
        path: "/".into(),
        headers: vec![
            ("Host".into(), format!("localhost:{}", s.port())),
            ("X-Screengate-Token".into(), token.clone()),
        ],
    };
    for req in [index, Request::display(s.port(), Some("nope"))] {
        let (resp, _) = handshake(s.addr, s.pin, &req).await.unwrap();
        let h = |n: &str| {
            resp.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        assert_eq!(
            h("content-security-policy"),
            format!(
                "default-src 'self'; connect-src wss://localhost:{}; frame-ancestors 'none'; frame-src 'none'; object-src 'none'; base-uri 'none'",
                s.port()
            )
        );
        assert_eq!(h("referrer-policy"), "no-referrer");
        assert_eq!(h("cache-control"), "no-store");
        assert_eq!(h("x-content-type-options"), "nosniff");
        assert!(resp.headers.iter().all(|(_, v)| !v.contains(&token)));
        assert!(!resp.body.contains(&token));
    }
    // a plain GET with the token header did not consume it
    let (ok, _ws) = handshake(s.addr, s.pin, &Request::display(s.port(), Some(&token)))
        .await
        .unwrap();
    assert_eq!(ok.status, 101);
}

#[tokio::test]
async fn demo_page_is_served_and_references_only_its_own_origin() {
    let s = start().await;
    let req = Request {
        path: "/".into(),
        headers: vec![("Host".into(), format!("localhost:{}", s.port()))],
    };
    let (resp, _) = handshake(s.addr, s.pin, &req).await.unwrap();
    assert_eq!(resp.status, 200);
    assert!(resp.body.contains("screengate-ws-path"));
    assert!(!resp.body.contains("http://"));
    let req = Request {
        path: "/../../etc/passwd".into(),
        headers: vec![("Host".into(), format!("localhost:{}", s.port()))],
    };
    let (resp, _) = handshake(s.addr, s.pin, &req).await.unwrap();
    assert_eq!(resp.status, 404);
}

#[tokio::test]
async fn every_app_response_carries_the_security_headers() {
    let s = start().await;
    let csp = format!("connect-src wss://localhost:{};", s.port());
    for (path, status) in [
        ("/", 200),
        ("/app.js", 200),
        ("/app.css", 200),
        ("/nope", 404),
    ] {
        let req = Request {
            path: path.into(),
            headers: vec![("Host".into(), format!("localhost:{}", s.port()))],
        };
        let (resp, _) = handshake(s.addr, s.pin, &req).await.unwrap();
        assert_eq!(resp.status, status, "{path}");
        let h = |name: &str| {
            resp.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        assert!(
            h("content-security-policy").contains(&csp),
            "{path}: {:?}",
            resp.headers
        );
        assert!(
            h("content-security-policy").contains("frame-ancestors 'none'"),
            "{path}"
        );
        assert_eq!(h("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(h("x-frame-options"), "DENY", "{path}");
        assert_eq!(h("cache-control"), "no-store", "{path}");
        assert_eq!(h("referrer-policy"), "no-referrer", "{path}");
    }
}

#[tokio::test]
async fn oversized_request_head_is_431() {
    let s = start().await;
    let req = Request::display(s.port(), None).add("X-Filler", &"a".repeat(20 * 1024));
    let (resp, _) = handshake(s.addr, s.pin, &req).await.unwrap();
    assert_eq!(resp.status, 431);
}

#[tokio::test]
async fn demo_backend_sends_status_messages() {
    let s = start().await;
    let (token, _) = mint(&s.control).await.unwrap();
    let (_, ws) = handshake(s.addr, s.pin, &Request::display(s.port(), Some(&token)))
        .await
        .unwrap();
    let mut ws = ws.unwrap();
    let m = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
    assert_eq!(v["type"], "status");
}

fn client_cfg(s: &crate::harness::Running, with_cert: bool) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    if !with_cert {
        return screengate_identity::verify::pinned_client_config(s.pin).unwrap();
    }
    let state = s.dir.path().join("state");
    let cert =
        rustls::pki_types::CertificateDer::from_pem_file(state.join("current/client.crt")).unwrap();
    let key =
        rustls::pki_types::PrivateKeyDer::from_pem_file(state.join("current/client.key")).unwrap();
    screengate_identity::verify::pinned_client_config_with_cert(s.pin, cert, key).unwrap()
}

#[tokio::test]
async fn pinned_client_auth_on_the_tls_listener_still_wants_tokens() {
    let s = start_with(|_, f| f.gateway.client_auth = Some("pinned".into())).await;
    let (token, _) = mint(&s.control).await.unwrap();
    // no client certificate: the TLS handshake itself fails
    let r = screengate_tests::handshake_with(
        s.addr,
        client_cfg(&s, false),
        &Request::display(s.port(), Some(&token)),
    )
    .await;
    assert!(
        r.is_err()
            || r.as_ref()
                .is_ok_and(|(resp, ws)| resp.status != 101 && ws.is_none())
    );
    // with the certificate but no token: 403 (tokens stay on by default)
    let (resp, _) = screengate_tests::handshake_with(
        s.addr,
        client_cfg(&s, true),
        &Request::display(s.port(), None),
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 403);
    // with both: 101
    let (resp, ws) = screengate_tests::handshake_with(
        s.addr,
        client_cfg(&s, true),
        &Request::display(s.port(), Some(&token)),
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 101);
    assert_eq!(echo(&mut ws.unwrap(), "mtls").await.unwrap(), "mtls");
}

#[tokio::test]
async fn tokens_off_with_pinned_client_auth_still_checks_origin() {
    let s = start_with(|_, f| {
        f.gateway.client_auth = Some("pinned".into());
        f.gateway.require_token = Some(false);
    })
    .await;
    let (resp, ws) = screengate_tests::handshake_with(
        s.addr,
        client_cfg(&s, true),
        &Request::display(s.port(), None),
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 101);
    drop(ws);
    let bad = Request::display(s.port(), None).set("Origin", Some("https://evil.example"));
    let (resp, _) = screengate_tests::handshake_with(s.addr, client_cfg(&s, true), &bad)
        .await
        .unwrap();
    assert_eq!(resp.status, 403);
    // a presented token is still verified, not ignored
    let (resp, _) = screengate_tests::handshake_with(
        s.addr,
        client_cfg(&s, true),
        &Request::display(s.port(), Some("forged")),
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 403);
}

/// A plain WebSocket echo server on loopback, standing in for an SDK that
/// listens on TCP; it stops after `max` connections.
async fn loopback_echo_backend(max: usize) -> std::net::SocketAddr {
    use futures_util::SinkExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        for _ in 0..max {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn ws_loopback_backend_is_proxied() {
    let backend = loopback_echo_backend(4).await;
    let s = start_with(|o, _| o.backend = Some(format!("ws://{backend}/sdk"))).await;
    let (token, _) = mint(&s.control).await.unwrap();
    let (resp, ws) = handshake(s.addr, s.pin, &Request::display(s.port(), Some(&token)))
        .await
        .unwrap();
    assert_eq!(resp.status, 101);
    let mut ws = ws.unwrap();
    assert_eq!(
        echo(&mut ws, "over tcp to the sdk").await.unwrap(),
        "over tcp to the sdk"
    );
}
