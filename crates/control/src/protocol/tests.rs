//! Unit tests of the protocol: known-answer bytes for every message (captured
//! from the server before the protocol had types), round trips, and one
//! test per way a line can be malformed.

use proptest::prelude::*;
use serde_json::json;

use super::*;

const TOKEN: &str = "AYc53PuENjiUkOd-uO2F5YyItrZEUMfa2OV06-y8pnSoAQAAAAAAAAABAAAAAAAAdTGWhtGkfR7KjsXgXI9AnkhXE8IYVUgfy9rvCoJXaYf8DQ";
const HANDLE: &str = "88b6b64450c7dad8e574ebecbca674a8de6602653df87211b61e5ea1403342c4";

/// A mint reply captured from `screengate serve` (before this crate).
const MINT_REPLY: &str = r#"{"ok":true,"token":"AYc53PuENjiUkOd-uO2F5YyItrZEUMfa2OV06-y8pnSoAQAAAAAAAAABAAAAAAAAdTGWhtGkfR7KjsXgXI9AnkhXE8IYVUgfy9rvCoJXaYf8DQ","header":"X-Screengate-Token","url":"https://localhost:44921/","ws_url":"wss://localhost:44921/ws","origin":"https://localhost:44921","spki_pin":"3+C9G2Sb1SYg23hBHfYmATrDeYym6A7nbv3KALcPeN4=","channel":"display","token_id":"88b6b64450c7dad8e574ebecbca674a8de6602653df87211b61e5ea1403342c4","expires_in_ms":30000}"#;

fn minted(channel: Channel) -> Minted {
    Minted {
        token: SecretToken::from_received(TOKEN),
        header: "X-Screengate-Token".into(),
        url: "https://localhost:44921/".into(),
        ws_url: "wss://localhost:44921/ws".into(),
        origin: "https://localhost:44921".into(),
        spki_pin: "3+C9G2Sb1SYg23hBHfYmATrDeYym6A7nbv3KALcPeN4=".into(),
        channel,
        token_id: HANDLE.into(),
        expires_in_ms: 30000,
    }
}

fn line(bytes: &str) -> Vec<u8> {
    format!("{bytes}\n").into_bytes()
}

/// Every reply kind with the bytes the server sent for it before this
/// crate existed.
fn reply_kat() -> Vec<(Reply, &'static str)> {
    vec![
        (Reply::Minted(minted(Channel::Display)), MINT_REPLY),
        (Reply::Revoked, r#"{"ok":true,"revoked":1}"#),
        (
            Reply::RevokedAll { sessions_closed: 0 },
            r#"{"ok":true,"revoked":"all","sessions_closed":0}"#,
        ),
        (
            Reply::Refused(Refusal::bad_request(&RequestError::TooLong)),
            r#"{"ok":false,"error":"line_too_long","message":"request line longer than 4096 bytes; closing"}"#,
        ),
        (
            Reply::Refused(Refusal::NotAuthorized),
            r#"{"ok":false,"error":"not_authorized"}"#,
        ),
        (
            Reply::Refused(Refusal::bad_request(&RequestError::UnknownOp(
                "delete".into(),
            ))),
            r#"{"ok":false,"error":"bad_request","message":"unknown op `delete`; the ops are mint and revoke"}"#,
        ),
        (
            Reply::Refused(Refusal::RateLimited { retry_after_ms: 86 }),
            r#"{"ok":false,"error":"rate_limited","retry_after_ms":86}"#,
        ),
        (
            Reply::Refused(Refusal::ledger_full(Duration::from_secs(30))),
            r#"{"ok":false,"error":"ledger_full","message":"too many recently used tokens; retry after the token TTL","retry_after_ms":30000}"#,
        ),
        (
            Reply::Refused(Refusal::revoke(RevokeError::NotYours)),
            r#"{"ok":false,"error":"not_yours","message":"not a token this uid minted on this run"}"#,
        ),
        (
            Reply::Refused(Refusal::revoke(RevokeError::Malformed)),
            r#"{"ok":false,"error":"bad_request","message":"not a revocation handle"}"#,
        ),
        (
            Reply::Refused(Refusal::revoke(RevokeError::Full)),
            r#"{"ok":false,"error":"revoked_full","message":"revoked-id set is full"}"#,
        ),
    ]
}

#[test]
fn replies_encode_to_the_known_bytes_and_parse_back() {
    for (reply, bytes) in reply_kat() {
        let out = reply.to_line().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out),
            format!("{bytes}\n"),
            "{reply:?}"
        );
        assert_eq!(Reply::parse(&out).unwrap(), reply, "{bytes}");
        assert_eq!(Reply::parse(bytes.as_bytes()).unwrap(), reply, "{bytes}");
    }
}

/// The `json!` values the server built before (copied from the old
/// `server/src/control.rs`), encoded by serde_json as it did.
#[test]
fn replies_match_the_old_json_values_byte_for_byte() {
    let port = 44921;
    let old = [
        json!({
            "ok": true,
            "token": TOKEN,
            "header": "X-Screengate-Token",
            "url": format!("https://localhost:{port}/"),
            "ws_url": format!("wss://localhost:{port}{}", "/ws"),
            "origin": format!("https://localhost:{port}"),
            "spki_pin": "3+C9G2Sb1SYg23hBHfYmATrDeYym6A7nbv3KALcPeN4=",
            "channel": Channel::Display.as_str(),
            "token_id": HANDLE,
            "expires_in_ms": 30000u64,
        }),
        json!({"ok": true, "revoked": 1}),
        json!({"ok": true, "revoked": "all", "sessions_closed": 0}),
        json!({"ok": false, "error": "line_too_long",
            "message": format!("request line longer than {} bytes; closing", 4 * 1024)}),
        json!({"ok": false, "error": "not_authorized"}),
        json!({"ok": false, "error": "bad_request", "message": "unknown op `delete`; the ops are mint and revoke"}),
        json!({"ok": false, "error": "rate_limited", "retry_after_ms": 86}),
        json!({"ok": false, "error": "ledger_full",
            "message": "too many recently used tokens; retry after the token TTL", "retry_after_ms":
            30000}),
        json!({"ok": false, "error": "not_yours", "message": RevokeError::NotYours.to_string()}),
        json!({"ok": false, "error": "bad_request", "message": RevokeError::Malformed.to_string()}),
        json!({"ok": false, "error": "revoked_full", "message": RevokeError::Full.to_string()}),
    ];
    for ((reply, _), old) in reply_kat().into_iter().zip(old) {
        let mut want = serde_json::to_vec(&old).unwrap();
        want.push(b'\n');
        assert_eq!(
            String::from_utf8_lossy(&reply.to_line().unwrap()),
            String::from_utf8_lossy(&want)
        );
    }
}

#[test]
fn native_mint_reply_round_trips() {
    let r = Reply::Minted(minted(Channel::Native));
    let out = r.to_line().unwrap();
    assert!(String::from_utf8_lossy(&out).contains(r#""channel":"native","#));
    assert_eq!(Reply::parse(&out).unwrap(), r);
}

#[test]
fn requests_encode_to_the_known_bytes_and_parse_back() {
    for (req, bytes) in [
        (
            Request::Mint(Channel::Display),
            r#"{"op":"mint","channel":"display"}"#,
        ),
        (
            Request::Mint(Channel::Native),
            r#"{"op":"mint","channel":"native"}"#,
        ),
        (
            Request::Revoke(HANDLE.into()),
            r#"{"op":"revoke","token_id":"88b6b64450c7dad8e574ebecbca674a8de6602653df87211b61e5ea1403342c4"}"#,
        ),
        (Request::RevokeAll, r#"{"op":"revoke","all":true}"#),
    ] {
        let out = req.to_line().unwrap();
        assert_eq!(*out, line(bytes), "{req:?}");
        assert_eq!(Request::parse(bytes.as_bytes()), Ok(req.clone()));
        // the server hands `parse` the line without its newline, but
        // surrounding whitespace is forgiven
        assert_eq!(Request::parse(&out), Ok(req));
    }
}

#[test]
fn request_defaults_and_whitespace() {
    for (bytes, want) in [
        (&br#"{"op":"mint"}"#[..], Request::Mint(Channel::Display)),
        (
            br#" {"op":"mint","channel":"native"} "#,
            Request::Mint(Channel::Native),
        ),
        (
            br#"{"op":"mint","channel":null}"#,
            Request::Mint(Channel::Display),
        ),
        (
            br#"{"op":"revoke","all":null,"token_id":"ab"}"#,
            Request::Revoke("ab".into()),
        ),
        (
            br#"{"op":"revoke","token_id":"ab","all":null}"#,
            Request::Revoke("ab".into()),
        ),
        (b"\t{\"op\":\"revoke\",\"all\":true}\r", Request::RevokeAll),
    ] {
        assert_eq!(
            Request::parse(bytes),
            Ok(want),
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
}

/// Every malformed request line the server answered with `bad_request`
/// before this crate, with the exact reply bytes it sent (captured from
/// `screengate serve`).
#[test]
fn malformed_requests_get_the_known_bad_request_bytes() {
    let cases: &[(&[u8], &str)] = &[
        (
            br#""#,
            r#"{"ok":false,"error":"bad_request","message":"empty line; send one JSON object per line, e.g. {\"op\":\"mint\",\"channel\":\"display\"}"}"#,
        ),
        (
            br#"   "#,
            r#"{"ok":false,"error":"bad_request","message":"empty line; send one JSON object per line, e.g. {\"op\":\"mint\",\"channel\":\"display\"}"}"#,
        ),
        (
            br#"mint"#,
            r#"{"ok":false,"error":"bad_request","message":"not a request object: expected value at line 1 column 1; expected {\"op\":\"mint\",\"channel\":\"display\"}"}"#,
        ),
        (
            br#"{"#,
            r#"{"ok":false,"error":"bad_request","message":"not a request object: EOF while parsing an object at line 1 column 1; expected {\"op\":\"mint\",\"channel\":\"display\"}"}"#,
        ),
        (
            br#"[]"#,
            r#"{"ok":false,"error":"bad_request","message":"not a request object: invalid length 0, expected struct RawRequest with 4 elements at line 1 column 2; expected {\"op\":\"mint\",\"channel\":\"display\"}"}"#,
        ),
        (
            br#"null"#,
            r#"{"ok":false,"error":"bad_request","message":"not a request object: invalid type: null, expected struct RawRequest at line 1 column 4; expected {\"op\":\"mint\",\"channel\":\"display\"}"}"#,
        ),
        (
            br#"{"op":"mint","channel":"root"}"#,
            r#"{"ok":false,"error":"bad_request","message":"unknown channel `root`; expected display or native"}"#,
        ),
        (
            br#"{"op":"delete"}"#,
            r#"{"ok":false,"error":"bad_request","message":"unknown op `delete`; the ops are mint and revoke"}"#,
        ),
        (
            br#"{"op":"mint","extra":1}"#,
            r#"{"ok":false,"error":"bad_request","message":"not a request object: unknown field `extra`, expected one of `op`, `channel`, `token_id`, `all` at line 1 column 20; expected {\"op\":\"mint\",\"channel\":\"display\"}"}"#,
        ),
        (
            br#"{"op":1}"#,
            r#"{"ok":false,"error":"bad_request","message":"not a request object: invalid type: integer `1`, expected a string at line 1 column 7; expected {\"op\":\"mint\",\"channel\":\"display\"}"}"#,
        ),
        (
            br#"{"channel":"display"}"#,
            r#"{"ok":false,"error":"bad_request","message":"not a request object: missing field `op` at line 1 column 21; expected {\"op\":\"mint\",\"channel\":\"display\"}"}"#,
        ),
        (
            b"\xff\xfe",
            r#"{"ok":false,"error":"bad_request","message":"line is not UTF-8"}"#,
        ),
        (
            br#"{"op":"revoke"}"#,
            r#"{"ok":false,"error":"bad_request","message":"revoke takes exactly one of {\"token_id\":\"…\"} (from the mint reply) or {\"all\":true}"}"#,
        ),
        (
            br#"{"op":"revoke","all":false}"#,
            r#"{"ok":false,"error":"bad_request","message":"revoke takes exactly one of {\"token_id\":\"…\"} (from the mint reply) or {\"all\":true}"}"#,
        ),
        (
            br#"{"op":"revoke","all":true,"token_id":"ab"}"#,
            r#"{"ok":false,"error":"bad_request","message":"revoke takes exactly one of {\"token_id\":\"…\"} (from the mint reply) or {\"all\":true}"}"#,
        ),
        (
            br#"{"op":"revoke","all":"yes"}"#,
            r#"{"ok":false,"error":"bad_request","message":"not a request object: invalid type: string \"yes\", expected a boolean at line 1 column 26; expected {\"op\":\"mint\",\"channel\":\"display\"}"}"#,
        ),
        (
            br#"{"op":"revoke","token_id":7}"#,
            r#"{"ok":false,"error":"bad_request","message":"not a request object: invalid type: integer `7`, expected a string at line 1 column 27; expected {\"op\":\"mint\",\"channel\":\"display\"}"}"#,
        ),
        (
            br#"{"op":"revoke","token_id":"ab","channel":"display"}"#,
            r#"{"ok":false,"error":"bad_request","message":"`channel` belongs to mint only"}"#,
        ),
        (
            br#"{"op":"mint","token_id":"ab"}"#,
            r#"{"ok":false,"error":"bad_request","message":"`token_id` and `all` belong to revoke only"}"#,
        ),
        (
            br#"{"op":"mint","all":true}"#,
            r#"{"ok":false,"error":"bad_request","message":"`token_id` and `all` belong to revoke only"}"#,
        ),
        (
            br#"{"op":"m\u0000i\nnt\""}"#,
            r#"{"ok":false,"error":"bad_request","message":"unknown op `m\\0i\\nnt\\\"`; the ops are mint and revoke"}"#,
        ),
        (
            br#"{"op":"mint","channel":"d\"x"}"#,
            r#"{"ok":false,"error":"bad_request","message":"unknown channel `d\\\"x`; expected display or native"}"#,
        ),
        (
            br#"{"op":"mint","op":"mint"}"#,
            r#"{"ok":false,"error":"bad_request","message":"not a request object: duplicate field `op` at line 1 column 17; expected {\"op\":\"mint\",\"channel\":\"display\"}"}"#,
        ),
        (
            br#"{"op":null}"#,
            r#"{"ok":false,"error":"bad_request","message":"not a request object: invalid type: null, expected a string at line 1 column 10; expected {\"op\":\"mint\",\"channel\":\"display\"}"}"#,
        ),
    ];
    for (bytes, want) in cases {
        let e = Request::parse(bytes).unwrap_err();
        let reply = Reply::Refused(Refusal::bad_request(&e));
        assert_eq!(
            String::from_utf8_lossy(&reply.to_line().unwrap()),
            format!("{want}\n"),
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn each_request_error_has_its_own_variant() {
    for (bytes, want) in [
        (&b"\xc3"[..], RequestError::NotUtf8),
        (b"", RequestError::Empty),
        (b" \n ", RequestError::Empty),
        (
            br#"{"op":"revoke","channel":"native"}"#,
            RequestError::ChannelOutsideMint,
        ),
        (
            br#"{"op":"x","channel":"native"}"#,
            RequestError::ChannelOutsideMint,
        ),
        (
            br#"{"op":"x","all":true}"#,
            RequestError::RevokeFieldsOutsideRevoke,
        ),
        (
            br#"{"op":"mint","token_id":"x"}"#,
            RequestError::RevokeFieldsOutsideRevoke,
        ),
        (
            br#"{"op":"revoke","token_id":"x","all":false}"#,
            RequestError::RevokeArguments,
        ),
        (
            br#"{"op":"revoke","all":false}"#,
            RequestError::RevokeArguments,
        ),
        (br#"{"op":"revoke"}"#, RequestError::RevokeArguments),
        (
            br#"{"op":"mint","channel":"Display"}"#,
            RequestError::UnknownChannel("Display".into()),
        ),
        (
            br#"{"op":"mint","channel":""}"#,
            RequestError::UnknownChannel(String::new()),
        ),
        (br#"{"op":"MINT"}"#, RequestError::UnknownOp("MINT".into())),
        (br#"{"op":""}"#, RequestError::UnknownOp(String::new())),
    ] {
        assert_eq!(
            Request::parse(bytes),
            Err(want),
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
    for bytes in [
        &b"{}"[..],
        b"\"mint\"",
        b"1",
        b"true",
        br#"{"op":"mint"} {"op":"mint"}"#,
        br#"{"op":"mint"}x"#,
        br#"{"op":"mint","channel":1}"#,
        br#"{"op":"revoke","all":1}"#,
        br#"{"op":"revoke","token_id":null,"all":"true"}"#,
        br#"{"op":["mint"]}"#,
        br#"{"OP":"mint"}"#,
        b"{\"op\":\"mint\"\x00}",
    ] {
        assert!(
            matches!(Request::parse(bytes), Err(RequestError::NotARequest(_))),
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn request_line_bound_is_named_and_exact() {
    let mut at_limit = br#"{"op":"mint"}"#.to_vec();
    at_limit.resize(MAX_REQUEST_LINE, b' ');
    assert_eq!(
        Request::parse(&at_limit),
        Ok(Request::Mint(Channel::Display))
    );
    at_limit.push(b' ');
    assert_eq!(Request::parse(&at_limit), Err(RequestError::TooLong));
    assert_eq!(
        Refusal::bad_request(&RequestError::TooLong).code(),
        "line_too_long"
    );
    // a revoke handle too long for the server's line is refused here
    let long = Request::Revoke("a".repeat(MAX_REQUEST_LINE));
    assert_eq!(
        long.to_line().unwrap_err(),
        EncodeError::TooLong {
            limit: MAX_REQUEST_LINE + 1
        }
    );
    let fits =
        Request::Revoke("a".repeat(MAX_REQUEST_LINE - r#"{"op":"revoke","token_id":""}"#.len()));
    let out = fits.to_line().unwrap();
    assert_eq!(out.len(), MAX_REQUEST_LINE + 1);
    assert_eq!(Request::parse(out.strip_suffix(b"\n").unwrap()), Ok(fits));
}

#[test]
fn every_refused_request_line_gets_a_reply_that_fits() {
    // `escape_debug` and JSON escaping multiply a character: DEL (1 byte)
    // becomes `\\u{7f}` (7 bytes) in the reply. A request line at the bound
    // made of the worst characters still gets its `bad_request`, not the
    // `{"ok":false}` fallback.
    let worst = [
        "\u{7f}",
        "\u{ad}",
        "\u{85}",
        "\u{200b}",
        "\u{e0001}",
        "\\\\",
        "\\u0001",
        "\\\"",
    ];
    let shapes = [
        r#"{"op":"X"}"#,
        r#"{"op":"mint","channel":"X"}"#,
        r#"{"op":"mint","X":1}"#,
        r#"{"op":"mint","channel":1,"X":1}"#,
        r#"{"op":"revoke","token_id":"X"}"#,
        r#"{"op":1,"X":1}"#,
    ];
    for shape in shapes {
        for w in worst {
            let room = MAX_REQUEST_LINE - (shape.len() - 1);
            let line = shape.replace('X', &w.repeat(room / w.len()));
            assert!(line.len() <= MAX_REQUEST_LINE);
            let Err(e) = Request::parse(line.as_bytes()) else {
                continue; // a revoke handle: refused later, without a quote
            };
            let reply = Reply::Refused(Refusal::bad_request(&e));
            let bytes = reply
                .to_line()
                .unwrap_or_else(|e| panic!("{shape} {w:?}: {e}"));
            assert!(bytes.len() <= MAX_REPLY_LINE);
            assert_eq!(Reply::parse(&bytes).unwrap().kind(), "refusal");
        }
    }
}

#[test]
fn a_reply_too_long_to_send_is_refused_not_grown() {
    let mut m = minted(Channel::Display);
    m.header = "h".repeat(MAX_REPLY_LINE);
    assert_eq!(
        Reply::Minted(m).to_line().unwrap_err(),
        EncodeError::TooLong {
            limit: MAX_REPLY_LINE
        }
    );
    // the fallback line the server sends then is not a reply
    assert!(Reply::parse(ENCODE_FAILED_LINE).is_err());
}

#[test]
fn encoded_lines_keep_their_one_allocation() {
    // written through a slice: the capacity is the bound, never more
    let out = Reply::Minted(minted(Channel::Display)).to_line().unwrap();
    assert_eq!(out.capacity(), MAX_REPLY_LINE);
    assert_eq!(out.last(), Some(&b'\n'));
}

#[test]
fn refusal_constructors() {
    assert_eq!(
        Refusal::rate_limited(Duration::ZERO),
        Refusal::RateLimited { retry_after_ms: 1 }
    );
    assert_eq!(
        Refusal::rate_limited(Duration::from_micros(86_900)),
        Refusal::RateLimited { retry_after_ms: 86 }
    );
    assert_eq!(
        Refusal::rate_limited(Duration::MAX),
        Refusal::RateLimited {
            retry_after_ms: u64::MAX
        }
    );
    let r = Refusal::ledger_full(Duration::from_secs(30));
    assert_eq!(r.retry_after(), Some(Duration::from_secs(30)));
    assert_eq!(r.code(), "ledger_full");
    assert_eq!(
        Refusal::revoke(RevokeError::Malformed).code(),
        "bad_request"
    );
    assert_eq!(Refusal::revoke(RevokeError::NotYours).code(), "not_yours");
    assert_eq!(Refusal::revoke(RevokeError::Full).code(), "revoked_full");
    assert_eq!(Refusal::NotAuthorized.retry_after(), None);
    assert_eq!(Refusal::NotAuthorized.message(), None);
    assert_eq!(
        Refusal::RateLimited { retry_after_ms: 86 }.to_string(),
        "rate_limited (retry after 86 ms)"
    );
    assert_eq!(
        Refusal::revoke(RevokeError::NotYours).to_string(),
        "not_yours: not a token this uid minted on this run"
    );
}

#[test]
fn minted_debug_shows_neither_token_nor_handle() {
    let m = minted(Channel::Display);
    let d = format!("{m:?} {:?}", Reply::Minted(minted(Channel::Native)));
    assert!(!d.contains(TOKEN) && !d.contains(&TOKEN[..20]), "{d}");
    assert!(!d.contains(HANDLE) && !d.contains(&HANDLE[..16]), "{d}");
    assert!(d.contains("redacted"), "{d}");
    assert_eq!(m.expires_in(), Duration::from_secs(30));
}

/// A mint reply with one field replaced (or removed when `value` is None).
fn mint_with(field: &str, value: Option<serde_json::Value>) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_str(MINT_REPLY).unwrap();
    let obj = v.as_object_mut().unwrap();
    match value {
        Some(x) => {
            obj.insert(field.into(), x);
        }
        None => {
            obj.shift_remove(field);
        }
    }
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn mint_reply_lacking_any_field_is_refused_by_name() {
    for field in [
        "header",
        "url",
        "ws_url",
        "origin",
        "spki_pin",
        "channel",
        "token_id",
        "expires_in_ms",
    ] {
        assert_eq!(
            Reply::parse(&mint_with(field, None)),
            Err(ReplyError::Missing(
                [
                    "header",
                    "url",
                    "ws_url",
                    "origin",
                    "spki_pin",
                    "channel",
                    "token_id",
                    "expires_in_ms"
                ]
                .into_iter()
                .find(|f| *f == field)
                .unwrap()
            )),
            "{field}"
        );
    }
    // without `token` it is not a mint reply at all
    assert_eq!(
        Reply::parse(&mint_with("token", None)),
        Err(ReplyError::Unexpected("header"))
    );
}

#[test]
fn mint_reply_with_a_foreign_field_is_refused() {
    for (field, value) in [
        ("error", json!("rate_limited")),
        ("message", json!("x")),
        ("retry_after_ms", json!(1)),
        ("revoked", json!(1)),
        ("sessions_closed", json!(0)),
    ] {
        assert!(
            matches!(
                Reply::parse(&mint_with(field, Some(value))),
                Err(ReplyError::Unexpected(f)) if f == field
            ),
            "{field}"
        );
    }
    assert!(matches!(
        Reply::parse(&mint_with("extra", Some(json!(1)))),
        Err(ReplyError::Malformed { .. })
    ));
}

#[test]
fn mint_reply_with_a_bad_token_is_refused_without_quoting_it() {
    for token in [json!(1), json!(["x"]), json!({"t": TOKEN}), json!(true)] {
        assert_eq!(
            Reply::parse(&mint_with("token", Some(token.clone()))),
            Err(ReplyError::BadToken),
            "{token}"
        );
    }
    // a null token is no token: then the rest does not belong
    assert_eq!(
        Reply::parse(&mint_with("token", Some(json!(null)))),
        Err(ReplyError::Unexpected("header"))
    );
    // an escape anywhere in the token: the parser would have copied it
    // into its scratch buffer, so it is refused
    let escaped = MINT_REPLY.replacen("AYc53", "\\u0041Yc53", 1);
    let e = Reply::parse(escaped.as_bytes()).unwrap_err();
    assert_eq!(e, ReplyError::BadToken);
    let escaped = MINT_REPLY.replacen("-uO2", "\\/uO2", 1);
    assert_eq!(Reply::parse(escaped.as_bytes()), Err(ReplyError::BadToken));
    // a wrong type elsewhere: the error names no value
    for (field, value) in [
        ("expires_in_ms", json!(TOKEN)),
        ("header", json!(1)),
        ("channel", json!(2)),
        ("expires_in_ms", json!(-1)),
        ("expires_in_ms", json!(1.5)),
    ] {
        let e = Reply::parse(&mint_with(field, Some(value))).unwrap_err();
        assert!(matches!(e, ReplyError::Malformed { .. }), "{field}: {e}");
        assert!(!e.to_string().contains(&TOKEN[..10]), "{e}");
    }
    // truncated mid-token: no quote of it either
    let cut = &MINT_REPLY.as_bytes()[..40];
    let e = Reply::parse(cut).unwrap_err();
    assert!(!e.to_string().contains("AYc53"), "{e}");
}

#[test]
fn mint_reply_with_an_unknown_channel_is_refused() {
    for ch in ["root", "", "Display", "display "] {
        assert_eq!(
            Reply::parse(&mint_with("channel", Some(json!(ch)))),
            Err(ReplyError::BadChannel),
            "{ch}"
        );
    }
}

#[test]
fn malformed_replies_are_refused() {
    for (bytes, want) in [
        (r#"{"ok":true}"#, ReplyError::Missing("revoked")),
        (r#"{"ok":true,"revoked":2}"#, ReplyError::BadRevoked),
        (r#"{"ok":true,"revoked":"one"}"#, ReplyError::BadRevoked),
        (
            r#"{"ok":true,"revoked":"ALL","sessions_closed":0}"#,
            ReplyError::BadRevoked,
        ),
        (r#"{"ok":true,"revoked":1.0}"#, ReplyError::BadRevoked),
        // null is absent, as for every optional field
        (
            r#"{"ok":true,"revoked":null}"#,
            ReplyError::Missing("revoked"),
        ),
        (r#"{"ok":true,"revoked":true}"#, ReplyError::BadRevoked),
        (
            r#"{"ok":true,"revoked":1,"sessions_closed":1}"#,
            ReplyError::Unexpected("sessions_closed"),
        ),
        (
            r#"{"ok":true,"revoked":"all"}"#,
            ReplyError::Missing("sessions_closed"),
        ),
        (
            r#"{"ok":true,"revoked":1,"header":"X"}"#,
            ReplyError::Unexpected("header"),
        ),
        (
            r#"{"ok":true,"revoked":1,"error":"not_yours"}"#,
            ReplyError::Unexpected("error"),
        ),
        (r#"{"ok":false}"#, ReplyError::Missing("error")),
        (
            r#"{"ok":false,"error":"nope"}"#,
            ReplyError::UnknownCode("nope".into()),
        ),
        (
            r#"{"ok":false,"error":""}"#,
            ReplyError::UnknownCode(String::new()),
        ),
        (
            r#"{"ok":false,"error":"RATE_LIMITED","retry_after_ms":1}"#,
            ReplyError::UnknownCode("RATE_LIMITED".into()),
        ),
        (
            r#"{"ok":false,"error":"rate_limited"}"#,
            ReplyError::Missing("retry_after_ms"),
        ),
        (
            r#"{"ok":false,"error":"rate_limited","retry_after_ms":1,"message":"m"}"#,
            ReplyError::Unexpected("message"),
        ),
        (
            r#"{"ok":false,"error":"not_authorized","message":"m"}"#,
            ReplyError::Unexpected("message"),
        ),
        (
            r#"{"ok":false,"error":"not_authorized","retry_after_ms":1}"#,
            ReplyError::Unexpected("retry_after_ms"),
        ),
        (
            r#"{"ok":false,"error":"bad_request"}"#,
            ReplyError::Missing("message"),
        ),
        (
            r#"{"ok":false,"error":"bad_request","message":"m","retry_after_ms":1}"#,
            ReplyError::Unexpected("retry_after_ms"),
        ),
        (
            r#"{"ok":false,"error":"line_too_long"}"#,
            ReplyError::Missing("message"),
        ),
        (
            r#"{"ok":false,"error":"not_yours"}"#,
            ReplyError::Missing("message"),
        ),
        (
            r#"{"ok":false,"error":"revoked_full"}"#,
            ReplyError::Missing("message"),
        ),
        (
            r#"{"ok":false,"error":"ledger_full","message":"m"}"#,
            ReplyError::Missing("retry_after_ms"),
        ),
        (
            r#"{"ok":false,"error":"ledger_full","retry_after_ms":1}"#,
            ReplyError::Missing("message"),
        ),
        (
            r#"{"ok":false,"error":"rate_limited","retry_after_ms":1,"token":"t"}"#,
            ReplyError::Unexpected("token"),
        ),
        (
            r#"{"ok":false,"error":"not_yours","message":"m","revoked":1}"#,
            ReplyError::Unexpected("revoked"),
        ),
    ] {
        assert_eq!(Reply::parse(bytes.as_bytes()), Err(want), "{bytes}");
    }
    for bytes in [
        &b""[..],
        b"\n",
        b"null",
        b"[]",
        b"\"ok\"",
        b"{}",
        br#"{"ok":"true","revoked":1}"#,
        br#"{"ok":1,"revoked":1}"#,
        br#"{"ok":null}"#,
        br#"{"ok":true,"ok":true,"revoked":1}"#,
        br#"{"ok":true,"revoked":1,"extra":0}"#,
        br#"{"ok":true,"revoked":1}{"ok":true,"revoked":1}"#,
        br#"{"ok":true,"revoked":1} x"#,
        br#"{"ok":true,"revoked":1"#,
        br#"{"ok":false,"error":7}"#,
        br#"{"ok":false,"error":"rate_limited","retry_after_ms":-1}"#,
        br#"{"ok":false,"error":"rate_limited","retry_after_ms":"1"}"#,
        br#"{"ok":true,"revoked":"all","sessions_closed":-1}"#,
        b"{\"ok\":false,\"error\":\"bad_request\",\"message\":\"\xff\"}",
        ENCODE_FAILED_LINE,
    ] {
        assert!(
            matches!(
                Reply::parse(bytes),
                Err(ReplyError::Malformed { .. }) | Err(ReplyError::Missing("error"))
            ),
            "{}: {:?}",
            String::from_utf8_lossy(bytes),
            Reply::parse(bytes)
        );
    }
}

#[test]
fn reply_line_bound_is_named_and_exact() {
    let mut at_limit = br#"{"ok":true,"revoked":1}"#.to_vec();
    at_limit.resize(MAX_REPLY_LINE, b' ');
    assert_eq!(Reply::parse(&at_limit), Ok(Reply::Revoked));
    at_limit.push(b' ');
    assert_eq!(Reply::parse(&at_limit), Err(ReplyError::TooLong));
}

#[test]
fn reply_errors_say_what_is_wrong() {
    assert_eq!(
        ReplyError::WrongKind {
            asked: "mint",
            got: "revoke"
        }
        .to_string(),
        "a revoke reply to a mint request"
    );
    assert_eq!(ReplyError::Missing("url").to_string(), "reply lacks `url`");
    assert_eq!(
        ReplyError::UnknownCode("a\nb".into()).to_string(),
        "unknown error code `a\\nb`"
    );
}

fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,40}",
        any::<String>(),
        Just("\"\\\u{0}\n…".to_owned()),
    ]
}

fn arb_refusal() -> impl Strategy<Value = Refusal> {
    prop_oneof![
        arb_text().prop_map(|message| Refusal::LineTooLong { message }),
        Just(Refusal::NotAuthorized),
        arb_text().prop_map(|message| Refusal::BadRequest { message }),
        any::<u64>().prop_map(|retry_after_ms| Refusal::RateLimited { retry_after_ms }),
        (arb_text(), any::<u64>()).prop_map(|(message, retry_after_ms)| Refusal::LedgerFull {
            message,
            retry_after_ms
        }),
        arb_text().prop_map(|message| Refusal::NotYours { message }),
        arb_text().prop_map(|message| Refusal::RevokedFull { message }),
    ]
}

proptest! {
    #[test]
    fn request_parse_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Request::parse(&bytes);
    }

    #[test]
    fn request_parse_is_total_on_near_json(
        op in prop_oneof![Just("mint".to_owned()), Just("revoke".to_owned()), "[a-z]{0,6}"],
        ch in proptest::option::of(prop_oneof![Just("display".to_owned()), Just("native".to_owned()), "[a-z]{0,6}"]),
        id in proptest::option::of("[0-9a-f]{0,70}"),
        all in proptest::option::of(any::<bool>()),
    ) {
        let mut v = serde_json::Map::new();
        v.insert("op".into(), json!(op));
        if let Some(c) = ch { v.insert("channel".into(), json!(c)); }
        if let Some(i) = &id { v.insert("token_id".into(), json!(i)); }
        if let Some(a) = all { v.insert("all".into(), json!(a)); }
        let bytes = serde_json::to_vec(&v).unwrap();
        if let Ok(req) = Request::parse(&bytes) {
            // whatever parses encodes back to something that parses the same
            let out = req.to_line().unwrap();
            prop_assert_eq!(Request::parse(&out), Ok(req));
        }
    }

    #[test]
    fn reply_parse_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = Reply::parse(&bytes);
    }

    #[test]
    fn refusals_round_trip(r in arb_refusal()) {
        let reply = Reply::Refused(r);
        let out = reply.to_line().unwrap();
        prop_assert_eq!(Reply::parse(&out), Ok(reply));
    }

    #[test]
    fn revoke_replies_round_trip(n in any::<u64>()) {
        let reply = Reply::RevokedAll { sessions_closed: n };
        prop_assert_eq!(Reply::parse(&reply.to_line().unwrap()), Ok(reply));
    }

    #[test]
    fn mint_replies_round_trip(
        token in "[A-Za-z0-9_-]{0,120}",
        header in arb_text(),
        url in arb_text(),
        ms in any::<u64>(),
        native in any::<bool>(),
    ) {
        let mut m = minted(if native { Channel::Native } else { Channel::Display });
        m.token = SecretToken::from_received(&token);
        m.header = header;
        m.url = url;
        m.expires_in_ms = ms;
        let reply = Reply::Minted(m);
        prop_assert_eq!(Reply::parse(&reply.to_line().unwrap()), Ok(reply));
    }

    #[test]
    fn reply_parse_is_total_on_mangled_replies(
        which in 0..11usize,
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let (reply, _) = reply_kat().swap_remove(which);
        let mut out = reply.to_line().unwrap().to_vec();
        let at = flip.index(out.len());
        out[at] = byte;
        let _ = Reply::parse(&out);
        out.truncate(cut.index(out.len()));
        let _ = Reply::parse(&out);
    }
}

#[test]
fn says_ok_reads_only_ok() {
    for (reply, _) in reply_kat() {
        let line = reply.to_line().unwrap();
        assert_eq!(Reply::says_ok(&line), reply.is_ok(), "{reply:?}");
    }
    assert!(Reply::says_ok(
        br#"{"ok":true,"anything":[1,{"x":"\u0041"}]}"#
    ));
    for bytes in [
        &b""[..],
        b"null",
        b"[]",
        b"{}",
        br#"{"ok":"true"}"#,
        br#"{"ok":1}"#,
        br#"{"ok":false}"#,
        br#"{"ok":true"#,
        br#"{"ok":true,"ok":true}"#,
        br#"{"ok":true} x"#,
        b"{\"ok\":true,\"m\":\"\xff\"}",
    ] {
        assert!(!Reply::says_ok(bytes), "{}", String::from_utf8_lossy(bytes));
    }
}
