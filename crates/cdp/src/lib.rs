//! Chrome DevTools Protocol over `--remote-debugging-pipe`: framing and the
//! messages screengate-launch needs. Pure: no I/O, no processes.
//!
//! On the pipe every message is one JSON object followed by a NUL byte. A
//! read can carry several messages or part of one, so [`Framer`] buffers
//! bytes and yields complete frames; [`parse`] turns a frame into a typed
//! [`Incoming`]; the commands the launcher sends are typed values
//! (`command.rs`, [`Method`]) encoded into zeroizing [`Frame`]s. The
//! transport (the pipe, the child process) is the launcher's.
#![forbid(unsafe_code)]

use serde_json::Value;

mod command;
pub use command::{
    AttachToTarget, Attached, BrowserClose, CaptureScreenshot, CloseTarget, Command,
    ContinueRequest, ErrorReason, FailRequest, FetchEnable, Frame, GetTargets, Ignored,
    ImageFormat, Method, Navigate, Navigated, NetworkEnable, PageEnable, RequestPattern,
    Screenshot, SetBypassServiceWorker, SetDiscoverTargets, SetExtraHttpHeaders, TargetInfo,
    Targets,
};

/// Largest frame accepted from the browser. Screenshots of a large kiosk
/// display are the biggest messages (a few MiB of base64); anything beyond
/// this is not a message we asked for.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// Longest error message kept from a [`Event::WebSocketFrameError`]
/// (Chromium's own wording, e.g. "Error during WebSocket handshake:
/// Unexpected response code: 503").
pub const MAX_ERROR_MESSAGE: usize = 256;

/// Why bytes from the pipe could not be framed or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CdpError {
    /// A frame grew past [`MAX_FRAME`] without a terminating NUL.
    #[error("CDP frame larger than {MAX_FRAME} bytes")]
    TooLarge,
    /// A frame is not a JSON object of the CDP shape.
    #[error("malformed CDP message: {0}")]
    Malformed(String),
}

/// Splits a byte stream into NUL-terminated frames.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
}

impl Framer {
    /// A framer with an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `bytes` and returns every frame now complete (without its
    /// NUL). Incomplete tail bytes stay buffered for the next call.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CdpError> {
        let mut frames = Vec::new();
        let mut rest = bytes;
        while let Some(pos) = rest.iter().position(|b| *b == 0) {
            let (head, tail) = rest.split_at(pos);
            if self.buf.len() + head.len() > MAX_FRAME {
                self.buf.clear();
                return Err(CdpError::TooLarge);
            }
            let mut frame = std::mem::take(&mut self.buf);
            frame.extend_from_slice(head);
            frames.push(frame);
            rest = tail.get(1..).unwrap_or(&[]);
        }
        if self.buf.len() + rest.len() > MAX_FRAME {
            self.buf.clear();
            return Err(CdpError::TooLarge);
        }
        self.buf.extend_from_slice(rest);
        Ok(frames)
    }

    /// Bytes buffered waiting for their NUL.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// A protocol error returned for a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    /// CDP error code.
    pub code: i64,
    /// CDP error message.
    pub message: String,
}

/// A message from the browser.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// The reply to command `id`.
    Response {
        /// The command id.
        id: u64,
        /// `result` or `error`.
        result: Result<Value, ProtocolError>,
    },
    /// An event.
    Event {
        /// The session it belongs to (None: the browser).
        session_id: Option<String>,
        /// The typed event.
        event: Event,
    },
}

/// The events the launcher acts on; everything else is [`Event::Other`].
///
/// Note that `Network.webSocketWillSendHandshakeRequest` carries the request
/// headers, token included: it is parsed into a variant that keeps only the
/// request id, so the headers cannot be logged by accident.
/// A request paused at the response stage (`responseStatusCode` or
/// `responseErrorReason` present).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PausedResponse {
    /// The HTTP status, if a response arrived.
    pub status: Option<u16>,
    /// Every `Content-Security-Policy` header value (name matched without
    /// regard to case; report-only headers are not included).
    pub csp: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `Fetch.requestPaused`: a request waits for continue or fail.
    RequestPaused {
        /// Fetch's request id.
        request_id: String,
        /// The request URL.
        url: String,
        /// `resourceType` (`Document`, `Script`, …; empty if absent).
        resource_type: String,
        /// Present when paused at the response stage.
        response: Option<PausedResponse>,
    },
    /// `Network.webSocketCreated`.
    WebSocketCreated {
        /// Network request id.
        request_id: String,
        /// The WebSocket URL.
        url: String,
    },
    /// `Network.webSocketWillSendHandshakeRequest` (headers dropped).
    WebSocketWillSendHandshake {
        /// Network request id.
        request_id: String,
    },
    /// `Network.webSocketHandshakeResponseReceived`.
    WebSocketHandshakeResponse {
        /// Network request id.
        request_id: String,
        /// HTTP status (101 on success).
        status: u16,
    },
    /// `Network.webSocketFrameReceived` (payload dropped).
    WebSocketFrameReceived {
        /// Network request id.
        request_id: String,
    },
    /// `Network.webSocketFrameError`: Chromium reports a refused handshake
    /// (`Unexpected response code: 503`) this way, not as a handshake
    /// response.
    WebSocketFrameError {
        /// Network request id.
        request_id: String,
        /// Chromium's message, cut to [`MAX_ERROR_MESSAGE`] bytes.
        message: String,
    },
    /// `Network.webSocketClosed`.
    WebSocketClosed {
        /// Network request id.
        request_id: String,
    },
    /// `Target.targetCreated`.
    TargetCreated {
        /// The new target.
        target_id: String,
        /// `page`, `iframe`, `worker`, …
        kind: String,
        /// The target that opened it, for popups.
        opener_id: Option<String>,
    },
    /// `Target.detachedFromTarget`.
    Detached {
        /// The session that ended.
        session_id: String,
    },
    /// `Inspector.targetCrashed`.
    TargetCrashed,
    /// Any other method.
    Other(String),
}

fn s(v: &Value, path: &[&str]) -> Option<String> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str().map(str::to_owned)
}

fn need(v: &Value, path: &[&str]) -> Result<String, CdpError> {
    s(v, path).ok_or_else(|| CdpError::Malformed(format!("missing {}", path.join("."))))
}

/// Parses one frame.
pub fn parse(frame: &[u8]) -> Result<Incoming, CdpError> {
    let v: Value = serde_json::from_slice(frame).map_err(|e| CdpError::Malformed(e.to_string()))?;
    if !v.is_object() {
        return Err(CdpError::Malformed("not an object".into()));
    }
    if let Some(id) = v.get("id") {
        let id = id
            .as_u64()
            .ok_or_else(|| CdpError::Malformed("id is not an integer".into()))?;
        let result = match (v.get("result"), v.get("error")) {
            (_, Some(e)) => Err(ProtocolError {
                code: e.get("code").and_then(Value::as_i64).unwrap_or(0),
                message: e
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            }),
            (Some(r), None) => Ok(r.clone()),
            (None, None) => Ok(Value::Null),
        };
        return Ok(Incoming::Response { id, result });
    }
    let method = need(&v, &["method"])?;
    let session_id = s(&v, &["sessionId"]);
    fn paused_response(p: &Value) -> Option<PausedResponse> {
        let status = p.get("responseStatusCode");
        if status.is_none() && p.get("responseErrorReason").is_none() {
            return None;
        }
        let csp = p
            .get("responseHeaders")
            .and_then(Value::as_array)
            .map(|hs| {
                hs.iter()
                    .filter(|h| {
                        h.get("name")
                            .and_then(Value::as_str)
                            .is_some_and(|n| n.eq_ignore_ascii_case("content-security-policy"))
                    })
                    .filter_map(|h| h.get("value").and_then(Value::as_str))
                    // Chromium may join repeated headers with newlines
                    .flat_map(|v| v.split('\n'))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Some(PausedResponse {
            status: status
                .and_then(Value::as_u64)
                .and_then(|n| u16::try_from(n).ok()),
            csp,
        })
    }
    let p = v.get("params").cloned().unwrap_or(Value::Null);
    let event = match method.as_str() {
        "Fetch.requestPaused" => Event::RequestPaused {
            request_id: need(&p, &["requestId"])?,
            url: need(&p, &["request", "url"])?,
            resource_type: s(&p, &["resourceType"]).unwrap_or_default(),
            response: paused_response(&p),
        },
        "Network.webSocketCreated" => Event::WebSocketCreated {
            request_id: need(&p, &["requestId"])?,
            url: need(&p, &["url"])?,
        },
        "Network.webSocketWillSendHandshakeRequest" => Event::WebSocketWillSendHandshake {
            request_id: need(&p, &["requestId"])?,
        },
        "Network.webSocketHandshakeResponseReceived" => Event::WebSocketHandshakeResponse {
            request_id: need(&p, &["requestId"])?,
            status: p
                .get("response")
                .and_then(|r| r.get("status"))
                .and_then(Value::as_u64)
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| CdpError::Malformed("missing response.status".into()))?,
        },
        "Network.webSocketFrameReceived" => Event::WebSocketFrameReceived {
            request_id: need(&p, &["requestId"])?,
        },
        "Network.webSocketFrameError" => Event::WebSocketFrameError {
            request_id: need(&p, &["requestId"])?,
            message: {
                let mut m = s(&p, &["errorMessage"]).unwrap_or_default();
                let mut cut = m.len().min(MAX_ERROR_MESSAGE);
                while !m.is_char_boundary(cut) {
                    cut -= 1;
                }
                m.truncate(cut);
                m
            },
        },
        "Network.webSocketClosed" => Event::WebSocketClosed {
            request_id: need(&p, &["requestId"])?,
        },
        "Target.targetCreated" => Event::TargetCreated {
            target_id: need(&p, &["targetInfo", "targetId"])?,
            kind: need(&p, &["targetInfo", "type"])?,
            opener_id: s(&p, &["targetInfo", "openerId"]),
        },
        "Target.detachedFromTarget" => Event::Detached {
            session_id: need(&p, &["sessionId"])?,
        },
        "Inspector.targetCrashed" => Event::TargetCrashed,
        _ => Event::Other(method),
    };
    Ok(Incoming::Event { session_id, event })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn framer_splits_merged_frames() {
        let mut f = Framer::new();
        let frames = f.push(b"{\"id\":1}\0{\"id\":2}\0").unwrap();
        assert_eq!(frames, vec![b"{\"id\":1}".to_vec(), b"{\"id\":2}".to_vec()]);
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn framer_joins_split_frames() {
        let mut f = Framer::new();
        assert!(f.push(b"{\"id\"").unwrap().is_empty());
        assert!(f.push(b":4").unwrap().is_empty());
        assert_eq!(f.push(b"2}\0{\"i").unwrap(), vec![b"{\"id\":42}".to_vec()]);
        assert_eq!(f.pending(), 3);
        assert_eq!(f.push(b"d\":1}\0").unwrap(), vec![b"{\"id\":1}".to_vec()]);
    }

    #[test]
    fn framer_handles_every_split_point() {
        let stream = b"{\"id\":1,\"result\":{}}\0{\"method\":\"X.y\",\"params\":{}}\0{\"id\":3}\0";
        for cut in 0..=stream.len() {
            let mut f = Framer::new();
            let mut got = f.push(&stream[..cut]).unwrap();
            got.extend(f.push(&stream[cut..]).unwrap());
            assert_eq!(got.len(), 3, "cut at {cut}");
            assert_eq!(f.pending(), 0);
        }
    }

    #[test]
    fn framer_byte_by_byte() {
        let stream = b"{\"a\":1}\0\0{\"b\":2}\0";
        let mut f = Framer::new();
        let mut got = Vec::new();
        for b in stream {
            got.extend(f.push(std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(
            got,
            vec![b"{\"a\":1}".to_vec(), Vec::new(), b"{\"b\":2}".to_vec()]
        );
    }

    #[test]
    fn framer_refuses_oversized_frame() {
        let mut f = Framer::new();
        let big = vec![b'a'; MAX_FRAME];
        assert!(f.push(&big).unwrap().is_empty());
        assert_eq!(f.push(b"a"), Err(CdpError::TooLarge));
        assert_eq!(f.pending(), 0);
        // and recovers for the next frame
        assert_eq!(f.push(b"{}\0").unwrap(), vec![b"{}".to_vec()]);
    }

    #[test]
    fn parses_responses_and_errors() {
        assert_eq!(
            parse(br#"{"id":3,"result":{"frameId":"F"}}"#).unwrap(),
            Incoming::Response {
                id: 3,
                result: Ok(json!({"frameId":"F"}))
            }
        );
        assert_eq!(
            parse(br#"{"id":4,"error":{"code":-32000,"message":"No target"}}"#).unwrap(),
            Incoming::Response {
                id: 4,
                result: Err(ProtocolError {
                    code: -32000,
                    message: "No target".into()
                })
            }
        );
    }

    #[test]
    fn parses_a_response_stage_pause_with_its_csp_headers() {
        let e = parse(br#"{"method":"Fetch.requestPaused","sessionId":"S","params":{"requestId":"i","resourceType":"Document","request":{"url":"https://localhost:1/"},"responseStatusCode":200,"responseHeaders":[{"name":"content-type","value":"text/html"},{"name":"Content-Security-Policy","value":"default-src 'self'"},{"name":"content-security-policy-report-only","value":"connect-src *"},{"name":"CONTENT-SECURITY-POLICY","value":"a\nb"}]}}"#).unwrap();
        let Incoming::Event {
            event:
                Event::RequestPaused {
                    resource_type,
                    response: Some(r),
                    ..
                },
            ..
        } = e
        else {
            panic!("{e:?}");
        };
        assert_eq!(resource_type, "Document");
        assert_eq!(r.status, Some(200));
        assert_eq!(r.csp, vec!["default-src 'self'", "a", "b"]);
        // request stage: no response fields
        let e = parse(br#"{"method":"Fetch.requestPaused","params":{"requestId":"i","resourceType":"Document","request":{"url":"https://localhost:1/"}}}"#).unwrap();
        assert!(matches!(
            e,
            Incoming::Event {
                event: Event::RequestPaused { response: None, .. },
                ..
            }
        ));
        // a network error at the response stage, no headers
        let e = parse(br#"{"method":"Fetch.requestPaused","params":{"requestId":"i","request":{"url":"https://localhost:1/"},"responseErrorReason":"Failed"}}"#).unwrap();
        assert!(matches!(
            e,
            Incoming::Event {
                event: Event::RequestPaused {
                    response: Some(PausedResponse { status: None, .. }),
                    ..
                },
                ..
            }
        ));
    }

    #[test]
    fn parses_the_events_we_act_on() {
        let e = parse(br#"{"method":"Fetch.requestPaused","sessionId":"S","params":{"requestId":"interception-1","request":{"url":"http://127.0.0.1:9/x"}}}"#).unwrap();
        assert_eq!(
            e,
            Incoming::Event {
                session_id: Some("S".into()),
                event: Event::RequestPaused {
                    request_id: "interception-1".into(),
                    url: "http://127.0.0.1:9/x".into(),
                    resource_type: String::new(),
                    response: None,
                }
            }
        );
        let e = parse(br#"{"method":"Network.webSocketHandshakeResponseReceived","params":{"requestId":"R","response":{"status":101}}}"#).unwrap();
        assert!(matches!(
            e,
            Incoming::Event {
                event: Event::WebSocketHandshakeResponse { status: 101, .. },
                ..
            }
        ));
        let e = parse(br#"{"method":"Target.targetCreated","params":{"targetInfo":{"targetId":"T","type":"page","openerId":"O"}}}"#).unwrap();
        assert!(matches!(
            e,
            Incoming::Event {
                event: Event::TargetCreated {
                    opener_id: Some(_),
                    ..
                },
                ..
            }
        ));
        let e = parse(br#"{"method":"Page.loadEventFired","params":{}}"#).unwrap();
        assert!(
            matches!(e, Incoming::Event { event: Event::Other(m), .. } if m == "Page.loadEventFired")
        );
    }

    #[test]
    fn a_frame_error_keeps_a_bounded_message() {
        let e = parse(br#"{"method":"Network.webSocketFrameError","params":{"requestId":"R","timestamp":1,"errorMessage":"Error during WebSocket handshake: Unexpected response code: 503"}}"#).unwrap();
        assert_eq!(
            e,
            Incoming::Event {
                session_id: None,
                event: Event::WebSocketFrameError {
                    request_id: "R".into(),
                    message: "Error during WebSocket handshake: Unexpected response code: 503"
                        .into()
                }
            }
        );
        let long = format!("{}é", "x".repeat(MAX_ERROR_MESSAGE - 1));
        let frame = serde_json::to_vec(&json!({"method":"Network.webSocketFrameError","params":{"requestId":"R","errorMessage":long}})).unwrap();
        let Incoming::Event {
            event: Event::WebSocketFrameError { message, .. },
            ..
        } = parse(&frame).unwrap()
        else {
            panic!()
        };
        assert_eq!(message, "x".repeat(MAX_ERROR_MESSAGE - 1));
        assert!(parse(br#"{"method":"Network.webSocketFrameError","params":{}}"#).is_err());
    }

    #[test]
    fn handshake_event_drops_headers() {
        let e = parse(br#"{"method":"Network.webSocketWillSendHandshakeRequest","params":{"requestId":"R","request":{"headers":{"X-Screengate-Token":"SECRET"}}}}"#).unwrap();
        assert!(!format!("{e:?}").contains("SECRET"));
    }

    #[test]
    fn refuses_malformed_frames() {
        for bad in [
            &b""[..],
            b"not json",
            b"[]",
            b"42",
            br#"{"id":"x"}"#,
            br#"{"params":{}}"#,
            br#"{"method":"Fetch.requestPaused","params":{}}"#,
            br#"{"method":"Network.webSocketHandshakeResponseReceived","params":{"requestId":"R","response":{"status":"ok"}}}"#,
            b"{\"id\":1",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
