//! The request checks, in the documented order (ARCHITECTURE.md, `session.rs`):
//! whose socket (peer uid), well-formed (else [`Malformed`], 400), `Host` is
//! ours, `Origin` byte for byte, at most one token header. Parsed facts in
//! (`http` header maps, URIs, the kernel's uid), a decision out.
//! What it leaves to others: the token itself (`screengate-token`, via
//! `Admission`), looking the uid up (`peer_uid.rs`).

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, Uri};

use super::{Malformed, Refusal};

/// What the checks need to know about the listener.
#[derive(Debug)]
pub(crate) struct Policy<'a> {
    /// The listener's port.
    pub port: u16,
    /// The listener's IP (its literal is also an accepted Host).
    pub listen_ip: IpAddr,
    /// Allowed origins, exact.
    pub origins: &'a [String],
    /// The token header.
    pub token_header: &'a HeaderName,
}

/// Step 0: the kernel's answer (the owner of the client socket, `None`
/// when it could not be told) against the allow-list. A failed lookup is a
/// refusal, never an allow.
pub(crate) fn peer_uid_verdict(
    lookup: Option<u32>,
    allowed: &[u32],
) -> Result<u32, (Refusal, Option<u32>)> {
    match lookup {
        Some(uid) if allowed.contains(&uid) => Ok(uid),
        Some(uid) => Err((Refusal::PeerUidNotAllowed, Some(uid))),
        None => Err((Refusal::PeerUidUnknown, None)),
    }
}

/// The native socket's connection check: the SO_PEERCRED uid is allowed.
pub(crate) fn uid_allowed(uid: u32, allowed: &[u32]) -> bool {
    allowed.contains(&uid)
}

/// Steps 1–3 of the TLS listener and the structural part of 4: returns the
/// presented token text, if any (the caller decides whether a missing token
/// is refused).
pub(crate) fn check_request<'h>(
    headers: &'h HeaderMap,
    uri: &Uri,
    policy: &Policy<'_>,
) -> Result<Option<&'h str>, Refusal> {
    // 1. well-formed
    if uri.query().is_some() {
        return Err(Malformed::QueryString.into());
    }
    let mut hosts = headers.get_all(http::header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (None, _) => return Err(Malformed::MissingHost.into()),
        (Some(_), Some(_)) => return Err(Malformed::DuplicateHost.into()),
        (Some(h), None) => h,
    };
    let mut origins = headers.get_all(http::header::ORIGIN).iter();
    let origin = origins.next();
    if origins.next().is_some() {
        return Err(Malformed::DuplicateOrigin.into());
    }
    let token = token_header(headers, policy.token_header)?;
    let host = host.to_str().map_err(|_| Malformed::NonAsciiHost)?;

    // 2. Host is our own name; so is an absolute-form target's authority,
    // which HTTP makes the request's host in place of `Host`
    if !host_is_ours(host, policy.port, policy.listen_ip)
        || uri
            .authority()
            .is_some_and(|a| !host_is_ours(a.as_str(), policy.port, policy.listen_ip))
    {
        return Err(Refusal::BadHost);
    }
    // 3. Origin, byte for byte
    let origin = origin.ok_or(Refusal::MissingOrigin)?;
    if !policy
        .origins
        .iter()
        .any(|o| o.as_bytes() == origin.as_bytes())
    {
        return Err(Refusal::BadOrigin);
    }
    Ok(token)
}

/// At most one token header, non-empty visible ASCII.
fn token_header<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Result<Option<&'h str>, Refusal> {
    let mut tokens = headers.get_all(name).iter();
    let token = tokens.next();
    if tokens.next().is_some() {
        return Err(Malformed::DuplicateToken.into());
    }
    match token {
        None => Ok(None),
        Some(v) if v.is_empty() => Err(Malformed::EmptyToken.into()),
        Some(v) => Ok(Some(v.to_str().map_err(|_| Malformed::NonAsciiToken)?)),
    }
}

/// The native socket's request check: no query string, a well-formed token
/// header if any. No Host or Origin: there is no browser to speak for.
pub(crate) fn check_native_request<'h>(
    headers: &'h HeaderMap,
    uri: &Uri,
    token_header_name: &HeaderName,
) -> Result<Option<&'h str>, Refusal> {
    if uri.query().is_some() {
        return Err(Malformed::QueryString.into());
    }
    token_header(headers, token_header_name)
}

/// `localhost:<port>` (any ASCII case), `127.0.0.1:<port>`, `[::1]:<port>`
/// or the listen IP's literal; the port must be present and exact.
pub(crate) fn host_is_ours(host: &str, port: u16, listen_ip: IpAddr) -> bool {
    let (name, port_text) = if let Some(rest) = host.strip_prefix('[') {
        let Some((inner, after)) = rest.split_once(']') else {
            return false;
        };
        let Some(p) = after.strip_prefix(':') else {
            return false;
        };
        (format!("[{inner}]"), p)
    } else {
        let Some((n, p)) = host.rsplit_once(':') else {
            return false;
        };
        (n.to_owned(), p)
    };
    if port_text != port.to_string() {
        return false;
    }
    let own_literal = match listen_ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    name.eq_ignore_ascii_case("localhost")
        || name == "127.0.0.1"
        || name == "[::1]"
        || name == own_literal
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http::StatusCode;
    use std::net::Ipv4Addr;

    const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn host_accepts_own_names_only() {
        for h in [
            "localhost:8933",
            "LOCALHOST:8933",
            "LocalHost:8933",
            "127.0.0.1:8933",
            "[::1]:8933",
        ] {
            assert!(host_is_ours(h, 8933, LO), "{h}");
        }
        for h in [
            "localhost",
            "localhost:8934",
            "localhost:08933",
            "localhost:+8933",
            "localhost.:8933",
            "evil.com:8933",
            "localhost.evil.com:8933",
            "127.0.0.2:8933",
            "[::1]",
            "[::2]:8933",
            "::1:8933",
            "",
            ":8933",
            "localhost:8933:8933",
            "127.0.0.1:8933 ",
            "[::1:8933",
            "localhost :8933",
            "0.0.0.0:8933",
            "2130706433:8933",
        ] {
            assert!(!host_is_ours(h, 8933, LO), "{h}");
        }
        assert!(host_is_ours("127.0.0.2:1", 1, "127.0.0.2".parse().unwrap()));
    }

    fn hm(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    fn check(pairs: &[(&str, &[u8])], uri: &str) -> Result<String, Refusal> {
        let origins = vec!["https://localhost:8933".to_owned()];
        let name = http::HeaderName::from_static("x-screengate-token");
        let p = Policy {
            port: 8933,
            listen_ip: LO,
            origins: &origins,
            token_header: &name,
        };
        check_request(&hm(pairs), &uri.parse().unwrap(), &p)
            .and_then(|t| t.map(str::to_owned).ok_or(Refusal::MissingToken))
    }

    const H: (&str, &[u8]) = ("host", b"localhost:8933");
    const O: (&str, &[u8]) = ("origin", b"https://localhost:8933");
    const T: (&str, &[u8]) = ("x-screengate-token", b"tok");

    #[test]
    fn peer_uid_allowed_passes() {
        assert_eq!(peer_uid_verdict(Some(1000), &[1000]), Ok(1000));
        assert_eq!(peer_uid_verdict(Some(0), &[1000, 0]), Ok(0));
    }

    #[test]
    fn peer_uid_not_allowed_is_403_with_the_uid() {
        for (uid, allowed) in [(1001, vec![1000]), (0, vec![1000]), (1000, vec![0, 1001])] {
            let (r, got) = peer_uid_verdict(Some(uid), &allowed).unwrap_err();
            assert_eq!(r, Refusal::PeerUidNotAllowed);
            assert_eq!(got, Some(uid));
            assert_eq!(r.reason(), "peer_uid_not_allowed");
            assert_eq!(r.status(), StatusCode::FORBIDDEN);
        }
        // an empty list (refused by the config) would allow nobody
        assert!(peer_uid_verdict(Some(1000), &[]).is_err());
    }

    #[test]
    fn native_uid_must_be_listed() {
        assert!(uid_allowed(1000, &[1000]));
        assert!(!uid_allowed(1001, &[1000]));
        assert!(!uid_allowed(0, &[1000]));
        assert!(!uid_allowed(1000, &[]));
    }

    #[test]
    fn peer_uid_lookup_failure_is_refused_never_allowed() {
        for allowed in [&[1000][..], &[0], &[]] {
            let (r, uid) = peer_uid_verdict(None, allowed).unwrap_err();
            assert_eq!(r, Refusal::PeerUidUnknown);
            assert_eq!(uid, None);
            assert_eq!(r.status(), StatusCode::FORBIDDEN);
            assert_eq!(r.reason(), "peer_uid_unknown");
        }
    }

    #[test]
    fn good_request_passes_to_token_check() {
        assert_eq!(check(&[H, O, T], "/ws").unwrap(), "tok");
    }

    #[test]
    fn malformed_requests_are_400() {
        type Case<'a> = (Vec<(&'a str, &'a [u8])>, &'a str, Malformed);
        let cases: Vec<Case> = vec![
            (vec![O, T], "/ws", Malformed::MissingHost),
            (vec![H, H, O, T], "/ws", Malformed::DuplicateHost),
            (vec![H, O, O, T], "/ws", Malformed::DuplicateOrigin),
            (vec![H, O, T, T], "/ws", Malformed::DuplicateToken),
            (
                vec![H, O, ("x-screengate-token", b"")],
                "/ws",
                Malformed::EmptyToken,
            ),
            (
                vec![H, O, ("x-screengate-token", b"t\xc3\xa9")],
                "/ws",
                Malformed::NonAsciiToken,
            ),
            (vec![H, O, T], "/ws?token=abc", Malformed::QueryString),
            (
                vec![H, O],
                "/ws?x-screengate-token=abc",
                Malformed::QueryString,
            ),
            (
                vec![("host", b"l\xc3\xa9:8933"), O, T],
                "/ws",
                Malformed::NonAsciiHost,
            ),
            (vec![H, O, T], "/ws?", Malformed::QueryString),
        ];
        for (h, uri, why) in cases {
            assert_eq!(check(&h, uri).unwrap_err(), Refusal::Malformed(why));
        }
    }

    #[test]
    fn wrong_host_is_403() {
        for h in [&b"evil.com:8933"[..], b"localhost:1", b"localhost"] {
            assert_eq!(
                check(&[("host", h), O, T], "/ws").unwrap_err(),
                Refusal::BadHost
            );
        }
    }

    #[test]
    fn an_absolute_form_target_must_name_us_too() {
        // RFC 9112 3.2.2: the target's authority is the request's host, and
        // the `Host` header is ignored; so both must be ours.
        for target in [
            "https://evil.com:8933/ws",
            "https://evil.com/ws",
            "https://localhost:1/ws",
            "https://user@localhost:8933/ws",
            "http://127.0.0.2:8933/ws",
        ] {
            assert_eq!(
                check(&[H, O, T], target).unwrap_err(),
                Refusal::BadHost,
                "{target}"
            );
        }
        for target in ["https://localhost:8933/ws", "https://127.0.0.1:8933/ws"] {
            assert_eq!(check(&[H, O, T], target).unwrap(), "tok", "{target}");
        }
    }

    #[test]
    fn origin_must_match_byte_for_byte() {
        assert_eq!(check(&[H, T], "/ws").unwrap_err(), Refusal::MissingOrigin);
        for o in [
            &b"null"[..],
            b"https://localhost:8934",
            b"http://localhost:8933",
            b"https://LOCALHOST:8933",
            b"https://localhost:8933/",
            b"https://localhost",
            b"https://127.0.0.1:8933",
            b"https://localhost.:8933",
            b"https://localhost:8933.evil.com",
            b"https://evil.com",
            b"wss://localhost:8933",
            b"file://",
            b" https://localhost:8933",
            b"https://localhost:08933",
        ] {
            assert_eq!(
                check(&[H, ("origin", o), T], "/ws").unwrap_err(),
                Refusal::BadOrigin,
                "{o:?}"
            );
        }
    }

    #[test]
    fn native_requests_need_no_host_or_origin_but_a_clean_token_header() {
        let name = http::HeaderName::from_static("x-screengate-token");
        let uri: Uri = "/ws".parse().unwrap();
        assert_eq!(
            check_native_request(&hm(&[T]), &uri, &name).unwrap(),
            Some("tok")
        );
        assert_eq!(check_native_request(&hm(&[]), &uri, &name).unwrap(), None);
        assert_eq!(
            check_native_request(&hm(&[T, T]), &uri, &name).unwrap_err(),
            Refusal::Malformed(Malformed::DuplicateToken)
        );
        assert_eq!(
            check_native_request(&hm(&[("x-screengate-token", b"")]), &uri, &name).unwrap_err(),
            Refusal::Malformed(Malformed::EmptyToken)
        );
        assert_eq!(
            check_native_request(&hm(&[T]), &"/ws?t=1".parse().unwrap(), &name).unwrap_err(),
            Refusal::Malformed(Malformed::QueryString)
        );
    }

    #[test]
    fn missing_token_is_403_after_host_and_origin() {
        assert_eq!(check(&[H, O], "/ws").unwrap_err(), Refusal::MissingToken);
        // a token only in a cookie or subprotocol is not a token
        assert_eq!(
            check(
                &[
                    H,
                    O,
                    ("cookie", b"x-screengate-token=abc"),
                    ("sec-websocket-protocol", b"abc")
                ],
                "/ws"
            )
            .unwrap_err(),
            Refusal::MissingToken
        );
    }
}
